"""What a bench run writes: ``results.json``, ``results.md`` and the plots.

The JSON schema is documented in ``docs/benchmarks.md`` (``schema_version`` 1).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from convo.bench.run import RunResult

__all__ = ["SCHEMA_VERSION", "document", "markdown", "plot", "routing_cells", "write"]

SCHEMA_VERSION = 1
_TIMELINE_POINTS = 400


def _machine() -> dict[str, Any]:
    memory = None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    memory = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "memory_gib": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _thin(points: Sequence[tuple[float, float]]) -> list[list[float]]:
    step = max(1, len(points) // _TIMELINE_POINTS)
    kept = list(points[::step])
    if points and kept[-1] != points[-1]:
        kept.append(points[-1])
    return [[round(t, 3), round(c, 6)] for t, c in kept]


def document(results: Sequence[RunResult], *, config: Mapping[str, Any]) -> dict[str, Any]:
    """Build the ``results.json`` document from finished runs."""
    runs = [r.metrics() for r in results]
    baseline = {
        (m["workload"], m["seed"], m["users"]): m["client_cpu_ms_per_turn"]
        for m in runs
        if m["strategy"] == "none"
    }
    for m in runs:
        base = baseline.get((m["workload"], m["seed"], m["users"]))
        own = m["client_cpu_ms_per_turn"]
        m["overhead_ms_per_turn"] = None if base is None or own is None else own - base
    timelines: dict[str, dict[str, list[list[float]]]] = defaultdict(dict)
    first = next((r for r in results if r.workload == "chatbot"), None)
    if first is not None:
        # The ideal of the first chatbot run (every strategy's is within a few seconds'
        # timing of it), charged to the turns that incur it.
        timelines["chatbot"]["ideal"] = _thin(first.ideal_timeline())
    for result in results:
        if result.workload == "chatbot" and (result.strategy not in timelines["chatbot"]):
            timelines["chatbot"][result.strategy] = _thin(result.timeline())
    return {
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "config": dict(config),
        "runs": runs,
        "timelines": dict(timelines),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def rows(doc: Mapping[str, Any]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Runs grouped by (workload, users) and averaged over seeds, one row per strategy."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for m in doc["runs"]:
        groups[(m["workload"], m["users"], m["strategy"])].append(m)
    table: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for (workload, users, strategy), runs in groups.items():
        ratios = [m["cost_over_ideal"] for m in runs if m["cost_over_ideal"] is not None]
        bounds = [m.get("no_refresh_over_ideal") for m in runs]
        no_refresh = [b for b in bounds if b is not None]
        table[(workload, users)].append(
            {
                "strategy": strategy,
                "seeds": len(runs),
                "cost_usd": _mean([m["cost_usd"] for m in runs]),
                "ideal_usd": _mean([m["ideal_usd"] for m in runs]),
                "ratio": _mean(ratios),
                "ratio_min": min(ratios) if ratios else None,
                "ratio_max": max(ratios) if ratios else None,
                "no_refresh_usd": _mean([m.get("ideal_no_refresh_usd") for m in runs]),
                "no_refresh_min": min(no_refresh) if no_refresh else None,
                "no_refresh_max": max(no_refresh) if no_refresh else None,
                "token_hit_rate": _mean([m["token_hit_rate"] for m in runs]),
                "request_hit_rate": _mean([m["request_hit_rate"] for m in runs]),
                "writes": _mean([m["cache_writes"] for m in runs]),
                "requests": _mean([m["requests"] for m in runs]),
                "itpm": _mean([m["itpm_weight"] for m in runs]),
                "rate_limited": sum(m["rate_limited_429"] for m in runs),
                "p50": _mean([m["latency_p50_s"] for m in runs]),
                "p95": _mean([m["latency_p95_s"] for m in runs]),
                "cpu_ms": _mean([m["client_cpu_ms_per_turn"] for m in runs]),
                "overhead_ms": _mean([m["overhead_ms_per_turn"] for m in runs]),
                "errors": sum(len(m["errors"]) for m in runs),
                **_routing_row(runs),
            }
        )
    return table


def _routing_row(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The routing workload's columns, averaged over seeds (empty for other workloads)."""
    if not all("success_rate" in m for m in runs):
        return {}
    return {
        "tasks": _mean([m["tasks"] for m in runs]),
        "successful_tasks": _mean([m["successful_tasks"] for m in runs]),
        "success_rate": _mean([m["success_rate"] for m in runs]),
        "cost_per_success_usd": _mean([m["cost_per_success_usd"] for m in runs]),
        "conversations_ok": _mean([m["conversations_ok"] for m in runs]),
        "conversations": _mean([m["conversations"] for m in runs]),
        "cost_per_ok_conversation_usd": _mean([m["cost_per_ok_conversation_usd"] for m in runs]),
        "moves": _mean([m["moves"] for m in runs]),
    }


HEADERS = (
    "strategy",
    "cost $",
    "÷ ideal",
    "tok hit",
    "req hit",
    "writes",
    "reqs",
    "ITPM",
    "429",
    "p50 s",
    "p95 s",
    "CPU ms/turn",
    "overhead ms",
)


def cells(row: Mapping[str, Any]) -> list[str]:
    """One table row as text, in the order of :data:`HEADERS`."""
    # No ideal (routing): the bound prices one model's tokens, so it is not shown.
    ratio = "n/a" if row["ratio"] is None else _fmt(row["ratio"], ".2f") + "×"
    if row["seeds"] > 1 and row["ratio_min"] is not None:
        ratio += f" ({row['ratio_min']:.2f}–{row['ratio_max']:.2f})"
    name = row["strategy"] + (f" ({row['errors']} errors)" if row["errors"] else "")
    return [
        name,
        _fmt(row["cost_usd"], ".4f"),
        ratio,
        _fmt(row["token_hit_rate"], ".0%"),
        _fmt(row["request_hit_rate"], ".0%"),
        _fmt(row["writes"], ".0f"),
        _fmt(row["requests"], ".0f"),
        _fmt(row["itpm"], ",.0f"),
        str(row["rate_limited"]),
        _fmt(row["p50"], ".2f"),
        _fmt(row["p95"], ".2f"),
        _fmt(row["cpu_ms"], ".2f"),
        _fmt(row["overhead_ms"], "+.2f"),
    ]


TERMINAL = ("strategy", "cost $", "÷ ideal", "tok hit", "writes", "reqs", "p95 s", "overhead ms")


def terminal_cells(row: Mapping[str, Any]) -> list[str]:
    """The columns of :data:`TERMINAL` (an 80-column table; results.md has them all)."""
    everything = dict(zip(HEADERS, cells(row), strict=True))
    return [everything[name] for name in TERMINAL]


#: The routing workload's table: cost per successful task instead of the ideal.
ROUTING_HEADERS = (
    "strategy",
    "cost $",
    "÷ ideal",
    "turns ok",
    "success",
    "$ / ok turn",
    "convs ok",
    "$ / ok conv",
    "moves",
    "tok hit",
    "writes",
    "reqs",
)

#: The routing columns of the 80-column terminal table (results.md has them all).
ROUTING_TERMINAL = ("strategy", "cost $", "success", "$ / ok turn", "convs ok", "moves", "tok hit")


def routing_cells(row: Mapping[str, Any], headers: Sequence[str] = ROUTING_TERMINAL) -> list[str]:
    """A routing row as text, in the order of *headers* (one of :data:`ROUTING_HEADERS`)."""
    name = row["strategy"] + (f" ({row['errors']} errors)" if row["errors"] else "")
    everything = {
        "strategy": name,
        "cost $": _fmt(row["cost_usd"], ".4f"),
        "÷ ideal": "n/a",
        "turns ok": f"{_fmt(row.get('successful_tasks'), '.0f')}/{_fmt(row.get('tasks'), '.0f')}",
        "success": _fmt(row.get("success_rate"), ".1%"),
        "$ / ok turn": _fmt(row.get("cost_per_success_usd"), ".5f"),
        "convs ok": f"{_fmt(row.get('conversations_ok'), '.0f')}/"
        f"{_fmt(row.get('conversations'), '.0f')}",
        "$ / ok conv": _fmt(row.get("cost_per_ok_conversation_usd"), ".4f"),
        "moves": _fmt(row.get("moves"), ".0f"),
        "tok hit": _fmt(row["token_hit_rate"], ".0%"),
        "writes": _fmt(row["writes"], ".0f"),
        "reqs": _fmt(row["requests"], ".0f"),
    }
    return [everything[name] for name in headers]


def markdown(doc: Mapping[str, Any]) -> str:
    """The tables of ``results.md``."""
    machine = doc["machine"]
    config = doc["config"]
    lines = [
        "# convo bench results",
        "",
        f"{doc['created']}; {machine['cpus']} CPUs, {machine['memory_gib']} GiB, "
        f"Python {machine['python']}; seeds {config.get('seeds')}, "
        f"{'quick sizes' if config.get('quick') else 'full sizes'}.",
        "Cost is what the emulator billed, priced by `convo.price`; the ideal is the lower",
        "bound of `docs/benchmarks.md`; latency is the emulator's latency model (turns only).",
        "",
    ]
    for (workload, users), table in rows(doc).items():
        if all("success_rate" in r for r in table):
            lines += [
                f"## {workload} ({users} users; ideal n/a: routing compares models)",
                "",
                "| " + " | ".join(ROUTING_HEADERS) + " |",
                "|" + "|".join("---" for _ in ROUTING_HEADERS) + "|",
            ]
            lines += ["| " + " | ".join(routing_cells(r, ROUTING_HEADERS)) + " |" for r in table]
            lines.append("")
            continue
        ideal = _mean([r["ideal_usd"] for r in table])
        lines += [
            f"## {workload} ({users} users/tasks; ideal ${_fmt(ideal, '.4f')})",
            "",
            "| " + " | ".join(HEADERS) + " |",
            "|" + "|".join("---" for _ in HEADERS) + "|",
        ]
        lines += ["| " + " | ".join(cells(r)) + " |" for r in table]
        lines += ["", *_no_refresh_note(table), ""]
    return "\n".join(lines)


def _no_refresh_note(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rule that keeps every client above the ideal, and the bound it leaves."""
    usd = _mean([r.get("no_refresh_usd") for r in table])
    lows = [r["no_refresh_min"] for r in table if r.get("no_refresh_min") is not None]
    highs = [r["no_refresh_max"] for r in table if r.get("no_refresh_max") is not None]
    if usd is None or not lows or not highs:
        return []
    low, high = min(lows), max(highs)
    spread = f"{low:.3f}×" if f"{low:.3f}" == f"{high:.3f}" else f"{low:.3f}–{high:.3f}×"
    return [
        f"Without refresh reads the bound is ${_fmt(usd, '.4f')} ({spread} the ideal).",
        "The ideal may keep one segment alive with a read of that segment alone at any",
        "moment, but the API reads a prompt from its start, so a refresh is a request that",
        "reads everything before it too: this is the least a client whose requests are its",
        "users' turns can pay.",
    ]


def plot(doc: Mapping[str, Any], out: Path) -> list[Path]:
    """Write the PNG plots; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    # Routing runs have no ideal, so they have no place on plots of cost ÷ ideal.
    grouped = {k: t for k, t in rows(doc).items() if not all("success_rate" in r for r in t)}
    if not grouped:
        return written
    workloads = list(dict.fromkeys(w for w, _ in grouped))
    strategies = list(dict.fromkeys(r["strategy"] for t in grouped.values() for r in t))

    # 1. cost ÷ ideal, one group of bars per workload (at the first fleet size run).
    fig, ax = plt.subplots(figsize=(11, 5.5))
    width = 0.8 / max(1, len(strategies))
    colours = plt.get_cmap("tab10")
    for i, strategy in enumerate(strategies):
        xs, ys = [], []
        for j, workload in enumerate(workloads):
            size = next(u for w, u in grouped if w == workload)
            row = next((r for r in grouped[(workload, size)] if r["strategy"] == strategy), None)
            if row is not None and row["ratio"] is not None:
                xs.append(j + (i - (len(strategies) - 1) / 2) * width)
                ys.append(row["ratio"])
        bars = ax.bar(xs, ys, width, label=strategy, color=colours(i))
        ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="ideal = 1 (lower bound)")
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_ylabel("cost ÷ ideal (lower is better; 1 = the bound)")
    ax.set_title("Cost relative to the ideal, per strategy and workload")
    ax.set_ylim(0, max([1.2] + [r["ratio"] or 0 for t in grouped.values() for r in t]) * 1.12)
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.tight_layout()
    path = out / "cost_over_ideal.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    # 2. cumulative cost over time for chatbot.
    chatbot = doc.get("timelines", {}).get("chatbot")
    if chatbot:
        fig, ax = plt.subplots(figsize=(10, 5.5))
        for i, strategy in enumerate(strategies):
            points = chatbot.get(strategy)
            if points:
                ax.plot(
                    [p[0] / 60 for p in points],
                    [p[1] for p in points],
                    label=strategy,
                    color=colours(i),
                    linewidth=1.6,
                )
        ideal = chatbot.get("ideal")
        if ideal:
            ax.plot(
                [p[0] / 60 for p in ideal],
                [p[1] for p in ideal],
                label="ideal (lower bound)",
                color="black",
                linestyle="--",
                linewidth=1.4,
            )
        ax.set_yscale("log")  # `none` would otherwise flatten every other line
        ax.set_xlabel("virtual time (minutes)")
        ax.set_ylabel("cumulative cost (USD, log scale)")
        ax.set_title("chatbot: cumulative cost over time (first seed)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / "chatbot_cost.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    # 3. the --users sweep: cost ÷ ideal against fleet size.
    if len([n for n in doc["config"].get("users", [None]) if n is not None]) > 1:
        fig, axes = plt.subplots(1, len(workloads), figsize=(4 * len(workloads), 4), squeeze=False)
        for ax, workload in zip(axes[0], workloads, strict=True):
            for i, strategy in enumerate(strategies):
                points = [
                    (users, row["ratio"])
                    for (w, users), table in grouped.items()
                    if w == workload
                    for row in table
                    if row["strategy"] == strategy and row["ratio"] is not None
                ]
                points.sort()
                if points:
                    sizes, ratios = zip(*points, strict=True)
                    ax.plot(sizes, ratios, marker="o", label=strategy, color=colours(i))
            ax.set_xscale("log")
            ax.set_title(workload)
            ax.set_xlabel("users (tasks, agents)")
            ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        axes[0][0].set_ylabel("cost ÷ ideal")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        path = out / "users_sweep.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write(doc: Mapping[str, Any], out: Path, *, plots: bool = True) -> list[Path]:
    """Write ``results.json``, ``results.md`` and (with *plots*) the PNGs into *out*."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    md_path = out / "results.md"
    md_path.write_text(markdown(doc) + "\n", encoding="utf-8")
    written = [json_path, md_path]
    if plots:
        written += plot(doc, out)
    return written

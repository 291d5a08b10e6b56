"""``convo report``: what a ledger says about tokens, cache hits, cost and rate-limit weight.

The report puts three measures of the same traffic side by side, because their divergence
is the story most dashboards miss: tokens a naive log shows (input + output, no cache),
the ITPM rate-limit weight (input + cache writes), and billed-equivalent input (every
input kind weighted by its price relative to base input).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from convo.cli.common import output_console
from convo.cli.errors import debugging, one_line
from convo.cli.tables import Column, print_fitted
from convo.errors import LedgerError
from convo.ledger import Ledger, TaskCost, Totals
from convo.ledger.queries import GroupBy, TaskGroup

__all__ = ["build_report", "parse_since", "render_summary", "report"]

_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

#: Group columns, in order: (key, heading).
_COLUMNS = [
    ("key", "group"),
    ("requests", "requests"),
    ("errors", "errors"),
    ("input", "input"),
    ("cache_read", "cache read"),
    ("cache_write_5m", "write 5m"),
    ("cache_write_1h", "write 1h"),
    ("output", "output"),
    ("token_hit_rate", "token hit"),
    ("request_hit_rate", "request hit"),
    ("cost_usd", "cost $"),
    ("saved_usd", "saved $"),
    ("unpriced", "unpriced"),
    ("cancelled", "cancelled"),
    ("estimated", "output estimated"),
    ("rate_limit_tokens", "ITPM weight"),
    ("billed_equivalent_tokens", "billed-equiv input"),
    ("naive_tokens", "naive log (in+out)"),
]


#: The breakdown columns in a terminal table, short headings first to go when it is too
#: narrow; json, csv and md carry every column of _COLUMNS.
_TABLE_COLUMNS = [
    Column("key", "group", text=True, min_width=20),  # a session id whole
    Column("requests", "req"),
    Column("input", "in", drop=3),
    Column("cache_read", "read"),
    Column("cache_write", "write"),
    Column("output", "out", drop=2),
    Column("token_hit_rate", "hit"),
    Column("cost_usd", "cost $"),
    Column("saved_usd", "saved $", drop=4),
    Column("errors", "err", drop=5),
    Column("request_hit_rate", "req hit", drop=6),
    Column("rate_limit_tokens", "ITPM", drop=7),
]
_LEGEND = {
    "req": "requests",
    "in": "uncached input",
    "read": "cache reads",
    "write": "cache writes",
    "out": "output",
    "hit": "token hit rate (read / all input)",
    "err": "failed or cancelled",
    "req hit": "share of requests that read the cache",
    "ITPM": "rate-limit weight (in + write)",
}


def parse_since(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """Parse ``7d``, ``24h``, ``30m``, ``2w`` (before *now*) or an ISO date/time (UTC if naive).

    Raises:
        click.BadParameter: for anything else, with the forms accepted.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    match = _RELATIVE.match(text.strip())
    if match:
        return now - dt.timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use 30m, 24h, 7d, 2w, or an ISO date like 2026-11-01"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _when(text: str | None, option: str) -> dt.datetime | None:
    if not text:
        return None
    try:
        return parse_since(text)
    except click.BadParameter as error:
        error.param_hint = option  # so the message names the option
        raise


def _group_row(t: Totals, *, summary: bool = False) -> dict[str, Any]:
    # The summary row is "(all)"; a group whose key is missing (rows without a session or
    # prefix) is None, shown as "(none)", so the two never look alike.
    return {
        "key": "(all)" if summary else t.key,
        "requests": t.requests,
        "errors": t.errors,
        "input": t.input,
        "cache_read": t.cache_read,
        "cache_write_5m": t.cache_write_5m,
        "cache_write_1h": t.cache_write_1h,
        "output": t.output,
        "token_hit_rate": t.token_hit_rate,
        "request_hit_rate": t.request_hit_rate,
        # Never a made-up price: a group with no priced row has no cost, not $0.
        "cost_usd": None if t.unpriced and t.unpriced == t.requests else t.cost_usd,
        "saved_usd": None if t.unpriced and t.unpriced == t.requests else t.saved_usd,
        "unpriced": t.unpriced,
        "cancelled": t.cancelled,
        "estimated": t.estimated,
        "rate_limit_tokens": t.rate_limit_tokens,
        "billed_equivalent_tokens": round(t.billed_equivalent_tokens, 1),
        "naive_tokens": t.input + t.output,
    }


def build_report(
    ledger: Ledger, *, by: GroupBy = "model", top: int = 10, **filters: Any
) -> dict[str, Any]:
    """Return the report as plain data: ``summary``, ``groups``, ``busts``, ``tasks`` and
    ``task_groups`` (cost per successful task by model and by route, and by day when *by*
    is ``"day"``).

    Args:
        ledger: The ledger to read.
        by: How to group (``model``, ``session``, ``day``, ``prefix``).
        top: How many bust reasons to list.
        **filters: ``since``, ``until``, ``model``, ``session`` as for :meth:`Ledger.totals`.
    """
    overall = ledger.total(**filters)
    # One pass over the marked tasks' rows for the whole and the breakdowns. By day only
    # when the report is by day: a task's rows spread over days make that grouping about
    # three times the work of model and route together (docs/ledger.md, Performance).
    dimensions: tuple[TaskGroup, ...] = ("all", "model", "route")
    if by == "day":
        dimensions += ("day",)
    task_groups = ledger.task_costs(by=dimensions, **filters)
    tasks = task_groups.pop("all")[0]
    return {
        "summary": _group_row(overall, summary=True) | {"total_input": overall.total_input},
        "groups": [_group_row(t) for t in ledger.totals(by=by, **filters)],
        "busts": [
            {
                "reason": b.reason,
                "requests": b.requests,
                "cache_write": b.cache_write,
                "input": b.input,
                "cost_usd": b.cost_usd,
            }
            for b in ledger.top_busts(limit=top, **filters)
        ],
        "tasks": {
            "successful": tasks.successful,
            "failed": tasks.failed,
            "cost_usd": tasks.cost_usd,
            "cost_per_success_usd": tasks.per_success,
            "unpriced_tasks": tasks.unpriced,
        },
        "task_groups": {
            dimension: [_task_row(t) for t in groups] for dimension, groups in task_groups.items()
        },
    }


def _task_row(t: TaskCost) -> dict[str, Any]:
    return {
        "key": t.key,
        "successful": t.successful,
        "failed": t.failed,
        "cost_usd": t.cost_usd,
        "cost_per_success_usd": t.per_success,
        "unpriced_tasks": t.unpriced,
    }


def _fmt(value: Any, key: str = "") -> str:
    if value is None:
        return "(none)" if key == "key" else "-"
    if isinstance(value, Decimal) and key == "per":
        return f"{value:,.6f}"  # a cost per task is often well under a cent
    if isinstance(value, Decimal):
        return f"{value:,.4f}"
    if key.endswith("hit_rate"):
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _plain(value: Any) -> Any:
    """JSON-safe: money as exact strings, never floats."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _summary_pairs(data: dict[str, Any]) -> list[tuple[str, str]]:
    s, t = data["summary"], data["tasks"]
    return [
        (
            "requests (errors, of them cancelled)",
            f"{s['requests']:,} ({s['errors']:,}, {s['cancelled']:,})",
        ),
        (
            "tokens: in / read / write 5m / write 1h / out",
            " / ".join(
                f"{s[k]:,}"
                for k in ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output")
            ),
        ),
        ("total input", f"{s['total_input']:,}"),
        ("token hit rate (cache read / total input)", _fmt(s["token_hit_rate"], "hit_rate")),
        ("request hit rate (requests reading cache)", _fmt(s["request_hit_rate"], "hit_rate")),
        (
            "cost $",
            _fmt(s["cost_usd"]) + (f"  (+{s['unpriced']} unpriced)" if s["unpriced"] else ""),
        ),
        ("saved by caching $", _fmt(s["saved_usd"])),
        (
            "cost per successful task $",
            f"{_fmt(t['cost_per_success_usd'])}  ({t['successful']} ok, {t['failed']} failed"
            + (
                f"; {t['unpriced_tasks']} with unpriced rows, so at least this)"
                if t["unpriced_tasks"]
                else ")"
            ),
        ),
        ("ITPM weight (input + writes)", _fmt(s["rate_limit_tokens"])),
        ("billed-equivalent input tokens", _fmt(s["billed_equivalent_tokens"])),
        ("naive log tokens (input + output)", _fmt(s["naive_tokens"])),
        ("rows whose output is estimated (cut streams)", _fmt(s["estimated"])),
    ]


def render_summary(data: dict[str, Any], console: Console, *, title: str = "Summary") -> None:
    """Print the report's summary as a two-column table that wraps its labels, never its
    figures."""
    summary = Table(title=title, show_header=False, box=box.SIMPLE, show_edge=False)
    summary.add_column("measure", style="bold", overflow="fold")
    summary.add_column("value", justify="right", no_wrap=True)
    for name, value in _summary_pairs(data):
        summary.add_row(name, value)
    console.print(summary)


def _render_table(data: dict[str, Any], console: Console, by: str) -> None:
    render_summary(data, console)
    rows = [
        {c.key: _fmt(row.get(c.key, _write(row)), c.key) for c in _TABLE_COLUMNS}
        for row in data["groups"]
    ]
    print_fitted(console, _TABLE_COLUMNS, rows, title=f"By {by}", legend=_LEGEND)
    busts = [
        {
            "reason": b["reason"],
            **{k: _fmt(b[k]) for k in ("requests", "cache_write", "input", "cost_usd")},
        }
        for b in data["busts"]
    ]
    print_fitted(
        console,
        [
            Column("reason", "reason", text=True, min_width=18),
            Column("requests", "req"),
            Column("cache_write", "write"),
            Column("input", "in"),
            Column("cost_usd", "cost $"),
        ],
        busts,
        title="Top cache busts",
    )
    tasks = [
        {
            "by": dimension,
            "key": _task_key(row["key"], dimension),
            **{k: _fmt(row[k]) for k in ("successful", "failed", "cost_usd")},
            "per": _fmt(row["cost_per_success_usd"], "per"),
        }
        for dimension, rows in data["task_groups"].items()
        for row in rows
    ]
    if tasks:
        print_fitted(
            console,
            [
                Column("by", "by", text=True, min_width=5),
                Column("key", "group", text=True, min_width=16),
                Column("successful", "ok"),
                Column("failed", "failed"),
                Column("cost_usd", "cost $"),
                Column("per", "$ / success"),
            ],
            tasks,
            title="Cost per successful task",
            legend=_TASK_LEGEND,
        )


#: Under the cost-per-task table: how a task that used several models is counted.
_TASK_LEGEND = (
    "a task counts once in each model, route and day it used, with that group's share of its "
    "cost; route = tier needed>tier that answered"
)


def _task_key(key: str | None, dimension: str) -> str:
    # Rows without a route are unrouted turns, pre-warms and keep-alives.
    if key is None:
        return "(no route)" if dimension == "route" else "(none)"
    return key


def _write(row: dict[str, Any]) -> int:
    return int(row["cache_write_5m"]) + int(row["cache_write_1h"])


def _check_exists(url: str | None) -> None:
    """A report only reads: a SQLite path that does not exist is a typo, not a new ledger."""
    if url is None or url.startswith(("postgresql://", "postgres://")) or ":memory:" in url:
        return
    path = Path(url.removeprefix("sqlite:///")).expanduser()
    if "://" not in url.removeprefix("sqlite:///") and not path.exists():
        raise click.ClickException(f"no ledger at {path}; check --ledger (nothing was created)")


def _md_cell(text: str) -> str:
    # A "|" in a key (a session id, a reason) would split the cell; a newline, the row.
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(headings: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _render_md(data: dict[str, Any], by: str) -> str:
    parts = ["## Summary", _md_table(["measure", "value"], [list(p) for p in _summary_pairs(data)])]
    parts += [
        f"## By {by}",
        _md_table(
            [h for _, h in _COLUMNS], [[_fmt(r[k], k) for k, _ in _COLUMNS] for r in data["groups"]]
        ),
    ]
    parts += [
        "## Cost per successful task",
        _md_table(
            ["by", "group", "successful", "failed", "cost $", "cost per success $"],
            [
                [
                    dimension,
                    _task_key(row["key"], dimension),
                    *(_fmt(row[k]) for k in ("successful", "failed", "cost_usd")),
                    _fmt(row["cost_per_success_usd"], "per"),
                ]
                for dimension, rows in data["task_groups"].items()
                for row in rows
            ],
        ),
    ]
    parts += [
        "## Top cache busts",
        _md_table(
            ["reason", "requests", "cache write", "input", "cost $"],
            [
                [
                    b["reason"],
                    *(_fmt(b[k]) for k in ("requests", "cache_write", "input", "cost_usd")),
                ]
                for b in data["busts"]
            ],
        ),
    ]
    return "\n\n".join(parts) + "\n"


def _render_csv(data: dict[str, Any]) -> str:
    """One CSV: the last column, ``table``, says ``group``, ``summary``, ``bust`` or
    ``task_model`` / ``task_route`` / ``task_day``; a bust row's ``key`` is its reason and
    ``cache_write`` its writes (both kinds); a task row fills ``key``, ``cost_usd``,
    ``unpriced`` (tasks with an unpriced row) and the three task columns (``successful``,
    ``failed``, ``cost_per_success_usd``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    keys = [k for k, _ in _COLUMNS]
    task_keys = ["successful", "failed", "cost_per_success_usd"]
    writer.writerow([*keys, "cache_write", *task_keys, "table"])
    none = [""] * len(task_keys)
    for table, row in [("group", r) for r in data["groups"]] + [("summary", data["summary"])]:
        cells = ["" if row[k] is None else _plain(row[k]) for k in keys]
        writer.writerow([*cells, _write(row), *none, table])
    for b in data["busts"]:
        bust = {"key": b["reason"], "requests": b["requests"], "input": b["input"]}
        bust["cost_usd"] = b["cost_usd"]
        cells = ["" if bust.get(k) is None else _plain(bust[k]) for k in keys]
        writer.writerow([*cells, b["cache_write"], *none, "bust"])
    for dimension, rows in data["task_groups"].items():
        for row in rows:
            task = {"key": row["key"], "cost_usd": row["cost_usd"]}
            task["unpriced"] = row["unpriced_tasks"]
            cells = ["" if task.get(k) is None else _plain(task[k]) for k in keys]
            extra = ["" if row[k] is None else _plain(row[k]) for k in task_keys]
            writer.writerow([*cells, "", *extra, f"task_{dimension}"])
    return out.getvalue()


def _pyplot() -> Any:
    """Return matplotlib.pyplot on the file-only backend, or say how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise click.ClickException(
            '--plot needs matplotlib, which is not installed: pip install "convo[plot]"'
        ) from None
    return plt


def _series(ledger: Ledger, filters: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Cost and hit rates per bin that suits the data's span: hours when it spans two days
    or less, else days. Each bin: ``start`` (a datetime), ``cost``, ``token``, ``request``."""
    days = ledger.totals(by="day", **filters)
    if len(days) > 2:
        return "day", [
            {
                "start": dt.datetime.fromisoformat(str(d.key)),
                "cost": float(d.cost_usd),
                "token": d.token_hit_rate,
                "request": d.request_hit_rate,
            }
            for d in days
        ]
    bins: dict[dt.datetime, dict[str, float]] = {}
    for row in ledger.rows(**filters):
        start = row.time.replace(minute=0, second=0, microsecond=0)
        b = bins.setdefault(start, dict.fromkeys(("cost", "read", "input", "ok", "hits"), 0.0))
        b["cost"] += float(row.cost_usd or 0)
        b["read"] += row.cache_read
        b["input"] += row.input + row.cache_read + row.cache_write_5m + row.cache_write_1h
        if row.status == "ok":
            b["ok"] += 1
            b["hits"] += row.cache_read > 0
    return "hour", [
        {
            "start": start,
            "cost": b["cost"],
            "token": b["read"] / b["input"] if b["input"] else None,
            "request": b["hits"] / b["ok"] if b["ok"] else None,
        }
        for start, b in sorted(bins.items())
    ]


def _plot(ledger: Ledger, path: str, filters: dict[str, Any]) -> None:
    plt = _pyplot()
    import matplotlib.dates as mdates

    unit, series = _series(ledger, filters)
    step = dt.timedelta(hours=1) if unit == "hour" else dt.timedelta(days=1)
    x = [b["start"] for b in series]
    fig, (cost_ax, hit_ax) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    # Bars start at their bin and span 90% of it; a lone bin keeps a bin's margin either side
    # so it reads as one hour (or day), not as a bar filling the chart.
    cost_ax.bar(x, [b["cost"] for b in series], width=step * 0.9, align="edge", color="tab:blue")
    cost_ax.set_ylabel("cost (USD)")
    cost_ax.set_title(f"convo ledger: cost and cache hit rate per {unit} (UTC)")
    mid = [s + step / 2 for s in x]
    for key, marker, label in (
        ("token", "o", "token hit rate"),
        ("request", "s", "request hit rate"),
    ):
        points = [(m, b[key] * 100) for m, b in zip(mid, series, strict=True) if b[key] is not None]
        hit_ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=label)
    hit_ax.set_ylabel("hit rate (%)")
    hit_ax.set_ylim(0, 105)
    if x:
        hit_ax.set_xlim(min(x) - step, max(x) + 2 * step)
        hit_ax.legend(loc="lower right")
    if unit == "hour":
        hit_ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))  # type: ignore[no-untyped-call]
        days = sorted({s.strftime("%Y-%m-%d") for s in x})
        hit_ax.set_xlabel("hour (UTC) on " + " and ".join(days) if days else "hour (UTC)")
    else:
        hit_ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %d"))  # type: ignore[no-untyped-call]
        hit_ax.set_xlabel("day (UTC)")
        fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _no_match_hint(ledger: Ledger, filters: dict[str, Any]) -> str | None:
    """When filters match nothing in a ledger that has rows, say what the ledger does hold."""
    if not any(filters.values()) or not ledger.total().requests:
        return None
    for name in ("model", "session"):
        if filters[name] is not None:
            keys = [str(t.key) for t in ledger.totals(by=name) if t.key is not None]
            if filters[name] not in keys:
                shown = ", ".join(keys[:5]) + (
                    f" and {len(keys) - 5} more" if len(keys) > 5 else ""
                )
                return f"no rows with --{name} {filters[name]}; this ledger has: {shown}"
    return "no rows in that time range; try a wider --since/--until"


@click.command(short_help="Tokens, hit rates, cost and rate-limit weight from a ledger.")
@click.option(
    "--ledger",
    "url",
    envvar="CONVO_LEDGER",
    metavar="PATH_OR_URL",
    help="Ledger path or URL (sqlite:///..., postgresql://...); default: the user ledger.",
)
@click.option("--since", help="Only rows since: 30m, 24h, 7d, 2w or an ISO date/time (UTC).")
@click.option("--until", help="Only rows before this time (same forms as --since).")
@click.option("--model", help="Only this model id.")
@click.option("--session", help="Only this session id.")
@click.option(
    "--by",
    type=click.Choice(["model", "session", "day", "prefix"]),
    default="model",
    show_default=True,
    help="How to group the breakdown table.",
)
@click.option(
    "--top",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="How many cache-bust reasons to list.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv", "md"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True),
    help='Also write a PNG of cost and hit rate per day (needs "convo[plot]").',
)
def report(
    url: str | None,
    since: str | None,
    until: str | None,
    model: str | None,
    session: str | None,
    by: GroupBy,
    top: int,
    fmt: str,
    plot: str | None,
) -> None:
    """Tokens by kind, hit rates, cost, saved and rate-limit weight from a usage ledger."""
    if plot:
        _pyplot()  # fail before reading anything when the extra is missing
    filters: dict[str, Any] = {
        "since": _when(since, "--since"),
        "until": _when(until, "--until"),
        "model": model,
        "session": session,
    }
    _check_exists(url)
    try:
        with Ledger.open(url) if url else Ledger.default() as ledger:
            data = build_report(ledger, by=by, top=top, **filters)
            hint = _no_match_hint(ledger, filters) if not data["summary"]["requests"] else None
            if plot:
                _plot(ledger, plot, filters)
    except (LedgerError, ValueError) as error:
        if debugging():
            raise
        # A report reads: a bad URL or an unreachable database is a message, not a traceback
        # (the ledger's errors already carry the location with any password masked).
        raise click.ClickException(one_line(error)) from error
    if fmt == "json":
        click.echo(json.dumps(_plain(data), indent=2))
    elif fmt == "csv":
        click.echo(_render_csv(data), nl=False)
    elif fmt == "md":
        click.echo(_render_md(data, by), nl=False)
    elif hint and not data["summary"]["requests"]:
        click.echo(f"no rows match: {hint}", err=True)
        hint = None
    else:
        console = output_console()
        _render_table(data, console, by)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    if plot:
        click.echo(f"wrote {plot}", err=True)

"""Ledger benchmark: batched append throughput and report-query latency over N rows.

Usage::

    python benchmarks/ledger.py                 # 1,000,000 rows, SQLite in a temp dir
    python benchmarks/ledger.py --rows 100000 --url postgresql://postgres@127.0.0.1/test

Prints a JSON document, then the same figures as a Markdown table. Rows are built before
the clock starts, so append throughput measures the ledger (enqueue, convert, commit),
not row construction; it is timed from the first append to the end of ``flush()``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convo.cli.report import build_report
from convo.ledger import Ledger, LedgerRow

MODELS = ["claude-sonnet-4-6", "claude-opus-4-6", "claude-haiku-4-5", "claude-sonnet-4-5"]
REASONS = ["hit"] * 7 + ["cold", "expired", "system_changed", "messages_changed"]
T_END = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)


def make_rows(n: int, seed: int = 7) -> list[LedgerRow]:
    """*n* plausible rows over 30 days, 4 models, 1,000 sessions, 50 prefixes."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        hit = rnd.random() < 0.7
        write = 0 if hit else rnd.randint(1024, 60_000)
        read = rnd.randint(1024, 60_000) if hit else 0
        cost = Decimal(rnd.randint(1, 400_000_000)).scaleb(-9)
        rows.append(
            LedgerRow(
                model=MODELS[i % 4],
                time=T_END - dt.timedelta(seconds=rnd.uniform(0, 30 * 86400)),
                session_id=f"s{i % 1000}",
                conversation_id=f"c{i % 20000}",
                prefix_fingerprint=f"{i % 50:016x}",
                input=rnd.randint(1, 2000),
                cache_read=read,
                cache_write_5m=write,
                output=rnd.randint(1, 1500),
                cost_usd=cost,
                saved_usd=cost / 3,
                price_source="genai-prices 0.2.3",
                rate_limit_tokens=write + 100,
                latency_ms=rnd.uniform(200, 9000),
                request_id=f"req_{i:012d}",
                cache_outcome="hit" if hit else "write",
                cache_reason=rnd.choice(REASONS),
                status="error" if i % 97 == 0 else "ok",
            )
        )
    return rows


def timed(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Median wall seconds of *repeat* calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in lscpu.splitlines()
                if ln.startswith("Model name")
            ),
            "unknown",
        )
    except OSError:
        model = "unknown"
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run(url: str, n: int, chunk: int) -> dict[str, Any]:
    # Real appends arrive in time order; random order would make every index insert random.
    rows = sorted(make_rows(n), key=lambda r: r.time)
    with Ledger.open(":memory:") as scratch:
        sample = rows[:100_000]
        start = time.perf_counter()
        for row in sample:
            scratch.append(row)
        enqueue_s = time.perf_counter() - start
    since = T_END - dt.timedelta(days=7)
    with Ledger.open(url) as led:
        # Append in chunks so the queue never holds more than `chunk` rows: the figure is
        # sustained throughput, not how fast Python fills a list.
        start = time.perf_counter()
        for i in range(0, n, chunk):
            for row in rows[i : i + chunk]:
                led.append(row)
            led.flush()
        append_s = time.perf_counter() - start
        del rows
        queries: dict[str, Callable[[], Any]] = {
            "total": lambda: led.total(),
            "totals by model": lambda: led.totals(by="model"),
            "totals by day": lambda: led.totals(by="day"),
            "totals by session": lambda: led.totals(by="session"),
            "totals by prefix": lambda: led.totals(by="prefix"),
            "totals by model, last 7 days": lambda: led.totals(by="model", since=since),
            "total, one session": lambda: led.total(session="s42"),
            "top busts": lambda: led.top_busts(),
            "cost per successful task": lambda: led.task_cost(),
            "cost per successful task by model, route, day": lambda: led.task_costs(),
            "whole `convo report`": lambda: build_report(led, by="model"),
            "whole `convo report --since 7d`": lambda: build_report(led, by="model", since=since),
        }
        for c in range(0, 20000, 3):
            led.mark_outcome(f"c{c}", "success" if c % 2 else "failure")
        led.flush()
        latency = {name: round(timed(fn), 4) for name, fn in queries.items()}
        count = led.total().requests
    return {
        "url": url.split("?")[0],
        "rows": count,
        "append_rows_per_s": round(n / append_s),
        "append_chunk": chunk,
        "enqueue_rows_per_s": round(len(sample) / enqueue_s),
        "query_seconds_median_of_3": latency,
        "machine": machine(),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Ledger benchmark: {result['rows']:,} rows, {result['url']}, "
        f"{result['machine']['cpus']} CPUs ({result['machine']['cpu']})",
        "",
        "| measure | value |",
        "|---|---|",
        f"| append throughput, batched (rows/s) | {result['append_rows_per_s']:,} |",
        f"| append() enqueue only (rows/s) | {result['enqueue_rows_per_s']:,} |",
    ]
    for name, seconds in result["query_seconds_median_of_3"].items():
        lines.append(f"| {name} (s, median of 3) | {seconds:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=50_000)
    parser.add_argument("--url", help="ledger URL; default a SQLite file in a temp dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.url or str(Path(tmp) / "bench.db"), args.rows, args.chunk)
    print(json.dumps(result, indent=2))
    print()
    print(markdown(result))


if __name__ == "__main__":
    main()

"""Rate-limit benchmark: 200 tasks against an emulator with a small ITPM, paced and not.

Usage::

    python benchmarks/rate_limits.py                 # 200 tasks of 500 tokens, ITPM 72,000
    python benchmarks/rate_limits.py --tasks 100 --itpm 30000

The emulator is served in-process (real time, responses at once) and limited to ``--itpm``
input tokens per minute. Every task sends one request of a fixed, uncached input (distinct
text, no breakpoints, so nothing caches and every token counts toward ITPM) through
``AsyncAnthropic(max_retries=0)``, all tasks started at once.

* **paced**: every task goes through one shared ``RateLimiter(itpm=...)``
  (``acquire_async``, then ``observe_headers`` and ``settle`` on each response).
* **unpaced**: the same load with no limiter; a 429 is retried naively after its
  ``retry-after``, which is what a client without pacing does at best.

Share of the allowed ITPM used = tokens admitted / (capacity + rate × elapsed), where
elapsed runs from the start of the run to the admission (send) of the last request: the
most the server's bucket could have admitted in that time. Prints JSON, then Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convo.emulator import RunningEmulator, serve
from convo.limits import RateLimiter

MODEL = "claude-sonnet-4-6"


def requests(count: int, size: int) -> list[dict[str, Any]]:
    """*count* distinct requests of exactly *size* input tokens (convo.tokens counting)."""
    return [
        {
            "model": MODEL,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": f"task {i} " + "words " * (size - 2)}],
        }
        for i in range(count)
    ]


async def run(
    emu: RunningEmulator, bodies: list[dict[str, Any]], itpm: int, weight: int, *, paced: bool
) -> dict[str, Any]:
    """Send every body at once, paced by a shared limiter or not; count 429s and time."""
    emu.reset()  # fresh, full buckets and counters; the config stays
    limiter = RateLimiter(itpm=itpm) if paced else None
    limited = 0
    admitted_tokens = 0
    last_send = 0.0
    async with anthropic.AsyncAnthropic(
        base_url=emu.base_url, api_key="sk-bench", max_retries=0
    ) as client:
        start = time.monotonic()

        async def task(body: dict[str, Any]) -> None:
            nonlocal limited, admitted_tokens, last_send
            while True:
                grant = None
                if limiter is not None:
                    grant = await limiter.acquire_async(input_tokens=weight, output_tokens=16)
                sent = time.monotonic()
                try:
                    raw = await client.messages.with_raw_response.create(**body)
                except anthropic.RateLimitError as error:
                    limited += 1
                    retry_after = float(error.response.headers.get("retry-after", "1"))
                    if limiter is not None:
                        limiter.observe_headers(error.response.headers)
                        limiter.observe_rate_limited(retry_after)
                    else:
                        await asyncio.sleep(retry_after)
                    continue
                usage = (await raw.parse()).usage
                size = usage.input_tokens + (usage.cache_creation_input_tokens or 0)
                if limiter is not None and grant is not None:
                    limiter.observe_headers(raw.headers)
                    limiter.settle(grant, input_tokens=size, output_tokens=usage.output_tokens)
                admitted_tokens += size
                last_send = max(last_send, sent - start)
                return

        await asyncio.gather(*(task(b) for b in bodies))
        finished = time.monotonic() - start
    stats = emu.stats()
    allowed = itpm + itpm / 60 * last_send
    return {
        "mode": "paced" if paced else "unpaced",
        "tasks": len(bodies),
        "http_429": limited,
        "emulator_by_status": stats["requests"]["by_status"],
        "tokens_admitted": admitted_tokens,
        "elapsed_to_last_send_s": round(last_send, 2),
        "elapsed_total_s": round(finished, 2),
        "allowed_tokens": round(allowed),
        "itpm_share_used": round(admitted_tokens / allowed, 4),
        "cache_read_tokens": stats["tokens"]["cache_read"],
    }


def machine() -> str:
    """The CPU model and core count, as lscpu reports them."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln),
            platform.processor(),
        )
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor()
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    """Run both modes and print JSON, then a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=500, help="input tokens per request")
    parser.add_argument("--itpm", type=int, default=72_000)
    args = parser.parse_args()
    bodies = requests(args.tasks, args.tokens)
    config = {"limits": {"default": {"rpm": 4000, "itpm": args.itpm, "otpm": 400_000}}}
    with serve() as emu:
        emu.configure(config)
        results = [
            asyncio.run(run(emu, bodies, args.itpm, args.tokens, paced=p)) for p in (True, False)
        ]
    document = {
        "benchmark": "rate_limits",
        "machine": machine(),
        "itpm": args.itpm,
        "tokens_per_request": args.tokens,
        "results": results,
    }
    print(json.dumps(document, indent=2))
    print()
    print(f"ITPM {args.itpm:,}, {args.tasks} tasks × {args.tokens} tokens; {document['machine']}")
    print()
    print("| mode | 429s | tokens admitted | to last send (s) | total (s) | ITPM share used |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['mode']} | {r['http_429']} | {r['tokens_admitted']:,} "
            f"| {r['elapsed_to_last_send_s']} | {r['elapsed_total_s']} "
            f"| {r['itpm_share_used']:.1%} |"
        )


if __name__ == "__main__":
    main()

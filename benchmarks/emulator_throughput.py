"""Emulator throughput: requests/s for cached 10k-token prompts, JSON and streaming.

The emulator runs as its own process (``convo emulator serve``), as a user would run it,
and clients in this process keep a fixed number of requests in flight: the real
``AsyncAnthropic`` SDK (its parsing is part of the figure, as it is for any caller), and a
plain pooled HTTP client that reads the whole body (closer to what the emulator itself can
serve). Every measured request reads a warm 10,000-token prefix. On 2 cores the client and
the server share the machine, so the figures are a floor for the emulator's capacity; the
CPU seconds each side used are printed to show which one was the bottleneck.

Run: ``python benchmarks/emulator_throughput.py [--requests 2000] [--concurrency 16]``.
Prints JSON, and a Markdown table with ``--markdown``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx2

from convo.emulator import serve_process

MODEL = "claude-sonnet-4-6"
# 10,000 tokens by convo.tokens: 10,000 words of at most five letters.
PREFIX = " ".join(("alpha", "beta", "gamma", "delta")[i % 4] for i in range(10_000))


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of *pid* so far (Linux), to show which side is the bottleneck."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


async def run_mode(
    client: anthropic.AsyncAnthropic,
    http: httpx2.AsyncClient,
    *,
    via: str,
    stream: bool,
    requests: int,
    concurrency: int,
) -> dict[str, Any]:
    system: Any = [{"type": "text", "text": PREFIX, "cache_control": {"type": "ephemeral"}}]
    messages: Any = [{"role": "user", "content": "hello"}]
    await client.messages.create(model=MODEL, max_tokens=16, system=system, messages=messages)
    latencies: list[float] = []
    reads = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker() -> None:
        nonlocal reads
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            if via == "http":
                body = {
                    "model": MODEL,
                    "max_tokens": 16,
                    "system": system,
                    "messages": messages,
                    "stream": stream,
                }
                response = await http.post(
                    "/v1/messages",
                    json=body,
                    headers={"x-api-key": "sk-bench", "anthropic-version": "2023-06-01"},
                )
                if stream:
                    start = json.loads(response.text.split("data: ", 2)[1].split("\n", 1)[0])
                    usage = start["message"]["usage"]
                else:
                    usage = response.json()["usage"]
                latencies.append(time.perf_counter() - started)
                reads += usage["cache_read_input_tokens"] == 10_000
                continue
            if stream:
                async with client.messages.stream(
                    model=MODEL, max_tokens=16, system=system, messages=messages
                ) as s:
                    final = await s.get_final_message()
            else:
                final = await client.messages.create(
                    model=MODEL, max_tokens=16, system=system, messages=messages
                )
            latencies.append(time.perf_counter() - started)
            reads += (final.usage.cache_read_input_tokens or 0) == 10_000

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "client": "anthropic SDK" if via == "sdk" else "raw HTTP",
        "mode": "stream" if stream else "json",
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(requests / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "all_cache_reads": reads == requests,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with serve_process() as server:
        async with (
            anthropic.AsyncAnthropic(
                base_url=server.base_url, api_key="sk-bench", max_retries=0
            ) as client,
            httpx2.AsyncClient(base_url=server.base_url, timeout=30) as http,
        ):
            # Generous limits: this measures the emulator, not its rate limiter.
            await client.put(
                "/_emulator/config",
                body={"limits": {"default": {"rpm": None, "itpm": None, "otpm": None}}},
                cast_to=object,
            )
            results = [
                await run_mode(
                    client,
                    http,
                    via=via,
                    stream=stream,
                    requests=args.requests,
                    concurrency=args.concurrency,
                )
                for via in ("sdk", "http")
                for stream in (False, True)
            ]
        server_cpu = _cpu_seconds(server.process.pid)
    return {
        "benchmark": "emulator_throughput",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "prefix_tokens": 10_000,
        "server_cpu_seconds": server_cpu,
        "client_cpu_seconds": round(time.process_time(), 2),
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    print(json.dumps(report, indent=2))
    if args.markdown:
        print("\n| client | mode | requests | in flight | requests/s | p50 ms | p99 ms |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in report["results"]:
            cells = (
                "client",
                "mode",
                "requests",
                "concurrency",
                "requests_per_s",
                "p50_ms",
                "p99_ms",
            )
            print("| " + " | ".join(str(r[c]) for c in cells) + " |")


if __name__ == "__main__":
    main()

"""A real job queue on Redis (saq): worker processes share warm state and the rate budget.

100 jobs are queued on a prefix nobody has cached yet. Two worker processes, each running
20 jobs at a time, take them. Through ``RedisWarmRegistry`` the workers agree that exactly
one job writes the prefix to the cache: every other job, in either process, waits for that
write's response to begin and then reads it. Through ``RedisRateLimiter`` they draw on one
rate budget, so together they stay under the organisation's limits. One write for 100 jobs.

    python examples/job_queue.py                  # Redis at 127.0.0.1:6379, an emulator
    python examples/job_queue.py --redis redis://host:6379/0 --jobs 100 --workers 2

Everything it puts in Redis is under keys of its own (a random run id), removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import redis
import redis.asyncio
from saq import Queue, Worker

import convo

# The emulator accepts any key; a key in the environment is used as it would be for real
# (and never printed).
EMULATOR_KEY = os.environ.get("ANTHROPIC_API_KEY") or "sk-ant-example"

PREFIX = convo.Prefix(
    model="claude-sonnet-4-6",
    system=["You extract the invoice number, amount and due date from an email. " * 200],
)


async def answer(ctx: dict[str, Any], *, email: str) -> dict[str, Any]:
    """One job: one turn on the shared prefix (history="none": there is no next turn)."""
    session = convo.AsyncSession(
        PREFIX,
        client=ctx["client"],
        registry=ctx["registry"],
        limiter=ctx["limiter"],
        history="none",
        ledger=False,
        max_tokens=64,
    )
    reply = await session.send(email)
    return {
        "cache_read": reply.usage.cache_read,
        "cache_write": reply.usage.cache_write,
        "input": reply.usage.input,
        "reason": reply.reason,
        "cost_usd": None if reply.cost.usd is None else str(reply.cost.usd),
        "pid": os.getpid(),
    }


def run_worker(redis_url: str, run: str) -> None:
    """A worker process: takes jobs until it is told to stop (SIGTERM, which saq handles by
    finishing the jobs in hand and running ``shutdown``)."""

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["client"] = anthropic.AsyncAnthropic()  # ANTHROPIC_BASE_URL / _API_KEY
        ctx["registry"] = convo.RedisWarmRegistry(redis_url, prefix=f"{run}:warm:")
        ctx["limiter"] = convo.RedisRateLimiter(
            redis_url, key="org", rpm=4000, itpm=2_000_000, otpm=400_000, prefix=f"{run}:limits:"
        )
        # Tell the enqueuer this worker is up (see enqueue_and_wait), once saq's first sweep
        # of its active list is done: a sweep after the jobs are queued could abort a job
        # another worker has just taken but not yet marked active ("swept").
        ctx["announce"] = asyncio.create_task(announce())

    async def shutdown(ctx: dict[str, Any]) -> None:
        await ctx["client"].close()
        await ctx["registry"].aclose()
        await ctx["limiter"].aclose()

    # saq warns at every shutdown that its own timers were cancelled: not news here.
    logging.getLogger("saq").setLevel(logging.ERROR)

    swept = asyncio.Event()

    async def announce() -> None:
        await swept.wait()
        ready = redis.asyncio.Redis.from_url(redis_url)
        await ready.rpush(f"{run}:ready", os.getpid())
        await ready.aclose()

    async def work() -> None:
        queue = Queue.from_url(redis_url, name=run)
        sweep = queue.sweep

        async def sweep_and_note(*args: Any, **kwargs: Any) -> Any:
            try:
                return await sweep(*args, **kwargs)
            finally:
                swept.set()

        queue.sweep = sweep_and_note  # type: ignore[method-assign]
        worker = Worker(
            queue,
            functions=[answer],
            concurrency=20,
            startup=startup,
            shutdown=shutdown,
            # Not burst mode: a worker that started early would stop on an empty queue while
            # the other is still starting. main() stops the workers once every job is done.
            # saq sweeps its active list when a worker starts: a job another worker has just
            # taken but not yet marked active would be aborted as "swept". The jobs are only
            # queued once every worker has swept, and take seconds, so sweep rarely after.
            timers={"sweep": 600},
        )
        await worker.start()
        await queue.disconnect()

    asyncio.run(work())


async def enqueue_and_wait(
    redis_url: str, run: str, jobs: int, workers: int
) -> list[dict[str, Any]]:
    """Wait for *workers* workers to be up, queue *jobs* jobs, and collect their results."""
    ready = redis.asyncio.Redis.from_url(redis_url, socket_timeout=90)

    try:
        for _ in range(workers):
            if await ready.blpop([f"{run}:ready"], timeout=60) is None:
                raise RuntimeError("a worker did not start within 60 s")
    finally:
        await ready.aclose()
    queue = Queue.from_url(redis_url, name=run)
    try:
        emails = [
            {"email": f"Invoice INV-{i:04d}: EUR {100 + i}.00 due 2026-12-{1 + i % 28:02d}."}
            for i in range(jobs)
        ]
        results: list[dict[str, Any]] = await queue.map("answer", emails, timeout=300)
        return results
    finally:
        await queue.disconnect()


def summary(results: list[dict[str, Any]]) -> str:
    writes = [r for r in results if r["cache_write"]]
    read = sum(r["cache_read"] for r in results)
    total = sum(r["cache_read"] + r["cache_write"] + r["input"] for r in results)
    cost = sum((Decimal(r["cost_usd"] or 0) for r in results), Decimal(0))
    pids = len({r["pid"] for r in results})
    return (
        f"jobs: {len(results)} on {pids} worker processes\n"
        f"cache writes: {len(writes)} ({sum(r['cache_write'] for r in writes)} tokens)\n"
        f"cache reads: {sum(1 for r in results if r['cache_read'])} ({read} tokens)\n"
        f"hit rate: {read / total:.1%} of input tokens\n"
        f"cost: ${cost:.4f}"
    )


def cleanup(redis_url: str, run: str) -> None:
    """Delete every key this run made (never anything else: the server may be shared)."""
    client = redis.Redis.from_url(redis_url)
    try:
        for pattern in (f"{run}:*", f"saq:{run}:*", f"saq:job:{run}:*", f"saq:abort:{run}:*"):
            keys = list(client.scan_iter(match=pattern))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker", metavar="RUN", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.redis, args.worker)
        return
    run = f"convo-example-{uuid.uuid4().hex[:12]}"
    try:
        with convo.emulator.serve() as running:
            env = {
                **os.environ,
                "ANTHROPIC_BASE_URL": running.base_url,
                "ANTHROPIC_API_KEY": EMULATOR_KEY,
                "PYTHONPATH": os.pathsep.join(
                    [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]
                ),
            }
            workers = [
                subprocess.Popen(
                    [sys.executable, __file__, "--redis", args.redis, "--worker", run], env=env
                )
                for _ in range(args.workers)
            ]
            try:
                results = asyncio.run(enqueue_and_wait(args.redis, run, args.jobs, args.workers))
            finally:
                for process in workers:
                    process.terminate()
                for process in workers:
                    process.wait(60)
        print(summary(results))
    finally:
        cleanup(args.redis, run)


if __name__ == "__main__":
    main()

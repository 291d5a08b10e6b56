"""An asyncio pool of 50 tasks on one shared prefix: one cache write, 49 reads.

Every task builds its own ``AsyncSession`` on the same static prefix, but they share one
``WarmRegistry`` (single flight: the first task writes the prefix, the rest wait for its
response to begin and then read it) and one ``RateLimiter`` (the pool is paced before the
server would answer 429). One-shot tasks use ``history="none"``: there is no next turn to
cache the question for.

Run it against the emulator (the default) or the real API::

    python examples/worker_pool.py              # starts an emulator in this process
    python examples/worker_pool.py --real       # ANTHROPIC_API_KEY from the environment
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import Iterator
from decimal import Decimal

import anthropic

import convo

# The emulator accepts any key; a key in the environment is used as it would be for real
# (and never printed).
EMULATOR_KEY = os.environ.get("ANTHROPIC_API_KEY") or "sk-ant-example"

PREFIX = convo.Prefix(
    model="claude-sonnet-4-6",
    system=["You classify customer emails into billing, bug, feature or other. " * 200],
)
TASKS = 50


async def run_pool(client: anthropic.AsyncAnthropic, tasks: int = TASKS) -> list[convo.Reply]:
    """Answer *tasks* questions concurrently on one prefix, registry and limiter."""
    registry = convo.WarmRegistry()
    limiter = convo.RateLimiter(rpm=4000, itpm=2_000_000, otpm=400_000)

    async def one(i: int) -> convo.Reply:
        session = convo.AsyncSession(
            PREFIX,
            client=client,
            registry=registry,
            limiter=limiter,
            history="none",
            ledger=False,
            max_tokens=64,
        )
        return await session.send(f"Email #{i}: my invoice shows the wrong amount.")

    return list(await asyncio.gather(*(one(i) for i in range(tasks))))


def summary(replies: list[convo.Reply]) -> str:
    """A few readable lines: writes, reads, hit rate, cost."""
    writes = sum(1 for r in replies if r.usage.cache_write)
    read = sum(r.usage.cache_read for r in replies)
    total = sum(r.usage.total_input for r in replies)
    cost = sum((r.cost.usd or Decimal(0) for r in replies), Decimal(0))
    saved = sum((r.cost.saved_usd or Decimal(0) for r in replies), Decimal(0))
    return (
        f"requests: {len(replies)}\n"
        f"cache writes: {writes} ({sum(r.usage.cache_write for r in replies)} tokens)\n"
        f"cache reads: {sum(1 for r in replies if r.usage.cache_read)} ({read} tokens)\n"
        f"hit rate: {read / total:.1%} of input tokens\n"
        f"cost: ${cost:.4f} (caching saved ${saved:.4f})"
    )


@contextlib.contextmanager
def emulated() -> Iterator[str]:
    """An emulator of the Messages API in this process; yields its base URL."""
    with convo.emulator.serve() as running:
        yield running.base_url


async def main_async(base_url: str | None) -> None:
    client = (
        anthropic.AsyncAnthropic(base_url=base_url, api_key=EMULATOR_KEY)
        if base_url
        else anthropic.AsyncAnthropic()
    )
    async with client:
        replies = await run_pool(client)
    print(summary(replies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="use the real API")
    args = parser.parse_args()
    if args.real:
        asyncio.run(main_async(None))
        return
    with emulated() as base_url:
        asyncio.run(main_async(base_url))


if __name__ == "__main__":
    main()

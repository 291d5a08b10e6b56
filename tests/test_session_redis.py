"""Sessions in several processes share warm state through Redis: one write of a cold prefix."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from collections.abc import Iterator

import anthropic
import pytest

import convo
from convo.emulator import RunningEmulator
from tests.warm_support import delete_under, local_redis

from .conftest import API_KEY
from .test_session import MODEL, OVERLAP, SYSTEM

REDIS_URL = "redis://127.0.0.1:6379/0"
PROCESSES, SESSIONS = 4, 10


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own, removed afterwards."""
    prefix = f"convo:test:{uuid.uuid4().hex}:"
    client = local_redis()
    yield prefix
    delete_under(client, prefix)
    client.close()


def _worker(
    base_url: str, redis_prefix: str, ready: object, out: multiprocessing.Queue[object]
) -> None:
    """One process: SESSIONS AsyncSessions on the shared prefix, sent when all are ready."""

    async def main() -> list[tuple[int, int]]:
        registry = convo.RedisWarmRegistry(REDIS_URL, prefix=redis_prefix)
        prefix = convo.Prefix(model=MODEL, system=[SYSTEM])
        async with anthropic.AsyncAnthropic(
            base_url=base_url, api_key=API_KEY, max_retries=0
        ) as client:
            sessions = [
                convo.AsyncSession(
                    prefix,
                    client=client,
                    history="none",
                    registry=registry,
                    limiter=convo.RateLimiter(),
                    ledger=False,
                    max_tokens=16,
                )
                for _ in range(SESSIONS)
            ]
            ready.wait(timeout=60)  # type: ignore[attr-defined]  # a multiprocessing Barrier
            replies = await asyncio.gather(
                *(s.send(f"Question {i}") for i, s in enumerate(sessions))
            )
        return [(r.usage.cache_read, r.usage.cache_write) for r in replies]

    try:
        out.put(asyncio.run(main()))
    except Exception as error:  # report it to the parent instead of dying silently
        out.put(repr(error))


class TestRedisSingleFlight:
    """4 processes × 10 sessions on one cold prefix."""

    def test_four_processes_write_the_prefix_once(
        self, emulator: RunningEmulator, redis_prefix: str
    ) -> None:
        """Exactly one of the 40 requests writes; the other 39 wait for it and read."""
        emulator.configure(OVERLAP)
        # forkserver: no fork of this threaded test process, and the server imports convo and
        # the SDK once for all four children instead of each spawned child importing them.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["tests.test_session_redis"])
        out: multiprocessing.Queue[object] = context.Queue()
        ready = context.Barrier(PROCESSES)  # all 40 requests leave together
        workers = [
            context.Process(target=_worker, args=(emulator.base_url, redis_prefix, ready, out))
            for _ in range(PROCESSES)
        ]
        for w in workers:
            w.start()
        results = [out.get(timeout=60) for _ in workers]
        for w in workers:
            w.join(timeout=30)
        assert all(isinstance(r, list) for r in results), results
        usages = [u for r in results for u in r]  # type: ignore[union-attr]
        tokens = convo.Prefix(model=MODEL, system=[SYSTEM]).tokens
        assert len(usages) == PROCESSES * SESSIONS
        assert sorted(usages).count((tokens, 0)) == PROCESSES * SESSIONS - 1
        assert emulator.stats()["cache"]["writes"] == 1
        written = emulator.stats()["tokens"]
        assert written["cache_write_5m"] + written["cache_write_1h"] == tokens

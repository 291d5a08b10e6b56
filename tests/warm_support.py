"""What the warm-registry tests share: a settable clock and bounded real-time waits."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from convo.warm import Flight, RedisWarmRegistry, WarmBackend, WarmKey

#: An API key that must never show up in anything a registry keeps.
SECRET = "sk-ant-api03-very-secret-key-material"


class FakeClock:
    """A wall clock that moves only when told to (set ``now`` or call ``advance``)."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def settle(condition: Callable[[], bool], *, within: float = 3.0) -> None:
    """Yield to the loop until ``condition()`` holds (real time, bounded)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


def wait_until(condition: Callable[[], bool], *, within: float = 3.0) -> None:
    """Sleep in small steps until ``condition()`` holds (real time, bounded)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def start_acquirers(
    registries: list[WarmBackend], key: WarmKey, count: int
) -> tuple[list[Flight], list[asyncio.Task[None]]]:
    """Start ``count`` tasks acquiring ``key`` round-robin over ``registries``.

    Returns the list each task appends its flight to (in the order they got one) and the tasks.
    """
    flights: list[Flight] = []

    async def one(registry: WarmBackend) -> None:
        flights.append(await registry.acquire_async(key, ttl_seconds=300))

    tasks = [asyncio.create_task(one(registries[i % len(registries)])) for i in range(count)]
    return flights, tasks


def start_threads(
    registry: WarmBackend, key: WarmKey, count: int, *, together: bool = True
) -> tuple[list[Flight], list[threading.Thread]]:
    """Start ``count`` threads calling the blocking ``acquire`` on ``key``.

    With ``together`` they pass a barrier first, so they all ask at once. Returns the list
    each thread appends its flight to (in the order they got one) and the threads.
    """
    flights: list[Flight] = []
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def one() -> None:
        if together:
            barrier.wait()
        flight = registry.acquire(key, ttl_seconds=300)
        with lock:
            flights.append(flight)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    return flights, threads


def acquire_in_process(url: str, prefix: str, key: WarmKey, barrier: Any, results: Any) -> None:
    """One worker process: its own RedisWarmRegistry, 10 tasks acquiring ``key`` at once.

    A writer holds its claim 0.3 s (its time to first byte) before ``began``. Puts a list
    of ``(role, waited)`` on ``results``.
    """

    async def main() -> list[tuple[str, float]]:
        registry = RedisWarmRegistry(url, prefix=prefix, poll_interval=0.01)

        async def one() -> tuple[str, float]:
            flight = await registry.acquire_async(key, ttl_seconds=300)
            if flight.role == "writer":
                await asyncio.sleep(0.3)
                await registry.began_async(flight)
            return flight.role, flight.waited

        try:
            barrier.wait(10)  # line the processes up so they really ask at once
            return list(await asyncio.gather(*(one() for _ in range(10))))
        finally:
            await registry.aclose()
            registry.close()

    results.put(asyncio.run(main()))

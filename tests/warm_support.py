"""What the warm-registry tests share: a settable clock and bounded real-time waits."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from convo.warm import Flight, RedisWarmRegistry, WarmBackend, WarmKey
from tests.conftest import service_missing

#: The local Redis the tests share (.ci/run starts it).
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"


def local_redis() -> redis.Redis:
    """A sync client on the local Redis; the test is skipped when none runs (failed in
    CI, where one must)."""
    client = redis.Redis.from_url(LOCAL_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        client.close()
        service_missing("no Redis at 127.0.0.1:6379 (.ci/run starts one)")
    return client


def delete_under(client: redis.Redis, prefix: str) -> None:
    """Delete every key under *prefix* (a test's own keys)."""
    for found in client.scan_iter(match=f"{prefix}*"):
        client.delete(found)


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """A redis-server of the test's own on a free port, to kill and restart at will.

    Nothing is saved to disk, so a restart comes back empty, like a Redis that lost its data.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None
        self._stats: redis.Redis | None = None

    def start(self) -> None:
        """Start it and wait (at most 5 s) until it answers PING."""
        assert self._process is None
        self._process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "local",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            deadline = time.monotonic() + 5
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.01)
        finally:
            client.close()

    def kill(self) -> None:
        """Kill it at once (SIGKILL): no goodbye to its clients."""
        assert self._process is not None
        self._process.kill()
        self._process.wait(5)
        self._process = None
        if self._stats is not None:
            self._stats.close()
            self._stats = None

    def client(self) -> redis.Redis:
        """A fresh sync client on it."""
        return redis.Redis(port=self.port)

    def calls(self) -> dict[str, int]:
        """``INFO commandstats`` as command name to calls, asked on one lasting connection
        (so the asking adds nothing but its INFO, which :func:`calls_between` leaves out)."""
        if self._stats is None:
            self._stats = self.client()
        stats = self._stats.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    def close(self) -> None:
        """Kill the server if it runs and close the stats connection."""
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        if self._process is not None:
            self.kill()


def calls_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The commands run between two ``RedisServer.calls()``, but the INFOs asking."""
    delta = {name: n - before.get(name, 0) for name, n in after.items() if name != "info"}
    return {name: n for name, n in delta.items() if n}

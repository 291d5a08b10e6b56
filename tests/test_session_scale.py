"""Sessions on the Redis backends and a PostgreSQL ledger: round trips, scale, outages,
and an event loop that never waits on a backend."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import pytest

import convo
from convo.emulator import RunningEmulator
from tests.conftest import service_missing

MODEL = "claude-sonnet-4-6"
SYSTEM = "You answer questions about the travel plan, briefly and exactly. " * 120  # 2,040 tokens
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server of this test's own, on a free port, that the test may kill."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            service_missing("no redis-server binary")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def stats(self) -> dict[str, int]:
        """Calls per command so far (INFO commandstats; commands a script runs included)."""
        import redis

        if self._client is None:  # one connection, so the count's own HELLO is paid once
            self._client = redis.Redis(port=self.port)
        stats = self._client.info("commandstats")
        return {name: value["calls"] for name, value in stats.items()}


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def pg_ledger() -> AsyncIterator[convo.Ledger]:
    try:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True, connect_timeout=3) as conn:
            schema = f"convo_scale_{uuid.uuid4().hex[:12]}"
            conn.execute(f"CREATE SCHEMA {schema}")
    except Exception as error:
        service_missing(f"no PostgreSQL server at 127.0.0.1:5432 ({error})")
    ledger = convo.Ledger.open(f"{PG_URL}?options=-csearch_path%3D{schema}")
    try:
        yield ledger
    finally:
        await ledger.aclose()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
async def backends() -> AsyncIterator[list[Any]]:
    """Redis backends a test builds; closed on its event loop when the test ends."""
    built: list[Any] = []
    yield built
    for backend in built:
        await backend.aclose()


def _session(
    emulator: RunningEmulator, client: Any, url: str, built: list[Any], **options: Any
) -> convo.AsyncSession:
    clock = emulator.emulator.clock.now
    options.setdefault("ledger", False)
    if "registry" not in options:
        options["registry"] = convo.RedisWarmRegistry(url, clock=clock)
        built.append(options["registry"])
    if "limiter" not in options:
        options["limiter"] = convo.RedisRateLimiter(url, key="scale")
        built.append(options["limiter"])
    return convo.AsyncSession(
        convo.Prefix(model=MODEL, system=[SYSTEM]),
        client=client,
        clock=clock,
        max_tokens=64,
        **options,
    )


class _RoundTrips:
    """Counts what the redis clients send (a pipeline counts once): the round trips."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import redis.asyncio.connection as aconnection
        import redis.connection as connection

        self.count = 0
        for module in (connection, aconnection):
            klass = module.AbstractConnection
            original = klass.send_packed_command

            def counted(conn: Any, *args: Any, __original: Any = original, **kw: Any) -> Any:
                self.count += 1
                return __original(conn, *args, **kw)

            monkeypatch.setattr(klass, "send_packed_command", counted)


class TestRoundTrips:
    """A warm turn on both Redis backends costs at most 3 Redis round trips."""

    async def test_a_warm_turn_needs_three_round_trips(
        self,
        emulator: RunningEmulator,
        async_client: anthropic.AsyncAnthropic,
        redis_server: RedisServer,
        backends: list[Any],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Counted at the clients, and by the server itself: scripts run (INFO
        commandstats) and connections opened (HELLO) around a warm turn."""
        session = _session(emulator, async_client, redis_server.url, backends)
        first = await session.send("Where do we start?")
        assert first.usage.cache_write > 0
        await session.send("And then?")
        before = redis_server.stats()
        trips = _RoundTrips(monkeypatch)
        warm = await session.send("And after that?")
        counted = trips.count
        monkeypatch.undo()
        after = redis_server.stats()
        assert warm.reason == "hit"
        assert counted <= 3, f"{counted} Redis round trips for one warm turn"
        scripts = sum(
            after.get(k, 0) - before.get(k, 0) for k in ("cmdstat_evalsha", "cmdstat_eval")
        )
        assert scripts <= 3
        assert after.get("cmdstat_hello", 0) == before.get("cmdstat_hello", 0)


class TestScale:
    """Many sessions on the Redis backends in one process."""

    async def test_a_thousand_concurrent_sessions(
        self,
        emulator: RunningEmulator,
        async_client: anthropic.AsyncAnthropic,
        redis_server: RedisServer,
        backends: list[Any],
    ) -> None:
        """1,000 AsyncSessions at once on a cold prefix: all answered, one cache write
        (redis-py 8 caps an unbounded pool at 100 connections; the backends' pool blocks)."""
        emulator.configure(
            {
                "time_scale": 1.0,
                "latency": {"base_s": 0.3, "prefill_uncached_s": 0.0, "decode_s": 0.0},
                "limits": {"default": {"rpm": None, "itpm": None, "otpm": None}},
            }
        )
        clock = emulator.emulator.clock.now
        registry = convo.RedisWarmRegistry(redis_server.url, clock=clock)
        limiter = convo.RedisRateLimiter(redis_server.url, key="thousand")
        backends += [registry, limiter]
        sessions = [
            _session(
                emulator,
                async_client,
                redis_server.url,
                backends,
                registry=registry,
                limiter=limiter,
            )
            for _ in range(1000)
        ]
        replies = await asyncio.gather(*(s.send("Which gate?") for s in sessions))
        assert len(replies) == 1000
        assert sum(r.usage.cache_write > 0 for r in replies) == 1
        assert emulator.stats()["cache"]["writes"] == 1


class TestRedisOutage:
    """Redis going away degrades to local state and comes back; it never breaks a turn."""

    async def test_redis_killed_and_restarted_mid_run(
        self,
        emulator: RunningEmulator,
        async_client: anthropic.AsyncAnthropic,
        redis_server: RedisServer,
        backends: list[Any],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Every turn succeeds through the outage, one warning says so, and the history
        stays whole."""
        caplog.set_level(logging.WARNING, logger="convo")
        session = _session(emulator, async_client, redis_server.url, backends)
        await session.send("Turn 1")
        redis_server.stop()
        for turn in range(2, 6):
            await session.send(f"Turn {turn}")
        redis_server.start()
        emulator.advance(30)  # past the backends' probe interval
        for turn in range(6, 9):
            await session.send(f"Turn {turn}")
        assert len(session.history) == 16
        roles = [m["role"] for m in session.history]
        assert roles == ["user", "assistant"] * 8
        warnings = [r for r in caplog.records if r.name.startswith("convo")]
        assert warnings, "the outage went unreported"


class _DelayProxy:
    """A TCP proxy on its own thread that holds every reply from the backend for *delay*
    seconds: any call made synchronously on the event loop then stalls the loop that long."""

    def __init__(self, port: int, delay: float) -> None:
        self.target = port
        self.delay = delay
        self.port = _free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def pipe(reader: Any, writer: Any, delay: float) -> None:
            try:
                while data := await reader.read(65536):
                    if delay:
                        await asyncio.sleep(delay)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def handle(reader: Any, writer: Any) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            await asyncio.gather(pipe(reader, up_writer, 0), pipe(up_reader, writer, self.delay))

        async def main() -> None:
            await asyncio.start_server(handle, "127.0.0.1", self.port)
            self._ready.set()
            await asyncio.Event().wait()

        self._loop.run_until_complete(main())


async def _lags(interval: float, stop: asyncio.Event, found: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(interval)
        found.append(time.perf_counter() - started - interval)


class TestEventLoop:
    """No step of an AsyncSession's turn blocks its event loop on a backend."""

    @pytest.mark.skipif(os.environ.get("CONVO_SKIP_PG") == "1", reason="PostgreSQL disabled")
    async def test_no_step_blocks_on_io(
        self,
        emulator: RunningEmulator,
        async_client: anthropic.AsyncAnthropic,
        redis_server: RedisServer,
        backends: list[Any],
        pg_ledger: convo.Ledger,
    ) -> None:
        """Every Redis reply is held 60 ms by a proxy: a turn's Redis round trips then stall
        a loop that waits on them synchronously by 60 ms each. An AsyncSession on the Redis
        registry, the Redis limiter and a PostgreSQL ledger (with a ledger-scope budget, so
        the ledger is read before each turn) leaves the loop free; the control, calling the
        same registry synchronously, shows the probe would have seen it."""
        delay = 0.06
        proxy = _DelayProxy(redis_server.port, delay)
        url = f"redis://127.0.0.1:{proxy.port}/0"
        session = _session(
            emulator,
            async_client,
            url,
            backends,
            ledger=pg_ledger,
            budget=convo.Budget(max_cost_usd="100", scope="ledger"),
        )
        stop = asyncio.Event()
        lags: list[float] = []
        probe = asyncio.create_task(_lags(0.005, stop, lags))
        for turn in range(4):
            await session.send(f"Turn {turn}")
        stop.set()
        await probe
        stalls = [lag for lag in lags if lag >= delay * 0.9]
        assert len(stalls) <= 1, f"the loop stalled {len(stalls)} times: {sorted(lags)[-5:]}"

        # Control: the same registry called synchronously from the loop stalls it.
        control: list[float] = []
        stop = asyncio.Event()
        probe = asyncio.create_task(_lags(0.005, stop, control))
        await asyncio.sleep(0.01)
        for _ in range(3):
            convo.RedisWarmRegistry(url).state(session.warm_key)
            await asyncio.sleep(0.01)
        stop.set()
        await probe
        assert len([lag for lag in control if lag >= delay * 0.9]) >= 3

"""The Redis warm registry: the in-process guarantees across processes, on a real Redis."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import random
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convo.warm import Flight, RedisWarmRegistry, WarmKey, WarmRegistry, WarmState
from convo.warm.redis_scripts import SCRIPTS
from tests.warm_support import (
    SECRET,
    FakeClock,
    RedisServer,
    acquire_in_process,
    calls_between,
    delete_under,
    free_port,
    local_redis,
    settle,
    start_acquirers,
    start_threads,
    wait_until,
)

from .conftest import service_missing

REDIS_URL = "redis://127.0.0.1:6379/0"
MODEL = "claude-sonnet-4-6"


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    """A sync client on the local Redis (skipped when none runs, failed in CI)."""
    connection = local_redis()
    yield connection
    connection.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    """A key prefix unique to this test; every key under it is deleted afterwards."""
    name = f"convo:test:warm:{uuid.uuid4().hex}:"
    yield name
    delete_under(client, name)


@pytest.fixture
def clock() -> FakeClock:
    """A fake wall clock at t = 1000."""
    return FakeClock()


@pytest.fixture
def registry(client: redis.Redis, prefix: str, clock: FakeClock) -> RedisWarmRegistry:
    """A registry on the shared client, its own prefix and the fake clock."""
    return RedisWarmRegistry(client, prefix=prefix, clock=clock, poll_interval=0.005)


@pytest.fixture
def key() -> WarmKey:
    """A prefix key built from a secret API key."""
    return WarmKey.for_api_key(SECRET, MODEL, "cd" * 16)


class TestRedisSingleFlight:
    """One writer per cold prefix, however many clients ask at once."""

    async def test_fifty_tasks_two_registries_one_writer(
        self, server: RedisServer, clock: FakeClock, key: WarmKey
    ) -> None:
        """50 tasks over two registries (two connection pools) on a cold key: one writer,
        and every reader waits for the write to begin."""
        raw = server.client()
        for text in SCRIPTS.values():  # loaded: no EVALSHA misses below
            raw.script_load(text)
        raw.close()
        registry = RedisWarmRegistry(server.url, prefix="fifty:", clock=clock)
        other = RedisWarmRegistry(server.url, prefix="fifty:", clock=clock)
        loop = asyncio.get_running_loop()
        try:
            # Each registry writes a key of its own first, which starts its wake-up
            # subscription: with it up, a waiter checks once and then waits, so one EVALSHA
            # below is one task's first check.
            for n, each in enumerate((registry, other)):
                own_key = WarmKey.for_api_key(SECRET, MODEL, f"{n}" * 32)
                own = await each.acquire_async(own_key, ttl_seconds=300)
                await each.began_async(own)
                await settle(lambda each=each: each._loops[loop].wake.up is not None)
            started = server.calls()
            flights, tasks = start_acquirers([registry, other], key, 50)
            # Every task's first check has run before the write begins (a fixed sleep let a
            # check queued for a connection land after it, under load: that reader found
            # the write begun and waited 0 s).
            await settle(lambda: calls_between(started, server.calls()).get("evalsha", 0) >= 50)
            assert [f.role for f in flights] == ["writer"]
            clock.advance(1.0)
            await registry.began_async(flights[0])
            await asyncio.wait_for(asyncio.gather(*tasks), 5)
        finally:
            for each in (registry, other):
                await each.aclose()
                each.close()
        roles = [f.role for f in flights]
        assert (roles.count("writer"), roles.count("reader")) == (1, 49)
        assert {f.waited for f in flights if f.role == "reader"} == {1.0}

    def test_threads_one_writer(self, registry: RedisWarmRegistry, key: WarmKey) -> None:
        """10 threads with the blocking acquire on a cold key: one writer, 9 readers."""
        flights, threads = start_threads(registry, key, 10)
        wait_until(lambda: len(flights) == 1)
        time.sleep(0.05)
        assert [f.role for f in flights] == ["writer"]
        registry.began(flights[0])
        for thread in threads:
            thread.join(3.0)
        roles = [f.role for f in flights]
        assert (roles.count("writer"), roles.count("reader")) == (1, 9)

    async def test_abandon_hands_write_to_exactly_one(
        self, registry: RedisWarmRegistry, key: WarmKey
    ) -> None:
        """An abandoned write passes to exactly one waiter; the others keep waiting."""
        first = await registry.acquire_async(key, ttl_seconds=300)
        flights, tasks = start_acquirers([registry], key, 10)
        try:
            await asyncio.sleep(0.03)
            await registry.abandon_async(first)
            await settle(lambda: len(flights) == 1)
            await asyncio.sleep(0.05)
            assert [f.role for f in flights] == ["writer"]
            await registry.began_async(flights[0])
            await asyncio.gather(*tasks)
        finally:
            await registry.aclose()
        assert [f.role for f in flights].count("writer") == 1

    def test_write_timeout_releases_crashed_writer(
        self, client: redis.Redis, prefix: str, key: WarmKey
    ) -> None:
        """A writer that never reports back loses its claim when Redis expires it."""
        registry = RedisWarmRegistry(client, prefix=prefix, write_timeout=0.2, poll_interval=0.01)
        crashed = registry.acquire(key, ttl_seconds=300)
        began = time.monotonic()
        successor = registry.acquire(key, ttl_seconds=300)
        assert (successor.role, crashed.role) == ("writer", "writer")
        assert 0.15 <= time.monotonic() - began < 2.0
        registry.began(crashed)  # a late report from the lapsed writer changes nothing
        state = registry.state(key)
        assert state is not None
        assert state.writing

    def test_foreign_abandon_keeps_claim(self, registry: RedisWarmRegistry, key: WarmKey) -> None:
        """Only the owner's token releases the claim (the Lua check-and-delete)."""
        writer = registry.acquire(key, ttl_seconds=300)
        registry.abandon(Flight(key=key, role="writer", token="not-the-owner", waited=0))
        assert registry.state(key) == WarmState(
            last_write_start=None,
            last_read_start=None,
            ttl_seconds=0.0,
            expires_at=float("-inf"),
            writing=True,
        )
        registry.abandon(writer)
        assert registry.state(key) is None


class TestAcrossProcesses:
    """Separate processes, each with its own registry, share one claim."""

    @pytest.mark.slow
    def test_four_processes_ten_tasks_one_writer(
        self, client: redis.Redis, prefix: str, key: WarmKey
    ) -> None:
        """4 processes x 10 tasks on one cold key: exactly one writer overall, 39 readers."""
        # forkserver: no fork of this threaded test process, and the server imports convo
        # once for all four children instead of each spawned child importing it again.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["tests.warm_support"])
        barrier = context.Barrier(4)
        results = context.Queue()
        processes = [
            context.Process(
                target=acquire_in_process, args=(REDIS_URL, prefix, key, barrier, results)
            )
            for _ in range(4)
        ]
        for process in processes:
            process.start()
        outcomes = [outcome for _ in processes for outcome in results.get(timeout=30)]
        for process in processes:
            process.join(10)
        roles = [role for role, _ in outcomes]
        assert [p.exitcode for p in processes] == [0, 0, 0, 0]
        assert (roles.count("writer"), roles.count("reader")) == (1, 39)
        # The barrier lines the processes up, so readers really waited for the writer.
        assert sum(waited > 0.1 for role, waited in outcomes if role == "reader") >= 30


class TestRedisTtlClock:
    """The TTL clock in the Redis hash, on the registries' (injected) clock."""

    def test_live_prefix_gives_reader_at_once(
        self, registry: RedisWarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """A recorded write makes the next acquire a reader without waiting."""
        registry.record(key, started_at=clock.now, ttl_seconds=300, wrote=True, read=False)
        flight = registry.acquire(key, ttl_seconds=300)
        assert (flight.role, flight.waited) == ("reader", 0.0)

    def test_expiry_counts_from_request_start(
        self, registry: RedisWarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """Live until start + ttl (exclusive); the stored floats round-trip exactly."""
        started = 1_761_000_000.123456
        clock.now = started + 40
        registry.record(key, started_at=started, ttl_seconds=300, wrote=True, read=False)
        assert registry.state(key) == WarmState(
            last_write_start=started,
            last_read_start=None,
            ttl_seconds=300,
            expires_at=started + 300,
            writing=False,
        )
        clock.now = started + 299.9
        assert registry.acquire(key, ttl_seconds=300).role == "reader"
        clock.now = started + 300
        assert registry.acquire(key, ttl_seconds=300).role == "writer"

    def test_out_of_order_records_keep_maxima(
        self, registry: RedisWarmRegistry, key: WarmKey
    ) -> None:
        """A late record of an older request never moves times backwards."""
        registry.record(key, started_at=1200, ttl_seconds=300, wrote=False, read=True)
        registry.record(key, started_at=1000, ttl_seconds=300, wrote=True, read=False)
        state = registry.state(key)
        assert state is not None
        assert (state.last_write_start, state.last_read_start, state.expires_at) == (
            1000,
            1200,
            1500,
        )

    def test_began_makes_live_and_frees_claim_at_once(
        self, registry: RedisWarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """After began, the state is live (from the acquire time) and nobody is writing."""
        writer = registry.acquire(key, ttl_seconds=3600)
        clock.advance(3)
        registry.began(writer)
        state = registry.state(key)
        assert state is not None
        assert (state.expires_at, state.ttl_seconds, state.writing) == (4600, 3600, False)

    @pytest.mark.parametrize(
        ("elapsed", "margin", "expected"),
        [
            pytest.param(200, 60, False, id="100s-left-margin-60"),
            pytest.param(250, 60, True, id="50s-left-margin-60"),
            pytest.param(300, 0, True, id="expired"),
        ],
    )
    async def test_needs_warming_margin(
        self,
        registry: RedisWarmRegistry,
        key: WarmKey,
        clock: FakeClock,
        elapsed: float,
        margin: float,
        expected: bool,
    ) -> None:
        """Cold needs warming, a live prefix once within margin, never while one writes."""
        assert registry.needs_warming(key)
        registry.record(key, started_at=clock.now, ttl_seconds=300, wrote=True, read=False)
        clock.advance(elapsed)
        try:
            assert await registry.needs_warming_async(key, margin=margin) is expected
        finally:
            await registry.aclose()

    def test_write_in_flight_needs_no_warming(
        self, registry: RedisWarmRegistry, key: WarmKey
    ) -> None:
        """While a write is in flight, another pre-warm would be a second write."""
        registry.acquire(key, ttl_seconds=300)
        assert not registry.needs_warming(key, margin=60)


class TestRedisLayout:
    """What convo keeps in Redis: no secret, and nothing that lives for ever."""

    @pytest.fixture
    def populated(self, registry: RedisWarmRegistry, key: WarmKey, clock: FakeClock) -> None:
        """One prefix with a write in flight and another written and read."""
        registry.acquire(WarmKey.for_api_key(SECRET, MODEL, "ee" * 16), ttl_seconds=300)
        registry.record(key, started_at=clock.now, ttl_seconds=300, wrote=True, read=True)

    @pytest.mark.usefixtures("populated")
    def test_no_secret_in_keys_or_values(self, client: redis.Redis, prefix: str) -> None:
        """The raw API key appears in no Redis key name or value."""
        stored = b""
        for name in client.scan_iter(match=f"{prefix}*"):
            stored += name
            if client.type(name) == b"hash":
                stored += b"".join(k + v for k, v in client.hgetall(name).items())
            else:
                stored += client.get(name) or b""
        assert stored.count(b":state") == 1
        assert SECRET.encode() not in stored

    @pytest.mark.usefixtures("populated")
    def test_every_key_expires(self, client: redis.Redis, prefix: str) -> None:
        """The claim expires after write_timeout; the state a day after the entry does."""
        ttls = {
            name.rsplit(b":", 1)[1]: client.pttl(name) for name in client.scan_iter(f"{prefix}*")
        }
        assert 0 < ttls[b"writer"] <= 60_000
        assert 86_400_000 < ttls[b"state"] <= 86_400_000 + 300_000

    async def test_async_client_derived_from_sync_client(
        self, registry: RedisWarmRegistry, key: WarmKey
    ) -> None:
        """Given only a sync client, the async methods build their own from its settings."""
        try:
            assert (await registry.acquire_async(key, ttl_seconds=300)).role == "writer"
            assert (await registry.state_async(key)) is not None
        finally:
            await registry.aclose()

    def test_bad_client_type_is_misuse(self) -> None:
        """Anything but a redis.Redis or a URL is a TypeError saying what to pass."""
        with pytest.raises(TypeError, match=r"redis\.Redis client or a URL"):
            RedisWarmRegistry(42)  # type: ignore[arg-type]

    def test_missing_extra_names_the_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without the redis package the error says pip install "convo[redis]"."""
        monkeypatch.setitem(sys.modules, "redis", None)
        with pytest.raises(ImportError, match=r'pip install "convo\[redis\]"'):
            RedisWarmRegistry(REDIS_URL)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of this test's own on a free port (killed afterwards)."""
    if shutil.which("redis-server") is None:
        service_missing("no redis-server on PATH")
    running = RedisServer()
    running.start()
    yield running
    running.close()


class _CountingConnection(redis.asyncio.Connection):
    """An asyncio connection that counts what it sends: one send is one round trip."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        await super().send_packed_command(command, check_health)


# What the acquire script runs inside its one EVALSHA (counted by commandstats too).
ACQUIRE_SCRIPT_COMMANDS = {"hget", "hmget", "hset", "pexpire", "pttl", "get", "set"}


class TestRoundTrips:
    """A warm request costs one round trip: acquire reads, records the read, returns state."""

    async def test_warm_reader_acquire_is_one_evalsha(
        self, server: RedisServer, clock: FakeClock, key: WarmKey
    ) -> None:
        """INFO commandstats over a warm acquire(refresh_at=...): one EVALSHA, nothing else."""
        registry = RedisWarmRegistry(server.url, prefix="rt:", clock=clock)
        try:
            writer = await registry.acquire_async(key, ttl_seconds=300)
            await registry.began_async(writer)
            await registry.acquire_async(key, ttl_seconds=300)  # connection and script loaded
            # The writer started this loop's wake-up subscription: let it settle, so the
            # count below is the acquire's alone.
            here = registry._loops[asyncio.get_running_loop()]
            await settle(lambda: here.wake.up is not None)
            clock.advance(10)
            before = server.calls()
            flight = await registry.acquire_async(key, ttl_seconds=300, refresh_at=clock.now)
            delta = calls_between(before, server.calls())
            assert delta.pop("evalsha") == 1
            assert "eval" not in delta
            assert set(delta) <= ACQUIRE_SCRIPT_COMMANDS  # all run by the script itself
            assert flight.role == "reader"
            assert flight.state == WarmState(
                last_write_start=1000,
                last_read_start=1010,
                ttl_seconds=300,
                expires_at=1310,
                writing=False,
            )
            assert await registry.state_async(key) == flight.state
        finally:
            await registry.aclose()
            registry.close()

    async def test_one_send_per_warm_acquire_client_side(
        self, server: RedisServer, clock: FakeClock, key: WarmKey
    ) -> None:
        """Counted on the connection: a warm acquire sends one command, a cold turn three."""
        pool = redis.asyncio.BlockingConnectionPool(
            port=server.port, max_connections=4, connection_class=_CountingConnection
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        registry = RedisWarmRegistry(server.client(), async_redis=client, prefix="rt:", clock=clock)
        try:
            await client.ping()
            for text in SCRIPTS.values():  # loaded, so no EVALSHA misses and loads
                await client.script_load(text)
            # A first writer starts the loop's wake-up subscription (a connection of its
            # own, once): let it settle so the counts below are the turns' alone.
            other = WarmKey.for_api_key(SECRET, MODEL, "01" * 16)
            await registry.began_async(await registry.acquire_async(other, ttl_seconds=300))
            here = registry._loops[asyncio.get_running_loop()]
            await settle(lambda: here.wake.up is not None)
            _CountingConnection.sent = 0
            writer = await registry.acquire_async(key, ttl_seconds=300, refresh_at=clock.now)
            await registry.began_async(writer)
            await registry.record_async(
                key, started_at=clock.now, ttl_seconds=300, wrote=True, read=False
            )
            cold = _CountingConnection.sent
            _CountingConnection.sent = 0
            reader = await registry.acquire_async(key, ttl_seconds=300, refresh_at=clock.now)
            await registry.began_async(reader)  # a reader's began sends nothing
            assert (cold, _CountingConnection.sent) == (3, 1)
        finally:
            await registry.aclose()
            await client.aclose()
            await pool.disconnect()
            registry.close()

    def test_sync_warm_reader_is_one_evalsha(
        self, server: RedisServer, clock: FakeClock, key: WarmKey
    ) -> None:
        """The blocking acquire: the same single EVALSHA."""
        registry = RedisWarmRegistry(server.url, prefix="rt:", clock=clock)
        try:
            registry.began(registry.acquire(key, ttl_seconds=300))
            registry.acquire(key, ttl_seconds=300)
            wait_until(lambda: registry._sync_wake.up is not None)
            before = server.calls()
            flight = registry.acquire(key, ttl_seconds=300, refresh_at=clock.now)
            delta = calls_between(before, server.calls())
            assert (delta.pop("evalsha"), flight.role) == (1, "reader")
            assert set(delta) <= ACQUIRE_SCRIPT_COMMANDS
        finally:
            registry.close()

    def test_writer_flight_carries_its_claim(
        self, registry: RedisWarmRegistry, key: WarmKey
    ) -> None:
        """A writer's state says a write is in flight (its own); nothing else is known yet."""
        flight = registry.acquire(key, ttl_seconds=300, refresh_at=1000)
        assert flight.role == "writer"
        assert flight.state == WarmState(
            last_write_start=None,
            last_read_start=None,
            ttl_seconds=0.0,
            expires_at=float("-inf"),
            writing=True,
        )

    def test_refresh_never_moves_expiry_back(
        self, registry: RedisWarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """A refresh from an older start keeps the later expiry (maxima, as record does)."""
        registry.record(key, started_at=1000, ttl_seconds=3600, wrote=True, read=False)
        flight = registry.acquire(key, ttl_seconds=300, refresh_at=1001)
        assert flight.state is not None
        assert (flight.state.last_read_start, flight.state.expires_at) == (1001, 4600)


class TestWokenNotPolled:
    """Waiters on a shared write are woken by pub/sub; they re-check only as a safety net."""

    @staticmethod
    async def one_write_99_waiters(
        registry: RedisWarmRegistry, key: WarmKey
    ) -> tuple[list[Flight], float]:
        """A writer holds ``key`` 0.3 s while 99 tasks wait; the flights and the time from
        ``began`` until the last waiter had its flight."""
        writer = await registry.acquire_async(key, ttl_seconds=300)
        flights, tasks = start_acquirers([registry], key, 99)
        await asyncio.sleep(0.3)
        assert flights == []
        began = time.monotonic()
        await registry.began_async(writer)
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return flights, time.monotonic() - began

    async def test_99_waiters_one_write(self, server: RedisServer, clock: FakeClock) -> None:
        """99 waiters during a 0.3 s write: 2 scripts each, one subscription, no polling."""
        registry = RedisWarmRegistry(server.url, prefix="wake:", clock=clock)
        first_key, second_key = (WarmKey.for_api_key(SECRET, MODEL, c * 32) for c in "12")
        try:
            await registry.state_async(first_key)  # connected; the loop's subscription made
            here = registry._loops[asyncio.get_running_loop()]
            await settle(lambda: here.wake.up is not None)
            raw = server.client()
            for text in SCRIPTS.values():  # loaded: no EVALSHA misses and loads below
                raw.script_load(text)
            raw.close()
            before = server.calls()
            first, first_woken = await self.one_write_99_waiters(registry, first_key)
            middle = server.calls()
            second, second_woken = await self.one_write_99_waiters(registry, second_key)
            first_calls = calls_between(before, middle)
            second_calls = calls_between(middle, server.calls())
        finally:
            await registry.aclose()
            registry.close()
        for flights in (first, second):
            assert [f.role for f in flights].count("reader") == 99
        # The writer's acquire and began, then per waiter its check and one after the
        # wake-up. Polling every 20 ms made it 1,306 for one such write.
        for calls in (first_calls, second_calls):
            assert calls["evalsha"] == 2 + 99 * 2, calls
            assert "subscribe" not in calls  # one subscription for the loop, made before
        # The safety re-check (poll_interval) is 1 s: only a wake-up finishes this soon.
        assert max(first_woken, second_woken) < 0.5

    async def test_waiters_before_the_subscription_check_again(
        self, server: RedisServer, key: WarmKey
    ) -> None:
        """Waiters that checked before the loop's subscription was up check once more, so a
        release published in between is not lost: at most 3 scripts each, all woken."""
        registry = RedisWarmRegistry(server.url, prefix="early:", poll_interval=30)
        raw = server.client()
        try:
            for text in SCRIPTS.values():
                raw.script_load(text)
            raw.set(f"early:{{{key.workspace}:{key.model}:{key.fingerprint}}}:writer", "other")
            before = server.calls()
            flights, tasks = start_acquirers([registry], key, 20)  # the loop's first calls
            await asyncio.sleep(0.2)
            assert flights == []
            raw.delete(f"early:{{{key.workspace}:{key.model}:{key.fingerprint}}}:writer")
            raw.publish("early:wake", f"1:early:{{{key.workspace}:{key.model}:{key.fingerprint}}}")
            await settle(lambda: len(flights) == 1)
            await registry.began_async(flights[0])
            await asyncio.wait_for(asyncio.gather(*tasks), 5)
            calls = calls_between(before, server.calls())
        finally:
            raw.close()
            await registry.aclose()
            registry.close()
        roles = [f.role for f in flights]
        assert (roles.count("writer"), len(roles)) == (1, 20)
        # Each: its check, one more once subscribed, one after the wake-up; the 19 that
        # lost the race for the claim wait for its began and check a last time.
        assert calls["evalsha"] <= 20 * 3 + 19 + 1, calls

    async def test_abandon_wakes_one_waiter(self, server: RedisServer, key: WarmKey) -> None:
        """A released claim wakes one waiter per process, which takes it over; the other 49
        sleep on (one wake-up each would be 49 round trips to find the new claim)."""
        registry = RedisWarmRegistry(server.url, prefix="one:", poll_interval=30)
        raw = server.client()
        for text in SCRIPTS.values():  # loaded: no EVALSHA misses and loads below
            raw.script_load(text)
        raw.close()
        try:
            first = await registry.acquire_async(key, ttl_seconds=300)
            here = registry._loops[asyncio.get_running_loop()]
            await settle(lambda: here.wake.up is not None)
            started = server.calls()
            flights, tasks = start_acquirers([registry], key, 50)
            await settle(lambda: here.wake.waiting == 50)
            # A waiter registers before its first check: wait for all 50 checks to have run
            # (a fixed sleep let late ones land in the count below, under load).
            await settle(lambda: calls_between(started, server.calls()).get("evalsha", 0) >= 50)
            await asyncio.sleep(0.05)
            before = server.calls()
            await registry.abandon_async(first)
            await settle(lambda: len(flights) == 1)
            await asyncio.sleep(0.1)
            handover = calls_between(before, server.calls())
            await registry.began_async(flights[0])
            await asyncio.wait_for(asyncio.gather(*tasks), 5)
        finally:
            await registry.aclose()
            registry.close()
        assert handover["evalsha"] == 2  # the release, and the one woken waiter's check
        roles = [f.role for f in flights]
        assert (roles.count("writer"), roles.count("reader")) == (1, 49)

    async def test_cancelled_woken_waiter_hands_wake_up_on(
        self, server: RedisServer, key: WarmKey
    ) -> None:
        """The one waiter woken for a released claim is cancelled before it looks: its
        wake-up passes to another waiter, which takes the claim over (no 30 s re-check)."""
        registry = RedisWarmRegistry(server.url, prefix="pass:", poll_interval=30)
        raw = server.client()
        try:
            await registry.acquire_async(key, ttl_seconds=300)
            here = registry._loops[asyncio.get_running_loop()]
            await settle(lambda: here.wake.up is not None)
            member = registry._base(key).encode()
            first = asyncio.create_task(registry.acquire_async(key, ttl_seconds=300))
            await settle(lambda: here.wake.waiting == 1)
            (first_event,) = here.wake._waiters[member]
            second = asyncio.create_task(registry.acquire_async(key, ttl_seconds=300))
            await settle(lambda: here.wake.waiting == 2)
            await asyncio.sleep(0.05)  # both asleep on their events
            # The claim goes without a message; then the first waiter is woken as a release
            # message would wake it, and cancelled in the same step, before it can look.
            raw.delete(f"{member.decode()}:writer")
            first_event.set()
            first.cancel()
            took_over = await asyncio.wait_for(second, 2)
            with pytest.raises(asyncio.CancelledError):
                await first
        finally:
            raw.close()
            await registry.aclose()
            registry.close()
        assert took_over.role == "writer"
        assert here.wake.waiting == 0

    async def test_lost_wake_up_is_caught_by_recheck(
        self, server: RedisServer, key: WarmKey
    ) -> None:
        """A claim gone without a message (deleted behind convo's back) is seen at poll_interval."""
        registry = RedisWarmRegistry(server.url, prefix="lost:", poll_interval=0.3)
        raw = server.client()
        try:
            await registry.acquire_async(key, ttl_seconds=300)
            waiting = asyncio.create_task(registry.acquire_async(key, ttl_seconds=300))
            await asyncio.sleep(0.1)
            gone = time.monotonic()
            raw.delete(*raw.keys("lost:*:writer"))
            flight = await asyncio.wait_for(waiting, 3)
            took = time.monotonic() - gone
        finally:
            raw.close()
            await registry.aclose()
            registry.close()
        assert flight.role == "writer"
        assert 0.1 <= took < 1.0

    async def test_crashed_writer_noticed_when_claim_lapses(
        self, server: RedisServer, key: WarmKey
    ) -> None:
        """A silent writer: waiters look again when its claim lapses, not after poll_interval."""
        registry = RedisWarmRegistry(
            server.url, prefix="crash:", write_timeout=0.3, poll_interval=30
        )
        try:
            await registry.acquire_async(key, ttl_seconds=300)
            began = time.monotonic()
            successor = await asyncio.wait_for(registry.acquire_async(key, ttl_seconds=300), 5)
            took = time.monotonic() - began
        finally:
            await registry.aclose()
            registry.close()
        assert successor.role == "writer"
        assert 0.25 <= took < 1.0

    def test_threads_woken(self, server: RedisServer, key: WarmKey) -> None:
        """Threads in the blocking acquire are woken too (poll_interval 30 s never fires)."""
        registry = RedisWarmRegistry(server.url, prefix="threads:", poll_interval=30)
        try:
            writer = registry.acquire(key, ttl_seconds=300)
            flights, threads = start_threads(registry, key, 10)
            time.sleep(0.2)
            began = time.monotonic()
            registry.began(writer)
            for thread in threads:
                thread.join(5)
            took = time.monotonic() - began
        finally:
            registry.close()
        assert [f.role for f in flights].count("reader") == 10
        assert took < 0.5


class TestCancellation:
    """A cancelled acquire_async leaves no claim and no waiter behind."""

    async def test_random_cancellations_leave_nothing(
        self, client: redis.Redis, prefix: str, key: WarmKey
    ) -> None:
        """300 flows cancelled at random moments: no claim stuck, no waiter registered."""
        registry = RedisWarmRegistry(REDIS_URL, prefix=prefix)
        rng = random.Random(8)
        writers = 0

        async def flow() -> None:
            nonlocal writers
            flight = await registry.acquire_async(key, ttl_seconds=300)
            try:
                writers += 1
                await asyncio.sleep(rng.uniform(0, 0.002))  # "sending"
            finally:
                # A failed write hands over; shielded as a session must, against a cancel.
                await asyncio.shield(registry.abandon_async(flight))

        try:
            tasks = [asyncio.create_task(flow()) for _ in range(300)]
            for task in rng.sample(tasks, 150):
                asyncio.get_running_loop().call_later(rng.uniform(0, 0.05), task.cancel)
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
            cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
            assert [
                r for r in results if not isinstance(r, (type(None), asyncio.CancelledError))
            ] == []
            await asyncio.sleep(0)  # let release tasks finish their bookkeeping
            here = registry._loops[asyncio.get_running_loop()]
            assert (here.wake.waiting, len(registry._releases)) == (0, 0)
            assert list(client.scan_iter(match=f"{prefix}*:writer")) == []
            assert (await registry.acquire_async(key, ttl_seconds=300, timeout=1)).role == "writer"
        finally:
            await registry.aclose()
            registry.close()
        assert cancelled > 0
        assert writers > 1

    async def test_cancel_while_script_in_flight_releases_claim(
        self, server: RedisServer, key: WarmKey
    ) -> None:
        """Cancelled while its script waits on a busy Redis: the claim it took is given back."""
        registry = RedisWarmRegistry(server.url, prefix="busy:")
        raw = server.client()
        try:
            await registry.state_async(key)  # connected
            sleeper = threading.Thread(target=raw.execute_command, args=("DEBUG", "SLEEP", "0.3"))
            sleeper.start()
            await asyncio.sleep(0.05)  # Redis is asleep now; the acquire's script will wait for it
            acquiring = asyncio.create_task(registry.acquire_async(key, ttl_seconds=300))
            await asyncio.sleep(0.1)
            acquiring.cancel()
            with pytest.raises(asyncio.CancelledError):
                await acquiring
            sleeper.join(5)
            assert raw.keys("busy:*:writer") == []
            assert (await registry.state_async(key)) is None
        finally:
            raw.close()
            await registry.aclose()
            registry.close()

    async def test_in_memory_cancellations_leave_nothing(self, key: WarmKey) -> None:
        """The same for WarmRegistry: no claim, no registered waiter."""
        registry = WarmRegistry()
        rng = random.Random(9)

        async def flow() -> None:
            flight = await registry.acquire_async(key, ttl_seconds=300)
            try:
                await asyncio.sleep(rng.uniform(0, 0.002))
            finally:
                registry.abandon(flight)

        tasks = [asyncio.create_task(flow()) for _ in range(300)]
        for task in rng.sample(tasks, 150):
            asyncio.get_running_loop().call_later(rng.uniform(0, 0.05), task.cancel)
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        assert registry._async_waiters == set()
        assert registry.state(key) is None  # no claim held, nothing written


class TestPool:
    """A bounded, blocking pool: one process runs any number of sessions."""

    @pytest.mark.slow
    async def test_thousand_flows_one_writer(
        self, server: RedisServer, clock: FakeClock, key: WarmKey
    ) -> None:
        """1,000 concurrent acquire/began/record flows on one cold key: 1 writer, 50 connections."""
        registry = RedisWarmRegistry(server.url, prefix="scale:", clock=clock)
        roles: list[str] = []

        async def flow() -> None:
            flight = await registry.acquire_async(key, ttl_seconds=300, refresh_at=clock.now)
            roles.append(flight.role)
            if flight.role == "writer":
                await asyncio.sleep(0.1)  # time to first byte
                await registry.began_async(flight)
            await registry.record_async(
                key,
                started_at=clock.now,
                ttl_seconds=300,
                wrote=flight.role == "writer",
                read=flight.role == "reader",
            )

        try:
            await asyncio.wait_for(asyncio.gather(*(flow() for _ in range(1000))), 60)
            pool = registry._loops[asyncio.get_running_loop()].client.connection_pool
            assert isinstance(pool, redis.asyncio.BlockingConnectionPool)
            assert pool.max_connections == 50
            clients = server.client()
            connected = clients.info("clients")["connected_clients"]
            clients.close()
        finally:
            await registry.aclose()
            registry.close()
        assert (roles.count("writer"), roles.count("reader")) == (1, 999)
        assert not registry.degraded
        # 50 pooled (one of them the subscription), this test's stats and the one above.
        assert connected <= 50 + 2

    async def test_max_connections_is_configurable(self, server: RedisServer, key: WarmKey) -> None:
        """max_connections=4: 200 flows share 4 connections, waiting for one, never failing."""
        registry = RedisWarmRegistry(server.url, prefix="small:", max_connections=4)

        async def flow() -> str:
            flight = await registry.acquire_async(key, ttl_seconds=300)
            if flight.role == "writer":
                await asyncio.sleep(0.05)
                await registry.began_async(flight)
            await registry.state_async(key)
            return flight.role

        try:
            roles = await asyncio.wait_for(asyncio.gather(*(flow() for _ in range(200))), 30)
            pool = registry._loops[asyncio.get_running_loop()].client.connection_pool
            assert pool.max_connections == 4
            assert not registry.degraded
        finally:
            await registry.aclose()
            registry.close()
        assert (roles.count("writer"), roles.count("reader")) == (1, 199)

    def test_too_small_a_pool_is_misuse(self) -> None:
        """One connection cannot hold the subscription and run scripts: a ValueError."""
        with pytest.raises(ValueError, match="at least 2"):
            RedisWarmRegistry(REDIS_URL, max_connections=1)


class TestDegrade:
    """Redis trouble degrades to in-process warm state, never breaks; Redis is rejoined."""

    @staticmethod
    def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "convo" and r.levelno == logging.WARNING]

    async def test_unreachable_from_the_start(
        self, caplog: pytest.LogCaptureFixture, clock: FakeClock, key: WarmKey
    ) -> None:
        """Nothing listening: every method works in-process; one warning, no exception."""
        registry = RedisWarmRegistry(f"redis://127.0.0.1:{free_port()}/0", clock=clock)
        try:
            writer = await registry.acquire_async(key, ttl_seconds=300, refresh_at=clock.now)
            waiting = asyncio.create_task(registry.acquire_async(key, ttl_seconds=300))
            await asyncio.sleep(0.02)
            assert not waiting.done()  # single flight still holds, within the process
            await registry.began_async(writer)
            assert (await waiting).role == "reader"
            await registry.record_async(
                key, started_at=clock.now, ttl_seconds=300, wrote=True, read=False
            )
            registry.record(key, started_at=clock.now, ttl_seconds=300, wrote=False, read=True)
            assert registry.acquire(key, ttl_seconds=300).role == "reader"
            other = WarmKey.for_api_key(SECRET, MODEL, "99" * 16)
            lone = registry.acquire(other, ttl_seconds=300)
            registry.abandon(lone)
            await registry.abandon_async(await registry.acquire_async(other, ttl_seconds=300))
            state = registry.state(key)
            assert state is not None
            assert state.expires_at == 1300
            assert await registry.state_async(key) == state
            assert not registry.needs_warming(key)
            assert await registry.needs_warming_async(other)
            assert registry.degraded
        finally:
            await registry.aclose()
            registry.close()
        assert len(self.warnings(caplog)) == 1
        assert "not answering" in self.warnings(caplog)[0].getMessage()

    def test_warning_names_no_password(
        self, caplog: pytest.LogCaptureFixture, key: WarmKey
    ) -> None:
        """The one warning says where Redis is, without the URL's user name or password."""
        url = f"redis://convo:hunter2-secret@127.0.0.1:{free_port()}/3"
        registry = RedisWarmRegistry(url)
        try:
            assert registry.acquire(key, ttl_seconds=300).role == "writer"
        finally:
            registry.close()
        (warning,) = self.warnings(caplog)
        assert "redis://127.0.0.1:" in warning.getMessage()
        assert "hunter2" not in caplog.text
        assert "convo:" not in warning.getMessage().split("redis://", 1)[1].split(" ", 1)[0]

    async def test_killed_mid_run_and_rejoined(
        self,
        server: RedisServer,
        caplog: pytest.LogCaptureFixture,
        clock: FakeClock,
        key: WarmKey,
    ) -> None:
        """Kill Redis: serve locally, one warning; restart: no contact until the probe is due."""
        caplog.set_level(logging.INFO, logger="convo")
        registry = RedisWarmRegistry(server.url, prefix="deg:", clock=clock, probe_interval=5)
        try:
            registry.record(key, started_at=clock.now, ttl_seconds=300, wrote=True, read=False)
            assert registry.acquire(key, ttl_seconds=300).role == "reader"
            server.kill()

            # Down: 20 sessions on another cold key, single flight in the process.
            cold = WarmKey.for_api_key(SECRET, MODEL, "77" * 16)
            flights, tasks = start_acquirers([registry], cold, 20)
            await settle(lambda: len(flights) == 1)
            await registry.began_async(flights[0])
            await asyncio.gather(*tasks)
            assert [f.role for f in flights].count("writer") == 1
            for _ in range(50):
                registry.state(key)
                await registry.record_async(
                    cold, started_at=clock.now, ttl_seconds=300, wrote=False, read=True
                )
            assert registry.degraded
            assert len(self.warnings(caplog)) == 1

            # Back, but the next probe is not due: Redis hears nothing from us.
            server.start()
            before = server.calls()
            clock.advance(4.9)
            await registry.acquire_async(cold, ttl_seconds=300)
            registry.state(key)
            assert calls_between(before, server.calls()) == {}
            assert registry.degraded

            # Probe due: the next call goes to Redis and the registry rejoins.
            clock.advance(0.1)
            assert registry.state(key) is None  # the restarted Redis is empty
            assert not registry.degraded
            writer = await registry.acquire_async(key, ttl_seconds=300)
            await registry.began_async(writer)
            raw = server.client()
            assert len(raw.keys("deg:*:state")) == 1  # the restarted Redis has the write
            raw.close()
        finally:
            await registry.aclose()
            registry.close()
        assert len(self.warnings(caplog)) == 1
        assert any("answers again" in r.getMessage() for r in caplog.records)

    async def test_waiters_survive_the_kill(
        self, server: RedisServer, caplog: pytest.LogCaptureFixture, key: WarmKey
    ) -> None:
        """Waiting on a Redis claim when Redis dies: they go on locally, one writer among them."""
        registry = RedisWarmRegistry(server.url, prefix="kill:", poll_interval=30)
        try:
            first = await registry.acquire_async(key, ttl_seconds=300)
            flights, tasks = start_acquirers([registry], key, 10)
            await asyncio.sleep(0.1)
            killed = time.monotonic()
            server.kill()
            await settle(lambda: len(flights) == 1, within=5)
            took = time.monotonic() - killed
            await registry.began_async(first)  # Redis is gone: swallowed
            await registry.began_async(flights[0])
            await asyncio.wait_for(asyncio.gather(*tasks), 5)
        finally:
            await registry.aclose()
            registry.close()
        roles = [f.role for f in flights]
        assert (roles.count("writer"), roles.count("reader")) == (1, 9)
        assert took < 3.0  # woken by the broken subscription, not by the 30 s re-check
        assert len(self.warnings(caplog)) == 1

    def test_sync_calls_degrade_too(
        self, server: RedisServer, caplog: pytest.LogCaptureFixture, key: WarmKey
    ) -> None:
        """The blocking methods, Redis killed between calls: no exception, one warning."""
        registry = RedisWarmRegistry(server.url, prefix="sync:")
        try:
            writer = registry.acquire(key, ttl_seconds=300)
            server.kill()
            registry.began(writer)
            registry.abandon(writer)
            registry.record(key, started_at=time.time(), ttl_seconds=300, wrote=True, read=False)
            assert registry.acquire(key, ttl_seconds=300).role == "reader"
            assert registry.needs_warming(key) is False
        finally:
            registry.close()
        assert len(self.warnings(caplog)) == 1


class TestShutdown:
    """A loop that ends without aclose still ends: the subscription stops when cancelled."""

    def test_asyncio_run_ends_without_aclose(self, server: RedisServer, key: WarmKey) -> None:
        """asyncio.run cancels the listening task at exit: it stops reading and closes the
        loop's connections (no ResourceWarning, which this suite turns into errors)."""
        registry = RedisWarmRegistry(server.url, prefix="exit:")

        async def main() -> None:
            flight = await registry.acquire_async(key, ttl_seconds=300)
            here = registry._loops[asyncio.get_running_loop()]
            await settle(lambda: here.wake.up is not None)
            await registry.began_async(flight)

        for _ in range(3):
            runner = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
            runner.start()
            runner.join(5)
            assert not runner.is_alive()
        registry.close()


# One step of a run against both registries: advance the clock, record a response, or a
# whole request (acquire with refresh_at, then began or abandon for a writer).
_STEP = st.one_of(
    st.tuples(st.just("advance"), st.sampled_from([1.0, 60.0, 299.0, 300.0, 3600.0])),
    st.tuples(
        st.just("record"),
        st.floats(min_value=-400, max_value=0),  # started this long ago
        st.sampled_from([300.0, 3600.0]),
        st.booleans(),
        st.booleans(),
    ),
    st.tuples(
        st.just("request"),
        st.floats(min_value=-5, max_value=0),  # refresh_at relative to now
        st.sampled_from([300.0, 3600.0]),
        st.booleans(),  # a writer begins (True) or abandons
    ),
)


class TestSameAsInProcess:
    """RedisWarmRegistry and WarmRegistry keep the same TTL clock, step for step."""

    # The fixtures are shared by the examples on purpose: each example uses a key of its own
    # under the one prefix (all deleted afterwards), on the one client.
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(steps=st.lists(_STEP, max_size=12))
    def test_random_runs_agree(self, client: redis.Redis, prefix: str, steps: list[Any]) -> None:
        """Every role, flight state and state() agree after every step of a random run."""
        clock = FakeClock()
        local = WarmRegistry(clock=clock)
        shared = RedisWarmRegistry(client, prefix=prefix, clock=clock)
        key = WarmKey.for_api_key(SECRET, MODEL, uuid.uuid4().hex)
        try:
            for step in steps:
                if step[0] == "advance":
                    clock.advance(step[1])
                elif step[0] == "record":
                    _, ago, ttl, wrote, read = step
                    for registry in (local, shared):
                        registry.record(
                            key, started_at=clock.now + ago, ttl_seconds=ttl, wrote=wrote, read=read
                        )
                else:
                    _, ago, ttl, begins = step
                    flights = [
                        r.acquire(key, ttl_seconds=ttl, refresh_at=clock.now + ago)
                        for r in (local, shared)
                    ]
                    assert flights[0].role == flights[1].role
                    assert flights[0].state == flights[1].state
                    for registry, flight in zip((local, shared), flights, strict=True):
                        if begins:
                            registry.began(flight)
                        else:
                            registry.abandon(flight)
                assert local.state(key) == shared.state(key)
        finally:
            shared.close()

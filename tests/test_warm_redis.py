"""The Redis warm registry: the in-process guarantees across processes, on a real Redis."""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from convo.warm import Flight, RedisWarmRegistry, WarmKey, WarmState
from tests.warm_support import (
    SECRET,
    FakeClock,
    acquire_in_process,
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
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        connection.ping()
    except redis.ConnectionError:
        connection.close()
        service_missing("no Redis at 127.0.0.1:6379 (.ci/run starts one)")
    yield connection
    connection.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    """A key prefix unique to this test; every key under it is deleted afterwards."""
    name = f"convo:test:warm:{uuid.uuid4().hex}:"
    yield name
    for found in client.scan_iter(match=f"{name}*"):
        client.delete(found)


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
        self, registry: RedisWarmRegistry, prefix: str, clock: FakeClock, key: WarmKey
    ) -> None:
        """50 tasks over two registries (two connection pools) on a cold key: one writer."""
        other = RedisWarmRegistry(REDIS_URL, prefix=prefix, clock=clock, poll_interval=0.005)
        flights, tasks = start_acquirers([registry, other], key, 50)
        try:
            await settle(lambda: len(flights) == 1)
            await asyncio.sleep(0.05)
            assert [f.role for f in flights] == ["writer"]
            clock.advance(1.0)
            await registry.began_async(flights[0])
            await asyncio.gather(*tasks)
        finally:
            await registry.aclose()
            await other.aclose()
            other.close()
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

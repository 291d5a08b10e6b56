"""The in-process warm registry: single-flight cache writes, the TTL clock, TTL choice."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import anthropic
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from convo.emulator import RunningEmulator
from convo.warm import (
    RedisWarmRegistry,
    WarmBackend,
    WarmKey,
    WarmRegistry,
    WarmState,
    WarmWaitTimeout,
    choose_ttl,
    ttl_costs,
)
from tests.conftest import API_KEY
from tests.warm_support import SECRET, FakeClock, settle, start_acquirers, start_threads, wait_until


@pytest.fixture
def clock() -> FakeClock:
    """A fake wall clock at t = 1000."""
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> WarmRegistry:
    """A fresh registry on the fake clock, re-checking every 5 ms of real time."""
    return WarmRegistry(clock=clock, write_timeout=30.0, poll_interval=0.005)


@pytest.fixture
def key() -> WarmKey:
    """A prefix key built from a secret API key."""
    return WarmKey.for_api_key(SECRET, "claude-sonnet-4-6", "ab" * 16)


class TestWarmKey:
    """Keys name a prefix per workspace, model and bytes, and never hold the API key."""

    def test_workspace_is_xxh3_64_of_key(self, key: WarmKey) -> None:
        """The workspace is the xxh3-64 hex digest of the API key."""
        assert key.workspace == xxhash.xxh3_64_hexdigest(SECRET.encode())

    def test_same_key_same_workspace(self) -> None:
        """Two hosts hashing the same key agree, so they share warm state."""
        assert WarmKey.for_api_key(SECRET, "m", "f") == WarmKey.for_api_key(SECRET, "m", "f")

    def test_other_key_other_workspace(self) -> None:
        """Caches are per workspace: another API key is another key."""
        assert WarmKey.for_api_key(SECRET, "m", "f") != WarmKey.for_api_key(SECRET + "x", "m", "f")

    def test_secret_absent_from_everything_kept(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """The raw API key appears in no repr of a key, flight, state or the registry's entries."""
        flight = registry.acquire(key, ttl_seconds=300)
        registry.began(flight)
        registry.record(key, started_at=clock.now, ttl_seconds=300, wrote=True, read=False)
        kept = repr(key) + repr(flight) + repr(registry.state(key)) + repr(registry._entries)
        assert SECRET not in kept


class TestSingleFlightAsync:
    """Many coroutines on one cold prefix: one writes, the rest wait for its response."""

    async def test_fifty_tasks_one_writer(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """50 tasks on a cold key: exactly one writer; 49 readers, released only by began."""
        flights, tasks = start_acquirers([registry], key, 50)
        await settle(lambda: len(flights) == 1)
        await asyncio.sleep(0.03)  # several re-check periods: nobody else may get through
        assert [f.role for f in flights] == ["writer"]
        clock.advance(1.5)
        registry.began(flights[0])
        await asyncio.gather(*tasks)
        roles = [f.role for f in flights]
        assert (roles.count("writer"), roles.count("reader")) == (1, 49)

    async def test_readers_report_time_waited(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """A reader that waited for the write says how long, on the registry's clock."""
        writer = await registry.acquire_async(key, ttl_seconds=300)
        waiting = asyncio.create_task(registry.acquire_async(key, ttl_seconds=300))
        await asyncio.sleep(0.02)
        clock.advance(2.0)
        registry.began(writer)
        reader = await waiting
        assert (reader.role, reader.waited) == ("reader", 2.0)

    async def test_abandon_hands_write_to_exactly_one(
        self, registry: WarmRegistry, key: WarmKey
    ) -> None:
        """When the writer abandons, exactly one waiter becomes the writer; the rest wait on."""
        first = await registry.acquire_async(key, ttl_seconds=300)
        flights, tasks = start_acquirers([registry], key, 10)
        await asyncio.sleep(0.02)
        registry.abandon(first)
        await settle(lambda: len(flights) == 1)
        await asyncio.sleep(0.03)
        assert [f.role for f in flights] == ["writer"]
        registry.began(flights[0])
        await asyncio.gather(*tasks)
        assert [f.role for f in flights].count("writer") == 1

    async def test_write_timeout_releases_crashed_writer(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """A writer that never reports back loses its claim after write_timeout."""
        crashed = await registry.acquire_async(key, ttl_seconds=300)
        waiting = asyncio.create_task(registry.acquire_async(key, ttl_seconds=300))
        await asyncio.sleep(0.02)
        clock.advance(29.9)
        await asyncio.sleep(0.02)
        assert not waiting.done()
        clock.advance(0.1)
        successor = await asyncio.wait_for(waiting, 2.0)
        assert (successor.role, successor.waited) == ("writer", pytest.approx(30.0))
        assert successor.token != crashed.token

    async def test_late_report_of_lapsed_writer_is_ignored(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """A lapsed writer's late began cannot release the claim its successor holds."""
        crashed = await registry.acquire_async(key, ttl_seconds=300)
        clock.advance(31)
        successor = await registry.acquire_async(key, ttl_seconds=300)
        registry.began(crashed)
        state = registry.state(key)
        assert successor.role == "writer"
        assert state is not None
        assert state.writing

    async def test_timeout_raises_warm_wait_timeout(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """acquire(timeout=...) gives up with WarmWaitTimeout, naming the key and time waited."""
        await registry.acquire_async(key, ttl_seconds=300)
        waiting = asyncio.create_task(registry.acquire_async(key, ttl_seconds=300, timeout=5))
        await asyncio.sleep(0.02)
        clock.advance(5)
        with pytest.raises(WarmWaitTimeout) as info:
            await asyncio.wait_for(waiting, 2.0)
        assert (info.value.key, info.value.waited) == (key, 5.0)

    async def test_cancelled_waiter_leaves_no_trace(
        self, registry: WarmRegistry, key: WarmKey
    ) -> None:
        """A waiter cancelled mid-wait unregisters itself."""
        await registry.acquire_async(key, ttl_seconds=300)
        waiting = asyncio.create_task(registry.acquire_async(key, ttl_seconds=300))
        await asyncio.sleep(0.02)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert registry._async_waiters == set()


class TestSingleFlightThreads:
    """The same guarantees for threads calling the blocking acquire."""

    def test_twenty_threads_one_writer(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """20 threads on a cold key: exactly one writer; 19 readers once it began."""
        flights, threads = start_threads(registry, key, 20)
        wait_until(lambda: len(flights) == 1)
        time.sleep(0.03)
        assert [f.role for f in flights] == ["writer"]
        clock.advance(1.0)
        registry.began(flights[0])
        for thread in threads:
            thread.join(2.0)
        roles = [f.role for f in flights]
        assert (roles.count("writer"), roles.count("reader")) == (1, 19)

    def test_threads_abandon_hands_to_one(self, registry: WarmRegistry, key: WarmKey) -> None:
        """Threads: an abandoned write passes to exactly one waiting thread."""
        first = registry.acquire(key, ttl_seconds=300)
        flights, threads = start_threads(registry, key, 8, together=False)
        time.sleep(0.02)
        registry.abandon(first)
        wait_until(lambda: len(flights) == 1)
        time.sleep(0.03)
        assert [f.role for f in flights] == ["writer"]
        registry.began(flights[0])
        for thread in threads:
            thread.join(2.0)
        assert [f.role for f in flights].count("writer") == 1


class TestTtlClock:
    """Lifetimes count from request starts; live prefixes are read at once."""

    def test_live_prefix_gives_reader_at_once(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """A recorded write makes the next acquire a reader without waiting."""
        registry.record(key, started_at=clock.now, ttl_seconds=300, wrote=True, read=False)
        flight = registry.acquire(key, ttl_seconds=300)
        assert (flight.role, flight.waited, flight.token) == ("reader", 0.0, "")

    def test_expiry_counts_from_request_start(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """A request started at t lives until t + ttl, however late its response ended."""
        started = clock.now
        clock.advance(40)  # a long response: its end does not extend the lifetime
        registry.record(key, started_at=started, ttl_seconds=300, wrote=True, read=False)
        state = registry.state(key)
        assert state == WarmState(
            last_write_start=started,
            last_read_start=None,
            ttl_seconds=300,
            expires_at=started + 300,
            writing=False,
        )

    def test_live_until_just_before_expiry(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """At start + ttl - 0.1 a request reads; at start + ttl it writes."""
        started = clock.now
        registry.record(key, started_at=started, ttl_seconds=300, wrote=True, read=False)
        clock.now = started + 299.9
        assert registry.acquire(key, ttl_seconds=300).role == "reader"
        clock.now = started + 300
        assert registry.acquire(key, ttl_seconds=300).role == "writer"

    def test_read_refreshes_lifetime(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """A hit starts the lifetime again from the reading request's start."""
        registry.record(key, started_at=1000, ttl_seconds=300, wrote=True, read=False)
        registry.record(key, started_at=1200, ttl_seconds=300, wrote=False, read=True)
        state = registry.state(key)
        assert state is not None
        assert (state.last_read_start, state.expires_at) == (1200, 1500)

    def test_late_record_of_older_request_keeps_later_expiry(
        self, registry: WarmRegistry, key: WarmKey
    ) -> None:
        """Records arriving out of order never move the expiry backwards."""
        registry.record(key, started_at=1200, ttl_seconds=300, wrote=False, read=True)
        registry.record(key, started_at=1000, ttl_seconds=300, wrote=True, read=False)
        state = registry.state(key)
        assert state is not None
        assert (state.last_write_start, state.last_read_start, state.expires_at) == (
            1000,
            1200,
            1500,
        )

    def test_record_of_nothing_cached_changes_nothing(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """A response that neither wrote nor read (below the minimum) leaves the key cold."""
        registry.record(key, started_at=clock.now, ttl_seconds=300, wrote=False, read=False)
        assert registry.state(key) is None

    def test_began_dates_write_from_acquire(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """began makes the prefix live from the writer's acquire time, before record."""
        writer = registry.acquire(key, ttl_seconds=3600)
        clock.advance(2)
        registry.began(writer)
        state = registry.state(key)
        assert state is not None
        assert (state.expires_at, state.ttl_seconds, state.writing) == (1000 + 3600, 3600, False)

    def test_remaining_and_live(self) -> None:
        """remaining counts down to 0 and live turns false exactly at expires_at."""
        state = WarmState(
            last_write_start=0, last_read_start=None, ttl_seconds=300, expires_at=300, writing=False
        )
        assert (state.remaining(100), state.live(299.99), state.live(300)) == (200, True, False)
        assert state.remaining(400) == 0

    def test_bad_ttl_is_misuse(self, registry: WarmRegistry, key: WarmKey) -> None:
        """A non-positive TTL is a ValueError that says what to pass."""
        with pytest.raises(ValueError, match="300 for 5m"):
            registry.acquire(key, ttl_seconds=0)


class TestOneStepAcquire:
    """acquire returns the state as of the claim and, with refresh_at, records a read."""

    def test_reader_read_recorded_from_refresh_at(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """A reader of a live entry: its read dated refresh_at, the TTL counted from then."""
        registry.record(key, started_at=1000, ttl_seconds=300, wrote=True, read=False)
        clock.advance(100)
        flight = registry.acquire(key, ttl_seconds=300, refresh_at=1100)
        expected = WarmState(
            last_write_start=1000,
            last_read_start=1100,
            ttl_seconds=300,
            expires_at=1400,
            writing=False,
        )
        assert (flight.role, flight.state) == ("reader", expected)
        assert registry.state(key) == expected

    def test_without_refresh_at_nothing_is_recorded(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """No refresh_at: the flight still carries the state; the entry is untouched."""
        registry.record(key, started_at=1000, ttl_seconds=300, wrote=True, read=False)
        flight = registry.acquire(key, ttl_seconds=300)
        assert flight.state == registry.state(key)
        assert flight.state is not None
        assert flight.state.last_read_start is None

    def test_writer_state_shows_its_claim(self, registry: WarmRegistry, key: WarmKey) -> None:
        """A writer: its state says a write is in flight; refresh_at records no read."""
        flight = registry.acquire(key, ttl_seconds=300, refresh_at=1000)
        assert flight.role == "writer"
        assert flight.state == WarmState(
            last_write_start=None,
            last_read_start=None,
            ttl_seconds=0.0,
            expires_at=float("-inf"),
            writing=True,
        )

    async def test_waiter_read_dated_after_its_wait(
        self, registry: WarmRegistry, key: WarmKey, clock: FakeClock
    ) -> None:
        """A reader that waited 2 s for the write has its read dated refresh_at + 2."""
        writer = await registry.acquire_async(key, ttl_seconds=300)
        waiting = asyncio.create_task(
            registry.acquire_async(key, ttl_seconds=300, refresh_at=clock.now)
        )
        await asyncio.sleep(0.02)
        clock.advance(2.0)
        registry.began(writer)
        reader = await waiting
        assert reader.state is not None
        assert (reader.role, reader.waited, reader.state.last_read_start) == ("reader", 2.0, 1002)

    def test_bad_refresh_at_is_misuse(self, registry: WarmRegistry, key: WarmKey) -> None:
        """refresh_at must be a finite clock time."""
        with pytest.raises(TypeError, match="refresh_at"):
            registry.acquire(key, ttl_seconds=300, refresh_at=float("nan"))


class TestWoken:
    """In-process waiters are woken by began; the 30 s safety re-check never fires here."""

    async def test_coroutines_woken_at_once(self, key: WarmKey) -> None:
        """99 coroutines waiting on a 0.3 s write are all through within 0.2 s of began."""
        registry = WarmRegistry(poll_interval=30)
        writer = await registry.acquire_async(key, ttl_seconds=300)
        flights, tasks = start_acquirers([registry], key, 99)
        await asyncio.sleep(0.3)
        began = time.monotonic()
        registry.began(writer)
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert time.monotonic() - began < 0.2
        assert [f.role for f in flights].count("reader") == 99

    def test_threads_woken_at_once(self, key: WarmKey) -> None:
        """Threads in the blocking acquire likewise."""
        registry = WarmRegistry(poll_interval=30)
        writer = registry.acquire(key, ttl_seconds=300)
        flights, threads = start_threads(registry, key, 10)
        time.sleep(0.1)
        began = time.monotonic()
        registry.began(writer)
        for thread in threads:
            thread.join(5)
        assert time.monotonic() - began < 0.2
        assert [f.role for f in flights].count("reader") == 10


class TestNeedsWarming:
    """Pre-warm only when cold, expired or about to expire, and nobody is writing."""

    def test_cold_needs_warming(self, registry: WarmRegistry, key: WarmKey) -> None:
        """An unknown prefix needs warming."""
        assert registry.needs_warming(key)

    def test_write_in_flight_does_not(self, registry: WarmRegistry, key: WarmKey) -> None:
        """While a write is in flight, another pre-warm would be a second write."""
        registry.acquire(key, ttl_seconds=300)
        assert not registry.needs_warming(key, margin=60)

    @pytest.mark.parametrize(
        ("elapsed", "margin", "expected"),
        [
            pytest.param(200, 60, False, id="100s-left-margin-60"),
            pytest.param(240, 60, True, id="60s-left-margin-60"),
            pytest.param(250, 60, True, id="50s-left-margin-60"),
            pytest.param(299, 0, False, id="1s-left-no-margin"),
            pytest.param(300, 0, True, id="expired"),
        ],
    )
    def test_margin(
        self,
        registry: WarmRegistry,
        key: WarmKey,
        clock: FakeClock,
        elapsed: float,
        margin: float,
        expected: bool,
    ) -> None:
        """A live prefix needs warming once it has at most `margin` seconds left."""
        registry.record(key, started_at=clock.now, ttl_seconds=300, wrote=True, read=False)
        clock.advance(elapsed)
        assert registry.needs_warming(key, margin=margin) is expected


class TestRegistryShape:
    """The process-wide default and the protocol sessions rely on."""

    def test_default_is_process_wide(self) -> None:
        """default() returns one shared instance."""
        assert WarmRegistry.default() is WarmRegistry.default()

    def test_both_registries_satisfy_protocol(self, registry: WarmRegistry) -> None:
        """WarmRegistry and RedisWarmRegistry both provide every WarmBackend method."""
        assert isinstance(registry, WarmBackend)
        protocol = {n for n in vars(WarmBackend) if not n.startswith("_")}
        assert protocol <= set(dir(RedisWarmRegistry))
        for backend in (WarmBackend, WarmRegistry, RedisWarmRegistry):
            for name in ("acquire", "acquire_async"):
                parameters = inspect.signature(getattr(backend, name)).parameters
                assert list(parameters)[1:] == ["key", "ttl_seconds", "timeout", "refresh_at"]


class TestChooseTtl:
    """The 1h TTL pays when 5-60 minute gaps exceed 15/23 per cold start."""

    def test_no_reuse_prefers_5m(self) -> None:
        """A prefix used once: 1.25 beats 2."""
        costs = ttl_costs([])
        assert (costs.five_minute, costs.one_hour, choose_ttl([])) == (1.25, 2.0, "5m")

    def test_one_ten_minute_gap_prefers_1h(self) -> None:
        """One re-use after 10 minutes: 5m pays 2.5, 1h pays 2.1."""
        costs = ttl_costs([600])
        assert (costs.five_minute, costs.one_hour, costs.best) == (2.5, pytest.approx(2.1), "1h")

    def test_short_gaps_prefer_5m(self) -> None:
        """Gaps under 5 minutes are reads either way; the cheaper write wins."""
        assert choose_ttl([60, 120, 299]) == "5m"

    def test_exact_ttl_gap_is_a_miss(self) -> None:
        """An entry lives until start + ttl exclusive: a gap of exactly 300 s writes again."""
        assert ttl_costs([300]).five_minute == 2.5

    @given(st.lists(st.floats(min_value=0, max_value=10_000), max_size=40))
    def test_break_even_formula(self, gaps: list[float]) -> None:
        """cost_5m - cost_1h == 1.15 k - 0.75 (1 + w) for every run of gaps."""
        k = sum(300 <= g < 3600 for g in gaps)
        w = sum(g >= 3600 for g in gaps)
        costs = ttl_costs(gaps)
        expected = 1.15 * k - 0.75 * (1 + w)
        assert costs.five_minute - costs.one_hour == pytest.approx(expected, abs=1e-9)


PREFIX = [{"type": "text", "text": "word " * 1100, "cache_control": {"type": "ephemeral"}}]
ASK: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 8,
    "system": PREFIX,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.fixture
def slow_emulator(emulator: RunningEmulator) -> RunningEmulator:
    """The emulator answering after 0.3 s of real time, so concurrent requests overlap."""
    emulator.configure(
        {
            "time_scale": 1.0,
            "latency": {
                "base_s": 0.3,
                "prefill_uncached_s": 0.0,
                "prefill_cached_s": 0.0,
                "decode_s": 0.0,
            },
        }
    )
    return emulator


class TestThroughTheSdk:
    """Against the emulator through the real SDK: the registry turns N writes into one."""

    async def test_twenty_gated_requests_write_once(
        self, slow_emulator: RunningEmulator, async_client: anthropic.AsyncAnthropic
    ) -> None:
        """20 concurrent requests gated by the registry make exactly one cache write."""
        registry = WarmRegistry()
        key = WarmKey.for_api_key(API_KEY, ASK["model"], "prefix-under-test")

        async def one() -> None:
            flight = await registry.acquire_async(key, ttl_seconds=300)
            started = time.time()
            try:
                async with async_client.messages.with_streaming_response.create(**ASK) as raw:
                    registry.began(flight)  # the response has begun: the entry is readable
                    message = await raw.parse()
            except BaseException:
                registry.abandon(flight)
                raise
            usage = message.usage
            registry.record(
                key,
                started_at=started,
                ttl_seconds=300,
                wrote=bool(usage.cache_creation_input_tokens),
                read=bool(usage.cache_read_input_tokens),
            )

        await asyncio.gather(*(one() for _ in range(20)))
        cache = slow_emulator.stats()["cache"]
        assert (cache["writes"], cache["reads"]) == (1, 19)

    async def test_twenty_ungated_requests_write_twenty_times(
        self, slow_emulator: RunningEmulator, async_client: anthropic.AsyncAnthropic
    ) -> None:
        """The control: the same 20 requests without the registry each pay a write."""
        await asyncio.gather(*(async_client.messages.create(**ASK) for _ in range(20)))
        assert slow_emulator.stats()["cache"]["writes"] == 20

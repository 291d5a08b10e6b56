"""The policy's pools shared through Redis: two registries stand for two processes."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
import redis
import redis.client
import redis.connection

import convo
from convo.emulator import RunningEmulator
from convo.limits import RateLimiter
from convo.policy import PrefixPool, pool_for, prefix_ttl_counts
from convo.policy.shared import SharedPrefixPool, conversation_digest
from convo.warm import RedisWarmRegistry
from convo.warm.redis_pool import IDLE_S, SHARE_INTERVAL
from tests.warm_support import (
    FakeClock,
    RedisServer,
    calls_between,
    delete_under,
    local_redis,
    wait_until,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
MODEL = "claude-sonnet-4-6"
SYSTEM = "You answer questions about the travel plan, briefly and exactly. " * 120
KEY = "the prefix's key"
HOUR = 3600.0  # a share_interval no test waits for: exchanges happen when a test asks


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    client = local_redis()
    name = f"convo:test:pool:{uuid.uuid4().hex}:"
    yield name
    delete_under(client, name)
    client.close()


@pytest.fixture
def registries(prefix: str) -> Iterator[list[RedisWarmRegistry]]:
    """Registries a test builds (each a process of the fleet); closed when it ends."""
    built: list[RedisWarmRegistry] = []
    yield built
    for registry in built:
        registry.close()


@pytest.fixture
def process(prefix: str, registries: list[RedisWarmRegistry]) -> Any:
    """Builds a registry on the shared Redis and prefix: one process of the fleet."""

    def build(url: str = REDIS_URL, **options: Any) -> RedisWarmRegistry:
        options.setdefault("share_interval", HOUR)
        registry = RedisWarmRegistry(url, prefix=prefix, **options)
        registries.append(registry)
        return registry

    return build


def shared(registry: RedisWarmRegistry) -> SharedPrefixPool:
    pool = pool_for(registry, KEY)
    assert isinstance(pool, SharedPrefixPool)
    return pool


def statistics(pool: PrefixPool, now: float) -> dict[str, object]:
    """What the policy reads from a pool, for conversation "x" at *now*."""
    return {
        "prefix_gaps": sorted(pool.prefix_gaps()),
        "growth": pool.typical_growth(),
        "cdf": pool.next_turn_cdf("x", now, (300.0, 3600.0)),
        "latest": pool.latest_turn("x"),
        "last_use": pool.last_use(),
    }


def record_a_user(pool: PrefixPool, conversation: str, *times: float) -> None:
    """Turns of one user at *times*, as a session records them."""
    for at in times:
        pool.record_use(at)
        pool.record_turn(conversation, at)
        pool.record_growth(200)


class TestExchange:
    """What one process records reaches the others, once."""

    def test_observations_of_one_process_reach_the_other(self, process: Any) -> None:
        """B sees nothing of A's turns until A sends and B merges; then both pools hold
        the same statistics, B's own turns included."""
        a, b = process(), process()
        record_a_user(shared(a), "x", 1000.0, 1600.0, 2400.0)
        shared(a).record_touch(2500.0)
        record_a_user(shared(b), "y", 1300.0)
        assert b.exchange_observations() == 0  # nothing sent yet
        assert shared(b).prefix_gaps() == []
        assert a.exchange_observations() == 3  # b's use, turn and growth
        assert b.exchange_observations() == 10  # a's 3 uses, turns and growths, 1 re-warm
        assert statistics(shared(a), 2600.0) == statistics(shared(b), 2600.0)
        assert shared(b).prefix_gaps() == [300.0, 300.0, 800.0]
        assert shared(b).latest_turn("x") == 2400.0
        assert shared(b).touched_since(2450.0)

    def test_exchanging_again_counts_nothing_twice(self, process: Any) -> None:
        """Repeated exchanges on both sides merge each observation once."""
        a, b = process(), process()
        shared(b)  # a session of b's on the prefix: b exchanges its pool
        record_a_user(shared(a), "x", 1000.0, 1400.0)
        a.exchange_observations()
        assert b.exchange_observations() == 6
        before = statistics(shared(b), 1500.0)
        for _ in range(3):
            assert a.exchange_observations() == 0
            assert b.exchange_observations() == 0
        assert statistics(shared(b), 1500.0) == before == statistics(shared(a), 1500.0)

    def test_a_new_process_starts_with_what_the_fleet_learnt(self, process: Any) -> None:
        """A registry built after the others read the stream from its start."""
        a = process()
        record_a_user(shared(a), "x", 1000.0, 1400.0, 2000.0)
        a.exchange_observations()
        late = process()
        shared(late)
        assert late.exchange_observations() == 9
        assert statistics(shared(late), 2100.0) == statistics(shared(a), 2100.0)

    def test_redis_keeps_at_most_the_cap(self, process: Any, prefix: str) -> None:
        """With share_cap=10, the stream holds the latest 10 observations, and a process
        that reads it merges those."""
        a, b = process(share_cap=10), process(share_cap=10)
        shared(b)
        for at in range(25):
            shared(a).record_use(1000.0 + 100 * at)
        a.exchange_observations()
        client = redis.Redis.from_url(REDIS_URL)
        try:
            streams = list(client.scan_iter(match=f"{prefix}pool:*"))
            assert len(streams) == 1
            assert client.xlen(streams[0]) == 10
            assert client.pttl(streams[0]) > 0  # an abandoned prefix's stream goes away
        finally:
            client.close()
        assert b.exchange_observations() == 10
        assert shared(b).prefix_gaps() == [100.0] * 9
        assert shared(b).last_use() == 3400.0

    def test_close_sends_what_is_left(self, process: Any) -> None:
        """Observations recorded after the last exchange leave at close."""
        a, b = process(), process()
        shared(b)
        record_a_user(shared(a), "x", 1000.0, 1700.0)
        a.close()
        assert b.exchange_observations() == 6
        assert shared(b).prefix_gaps() == [700.0]

    async def test_aclose_sends_what_is_left_without_blocking_the_loop(self, process: Any) -> None:
        """An async application's aclose sends the rest too (from a worker thread)."""
        a, b = process(), process()
        shared(b)
        record_a_user(shared(a), "x", 1000.0, 1700.0)
        await a.aclose()
        assert b.exchange_observations() == 6

    def test_the_background_thread_exchanges_on_its_own(self, process: Any) -> None:
        """With a short share_interval, A's turns reach B with nobody asking."""
        a, b = process(share_interval=0.05), process(share_interval=0.05)
        record_a_user(shared(a), "x", 1000.0, 1700.0)
        pool = shared(b)
        wait_until(lambda: pool.prefix_gaps() == [700.0])

    def test_a_registry_dropped_without_close_takes_its_thread_along(self, prefix: str) -> None:
        """The background thread holds the exchange weakly: it ends once nothing else does."""
        before = set(threading.enumerate())
        registry = RedisWarmRegistry(REDIS_URL, prefix=prefix, share_interval=0.01)
        shared(registry)
        threads = [
            t for t in set(threading.enumerate()) - before if t.name == "convo-pool-exchange"
        ]
        assert len(threads) == 1
        del registry
        gc.collect()
        wait_until(lambda: not any(t.is_alive() for t in threads))

    def test_a_redis_away_loses_nothing_recent(self, process: Any) -> None:
        """While Redis is down an exchange merges nothing and raises nothing; what was
        recorded meanwhile is sent once it answers again."""
        server = RedisServer()
        server.start()
        try:
            a, b = process(server.url), process(server.url)
            shared(b)
            record_a_user(shared(a), "x", 1000.0)
            server.kill()
            record_a_user(shared(a), "x", 1500.0)
            assert a.exchange_observations() == 0
            server.start()  # empty: it lost what it had, as a restarted Redis does
            a.exchange_observations()
            assert b.exchange_observations() == 6
            assert shared(b).prefix_gaps() == [500.0]
        finally:
            for registry in (a, b):
                registry.close()
            server.close()

    def test_a_failing_exchange_warns_once_per_outage(
        self, process: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Sharing is on by default, so a Redis that stops answering (or refuses the
        stream commands) is said once, on the ``convo`` logger, not every interval."""
        server = RedisServer()
        server.start()
        try:
            a = process(server.url)
            shared(a).record_use(1000.0)
            server.kill()
            with caplog.at_level(logging.WARNING, logger="convo"):
                for _ in range(3):
                    assert a.exchange_observations() == 0
            warned = [r for r in caplog.records if "sharing the TTL policy" in r.message]
            assert len(warned) == 1
            assert "failed" in warned[0].message
        finally:
            server.close()

    def test_sharing_is_on_by_default(self, prefix: str, registries: list[Any]) -> None:
        """A registry built without share_interval shares its pools, every 5 s."""
        registry = RedisWarmRegistry(REDIS_URL, prefix=prefix)
        registries.append(registry)
        assert isinstance(pool_for(registry, KEY), SharedPrefixPool)
        assert registry._exchange is not None
        assert registry._exchange._interval == SHARE_INTERVAL == 5.0

    def test_share_interval_none_keeps_pools_per_process(self, process: Any) -> None:
        """share_interval=None: a plain per-process pool, and nothing to exchange."""
        a = process(share_interval=None)
        pool = pool_for(a, KEY)
        assert type(pool) is PrefixPool
        assert pool_for(a, KEY) is pool
        assert a.exchange_observations() == 0

    @pytest.mark.parametrize(
        "options",
        [{"share_interval": 0}, {"share_interval": -1.0}, {"share_cap": 0}, {"share_cap": 2.5}],
        ids=["zero-interval", "negative-interval", "zero-cap", "float-cap"],
    )
    def test_bad_sharing_options_are_refused(self, options: dict[str, Any]) -> None:
        """Misuse raises ValueError saying what is allowed."""
        with pytest.raises(ValueError, match="share_"):
            RedisWarmRegistry(REDIS_URL, **options)


class XRanges:
    """Counts the stream reads the exchanges put in their pipelines."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = redis.client.Pipeline.xrange

        def counted(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(pipe, *args, **kwargs)

        monkeypatch.setattr(redis.client.Pipeline, "xrange", counted)


def let_go_while_held(registry: RedisWarmRegistry, clock: FakeClock) -> SharedPrefixPool:
    """A pool used once at 1000 s and exchanged, then let go by the exchange after an idle
    hour while the caller (a session) still holds it."""
    held = shared(registry)
    held.record_use(1000.0)
    registry.exchange_observations()
    clock.advance(IDLE_S + 1)
    registry.exchange_observations()
    assert registry._exchange.held() == 0
    return held


class TestIdlePrefixes:
    """A prefix unused fleet-wide for over an hour (the longest TTL) is no longer read, and
    its pool goes once nothing else holds it: state is bounded by the prefixes in use."""

    def test_one_off_prefixes_do_not_pile_up(
        self, process: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A prefix per user, each used once: over five hours of 100 new prefixes an hour,
        the process holds and reads only the last hour's, and the earlier pools are gone."""
        clock = FakeClock()
        a = process(clock=clock)
        reads = XRanges(monkeypatch)
        earlier: list[weakref.ref[PrefixPool]] = []
        for hour in range(5):
            for user in range(100):
                pool = pool_for(a, f"document {hour}/{user}")
                pool.record_use(clock.now)
                earlier.append(weakref.ref(pool))
            del pool
            reads.count = 0
            a.exchange_observations()
            assert reads.count == 100  # this hour's prefixes; the last hour's were let go
            assert a._exchange.held() == 100
            gc.collect()
            alive = [ref for ref in earlier if ref() is not None]
            assert len(alive) == 100  # held by the exchange: only this hour's
            clock.advance(IDLE_S + 1)
        a.exchange_observations()
        assert a._exchange.held() == 0
        gc.collect()
        assert all(ref() is None for ref in earlier)
        a.exchange_observations()  # forgets the let-go pools that nothing holds
        assert a._exchange._let_go == {}

    def test_a_prefix_the_fleet_uses_is_kept(self, process: Any) -> None:
        """Another process's uses count: A, with no session of its own on the prefix for
        three hours, keeps reading it while B uses it every half hour."""
        clock = FakeClock()
        a, b = process(clock=clock), process(clock=clock)
        shared(a).record_use(clock.now)
        for _ in range(6):
            clock.advance(1800.0)
            shared(b).record_use(clock.now)
            b.exchange_observations()
            a.exchange_observations()
        assert a._exchange.held() == 1
        assert shared(a).last_use() == clock.now

    def test_a_pool_a_session_still_holds_is_taken_back_when_it_records(self, process: Any) -> None:
        """Let go while idle, the pool a session holds is whole; once it records again the
        exchange sends it and reads on from where it stopped (each entry merged once)."""
        clock = FakeClock()
        a, b = process(clock=clock), process(clock=clock)
        shared(b)
        held_by_a_session = shared(a)
        held_by_a_session.record_use(1000.0)
        a.exchange_observations()
        assert b.exchange_observations() == 1
        clock.advance(IDLE_S + 1)
        a.exchange_observations()
        assert a._exchange.held() == 0
        shared(b).record_use(5000.0)  # B's session comes back first
        b.exchange_observations()
        assert a.exchange_observations() == 0  # A reads nothing: its pool was let go
        held_by_a_session.record_use(5100.0)
        assert a.exchange_observations() == 1  # B's use at 5000 s, once
        assert held_by_a_session.prefix_gaps() == [4000.0, 100.0]
        assert shared(a) is held_by_a_session
        assert b.exchange_observations() == 1
        assert shared(b).prefix_gaps() == [4000.0, 100.0]

    def test_what_a_let_go_pool_records_is_sent_when_it_goes_unsent(self, process: Any) -> None:
        """A session holding a pool that was let go records a turn and ends before the next
        exchange: the pool goes with that observation unsent, and the next exchange sends
        it all the same (a process started after reads both uses)."""
        clock = FakeClock()
        a = process(clock=clock)
        held_by_a_session = let_go_while_held(a, clock)
        held_by_a_session.record_use(clock.now)  # the session's turn, recorded
        gone = weakref.ref(held_by_a_session)
        del held_by_a_session  # the session ends within the interval
        gc.collect()
        assert gone() is None
        a.exchange_observations()
        later = process(clock=clock)
        pool = shared(later)
        assert later.exchange_observations() == 2  # both uses, the orphan's included
        assert pool.prefix_gaps() == [IDLE_S + 1]

    def test_an_orphan_waits_out_a_redis_outage(self, process: Any) -> None:
        """What a let-go pool left unsent when it went is kept while Redis does not
        answer, and sent by the first exchange after it does."""
        server = RedisServer()
        server.start()
        try:
            clock = FakeClock()
            a = process(server.url, clock=clock)
            held_by_a_session = let_go_while_held(a, clock)
            held_by_a_session.record_use(clock.now)
            del held_by_a_session
            gc.collect()
            server.kill()
            assert a.exchange_observations() == 0  # nothing raised, nothing lost
            server.start()  # empty: it lost the first use, as a restarted Redis does
            a.exchange_observations()
            later = process(server.url, clock=clock)
            pool = shared(later)
            assert later.exchange_observations() == 1  # the orphan's use
            assert pool.last_use() == clock.now
        finally:
            server.close()

    def test_a_prefix_back_after_its_pool_went_is_read_back(self, process: Any) -> None:
        """Once nothing held the pool, a session back on the prefix gets a new one; the
        first exchange merges what its predecessor sent, and the statistics are whole."""
        clock = FakeClock()
        a = process(clock=clock)
        record_a_user(shared(a), "x", 1000.0, 1600.0, 2400.0)
        before = statistics(shared(a), 2500.0)
        old = weakref.ref(shared(a))
        a.exchange_observations()
        clock.advance(IDLE_S + 1)
        a.exchange_observations()
        gc.collect()
        assert old() is None
        pool = shared(a)
        assert pool.prefix_gaps() == []
        assert a.exchange_observations() == 9
        assert statistics(pool, 2500.0) == before


def session_on(
    registry: RedisWarmRegistry, client: anthropic.Anthropic, emulator: RunningEmulator
) -> convo.Session:
    """A session with the adaptive TTL on *registry*, on the emulator's clock."""
    return convo.Session(
        convo.Prefix(model=MODEL, system=[SYSTEM]),
        client=client,
        clock=emulator.emulator.clock.now,
        registry=registry,
        limiter=RateLimiter(),
        ledger=False,
        max_tokens=64,
        adaptive_ttl=True,
    )


class TestFleetPolicy:
    """A process's TTL choice follows the gaps another process saw."""

    def test_b_writes_five_minutes_after_a_saw_an_hour_long_gap(
        self, client: anthropic.Anthropic, emulator: RunningEmulator, process: Any
    ) -> None:
        """A's user came back after 70 minutes. A process on its own has seen no gap and
        chooses an hour for the prefix (nothing known: a chain is as likely to meet a gap
        of 5-60 minutes as to end); B, having merged A's hour-long gap, 5 minutes."""
        clock = emulator.emulator.clock.now
        a, b = process(clock=clock), process(clock=clock)
        alone = process(clock=clock, share_interval=None)
        first = session_on(a, client, emulator)
        first.send("Hello")
        emulator.advance(4200)
        first.send("Seventy minutes later")
        assert first.prefix.ttl == "5m"  # A learnt it from its own user
        emulator.advance(30)
        on_its_own = session_on(alone, client, emulator)
        fleet = session_on(b, client, emulator)
        a.exchange_observations()
        b.exchange_observations()
        on_its_own.send("A new user in a process that learns alone")
        reply = fleet.send("A new user in a process that learns with the fleet")
        # The prefix's own decision (a turn's marker may also go 1h for its history).
        decided = {
            name: prefix_ttl_counts(*pool_for(p, repr(s._core.warm_key)).prefix_gap_counts())
            for name, p, s in (("alone", alone, on_its_own), ("fleet", b, fleet))
        }
        assert decided["alone"].action == "1h"
        assert decided["fleet"].action == "5m"
        assert reply.reason == "hit"  # A's entry, read: only the marker's TTL differs

    def test_a_conversation_that_moves_between_processes_keeps_its_gaps(
        self, client: anthropic.Anthropic, emulator: RunningEmulator, process: Any
    ) -> None:
        """A stateless backend without affinity: the user's turns, 5 minutes apart, go to
        A, B and A again, each a session rebuilt from the stored messages; nobody exchanges
        until the end. Both processes then hold the conversation's two 5-minute gaps (A had
        seen one of 10 minutes, B none). The emulator's clock also runs in real time: the
        gaps are 5 minutes and a little."""
        clock = emulator.emulator.clock.now
        a, b = process(clock=clock), process(clock=clock)
        history: Any = ()
        for registry in (a, b, a):
            session = convo.Session(
                convo.Prefix(model=MODEL, system=[SYSTEM]),
                client=client,
                clock=clock,
                registry=registry,
                limiter=RateLimiter(),
                ledger=False,
                max_tokens=64,
                conversation_id="user 42",
                messages=history,
            )
            session.send("And now?")
            history = session.history
            emulator.advance(300)
        key = repr(session._core.warm_key)
        pools = [pool_for(registry, key) for registry in (a, b)]
        digest = conversation_digest("user 42")
        assert list(pools[0]._own[digest]) == [pytest.approx(600.0, abs=5.0)]
        assert list(pools[1]._own.get(digest, ())) == []
        a.exchange_observations()
        b.exchange_observations()
        a.exchange_observations()
        for pool in pools:
            assert sorted(pool._own[digest]) == [pytest.approx(300.0, abs=5.0)] * 2
        assert statistics(pools[0], clock()) == statistics(pools[1], clock())

    def test_only_a_prewarm_that_is_sent_shares_its_send(
        self, client: anthropic.Anthropic, emulator: RunningEmulator, process: Any
    ) -> None:
        """A pre-warm the policy skips shares no send (the fleet would judge it a write of
        a lapsed entry); one that is sent shares its send and its re-warm."""
        clock = emulator.emulator.clock.now
        a = process(clock=clock)
        session = session_on(a, client, emulator)
        session.send("Hello")
        pool = pool_for(a, repr(session._core.warm_key))
        pool.take()
        emulator.advance(10)
        # The policy's judgement (warm() asks it once the registry says the entry nears
        # its end): live, and no gap seen says a refresh pays.
        assert session._core.begin_warm() is None
        assert session.last_decision.action == "skip"
        assert pool.take() == []
        emulator.advance(3700)
        assert session.warm(latency=True) is not None  # lapsed: written, as asked
        assert [o.kind for o in pool.take()] == ["write", "touch"]


class TestRoundTrips:
    """Sharing adds no Redis round trip to a turn."""

    def test_a_turn_sends_nothing_and_an_exchange_is_one_round_trip(
        self,
        client: anthropic.Anthropic,
        emulator: RunningEmulator,
        registries: list[RedisWarmRegistry],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A warm turn runs only the registry's scripts (its observations stay in memory);
        the exchange that sends them is one pipeline: one send on the wire."""
        server = RedisServer()
        server.start()
        try:
            clock = emulator.emulator.clock.now
            registry = RedisWarmRegistry(server.url, clock=clock, share_interval=HOUR)
            registries.append(registry)
            session = session_on(registry, client, emulator)
            session.send("Where do we start?")
            emulator.advance(10)
            before = server.calls()
            assert session.send("And then?").reason == "hit"
            during = calls_between(before, server.calls())
            assert "evalsha" in during  # the registry's scripts (their commands count too)
            assert not {"xadd", "xrange"} & set(during)
            sends = []
            original = redis.connection.AbstractConnection.send_packed_command

            def counted(conn: Any, *args: Any, **kw: Any) -> Any:
                sends.append(args)
                return original(conn, *args, **kw)

            before = server.calls()
            monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
            assert registry.exchange_observations() == 0  # its own, read back and skipped
            monkeypatch.undo()
            assert len(sends) == 1
            calls = calls_between(before, server.calls())
            assert calls["xrange"] == 1
            assert calls["xadd"] > 0
        finally:
            for registry in registries:
                registry.close()
            server.close()


class TestForkedWorkers:
    """A registry built before fork() (gunicorn --preload, multiprocessing's fork) gives
    each worker an origin of its own: the workers merge one another's observations."""

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
    def test_workers_forked_after_the_registry_merge_each_other(self, process: Any) -> None:
        registry = process()
        pool_for(registry, KEY).record_use(900.0)  # a pool made before the fork, too
        parent = registry._exchange.origin
        reports = []
        for worker in range(2):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker: record two uses, then merge the sibling's two
                code = 1
                try:
                    pool = pool_for(registry, KEY)
                    for at in (1_000.0 + 100 * worker, 1_600.0 + 100 * worker):
                        pool.record_use(at)
                    merged, deadline = 0, time.monotonic() + 5.0
                    while merged < 2 and time.monotonic() < deadline:
                        merged += registry.exchange_observations()
                        time.sleep(0.02)
                    os.write(write, f"{registry._exchange.origin} {merged}".encode())
                    code = 0
                finally:
                    os._exit(code)
            os.close(write)
            reports.append((pid, read))
        results = []
        for pid, read in reports:
            _, status = os.waitpid(pid, 0)
            results.append(os.read(read, 200).decode().split())
            os.close(read)
            assert os.waitstatus_to_exitcode(status) == 0
        origins = {origin for origin, _ in results}
        assert len(origins) == 2
        assert parent not in origins
        # Each worker merged its sibling's two uses, and not the parent's pre-fork one
        # (it holds that already): with the parent's origin it would have merged none.
        assert sorted(int(merged) for _, merged in results) == [2, 2]


class TestClose:
    def test_close_waits_a_bounded_time_for_a_stuck_exchange(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An exchange stuck on an unanswering Redis holds up close() by at most
        CLOSE_WAIT_S, not until Redis answers."""
        from convo.warm import redis_pool

        release = threading.Event()

        class Stuck:
            def pipeline(self, transaction: bool = False) -> Any:
                return self

            def xadd(self, *args: Any, **kwargs: Any) -> None: ...
            def pexpire(self, *args: Any) -> None: ...
            def xrange(self, *args: Any, **kwargs: Any) -> None: ...

            def execute(self) -> list[Any]:
                release.wait(10.0)
                return [[]]

        monkeypatch.setattr(redis_pool, "CLOSE_WAIT_S", 0.2)
        exchange = redis_pool.PoolExchange(
            Stuck(), prefix="p:", interval=HOUR, cap=16, trouble=(redis.RedisError,)
        )
        exchange.pool(KEY).record_use(1.0)
        stuck = threading.Thread(target=exchange.exchange)
        stuck.start()
        wait_until(lambda: exchange._exchanging.locked())
        started = time.monotonic()
        exchange.close()
        took = time.monotonic() - started
        release.set()
        stuck.join(5.0)
        assert took < 2.0

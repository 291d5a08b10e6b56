"""RedisRateLimiter: the same buckets as RateLimiter, one budget shared across processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from convo.limits import RateLimiter, RedisRateLimiter, Reservation
from tests.test_limits import FakeClock, cancel_at_random, forever

from .conftest import service_missing

URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server() -> redis.Redis:
    """The local Redis server (.ci/run starts it); skipped without one, failed in CI."""
    client = redis.Redis.from_url(URL)
    try:
        client.ping()
    except redis.ConnectionError:
        service_missing("no Redis at 127.0.0.1:6379 (start it with .ci/run)")
    return client


@pytest.fixture
def prefix(server: redis.Redis) -> Iterator[str]:
    """A key prefix unique to this test; its keys are deleted afterwards."""
    found = f"convo-test:{uuid.uuid4().hex}:"
    yield found
    keys = list(server.scan_iter(match=found + "*"))
    if keys:
        server.delete(*keys)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock, passed to the script instead of Redis TIME."""
    return FakeClock(1000.0)


def make(
    server: redis.Redis, prefix: str, clock: FakeClock | None, **limits: int
) -> RedisRateLimiter:
    return RedisRateLimiter(server, key="budget", prefix=prefix, clock=clock, latency=0, **limits)


def _kind_headers(
    kind: str, limit: int | None, remaining: int | None, reset: float | None
) -> dict[str, str]:
    found = {}
    if limit is not None:
        found[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
    if remaining is not None:
        found[f"anthropic-ratelimit-{kind}-remaining"] = str(remaining)
    if reset is not None:
        found[f"anthropic-ratelimit-{kind}-reset"] = _rfc3339(reset)
    return found


#: What one response may say about one bucket: its limit (or none), remaining (or none),
#: seconds until reset (or none). Limits straddle the configured ones, so learning, a lower
#: server limit winning and a configured share being kept all happen.
_reading = st.tuples(
    st.sampled_from([None, 20, 30, 60, 300, 600, 900]),
    st.one_of(st.none(), st.integers(0, 12).map(lambda k: k * 50)),
    st.one_of(st.none(), st.integers(0, 60)),
)

_operations = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 900), st.integers(0, 200)),
        st.tuples(st.just("advance"), st.integers(0, 40), st.just(0)),
        st.tuples(st.just("settle"), st.integers(0, 900), st.integers(0, 200)),
        st.tuples(st.just("release"), st.just(0), st.just(0)),
        st.tuples(st.just("hold"), st.integers(0, 10), st.just(0)),
        st.tuples(st.just("headers"), st.tuples(_reading, _reading, _reading), st.just(0)),
        st.tuples(
            st.just("settle+headers"),
            st.tuples(st.integers(0, 900), st.integers(0, 200)),
            st.tuples(_reading, _reading, _reading),
        ),
    ),
    max_size=30,
)


class TestSameAsLocal:
    """The Lua script and the in-process buckets give the same waits, levels and limits."""

    @settings(max_examples=60, deadline=None)
    @given(
        ops=_operations,
        configured=st.tuples(*(st.sampled_from([None, 30, 600]) for _ in range(3))),
        latency=st.sampled_from([0.0, 0.5]),
    )
    def test_scenarios(
        self,
        server: redis.Redis,
        ops: list[tuple[str, Any, Any]],
        configured: tuple[int | None, int | None, int | None],
        latency: float,
    ) -> None:
        """Random reserve/settle/release/hold/header/advance sequences agree to the microtoken,
        with each limit configured, learned from headers, or both."""
        clock = FakeClock(1000.0)
        key = f"convo-test:{uuid.uuid4().hex}:"
        limits = dict(zip(("rpm", "itpm", "otpm"), configured, strict=True))
        local = RateLimiter(**limits, clock=clock, wall_clock=clock, latency=latency)
        remote = RedisRateLimiter(
            server, key="k", prefix=key, clock=clock, wall_clock=clock, latency=latency, **limits
        )
        kinds = ("requests", "input-tokens", "output-tokens")
        try:
            grants: list[tuple[Reservation, Reservation]] = []
            for op, a, b in ops:
                if op == "advance":
                    clock.now += a
                elif op == "reserve":
                    mine, theirs = (
                        x.reserve(input_tokens=a, output_tokens=b) for x in (local, remote)
                    )
                    assert theirs.wait == pytest.approx(mine.wait, abs=1e-6)
                    assert theirs.in_flight == pytest.approx(mine.in_flight, abs=1e-6)
                    grants.append((mine, theirs))
                elif op == "settle" and grants:
                    mine, theirs = grants.pop(0)
                    local.settle(mine, input_tokens=a, output_tokens=b)
                    remote.settle(theirs, input_tokens=a, output_tokens=b)
                elif op == "release" and grants:
                    mine, theirs = grants.pop()
                    local.release(mine)
                    remote.release(theirs)
                elif op == "hold":
                    local.observe_rate_limited(float(a))
                    remote.observe_rate_limited(float(a))
                elif op == "headers":
                    seen: dict[str, str] = {}
                    for kind, (limit, remaining, reset) in zip(kinds, a, strict=True):
                        at = None if reset is None else clock.now + reset
                        seen |= _kind_headers(kind, limit, remaining, at)
                    local.observe_headers(seen)
                    remote.observe_headers(seen)
                elif op == "settle+headers" and grants:
                    mine, theirs = grants.pop(0)
                    seen = {}
                    for kind, (limit, remaining, reset) in zip(kinds, b, strict=True):
                        at = None if reset is None else clock.now + reset
                        seen |= _kind_headers(kind, limit, remaining, at)
                    local.settle(mine, input_tokens=a[0], output_tokens=a[1], headers=seen)
                    remote.settle(theirs, input_tokens=a[0], output_tokens=a[1], headers=seen)
                assert remote.levels() == pytest.approx(local.levels(), abs=1e-6)
                assert remote.limits == local.limits
            assert not remote.degraded
        finally:
            remote.clear()

    def test_learned_limit_then_remaining_alone(
        self, server: redis.Redis, prefix: str, clock: FakeClock
    ) -> None:
        """The drift the issue found: a limit learned earlier, then a response whose headers
        carry only remaining and reset. Both read the reset against the learned limit."""
        local = RateLimiter(clock=clock, wall_clock=clock, latency=0)
        remote = RedisRateLimiter(server, key="k", prefix=prefix, clock=clock, wall_clock=clock)
        learn = _kind_headers("input-tokens", 6_000, 6_000, None)
        later = _kind_headers("input-tokens", None, 1_000, clock.now + 30)
        for limiter in (local, remote):
            limiter.observe_headers(learn)
            limiter.observe_headers(later)
        # 6,000 a minute is 100 a second: full in 30 s means 3,000 left, but the rounded
        # remaining says below 2,000: the estimate is clamped to 2,000.
        assert local.levels()["input-tokens"] == pytest.approx(2_000.0)
        assert remote.levels() == pytest.approx(local.levels())


def _rfc3339(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class TestSharing:
    """Limiter objects on one key are one budget."""

    def test_two_objects_one_budget(
        self, server: redis.Redis, prefix: str, clock: FakeClock
    ) -> None:
        """What one "process" reserved, the other waits behind."""
        first = make(server, prefix, clock, itpm=600)
        second = make(server, prefix, clock, itpm=600)
        first.reserve(input_tokens=600)
        assert second.reserve(input_tokens=60).wait == pytest.approx(6.0)

    def test_other_keys_apart(self, server: redis.Redis, prefix: str, clock: FakeClock) -> None:
        """Another key is another budget."""
        first = make(server, prefix, clock, itpm=600)
        other = RedisRateLimiter(server, key="other", prefix=prefix, clock=clock, itpm=600)
        first.reserve(input_tokens=600)
        assert other.reserve(input_tokens=60).wait == 0.0

    def test_429_is_shared(self, server: redis.Redis, prefix: str, clock: FakeClock) -> None:
        """A 429 seen by one process holds back the others."""
        make(server, prefix, clock, itpm=600).observe_rate_limited(4.0)
        assert make(server, prefix, clock, itpm=600).reserve(input_tokens=1).wait == 4.0

    def test_learned_limit_is_shared(
        self, server: redis.Redis, prefix: str, clock: FakeClock
    ) -> None:
        """A limit learned from one process's headers paces the others."""
        make(server, prefix, clock).observe_headers(
            {
                "anthropic-ratelimit-input-tokens-limit": "600",
                "anthropic-ratelimit-input-tokens-remaining": "0",
            }
        )
        assert make(server, prefix, clock).reserve(input_tokens=60).wait == pytest.approx(6.0)

    def test_keys_expire(self, server: redis.Redis, prefix: str, clock: FakeClock) -> None:
        """Keys carry a TTL: the idle time plus until the buckets are full again."""
        limiter = RedisRateLimiter(
            server, key="k", prefix=prefix, clock=clock, itpm=600, idle_ttl=5.0, latency=0
        )
        limiter.reserve(input_tokens=600)
        limiter.reserve(input_tokens=60)  # 66 s until full again, and pending
        ttls = [server.pttl(k) for k in limiter.keys]
        assert all(66_000 < t <= 71_000 for t in ttls), ttls

    def test_redis_time(self, server: redis.Redis, prefix: str) -> None:
        """Without an injected clock, reservations are stamped with Redis's TIME."""
        limiter = RedisRateLimiter(server, key="k", prefix=prefix, itpm=600)
        seconds, micros = server.time()
        assert limiter.reserve(input_tokens=1).at == pytest.approx(seconds + micros / 1e6, abs=5)

    def test_url(self, prefix: str, clock: FakeClock) -> None:
        """A URL is accepted instead of a client."""
        limiter = RedisRateLimiter(URL, key="k", prefix=prefix, clock=clock, itpm=600)
        assert limiter.reserve(input_tokens=1).wait == 0.0


class TestAcquire:
    """acquire and acquire_async sleep as RateLimiter's do."""

    def test_sync(self, server: redis.Redis, prefix: str, clock: FakeClock) -> None:
        """acquire sleeps the shared wait."""
        limiter = RedisRateLimiter(server, key="k", prefix=prefix, clock=clock, itpm=600, latency=0)
        limiter.acquire(input_tokens=600, sleep=clock.sleep)
        grant = limiter.acquire(input_tokens=30, sleep=clock.sleep)
        assert (clock.slept, grant.wait) == ([pytest.approx(3.0)], pytest.approx(3.0))

    def test_429_during_sleep(self, server: redis.Redis, prefix: str, clock: FakeClock) -> None:
        """A 429 recorded by another process while this one sleeps extends its wait."""
        limiter = RedisRateLimiter(server, key="k", prefix=prefix, clock=clock, itpm=600, latency=0)
        limiter.reserve(input_tokens=600)

        def sleep(seconds: float) -> None:
            clock.sleep(seconds)
            if len(clock.slept) == 1:
                other = RedisRateLimiter(server, key="k", prefix=prefix, clock=clock)
                other.observe_rate_limited(5.0)

        grant = limiter.acquire(input_tokens=60, sleep=sleep)
        assert grant.wait == pytest.approx(11.0)

    async def test_async(self, prefix: str, clock: FakeClock) -> None:
        """acquire_async goes through redis.asyncio and awaits the injected sleep."""
        limiter = RedisRateLimiter(URL, key="k", prefix=prefix, clock=clock, itpm=600, latency=0)
        try:
            await limiter.acquire_async(input_tokens=600, sleep=clock.asleep)
            grant = await limiter.acquire_async(input_tokens=60, sleep=clock.asleep)
        finally:
            await limiter.aclose()
        assert (clock.slept, grant.wait) == ([pytest.approx(6.0)], pytest.approx(6.0))

    async def test_async_from_sync_client(
        self, server: redis.Redis, prefix: str, clock: FakeClock
    ) -> None:
        """Given a sync client, the async one is built from its connection settings."""
        limiter = RedisRateLimiter(server, key="k", prefix=prefix, clock=clock, itpm=600)
        try:
            grant = await limiter.acquire_async(input_tokens=1, sleep=clock.asleep)
        finally:
            await limiter.aclose()
        assert grant.wait == 0.0


class TestMisuse:
    """Clear errors for misuse and for a missing redis package."""

    def test_missing_package(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without redis installed the error names the extra to install."""
        monkeypatch.setitem(sys.modules, "redis", None)
        with pytest.raises(ImportError, match=r"convo\[redis\]"):
            RedisRateLimiter(URL, key="k")

    def test_empty_key(self, server: redis.Redis) -> None:
        """A budget needs a name."""
        with pytest.raises(ValueError, match="non-empty key"):
            RedisRateLimiter(server, key="")

    def test_bad_limit(self, server: redis.Redis) -> None:
        """Limits are validated as RateLimiter's are."""
        with pytest.raises(ValueError, match="itpm=None"):
            RedisRateLimiter(server, key="k", itpm=0)


#: One worker process: reserve *count* times on the shared key, print (at, wait) pairs.
#: It loads convo.limits without convo/__init__.py (which imports the anthropic SDK, about
#: 1.5 s a process on this machine's 2 cores): the limiter needs none of it.
WORKER = """
import json, sys, types
package = types.ModuleType("convo")
package.__path__ = [sys.argv[4]]
sys.modules["convo"] = package
from convo.limits.redis_limiter import RedisRateLimiter
limiter = RedisRateLimiter(sys.argv[1], key="shared", prefix=sys.argv[2], itpm=6000, rpm=1000)
grants = [limiter.reserve(input_tokens=100) for _ in range(int(sys.argv[3]))]
print(json.dumps([(g.at, g.wait) for g in grants]))
"""


class TestProcesses:
    """Real processes on one key release no more than the one budget allows."""

    @pytest.mark.slow
    def test_four_processes(self, server: redis.Redis, prefix: str) -> None:
        """4 processes × 60 reserves of 100 ITPM: within 6,000 + 100/s, and all counted."""
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, URL, prefix, "60", str(ROOT / "convo")],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        outputs = [w.communicate(timeout=60)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0, 0, 0]
        grants = [tuple(g) for out in outputs for g in json.loads(out)]
        start = min(at for at, _ in grants)
        releases = sorted(at + wait - start for at, wait in grants)
        assert len(releases) == 240
        for count, when in enumerate(releases, start=1):
            assert 100 * count <= 6_000 + 100 * when + 1e-6
        # 24,000 tokens: the last one goes after about (24,000 - 6,000) / 100 = 180 s.
        assert releases[-1] >= 180.0


class OwnRedis:
    """A redis-server this test starts on a free port, to kill, restart, pause and count."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
            finally:
                client.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def script_calls(self) -> int:
        """EVAL and EVALSHA commands the server has run (INFO commandstats)."""
        return sum(self.commands().get(c, 0) for c in ("eval", "evalsha"))

    def commands(self) -> dict[str, int]:
        """Calls per command so far (INFO commandstats), INFO itself left out."""
        with self.client() as client:
            stats = client.info("commandstats")
        found = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        found.pop("info", None)
        return found


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    """A private redis-server (no persistence), stopped after the test."""
    if subprocess.run(["which", "redis-server"], capture_output=True, check=False).returncode:
        pytest.skip("no redis-server binary")
    found = OwnRedis()
    found.start()
    yield found
    if found.process is not None:
        found.kill()


class TestCancellationRedis:
    """A cancelled acquire_async gives back what it reserved in Redis, at any point."""

    @pytest.mark.parametrize("seed", range(3))
    async def test_random_cancellations(self, prefix: str, clock: FakeClock, seed: int) -> None:
        """50 acquire_async cancelled at random moments (before, inside the Redis calls,
        while waiting): levels and the next wait are those of a budget never asked."""
        rng = random.Random(seed)
        limits: dict[str, Any] = {"rpm": 100, "itpm": 6_000, "otpm": 1_000, "latency": 1.0}
        limiter = RedisRateLimiter(URL, key="k", prefix=prefix, clock=clock, **limits)
        untouched = RateLimiter(clock=clock, **limits)
        try:
            for each in (limiter, untouched):
                each.reserve(input_tokens=5_000)
            amounts = [rng.randrange(100, 3_000) for _ in range(50)]
            cancelled, _ = await cancel_at_random(limiter, amounts, rng)
            assert cancelled > 25
            assert await limiter.levels_async() == pytest.approx(untouched.levels(), abs=1e-6)
            expected = untouched.reserve(input_tokens=3_000).wait
            assert limiter.reserve(input_tokens=3_000).wait == pytest.approx(expected, abs=1e-6)
            assert not limiter.degraded
        finally:
            await limiter.aclose()

    async def test_cancelled_inside_the_redis_call(
        self, own_redis: OwnRedis, clock: FakeClock
    ) -> None:
        """Cancelled while its script is stuck at the server (CLIENT PAUSE), the reservation
        is still undone once the script has run; the levels are back."""
        limiter = RedisRateLimiter(own_redis.url, key="k", clock=clock, itpm=6_000, latency=0)
        try:
            limiter.reserve(input_tokens=6_100)
            calls = own_redis.script_calls()
            with own_redis.client() as admin:
                # Every command waits for the pause to end (INFO too: nothing reads stats
                # until the cancelled task is done).
                admin.execute_command("CLIENT", "PAUSE", 1000, "ALL")
            paused = time.monotonic()
            task = asyncio.ensure_future(
                limiter.acquire_async(input_tokens=3_000, sleep=forever(asyncio.Event()))
            )
            await asyncio.sleep(0.2)  # the script is sent and waits at the paused server
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The CancelledError waited for the script (and the release) to be answered.
            assert time.monotonic() - paused >= 0.9
            # The reserve ran, then the release: two scripts, and the level is as before.
            assert own_redis.script_calls() == calls + 2
            assert limiter.levels()["input-tokens"] == pytest.approx(-100.0)
        finally:
            await limiter.aclose()


class TestRoundTrips:
    """What the session's warm turn costs on the limiter: one script each, all awaited."""

    async def test_acquire_and_settle_with_headers(
        self, own_redis: OwnRedis, clock: FakeClock
    ) -> None:
        """acquire_async (no wait) and settle_async(headers=...) are one command each (once
        the script is loaded: the first call on a fresh server also loads it)."""
        limiter = RedisRateLimiter(own_redis.url, key="k", clock=clock, itpm=6_000, latency=0)
        seen = _kind_headers("input-tokens", 6_000, 5_000, None)
        try:
            await limiter.levels_async()  # loads the script
            before = own_redis.commands()
            grant = await limiter.acquire_async(input_tokens=100, output_tokens=10)
            await limiter.settle_async(grant, input_tokens=90, output_tokens=5, headers=seen)
            after = own_redis.commands()
            # Top-level commands only: commandstats also counts those a script runs (HSET,
            # ...) and the HELLO of the admin connection that reads the stats.
            spent = {k: after.get(k, 0) - before.get(k, 0) for k in ("eval", "evalsha", "script")}
            assert spent == {"eval": 0, "evalsha": 2, "script": 0}
        finally:
            await limiter.aclose()

    async def test_async_path_never_uses_the_sync_client(
        self, own_redis: OwnRedis, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With a sync client on a dead port and an asyncio one on a live server, every
        _async method works on Redis: none of them made a blocking call."""
        dead = OwnRedis()  # a free port nobody listens on
        aio = redis.asyncio.Redis(host="127.0.0.1", port=own_redis.port)
        limiter = RedisRateLimiter(
            redis.Redis(host="127.0.0.1", port=dead.port),
            key="k", clock=clock, itpm=6_000, async_redis=aio, latency=0,
        )  # fmt: skip
        try:
            with caplog.at_level(logging.WARNING, logger="convo"):
                grant = await limiter.acquire_async(input_tokens=100)
                await limiter.settle_async(grant, input_tokens=50, output_tokens=0)
                other = await limiter.reserve_async(input_tokens=10)
                await limiter.release_async(other)
                await limiter.observe_headers_async(_kind_headers("requests", 50, 50, None))
                await limiter.observe_rate_limited_async(1.0)
                levels = await limiter.levels_async()
            assert caplog.records == []
            assert not limiter.degraded
            assert levels == pytest.approx({"input-tokens": 5_950.0, "requests": 50.0})
        finally:
            await limiter.aclose()
            await aio.aclose()


class TestScale:
    """One process, many concurrent tasks, one RedisRateLimiter built from a URL."""

    @pytest.mark.slow
    async def test_thousand_concurrent_pairs(
        self, own_redis: OwnRedis, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """1,000 concurrent acquire_async + settle_async pairs all succeed on Redis (no
        MaxConnectionsError from redis-py 8's asyncio pool), on at most max_connections."""
        limiter = RedisRateLimiter(
            own_redis.url, key="k", clock=clock, rpm=100_000, itpm=10_000_000, latency=0
        )
        peak = 0

        async def pair(n: int) -> None:
            nonlocal peak
            grant = await limiter.acquire_async(input_tokens=10, output_tokens=4)
            await limiter.settle_async(grant, input_tokens=5, output_tokens=4)

        try:
            with caplog.at_level(logging.WARNING, logger="convo"):
                await asyncio.gather(*(pair(n) for n in range(1_000)))
                with own_redis.client() as admin:
                    peak = int(admin.info("clients")["connected_clients"]) - 1
            assert caplog.records == []
            assert not limiter.degraded
            assert limiter.levels()["input-tokens"] == pytest.approx(10_000_000 - 5_000)
            assert limiter.levels()["requests"] == pytest.approx(100_000 - 1_000)
            assert 1 <= peak <= 64
        finally:
            await limiter.aclose()

    async def test_small_pool_blocks_instead_of_failing(
        self, own_redis: OwnRedis, clock: FakeClock
    ) -> None:
        """With max_connections=2, 200 concurrent callers wait their turn for a connection."""
        limiter = RedisRateLimiter(
            own_redis.url, key="k", clock=clock, itpm=1_000_000, max_connections=2, latency=0
        )
        try:
            await asyncio.gather(*(limiter.reserve_async(input_tokens=1) for _ in range(200)))
            assert not limiter.degraded
            with own_redis.client() as admin:
                assert int(admin.info("clients")["connected_clients"]) - 1 <= 3  # 2 + 1 sync
            assert limiter.levels()["input-tokens"] == pytest.approx(1_000_000 - 200)
        finally:
            await limiter.aclose()

    def test_threads_share_a_small_sync_pool(self, own_redis: OwnRedis, clock: FakeClock) -> None:
        """32 threads × 20 reserves through a sync pool of 4 connections: all on Redis,
        none lost or doubled."""
        limiter = RedisRateLimiter(
            own_redis.url, key="k", clock=clock, itpm=1_000_000, max_connections=4, latency=0
        )

        def work() -> None:
            for _ in range(20):
                limiter.reserve(input_tokens=3)

        threads = [threading.Thread(target=work) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not limiter.degraded
        assert limiter.levels()["input-tokens"] == pytest.approx(1_000_000 - 32 * 20 * 3)
        with own_redis.client() as admin:
            assert int(admin.info("clients")["connected_clients"]) - 1 <= 4

    def test_blocking_pools(self, prefix: str) -> None:
        """Built from a URL, the sync pool is a bounded BlockingConnectionPool."""
        limiter = RedisRateLimiter(URL, key="k", prefix=prefix, max_connections=7)
        pool = limiter._link.redis.connection_pool
        assert isinstance(pool, redis.BlockingConnectionPool)
        assert pool.max_connections == 7

    def test_bad_max_connections(self) -> None:
        """A pool needs at least one connection."""
        with pytest.raises(ValueError, match="at least 1"):
            RedisRateLimiter(URL, key="k", max_connections=0)


def _no_sleep(seconds: float) -> None:
    raise AssertionError(f"asked to wait {seconds} s: these tests stay within the budget")


async def _no_sleep_async(seconds: float) -> None:
    _no_sleep(seconds)


def _every_method(limiter: RedisRateLimiter) -> None:
    """Call every sync method once; a redis exception escaping fails the test."""
    grant = limiter.acquire(input_tokens=100, output_tokens=10, sleep=_no_sleep)
    limiter.settle(grant, input_tokens=80, output_tokens=5, headers={})
    limiter.release(limiter.reserve(input_tokens=10))
    limiter.observe_headers(_kind_headers("input-tokens", 6_000, 5_000, None))
    limiter.observe_rate_limited(0.0)
    limiter.levels()
    assert limiter.limits["input-tokens"] == 6_000


async def _every_method_async(limiter: RedisRateLimiter) -> None:
    grant = await limiter.acquire_async(input_tokens=100, output_tokens=10, sleep=_no_sleep_async)
    await limiter.settle_async(grant, input_tokens=80, output_tokens=5)
    await limiter.release_async(await limiter.reserve_async(input_tokens=10))
    await limiter.observe_headers_async(_kind_headers("input-tokens", 6_000, 5_000, None))
    await limiter.observe_rate_limited_async(0.0)
    await limiter.levels_async()


class TestRedisTrouble:
    """Redis going away degrades to local limits with one warning, and rejoins after."""

    async def test_killed_and_restarted(
        self, own_redis: OwnRedis, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Kill Redis mid-run: every call keeps succeeding on the local fallback with the
        same limits, one warning; restarted, the next probe (on the clock) rejoins it."""
        limiter = RedisRateLimiter(
            own_redis.url, key="k", clock=clock, itpm=6_000, latency=0, probe_interval=5.0
        )

        async def pairs(count: int) -> None:
            async def pair() -> None:
                grant = await limiter.acquire_async(
                    input_tokens=10, output_tokens=10, sleep=_no_sleep_async
                )
                await limiter.settle_async(grant, input_tokens=10, output_tokens=10)

            await asyncio.gather(*(pair() for _ in range(count)))

        try:
            with caplog.at_level(logging.INFO, logger="convo"):
                await pairs(20)
                _every_method(limiter)
                assert not limiter.degraded

                own_redis.kill()
                await pairs(50)
                _every_method(limiter)
                await _every_method_async(limiter)
                assert limiter.degraded
                # The fallback has the same limits: 6,000 a minute, from a full bucket.
                assert limiter.limits["input-tokens"] == 6_000
                big = limiter.reserve(input_tokens=7_000)
                assert big.wait > 0
                limiter.release(big)

                own_redis.start()
                clock.now += 4.0  # not yet time to probe: still local
                await pairs(10)
                assert limiter.degraded
                clock.now += 1.0
                await pairs(10)
                assert not limiter.degraded
                # Back on the (restarted, empty) server: its keys hold the new reservations.
                with own_redis.client() as admin:
                    assert admin.exists(limiter.keys[0])
                _every_method(limiter)
                await _every_method_async(limiter)

            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 1
            assert warnings[0].name == "convo"
            assert "Redis is unreachable" in warnings[0].getMessage()
            assert any("answers again" in r.getMessage() for r in caplog.records)
        finally:
            await limiter.aclose()

    async def test_killed_while_calls_are_in_flight(
        self, own_redis: OwnRedis, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """300 pairs; Redis is killed once 100 are done, with the next ones on their way,
        and 150 more start after: every one succeeds, one warning."""
        limiter = RedisRateLimiter(own_redis.url, key="k", clock=clock, itpm=100_000, latency=0)
        done = {True: 0, False: 0}  # by whether the limiter was degraded after the pair
        hundred, killed = asyncio.Event(), asyncio.Event()

        async def pair(n: int) -> None:
            if n >= 150:
                await killed.wait()
            await asyncio.sleep(n % 150 / 600)
            grant = await limiter.acquire_async(input_tokens=10, sleep=_no_sleep_async)
            await limiter.settle_async(grant, input_tokens=10, output_tokens=0)
            done[limiter.degraded] += 1
            if sum(done.values()) == 100:
                hundred.set()

        async def kill() -> None:
            await hundred.wait()
            own_redis.kill()
            killed.set()

        try:
            with caplog.at_level(logging.WARNING, logger="convo"):
                await asyncio.gather(kill(), *(pair(n) for n in range(300)))
            assert done[False] >= 100
            assert done[True] >= 150
            assert done[False] + done[True] == 300
            assert limiter.degraded
            assert len(caplog.records) == 1
        finally:
            await limiter.aclose()

    async def test_hung_server(
        self, own_redis: OwnRedis, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A server that stops answering (SIGSTOP) is Redis trouble after the socket timeout
        (here 0.3 s, from the URL); once it answers again (SIGCONT), the limiter rejoins."""
        url = own_redis.url + "?socket_timeout=0.3"
        limiter = RedisRateLimiter(url, key="k", clock=clock, itpm=6_000, latency=0)
        assert own_redis.process is not None
        try:
            with caplog.at_level(logging.WARNING, logger="convo"):
                await limiter.acquire_async(input_tokens=10)
                own_redis.process.send_signal(signal.SIGSTOP)
                started = time.monotonic()
                for _ in range(20):
                    await limiter.acquire_async(input_tokens=10, sleep=_no_sleep_async)
                assert time.monotonic() - started < 2.0  # one timeout, not twenty
                assert limiter.degraded
                own_redis.process.send_signal(signal.SIGCONT)
                clock.now += 5.0
                await limiter.acquire_async(input_tokens=10)
                assert not limiter.degraded
            assert len(caplog.records) == 1
        finally:
            if own_redis.process is not None:
                own_redis.process.send_signal(signal.SIGCONT)
            await limiter.aclose()

    def test_never_reachable(self, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
        """A Redis that was never there: the limiter works locally from the first call."""
        nobody = OwnRedis()
        limiter = RedisRateLimiter(nobody.url, key="k", clock=clock, itpm=6_000, latency=0)
        with caplog.at_level(logging.WARNING, logger="convo"):
            _every_method(limiter)
            limiter.clear()
        assert limiter.degraded
        assert len(caplog.records) == 1

    def test_probes_at_most_every_interval(self, clock: FakeClock) -> None:
        """While down, Redis is tried once per probe interval, not on every call: a server
        that accepts and at once hangs up counts the connections tried."""
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.05)
        port = listener.getsockname()[1]
        accepted = 0
        stop = threading.Event()

        def hang_up() -> None:
            nonlocal accepted
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                accepted += 1
                conn.close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        url = f"redis://127.0.0.1:{port}/0"
        limiter = RedisRateLimiter(url, key="k", clock=clock, itpm=6_000, latency=0)
        try:
            for _ in range(10):
                limiter.reserve(input_tokens=1)
            tried_first = accepted
            clock.now += 4.9
            for _ in range(10):
                limiter.reserve(input_tokens=1)
            assert accepted == tried_first
            clock.now += 0.1
            for _ in range(10):
                limiter.reserve(input_tokens=1)
            assert limiter.degraded
            assert tried_first >= 1
            assert accepted == 2 * tried_first
        finally:
            stop.set()
            thread.join(timeout=5)
            listener.close()

    async def test_settle_after_fallback_goes_local(
        self, own_redis: OwnRedis, clock: FakeClock
    ) -> None:
        """A reservation made by the fallback is settled and released there, even after
        Redis is back."""
        limiter = RedisRateLimiter(
            own_redis.url, key="k", clock=clock, itpm=6_000, latency=0, probe_interval=1.0
        )
        try:
            own_redis.kill()
            await limiter.reserve_async(input_tokens=5_000)
            local = await limiter.reserve_async(input_tokens=2_000)  # fallback at -1,000
            own_redis.start()
            clock.now += 1.0  # refills the fallback by 100
            await limiter.reserve_async(input_tokens=10)  # the probe: rejoined
            assert not limiter.degraded
            await limiter.release_async(local)
            assert limiter._fallback.levels()["input-tokens"] == pytest.approx(1_100.0)
            assert limiter.levels()["input-tokens"] == pytest.approx(5_990.0)  # Redis's
        finally:
            await limiter.aclose()


class _HeldScript:
    """A registered script whose every call waits until the test answers it."""

    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[list[str]]] = []

    async def __call__(self, *, keys: list[str], args: list[str]) -> list[str]:
        reply: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self.waiting.append(reply)
        return await reply


class _HeldClient:
    """Stands in for both the sync and the asyncio client: only ``register_script``."""

    def __init__(self) -> None:
        self.held = _HeldScript()

    def register_script(self, source: str) -> _HeldScript:
        return self.held


class TestLinkHealthOrder:
    """An outcome changes the link's health only if nothing changed it since the call
    started: replies that overtake one another do not flap it (CI saw two warnings for
    one outage when a reply sent before the kill arrived after the first failure)."""

    @staticmethod
    def _link(clock: FakeClock) -> tuple[_HeldClient, Any]:
        from convo.limits.redis_link import RedisLink

        client = _HeldClient()
        return client, RedisLink(
            client,
            script="",
            keys=["k"],
            owner="test",
            async_redis=client,
            max_connections=1,
            probe_clock=clock,
            probe_interval=5.0,
        )

    @staticmethod
    async def _sent(link: Any, calls: int) -> list[asyncio.Future[list[str] | None]]:
        """*calls* scripts sent and waiting for their replies."""
        sent = [asyncio.ensure_future(link.send(["x"])) for _ in range(calls)]
        await asyncio.sleep(0)
        return sent

    async def test_a_late_reply_from_before_an_outage_does_not_end_it(
        self, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        client, link = self._link(clock)
        with caplog.at_level(logging.INFO, logger="convo"):
            calls = await self._sent(link, 3)
            first, second, third = client.held.waiting
            first.set_exception(redis.ConnectionError("Connection closed by server."))
            second.set_result([b"1"])  # answered before the outage, read after it
            third.set_exception(redis.ConnectionError("Connection closed by server."))
            assert await asyncio.gather(*calls) == [None, ["1"], None]
        assert link.degraded
        assert [r.levelno for r in caplog.records] == [logging.WARNING]

    async def test_a_late_failure_from_before_a_rejoin_does_not_start_an_outage(
        self, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        client, link = self._link(clock)
        with caplog.at_level(logging.INFO, logger="convo"):
            old = await self._sent(link, 2)
            client.held.waiting[0].set_exception(redis.ConnectionError("gone"))
            await old[0]
            assert link.degraded
            clock.now += 5.0
            assert link.try_redis()  # the probe
            (probe,) = await self._sent(link, 1)
            client.held.waiting[2].set_result([b"1"])
            assert await probe == ["1"]
            assert not link.degraded
            client.held.waiting[1].set_exception(redis.ConnectionError("gone"))
            assert await old[1] is None
        assert not link.degraded
        assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]

    async def test_a_failed_probe_keeps_the_outage_and_waits_an_interval(
        self, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        client, link = self._link(clock)
        with caplog.at_level(logging.INFO, logger="convo"):
            (call,) = await self._sent(link, 1)
            client.held.waiting[0].set_exception(redis.ConnectionError("gone"))
            await call
            clock.now += 5.0
            assert link.try_redis()
            (probe,) = await self._sent(link, 1)
            clock.now += 1.0
            client.held.waiting[1].set_exception(redis.ConnectionError("still gone"))
            assert await probe is None
            assert link.degraded
            clock.now += 4.5  # the interval counts from the failed probe, not its start
            assert not link.try_redis()
            clock.now += 0.5
            assert link.try_redis()
        assert [r.levelno for r in caplog.records] == [logging.WARNING]

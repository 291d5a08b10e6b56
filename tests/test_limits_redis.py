"""RedisRateLimiter: the same buckets as RateLimiter, one budget shared across processes."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from convo.limits import RateLimiter, RedisRateLimiter
from tests.test_limits import FakeClock

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


class TestSameAsLocal:
    """The Lua script and the in-process buckets give the same waits and levels."""

    @settings(max_examples=40, deadline=None)
    @given(
        ops=st.lists(
            st.one_of(
                st.tuples(st.just("reserve"), st.integers(0, 900), st.integers(0, 200)),
                st.tuples(st.just("advance"), st.integers(0, 40), st.just(0)),
                st.tuples(st.just("settle"), st.integers(0, 900), st.integers(0, 200)),
                st.tuples(st.just("hold"), st.integers(0, 10), st.just(0)),
                st.tuples(st.just("headers"), st.integers(0, 6), st.integers(0, 30)),
            ),
            max_size=30,
        ),
        latency=st.sampled_from([0.0, 0.5]),
    )
    def test_scenarios(
        self, server: redis.Redis, ops: list[tuple[str, int, int]], latency: float
    ) -> None:
        """Random reserve/settle/hold/header/advance sequences agree to the microtoken."""
        clock = FakeClock(1000.0)
        key = f"convo-test:{uuid.uuid4().hex}:"
        limits = {"rpm": 30, "itpm": 600, "otpm": 120}
        local = RateLimiter(**limits, clock=clock, wall_clock=clock, latency=latency)
        remote = RedisRateLimiter(
            server, key="k", prefix=key, clock=clock, wall_clock=clock, latency=latency, **limits
        )
        try:
            grants = []
            for op, a, b in ops:
                if op == "advance":
                    clock.now += a
                elif op == "reserve":
                    mine, theirs = (
                        x.reserve(input_tokens=a, output_tokens=b) for x in (local, remote)
                    )
                    assert theirs.wait == pytest.approx(mine.wait, abs=1e-6)
                    grants.append((mine, theirs))
                elif op == "settle" and grants:
                    mine, theirs = grants.pop(0)
                    local.settle(mine, input_tokens=a, output_tokens=b)
                    remote.settle(theirs, input_tokens=a, output_tokens=b)
                elif op == "hold":
                    local.observe_rate_limited(float(a))
                    remote.observe_rate_limited(float(a))
                elif op == "headers":
                    seen = {
                        "anthropic-ratelimit-input-tokens-limit": "600",
                        "anthropic-ratelimit-input-tokens-remaining": str(a * 100),
                        "anthropic-ratelimit-input-tokens-reset": _rfc3339(clock.now + b),
                        "anthropic-ratelimit-requests-limit": "30",
                        "anthropic-ratelimit-requests-remaining": str(a * 5),
                    }
                    local.observe_headers(seen)
                    remote.observe_headers(seen)
                assert remote.levels() == pytest.approx(local.levels(), abs=1e-6)
        finally:
            remote.clear()


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

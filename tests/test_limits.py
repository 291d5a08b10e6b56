"""RateLimiter: token buckets, fair waits, header sync, 429 holds; and pacing at the emulator."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import threading
import uuid
from collections.abc import Iterable
from typing import Any, ClassVar

import anthropic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convo.emulator import RunningEmulator
from convo.limits import RateLimiter, Reservation, parse_headers
from convo.limits.core import DEFAULT_PENALTY_S, HeaderReading, _reset_at, parse_rfc3339

MODEL = "claude-sonnet-4-6"
EPOCH = 1_800_000_000.0


class FakeClock:
    """A clock that stands still until advanced; its sleep advances it and records."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock at 0."""
    return FakeClock()


def rfc3339(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def headers(kind: str, *, limit: int, remaining: int, reset: float | None = None) -> dict[str, str]:
    found = {
        f"anthropic-ratelimit-{kind}-limit": str(limit),
        f"anthropic-ratelimit-{kind}-remaining": str(remaining),
    }
    if reset is not None:
        found[f"anthropic-ratelimit-{kind}-reset"] = rfc3339(reset)
    return found


def _int(raw: str | None) -> int | None:
    """parse_headers' reading of a count: int(float(text)), None when absent or malformed."""
    try:
        return None if raw is None else int(float(raw))
    except ValueError:
        return None


def _lowered_reading(items: Iterable[tuple[str, str]]) -> dict[str, HeaderReading]:
    """parse_headers as it was: a lowered copy of every header, then each kind's three."""
    lowered = {k.lower(): v for k, v in items}
    expected = {}
    for kind in ("requests", "input-tokens", "output-tokens"):
        prefix = f"anthropic-ratelimit-{kind}-"
        limit, remaining = (_int(lowered.get(prefix + f)) for f in ("limit", "remaining"))
        reset = lowered.get(prefix + "reset")
        reset_at = None if reset is None else parse_rfc3339(reset)
        reset_in = None if reset_at is None else max(0.0, reset_at - EPOCH)
        if limit is not None or remaining is not None:
            expected[kind] = HeaderReading(limit, remaining, reset_in)
    return expected


class _Pairs(dict):  # type: ignore[type-arg]
    """Headers as a list of pairs, possibly differing only in case (as ``httpx.Headers``)."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        super().__init__()
        self._items = items

    def items(self) -> Any:
        return iter(self._items)


class TestValidation:
    """Misuse is a ValueError or TypeError that says what to do."""

    @pytest.mark.parametrize("name", ["rpm", "itpm", "otpm"])
    @pytest.mark.parametrize("value", [0, -5], ids=["zero", "negative"])
    def test_non_positive_limit(self, name: str, value: int) -> None:
        """A zero or negative limit is refused, pointing at None for no limit."""
        with pytest.raises(ValueError, match=f"{name}=None"):
            RateLimiter(**{name: value})

    def test_float_limit(self) -> None:
        """A limit must be an int per minute."""
        with pytest.raises(TypeError, match="itpm must be an int"):
            RateLimiter(itpm=1.5)  # type: ignore[arg-type]

    @pytest.mark.parametrize("field", ["input_tokens", "output_tokens"])
    def test_negative_amount(self, field: str) -> None:
        """A negative reservation is refused, suggesting 0."""
        limiter = RateLimiter(itpm=100)
        amounts = {"input_tokens": 1, "output_tokens": 1, field: -1}
        with pytest.raises(ValueError, match="pass 0"):
            limiter.reserve(**amounts)

    def test_negative_settle(self) -> None:
        """Settling with a negative actual is refused."""
        limiter = RateLimiter(itpm=100)
        grant = limiter.reserve(input_tokens=10)
        with pytest.raises(ValueError, match="cannot be negative"):
            limiter.settle(grant, input_tokens=-1, output_tokens=0)

    def test_negative_retry_after(self) -> None:
        """A negative retry-after is refused."""
        with pytest.raises(ValueError, match="seconds ≥ 0"):
            RateLimiter(rpm=1).observe_rate_limited(-1.0)


class TestBuckets:
    """Continuous refill, a minute's capacity, debt and waits."""

    def test_burst_up_to_capacity_is_free(self, clock: FakeClock) -> None:
        """A full bucket releases one minute's allowance at once."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0)
        waits = [limiter.reserve(input_tokens=100).wait for _ in range(6)]
        assert waits == [0.0] * 6

    def test_next_waits_for_refill(self, clock: FakeClock) -> None:
        """Past the capacity a reservation waits amount / (limit / 60) seconds."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0)
        limiter.reserve(input_tokens=600)
        assert limiter.reserve(input_tokens=100).wait == pytest.approx(10.0)

    def test_later_callers_queue_behind_debt(self, clock: FakeClock) -> None:
        """Each later reservation waits behind the debt of the earlier ones."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0)
        limiter.reserve(input_tokens=600)
        waits = [limiter.reserve(input_tokens=100).wait for _ in range(3)]
        assert waits == pytest.approx([10.0, 20.0, 30.0])

    def test_rpm(self, clock: FakeClock) -> None:
        """60 RPM is one request a second once the minute's burst is spent."""
        limiter = RateLimiter(rpm=60, clock=clock, latency=0)
        waits = [limiter.reserve(input_tokens=0).wait for _ in range(62)]
        assert waits[59:] == pytest.approx([0.0, 1.0, 2.0])

    def test_oversized_request_waits_for_full_bucket(self, clock: FakeClock) -> None:
        """A request over a minute's allowance waits for a full bucket, then leaves debt."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0)
        limiter.reserve(input_tokens=300)
        big = limiter.reserve(input_tokens=1_500)
        after = limiter.reserve(input_tokens=0)
        assert (big.wait, after.wait) == pytest.approx((30.0, 120.0))

    def test_oversized_on_full_bucket_goes_now(self, clock: FakeClock) -> None:
        """On a full bucket even an oversized request is released at once (no deadlock)."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0)
        assert limiter.reserve(input_tokens=10_000).wait == 0.0

    def test_refill_caps_at_capacity(self, clock: FakeClock) -> None:
        """An idle hour refills to one minute's allowance, no more."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0)
        clock.now += 3600
        limiter.reserve(input_tokens=600)
        assert limiter.reserve(input_tokens=60).wait == pytest.approx(6.0)

    def test_unlimited_never_waits(self, clock: FakeClock) -> None:
        """A limiter with no limits releases everything at once."""
        limiter = RateLimiter(clock=clock, latency=0)
        assert {limiter.reserve(input_tokens=10**9).wait for _ in range(5)} == {0.0}

    def test_output_bucket(self, clock: FakeClock) -> None:
        """Expected output is reserved from OTPM like input from ITPM."""
        limiter = RateLimiter(otpm=120, clock=clock, latency=0)
        limiter.reserve(input_tokens=0, output_tokens=120)
        assert limiter.reserve(input_tokens=0, output_tokens=10).wait == pytest.approx(5.0)

    def test_settle_refunds(self, clock: FakeClock) -> None:
        """Settling below the estimate gives the difference back."""
        limiter = RateLimiter(otpm=600, clock=clock, latency=0)
        grant = limiter.reserve(input_tokens=0, output_tokens=600)
        limiter.settle(grant, input_tokens=0, output_tokens=100)
        assert limiter.levels()["output-tokens"] == pytest.approx(500.0)

    def test_settle_charges(self, clock: FakeClock) -> None:
        """Settling above the estimate takes the difference, into debt if need be."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0)
        grant = limiter.reserve(input_tokens=500)
        limiter.settle(grant, input_tokens=800, output_tokens=0)
        assert limiter.levels()["input-tokens"] == pytest.approx(-200.0)

    def test_in_flight_debit(self, clock: FakeClock) -> None:
        """A take from a full bucket also debits the refill a full server misses in flight."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0.5)
        limiter.reserve(input_tokens=100)
        clock.now += 1.0
        # 10 a second: 5 tokens debited, and refill goes on from 495.
        assert limiter.levels()["input-tokens"] == pytest.approx(505.0)

    def test_no_debit_far_from_full(self, clock: FakeClock) -> None:
        """A take with room to spare in the bucket debits nothing extra."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0.5)
        limiter.reserve(input_tokens=300)
        limiter.reserve(input_tokens=100)
        assert limiter.levels()["input-tokens"] == pytest.approx(195.0)

    def test_refund_never_overfills(self, clock: FakeClock) -> None:
        """A refund after the bucket refilled stops at capacity."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0)
        grant = limiter.reserve(input_tokens=500)
        clock.now += 120
        limiter.settle(grant, input_tokens=0, output_tokens=0)
        assert limiter.levels()["input-tokens"] == pytest.approx(600.0)


class TestAcquire:
    """acquire and acquire_async sleep the reserved wait, and a 429 meanwhile extends it."""

    def test_sleeps_the_wait(self, clock: FakeClock) -> None:
        """acquire sleeps exactly the reservation's wait, once."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0)
        limiter.acquire(input_tokens=600, sleep=clock.sleep)
        grant = limiter.acquire(input_tokens=300, sleep=clock.sleep)
        assert (clock.slept, grant.wait) == ([pytest.approx(30.0)], pytest.approx(30.0))

    def test_no_wait_no_sleep(self, clock: FakeClock) -> None:
        """Nothing is slept when the bucket has room."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0)
        limiter.acquire(input_tokens=10, sleep=clock.sleep)
        assert clock.slept == []

    def test_429_during_sleep_extends(self, clock: FakeClock) -> None:
        """A 429 seen by another caller while sleeping holds this one back too."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0)
        limiter.reserve(input_tokens=600)

        def sleep(seconds: float) -> None:
            clock.sleep(seconds)
            if len(clock.slept) == 1:
                limiter.observe_rate_limited(7.0)  # at t=10: hold until 17

        grant = limiter.acquire(input_tokens=100, sleep=sleep)
        assert (grant.wait, clock.now) == (pytest.approx(17.0), pytest.approx(17.0))

    async def test_async(self, clock: FakeClock) -> None:
        """acquire_async awaits the injected sleep for the reserved wait."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0)
        await limiter.acquire_async(input_tokens=600, sleep=clock.asleep)
        grant = await limiter.acquire_async(input_tokens=60, sleep=clock.asleep)
        assert (clock.slept, grant.wait) == ([pytest.approx(6.0)], pytest.approx(6.0))

    async def test_async_tasks_are_fifo(self, clock: FakeClock) -> None:
        """Many tasks on one loop get waits in the order they reserved."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0)
        limiter.reserve(input_tokens=600)
        grants = [limiter.reserve(input_tokens=60) for _ in range(5)]
        assert [g.wait for g in grants] == pytest.approx([6.0, 12.0, 18.0, 24.0, 30.0])


class TestRelease:
    """release gives a reservation that was never sent back whole."""

    def test_levels_back(self, clock: FakeClock) -> None:
        """Request, input, output and the in-flight debit all return: levels as before."""
        limiter = RateLimiter(rpm=60, itpm=600, otpm=120, clock=clock, latency=1.0)
        before = limiter.levels()
        grant = limiter.reserve(input_tokens=550, output_tokens=100)
        assert grant.in_flight[1] > 0  # from a full bucket: the latency debit was taken
        limiter.release(grant)
        assert limiter.levels() == pytest.approx(before, abs=1e-9)

    def test_out_of_the_queue(self, clock: FakeClock) -> None:
        """A released waiter no longer counts as reserved-but-unsent when headers arrive."""
        limiter = RateLimiter(itpm=6_000, clock=clock, latency=0)
        limiter.reserve(input_tokens=6_000)
        waiter = limiter.reserve(input_tokens=3_000)
        limiter.release(waiter)
        limiter.observe_headers(headers("input-tokens", limit=6_000, remaining=0))
        assert limiter.levels()["input-tokens"] == pytest.approx(0.0)

    def test_capped_at_capacity(self, clock: FakeClock) -> None:
        """A release after the bucket refilled stops at capacity, as the refill would have."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0)
        grant = limiter.reserve(input_tokens=500)
        clock.now += 50
        limiter.release(grant)
        assert limiter.levels()["input-tokens"] == pytest.approx(600.0)

    def test_sync_acquire_interrupted(self, clock: FakeClock) -> None:
        """Ctrl-C while acquire sleeps releases the reservation before it propagates."""
        limiter = RateLimiter(itpm=600, clock=clock, latency=0)
        limiter.reserve(input_tokens=700)

        def sleep(seconds: float) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            limiter.acquire(input_tokens=3_000, sleep=sleep)
        assert limiter.levels()["input-tokens"] == pytest.approx(-100.0)

    async def test_async_twins(self, clock: FakeClock) -> None:
        """Every operation has an awaitable twin with the same effect."""
        limiter = RateLimiter(itpm=600, otpm=120, clock=clock, latency=0)
        grant = await limiter.reserve_async(input_tokens=100, output_tokens=100)
        await limiter.settle_async(grant, input_tokens=50, output_tokens=20)
        other = await limiter.reserve_async(input_tokens=100)
        await limiter.release_async(other)
        await limiter.observe_headers_async(headers("output-tokens", limit=120, remaining=50))
        await limiter.observe_rate_limited_async(2.0)
        assert limiter.levels() == pytest.approx({"input-tokens": 550.0, "output-tokens": 50.0})
        assert limiter.reserve(input_tokens=1).wait == pytest.approx(2.0)


class TestSettleWithHeaders:
    """settle(headers=...) is settle then observe_headers, in one step."""

    def test_same_as_two_calls(self, clock: FakeClock) -> None:
        """Both ways leave the same levels and limits."""
        seen = headers("input-tokens", limit=6_000, remaining=1_000, reset=EPOCH + 30)
        seen |= headers("requests", limit=50, remaining=40)
        results = []
        for together in (True, False):
            limiter = RateLimiter(itpm=6_000, clock=clock, wall_clock=lambda: EPOCH, latency=0)
            grant = limiter.reserve(input_tokens=2_000, output_tokens=10)
            if together:
                limiter.settle(grant, input_tokens=1_500, output_tokens=5, headers=seen)
            else:
                limiter.settle(grant, input_tokens=1_500, output_tokens=5)
                limiter.observe_headers(seen)
            results.append((limiter.levels(), limiter.limits))
        assert results[0] == results[1]
        assert results[0][1]["requests"] == 50


def forever(event: asyncio.Event) -> Any:
    """A sleep that never ends by itself (the clock stands still): only cancellation ends it."""

    async def sleep(seconds: float) -> None:
        await event.wait()

    return sleep


async def cancel_at_random(limiter: Any, amounts: list[int], rng: random.Random) -> tuple[int, int]:
    """Start one acquire_async per amount, each cancelled after a random delay: a few loop
    steps (0: before it ran at all; on Redis, often inside its call) or a few milliseconds
    (often while it waits its turn). Those that get through release what they reserved.
    Returns (cancelled, completed)."""
    never = asyncio.Event()

    async def one(amount: int) -> None:
        grant = await limiter.acquire_async(
            input_tokens=amount, output_tokens=amount // 10, sleep=forever(never)
        )
        await limiter.release_async(grant)

    tasks = [asyncio.ensure_future(one(a)) for a in amounts]
    for task in tasks:
        if rng.random() < 0.5:
            for _ in range(rng.randrange(0, 6)):
                await asyncio.sleep(0)
        else:
            await asyncio.sleep(rng.uniform(0, 0.004))
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if r is not None and not isinstance(r, asyncio.CancelledError)]
    assert errors == []
    cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
    return cancelled, len(results) - cancelled


class TestCancellation:
    """A cancelled acquire_async gives back what it reserved, at any point."""

    async def test_cancelled_waiter(self, clock: FakeClock) -> None:
        """The issue's case: a 3,000-token waiter cancelled leaves the bucket at -100."""
        limiter = RateLimiter(itpm=6_000, clock=clock, latency=0)
        limiter.reserve(input_tokens=6_100)
        task = asyncio.ensure_future(
            limiter.acquire_async(input_tokens=3_000, sleep=forever(asyncio.Event()))
        )
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert limiter.levels()["input-tokens"] == pytest.approx(-100.0)

    @pytest.mark.parametrize("seed", range(5))
    async def test_random_cancellations(self, clock: FakeClock, seed: int) -> None:
        """50 waiters cancelled at random moments: levels and the next wait are as before."""
        rng = random.Random(seed)
        limiter, untouched = (
            RateLimiter(rpm=100, itpm=6_000, otpm=1_000, clock=clock, latency=1.0) for _ in range(2)
        )
        for each in (limiter, untouched):
            each.reserve(input_tokens=5_000)  # room for a few, then everyone waits
        amounts = [rng.randrange(100, 3_000) for _ in range(50)]
        cancelled, _ = await cancel_at_random(limiter, amounts, rng)
        assert cancelled > 25
        assert limiter.levels() == pytest.approx(untouched.levels(), abs=1e-6)
        expected = untouched.reserve(input_tokens=3_000).wait
        assert limiter.reserve(input_tokens=3_000).wait == pytest.approx(expected, abs=1e-6)


class TestRateLimited:
    """A 429 holds every release back until its retry-after has passed."""

    def test_hold(self, clock: FakeClock) -> None:
        """After a 429 with retry-after 3, even a tiny request waits 3 s."""
        limiter = RateLimiter(itpm=6_000, clock=clock, latency=0)
        limiter.observe_rate_limited(3.0)
        assert limiter.reserve(input_tokens=1).wait == pytest.approx(3.0)

    def test_default_hold(self, clock: FakeClock) -> None:
        """A 429 without retry-after holds for the default."""
        limiter = RateLimiter(clock=clock, latency=0)
        limiter.observe_rate_limited(None)
        assert limiter.reserve(input_tokens=1).wait == pytest.approx(DEFAULT_PENALTY_S)

    def test_shorter_hold_does_not_cut_a_longer_one(self, clock: FakeClock) -> None:
        """A later, shorter retry-after never shortens the hold."""
        limiter = RateLimiter(clock=clock, latency=0)
        limiter.observe_rate_limited(10.0)
        limiter.observe_rate_limited(1.0)
        assert limiter.reserve(input_tokens=1).wait == pytest.approx(10.0)

    def test_hold_ends(self, clock: FakeClock) -> None:
        """Once the hold has passed, a request with room goes at once."""
        limiter = RateLimiter(itpm=6_000, clock=clock, latency=0)
        limiter.observe_rate_limited(3.0)
        clock.now += 3.0
        assert limiter.reserve(input_tokens=1).wait == 0.0


class TestHeaders:
    """observe_headers adopts the server's lower remaining and learns its limits."""

    def test_parse(self) -> None:
        """Headers are read case-insensitively; reset becomes seconds from now."""
        found = parse_headers(
            {"Anthropic-RateLimit-Input-Tokens-Limit": "6000",
             "anthropic-ratelimit-input-tokens-remaining": "4000",
             "anthropic-ratelimit-input-tokens-reset": rfc3339(EPOCH + 20)},
            wall_now=EPOCH,
        )  # fmt: skip
        reading = found["input-tokens"]
        assert (reading.limit, reading.remaining, reading.reset_in) == (6000, 4000, 20.0)

    def test_malformed_ignored(self) -> None:
        """A malformed value is ignored, never raised."""
        found = parse_headers(
            {"anthropic-ratelimit-requests-limit": "many",
             "anthropic-ratelimit-requests-remaining": "5",
             "anthropic-ratelimit-requests-reset": "soon"},
            wall_now=EPOCH,
        )  # fmt: skip
        reading = found["requests"]
        assert (reading.limit, reading.remaining, reading.reset_in) == (None, 5, None)

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2027-01-15T08:00:00Z", dt.datetime(2027, 1, 15, 8, tzinfo=dt.timezone.utc)),
            ("2027-01-15T09:00:00.500+01:00", dt.datetime(2027, 1, 15, 8, 0, 0, 500_000,
                                                         tzinfo=dt.timezone.utc)),
        ],
        ids=["zulu", "offset-fraction"],
    )  # fmt: skip
    def test_rfc3339(self, text: str, expected: dt.datetime) -> None:
        """RFC 3339 times with Z or an offset and fractions are understood."""
        assert parse_rfc3339(text) == expected.timestamp()

    @pytest.mark.parametrize(
        "text",
        ["2027-01-15T08:00:00Z", "2027-01-15T08:00:01Z", " 2027-01-15T09:00:00+01:00", "soon"],
    )
    def test_reset_cache_same_answer(self, text: str) -> None:
        """The cached reset parse gives parse_rfc3339's answer, hit or miss, and is bounded."""
        assert _reset_at(text) == parse_rfc3339(text)
        assert _reset_at(text) == parse_rfc3339(text)  # now from the cache
        assert _reset_at.cache_info().maxsize == 64

    def test_reset_cache_keyed_on_text(self) -> None:
        """Another reset time is another answer, whatever was parsed before."""
        first, second = rfc3339(EPOCH + 20), rfc3339(EPOCH + 21)
        found = [
            parse_headers({"anthropic-ratelimit-requests-remaining": "5",
                           "anthropic-ratelimit-requests-reset": text}, wall_now=EPOCH)
            for text in (first, second, first)
        ]  # fmt: skip
        assert [f["requests"].reset_in for f in found] == [20.0, 21.0, 20.0]

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(
                    [f"anthropic-ratelimit-{k}-{f}" for k in ("requests", "input-tokens",
                     "output-tokens", "tokens") for f in ("limit", "remaining", "reset")]
                    + ["date", "request-id"]
                ).flatmap(lambda n: st.sampled_from([n, n.upper(), n.title()])),
                st.sampled_from(["10", "1000.7", "-3", "x", "", rfc3339(EPOCH + 5),
                                 rfc3339(EPOCH - 5), "2027-01-15T09:00:00+01:00"]),
            ),
            max_size=20,
        )
    )  # fmt: skip
    def test_parse_same_as_lowered_copy(self, items: list[tuple[str, str]]) -> None:
        """Reading only the wanted names gives what reading a lowered copy of all did: the
        last of names differing in case wins, malformed values are ignored."""
        as_dict = dict(items)
        assert parse_headers(as_dict, wall_now=EPOCH) == _lowered_reading(as_dict.items())
        assert parse_headers(_Pairs(items), wall_now=EPOCH) == _lowered_reading(items)

    def test_lower_remaining_adopted(self, clock: FakeClock) -> None:
        """The server saw other clients: its lower remaining replaces ours."""
        limiter = RateLimiter(itpm=10_000, clock=clock, latency=0)
        limiter.observe_headers(headers("input-tokens", limit=10_000, remaining=2_000))
        assert limiter.levels()["input-tokens"] == pytest.approx(2_000.0)

    def test_reset_refines_rounded_remaining(self, clock: FakeClock) -> None:
        """The reset time narrows a remaining rounded down to thousands."""
        limiter = RateLimiter(itpm=6_000, clock=clock, wall_clock=lambda: EPOCH)
        # 6000 ITPM refills 100 a second: full in 35 s means 2,500 left (reported as 2,000).
        reading = headers("input-tokens", limit=6_000, remaining=2_000, reset=EPOCH + 35)
        limiter.observe_headers(reading)
        assert limiter.levels()["input-tokens"] == pytest.approx(2_500.0)

    def test_within_rounding_kept(self, clock: FakeClock) -> None:
        """A remaining that only differs from ours by its rounding changes nothing."""
        limiter = RateLimiter(itpm=6_000, clock=clock, latency=0)
        limiter.reserve(input_tokens=3_500)
        limiter.observe_headers(headers("input-tokens", limit=6_000, remaining=2_000))
        assert limiter.levels()["input-tokens"] == pytest.approx(2_500.0)

    def test_unsent_reservations_counted(self, clock: FakeClock) -> None:
        """Reservations still waiting are not yet known to the server and are not lost."""
        limiter = RateLimiter(itpm=6_000, clock=clock, latency=0)
        limiter.reserve(input_tokens=6_000)
        limiter.reserve(input_tokens=3_000)  # waits 30 s; the server has not seen it
        limiter.observe_headers(headers("input-tokens", limit=6_000, remaining=0))
        assert limiter.levels()["input-tokens"] == pytest.approx(-3_000.0)

    def test_other_client_spend_with_unsent(self, clock: FakeClock) -> None:
        """With reservations waiting, the adopted level keeps their debt on top."""
        limiter = RateLimiter(itpm=6_000, clock=clock, latency=0)
        limiter.reserve(input_tokens=1_000)
        limiter.reserve(input_tokens=3_000)
        limiter.reserve(input_tokens=4_000)  # waits 20 s
        limiter.observe_headers(headers("requests", limit=100, remaining=90))
        limiter.observe_headers(headers("input-tokens", limit=6_000, remaining=0))
        # The server had 2,000 less than we thought: someone else spent it.
        assert limiter.levels()["input-tokens"] == pytest.approx(-4_000.0)

    def test_learns_limits(self, clock: FakeClock) -> None:
        """A limiter with no limits adopts the server's limit and remaining."""
        limiter = RateLimiter(clock=clock, latency=0)
        limiter.observe_headers(
            headers("input-tokens", limit=6_000, remaining=3_000)
            | headers("requests", limit=50, remaining=49)
        )
        assert limiter.limits == {"requests": 50, "input-tokens": 6_000, "output-tokens": None}
        assert limiter.reserve(input_tokens=4_000).wait == pytest.approx(10.0)

    def test_lower_server_limit_wins(self, clock: FakeClock) -> None:
        """A server limit lower than the configured one (a workspace cap) is adopted."""
        limiter = RateLimiter(itpm=10_000, clock=clock, latency=0)
        limiter.observe_headers(headers("input-tokens", limit=6_000, remaining=6_000))
        assert limiter.limits["input-tokens"] == 6_000

    def test_configured_share_kept(self, clock: FakeClock) -> None:
        """A configured limit below the server's is this limiter's share and stays."""
        limiter = RateLimiter(itpm=3_000, clock=clock, latency=0)
        limiter.observe_headers(headers("input-tokens", limit=6_000, remaining=6_000))
        assert limiter.limits["input-tokens"] == 3_000


class TestShared:
    """RateLimiter.shared is one object per key for the whole process."""

    def test_same_object(self) -> None:
        """Two calls with one key give the same limiter."""
        key = f"test-{uuid.uuid4()}"
        assert RateLimiter.shared(key, itpm=100) is RateLimiter.shared(key)

    def test_keys_apart(self) -> None:
        """Different keys give different limiters."""
        assert RateLimiter.shared(f"a-{uuid.uuid4()}") is not RateLimiter.shared(
            f"b-{uuid.uuid4()}"
        )

    def test_conflicting_limits(self) -> None:
        """Asking for one key with other limits is refused."""
        key = f"test-{uuid.uuid4()}"
        RateLimiter.shared(key, itpm=100)
        with pytest.raises(ValueError, match="Use another key"):
            RateLimiter.shared(key, itpm=200)


class TestThreads:
    """Many threads reserving at once neither lose nor double any token."""

    def test_sums_and_waits(self, clock: FakeClock) -> None:
        """8 threads × 250 reserves: the level and the set of waits are exactly serial ones."""
        limiter = RateLimiter(itpm=6_000, clock=clock, latency=0)
        grants: list[Reservation] = []
        lock = threading.Lock()

        def work() -> None:
            mine = [limiter.reserve(input_tokens=10) for _ in range(250)]
            with lock:
                grants.extend(mine)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # 2,000 reserves of 10 from 6,000: the first 600 go at once, then one per 0.1 s.
        expected = [max(0.0, (10 * k - 6_000 + 10) / 100) for k in range(2_000)]
        assert sorted(g.wait for g in grants) == pytest.approx(expected)
        assert limiter.levels()["input-tokens"] == pytest.approx(6_000 - 20_000)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 600), st.integers(0, 120)),
        st.tuples(st.just("advance"), st.floats(0, 30), st.just(0)),
    ),
    max_size=60,
)


class TestProperties:
    """Invariants over random sequences of reservations and clock advances."""

    @settings(max_examples=300, deadline=None)
    @given(ops=operations, rpm=st.integers(1, 30), latency=st.sampled_from([0.0, 0.5]))
    def test_never_above_rate(
        self, ops: list[tuple[str, float, int]], rpm: int, latency: float
    ) -> None:
        """By any time T the released amounts stay within capacity + rate × T, per bucket.

        Amounts are at most one minute's allowance here: a larger request is admitted on
        a full bucket by design (see TestBuckets), which this bound cannot hold for.
        """
        clock = FakeClock()
        limiter = RateLimiter(rpm=rpm, itpm=600, otpm=120, clock=clock, latency=latency)
        released: list[tuple[float, int, int]] = []
        for op, value, output in ops:
            if op == "advance":
                clock.now += value
            else:
                grant = limiter.reserve(input_tokens=int(value), output_tokens=output)
                released.append((grant.at + grant.wait, int(value), output))
        released.sort()
        for when, _, _ in released:
            upto = [r for r in released if r[0] <= when]
            assert len(upto) <= rpm + rpm / 60 * when + 1e-6
            assert sum(r[1] for r in upto) <= 600 + 10 * when + 1e-6
            assert sum(r[2] for r in upto) <= 120 + 2 * when + 1e-6

    @settings(max_examples=300, deadline=None)
    @given(
        ops=operations,
        holds=st.lists(st.floats(0, 20), max_size=3),
        latency=st.sampled_from([0.0, 0.5]),
    )
    def test_fifo(
        self, ops: list[tuple[str, float, int]], holds: list[float], latency: float
    ) -> None:
        """Release times never decrease in reservation order, whatever the amounts."""
        clock = FakeClock()
        limiter = RateLimiter(rpm=20, itpm=600, otpm=120, clock=clock, latency=latency)
        releases: list[float] = []
        for step, (op, value, output) in enumerate(ops):
            if op == "advance":
                clock.now += value
            else:
                grant = limiter.reserve(input_tokens=int(value), output_tokens=output)
                releases.append(grant.at + grant.wait)
            if step < len(holds):
                limiter.observe_rate_limited(holds[step])
        assert all(a <= b + 1e-9 for a, b in itertools.pairwise(releases))


def burst(count: int) -> list[dict[str, Any]]:
    """Requests of about 300 uncached input tokens each, all different (nothing caches)."""
    return [
        {
            "model": MODEL,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": f"task {i} " + "words " * 298}],
        }
        for i in range(count)
    ]


class TestEmulator:
    """Through the real SDK: a burst paced by the limiter draws no 429 from the emulator."""

    LIMITS: ClassVar[dict[str, Any]] = {
        "limits": {"default": {"rpm": 600, "itpm": 6000, "otpm": 100000}}
    }

    def test_unpaced_burst_is_limited(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """Without pacing the same burst draws 429s (so the paced test tests something)."""
        emulator.configure(self.LIMITS)
        limited = 0
        for body in burst(30):
            try:
                client.messages.create(**body)
            except anthropic.RateLimitError:
                limited += 1
        assert limited > 0

    def test_paced_burst(self, emulator: RunningEmulator, client: anthropic.Anthropic) -> None:
        """30 requests of ~300 tokens (1.5 minutes' ITPM) go through with zero 429s."""
        emulator.configure(self.LIMITS)
        now = emulator.emulator.clock.now
        limiter = RateLimiter(rpm=600, itpm=6000, otpm=100000, clock=now, wall_clock=now)
        start = now()
        for body in burst(30):
            grant = limiter.acquire(input_tokens=300, output_tokens=16, sleep=emulator.advance)
            raw = client.messages.with_raw_response.create(**body)
            limiter.observe_headers(raw.headers)
            usage = raw.parse().usage
            limiter.settle(
                grant, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
            )
        statuses = emulator.stats()["requests"]["by_status"]
        assert statuses == {"200": 30}
        # 9,000 tokens against 6,000 at once plus 100 a second: about 30 s, and not much more.
        assert 29.0 <= now() - start <= 40.0

    async def test_learning_limiter_async(
        self, emulator: RunningEmulator, async_client: anthropic.AsyncAnthropic
    ) -> None:
        """A limiter with no limits learns them from the first response; 20 tasks, no 429."""
        emulator.configure(self.LIMITS)
        clock = emulator.emulator.clock
        limiter = RateLimiter(clock=clock.now, wall_clock=clock.now)
        first = await async_client.messages.with_raw_response.create(**burst(1)[0])
        limiter.observe_headers(first.headers)

        sleepers: list[float] = []

        async def sleep(seconds: float) -> None:
            # Virtual time: the earliest sleeper moves the clock to its own wake-up time.
            target = clock.now() + seconds
            sleepers.append(target)
            while True:
                await asyncio.sleep(0)
                if target == min(sleepers):
                    sleepers.remove(target)
                    clock.advance(max(0.0, target - clock.now()))
                    return

        async def task(body: dict[str, Any]) -> None:
            await limiter.acquire_async(input_tokens=300, output_tokens=16, sleep=sleep)
            raw = await async_client.messages.with_raw_response.create(**body)
            limiter.observe_headers(raw.headers)

        await asyncio.gather(*(task(b) for b in burst(21)[1:]))
        assert emulator.stats()["requests"]["by_status"] == {"200": 21}

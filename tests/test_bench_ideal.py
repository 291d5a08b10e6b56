"""The ideal: hand-computed cases, a brute-force check of the plan, and simple bounds."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convo.bench.ideal import (
    TurnLog,
    UnitRates,
    ideal_cost,
    ideal_timeline,
    ideal_usage,
    plan_segment,
    unit_rates,
)

MODEL = "claude-sonnet-4-6"
# Sonnet 4.6, USD per million tokens (api-facts section 2): input 3, 5m write 3.75,
# 1h write 6, read 0.30, output 15.
INPUT, W5, W1H, READ, OUTPUT = (Decimal(x) for x in ("3", "3.75", "6", "0.30", "15"))
UNIT = UnitRates(input=1.0, write_5m=1.25, write_1h=2.0, read=0.1)


def usd(per_million: Decimal, tokens: int) -> Decimal:
    return per_million * tokens / 1_000_000


def chat(at: tuple[float, float]) -> list[TurnLog]:
    """One user, two turns: a 2,000-token static prefix, a 100-token suffix, messages."""
    first = TurnLog(at[0], (("static", 2000), ("suffix:u", 100), ("m0", 50)), output=24)
    second = TurnLog(
        at[1],
        (("static", 2000), ("suffix:u", 100), ("m0", 50), ("m1", 24), ("m2", 30)),
        output=24,
    )
    return [first, second]


class TestHandComputed:
    """The ideal of small request logs equals the cost worked out by hand."""

    def test_rates_are_the_documented_multipliers(self) -> None:
        """The plan's unit rates come from convo.price: 1.25×, 2× and 0.1× of input."""
        rates = unit_rates(MODEL)
        assert rates.write_5m / rates.input == pytest.approx(1.25)
        assert rates.write_1h / rates.input == pytest.approx(2.0)
        assert rates.read / rates.input == pytest.approx(0.1)

    def test_two_turns_inside_the_ttl(self) -> None:
        """60 s apart: what is reused is written once (5m) and read once; the rest is input."""
        reused = 2000 + 100 + 50
        expected = (
            usd(W5 + READ, reused)  # static, suffix, first message: write then read
            + usd(INPUT, 24 + 30)  # the reply and the new message: used once
            + usd(OUTPUT, 48)
        )
        assert ideal_cost(chat((0.0, 60.0)), MODEL) == expected

    def test_two_turns_just_outside_the_ttl(self) -> None:
        """1,000 s apart: a 5m write kept alive by 3 refresh reads (at 0.1 each) beats
        paying input twice (2.0) and a 1h write (2.1): 1.25 + 0.3 + 0.1 = 1.65."""
        reused = 2000 + 100 + 50
        expected = usd(W5 + 4 * READ, reused) + usd(INPUT, 24 + 30) + usd(OUTPUT, 48)
        assert ideal_cost(chat((0.0, 1000.0)), MODEL) == expected
        usage = ideal_usage(chat((0.0, 1000.0)), unit_rates(MODEL))
        assert (usage.cache_write_5m, usage.cache_read) == (reused, 4 * reused)

    def test_two_turns_hours_apart(self) -> None:
        """2 hours apart nothing is worth caching: input twice (2.0) beats a 1h write kept
        alive (2 + 0.2 + 0.1) and a 5m one (1.25 + 2.4 + 0.1)."""
        expected = usd(INPUT, 2 * (2000 + 100 + 50) + 24 + 30) + usd(OUTPUT, 48)
        assert ideal_cost(chat((0.0, 7200.0)), MODEL) == expected

    def test_a_burst(self) -> None:
        """Five users at the same instant on one 2,000-token prefix: one write, four reads
        (what single flight achieves); each user's own message is input."""
        turns = [TurnLog(0.0, (("static", 2000), (f"m:{u}", 40)), output=24) for u in range(5)]
        expected = usd(W5 + 4 * READ, 2000) + usd(INPUT, 5 * 40) + usd(OUTPUT, 5 * 24)
        assert ideal_cost(turns, MODEL) == expected

    def test_one_hour_pays_for_gaps_of_ten_minutes(self) -> None:
        """Uses every 10 minutes for an hour: a 1h write and reads (2 + 6 × 0.1 = 2.6) beat a
        5m write kept alive through every gap (two refreshes and a read each:
        1.25 + 6 × 0.3 = 3.05)."""
        plan = plan_segment([600.0 * i for i in range(7)], UNIT)
        assert plan.cost == pytest.approx(2.0 + 6 * 0.1)
        assert (plan.write_1h, plan.read, plan.refresh) == (1, 6, 0)

    def test_keep_alive_pays_for_a_gap_of_ten_minutes(self) -> None:
        """Two uses 10 minutes apart: 5m kept alive (1.25 + 0.2 + 0.1 = 1.55) beats a 1h
        write (2.1) and input twice (2.0)."""
        plan = plan_segment([0.0, 600.0], UNIT)
        assert plan.cost == pytest.approx(1.55)
        assert (plan.write_5m, plan.read, plan.refresh) == (1, 1, 2)

    def test_one_hour_pays_for_gaps_of_half_an_hour(self) -> None:
        """Uses 30 minutes apart: 1h write and reads (2 + 3 × 0.1) beat 5m kept alive
        (1.25 + 3 × (0.1 + 0.6))."""
        plan = plan_segment([0.0, 1800.0, 3600.0, 5400.0], UNIT)
        assert plan.cost == pytest.approx(2.0 + 3 * 0.1)
        assert (plan.write_1h, plan.read) == (1, 3)

    def test_segment_sizes_must_agree(self) -> None:
        """A segment key with two sizes is a bug in the log, not something to average."""
        turns = [TurnLog(0.0, (("s", 10),)), TurnLog(1.0, (("s", 11),))]
        with pytest.raises(ValueError, match="two sizes"):
            ideal_usage(turns, UNIT)


def brute_force(times: list[float], rates: UnitRates) -> float:
    """Every sequence of choices at the uses, in the same relaxed model, priced directly."""
    best = math.inf
    for choices in itertools.product(("input", "w5", "w1h", "read"), repeat=len(times)):
        cost, live, last = 0.0, 0.0, times[0]  # live: TTL of the entry touched at `last`
        for at, choice in zip(times, choices, strict=True):
            if choice == "read":
                if not live:
                    break
                cost += rates.read * (math.floor((at - last) / live) + 1)
            elif choice == "input":
                cost += rates.input
                if live and at - last >= live:  # an input use leaves a lapsed entry lapsed
                    live = 0.0
                if live:
                    cost += rates.read * math.floor((at - last) / live)  # kept alive anyway
                    live, last = live, at
                continue
            else:
                cost += rates.write_5m if choice == "w5" else rates.write_1h
                live = 300.0 if choice == "w5" else 3600.0
            last = at
        else:
            best = min(best, cost)
    return best


gaps = st.lists(
    st.one_of(
        st.floats(0, 299),
        st.floats(300, 3599),
        st.floats(3600, 9000),
        st.sampled_from([0.0, 300.0, 3600.0]),
    ),
    min_size=0,
    max_size=5,
)


class TestPlan:
    """The dynamic programme finds the cheapest history and never exceeds a simple policy."""

    @settings(max_examples=200, deadline=None)
    @given(gaps=gaps)
    def test_matches_brute_force(self, gaps: list[float]) -> None:
        """Over at most six uses, the plan costs what exhaustive search finds."""
        times = list(itertools.accumulate([0.0, *gaps]))
        assert plan_segment(times, UNIT).cost == pytest.approx(brute_force(times, UNIT))

    @settings(max_examples=200, deadline=None)
    @given(gaps=gaps)
    def test_no_more_than_simple_policies(self, gaps: list[float]) -> None:
        """Never dearer than all input, or a 5m write re-written whenever it lapsed."""
        times = list(itertools.accumulate([0.0, *gaps]))
        plan = plan_segment(times, UNIT)
        assert plan.cost <= len(times) * UNIT.input + 1e-9
        rewrite = UNIT.write_5m + sum(UNIT.read if g < 300 else UNIT.write_5m for g in gaps)
        assert plan.cost <= rewrite + 1e-9

    def test_out_of_order_times_are_refused(self) -> None:
        """Use times must be sorted."""
        with pytest.raises(ValueError, match="order"):
            plan_segment([5.0, 1.0], UNIT)

    def test_no_uses_cost_nothing(self) -> None:
        """A segment never used costs nothing."""
        assert plan_segment([], UNIT).cost == 0.0


class TestTimeline:
    """The ideal charged over time adds up to the ideal."""

    @settings(max_examples=100, deadline=None)
    @given(gaps=gaps, sizes=st.lists(st.integers(1, 5_000), min_size=1, max_size=3))
    def test_ends_at_the_ideal(self, gaps: list[float], sizes: list[int]) -> None:
        """The cumulative timeline's last point is the ideal's cost, and it never falls."""
        times = list(itertools.accumulate([0.0, *gaps]))
        turns = [
            TurnLog(at, tuple((f"s{i}", n) for i, n in enumerate(sizes[: 1 + k % len(sizes)])), 24)
            for k, at in enumerate(times)
        ]
        rates = unit_rates(MODEL)
        points = ideal_timeline(turns, rates)
        assert [t for t, _ in points] == times
        assert all(b >= a for (_, a), (_, b) in itertools.pairwise(points))
        assert points[-1][1] == pytest.approx(float(ideal_cost(turns, MODEL)), rel=1e-9)

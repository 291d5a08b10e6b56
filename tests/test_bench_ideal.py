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

    def test_gaps_of_ten_minutes(self) -> None:
        """Uses every 10 minutes for an hour: a 5m write kept alive to the second use (two
        refreshes and a read, whose request moves the token into a 1h entry), then five
        reads: 1.25 + 0.3 + 5 × 0.1 = 2.05. A 1h write at once costs 2.6, a 5m entry kept
        alive through every gap 1.25 + 6 × 0.3 = 3.05."""
        plan = plan_segment([600.0 * i for i in range(7)], UNIT)
        assert plan.cost == pytest.approx(1.25 + 0.3 + 5 * 0.1)
        assert (plan.write_5m, plan.write_1h, plan.read, plan.refresh) == (1, 0, 6, 2)

    def test_a_read_moves_the_token_into_a_one_hour_entry(self) -> None:
        """Uses at 0, 60 s and 1,000 s: the request at 60 s reads the token and may write a
        1h entry after it, which holds the token too (the API keys an entry by everything
        before its breakpoint; the tokens after pay the write). So the third use reads it
        with no refresh: 1.25 + 0.1 + 0.1, with or without refresh reads."""
        times = [0.0, 60.0, 1000.0]
        for refresh in (True, False):
            plan = plan_segment(times, UNIT, refresh=refresh)
            assert plan.cost == pytest.approx(1.45)
            assert (plan.write_5m, plan.read, plan.refresh) == (1, 2, 0)

    def test_keep_alive_pays_for_a_gap_of_ten_minutes(self) -> None:
        """Two uses 10 minutes apart: 5m kept alive (1.25 + 0.2 + 0.1 = 1.55) beats a 1h
        write (2.1) and input twice (2.0)."""
        plan = plan_segment([0.0, 600.0], UNIT)
        assert plan.cost == pytest.approx(1.55)
        assert (plan.write_5m, plan.read, plan.refresh) == (1, 1, 2)

    def test_a_shared_entry_is_not_moved_by_a_read(self) -> None:
        """A prefix three conversations use once each, at 0, 60 s and 1,000 s: the entry
        they share is written only by a write of the prefix, so a read at 60 s cannot move
        it into a 1h entry that the third conversation could read (a 1h entry written
        after it would hold the second conversation's tokens). Cheapest: a 5m write, a
        read, three refreshes and a read (1.75). Without the conversations named, the
        read at 60 s may move it (1.45)."""
        times = [0.0, 60.0, 1000.0]
        assert plan_segment(times, UNIT, chains=["a", "b", "c"]).cost == pytest.approx(1.75)
        assert plan_segment(times, UNIT).cost == pytest.approx(1.45)
        # No refreshes: a 1h write at once and two reads.
        plain = plan_segment(times, UNIT, chains=["a", "b", "c"], refresh=False)
        assert plain.cost == pytest.approx(2.2)

    def test_a_conversation_reads_a_shared_token_from_its_own_entry(self) -> None:
        """Conversation a uses the prefix at 0 and 1,000 s, b at 30 s: a's second use
        reads it from an entry of a's own, whatever became of the shared one: 1.25 + 0.1 +
        0.1, no refresh. (A request that writes the prefix for 5 minutes cannot also write
        a 1h entry after it, as 1h breakpoints must come first; the bound lets it, which
        only makes it lower: still a bound.)"""
        plan = plan_segment([0.0, 30.0, 1000.0], UNIT, chains=["a", "b", "a"])
        assert plan.cost == pytest.approx(1.45)
        assert plan.refresh == 0

    def test_chains_must_match_the_uses(self) -> None:
        """One conversation name per use."""
        with pytest.raises(ValueError, match="2 chains for 3 uses"):
            plan_segment([0.0, 1.0, 2.0], UNIT, chains=["a", "b"])

    def test_gaps_of_half_an_hour(self) -> None:
        """Uses 30 minutes apart: a 5m write kept alive to the second use (six refreshes
        and a read, into a 1h entry), then two reads: 1.25 + 0.7 + 0.2 = 2.15, against a
        1h write at once (2 + 3 × 0.1 = 2.3)."""
        plan = plan_segment([0.0, 1800.0, 3600.0, 5400.0], UNIT)
        assert plan.cost == pytest.approx(1.25 + 0.7 + 0.2)
        assert (plan.write_5m, plan.read, plan.refresh) == (1, 3, 6)

    def test_segment_sizes_must_agree(self) -> None:
        """A segment key with two sizes is a bug in the log, not something to average."""
        turns = [TurnLog(0.0, (("s", 10),)), TurnLog(1.0, (("s", 11),))]
        with pytest.raises(ValueError, match="two sizes"):
            ideal_usage(turns, UNIT)


def brute_force(times: list[float], rates: UnitRates, *, refresh: bool = True) -> float:
    """Every sequence of choices at the uses, in the same relaxed model, priced directly.
    Without *refresh*, no read happens between uses: an entry must be younger than its TTL
    at the use that reads it."""
    best = math.inf
    # "read1h": a read by a request that also writes a 1h entry after the token, which then
    # holds it too.
    choices_at = ("input", "w5", "w1h", "read", "read1h")
    for choices in itertools.product(choices_at, repeat=len(times)):
        cost, live, last = 0.0, 0.0, times[0]  # live: TTL of the entry touched at `last`
        for at, choice in zip(times, choices, strict=True):
            lapsed = bool(live) and at - last >= live
            if not refresh and lapsed:
                live, lapsed = 0.0, False  # gone at exactly its TTL
            if choice in ("read", "read1h"):
                if not live:
                    break
                cost += rates.read * (math.floor((at - last) / live) + 1)
                live = 3600.0 if choice == "read1h" else live
            elif choice == "input":
                cost += rates.input
                if lapsed:  # an input use leaves a lapsed entry lapsed
                    live = 0.0
                if live:
                    cost += rates.read * math.floor((at - last) / live)  # kept alive anyway
                    last = at
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


class TestWithoutRefresh:
    """The bound for a client whose requests are its users' turns: no read between uses."""

    def test_a_gap_past_the_ttl_is_not_bridged(self) -> None:
        """1,000 s apart: the ideal keeps a 5m entry alive with 3 refreshes (1.65); without
        them the cheapest is input twice (2.00; a 1h write and a read is 2.10)."""
        assert plan_segment([0.0, 1000.0], UNIT).cost == pytest.approx(1.65)
        plan = plan_segment([0.0, 1000.0], UNIT, refresh=False)
        assert plan.cost == pytest.approx(2.0)
        assert (plan.input, plan.refresh) == (2, 0)

    def test_an_entry_is_gone_at_exactly_its_ttl(self) -> None:
        """299 s: write and read (1.35); 300 s: the 5m entry has lapsed (2.00)."""
        assert plan_segment([0.0, 299.0], UNIT, refresh=False).cost == pytest.approx(1.35)
        assert plan_segment([0.0, 300.0], UNIT, refresh=False).cost == pytest.approx(2.0)

    def test_uses_inside_the_ttl_cost_the_same_as_the_ideal(self) -> None:
        """Every 10 minutes for an hour: a 1h write and six reads either way (2.60)."""
        times = [600.0 * i for i in range(7)]
        assert plan_segment(times, UNIT, refresh=False).cost == pytest.approx(2.6)

    @settings(max_examples=200, deadline=None)
    @given(gaps=gaps)
    def test_matches_brute_force_and_never_undercuts_the_ideal(self, gaps: list[float]) -> None:
        """Over at most six uses, the plan costs what exhaustive search without refreshes
        finds, and at least the ideal (which may refresh)."""
        times = list(itertools.accumulate([0.0, *gaps]))
        plan = plan_segment(times, UNIT, refresh=False)
        assert plan.cost == pytest.approx(brute_force(times, UNIT, refresh=False))
        assert plan.cost >= plan_segment(times, UNIT).cost - 1e-9
        assert plan.refresh == 0

    def test_usage_counts_no_refresh_reads(self) -> None:
        """Two turns 1,000 s apart: with refreshes the reused part is written, refreshed
        and read; without, all of it is input twice."""
        kept = ideal_usage(chat((0.0, 1000.0)), UNIT)
        plain = ideal_usage(chat((0.0, 1000.0)), UNIT, refresh=False)
        assert kept.cache_read > 0
        assert (plain.cache_read, plain.cache_write) == (0, 0)
        assert plain.input == 2 * (2000 + 100 + 50) + 24 + 30


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

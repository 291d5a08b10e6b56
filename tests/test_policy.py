"""The cache policy: its decisions from their arithmetic, and a Session consulting it."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import anthropic
import pytest

import convo
from convo.emulator import RunningEmulator
from convo.ledger import Ledger
from convo.limits import RateLimiter
from convo.policy import (
    PrefixPool,
    history_ttl,
    keep_alive,
    observe,
    pool_for,
    prefix_ttl,
    prefix_ttl_counts,
    within,
)
from convo.policy.observe import cdf
from convo.session import KeepAlive, Session
from convo.tokens import message_tokens
from convo.warm import WarmRegistry

MODEL = "claude-sonnet-4-6"  # $3 per million input tokens
SYSTEM = "You answer questions about the travel plan, briefly and exactly. " * 120  # 2,040 tokens


class TestPrefixTtl:
    """1h pays for the shared prefix when 5-60 minute gaps per chain exceed 0.75 / 1.15."""

    @pytest.mark.parametrize(
        ("gaps", "action", "saving"),
        [
            pytest.param([400.0], "1h", 1000 * (1.15 * 1.5 / 0.5 - 0.75), id="one-long-gap"),
            pytest.param([], "1h", 1000 * (1.15 * 1 - 0.75), id="nothing-observed"),
            pytest.param(
                [100.0, 200.0], "1h", 1000 * (1.15 * 1 - 0.75), id="short-gaps-decide-nothing"
            ),
            pytest.param([4000.0], "5m", 1000 * (1.15 * 0.5 / 1.5 - 0.75), id="hour-gap-alone"),
            pytest.param(
                [400.0, 4000.0, 5000.0], "5m", 1000 * (1.15 * 1.5 / 2.5 - 0.75), id="one-per-two"
            ),
            pytest.param(
                [400.0, 900.0, 4000.0], "1h", 1000 * (1.15 * 2.5 / 1.5 - 0.75), id="two-per-one"
            ),
        ],
    )
    def test_break_even(self, gaps: list[float], action: str, saving: float) -> None:
        """saving(1h) = tokens x (1.15 (k + 1/2) / (w + 1/2) - 0.75), chosen when positive:
        with nothing known, or only gaps under 5 minutes, 1h (a chain is as likely to meet a
        gap of 5-60 minutes as to end); one gap over an hour alone tips it to 5m."""
        decision = prefix_ttl(gaps, tokens=1000)
        assert decision.action == action
        assert decision.expected_saving == pytest.approx(saving)

    def test_negative_gap_is_refused(self) -> None:
        """A negative gap is a caller's bug."""
        with pytest.raises(ValueError, match="negative"):
            prefix_ttl([-1.0])


class TestHistoryTtl:
    """The history breakpoint: none, 5m or 1h, by the next turn's chance of reading it."""

    def test_likely_soon_and_surely_within_the_hour_takes_1h(self) -> None:
        """5m: 0.9 x (1 + 0.9 x 0.25 - 0.1) x 1000 - 0.25 x 100 = 987.5;
        1h: 1.0 x (1 + 0.9 x 0.25 + 0.1 x 1.0 - 0.1) x 1000 - 1.0 x 100 = 1125."""
        decision = history_ttl(
            p_within={"5m": 0.9, "1h": 1.0}, protected={"5m": 1000, "1h": 1000}, new=100
        )
        assert decision.action == "1h"
        assert decision.expected_saving == pytest.approx(1125.0)

    def test_a_message_alone_is_not_worth_an_hour_where_the_history_is(self) -> None:
        """The newest message decided alone (protected = new = its 40 tokens), chatbot-like
        gaps: 1h 1.0 x (1.2125 + 0.15 - 0.1) x 40 - 1.0 x 40 = 10.5; 5m 0.85 x (1.2125 -
        0.1) x 40 - 0.25 x 40 = 27.8: 5m. The history behind it (2,000 tokens) takes 1h."""
        p_within = {"5m": 0.85, "1h": 1.0}
        alone = history_ttl(p_within=p_within, protected={"5m": 40, "1h": 40}, new=40)
        assert alone.action == "5m"
        assert alone.expected_saving == pytest.approx(0.85 * 1.1125 * 40 - 0.25 * 40)
        history = history_ttl(p_within=p_within, protected={"5m": 2000, "1h": 2000}, new=80)
        assert history.action == "1h"

    def test_a_1h_prefix_write_tips_it_back_to_5m(self) -> None:
        """The same, but a 1h history needs the cold prefix written 1h: 1125 - 0.75 x 2000
        = -375 < 987.5."""
        decision = history_ttl(
            p_within={"5m": 0.9, "1h": 1.0},
            protected={"5m": 1000, "1h": 1000},
            new=100,
            extra_1h=0.75 * 2000,
        )
        assert decision.action == "5m"
        assert decision.expected_saving == pytest.approx(987.5)

    def test_a_conversation_that_never_returns_gets_no_breakpoint(self) -> None:
        """P(next) near 0: any write costs more than input; the baseline (none) wins at 0."""
        decision = history_ttl(
            p_within={"5m": 0.01, "1h": 0.01}, protected={"5m": 200, "1h": 200}, new=200
        )
        assert decision.action == "none"
        assert decision.expected_saving == 0.0

    def test_long_gaps_take_1h(self) -> None:
        """Turns 10-60 minutes apart: 5m gains nothing, 1h 0.9 x 1.8 x 2000 - 300 = 2940."""
        decision = history_ttl(
            p_within={"5m": 0.0, "1h": 0.9}, protected={"5m": 2000, "1h": 2000}, new=300
        )
        assert decision.action == "1h"
        assert decision.expected_saving == pytest.approx(2940.0)

    def test_the_same_chances_never_favour_1h(self) -> None:
        """P(<5m) = P(<1h) = 0.5: a 1h write buys no more reads than a 5m one."""
        decision = history_ttl(
            p_within={"5m": 0.5, "1h": 0.5}, protected={"5m": 2000, "1h": 2000}, new=200
        )
        assert decision.action == "5m"
        assert decision.expected_saving == pytest.approx(0.5 * 1.025 * 2000 - 50)

    def test_a_first_turn_is_written_when_the_conversation_goes_on(self) -> None:
        """Everything is new on a first turn (protected = new = 220). Writing it 1h now
        (2.0, then reads) beats sending it as input now and writing it next turn when
        another turn is likely: 0.85 x (1 + 0.85 - 0.1) x 220 - 220 = 107.25."""
        decision = history_ttl(
            p_within={"5m": 0.0, "1h": 0.85}, protected={"5m": 220, "1h": 220}, new=220
        )
        assert decision.action == "1h"
        assert decision.expected_saving == pytest.approx(0.85 * 1.75 * 220 - 220)


class TestKeepAlive:
    """A re-warm pays when P(next in window) x what it saves exceeds what it reads."""

    def test_small_history_behind_a_big_prefix_does_not_pay(self) -> None:
        """0.5 x 1.15 x 1000 = 575 saved against 0.1 x 9000 = 900 read: skip, -325."""
        decision = keep_alive(p_next=0.5, protected=1000, read=9000)
        assert decision.action == "skip"
        assert decision.expected_saving == pytest.approx(-325.0)

    def test_protecting_the_prefix_too_pays(self) -> None:
        """Nobody else keeps the prefix: 0.5 x 1.15 x 9000 - 900 - 1.25 x 24 = 4245."""
        decision = keep_alive(p_next=0.5, protected=9000, read=9000, tail=24)
        assert decision.action == "send"
        assert decision.expected_saving == pytest.approx(0.5 * 1.15 * 9000 - 900 - 30)

    def test_a_1h_entry_is_worth_more_to_keep(self) -> None:
        """Rewriting at 2.0 instead of 1.25: 0.2 x 1.9 x 3000 - 300 = 840."""
        decision = keep_alive(p_next=0.2, protected=3000, read=3000, rewrite=2.0)
        assert decision.expected_saving == pytest.approx(0.2 * 1.9 * 3000 - 300)
        assert decision.action == "send"

    def test_the_shared_prefix_counts_for_whoever_comes_next(self) -> None:
        """A 200-token history nobody will read (P = 0) behind a 6,000-token prefix the
        fleet uses again with P = 0.3: 0.3 x 1.15 x 6000 - 0.1 x 6200 = 1450: send."""
        decision = keep_alive(p_next=0.0, protected=200, read=6200, shared=6000, p_shared=0.3)
        assert decision.action == "send"
        assert decision.expected_saving == pytest.approx(0.3 * 1.15 * 6000 - 620)


class TestWithin:
    """P(next turn in a window): Kaplan-Meier, with a pseudo-gap at the median gap and a
    wait that never ends."""

    def test_product_limit_by_hand(self) -> None:
        """Gaps 100, 400, 5000 (+ 1950), waits 50, 7000 (+ inf): S(100) = 5/6,
        S(400) = 4/6, S(1950) = 3/6, so P((300, 3600]) = S(300) - S(3600) = 2/6."""
        p = within([100.0, 400.0, 5000.0], [50.0, 7000.0], after=300.0, before=3600.0)
        assert p == pytest.approx(2 / 6)

    def test_condition_on_time_already_waited(self) -> None:
        """Given 200 s passed: divided by S(200) = 5/6, so 2/5."""
        p = within([100.0, 400.0, 5000.0], [50.0, 7000.0], after=300.0, before=3600.0, alive=200.0)
        assert p == pytest.approx(2 / 5)

    def test_nothing_known_is_one_half(self) -> None:
        """No observation: 1/2."""
        assert within([], [], after=0.0, before=300.0) == 0.5

    def test_a_wait_counts_only_as_long_as_it_is_known(self) -> None:
        """100 gaps of 10 s (+ the pseudo-gap at their median), 7 conversations quiet for
        400 s: within 5m is 101/109, and within an hour the same, since nothing was seen
        coming back after 10 s."""
        five = within([10.0] * 100, [400.0] * 7, after=0.0, before=300.0)
        hour = within([10.0] * 100, [400.0] * 7, after=0.0, before=3600.0)
        assert five == pytest.approx(101 / 109)
        assert hour == pytest.approx(five)

    def test_silence_longer_than_any_gap_seen_is_let_go(self) -> None:
        """Every gap seen was under 30 s; after 240 s of silence nothing says it returns."""
        assert within([5.0, 12.0, 30.0], [], after=300.0, before=540.0, alive=240.0) == 0.0


class TestCdf:
    """One survival curve for several horizons: the prior never favours the longer one."""

    def test_only_the_pseudo_gap_separates_the_hour_when_none_was_seen_past_five_minutes(
        self,
    ) -> None:
        """Gaps 60 and 120 (+ the pseudo-gaps at the median, 120, and between the TTLs,
        ~1039), waits of 900, 900 (+ inf): S(60) = 6/7, S(120) = 6/7 x 4/6 = 4/7, the waits
        leave at 900, S(1039) = 4/7 x 1/2 = 2/7: P(<5m) = 3/7, P(<1h) = 5/7."""
        five, hour = cdf([60.0, 120.0], [900.0, 900.0], (300.0, 3600.0))
        assert five == pytest.approx(3 / 7)
        assert hour == pytest.approx(5 / 7)

    @pytest.mark.parametrize("n", [0, 1, 5, 40])
    def test_the_hour_adds_one_in_n_plus_three_over_short_gaps(self, n: int) -> None:
        """With n gaps seen, all under 5 minutes, and no wait: the prior's gap between the
        TTLs gives the hour 1/(n + 3) more than 5 minutes, fading as evidence comes in."""
        five, hour = cdf([60.0] * n, [], (300.0, 3600.0))
        assert five == pytest.approx(1 - 2 / (n + 3))
        assert hour - five == pytest.approx(1 / (n + 3))


def _reference_cdf_at(
    observed: list[float], latest: list[float], mine: float | None, now: float, times: Any
) -> list[float]:
    """``observe._cdf_at`` as it was first written (one event at a time, from the start
    for every horizon, a factor per event time): what the faster loop must equal. Equal up
    to rounding: the faster loop multiplies one telescoped factor per stretch of event
    times where the risk set holds still (fewer roundings, so if anything nearer the exact
    product)."""
    events = observe._with_pseudo_gaps(sorted(observed), times)
    out = [0.0] * len(times)
    n = len(events)
    at_risk = len(latest)
    s = 1.0
    i = 0
    for k in sorted(range(len(times)), key=times.__getitem__):
        while i < n and events[i] <= times[k]:
            time = events[i]
            j = i + 1
            while j < n and events[j] == time:
                j += 1
            while at_risk and latest[at_risk - 1] > now - time:
                at_risk -= 1
            waits = at_risk + 1
            if mine is not None and now - mine >= time:
                waits -= 1
            s *= 1.0 - (j - i) / (n - i + waits)
            i = j
        out[k] = 1.0 - s
    return out


class TestPrefixPool:
    """The pool records uses, turns and the prefix entry's TTL."""

    def test_gaps_and_turns(self) -> None:
        """Prefix gaps come from every use; a conversation's own gaps count twice."""
        pool = PrefixPool()
        for at in (0.0, 100.0, 700.0):
            pool.record_use(at)
        assert pool.prefix_gaps() == [100.0, 600.0]
        pool.record_turn("a", 0.0)
        pool.record_turn("a", 100.0)
        pool.record_turn("b", 50.0)
        # a: gaps [100] (twice); b's wait of 950 at now=1000 is beyond 300: a failure; so
        # is the wait that never ends. No pseudo-gap: it prices re-warms from evidence.
        assert pool.next_turn("a", 1000.0, after=0.0, before=300.0) == pytest.approx(2 / 4)

    def test_rescue_counts_only_uses_after_the_lapse(self) -> None:
        """A re-warm saves the next use only if it falls after the entry lapses and before
        the re-warm's own entry would: uses that came back within 5 minutes, or after 10,
        give it nothing; a lapsed entry cannot be refreshed."""
        pool = PrefixPool()
        for at in (0.0, 100.0, 200.0, 300.0):  # gaps of 100 s: always back before a lapse
            pool.record_use(at)
        assert pool.rescue(540.0) == 0.0
        pool.record_use(700.0)  # a gap of 400 s, past a 5m lapse
        # At 940 (240 s of silence) a re-warm covers uses at 300-540 s after the last: of
        # the gaps that outlast 240 s (400 s, and the wait that never ends), one is there.
        assert pool.rescue(940.0) == pytest.approx(1 / 2)
        assert pool.rescue(1001.0) == 0.0  # lapsed at 1000: a re-warm would write

    def test_nothing_observed_never_pays_for_a_rewarm(self) -> None:
        """Prices for a spend come from evidence: with nothing seen, no chance at all."""
        assert within([], [], after=300.0, before=540.0, evidence_only=True) == 0.0
        assert within([400.0], [], after=300.0, before=540.0, evidence_only=True) == 0.5

    def test_entry_ttl_follows_the_writer(self) -> None:
        """A cold prefix takes the writer's TTL; a live one keeps the TTL it was written with."""
        pool = PrefixPool()
        assert not pool.live(0.0)
        assert pool.record_write("1h", live=False) == "1h"
        pool.record_use(0.0)
        assert pool.live(3000.0)
        assert pool.record_write("5m", live=pool.live(3000.0)) == "1h"
        assert not pool.live(3600.0)

    @pytest.mark.parametrize("seed", range(5))
    def test_memoized_estimates_equal_the_reference(self, seed: int) -> None:
        """The pool's memoized survival curve gives what cdf() gives from the raw lists,
        and its gap counts what prefix_ttl() counts, at any time and after new
        observations."""
        rng = random.Random(seed)
        pool = PrefixPool()
        turns: dict[str, list[float]] = {}
        at = 0.0
        for _ in range(400):
            at += rng.choice([rng.uniform(0, 60), rng.uniform(200, 900), rng.uniform(3000, 5000)])
            name = f"c{rng.randrange(60)}"
            pool.record_use(at)
            pool.record_turn(name, at)
            turns.setdefault(name, []).append(at)
            if rng.random() < 0.2:
                for who in (name, None, "never-seen"):
                    now = at + rng.uniform(0, 4000)
                    gaps = list(pool._turn_gaps)
                    if who is not None:
                        gaps.extend(pool._own.get(who, ()))
                    waits = [now - t for c, t in pool._latest.items() if c != who]
                    times = (300.0, 3600.0)
                    assert pool.next_turn_cdf(who, now, times) == pytest.approx(
                        cdf(gaps, waits, times), abs=1e-9
                    )
                reference = prefix_ttl(pool.prefix_gaps(), tokens=1000)
                assert prefix_ttl_counts(*pool.prefix_gap_counts(), tokens=1000) == reference

    @pytest.mark.parametrize("seed", range(3))
    def test_sorted_copies_follow_evictions_and_estimates_are_unchanged(
        self, seed: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With the gap deques and the conversations bounded (and overflowing), the pool's
        sorted copies, kept up to date one observation at a time, equal a fresh sort of
        what they mirror; and the estimate from them is the one a fresh build gives (to
        rounding: see _reference_cdf_at)."""
        monkeypatch.setattr(observe, "_MAX_GAPS", 40)
        monkeypatch.setattr(observe, "_MAX_CONVERSATIONS", 12)
        rng = random.Random(seed)
        pool = PrefixPool()
        at = 0.0
        for step in range(600):
            at += rng.choice([rng.uniform(0, 60), rng.uniform(200, 900), 30.0])
            name = f"c{rng.randrange(20)}"
            pool.record_use(at)
            pool.record_turn(name, at)
            if step % 7:
                continue
            for who in (name, None, "never-seen"):
                now = at + rng.uniform(0, 4000)
                times = (300.0, 3600.0)
                estimate = pool.next_turn_cdf(who, now, times)
                assert pool._sorted_turn_gaps == sorted(pool._turn_gaps)
                assert pool._sorted_latest == sorted(pool._latest.values())
                fresh = sorted([*pool._turn_gaps, *pool._own.get(who or "", ())])
                mine = pool._latest.get(who) if who is not None else None
                latest = sorted(pool._latest.values())
                assert estimate == pytest.approx(
                    _reference_cdf_at(fresh, latest, mine, now, times), rel=1e-12, abs=1e-15
                )
            pool.prefix_gap_counts()
            assert pool._sorted_prefix_gaps == sorted(pool._prefix_gaps)

    @pytest.mark.parametrize("seed", range(20))
    def test_survival_loop_equals_the_first_written_one(self, seed: int) -> None:
        """The survival loop (horizons and the risk set's changes found by bisection, the
        factors between them telescoped) gives what the loop first written gives, to
        rounding: with many ties, with
        latest turns dropping out among the events, with and without this conversation's
        own wait, for horizons among the events and beyond them."""
        rng = random.Random(seed)
        now = 10_000.0
        grid = [rng.choice([1.0, 7.5, 30.0, 300.0]) * rng.randrange(1, 40) for _ in range(5)]
        observed = sorted(
            rng.choice(grid) if rng.random() < 0.4 else rng.uniform(0, 4000)
            for _ in range(rng.randrange(0, 700))
        )
        latest = sorted(
            now - rng.choice([*observed, rng.uniform(0, 5000)] if observed else [0.0])
            for _ in range(rng.randrange(1, 1200))
        )
        mine = rng.choice([None, rng.choice(latest)])
        times = rng.choice([(300.0, 3600.0), (3600.0, 300.0), (rng.uniform(0, 5000), 1e9)])
        assert observe._cdf_at(observed, latest, mine, now, times) == pytest.approx(
            _reference_cdf_at(observed, latest, mine, now, times), rel=1e-12, abs=1e-15
        )

    def test_shared_per_registry(self) -> None:
        """Sessions on one registry share a prefix's pool; another registry has its own."""
        one, two = WarmRegistry(), WarmRegistry()
        assert pool_for(one, "p") is pool_for(one, "p")
        assert pool_for(one, "p") is not pool_for(two, "p")
        assert pool_for(one, "p") is not pool_for(one, "q")


# -- a Session consulting the policy ------------------------------------------------------


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    with Ledger.open(":memory:") as led:
        yield led


@pytest.fixture
def registry(emulator: RunningEmulator) -> WarmRegistry:
    return WarmRegistry(clock=emulator.emulator.clock.now)


@pytest.fixture
def make_session(
    emulator: RunningEmulator, client: anthropic.Anthropic, registry: WarmRegistry, ledger: Ledger
) -> Callable[..., Session]:
    def make(**options: Any) -> Session:
        options.setdefault("client", client)
        options.setdefault("clock", emulator.emulator.clock.now)
        options.setdefault("registry", registry)
        options.setdefault("limiter", RateLimiter())
        options.setdefault("ledger", ledger)
        options.setdefault("max_tokens", 64)
        return Session(convo.Prefix(model=MODEL, system=[SYSTEM]), **options)

    return make


class TestSessionPolicy:
    """The Session lays out turns and re-warms by the policy, and records why."""

    def test_keep_alive_row_carries_its_expected_saving(
        self, emulator: RunningEmulator, make_session: Callable[..., Session], ledger: Ledger
    ) -> None:
        """Where users were seen coming back 6-7 minutes later (past a 5m lapse), a lone
        conversation on 5m entries re-warms, protecting the prefix too: it pays, and its
        ledger row says keep_alive with the saving expected (tokens x $3 per million)."""
        earlier = make_session()
        for text in ("One", "Two", "Three"):
            earlier.send(text)
            emulator.advance(400)
        session = make_session(keep_alive=KeepAlive(margin_s=60), adaptive_ttl=False)
        session.send("Hello")
        emulator.advance(250)
        reply = session.keep_alive_tick()
        assert reply is not None
        decision = session._core.last_decision
        assert decision is not None
        assert decision.action == "send"
        ledger.flush()
        rows = [r for r in ledger.rows(session=session.session_id) if r.purpose == "keep_alive"]
        assert len(rows) == 1
        expected = Decimal(repr(round(decision.expected_saving, 3))) * Decimal(3) / 1_000_000
        assert rows[0].expected_saving_usd == pytest.approx(expected, abs=Decimal("1e-9"))
        assert rows[0].expected_saving_usd > 0

    def test_finished_single_turn_tasks_are_not_kept_alive(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """Once the pool has seen single-turn tasks end, a finished task is not re-warmed
        (no other turn is expected), though keep-alive is on."""
        for i in range(20):  # tasks that never came back, 10 minutes ago
            make_session().send(f"Task number {i}")
        emulator.advance(600)
        task = make_session(keep_alive=KeepAlive(margin_s=60))
        task.send("One more task")
        emulator.advance(250)
        assert task.keep_alive_tick() is None
        decision = task._core.last_decision
        assert decision is not None
        assert decision.action != "send"

    def test_single_turn_tasks_stop_caching_history(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """Tasks that never have a second turn: the history breakpoint stops being written
        (its 1.25x would never be read). The first task wrote the prefix for an hour (with
        no gap seen, a chain is as likely to meet a 5-60 minute gap as to end), so a task
        400 s after the last one reads it."""
        first = make_session().send("Task 0 of a few words")
        assert first.usage.cache_write_1h == 2040
        for i in range(1, 10):
            make_session().send(f"Task {i} of a few words")
        emulator.advance(400)
        reply = make_session().send("Another task of a few words")
        assert reply.usage.cache_read == 2040
        assert reply.usage.cache_write_1h == reply.usage.cache_write_5m == 0
        assert reply.usage.input > 0  # the task itself: sent once, never cached

    def test_growth_recorded_is_the_last_exchanges_tokens(
        self, make_session: Callable[..., Session]
    ) -> None:
        """Each turn records what the exchange before it added: the tokens of the last user
        message and reply, as message_tokens counts them."""
        session = make_session()
        for text in ("hello there", "a longer question about the plan " * 20, "and then?"):
            session.send(text)
        stored = session._core.history.stored
        expected = [sum(message_tokens(m) for m in stored[k : k + 2]) for k in (0, 2)]
        assert list(session._core._pool._growth)[-2:] == expected

    def test_adaptive_ttl_off_keeps_the_layout(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """adaptive_ttl=False: the 5m prefix and 5m rolling history, whatever the gaps."""
        session = make_session(adaptive_ttl=False)
        session.send("First")
        emulator.advance(400)
        reply = session.send("Second")
        assert reply.usage.cache_write_1h == 0
        assert session.prefix.ttl == "5m"

    @pytest.mark.parametrize(
        "params",
        [pytest.param(None, id="citations"), pytest.param({"speed": "fast"}, id="speed")],
    )
    def test_a_setting_that_rekeys_the_system_does_not_borrow_the_fleets_entry(
        self,
        emulator: RunningEmulator,
        make_session: Callable[..., Session],
        params: dict[str, Any] | None,
    ) -> None:
        """Another session keeps the plain prefix live; a turn whose citations (or speed)
        re-key the system must predict a write of it, not a read of the fleet's entry."""
        make_session().send("Keep the prefix warm")
        emulator.advance(5)
        session = make_session()
        content: Any = "A question"
        if params is None:
            document = {
                "type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": "A note. " * 40},
                "citations": {"enabled": True},
            }
            content = [document, {"type": "text", "text": "What does the note say?"}]
        reply = session.send(content, params=params)
        assert reply.usage.cache_read == 0
        assert reply.cache.predicted.cache_read == 0
        assert reply.cache.reason != "evicted_or_unknown"
        assert reply.cache.exact

    def test_a_first_turn_protects_its_suffix_once(
        self, make_session: Callable[..., Session]
    ) -> None:
        """A first turn writes the suffix and its message: what it would spare the next
        turn is those same tokens, the suffix counted once (the prefix, written for an
        hour with no gap seen, protects itself)."""
        session = make_session(suffix="User: Ada, who plans trips to the north. " * 10)
        session.send("Hello")
        decision = session._core.last_decision
        assert decision is not None
        match = re.search(r"protected=(\d+)/(\d+), new=(\d+)", decision.reason)
        assert match is not None
        five, hour, new = map(int, match.groups())
        assert five == hour == new

    def test_cold_pre_warm_row_carries_its_price(
        self, make_session: Callable[..., Session], ledger: Ledger
    ) -> None:
        """A pre-warm of a cold prefix is sent (the caller asked) and its ledger row says
        warm, with the expected saving it has: minus a read of what it wrote and its own
        input (the first turn reads instead of writing), in USD at $3 per million."""
        session = make_session()
        reply = session.warm(latency=True)
        assert reply is not None
        ledger.flush()
        rows = [r for r in ledger.rows(session=session.session_id) if r.purpose == "warm"]
        assert len(rows) == 1
        tokens = 0.1 * reply.usage.cache_write + reply.usage.input
        expected = -Decimal(repr(round(tokens, 3))) * Decimal(3) / 1_000_000
        assert rows[0].expected_saving_usd == pytest.approx(expected, abs=Decimal("1e-9"))

    def test_a_rekeyed_turn_tells_the_registry_nothing_of_the_plain_prefix(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """The first turn on a cold prefix re-keys the system (citations): it writes its own
        entry, not the plain one, so the next plain session must predict a write."""
        document = {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": "A note. " * 40},
            "citations": {"enabled": True},
        }
        first = make_session().send([document, {"type": "text", "text": "What does it say?"}])
        assert first.usage.cache_write > 0
        assert first.warm_role is None  # no part in the plain prefix's single flight
        emulator.advance(5)
        plain = make_session().send("A plain question")
        assert plain.usage.cache_read == 0
        assert plain.cache.predicted.cache_read == 0
        assert plain.cache.reason != "evicted_or_unknown"
        assert plain.cache.exact

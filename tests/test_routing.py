"""Cache-aware routing: the decision from its arithmetic, the Router's checks, and routed
sessions against the emulator through the real SDK."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import anthropic
import attrs
import pytest

import convo
from convo.emulator import RunningEmulator
from convo.ledger import Ledger
from convo.limits import RateLimiter
from convo.routing import Option, Prices, RouteFacts, RouteState, decide, default_signal
from convo.routing.decide import horizon, p_return, run_ends
from convo.warm import WarmRegistry

HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-6"
TWO = convo.Router({"small": HAIKU, "large": SONNET})
OPUS_ROUTER = convo.Router({"small": HAIKU, "large": OPUS})
NAMES = TWO.names
PER_MILLION = 1e-6
HAIKU_P = Prices(input=1.0 * PER_MILLION, read=0.1 * PER_MILLION, write=1.25e-6, output=5e-6)
SONNET_P = Prices(input=3e-6, read=0.3 * PER_MILLION, write=3.75e-6, output=15e-6)


def options(*, haiku_warm: int = 10_000, sonnet_ttl_left: float = 290.0) -> list[Option]:
    """The worked example of docs/routing.md: a 19,400-token conversation warm on Sonnet;
    Haiku holds the 10,000-token shared prefix (kept warm by the fleet) or less."""
    return [
        Option(HAIKU, 0, HAIKU_P, warm=haiku_warm, cold=19_400 - haiku_warm, shared=haiku_warm),
        Option(SONNET, 1, SONNET_P, warm=19_400, cold=0, shared=10_000, ttl_left_s=sonnet_ttl_left),
    ]


def route_facts(**fields: Any) -> RouteFacts:
    """An easy turn of a conversation on Sonnet (300 output tokens, 400 added a turn, a
    minute apart), with *fields* changed."""
    defaults: dict[str, Any] = {
        "required": 0,
        "current": SONNET,
        "new": 0,
        "output": 300,
        "growth": 400,
        "remaining": 30,
        "p_above": [0.5, 0.0],
        "gap_s": 60.0,
    }
    return RouteFacts(**{**defaults, **fields})


def facts(
    *, p: float, remaining: float, current: str | None = SONNET, gap: float = 40.0
) -> RouteFacts:
    return route_facts(
        current=current, new=150, output=250, remaining=remaining, p_above=[p, 0.0], gap_s=gap
    )


def cold_on_both() -> list[Option]:
    """A 25,100-token conversation neither Haiku nor Sonnet holds."""
    return [
        Option(HAIKU, 0, HAIKU_P, warm=0, cold=25_100),
        Option(SONNET, 1, SONNET_P, warm=0, cold=25_100),
    ]


def hard_next(*, current: str | None) -> RouteFacts:
    """An easy turn of a long conversation whose next turn is very likely hard."""
    return route_facts(current=current, p_above=[0.9, 0.0])


def standard_turn_on_opus(
    *, remaining: float, p_above: list[float], p_same: float | None = None
) -> RouteFacts:
    """A turn needing the middle of three tiers, of a conversation on Opus."""
    return route_facts(
        required=1, current=OPUS, growth=500, remaining=remaining, p_above=p_above, p_same=p_same
    )


class TestArithmetic:
    """A gap in, a decision and its expected costs out (the docs' worked example)."""

    def test_the_worked_example_stays_warm_on_the_bigger_model(self) -> None:
        """Large, small, large, now small: the window is short, the move's write does not
        pay."""
        p = RouteState(needed=[1, 0, 1]).p_above(2, now=0, prior=[0.4, 0.5])
        assert p == pytest.approx([0.6, 0.0])
        decision = decide(options(), facts(p=p[0], remaining=3), NAMES)
        assert decision.model == SONNET
        by_model = {c.model: c for c in decision.candidates}
        assert by_model[SONNET].total == pytest.approx(0.01707, abs=5e-6)
        assert by_model[HAIKU].total == pytest.approx(0.01855, abs=5e-6)
        assert by_model[HAIKU].now == pytest.approx(0.0141875)
        # The way back: Sonnet outlives every run of 0, 1 or 2 easy turns (at most 120 s
        # away, 290 s left), so it writes what each run added, weighted by its chance.
        back = (0.6 * 400 + 0.4 * 0.6 * 800 + 0.4**2 * 0.6 * 1_200) * 3.75e-6
        assert by_model[HAIKU].back == pytest.approx(back)
        assert decision.reason.startswith(
            f"stayed on {SONNET}: moving to {HAIKU} would write 9,550"
        )

    def test_the_worked_example_moves_when_easy_turns_run_long(self) -> None:
        """Easy turns followed by easy ones: a long window of cheap turns pays for Haiku's
        write."""
        p = RouteState(needed=[0, 0, 0, 1, 0]).p_above(2, now=0, prior=[0.4, 0.5])
        assert p == pytest.approx([0.3, 0.0])
        decision = decide(options(), facts(p=p[0], remaining=5), NAMES)
        assert decision.model == HAIKU
        by_model = {c.model: c for c in decision.candidates}
        assert by_model[HAIKU].total == pytest.approx(0.02428, abs=5e-6)
        assert by_model[SONNET].total == pytest.approx(0.03171, abs=5e-6)
        assert decision.reason.startswith(f"moved to {HAIKU}: writes 9,550 tokens")

    def test_a_warm_cheap_model_is_chosen_where_a_cold_one_is_not(self) -> None:
        """Same conversation, same odds: only what Haiku holds differs."""
        f = facts(p=0.5, remaining=2)
        cold = decide(options(haiku_warm=0), f, NAMES)
        warm = decide(options(haiku_warm=19_400), f, NAMES)
        assert (cold.model, warm.model) == (SONNET, HAIKU)

    def test_an_expired_bigger_model_makes_the_way_back_dearer(self) -> None:
        """When Sonnet's entry would lapse before the way back, returning rewrites it all."""
        f = facts(p=0.5, remaining=2)
        live = {c.model: c for c in decide(options(), f, NAMES).candidates}
        lapsing = {c.model: c for c in decide(options(sonnet_ttl_left=20.0), f, NAMES).candidates}
        assert lapsing[HAIKU].back > 10 * live[HAIKU].back
        assert lapsing[SONNET].back == live[SONNET].back == 0.0

    def test_the_way_back_is_summed_over_the_runs_length(self) -> None:
        """Sonnet's entry has 100 s left and turns come every 40 s: a run of 0 or 1 more
        easy turns returns while it lives (the run's additions are written), a longer one
        finds it lapsed (all but the fleet's prefix is written). Priced at the mean run
        (0.94 turns, back in 78 s) every return would look cheap."""
        f = facts(p=0.5, remaining=4)
        haiku = {c.model: c for c in decide(options(sonnet_ttl_left=100.0), f, NAMES).candidates}
        ends = run_ends(0.5, 4)
        assert [k for k, _ in ends] == [0, 1, 2, 3]
        assert [w for _, w in ends] == pytest.approx([0.5, 0.25, 0.125, 0.0625])
        assert sum(w for _, w in ends) == pytest.approx(p_return(0.5, 4))
        added = [400 + 400 * k for k, _ in ends]
        missing = [added[0], added[1], 19_400 + added[2] - 10_000, 19_400 + added[3] - 10_000]
        expected = sum(w * m for (_, w), m in zip(ends, missing, strict=True)) * 3.75e-6
        assert haiku[HAIKU].back == pytest.approx(expected)
        assert (horizon(0.5, 4) + 1) * 40.0 < 100.0  # the mean run would have found it warm

    def test_a_fractional_remaining_count_weighs_its_last_turn_in_part(self) -> None:
        """The run-length probabilities add up to the chance of a return within the
        remaining turns, a fractional last one included."""
        ends = run_ends(0.5, 2.5)
        assert [k for k, _ in ends] == [0, 1, 2]
        assert ends[2][1] == pytest.approx(0.25 - 0.5**2.5)
        assert sum(w for _, w in ends) == pytest.approx(p_return(0.5, 2.5))
        assert run_ends(0.0, 5) == run_ends(0.5, 0) == []

    def test_what_a_model_holds_later_is_its_deepest_entry_still_alive(self) -> None:
        """A 1h entry of the 10,000-token prefix outlives the 5m entry of the history
        behind it: 300 s on, the model holds the prefix alone, whatever the longest TTL."""
        sonnet = Option(
            SONNET,
            1,
            SONNET_P,
            warm=19_400,
            cold=0,
            holds=((3_500.0, 10_000), (250.0, 19_400)),
            ttl_left_s=250.0,
        )
        assert [sonnet.held_after(t) for t in (0.0, 249.0, 300.0, 3_600.0)] == [
            19_400,
            19_400,
            10_000,
            0,
        ]
        assert attrs.evolve(sonnet, shared=10_000).held_after(3_600.0) == 10_000
        # Without holds: one entry of what is warm now, with ttl_left_s left.
        plain = attrs.evolve(sonnet, holds=())
        assert (plain.held_after(249.0), plain.held_after(251.0)) == (19_400, 0)

    def test_a_cold_static_prefix_is_priced_at_its_own_ttl(self) -> None:
        """The prefix may be written at 1h while the history is written at 5m: its cold
        part is priced at the prefix's rate, the rest at the history's."""
        option = Option(
            HAIKU, 0, HAIKU_P, warm=0, cold=12_000, fleet_cold=10_000, prefix_write=2e-6
        )
        assert option.write_cost(12_000) == pytest.approx(10_000 * 2e-6 + 2_000 * 1.25e-6)
        shared = attrs.evolve(option, fleet_uses=3.0)
        assert shared.write_cost(12_000) == pytest.approx(10_000 * 2e-6 / 4 + 2_000 * 1.25e-6)

    def test_more_remaining_turns_favour_the_cheaper_model(self) -> None:
        """With few turns left the write is not repaid; with many it is."""
        decisions = [decide(options(), facts(p=0.5, remaining=r), NAMES).model for r in (1, 8)]
        assert decisions == [SONNET, HAIKU]

    def test_never_below_the_tier_the_turn_needs(self) -> None:
        """A turn that needs the large tier goes there, however warm the small model is."""
        f = RouteFacts(
            required=1,
            current=HAIKU,
            new=10,
            output=10,
            growth=20,
            remaining=50,
            p_above=[0.0, 0.0],
            gap_s=1.0,
        )
        decision = decide(options(haiku_warm=19_400), f, NAMES)
        assert decision.model == SONNET
        assert [c.model for c in decision.candidates] == [SONNET]

    def test_the_chance_of_a_harder_turn_follows_what_followed_what(self) -> None:
        """Clustered hard turns: after an easy turn the next is rarely hard, though a third
        of the turns were; the fleet's rate is the prior with nothing seen."""
        clustered = RouteState(needed=[0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0])
        assert clustered.p_above(2, now=0, prior=[0.5, 0.5])[0] == pytest.approx((2 + 1) / (7 + 2))
        assert RouteState().p_above(2, now=0, prior=[0.2, 0.5]) == pytest.approx([0.2, 0.0])
        router = convo.Router({"small": HAIKU, "large": SONNET})
        for before, after in ((0, 0), (0, 1), (0, 0), (1, 0)):
            router.observe_transition(before, after)
        assert router.fleet_p_above()[0] == pytest.approx((1 + 1) / (3 + 2))

    def test_an_easy_turn_never_moves_up_to_a_model_the_conversation_is_not_on(self) -> None:
        """On Haiku, an easy turn stays on Haiku even when the way back to Sonnet looks
        dear: a move up would be undone by the next easy turn."""
        on_haiku = [
            Option(HAIKU, 0, HAIKU_P, warm=25_000, cold=100),
            Option(SONNET, 1, SONNET_P, warm=0, cold=25_100),
        ]
        decision = decide(on_haiku, hard_next(current=HAIKU), NAMES)
        assert decision.model == HAIKU
        assert [c.model for c in decision.candidates] == [HAIKU]

    def test_a_bigger_model_may_go_first_when_the_turns_own_tier_is_cold(self) -> None:
        """Nothing of the conversation on Haiku either: both would write it anew, so Sonnet
        is a candidate for the easy turn (a hard one is likely next)."""
        decision = decide(cold_on_both(), hard_next(current=HAIKU), NAMES)
        assert {c.model for c in decision.candidates} == {HAIKU, SONNET}
        assert decision.model == SONNET

    def test_a_first_turn_is_costed_like_any_cold_one(self) -> None:
        """Before any turn no model holds the conversation, so both would write it anew:
        an easy first turn goes to Sonnet when a hard turn is likely next (Haiku's write
        and the way back's cost more than the turn on Sonnet), to Haiku when not."""
        likely = decide(cold_on_both(), hard_next(current=None), NAMES)
        assert {c.model for c in likely.candidates} == {HAIKU, SONNET}
        assert likely.model == SONNET
        unlikely = attrs.evolve(hard_next(current=None), p_above=[0.1, 0.0], remaining=1)
        assert decide(cold_on_both(), unlikely, NAMES).model == HAIKU

    def test_a_first_turn_expects_as_many_turns_as_the_fleets_conversations(self) -> None:
        """A conversation with no turn yet says nothing of its length: the fleet's
        conversations' turns so far stand in (n turns so far: about n more after that)."""
        router = convo.Router({"small": HAIKU, "large": SONNET})
        assert router.fleet_turns() is None
        router.observe_length(1, 3)
        router.observe_length(2, 1)
        router.observe_length(1, 9)
        assert router.fleet_turns() == pytest.approx((9 + 1) / 2)

    def test_with_nothing_seen_every_tier_is_as_likely_next(self) -> None:
        """The fleet's prior for a harder next turn: ½ above the cheaper of two tiers; ⅔
        above the cheapest of three and ⅓ above the middle one; the evidence moves it."""
        assert TWO.fleet_p_above() == pytest.approx([0.5, 0.0])
        three = convo.Router({"small": HAIKU, "standard": SONNET, "large": OPUS})
        assert three.fleet_p_above() == pytest.approx([2 / 3, 1 / 3, 0.0])
        three.observe_transition(1, 1)
        assert three.fleet_p_above()[1] == pytest.approx((0 + 2 / 3) / (1 + 2))

    def test_a_cold_static_prefix_costs_a_turn_its_share_of_the_fleet(self) -> None:
        """A static prefix written now serves every conversation's turns on that model
        while it lives: with 9 other turns expected, this turn pays a tenth of its write,
        and the rest of the cold context in full."""
        alone = Option(SONNET, 1, SONNET_P, warm=0, cold=12_000, fleet_cold=10_000)
        busy = attrs.evolve(alone, fleet_uses=9.0)
        assert alone.write_cost(12_000) == pytest.approx(12_000 * 3.75e-6)
        assert busy.write_cost(12_000) == pytest.approx((2_000 + 10_000 / 10) * 3.75e-6)
        # Fewer tokens than the prefix's cold part: all of them are the fleet's.
        assert busy.write_cost(5_000) == pytest.approx(5_000 / 10 * 3.75e-6)

    def test_a_busy_fleet_makes_a_move_to_a_model_with_a_cold_prefix_pay(self) -> None:
        """On Sonnet, a standard turn: Haiku is below it, Opus holds the conversation,
        Sonnet holds nothing (its 10,000-token prefix is cold too). Alone, writing the
        prefix on Sonnet does not pay; when 20 other turns will read it, it does."""
        opus_p = Prices(input=5e-6, read=0.5e-6, write=6.25e-6, output=25e-6)
        sonnet = Option(SONNET, 1, SONNET_P, warm=0, cold=14_000, fleet_cold=10_000)
        three = [
            Option(HAIKU, 0, HAIKU_P, warm=10_000, cold=4_000, shared=10_000),
            sonnet,
            Option(OPUS, 2, opus_p, warm=14_000, cold=0, shared=10_000, ttl_left_s=3_000.0),
        ]
        f = standard_turn_on_opus(remaining=6, p_above=[0.3, 0.2, 0.0], p_same=0.6)
        names = ("small", "standard", "large")
        assert decide(three, f, names).model == OPUS
        three[1] = attrs.evolve(sonnet, fleet_uses=20.0)
        assert decide(three, f, names).model == SONNET

    def test_a_middle_tiers_run_ends_at_a_lower_turn_too(self) -> None:
        """The window of a standard turn is the run of standard turns: an easy turn ends it
        (it goes to Haiku whatever this turn does), so with p_same the window is shorter
        than counting every turn up to the next hard one."""
        base = standard_turn_on_opus(remaining=10, p_above=[0.3, 0.1, 0.0])
        assert base.p_leave == pytest.approx(0.1)
        run = attrs.evolve(base, p_same=0.5)
        assert run.p_leave == pytest.approx(0.5)
        assert horizon(run.p_leave, 10) < horizon(base.p_leave, 10)
        # The conversation's own runs, two pseudo-turns at the fleet's rate.
        state = RouteState(needed=[1, 1, 0, 1, 2, 1, 1])
        assert state.p_same(1, now=0, prior=0.5) == pytest.approx((2 + 0 + 1) / (5 + 2))

    def test_the_fleet_learns_shares_runs_and_its_turn_rate(self) -> None:
        router = convo.Router({"small": HAIKU, "standard": SONNET, "large": OPUS})
        assert router.fleet_share() == pytest.approx([1 / 3] * 3)
        assert router.fleet_rate() == 0.0
        for before, after in ((0, 1), (1, 1), (1, 0), (0, 0)):
            router.observe_transition(before, after)
        assert router.fleet_share() == pytest.approx([(2 + 1) / 7, (2 + 1) / 7, 1 / 7])
        assert router.fleet_p_same()[1] == pytest.approx((1 + 1) / (2 + 2))
        for at in (0.0, 10.0, 20.0, 40.0):
            router.observe_turn_at(at)
        assert router.fleet_rate() == pytest.approx(3 / 40)

    def test_the_window_is_a_truncated_geometric_sum(self) -> None:
        assert horizon(0.5, 3) == pytest.approx(0.5 + 0.25 + 0.125)
        assert horizon(0.0, 4) == 4
        assert horizon(1.0, 4) == 0.0
        assert p_return(0.5, 2) == pytest.approx(0.75)
        assert p_return(0.0, 9) == 0.0

    def test_ties_go_to_the_current_model(self) -> None:
        same = Prices(input=1e-6, read=1e-7, write=1.25e-6, output=5e-6)
        both = [Option("a", 0, same, warm=100, cold=0), Option("b", 1, same, warm=100, cold=0)]
        f = RouteFacts(
            required=0,
            current="b",
            new=1,
            output=1,
            growth=1,
            remaining=1,
            p_above=[0.0, 0.0],
            gap_s=1.0,
        )
        assert decide(both, f, ("x", "y")).model == "b"


class TestRouter:
    """What a Router accepts, and its signal."""

    def test_unknown_tier_names_are_refused(self) -> None:
        with pytest.raises(ValueError, match="unknown tier 'huge'"):
            TWO.rank("huge")

    def test_tiers_need_distinct_models_with_prices(self) -> None:
        with pytest.raises(ValueError, match="its own model"):
            convo.Router({"a": HAIKU, "b": HAIKU})
        with pytest.raises(ValueError, match="at least one tier"):
            convo.Router({})
        with pytest.raises(convo.models.UnknownModel):
            convo.Router({"a": "claude-nonexistent-9"})
        with pytest.raises(ValueError, match="expected_turns"):
            convo.Router({"a": HAIKU}, expected_turns=0)

    def test_the_default_signal_scores_length_code_and_reasoning_words(self) -> None:
        three = ("small", "standard", "large")
        assert default_signal("thanks!", [], three) == "small"
        assert default_signal("Why is the sky blue?", [], three) == "standard"
        hard = "Please design and debug this:\n```python\n" + "x = 1\n" * 300 + "```"
        assert default_signal(hard, [], three) == "large"
        blocks = [{"type": "text", "text": "prove it"}]
        assert default_signal(blocks, [], ("s", "l")) == "s"  # one point of three: rounds down

    def test_a_session_needs_its_prefix_model_among_the_tiers(
        self, client: anthropic.Anthropic
    ) -> None:
        prefix = convo.Prefix(model=OPUS, system=["x " * 5000])
        with pytest.raises(ValueError, match="not one of the router's tiers"):
            convo.Session(prefix, client=client, router=TWO, ledger=False)

    def test_tier_without_a_router_is_refused_before_sending(
        self, client: anthropic.Anthropic
    ) -> None:
        session = convo.Session(
            convo.Prefix(model=SONNET, system=["x " * 5000]), client=client, ledger=False
        )
        with pytest.raises(ValueError, match="needs a session built with router"):
            session.send("hi", tier="small")
        assert session.history == []


SYSTEM = "The house rules, read carefully and followed exactly. " * 1_200  # ~10k tokens


@pytest.fixture
def routed(
    emulator: RunningEmulator, client: anthropic.Anthropic
) -> Callable[..., tuple[convo.Session, Ledger]]:
    def make(router: convo.Router = TWO, **options: Any) -> tuple[convo.Session, Ledger]:
        ledger = Ledger.open(":memory:")
        clock = emulator.emulator.clock.now
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prefix = convo.Prefix(model=router.models[-1], system=[SYSTEM])
        session = convo.Session(
            prefix,
            client=client,
            router=router,
            ledger=ledger,
            clock=clock,
            sleep=emulator.advance,
            registry=WarmRegistry(clock=clock),
            max_tokens=200,
            **options,
        )
        return session, ledger

    return make


class TestRoutedSession:
    """Routed turns against the emulator: the right model, exact predictions, the record."""

    def test_turns_never_go_below_their_tier_and_moves_are_predicted_exactly(
        self, routed: Callable[..., tuple[convo.Session, Ledger]], emulator: RunningEmulator
    ) -> None:
        session, ledger = routed(OPUS_ROUTER)
        tiers = ["large", "small", "small", "large", *["small"] * 10]
        replies = []
        for i, tier in enumerate(tiers):
            replies.append(session.send(f"Question {i}. " * 30, tier=tier))
            emulator.advance(30)
        models = [r.route.model for r in replies]
        assert all(m == OPUS for m, t in zip(models, tiers, strict=True) if t == "large")
        assert HAIKU in models  # the run of easy turns moved down
        assert all(r.cache.exact for r in replies), [r.cache for r in replies]
        # The emulator answered each turn on the model convo chose, and billed that model.
        assert [r.message.model for r in replies] == models
        ledger.flush()
        rows = ledger.rows()
        assert [row.model for row in rows] == models
        assert [row.route for row in rows] == [
            f"{t}>{'small' if m == HAIKU else 'large'}" for t, m in zip(tiers, models, strict=True)
        ]
        assert all(row.route_reason for row in rows)
        assert sum(row.cost_usd for row in rows) == session.stats.cost_usd

    def test_a_warm_conversation_stays_for_a_lone_easy_turn(
        self, routed: Callable[..., tuple[convo.Session, Ledger]], emulator: RunningEmulator
    ) -> None:
        """Hard turns so far: the easy one stays warm where a naive router moves."""
        aware, _ = routed()
        naive, _ = routed(convo.Router(dict(TWO.tiers), cache_aware=False))
        for session in (aware, naive):
            for i in range(3):
                session.send(f"Hard question {i}. " * 30, tier="large")
                emulator.advance(20)
        stay = aware.send("Thanks!", tier="small")
        move = naive.send("Thanks!", tier="small")
        assert stay.route.model == SONNET
        assert stay.reason == "hit"
        assert stay.route.reason.startswith(f"stayed on {SONNET}")
        assert move.route.model == HAIKU
        assert not move.route.cache_aware
        assert move.usage.cache_write > 10_000  # the naive move wrote the conversation again
        assert stay.cost.usd < move.cost.usd

    def test_a_streamed_turn_is_routed_like_a_sent_one(
        self, routed: Callable[..., tuple[convo.Session, Ledger]], emulator: RunningEmulator
    ) -> None:
        session, ledger = routed(OPUS_ROUTER)
        session.send("A hard opening question. " * 30, tier="large")
        emulator.advance(20)
        with session.stream("And a hard follow-up. " * 30, tier="large") as streaming:
            text = "".join(streaming.text_stream)
        reply = streaming.reply
        assert text == reply.text
        assert reply.route is not None
        assert reply.route.model == OPUS
        assert reply.message.model == OPUS
        ledger.flush()
        assert [row.route for row in ledger.rows()] == ["large>large", "large>large"]

    def test_the_signal_decides_without_a_tier(
        self, routed: Callable[..., tuple[convo.Session, Ledger]]
    ) -> None:
        router = convo.Router(dict(TWO.tiers), signal=lambda content, history: "large")
        session, _ = routed(router)
        assert session.send("hello").route.required == "large"

    async def test_an_async_session_routes_the_same(
        self, emulator: RunningEmulator, async_client: anthropic.AsyncAnthropic
    ) -> None:
        clock = emulator.emulator.clock.now
        session = convo.AsyncSession(
            convo.Prefix(model=OPUS, system=[SYSTEM]),
            client=async_client,
            router=OPUS_ROUTER,
            ledger=False,
            clock=clock,
            registry=WarmRegistry(clock=clock),
            limiter=RateLimiter(),
            max_tokens=100,
        )
        models = []
        for tier in ("large", "small", "small", "small", "small", "large"):
            reply = await session.send(f"A {tier} one. " * 20, tier=tier)
            assert reply.message.model == reply.route.model
            models.append(reply.route.model)
        assert models[0] == models[-1] == OPUS
        assert HAIKU in models

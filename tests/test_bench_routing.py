"""`convo bench`'s routing workload: drawn from its seed, and four strategies that do what
their names say (one model, a naive router, convo's router), judged by cost per success."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import pytest
from click.testing import CliRunner

from convo import models, tokens
from convo.bench import Bench, RunResult, build
from convo.bench.routing import ROUTING_STRATEGIES
from convo.bench.workloads import ROUTING_SHAPES, ROUTING_TIERS, THREE_TIERS
from convo.cli import main
from convo.pricing import price

RANK = {tier: i for i, (tier, _) in enumerate(ROUTING_TIERS)}
SMALL, LARGE = (model for _, model in ROUTING_TIERS)


@pytest.fixture(scope="module")
def runs() -> Iterator[Mapping[str, RunResult]]:
    """Every routing strategy once on the quick-size routing workload (seed 1)."""
    workload = build("routing", 1, quick=True)
    with Bench() as bench:
        yield {name: bench.run(workload, name, seed=1) for name in ROUTING_STRATEGIES}


def _turns(result: RunResult) -> list[tuple[str, str, str]]:
    """(required tier, answering tier, model) of each turn, in the order sent."""
    return [
        (str(r.required), str(r.tier), str(r.model)) for r in result.records if r.kind == "turn"
    ]


class TestWorkload:
    """The routing workload is drawn from its seed: long conversations, clustered hard turns."""

    def test_same_seed_same_workload(self) -> None:
        """Two draws from one seed are equal, turn tiers included; another seed differs."""
        seven, again, eight = (build("routing", seed, users=10) for seed in (7, 7, 8))
        assert seven == again
        assert seven != eight
        tiers = [t.tier for c in seven.conversations for t in c.turns]
        assert tiers != [t.tier for c in eight.conversations for t in c.turns]

    def test_shape(self) -> None:
        """40 users of 20–40 turns on a 12k-token prefix above every tier's minimum; every
        turn names a tier; users start at staggered times."""
        workload = build("routing", 1)
        assert len(workload.conversations) == 40
        assert all(20 <= len(c.turns) <= 40 for c in workload.conversations)
        assert tokens.estimate(workload.system[0]) == 12_000
        for _, model in workload.tiers:
            assert tokens.estimate(workload.system[0]) > models.lookup(model).min_cacheable_tokens
        assert {t.tier for c in workload.conversations for t in c.turns} == {"small", "large"}
        starts = sorted(c.turns[0].at for c in workload.conversations)
        assert len(set(starts)) == 40
        assert starts[-1] - starts[0] > 1_000

    def test_hard_turns_cluster(self) -> None:
        """After a hard turn the next is far more often hard than after an easy one (the
        Markov chain), and hard turns are a minority overall."""
        pairs = [
            (a.tier, b.tier)
            for seed in (1, 2, 3)
            for c in build("routing", seed).conversations
            for a, b in pairwise(c.turns)
        ]
        after_hard = [b == "large" for a, b in pairs if a == "large"]
        after_easy = [b == "large" for a, b in pairs if a == "small"]
        p_hard_hard = sum(after_hard) / len(after_hard)
        p_easy_hard = sum(after_easy) / len(after_easy)
        assert p_hard_hard > 0.5 > 0.25 > p_easy_hard
        share = sum(1 for _, b in pairs if b == "large") / len(pairs)
        assert 0.2 < share < 0.4

    def test_three_tiers_keep_one_tier_per_hard_run(self) -> None:
        """With three tiers an easy turn needs the small one, and a run of hard turns needs
        the standard or the large tier throughout; both occur, and the conversations start
        on the top model."""
        workload = build("routing", 1, sizes={"tiers": THREE_TIERS})
        assert workload.tiers == THREE_TIERS
        assert workload.model == THREE_TIERS[-1][1]
        needed = [[t.tier for t in c.turns] for c in workload.conversations]
        assert {tier for turns in needed for tier in turns} == {"small", "standard", "large"}
        for turns in needed:
            for a, b in pairwise(turns):
                # A hard run never switches between standard and large without an easy turn.
                assert {a, b} != {"standard", "large"}

    def test_the_two_tier_draw_is_unchanged_by_the_tiers_argument(self) -> None:
        """Passing the two tiers explicitly draws the same workload as the default (the
        third tier's extra draws happen only when there is a middle tier)."""
        assert build("routing", 2, sizes={"tiers": ROUTING_TIERS}) == build("routing", 2)

    @pytest.mark.parametrize("shape", sorted(ROUTING_SHAPES))
    def test_the_named_shapes_build_as_documented(self, shape: str) -> None:
        """Each shape docs/routing.md measures is a set of size arguments of the same
        generator; the document shapes carry a 20,000-token document per conversation."""
        workload = build("routing", 1, sizes={**ROUTING_SHAPES[shape], "users": 3})
        assert len(workload.conversations) == 3
        if shape.startswith("document"):
            assert all(tokens.estimate(c.suffix) > 20_000 for c in workload.conversations)
        assert workload.tiers[-1][1] == (
            "claude-sonnet-4-6" if shape == "document-sonnet" else "claude-opus-4-6"
        )

    def test_fewer_than_two_tiers_is_refused(self) -> None:
        with pytest.raises(ValueError, match="at least two tiers"):
            build("routing", 1, sizes={"tiers": ROUTING_TIERS[:1]})


class TestStrategies:
    """Each strategy does what its name says, and the accounting adds up."""

    def test_always_small_fails_exactly_the_hard_turns(self, runs: Mapping[str, RunResult]) -> None:
        """always-small answers every turn on the small model; every hard turn fails."""
        result = runs["always-small"]
        turns = _turns(result)
        assert {model for _, _, model in turns} == {SMALL}
        hard = sum(1 for required, _, _ in turns if required == "large")
        metrics = result.metrics()
        assert hard > 0
        assert metrics["successful_tasks"] == len(turns) - hard
        assert metrics["success_rate"] < 1.0

    def test_always_large_answers_everything_on_the_large_model(
        self, runs: Mapping[str, RunResult]
    ) -> None:
        """always-large: every turn on the large model, all succeed, no moves."""
        metrics = runs["always-large"].metrics()
        assert {model for _, _, model in _turns(runs["always-large"])} == {LARGE}
        assert (metrics["success_rate"], metrics["moves"]) == (1.0, 0)

    def test_naive_router_answers_each_turn_on_its_tier(
        self, runs: Mapping[str, RunResult]
    ) -> None:
        """naive-router: each turn on its own tier's model, so it moves at every change of
        tier inside a conversation."""
        result = runs["naive-router"]
        assert all(required == tier for required, tier, _ in _turns(result))
        workload = build("routing", 1, quick=True)
        changes = sum(
            1 for c in workload.conversations for a, b in pairwise(c.turns) if a.tier != b.tier
        )
        assert result.metrics()["moves"] == changes

    def test_convo_router_never_answers_below_the_tier(self, runs: Mapping[str, RunResult]) -> None:
        """convo-router: never below the required tier, so the same success rate as
        always-large."""
        turns = _turns(runs["convo-router"])
        assert all(RANK[tier] >= RANK[required] for required, tier, _ in turns)
        assert runs["convo-router"].metrics()["success_rate"] == 1.0

    @pytest.mark.parametrize("name", ROUTING_STRATEGIES)
    def test_each_model_priced_at_its_own_rates(
        self, runs: Mapping[str, RunResult], name: str
    ) -> None:
        """The run's cost is each request's usage at its model's prices, the requests add
        up to what the emulator billed, and cost per successful turn is cost ÷ successes."""
        result = runs[name]
        assert not result.errors, result.errors
        expected = sum(
            (price(r.usage, str(r.model)).usd or Decimal(0) for r in result.records), Decimal(0)
        )
        assert result.cost_usd == expected
        metrics = result.metrics()
        assert metrics["cost_per_success_usd"] == pytest.approx(
            float(result.cost_usd) / metrics["successful_tasks"]
        )
        assert metrics["ideal_usd"] is None
        assert metrics["cost_over_ideal"] is None

    @pytest.mark.parametrize("name", ROUTING_STRATEGIES)
    def test_the_ledger_agrees(self, runs: Mapping[str, RunResult], name: str) -> None:
        """Each strategy's ledger, with every conversation marked, gives the bench's cost
        and its cost per successful conversation."""
        metrics = runs[name].metrics()
        ledger = metrics["ledger"]
        assert ledger["ledger_cost_usd"] == pytest.approx(metrics["cost_usd"], abs=1e-9)
        assert ledger["ledger_conversations_ok"] == metrics["conversations_ok"]
        if metrics["conversations_ok"]:
            assert ledger["ledger_cost_per_ok_conversation_usd"] == pytest.approx(
                metrics["cost_per_ok_conversation_usd"]
            )

    def test_three_tiers_every_turn_at_or_above_its_tier(self) -> None:
        """On three tiers the routers answer every turn at its tier or above (every tier's
        model used), and always-small fails exactly the turns that need more."""
        workload = build("routing", 1, quick=True, sizes={"tiers": THREE_TIERS})
        rank = {tier: i for i, (tier, _) in enumerate(THREE_TIERS)}
        with Bench() as bench:
            results = {
                name: bench.run(workload, name, seed=1)
                for name in ("always-small", "naive-router", "convo-router")
            }
        for name in ("naive-router", "convo-router"):
            turns = _turns(results[name])
            assert all(rank[answered] >= rank[required] for required, answered, _ in turns)
            assert results[name].metrics()["success_rate"] == 1.0
        naive = _turns(results["naive-router"])
        assert {model for _, _, model in naive} == {model for _, model in THREE_TIERS}
        small = _turns(results["always-small"])
        harder = sum(1 for required, _, _ in small if required != "small")
        assert harder > 0
        assert results["always-small"].metrics()["successful_tasks"] == len(small) - harder

    def test_strategies_fit_their_workloads(self) -> None:
        """A router on a caching workload, or a caching strategy on routing, is refused."""
        with Bench() as bench:
            with pytest.raises(ValueError, match="routing workload takes"):
                bench.run(build("chatbot", 1, quick=True), "convo-router")
            with pytest.raises(ValueError, match="routing workload takes"):
                bench.run(build("routing", 1, quick=True), "convo")


class TestCommand:
    """`convo bench --workload routing` shows all four strategies, fast."""

    def test_quick_run(self, tmp_path: Path) -> None:
        """A --quick routing run takes under 10 s and writes the routing table (no ideal:
        n/a) with success and cost per successful turn for each strategy."""
        out = tmp_path / "out"
        started = time.perf_counter()
        result = CliRunner().invoke(
            main, ["bench", "--workload", "routing", "--quick", "--no-plots", "--out", str(out)]
        )
        took = time.perf_counter() - started
        assert result.exit_code == 0, result.output
        assert took < 10, f"{took:.1f} s"
        for name in ROUTING_STRATEGIES:
            assert name in result.output
        assert "$ / ok turn" in result.output
        doc = json.loads((out / "results.json").read_text())
        assert [r["strategy"] for r in doc["runs"]] == list(ROUTING_STRATEGIES)
        assert all(r["cost_per_success_usd"] > 0 for r in doc["runs"])
        table = (out / "results.md").read_text()
        assert "ideal n/a" in table
        assert "| convo-router | " in table

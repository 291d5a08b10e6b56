"""`convo bench`: workloads, the driver's accounting, the ideal as a floor, and the command."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convo import tokens
from convo.bench import STRATEGIES, Bench, StrategyUnavailable, Workload, build
from convo.bench.routing import ROUTING_STRATEGIES
from convo.bench.strategies import make
from convo.bench.workloads import words
from convo.cli import main


@pytest.fixture(scope="module")
def bench() -> Iterator[Bench]:
    """One emulator on a virtual clock for the module's runs (each run resets it)."""
    with Bench() as running:
        yield running


def tiny(name: str, seed: int, **sizes: object) -> Workload:
    """A workload small enough to run every strategy on in a second."""
    small: dict[str, dict[str, object]] = {
        "chatbot": {"users": 2, "system_tokens": 1_200, "turns": (1, 3)},
        "idle-gaps": {"users": 2, "system_tokens": 1_200, "turns": (2, 3)},
        "worker-pool": {"tasks": 6, "workers": 3, "prefix_tokens": 1_200, "bursts": 2},
        "agent": {"agents": 1, "tools": 4, "steps": (2, 4), "blocks": (2, 25)},
        "stateless": {"users": 2, "system_tokens": 1_200, "turns": (1, 3)},
    }
    return build(name, seed, sizes={**small[name], **sizes})


class TestWorkloads:
    """Workloads are drawn from their seed, with exact sizes."""

    def test_same_seed_same_workload(self) -> None:
        """Two draws from one seed are equal; another seed differs."""
        assert build("chatbot", 3, quick=True) == build("chatbot", 3, quick=True)
        assert build("chatbot", 3, quick=True) != build("chatbot", 4, quick=True)

    def test_words_are_one_token_each(self) -> None:
        """Generated text of n words is n tokens, so sizes are exact."""
        import random

        assert tokens.estimate(words(random.Random(0), 777)) == 777

    def test_chatbot_shape(self) -> None:
        """Half the users start together at 0; some think times pass the 5m TTL."""
        workload = build("chatbot", 1)
        starts = [c.turns[0].at for c in workload.conversations]
        assert sum(1 for s in starts if s == 0.0) == 25
        gaps = [b.at - a.at for c in workload.conversations for a, b in pairwise(c.turns)]
        assert any(g > 300 for g in gaps)
        assert any(g < 300 for g in gaps)
        assert tokens.estimate(workload.system[0]) == 10_000

    def test_worker_pool_respects_the_pool(self) -> None:
        """No more tasks run at once than there are workers."""
        workload = build("worker-pool", 1, sizes={"tasks": 100, "workers": 8})
        starts = sorted(c.turns[0].at for c in workload.conversations)
        service = workload.params["service_s"]
        assert max(sum(1 for s in starts if t <= s < t + service) for t in starts) <= 8

    def test_users_overrides_the_fleet(self) -> None:
        """--users sets users, tasks or agents."""
        assert len(build("worker-pool", 1, users=7, quick=True).conversations) == 7
        assert len(build("agent", 1, users=3, quick=True).conversations) == 3

    def test_unknown_workload(self) -> None:
        """An unknown name says which exist."""
        with pytest.raises(ValueError, match="chatbot"):
            build("chatbit", 1)


class TestAccounting:
    """The request log the ideal prices is exactly what was sent."""

    @pytest.mark.parametrize("strategy", ["none", "docs-layout", "convo"])
    @pytest.mark.parametrize("name", ["chatbot", "agent", "stateless"])
    def test_segments_add_up_to_the_billed_input(
        self, bench: Bench, name: str, strategy: str
    ) -> None:
        """The emulator's total input equals the sum of every turn's segments."""
        result = bench.run(tiny(name, 5), strategy)
        assert not result.errors
        sent = sum(n for turn in result.turns for _, n in turn.segments)
        assert result.billed.total_input == sent
        assert result.billed.output == sum(t.output for t in result.turns)

    def test_a_cold_burst_without_single_flight_writes_per_request(self, bench: Bench) -> None:
        """Three workers on a cold prefix at once: three writes with a hand layout, one with
        convo's shared registry (then reads)."""
        workload = build(
            "worker-pool",
            2,
            sizes={"tasks": 3, "workers": 3, "prefix_tokens": 2_000, "bursts": 1},
        )
        bench.hold_s = 0.3  # generous, so a loaded machine cannot turn the race into reads
        try:
            hand = bench.run(workload, "system-only")
            ours = bench.run(workload, "convo")
        finally:
            bench.hold_s = Bench().hold_s
        assert sum(1 for r in hand.records if r.usage.cache_write_5m >= 2_000) == 3
        assert sum(1 for r in ours.records if r.usage.cache_read >= 2_000) == 2


class TestIdealIsAFloor:
    """No strategy ever costs less than the ideal."""

    @settings(
        max_examples=5,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        name=st.sampled_from(["chatbot", "idle-gaps", "worker-pool", "agent", "stateless"]),
        seed=st.integers(0, 10_000),
        long_gaps=st.floats(0.0, 1.0),
    )
    def test_every_strategy_costs_at_least_the_ideal(
        self, bench: Bench, name: str, seed: int, long_gaps: float
    ) -> None:
        """Small random workloads, every strategy: billed cost ≥ the ideal; and a strategy
        that sent only its users' turns costs at least the ideal without refresh reads."""
        sizes = {"long_gap_share": long_gaps} if name in ("chatbot", "stateless") else {}
        workload = tiny(name, seed, **sizes)
        for strategy in STRATEGIES:
            result = bench.run(workload, strategy)
            assert not result.errors, result.errors
            assert result.ideal_usd is not None
            assert result.ideal_no_refresh_usd is not None
            assert result.cost_usd >= result.ideal_usd, (strategy, result.metrics())
            assert result.ideal_no_refresh_usd >= result.ideal_usd
            if all(r.kind == "turn" for r in result.records):
                assert result.cost_usd >= result.ideal_no_refresh_usd, (strategy, result.metrics())


class TestStrategies:
    """Strategies are built by name; the peer's absence is reported, not a crash."""

    def test_unknown_strategy(self) -> None:
        """An unknown name says which exist."""
        with pytest.raises(ValueError, match="docs-layout"):
            make("cache-everything", tiny("chatbot", 1), object(), clock=float, sleep=print)  # type: ignore[arg-type]

    def test_cacheguardian_missing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without the package, the strategy is unavailable and says how to install it."""
        monkeypatch.setitem(sys.modules, "cacheguardian", None)
        with pytest.raises(StrategyUnavailable, match=r"convo\[bench\]"):
            make("cacheguardian", tiny("chatbot", 1), object(), clock=float, sleep=print)  # type: ignore[arg-type]


class TestCommand:
    """`convo bench` writes its results and plots."""

    def test_choices_match_the_package(self) -> None:
        """The command offers exactly the workloads and strategies the package has (the
        command lists them itself so that `convo --help` need not import the bench)."""
        from convo.bench.workloads import names
        from convo.cli.bench import bench as command

        choices = {
            p.name: list(p.type.choices) for p in command.params if hasattr(p.type, "choices")
        }
        assert choices["workloads"] == list(names())
        assert choices["strategies"] == [*STRATEGIES, *ROUTING_STRATEGIES]

    def test_quick_smoke_run(self, tmp_path: Path) -> None:
        """A --quick run of two workloads, three strategies and a two-size sweep writes
        results.json (schema 1), results.md and the plots, and prints the table."""
        out = tmp_path / "out"
        arguments = ["bench", "--quick", "--out", str(out), "--users", "1,2"]
        for name in ("chatbot", "idle-gaps"):
            arguments += ["--workload", name]
        for strategy in ("none", "convo", "cacheguardian"):
            arguments += ["--strategy", strategy]
        result = CliRunner().invoke(main, arguments)
        assert result.exit_code == 0, result.output
        assert "÷ ideal" in result.output
        doc = json.loads((out / "results.json").read_text())
        assert doc["schema_version"] == 1
        assert {r["strategy"] for r in doc["runs"]} == {"none", "convo", "cacheguardian"}
        assert {r["users"] for r in doc["runs"]} == {1, 2}
        run = doc["runs"][0]
        for key in ("tokens", "cost_usd", "ideal_usd", "cost_over_ideal", "token_hit_rate"):
            assert key in run
        assert all(r["cost_over_ideal"] >= 1.0 for r in doc["runs"])
        assert all(r["no_refresh_over_ideal"] >= 1.0 for r in doc["runs"])
        # Each workload's section names the refresh rule and the bound it leaves.
        markdown = (out / "results.md").read_text()
        assert markdown.count("Without refresh reads the bound is $") == 4  # 2 workloads × 2 sizes
        for name in ("results.md", "cost_over_ideal.png", "chatbot_cost.png", "users_sweep.png"):
            assert (out / name).stat().st_size > 0

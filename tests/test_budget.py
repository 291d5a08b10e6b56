"""Budgets: refusal before spending, warnings near a limit, and clear misuse errors."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import threading
import time
import warnings
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convo
from convo.budget import Spend
from convo.ledger import LedgerRow


class TestCheck:
    """Budget.check on an estimate against what was spent."""

    def test_within_the_limit_passes_silently(self) -> None:
        """Spent + estimate under warn_at of every limit: no error, no warning."""
        budget = convo.Budget(max_input_tokens=10_000, max_cost_usd="1")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            budget.check(Spend(1_000, 10, Decimal("0.01")), Spend(2_000, 20, Decimal("0.02")))

    def test_over_the_limit_raises_with_the_figures(self) -> None:
        """The error names the limit, its value, the estimate and what was spent."""
        budget = convo.Budget(max_output_tokens=500)
        with pytest.raises(convo.BudgetExceeded, match="max_output_tokens=500") as caught:
            budget.check(Spend(0, 300, Decimal(0)), Spend(0, 250, Decimal(0)))
        error = caught.value
        assert (error.limit, error.maximum, error.estimate, error.spent, error.scope) == (
            "max_output_tokens",
            500,
            300,
            250,
            "session",
        )

    def test_request_scope_ignores_what_was_spent(self) -> None:
        """A per-request budget looks only at the request itself."""
        budget = convo.Budget(max_input_tokens=1_000, scope="request")
        budget.check(Spend(700, 0, Decimal(0)), Spend(10**9, 0, Decimal(0)))
        with pytest.raises(convo.BudgetExceeded):
            budget.check(Spend(1_001, 0, Decimal(0)), Spend())

    def test_warns_at_the_threshold(self) -> None:
        """Reaching warn_at of a limit emits a BudgetWarning."""
        budget = convo.Budget(max_cost_usd="1.00", warn_at=0.5)
        with pytest.warns(convo.BudgetWarning, match="50%"):
            budget.check(Spend(0, 0, Decimal("0.30")), Spend(0, 0, Decimal("0.25")))

    def test_unpriced_cost_is_refused_not_guessed(self) -> None:
        """A cost limit cannot be checked against an unknown price: refuse."""
        budget = convo.Budget(max_cost_usd="5")
        with pytest.raises(convo.BudgetExceeded, match="no known price"):
            budget.check(Spend(100, 10, None), Spend())

    def test_actual_overshoot_warns(self) -> None:
        """An actual past the limit warns that further requests will be refused."""
        budget = convo.Budget(max_input_tokens=100)
        with pytest.warns(convo.BudgetWarning, match="overshot"):
            budget.check_actual(Spend(120, 0, Decimal(0)), Spend(120, 0, Decimal(0)))


class TestMisuse:
    """Impossible budgets fail at construction with a message saying what to do."""

    @pytest.mark.parametrize(
        ("kwargs", "fragment"),
        [
            ({}, "at least one"),
            ({"max_input_tokens": -1}, "max_input_tokens"),
            ({"max_cost_usd": "-0.5"}, "max_cost_usd"),
            ({"max_cost_usd": 1, "scope": "galaxy"}, "scope"),
            ({"max_cost_usd": 1, "warn_at": 0}, "warn_at"),
            (
                {"max_cost_usd": 1, "since": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)},
                "since",
            ),
        ],
        ids=[
            "empty",
            "negative-tokens",
            "negative-cost",
            "bad-scope",
            "zero-warn",
            "since-needs-ledger",
        ],
    )
    def test_bad_budget(self, kwargs: dict[str, object], fragment: str) -> None:
        """Each impossible budget raises ValueError naming the field."""
        with pytest.raises(ValueError, match=fragment):
            convo.Budget(**kwargs)  # type: ignore[arg-type]

    def test_malformed_money_names_the_form(self) -> None:
        """'$0.50' is a ValueError that shows the expected form, not a decimal signal."""
        with pytest.raises(ValueError, match=r"such as '0\.50'"):
            convo.Budget(max_cost_usd="$0.50")

    @pytest.mark.parametrize(
        "value",
        [float("nan"), float("inf"), float("-inf"), "NaN", "Infinity", Decimal("sNaN"), -1],
        ids=["nan", "inf", "-inf", "nan-text", "inf-text", "snan", "negative"],
    )
    def test_non_finite_or_negative_cost_refused(self, value: object) -> None:
        """NaN, infinities and negatives are a ValueError, not a cap that never binds."""
        with pytest.raises(ValueError, match="max_cost_usd"):
            convo.Budget(max_cost_usd=value)  # type: ignore[arg-type]

    @pytest.mark.parametrize("value", [float("inf"), 1.5, True], ids=["inf", "float", "bool"])
    def test_token_limits_are_whole_numbers(self, value: object) -> None:
        """A token limit must be an int: inf, fractions and booleans are refused."""
        with pytest.raises(ValueError, match="max_output_tokens"):
            convo.Budget(max_output_tokens=value)  # type: ignore[arg-type]

    def test_money_is_exact(self) -> None:
        """A float limit is converted through its decimal text, not its binary value."""
        assert convo.Budget(max_cost_usd=0.1).max_cost_usd == Decimal("0.1")


def _usd(spend: Spend) -> Decimal:
    assert spend.cost_usd is not None
    return spend.cost_usd


@pytest.mark.filterwarnings("ignore::convo.BudgetWarning")
class TestReserve:
    """reserve / settle / release: one Budget object is one shared, atomic account."""

    def test_reserve_counts_until_settled_with_the_actual(self) -> None:
        """A hold counts its estimate; settling replaces it with the actual."""
        budget = convo.Budget(max_cost_usd="1.00")
        hold = budget.reserve(Spend(100, 50, Decimal("0.40")))
        assert (budget.held, budget.settled) == (Spend(100, 50, Decimal("0.40")), Spend())
        budget.settle(hold, Spend(90, 10, Decimal("0.15")))
        assert (budget.held, budget.settled) == (
            Spend(0, 0, Decimal(0)),
            Spend(90, 10, Decimal("0.15")),
        )
        assert not hold.open

    def test_holds_in_flight_refuse_what_would_pass_the_cap(self) -> None:
        """Two open holds of 0.40 leave no room for a third under a 1.00 cap."""
        budget = convo.Budget(max_cost_usd="1.00", warn_at=1.0)
        budget.reserve(Spend(cost_usd=Decimal("0.40")))
        budget.reserve(Spend(cost_usd=Decimal("0.40")))
        with pytest.raises(convo.BudgetExceeded, match="nothing was sent") as caught:
            budget.reserve(Spend(cost_usd=Decimal("0.40")))
        assert (caught.value.spent, caught.value.estimate) == (Decimal("0.80"), Decimal("0.40"))
        assert budget.held == Spend(cost_usd=Decimal("0.80"))

    def test_release_frees_the_room_and_is_idempotent(self) -> None:
        """A released hold counts nothing, and releasing twice is harmless."""
        budget = convo.Budget(max_output_tokens=100, warn_at=1.0)
        hold = budget.reserve(Spend(0, 60, Decimal(0)))
        budget.release(hold)
        budget.release(hold)
        budget.settle(budget.reserve(Spend(0, 60, Decimal(0))), Spend(0, 60, Decimal(0)))
        assert budget.settled.output_tokens == 60

    def test_one_object_is_one_cap_for_every_user(self) -> None:
        """Spend settled by one user of a Budget counts against every other user."""
        shared = convo.Budget(max_input_tokens=1_000, warn_at=1.0)
        for _ in range(4):  # four "sessions", one object
            shared.settle(shared.reserve(Spend(250, 0, Decimal(0))), Spend(250, 0, Decimal(0)))
        with pytest.raises(convo.BudgetExceeded, match="max_input_tokens=1000"):
            shared.reserve(Spend(1, 0, Decimal(0)))

    def test_equal_limits_are_still_two_budgets(self) -> None:
        """Budgets compare by identity: their accounts are separate."""
        a, b = convo.Budget(max_cost_usd=1), convo.Budget(max_cost_usd=1)
        assert a != b
        a.reserve(Spend(cost_usd=Decimal(1)))
        assert b.held == Spend()

    def test_settle_twice_or_foreign_hold_is_misuse(self) -> None:
        """Settling a closed hold, or another budget's hold, is a ValueError."""
        a, b = convo.Budget(max_cost_usd=1), convo.Budget(max_cost_usd=1)
        hold = a.reserve(Spend())
        with pytest.raises(ValueError, match="this budget"):
            b.settle(hold, Spend())
        a.settle(hold, Spend())
        with pytest.raises(ValueError, match="already settled"):
            a.settle(hold, Spend())

    def test_bad_estimate_is_misuse(self) -> None:
        """A negative or non-finite estimate is a ValueError, not a free pass."""
        budget = convo.Budget(max_cost_usd=1)
        with pytest.raises(ValueError, match="cost_usd"):
            budget.reserve(Spend(cost_usd=Decimal("NaN")))
        with pytest.raises(ValueError, match="input_tokens"):
            budget.reserve(Spend(input_tokens=-5))
        assert budget.held == Spend()

    def test_overshoot_on_settle_warns_and_refuses_the_next(self) -> None:
        """An actual above its estimate that passes the cap warns; the next is refused."""
        budget = convo.Budget(max_input_tokens=100, warn_at=1.0)
        hold = budget.reserve(Spend(80, 0, Decimal(0)))
        with pytest.warns(convo.BudgetWarning, match="overshot: 120"):
            budget.settle(hold, Spend(120, 0, Decimal(0)))
        with pytest.raises(convo.BudgetExceeded):
            budget.reserve(Spend(0, 0, Decimal(0)))

    def test_actual_within_estimate_is_silent(self) -> None:
        """No warning when the actual stays within its estimate."""
        budget = convo.Budget(max_input_tokens=100, warn_at=1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            budget.settle(budget.reserve(Spend(60, 0, Decimal(0))), Spend(60, 0, Decimal(0)))

    def test_warns_at_the_threshold(self) -> None:
        """Reserving past warn_at of a limit (counting what is held) warns."""
        budget = convo.Budget(max_cost_usd="1.00", warn_at=0.5)
        budget.reserve(Spend(cost_usd=Decimal("0.30")))
        with pytest.warns(convo.BudgetWarning, match="50%"):
            budget.reserve(Spend(cost_usd=Decimal("0.25")))

    def test_unpriced_estimate_refused_for_a_cost_cap(self) -> None:
        """An unknown price cannot be held against a cost limit: refused, nothing held."""
        budget = convo.Budget(max_cost_usd="5")
        with pytest.raises(convo.BudgetExceeded, match="no known price"):
            budget.reserve(Spend(10, 10, None))
        assert budget.held == Spend()

    def test_request_scope_holds_do_not_add_up(self) -> None:
        """A per-request budget checks each estimate alone, however many are held."""
        budget = convo.Budget(max_input_tokens=1_000, scope="request", warn_at=1.0)
        for _ in range(5):
            budget.reserve(Spend(1_000, 0, Decimal(0)))
        with pytest.raises(convo.BudgetExceeded):
            budget.reserve(Spend(1_001, 0, Decimal(0)))

    def test_ledger_arguments_only_for_ledger_scope(self) -> None:
        """A ledger budget needs a reading and a mark; other scopes refuse them."""
        ledger_budget = convo.Budget(max_cost_usd=1, scope="ledger")
        with pytest.raises(ValueError, match="ledger_mark"):
            ledger_budget.reserve(Spend())
        with pytest.raises(ValueError, match="only apply to scope='ledger'"):
            convo.Budget(max_cost_usd=1).reserve(Spend(), ledger_spent=Spend())
        other = convo.Budget(max_cost_usd=1, scope="ledger")
        with pytest.raises(ValueError, match="this budget"):
            ledger_budget.reserve(Spend(), ledger_spent=Spend(), mark=other.ledger_mark())

    def test_ledger_scope_adds_what_was_settled_after_the_mark(self) -> None:
        """Amounts settled after the mark are counted on top of the reading; before, not."""
        budget = convo.Budget(max_cost_usd="1.00", scope="ledger", warn_at=1.0)
        first = budget.reserve(
            Spend(cost_usd=Decimal("0.30")), ledger_spent=Spend(), mark=budget.ledger_mark()
        )
        budget.settle(first, Spend(cost_usd=Decimal("0.30")))  # its row is in the next reading
        mark = budget.ledger_mark()
        second = budget.reserve(
            Spend(cost_usd=Decimal("0.30")), ledger_spent=Spend(cost_usd=Decimal("0.30")), mark=mark
        )
        # Settled after the mark: a reading that began at the mark may not show it.
        budget.settle(second, Spend(cost_usd=Decimal("0.30")))
        with pytest.raises(convo.BudgetExceeded) as caught:
            budget.reserve(
                Spend(cost_usd=Decimal("0.41")),
                ledger_spent=Spend(cost_usd=Decimal("0.30")),
                mark=mark,
            )
        assert caught.value.spent == Decimal("0.60")
        # Other processes' spend arrives through the reading.
        with pytest.raises(convo.BudgetExceeded):
            budget.reserve(
                Spend(cost_usd=Decimal("0.10")),
                ledger_spent=Spend(cost_usd=Decimal("0.95")),
                mark=budget.ledger_mark(),
            )


@pytest.mark.filterwarnings("ignore::convo.BudgetWarning")
class TestConcurrency:
    """Many users of one Budget never settle more than its cap between them."""

    CAP = Decimal("0.50")

    @staticmethod
    def _estimate(rng: random.Random) -> Spend:
        return Spend(
            rng.randint(100, 5_000), rng.randint(10, 1_000), Decimal(rng.randint(1, 40)) / 1000
        )

    @staticmethod
    def _actual(rng: random.Random, estimate: Spend) -> Spend:
        assert estimate.cost_usd is not None
        share = Decimal(rng.randint(10, 100)) / 100
        return Spend(
            int(estimate.input_tokens * share),
            rng.randint(0, estimate.output_tokens),
            (estimate.cost_usd * share).quantize(Decimal("1e-9")),
        )

    def test_32_threads_share_one_cap(self) -> None:
        """32 threads reserving and settling random spends: settled never passes the cap,
        every failed request's hold is released, and the cap is used nearly in full."""
        budget = convo.Budget(max_cost_usd=self.CAP, warn_at=1.0)
        totals: list[Decimal] = []
        lock = threading.Lock()
        start = threading.Barrier(32)

        def user(seed: int) -> None:
            rng = random.Random(seed)
            mine = Decimal(0)
            start.wait()
            refusals = 0
            while refusals < 20:
                try:
                    hold = budget.reserve(self._estimate(rng))
                except convo.BudgetExceeded:
                    refusals += 1
                    continue
                try:
                    time.sleep(rng.random() / 2000)
                    if rng.random() < 0.2:
                        raise ConnectionError("simulated failure before anything was billed")
                    actual = self._actual(rng, hold.estimate)
                except ConnectionError:
                    budget.release(hold)
                    continue
                budget.settle(hold, actual)
                mine += _usd(actual)
            with lock:
                totals.append(mine)

        threads = [threading.Thread(target=user, args=(k,)) for k in range(32)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(totals) == 32
        assert sum(totals) == _usd(budget.settled) <= self.CAP
        assert budget.held == Spend()
        # The largest estimate is 0.04: once refused 20 times each, little room is left.
        assert _usd(budget.settled) > self.CAP / 2

    async def test_32_tasks_share_one_cap(self) -> None:
        """32 asyncio tasks awaiting between reserve and settle: the same guarantee, and a
        task cancelled in flight releases its hold."""
        budget = convo.Budget(max_cost_usd=self.CAP, warn_at=1.0)
        settled: list[Decimal] = []

        async def user(seed: int) -> None:
            rng = random.Random(seed)
            refusals = 0
            while refusals < 20:
                try:
                    hold = budget.reserve(self._estimate(rng))
                except convo.BudgetExceeded:
                    refusals += 1
                    await asyncio.sleep(0)
                    continue
                try:
                    await asyncio.sleep(rng.random() / 1000)
                    if rng.random() < 0.2:
                        raise ConnectionError("simulated failure before anything was billed")
                except BaseException:
                    budget.release(hold)
                    if rng.random() < 0.5:
                        continue
                    raise
                actual = self._actual(rng, hold.estimate)
                budget.settle(hold, actual)
                settled.append(_usd(actual))

        tasks = [asyncio.create_task(user(k)) for k in range(32)]
        await asyncio.sleep(0.002)
        tasks[0].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(
            r is None or isinstance(r, (ConnectionError, asyncio.CancelledError)) for r in results
        )
        assert sum(settled) == _usd(budget.settled) <= self.CAP
        assert budget.held == Spend()

    @settings(max_examples=200, deadline=None)
    @given(
        steps=st.lists(
            st.tuples(
                st.sampled_from(["reserve", "settle", "release"]),
                st.integers(0, 300),
                st.integers(0, 100),
            ),
            max_size=60,
        )
    )
    def test_committed_never_passes_the_cap(self, steps: list[tuple[str, int, int]]) -> None:
        """Whatever the order of reserves, settles (actual <= estimate) and releases,
        settled + held stays within the cap."""
        budget = convo.Budget(max_input_tokens=1_000, warn_at=1.0)
        holds: list[Any] = []
        for op, amount, share in steps:
            if op == "reserve":
                with contextlib.suppress(convo.BudgetExceeded):
                    holds.append(budget.reserve(Spend(amount, 0, Decimal(0))))
            elif holds:
                hold = holds.pop(amount % len(holds))
                if op == "settle":
                    budget.settle(
                        hold, Spend(hold.estimate.input_tokens * share // 100, 0, Decimal(0))
                    )
                else:
                    budget.release(hold)
            committed = budget.settled + budget.held
            assert committed.input_tokens <= 1_000
        assert budget.held.input_tokens == sum(h.estimate.input_tokens for h in holds)


def _ledger_row(actual: Spend) -> LedgerRow:
    return LedgerRow(
        model="claude-sonnet-4-6",
        input=actual.input_tokens,
        output=actual.output_tokens,
        cost_usd=actual.cost_usd,
    )


@pytest.mark.filterwarnings("ignore::convo.BudgetWarning")
class TestLedgerScope:
    """A scope='ledger' budget shared by concurrent users: the ledger never records more
    than the cap (reading + what settled since the mark + holds in flight)."""

    CAP = Decimal("0.50")

    @pytest.mark.parametrize("store", ["sqlite", "postgresql"])
    async def test_32_tasks_on_one_ledger(self, store: str, request: pytest.FixtureRequest) -> None:
        """32 tasks: mark, spend_async, reserve, 'send', append the row, settle. The
        ledger's cost stays within the cap; failed sends release their hold."""
        budget = convo.Budget(max_cost_usd=self.CAP, scope="ledger", warn_at=1.0)
        url = ":memory:" if store == "sqlite" else request.getfixturevalue("pg_url")
        with convo.Ledger.open(url) as ledger:

            async def user(seed: int) -> None:
                rng = random.Random(seed)
                refusals = 0
                while refusals < 10:
                    mark = budget.ledger_mark()
                    spent = await ledger.spend_async(since=budget.since)
                    try:
                        hold = budget.reserve(
                            TestConcurrency._estimate(rng), ledger_spent=spent, mark=mark
                        )
                    except convo.BudgetExceeded:
                        refusals += 1
                        continue
                    try:
                        await asyncio.sleep(rng.random() / 1000)
                        if rng.random() < 0.2:
                            raise ConnectionError("nothing billed")
                    except ConnectionError:
                        budget.release(hold)
                        continue
                    actual = TestConcurrency._actual(rng, hold.estimate)
                    ledger.append(_ledger_row(actual))  # the row first, then settle
                    budget.settle(hold, actual)

            await asyncio.gather(*(user(k) for k in range(32)))
            total = await ledger.total_async()
            assert total.cost_usd == _usd(budget.settled) <= self.CAP
            assert total.cost_usd > self.CAP / 2
            assert budget.held == Spend()

    def test_32_threads_and_spend_from_before(self) -> None:
        """32 threads on a ledger that already holds $0.20 from earlier (another process):
        together they add at most the remaining $0.30."""
        budget = convo.Budget(max_cost_usd=self.CAP, scope="ledger", warn_at=1.0)
        with convo.Ledger.open(":memory:") as ledger:
            ledger.append(_ledger_row(Spend(1000, 100, Decimal("0.20"))))

            def user(seed: int) -> None:
                rng = random.Random(seed)
                refusals = 0
                while refusals < 10:
                    mark = budget.ledger_mark()
                    try:
                        hold = budget.reserve(
                            TestConcurrency._estimate(rng),
                            ledger_spent=ledger.spend(),
                            mark=mark,
                        )
                    except convo.BudgetExceeded:
                        refusals += 1
                        continue
                    time.sleep(rng.random() / 2000)
                    actual = TestConcurrency._actual(rng, hold.estimate)
                    ledger.append(_ledger_row(actual))
                    budget.settle(hold, actual)

            threads = [threading.Thread(target=user, args=(k,)) for k in range(32)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            assert ledger.total().cost_usd <= self.CAP
            assert _usd(budget.settled) <= Decimal("0.30")

"""Budgets: refusal before spending, warnings near a limit, and clear misuse errors."""

from __future__ import annotations

import datetime as dt
import warnings
from decimal import Decimal

import pytest

import convo
from convo.budget import Spend


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

    def test_money_is_exact(self) -> None:
        """A float limit is converted through its decimal text, not its binary value."""
        assert convo.Budget(max_cost_usd=0.1).max_cost_usd == Decimal("0.1")

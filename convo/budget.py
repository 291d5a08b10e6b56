"""Budgets: refuse a request before any money is spent when it would pass a limit.

A :class:`Budget` caps input tokens, output tokens and cost in USD over a scope:

- ``"request"``: each request on its own;
- ``"session"``: everything one :class:`~convo.Session` has spent so far;
- ``"ledger"``: everything the session's ledger recorded (optionally since a time), so
  several sessions, or processes sharing a ledger, share one budget.

Checks run twice. Before sending, on the estimate (predicted input, ``max_tokens`` of
output, and their price): exceeding raises :class:`~convo.errors.BudgetExceeded` and
nothing is sent. After the response, on the actuals: an overshoot (the estimate is an
estimate) emits a :class:`BudgetWarning`, and the next request is refused. Reaching
``warn_at`` of a limit emits a :class:`BudgetWarning` too.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Literal

import attrs

from convo.errors import BudgetExceeded

__all__ = ["Budget", "BudgetWarning", "Spend"]

Scope = Literal["request", "session", "ledger"]


class BudgetWarning(UserWarning):
    """A budget is nearly used up, or an actual overshot its estimate."""


def _money(value: Decimal | float | int | str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        result = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise ValueError(
            f"max_cost_usd must be a number of USD such as '0.50', got {value!r}"
        ) from None
    if result < 0:
        raise ValueError(f"max_cost_usd must be >= 0, got {value}")
    return result


def _non_negative(
    instance: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0 or None, got {value}")


def _fraction(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"warn_at must be within (0, 1], got {value}")


def _scope(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("request", "session", "ledger"):
        raise ValueError(f"scope must be 'request', 'session' or 'ledger', got {value!r}")


@attrs.frozen
class Spend:
    """Tokens and money, spent or about to be.

    ``cost_usd`` is ``None`` when a model has no known price: a cost limit then cannot be
    checked, and :meth:`Budget.check` says so rather than guessing.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal | None = Decimal(0)

    def __add__(self, other: Spend) -> Spend:
        cost = (
            None
            if self.cost_usd is None or other.cost_usd is None
            else self.cost_usd + other.cost_usd
        )
        return Spend(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens, cost
        )


@attrs.frozen
class Budget:
    """Limits on input tokens, output tokens and USD over a scope.

    Args:
        max_input_tokens: Total input (uncached + cache reads + cache writes).
        max_output_tokens: Output tokens (estimated as ``max_tokens`` before sending).
        max_cost_usd: USD (a ``Decimal``, or a number or string converted exactly).
        scope: ``"request"``, ``"session"`` (default) or ``"ledger"``.
        since: For ``scope="ledger"``, count only rows from this time on.
        warn_at: Fraction of a limit at which a :class:`BudgetWarning` is emitted.

    Example::

        convo.Budget(max_cost_usd="0.50")                      # per session
        convo.Budget(max_input_tokens=200_000, scope="request")

    .. versionadded:: 0.1
    """

    max_input_tokens: int | None = attrs.field(default=None, kw_only=True, validator=_non_negative)
    max_output_tokens: int | None = attrs.field(default=None, kw_only=True, validator=_non_negative)
    max_cost_usd: Decimal | None = attrs.field(default=None, kw_only=True, converter=_money)
    scope: Scope = attrs.field(default="session", kw_only=True, validator=_scope)
    since: dt.datetime | None = attrs.field(default=None, kw_only=True)
    warn_at: float = attrs.field(default=0.8, kw_only=True, validator=_fraction)

    def __attrs_post_init__(self) -> None:
        if (
            self.max_input_tokens is None
            and self.max_output_tokens is None
            and self.max_cost_usd is None
        ):
            raise ValueError(
                "a Budget needs at least one of max_input_tokens, max_output_tokens, max_cost_usd"
            )
        if self.since is not None and self.scope != "ledger":
            raise ValueError("since= only applies to scope='ledger'")

    def _limits(self) -> Iterable[tuple[str, Decimal | int | None, str]]:
        yield "max_input_tokens", self.max_input_tokens, "input_tokens"
        yield "max_output_tokens", self.max_output_tokens, "output_tokens"
        yield "max_cost_usd", self.max_cost_usd, "cost_usd"

    def check(self, estimate: Spend, spent: Spend) -> None:
        """Refuse *estimate* on top of *spent*, or warn near a limit.

        Raises:
            BudgetExceeded: naming the limit, the estimate and what was already spent;
                also when a cost limit is set but the cost cannot be known (unpriced model).
        """
        already = Spend() if self.scope == "request" else spent
        for name, limit, field in self._limits():
            if limit is None:
                continue
            before, adding = getattr(already, field), getattr(estimate, field)
            if before is None or adding is None:
                raise BudgetExceeded(
                    f"{name}={limit} cannot be enforced: this model has no known price "
                    "(add a price override, or drop the cost limit)",
                    limit=name,
                    maximum=limit,
                    estimate=adding,
                    spent=before,
                    scope=self.scope,
                )
            if before + adding > limit:
                raise BudgetExceeded(
                    f"{self.scope} budget {name}={limit} would be exceeded: "
                    f"{before} already spent + {adding} estimated for this request; "
                    "nothing was sent",
                    limit=name,
                    maximum=limit,
                    estimate=adding,
                    spent=before,
                    scope=self.scope,
                )
            if before + adding >= limit * Decimal(str(self.warn_at)):
                warnings.warn(
                    f"{self.scope} budget {name}: {before + adding} of {limit} "
                    f"({self.warn_at:.0%} warning threshold reached)",
                    BudgetWarning,
                    stacklevel=4,
                )

    def check_actual(self, actual: Spend, spent_after: Spend) -> None:
        """Warn when what was actually spent passed a limit (the next request is refused)."""
        total = actual if self.scope == "request" else spent_after
        for name, limit, field in self._limits():
            value = getattr(total, field)
            if limit is not None and value is not None and value > limit:
                warnings.warn(
                    f"{self.scope} budget {name}={limit} overshot: {value} actually spent "
                    "(estimates are estimates); further requests will be refused",
                    BudgetWarning,
                    stacklevel=4,
                )

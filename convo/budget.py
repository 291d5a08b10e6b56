"""Budgets: refuse a request before any money is spent when it would pass a limit.

A :class:`Budget` caps input tokens, output tokens and cost in USD over a scope:

- ``"request"``: each request on its own;
- ``"session"`` (default): everything spent *through this Budget object*. One object given
  to several sessions (threads, asyncio tasks) is one shared cap; give each session its
  own object for a cap per session;
- ``"ledger"``: everything the ledger recorded (optionally since a time), plus what this
  object has in flight, so processes sharing a ledger share one budget.

A request *reserves* its estimated maximum (predicted input, ``max_tokens`` of output,
their price) before it is sent, and *settles* the actual afterwards::

    hold = budget.reserve(estimate)          # BudgetExceeded: nothing may be sent
    try:
        actual = send(...)
    except NothingBilled:
        budget.release(hold)                 # nothing was spent
        raise
    budget.settle(hold, actual)              # BudgetWarning when actual overshot the cap

Reservations on one object are atomic with each other (a lock held for microseconds, no
I/O, so it is fine on an event loop): N concurrent users can never together reserve more
than the cap, and the cap is passed only by a settle whose actual beat its estimate.
Reaching ``warn_at`` of a limit emits a :class:`BudgetWarning` too.

Invariant of an object's accounting: ``settled`` is the sum of every actual settled,
``held`` the sum of the estimates of the holds still open; ``settled + held`` is what the
``"session"`` scope has committed, and a reservation passes only when that plus its
estimate stays within every limit.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import warnings
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import attrs

from convo.errors import BudgetExceeded

__all__ = ["Budget", "BudgetWarning", "Hold", "LedgerMark", "Spend"]

Scope = Literal["request", "session", "ledger"]


class BudgetWarning(UserWarning):
    """A budget is nearly used up, or an actual overshot its estimate."""


def _money(value: Decimal | float | int | str | None) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"max_cost_usd must be a number of USD such as '0.50', got {value!r}")
    try:
        result = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise ValueError(
            f"max_cost_usd must be a number of USD such as '0.50', got {value!r}"
        ) from None
    if not result.is_finite():
        raise ValueError(
            f"max_cost_usd must be a finite number of USD such as '0.50', got {value!r} "
            "(for no cost limit, leave it out)"
        )
    if result < 0:
        raise ValueError(f"max_cost_usd must be >= 0, got {value}")
    return result


def _tokens(instance: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"{attribute.name} must be a whole number of tokens >= 0 or None, got {value!r}"
        )
    if value < 0:
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
    checked, and :meth:`Budget.reserve` says so rather than guessing.
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

    def _exceeds(self, other: Spend) -> bool:
        """Whether any known part of self is larger than other's."""
        if self.input_tokens > other.input_tokens or self.output_tokens > other.output_tokens:
            return True
        return (
            self.cost_usd is not None
            and other.cost_usd is not None
            and self.cost_usd > other.cost_usd
        )


def _valid(spend: object, what: str) -> Spend:
    if type(spend) is Spend:
        i, o, c = spend.input_tokens, spend.output_tokens, spend.cost_usd
        # The common case in one expression (this runs twice per request).
        if (
            type(i) is int
            and type(o) is int
            and i >= 0
            and o >= 0
            and (c is None or (type(c) is Decimal and c.is_finite() and c >= 0))
        ):
            return spend
    if not isinstance(spend, Spend):
        raise TypeError(f"{what} must be a convo.budget.Spend, got {type(spend).__name__}")
    for name in ("input_tokens", "output_tokens"):
        value = getattr(spend, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{what}.{name} must be a whole number >= 0, got {value!r}")
    cost = spend.cost_usd
    if cost is not None and (not isinstance(cost, Decimal) or not cost.is_finite() or cost < 0):
        raise ValueError(f"{what}.cost_usd must be a finite Decimal >= 0 or None, got {cost!r}")
    return spend


class Hold:
    """One reservation on a :class:`Budget`, open until settled or released.

    Attributes:
        estimate: What was reserved.

    .. versionadded:: 0.2
    """

    __slots__ = ("_account", "estimate")

    def __init__(self, account: _Account, estimate: Spend) -> None:
        self._account = account
        self.estimate = estimate

    @property
    def open(self) -> bool:
        """Whether the hold still counts against its budget."""
        return self in self._account.holds

    def __repr__(self) -> str:
        return f"<Hold {self.estimate!r} {'open' if self.open else 'closed'}>"


@attrs.frozen
class LedgerMark:
    """What a ``scope="ledger"`` budget had settled when a ledger reading began.

    Take it with :meth:`Budget.ledger_mark` *before* reading the ledger and pass both to
    :meth:`Budget.reserve`: amounts settled after the mark may be missing from the reading,
    so the budget adds them; amounts settled before it are in the reading, provided their
    rows were appended to the ledger before they were settled.

    .. versionadded:: 0.2
    """

    settled: Spend
    account_id: int = attrs.field(repr=False)


# An amount inside the accounting: [input tokens, output tokens, USD or None (unknown)].
# Plain lists rather than Spend objects: reserve + settle is on every request's path, and
# building frozen objects for each intermediate sum was most of its time.
_Amount = list[Any]


def _add(into: _Amount, spend: Spend, sign: int = 1) -> None:
    into[0] += sign * spend.input_tokens
    into[1] += sign * spend.output_tokens
    cost = spend.cost_usd
    into[2] = None if into[2] is None or cost is None else into[2] + sign * cost


def _plus(into: _Amount, amount: _Amount) -> None:
    into[0] += amount[0]
    into[1] += amount[1]
    into[2] = None if into[2] is None or amount[2] is None else into[2] + amount[2]


def _spend(amount: _Amount) -> Spend:
    return Spend(amount[0], amount[1], amount[2])


class _Account:
    """The mutable accounting behind a frozen :class:`Budget`; guarded by ``lock``.

    Invariants (under the lock): ``settled`` is the sum of every actual settled, ``held``
    the sum of the estimates of ``holds``.
    """

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.lock = threading.Lock()
        self.settled: _Amount = [0, 0, Decimal(0)]
        self.held: _Amount = [0, 0, Decimal(0)]
        self.holds: set[Hold] = set()
        # The latest ledger reading and the settled total at its mark, so settle() can
        # say whether a ledger budget was overshot.
        self.reading: tuple[Spend, Spend] | None = None


@attrs.frozen(eq=False)
class Budget:
    """Limits on input tokens, output tokens and USD over a scope.

    A Budget is a configuration plus the accounting of what was reserved and settled
    through it; two Budgets with the same limits are still two budgets (compared by
    identity). It is thread-safe and async-safe: share one object to share one cap.

    Args:
        max_input_tokens: Total input (uncached + cache reads + cache writes).
        max_output_tokens: Output tokens (estimated as ``max_tokens`` before sending).
        max_cost_usd: USD (a ``Decimal``, or a number or string converted exactly); finite
            and >= 0.
        scope: ``"request"``, ``"session"`` (default: everything spent through this
            object, by every session it is given to) or ``"ledger"``.
        since: For ``scope="ledger"``, count only rows from this time on.
        warn_at: Fraction of a limit at which a :class:`BudgetWarning` is emitted.

    Example::

        convo.Budget(max_cost_usd="0.50")                      # shared by whoever holds it
        convo.Budget(max_input_tokens=200_000, scope="request")

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       :meth:`reserve` / :meth:`settle` / :meth:`release`; one object is one shared cap;
       non-finite limits are refused.
    """

    max_input_tokens: int | None = attrs.field(default=None, kw_only=True, validator=_tokens)
    max_output_tokens: int | None = attrs.field(default=None, kw_only=True, validator=_tokens)
    max_cost_usd: Decimal | None = attrs.field(default=None, kw_only=True, converter=_money)
    scope: Scope = attrs.field(default="session", kw_only=True, validator=_scope)
    since: dt.datetime | None = attrs.field(default=None, kw_only=True)
    warn_at: float = attrs.field(default=0.8, kw_only=True, validator=_fraction)
    _account: _Account = attrs.field(init=False, factory=_Account, repr=False)
    # (limit name, limit, index into an amount, warn_at threshold) for each limit set.
    _checks: tuple[tuple[str, Decimal | int, int, Decimal], ...] = attrs.field(
        init=False, default=(), repr=False
    )

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

        warn = Decimal(str(self.warn_at))
        checks = tuple(
            (name, limit, index, limit * warn)
            for name, limit, index in (
                ("max_input_tokens", self.max_input_tokens, 0),
                ("max_output_tokens", self.max_output_tokens, 1),
                ("max_cost_usd", self.max_cost_usd, 2),
            )
            if limit is not None
        )
        object.__setattr__(self, "_checks", checks)

    # -- reservations ---------------------------------------------------------------------

    @property
    def settled(self) -> Spend:
        """The sum of every actual settled through this object."""
        with self._account.lock:
            return _spend(self._account.settled)

    @property
    def held(self) -> Spend:
        """The sum of the estimates of the holds still open."""
        with self._account.lock:
            return _spend(self._account.held)

    def ledger_mark(self) -> LedgerMark:
        """Mark where this budget's settling stands; take it just before reading the ledger.

        See :class:`LedgerMark`. No I/O.
        """
        with self._account.lock:
            return LedgerMark(_spend(self._account.settled), self._account.id)

    def reserve(
        self,
        estimate: Spend,
        *,
        ledger_spent: Spend | None = None,
        mark: LedgerMark | None = None,
    ) -> Hold:
        """Reserve *estimate* (a request's maximum) or refuse it; no I/O.

        Atomic with every other reservation, settle and release on this object, from any
        thread or task.

        Args:
            estimate: What the request may spend at most.
            ledger_spent: ``scope="ledger"`` only: the ledger's totals since
                :attr:`since` (for example ``ledger.spend(since=budget.since)``), read after
                *mark* was taken.
            mark: ``scope="ledger"`` only: :meth:`ledger_mark`, taken before the reading.

        Returns:
            The :class:`Hold`; pass it to :meth:`settle` or :meth:`release`.

        Raises:
            BudgetExceeded: naming the limit, the estimate and what was already committed;
                also when a cost limit is set but a cost is unknown (unpriced model).
            ValueError: a ledger budget without ``ledger_spent`` and ``mark``, or those
                given to another scope; a negative or non-finite estimate.
        """
        estimate = _valid(estimate, "estimate")
        if self.scope == "ledger":
            if ledger_spent is None or mark is None:
                raise ValueError(
                    "a Budget with scope='ledger' needs ledger_spent= (the ledger's totals "
                    "since budget.since) and mark= (budget.ledger_mark(), taken before reading)"
                )
            ledger_spent = _valid(ledger_spent, "ledger_spent")
            if not isinstance(mark, LedgerMark) or mark.account_id != self._account.id:
                raise ValueError("mark must come from this budget's ledger_mark()")
        elif ledger_spent is not None or mark is not None:
            raise ValueError(
                f"ledger_spent= and mark= only apply to scope='ledger', not {self.scope!r}"
            )
        account = self._account
        with account.lock:
            if self.scope == "request":
                already: _Amount = [0, 0, Decimal(0)]
            elif self.scope == "session":
                already = account.settled.copy()
                _plus(already, account.held)
            else:
                assert ledger_spent is not None
                assert mark is not None
                account.reading = (ledger_spent, mark.settled)
                already = self._ledger_total(ledger_spent, mark.settled)
            near = self._refuse(estimate, already)
            hold = Hold(account, estimate)
            account.holds.add(hold)
            _add(account.held, estimate)
        for name, limit, value in near:
            warnings.warn(
                f"{self.scope} budget {name}: {value} of {limit} "
                f"({self.warn_at:.0%} warning threshold reached)",
                BudgetWarning,
                stacklevel=2,
            )
        return hold

    def _ledger_total(self, reading: Spend, at_mark: Spend) -> _Amount:
        """Reading + settled since the mark + held; call under the lock."""
        total = self._account.settled.copy()
        _add(total, at_mark, -1)
        _add(total, reading)
        _plus(total, self._account.held)
        return total

    def _refuse(self, estimate: Spend, already: _Amount) -> list[tuple[str, object, object]]:
        """Raise BudgetExceeded when *estimate* on top of *already* passes a limit.

        Returns the limits whose ``warn_at`` threshold is reached, to warn about.
        """
        near: list[tuple[str, object, object]] = []
        adds = (estimate.input_tokens, estimate.output_tokens, estimate.cost_usd)
        for name, limit, index, threshold in self._checks:
            before, adding = already[index], adds[index]
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
            after = before + adding
            if after > limit:
                raise BudgetExceeded(
                    f"{self.scope} budget {name}={limit} would be exceeded: "
                    f"{before} already spent or reserved + {adding} estimated for this "
                    "request; nothing was sent",
                    limit=name,
                    maximum=limit,
                    estimate=adding,
                    spent=before,
                    scope=self.scope,
                )
            if after >= threshold:
                near.append((name, limit, after))
        return near

    def _take(self, hold: Hold, what: str) -> bool:
        """Close *hold* under the lock; False when it was already closed."""
        if not isinstance(hold, Hold) or hold._account is not self._account:
            raise ValueError(f"{what}() takes a Hold from this budget's reserve()")
        if hold not in self._account.holds:
            return False
        self._account.holds.discard(hold)
        _add(self._account.held, hold.estimate, -1)
        return True

    def settle(self, hold: Hold, actual: Spend) -> None:
        """Close *hold*, counting what the request *actually* spent in its place.

        When the actual beat the estimate and the scope's total passed a limit, a
        :class:`BudgetWarning` says so (further reservations are then refused).

        Raises:
            ValueError: *hold* is not this budget's, or was already settled or released.
        """
        actual = _valid(actual, "actual")
        account = self._account
        with account.lock:
            if not self._take(hold, "settle"):
                raise ValueError(f"{hold!r} was already settled or released")
            _add(account.settled, actual)
            if not actual._exceeds(hold.estimate):
                return
            if self.scope == "request":
                total = [actual.input_tokens, actual.output_tokens, actual.cost_usd]
            elif self.scope == "session":
                total = account.settled.copy()
                _plus(total, account.held)
            elif account.reading is not None:
                total = self._ledger_total(*account.reading)
            else:  # pragma: no cover - a ledger hold always comes with a reading
                return
        self._warn_overshoot(total, stacklevel=2)

    def release(self, hold: Hold) -> None:
        """Close *hold* with nothing spent (the request was never billed). Idempotent.

        Raises:
            ValueError: *hold* is not this budget's.
        """
        with self._account.lock:
            self._take(hold, "release")

    def _warn_overshoot(self, total: _Amount, *, stacklevel: int) -> None:
        for name, limit, index, _ in self._checks:
            value = total[index]
            if value is not None and value > limit:
                warnings.warn(
                    f"{self.scope} budget {name}={limit} overshot: {value} actually spent "
                    "(estimates are estimates); further requests will be refused",
                    BudgetWarning,
                    stacklevel=stacklevel + 1,
                )

    # -- stateless checks (0.1) -----------------------------------------------------------

    def check(self, estimate: Spend, spent: Spend) -> None:
        """Refuse *estimate* on top of *spent*, or warn near a limit. Reserves nothing.

        Superseded by :meth:`reserve`, which is atomic under concurrency; kept for callers
        that keep their own accounting.

        Raises:
            BudgetExceeded: naming the limit, the estimate and what was already spent;
                also when a cost limit is set but the cost cannot be known (unpriced model).
        """
        already = Spend() if self.scope == "request" else spent
        amount = [already.input_tokens, already.output_tokens, already.cost_usd]
        for name, limit, value in self._refuse(estimate, amount):
            warnings.warn(
                f"{self.scope} budget {name}: {value} of {limit} "
                f"({self.warn_at:.0%} warning threshold reached)",
                BudgetWarning,
                stacklevel=4,
            )

    def check_actual(self, actual: Spend, spent_after: Spend) -> None:
        """Warn when what was actually spent passed a limit (the next request is refused).

        Superseded by :meth:`settle`.
        """
        total = actual if self.scope == "request" else spent_after
        amount = [total.input_tokens, total.output_tokens, total.cost_usd]
        self._warn_overshoot(amount, stacklevel=4)

"""One ledger row: the outcome of one API attempt, as a frozen value.

Money is kept to the nano-dollar (an integer column), so sums in SQL are exact and equal
the sum of the rows' :attr:`LedgerRow.cost_usd`. A cost finer than that (no published
rate produces one) is rounded half-even when the row is built.
"""

from __future__ import annotations

import datetime as dt
import operator
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, Any, Literal

import attrs

from convo.usage import Usage

if TYPE_CHECKING:  # pricing pulls in the price table; a ledger reader does not need it
    from convo.pricing import Cost

__all__ = [
    "CACHE_OUTCOMES",
    "COLUMNS",
    "NANO",
    "PURPOSES",
    "STATUSES",
    "CacheOutcome",
    "LedgerRow",
    "Outcome",
    "Purpose",
    "Status",
    "cache_outcome",
    "from_nanos",
    "to_nanos",
]

#: A task's outcome, marked by the caller.
Outcome = Literal["success", "failure"]
OUTCOMES = ("success", "failure")

#: How an attempt ended: answered, failed, or cancelled while its request was in flight.
Status = Literal["ok", "error", "cancelled"]
STATUSES = ("ok", "error", "cancelled")

#: Why a request was sent: a conversation turn, a pre-warm, or a keep-alive re-warm.
Purpose = Literal["turn", "warm", "keep_alive"]
PURPOSES = ("turn", "warm", "keep_alive")

#: What the cache did, from the response's usage (see :func:`cache_outcome`).
CacheOutcome = Literal["hit", "partial", "write", "none"]
CACHE_OUTCOMES = ("hit", "partial", "write", "none")


def cache_outcome(usage: Usage) -> CacheOutcome:
    """Classify an attempt's usage: the values :attr:`LedgerRow.cache_outcome` holds.

    ``"hit"``: read from cache, wrote nothing; ``"partial"``: read some and wrote more;
    ``"write"``: wrote without reading; ``"none"``: the cache was not used at all.
    """
    if usage.cache_read:
        return "partial" if usage.cache_write else "hit"
    return "write" if usage.cache_write else "none"


#: USD per nano-dollar; the ledger's unit of money.
NANO = Decimal("1e-9")


def to_nanos(usd: Decimal | None) -> int | None:
    """Return *usd* as a whole number of nano-dollars (half-even), or ``None``."""
    if usd is None:
        return None
    return int((usd / NANO).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def from_nanos(nanos: int | Decimal | None) -> Decimal | None:
    """Return nano-dollars as USD, or ``None``."""
    if nanos is None:
        return None
    return Decimal(nanos).scaleb(-9)


_UTC = dt.timezone.utc


def _utc(value: dt.datetime) -> dt.datetime:
    if type(value) is dt.datetime and value.tzinfo is _UTC:
        return value  # already what astimezone would return (the common case: a turn's row)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"time must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError("time must be timezone-aware; use datetime.now(timezone.utc)")
    return value.astimezone(dt.timezone.utc)


#: Zero nano-dollars as :func:`from_nanos` returns it (``0E-9``, never ``-0E-9``).
_ZERO_USD = Decimal(0).scaleb(-9)


def _usd(value: Decimal | None) -> Decimal | None:
    # from_nanos(to_nanos(value)), in one quantize for a finite Decimal (a row's build runs
    # on the event loop, once per attempt): the same whole nano-dollars, rounded half-even,
    # with the same exponent (-9). A zero is returned as from_nanos returns it (a tiny
    # negative cost rounds to 0E-9 there, not -0E-9).
    if type(value) is Decimal and value.is_finite():
        nanos = value.quantize(NANO, rounding=ROUND_HALF_EVEN)
        return nanos if nanos else _ZERO_USD
    return from_nanos(to_nanos(value))


def _outcome(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and value not in OUTCOMES:
        raise ValueError(f"outcome must be 'success', 'failure' or None, got {value!r}")


def _one_of(allowed: tuple[str, ...], *, optional: bool) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if (value is None and optional) or value in allowed:
            return
        choices = ", ".join(repr(a) for a in allowed) + (" or None" if optional else "")
        raise ValueError(f"{attribute.name} must be one of {choices}, got {value!r}")

    return check


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@attrs.frozen
class LedgerRow:
    """The record of one API attempt's outcome.

    Attributes:
        model: Model id as sent.
        time: When the attempt started (timezone-aware; stored as UTC).
        session_id: The :class:`~convo.Session` that made it.
        conversation_id: The conversation it belongs to.
        task_id: The unit of work ``outcome`` is marked on; defaults to ``conversation_id``.
        prefix_fingerprint: Fingerprint of the cached prefix sent.
        input, cache_read, cache_write_5m, cache_write_1h, output: The token counts.
        cost_usd: Cost, to the nano-dollar; ``None`` when the model was unpriced.
        saved_usd: Saving from caching, to the nano-dollar; ``None`` when unpriced.
        price_source: Where the price came from, with version.
        rate_limit_tokens: Weight against input tokens per minute.
        latency_ms: Wall time of the attempt.
        attempts: Which attempt this was (1 for the first).
        status: ``"ok"``; ``"error"`` (the attempt failed; any usage it reported before
            failing is in the token counts); or ``"cancelled"`` (the caller cancelled the
            send while its request was in flight: the request may have been billed, and
            the counts hold what is known of it).
        error_type: The API error type (``rate_limit_error``...) when status is error.
        http_status: HTTP status code, when known.
        request_id: The server's ``request-id``.
        cache_outcome: What the cache did, from the usage (:func:`cache_outcome`):
            ``"hit"`` (read, no write), ``"partial"`` (read and wrote), ``"write"`` (wrote
            only) or ``"none"``; ``None`` on rows of attempts that got no answer.
        cache_reason: The bust reason (``"cold"``, ``"system_changed"``...), or ``"hit"``.
        ttl_split_assumed: The write TTL split was missing and assumed.
        outcome: The caller's verdict on the task, when known at append time.
        prompt_text, completion_text: Kept only when the ledger was opened with
            ``store_text=True``; otherwise dropped on append.
        usage_estimated: The output count is an estimate (from the text a cut stream
            delivered, ``convo.tokens.estimate``), not the server's figure.
        purpose: ``"turn"``, ``"warm"`` (a pre-warm) or ``"keep_alive"``; ``None`` on
            rows written before schema version 4.
        expected_saving_usd: On ``warm`` and ``keep_alive`` rows, what the cache policy
            expected the request to save (negative: its expected extra cost, e.g. a cold
            pre-warm bought for latency); ``None`` elsewhere (:mod:`convo.policy`).
        route: On a routed turn (:class:`convo.Router`), the tier the turn needed and the
            tier that answered it, ``"small>large"``; ``None`` on unrouted rows.
        route_reason: The router's reason for its choice, in words (model ids and amounts
            only, never prompt text).

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       ``status="cancelled"``, ``usage_estimated``, ``purpose``; ``status``,
       ``cache_outcome`` and ``purpose`` are checked against their values.
    .. versionchanged:: 0.3
       ``expected_saving_usd`` (schema version 5).
    .. versionchanged:: 0.4
       ``route`` and ``route_reason`` (schema version 6).
    """

    model: str
    time: dt.datetime = attrs.field(factory=_now, converter=_utc)
    session_id: str | None = None
    conversation_id: str | None = None
    task_id: str | None = attrs.field(
        default=attrs.Factory(lambda self: self.conversation_id, takes_self=True)
    )
    prefix_fingerprint: str | None = None
    input: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    output: int = 0
    cost_usd: Decimal | None = attrs.field(default=None, converter=_usd)
    saved_usd: Decimal | None = attrs.field(default=None, converter=_usd)
    price_source: str | None = None
    rate_limit_tokens: int = 0
    latency_ms: float | None = None
    attempts: int = 1
    status: Status = attrs.field(default="ok", validator=_one_of(STATUSES, optional=False))
    error_type: str | None = None
    http_status: int | None = None
    request_id: str | None = None
    cache_outcome: CacheOutcome | None = attrs.field(
        default=None, validator=_one_of(CACHE_OUTCOMES, optional=True)
    )
    cache_reason: str | None = None
    ttl_split_assumed: bool = False
    outcome: str | None = attrs.field(default=None, validator=_outcome)
    prompt_text: str | None = None
    completion_text: str | None = None
    usage_estimated: bool = False
    purpose: Purpose | None = attrs.field(
        default="turn", validator=_one_of(PURPOSES, optional=True)
    )
    expected_saving_usd: Decimal | None = attrs.field(default=None, converter=_usd)
    route: str | None = None
    route_reason: str | None = None

    @classmethod
    def build(
        cls, usage: Usage, cost: Cost | None = None, *, model: str, **fields: Any
    ) -> LedgerRow:
        """Build a row from a :class:`~convo.Usage`, its :class:`~convo.Cost`, and the rest.

        Args:
            usage: The attempt's tokens (``Usage.zero()`` for an attempt that failed).
            cost: Its price; without one the row is unpriced with zero weight.
            model: The model id.
            **fields: Any other :class:`LedgerRow` attribute.
        """
        if not isinstance(usage, Usage):
            raise TypeError(f"usage must be a convo.Usage, got {type(usage).__name__}")
        if cost is not None:
            fields.setdefault("cost_usd", cost.usd)
            fields.setdefault("saved_usd", cost.saved_usd)
            fields.setdefault("price_source", cost.source)
            fields.setdefault("rate_limit_tokens", cost.rate_limit_tokens)
        return cls(
            model=model,
            input=usage.input,
            cache_read=usage.cache_read,
            cache_write_5m=usage.cache_write_5m,
            cache_write_1h=usage.cache_write_1h,
            output=usage.output,
            ttl_split_assumed=usage.ttl_split_assumed,
            **fields,
        )

    @property
    def usage(self) -> Usage:
        """The row's token counts as a :class:`~convo.Usage`."""
        return Usage(
            input=self.input,
            cache_read=self.cache_read,
            cache_write_5m=self.cache_write_5m,
            cache_write_1h=self.cache_write_1h,
            output=self.output,
            ttl_split_assumed=self.ttl_split_assumed,
        )

    def to_db(self) -> tuple[Any, ...]:
        """Return the values for :data:`COLUMNS`, in order, as stored."""
        # The hot path of the writer: one C-level attrgetter, then four fix-ups by index.
        values = list(_GET_ALL(self))
        values[_I_TIME] = self.time.timestamp()
        # The converters already rounded money to whole nano-dollars, so scaleb is exact.
        values[_I_COST] = None if self.cost_usd is None else int(self.cost_usd.scaleb(9))
        values[_I_SAVED] = None if self.saved_usd is None else int(self.saved_usd.scaleb(9))
        values[_I_TTL] = int(self.ttl_split_assumed)
        values[_I_ESTIMATED] = int(self.usage_estimated)
        expected = self.expected_saving_usd
        values[_I_EXPECTED] = None if expected is None else int(expected.scaleb(9))
        return tuple(values)

    @classmethod
    def from_db(cls, values: tuple[Any, ...]) -> LedgerRow:
        """Rebuild a row from the values of :data:`COLUMNS`."""
        d = dict(zip((name for name, _ in _FIELDS), values, strict=True))
        d["time"] = dt.datetime.fromtimestamp(d["time"], dt.timezone.utc)
        d["cost_usd"] = from_nanos(d["cost_usd"])
        d["saved_usd"] = from_nanos(d["saved_usd"])
        d["ttl_split_assumed"] = bool(d["ttl_split_assumed"])
        d["usage_estimated"] = bool(d["usage_estimated"])
        d["expected_saving_usd"] = from_nanos(d["expected_saving_usd"])
        return cls(**d)


#: (attribute, column) pairs; columns differ where the stored unit differs.
_FIELDS: tuple[tuple[str, str], ...] = tuple(
    (
        a.name,
        {
            "time": "ts",
            "cost_usd": "cost_nusd",
            "saved_usd": "saved_nusd",
            "expected_saving_usd": "expected_saving_nusd",
        }.get(a.name, a.name),
    )
    for a in attrs.fields(LedgerRow)
)

_NAMES = [name for name, _ in _FIELDS]
_GET_ALL = operator.attrgetter(*_NAMES)
_I_TIME, _I_COST, _I_SAVED, _I_TTL, _I_ESTIMATED, _I_EXPECTED = (
    _NAMES.index(n)
    for n in (
        "time",
        "cost_usd",
        "saved_usd",
        "ttl_split_assumed",
        "usage_estimated",
        "expected_saving_usd",
    )
)

#: Column names of the usage table, in the order of :meth:`LedgerRow.to_db`.
COLUMNS: tuple[str, ...] = tuple(column for _, column in _FIELDS)

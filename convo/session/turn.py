"""The values a session's turn is made of: the request in flight and the keep-alive policy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs

from convo.emulator.diagnostics import DIAGNOSTICS_BETA  # the API's beta name, defined once
from convo.layout import RenderedRequest
from convo.limits import Reservation
from convo.policy import Decision
from convo.retry import AttemptRecord
from convo.routing import RouteDecision
from convo.sdk import Outcome
from convo.tracker import Prediction
from convo.usage import Usage
from convo.warm import Flight, WarmKey
from convo.wire import Request

__all__ = ["KeepAlive", "Pending", "user_message"]


def _optional_money(value: Decimal | float | str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        money = Decimal(str(value))
    except InvalidOperation:
        money = Decimal("NaN")
    if not money.is_finite() or money < 0:
        raise ValueError(
            f"max_cost_usd must be a finite, non-negative number of USD such as '0.10', "
            f"got {value!r}"
        )
    return money


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"KeepAlive.{attribute.name} must be > 0 seconds, got {value}")


@attrs.frozen
class KeepAlive:
    """Re-warm a session's cache before its TTL ends, while the session is in use.

    Args:
        margin_s: Re-warm when the entry has less than this many seconds left. Tick more
            often than this, or a tick can step over the whole window.
        active_for_s: A session counts as in use for this long after its last turn.
        max_cost_usd: Stop re-warming once keep-alive has spent this much (``None``: no cap).

    A keep-alive re-warm sends the conversation so far (or only the static prefix, when
    that is all worth keeping) with ``max_tokens: 0``: it reads, and so refreshes, what is
    cached, for 0.1× the input price of what it reads. Within these limits a re-warm is sent
    only when its expected saving is positive (:func:`convo.policy.keep_alive`, from the
    gaps observed in this conversation and every other on the same prefix); the decision
    and its expected saving go into the request's ledger row. ``docs/economics.md`` has
    the arithmetic.

    .. versionchanged:: 0.3
       Re-warms are sent by expected value, not whenever the entry is about to lapse.

    .. versionadded:: 0.1
    """

    margin_s: float = attrs.field(default=60.0, kw_only=True, validator=_positive)
    active_for_s: float = attrs.field(default=900.0, kw_only=True, validator=_positive)
    max_cost_usd: Decimal | None = attrs.field(
        default=None, kw_only=True, converter=_optional_money
    )


@attrs.define
class Pending:
    """One request between planning and its answer (internal to the shells)."""

    rendered: RenderedRequest
    prediction: Prediction
    turn: int
    warm_key: WarmKey
    prefix_position: int | None
    user_appended: bool
    purpose: str = "turn"  # "turn", "warm" or "keep_alive"
    flight: Flight | None = None
    reservation: Reservation | None = None
    records: list[AttemptRecord] = attrs.field(factory=list)
    #: When the claim recorded this request's expected read of the shared prefix.
    refresh_at: float | None = None
    #: The latest attempt's outcome (its facts go into that attempt's ledger row).
    outcome: Outcome | None = None
    #: What failed attempts were billed so far (a stream's message_start, a cut stream).
    billed: Usage = attrs.field(factory=Usage.zero)
    #: Whether the registry was told this writer's response began (or was abandoned).
    began: bool = False
    #: Whether an attempt went out (the server may have counted it).
    sent: bool = False
    #: Keep a cut stream's partial reply in the history.
    keep_partial: bool = False
    #: The policy's decision that caused a warm or keep-alive request (convo.policy).
    decision: Decision | None = None
    #: The router's decision for a routed turn (convo.routing).
    route: RouteDecision | None = None

    @property
    def body(self) -> dict[str, Any]:
        """The request body to send."""
        return self.rendered.body

    @property
    def call_arguments(self) -> Request:
        """The request to send: the body (with its fields already encoded, see
        :mod:`convo.wire`), plus the beta header diagnostics needs."""
        rendered = self.rendered
        headers = {"anthropic-beta": DIAGNOSTICS_BETA} if "diagnostics" in rendered.body else {}
        return Request(rendered.body, rendered.encoded, headers)

    @property
    def max_tokens(self) -> int:
        """The body's ``max_tokens``."""
        return int(self.rendered.body["max_tokens"])


def user_message(content: str | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Validate *content* for a user turn (before anything is spent) and wrap it."""
    if isinstance(content, str):
        if not content.strip():
            raise ValueError("send() needs non-empty text; got an empty or blank string")
        return {"role": "user", "content": content}
    if isinstance(content, Sequence) and content and all(isinstance(b, Mapping) for b in content):
        return {"role": "user", "content": [dict(b) for b in content if isinstance(b, Mapping)]}
    raise TypeError(
        "send() takes a non-empty str or a non-empty list of content-block dicts, "
        f"got {type(content).__name__}"
    )

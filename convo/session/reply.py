"""What a turn gives back (:class:`Reply`) and what a session has added up (:class:`Stats`)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs

from convo.pricing import Cost
from convo.retry import AttemptRecord
from convo.routing import RouteDecision
from convo.tracker import CacheOutcome
from convo.usage import Usage

__all__ = ["Reply", "Stats"]


@attrs.frozen
class Reply:
    """The result of one turn.

    Attributes:
        text: The reply's text blocks joined (empty for a pre-warm or a tool call).
        message: The SDK's ``Message``, kept whole.
        usage: The four input kinds and output, once each.
        cost: True cost, saving from caching, and ITPM weight.
        cache: Predicted versus observed cache use, and the reason for any shortfall.
        attempts: Every attempt's status, wait and request id (the last one succeeded).
        request_id: The successful attempt's ``request-id``.
        latency_s: Wall time of the successful attempt.
        turn: This session's turn number, from 1 (pre-warms count as 0).
        limiter_wait_s: Seconds the request waited for the client-side rate limiter.
        warm_role: The request's part in the shared prefix's single flight: ``"writer"``
            (it wrote the prefix), ``"reader"`` (it read what another wrote, or waited for
            it), or ``None`` (no shared prefix breakpoint, or a keep-alive re-warm).
        purpose: ``"turn"``, ``"warm"`` or ``"keep_alive"``.
        route: With a :class:`convo.Router`: the model the turn went to, the tier it needed
            and why (:class:`convo.routing.RouteDecision`); ``None`` without a router.

    .. versionadded:: 0.1
    """

    text: str
    message: Any = attrs.field(repr=False)
    usage: Usage
    cost: Cost
    cache: CacheOutcome = attrs.field(repr=False)
    attempts: tuple[AttemptRecord, ...]
    request_id: str | None
    latency_s: float
    turn: int
    limiter_wait_s: float = 0.0
    warm_role: str | None = None
    purpose: str = "turn"
    route: RouteDecision | None = attrs.field(default=None, repr=False)

    @property
    def reason(self) -> str:
        """The cache reason (``hit``, ``cold``, ``expired``, ...)."""
        return str(self.cache.reason)


@attrs.frozen
class Stats:
    """Totals over a session's replies (pre-warms included).

    Attributes:
        requests: Replies received.
        attempts: API attempts made (retries included).
        usage: Summed usage.
        cost_usd: Summed cost, or ``None`` when any reply was unpriced.
        saved_usd: Summed saving from caching, or ``None`` when any reply was unpriced.
        rate_limit_tokens: Summed ITPM weight.
        hit_requests: Replies that read anything from cache.
        reasons: How often each cache reason occurred.

    .. versionadded:: 0.1
    """

    requests: int = 0
    attempts: int = 0
    usage: Usage = attrs.field(factory=Usage.zero)
    cost_usd: Decimal | None = Decimal(0)
    saved_usd: Decimal | None = Decimal(0)
    rate_limit_tokens: int = 0
    hit_requests: int = 0
    reasons: Mapping[str, int] = attrs.field(factory=dict)

    @property
    def token_hit_rate(self) -> float | None:
        """``cache_read / total_input`` over the session (``None`` with no input)."""
        total = self.usage.total_input
        return self.usage.cache_read / total if total else None

    @property
    def request_hit_rate(self) -> float | None:
        """Share of replies that read anything from cache (``None`` with no replies)."""
        return self.hit_requests / self.requests if self.requests else None

    def add(self, reply: Reply) -> Stats:
        """Return these totals with *reply* added."""
        reasons = dict(self.reasons)
        reason = str(reply.cache.reason)
        reasons[reason] = reasons.get(reason, 0) + 1

        def plus(total: Decimal | None, value: Decimal | None) -> Decimal | None:
            return None if total is None or value is None else total + value

        return Stats(
            requests=self.requests + 1,
            attempts=self.attempts + len(reply.attempts),
            usage=self.usage + reply.usage,
            cost_usd=plus(self.cost_usd, reply.cost.usd),
            saved_usd=plus(self.saved_usd, reply.cost.saved_usd),
            rate_limit_tokens=self.rate_limit_tokens + reply.cost.rate_limit_tokens,
            hit_requests=self.hit_requests + (reply.usage.cache_read > 0),
            reasons=reasons,
        )

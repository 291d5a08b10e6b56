"""The values the tracker speaks in: entries, predictions, outcomes, and the reasons."""

from __future__ import annotations

from typing import Literal, Protocol

import attrs

from convo.fingerprint import Fingerprint

__all__ = [
    "REASONS",
    "SERVER_DIVERGENCES",
    "CacheEntry",
    "CacheOutcome",
    "Point",
    "Prediction",
    "Reason",
    "UsageLike",
]

Reason = Literal[
    "hit",
    "cold",
    "expired",
    "below_minimum",
    "model_changed",
    "tools_changed",
    "system_changed",
    "messages_changed",
    "lookback_exceeded",
    "evicted_or_unknown",
]
#: Every reason a prediction or an outcome can carry.
REASONS: tuple[Reason, ...] = Reason.__args__  # type: ignore[attr-defined]

#: The server's ``diagnostics.cache_miss_reason`` types that name a divergence.
SERVER_DIVERGENCES = ("model_changed", "system_changed", "tools_changed", "messages_changed")


class UsageLike(Protocol):
    """The usage fields the tracker reads (``convo.Usage`` has them)."""

    @property
    def input(self) -> int: ...
    @property
    def cache_read(self) -> int: ...
    @property
    def cache_write_5m(self) -> int: ...
    @property
    def cache_write_1h(self) -> int: ...


@attrs.frozen
class CacheEntry:
    """One cache entry the tracker believes exists on the server.

    Attributes:
        model: The model whose cache holds it.
        key: The cumulative key of the prefix it caches (16 bytes).
        tokens: Estimated tokens of that prefix.
        ttl: ``"5m"`` or ``"1h"``.
        expires_at: When it stops being readable, on the tracker's clock.
        readable_from: When the response that wrote it began (reads need it begun).
    """

    model: str
    key: bytes = attrs.field(repr=lambda k: k.hex())
    tokens: int
    ttl: str
    expires_at: float
    readable_from: float

    def live(self, now: float) -> bool:
        """Whether a request starting at *now* can read it."""
        return self.readable_from <= now < self.expires_at


@attrs.frozen
class Point:
    position: int
    ttl: str


@attrs.frozen
class Prediction:
    """What a request is expected to read and write, made before it is sent.

    Token figures are calibrated estimates (exact against the emulator). ``reason`` names
    why the read falls short of the deepest entry the previous request left, or ``hit``.

    Attributes:
        model: The model the request is for.
        at: Request start on the tracker's clock (lifetimes count from it).
        cache_read: Expected ``cache_read_input_tokens``.
        cache_write_5m: Expected 5-minute cache writes.
        cache_write_1h: Expected 1-hour cache writes.
        input: Expected ``input_tokens`` (neither read nor written).
        reason: One of :data:`REASONS`.
        detail: More about the reason (``"static"``/``"suffix"`` for ``system_changed``,
            ``"settings"`` when request settings re-keyed the messages, ...).
        message_index: The first changed message, for ``messages_changed``.
        hit: The block position read from, or -1.
        writes: Breakpoints expected to write, as ``(position, ttl)``.
        factor: The calibration factor applied to the raw estimate.
        fingerprint: The request's fingerprint.
    """

    model: str
    at: float
    cache_read: int
    cache_write_5m: int
    cache_write_1h: int
    input: int
    reason: Reason
    detail: str = ""
    message_index: int | None = None
    hit: int = -1
    writes: tuple[tuple[int, str], ...] = ()
    factor: float = 1.0
    fingerprint: Fingerprint | None = attrs.field(default=None, eq=False, repr=False)
    breakpoints: tuple[Point, ...] = attrs.field(default=(), eq=False, repr=False)
    minimum: int = attrs.field(default=0, repr=False)

    @property
    def cache_write(self) -> int:
        """Expected cache writes of both TTLs."""
        return self.cache_write_5m + self.cache_write_1h

    @property
    def total_input(self) -> int:
        """Expected total input: input + cache reads + cache writes."""
        return self.input + self.cache_read + self.cache_write


@attrs.frozen
class CacheOutcome:
    """Predicted against observed cache use for one request, with the reason.

    Attributes:
        predicted: The prediction made before the call.
        cache_read: Observed cache reads.
        cache_write_5m: Observed 5-minute writes.
        cache_write_1h: Observed 1-hour writes.
        input: Observed uncached input.
        reason: One of :data:`REASONS` (``evicted_or_unknown`` when the server read less
            than this process believed it could; in ``docs/design.md`` this is "unknown").
        detail: More about the reason (see :class:`Prediction`).
        message_index: The first changed message, for ``messages_changed``.
        server_reason: ``diagnostics.cache_miss_reason.type`` if the server gave one.
        server_missed_tokens: The server's ``cache_missed_input_tokens`` estimate.
        agrees: Whether the server's reason matches the local one (``None`` when the server
            gave no verdict to compare).
        hit: The block position actually read from, or -1.
        deepest: The deepest block position now cached for this conversation, or -1.

    .. versionadded:: 0.1
    """

    predicted: Prediction
    cache_read: int
    cache_write_5m: int
    cache_write_1h: int
    input: int
    reason: Reason
    detail: str = ""
    message_index: int | None = None
    server_reason: str | None = None
    server_missed_tokens: int | None = None
    agrees: bool | None = None
    hit: int = -1
    deepest: int = -1

    @property
    def exact(self) -> bool:
        """Whether all four observed input figures equal the prediction."""
        p = self.predicted
        return (self.cache_read, self.cache_write_5m, self.cache_write_1h, self.input) == (
            p.cache_read,
            p.cache_write_5m,
            p.cache_write_1h,
            p.input,
        )

    @property
    def disagrees(self) -> bool:
        """True when the server named a different reason than the tracker."""
        return self.agrees is False

"""The in-process rate limiter: one budget shared by every thread and task of a process."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import ClassVar

from convo.limits.core import (
    DEFAULT_PENALTY_S,
    KINDS,
    Buckets,
    Reservation,
    check_amount,
    check_limit,
    parse_headers,
    sleep_out,
    sleep_out_async,
)

__all__ = ["RateLimiter"]


class RateLimiter:
    """Client-side token buckets for RPM, ITPM and OTPM, continuously refilled.

    Each bucket holds one minute's allowance and refills at ``limit / 60`` per second, as
    the API's do. :meth:`reserve` takes from every bucket at once (the level may go into
    debt) and says how long to wait; every later caller waits behind the debt of earlier
    ones, so waiters are served first come, first served without a queue. :meth:`acquire`
    and :meth:`acquire_async` reserve and then sleep. Responses correct the buckets:
    :meth:`settle` with the actual usage (and, in the same step, the server's
    ``anthropic-ratelimit-*`` headers), :meth:`observe_headers` with headers alone,
    :meth:`observe_rate_limited` after a 429. A reservation that was never sent is given
    back whole with :meth:`release`; ``acquire`` and ``acquire_async`` do that themselves
    when they are interrupted or cancelled while waiting.

    Every method has an ``_async`` twin with the same meaning, so one caller can drive this
    limiter and :class:`~convo.limits.RedisRateLimiter` alike; here the twins do no I/O and
    only take the lock for microseconds.

    Thread-safe: one lock guards the state and is never held while sleeping. It is also
    safe for many tasks on one event loop, because nothing awaits with the lock held; no
    asyncio primitive is needed (the sleeps are independent).

    Args:
        rpm: Requests per minute, or ``None`` for no limit (learned from headers).
        itpm: Input tokens per minute (input plus cache writes; plus cache reads only for
            models whose reads count), or ``None``.
        otpm: Output tokens per minute, or ``None``.
        clock: Monotonic seconds, for the buckets (inject a fake one in tests).
        wall_clock: Seconds since the epoch, to read the RFC 3339 ``reset`` headers.
        latency: Seconds allowed from a release to the server's admission. A server bucket
            that is full meanwhile does not refill, so a take from a (nearly) full bucket
            also debits up to ``limit / 60 × latency``; larger is safer, 0 trusts timing.

    Example::

        limiter = RateLimiter(rpm=50, itpm=30_000, otpm=8_000)
        grant = limiter.acquire(input_tokens=1_200, output_tokens=512)
        raw = client.messages.with_raw_response.create(...)
        usage = raw.parse().usage
        limiter.settle(grant, input_tokens=usage.input_tokens
                       + usage.cache_creation_input_tokens, output_tokens=usage.output_tokens,
                       headers=raw.headers)

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       ``release``, ``settle(headers=...)`` and the ``_async`` twins; a cancelled
       ``acquire_async`` gives its reservation back.
    """

    _shared: ClassVar[dict[str, RateLimiter]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        *,
        rpm: int | None = None,
        itpm: int | None = None,
        otpm: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        latency: float = 1.0,
    ) -> None:
        if latency < 0:
            raise ValueError(f"latency={latency}: pass the seconds a request takes to arrive, ≥ 0")
        limits = (check_limit("rpm", rpm), check_limit("itpm", itpm), check_limit("otpm", otpm))
        self._limits = limits
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._buckets = Buckets(dict(zip(KINDS, limits, strict=True)), clock(), latency)
        self._tickets = itertools.count(1)

    def __repr__(self) -> str:
        rpm, itpm, otpm = self._limits
        return f"RateLimiter(rpm={rpm}, itpm={itpm}, otpm={otpm})"

    @property
    def limits(self) -> dict[str, int | None]:
        """The effective per-minute capacity of each bucket (configured or learned)."""
        with self._lock:
            return {kind: self._buckets.capacity(kind) for kind in KINDS}

    def levels(self) -> dict[str, float]:
        """What each limited bucket holds now (negative: debt), for inspection and tests."""
        with self._lock:
            self._buckets.refill(self._clock())
            return dict(self._buckets.level)

    def reserve(self, *, input_tokens: int, output_tokens: int = 0) -> Reservation:
        """Take one request and the tokens from every bucket now; never blocks.

        Args:
            input_tokens: ITPM weight of the request (input plus cache writes; plus cache
                reads only where the model counts them).
            output_tokens: Expected output (e.g. ``max_tokens``), corrected by :meth:`settle`.

        Returns:
            The reservation; its ``wait`` is how long the caller must wait before sending.
            A request bigger than a whole minute's allowance waits for a full bucket.
        """
        amounts = (1, check_amount("input_tokens", input_tokens))
        output = check_amount("output_tokens", output_tokens)
        with self._lock:
            now = self._clock()
            ticket = str(next(self._tickets))
            wait, in_flight = self._buckets.reserve(now, (*amounts, output), ticket)
        return Reservation(input_tokens, output, wait, now, ticket, in_flight)

    async def reserve_async(self, *, input_tokens: int, output_tokens: int = 0) -> Reservation:
        """:meth:`reserve` (no I/O here; the twin of :meth:`RedisRateLimiter.reserve_async`)."""
        return self.reserve(input_tokens=input_tokens, output_tokens=output_tokens)

    def _hold_until(self) -> float:
        with self._lock:
            return self._buckets.blocked_until

    async def _hold_until_async(self) -> float:
        return self._hold_until()

    def acquire(
        self,
        *,
        input_tokens: int,
        output_tokens: int = 0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Reservation:
        """Reserve, then sleep until the request may be sent.

        A 429 observed while sleeping extends the wait: nothing is released before its hold
        ends. The returned ``wait`` is the total slept. Interrupted while sleeping (any
        exception, ``KeyboardInterrupt`` included), it releases the reservation first.
        """
        grant = self.reserve(input_tokens=input_tokens, output_tokens=output_tokens)
        try:
            return sleep_out(grant, self._hold_until, sleep)
        except BaseException:
            self.release(grant)
            raise

    async def acquire_async(
        self,
        *,
        input_tokens: int,
        output_tokens: int = 0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> Reservation:
        """Like :meth:`acquire`, awaiting *sleep* instead of blocking the thread.

        Cancelled (or failing) while it waits, it releases the reservation before the
        ``CancelledError`` leaves: the buckets are as if it had never asked.
        """
        grant = self.reserve(input_tokens=input_tokens, output_tokens=output_tokens)
        try:
            return await sleep_out_async(grant, self._hold_until_async, sleep)
        except BaseException:
            self.release(grant)
            raise

    @staticmethod
    def _deltas(reservation: Reservation, input_tokens: int, output_tokens: int) -> tuple[int, int]:
        return (
            check_amount("input_tokens", input_tokens) - reservation.input_tokens,
            check_amount("output_tokens", output_tokens) - reservation.output_tokens,
        )

    def settle(
        self,
        reservation: Reservation,
        *,
        input_tokens: int,
        output_tokens: int,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Correct a reservation with the actual usage: refund or charge the difference.

        Args:
            reservation: What :meth:`reserve` or :meth:`acquire` returned.
            input_tokens: The actual ITPM weight (``input_tokens +
                cache_creation_input_tokens``, plus reads where they count).
            output_tokens: The actual ``output_tokens``.
            headers: The response's headers, if any: synced in the same step as
                :meth:`observe_headers` would (after the correction).
        """
        deltas = self._deltas(reservation, input_tokens, output_tokens)
        readings = None if headers is None else parse_headers(headers, wall_now=self._wall_clock())
        with self._lock:
            now = self._clock()
            self._buckets.settle(now, deltas)
            if readings:
                self._buckets.sync(now, readings)

    async def settle_async(
        self,
        reservation: Reservation,
        *,
        input_tokens: int,
        output_tokens: int,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """:meth:`settle` (no I/O here)."""
        self.settle(
            reservation, input_tokens=input_tokens, output_tokens=output_tokens, headers=headers
        )

    def release(self, reservation: Reservation) -> None:
        """Give a reservation back whole: it was never sent (cancelled, or failed before).

        The request, its tokens and its in-flight debit return to the buckets (capped at
        capacity), and it leaves the queue of reservations not yet sent. For a request
        that *was* sent and failed, :meth:`settle` it with 0 tokens instead: the server
        counted the request. Release or settle each reservation once.
        """
        amounts = (1, reservation.input_tokens, reservation.output_tokens)
        with self._lock:
            self._buckets.release(self._clock(), amounts, reservation.in_flight, reservation.ticket)

    async def release_async(self, reservation: Reservation) -> None:
        """:meth:`release` (no I/O here)."""
        self.release(reservation)

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Correct the buckets from a response's ``anthropic-ratelimit-*`` headers.

        A lower ``remaining`` than ours is adopted (the server sees other clients too); a
        limit is learned for a bucket that had none configured, and a server limit lower
        than the configured one wins. A configured limit below the server's is kept: it is
        the share this limiter was given.
        """
        readings = parse_headers(headers, wall_now=self._wall_clock())
        if not readings:
            return
        with self._lock:
            self._buckets.sync(self._clock(), readings)

    async def observe_headers_async(self, headers: Mapping[str, str]) -> None:
        """:meth:`observe_headers` (no I/O here)."""
        self.observe_headers(headers)

    def observe_rate_limited(self, retry_after: float | None) -> None:
        """Record a 429: release nothing more until ``retry_after`` seconds from now.

        Args:
            retry_after: The response's ``retry-after`` in seconds, or ``None`` when it had
                none (then a default of a few seconds applies).
        """
        if retry_after is None:
            retry_after = DEFAULT_PENALTY_S
        if retry_after < 0:
            raise ValueError(f"retry_after={retry_after}: pass seconds ≥ 0, or None")
        with self._lock:
            self._buckets.hold(self._clock(), retry_after)

    async def observe_rate_limited_async(self, retry_after: float | None) -> None:
        """:meth:`observe_rate_limited` (no I/O here)."""
        self.observe_rate_limited(retry_after)

    @classmethod
    def shared(cls, key: str, **limits: int | None) -> RateLimiter:
        """Return the process-wide limiter for *key* (e.g. a model's rate-limit class).

        The first call creates it with *limits* (``rpm``, ``itpm``, ``otpm``; none means
        learn them from headers); later calls return the same object. Asking again with
        different configured limits is a ``ValueError``: use another key.
        """
        if not key:
            raise ValueError("shared() needs a non-empty key, such as the model's class")
        unknown = set(limits) - {"rpm", "itpm", "otpm"}
        if unknown:
            raise TypeError(f"unknown limits {sorted(unknown)}; use rpm, itpm and otpm")
        with cls._shared_lock:
            found = cls._shared.get(key)
            if found is None:
                found = cls._shared[key] = cls(
                    rpm=limits.get("rpm"), itpm=limits.get("itpm"), otpm=limits.get("otpm")
                )
                return found
        asked = tuple(limits.get(k) for k in ("rpm", "itpm", "otpm"))
        if limits and asked != found._limits:
            raise ValueError(
                f"RateLimiter.shared({key!r}) already exists with {found!r}; "
                f"it cannot be changed to {asked}. Use another key, or pass no limits"
            )
        return found

"""One rate budget shared by many processes and hosts, kept in Redis.

Every operation is one atomic Lua script (:data:`~convo.limits.lua.SCRIPT`) that mirrors
:class:`convo.limits.core.Buckets` operation for operation: refill, take (into debt), wait,
settle (with the response's header sync in the same script), release, header sync and the
429 hold. Time is Redis's own ``TIME`` by default, so processes on hosts whose clocks
disagree still share one timeline; tests inject a clock instead, and then every caller of
a key must use that same clock. Keys carry a prefix and a hash tag (both keys of a budget
land on one Redis Cluster slot) and expire once the buckets would be full again plus
``idle_ttl``: an expired budget is a full one, which is what it would be by then.

Redis trouble degrades, never breaks: when a call fails with a Redis or socket error the
limiter carries on with an in-process :class:`~convo.limits.RateLimiter` of the same limits
(one warning on the ``convo`` logger), tries Redis again at most every ``probe_interval``
seconds, and rejoins the shared budget when it answers. No redis exception leaves a method.

``redis`` is an optional dependency (``pip install 'convo[redis]'``), imported only when a
:class:`RedisRateLimiter` is built, so ``import convo`` works without it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from convo.limits.core import (
    DEFAULT_PENALTY_S,
    KINDS,
    Reservation,
    check_amount,
    check_limit,
    parse_headers,
    sleep_out,
    sleep_out_async,
)
from convo.limits.local import RateLimiter
from convo.limits.lua import SCRIPT
from convo.limits.redis_link import DEFAULT_MAX_CONNECTIONS, RedisLink, import_redis

if TYPE_CHECKING:
    import redis as redis_module
    import redis.asyncio as redis_asyncio

__all__ = ["DEFAULT_MAX_CONNECTIONS", "SCRIPT", "RedisRateLimiter"]

#: Marks the tickets of reservations the local fallback made, so that their settle and
#: release go back to it even after Redis has returned.
_LOCAL = "local-"


def _arg(value: str | float | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else repr(value)


class RedisRateLimiter:
    """A :class:`~convo.limits.RateLimiter` whose budget lives in Redis, shared by processes.

    Same methods and semantics as ``RateLimiter``; each call is one atomic Lua script (one
    round trip), so reservations from every process on one *key* queue behind each
    other's debt, FIFO by arrival at Redis. The ``_async`` methods await ``redis.asyncio``
    and never block the event loop.

    Guarantees:

    * A cancelled :meth:`acquire_async` or :meth:`reserve_async`, at any point (inside
      the Redis call or while waiting), gives its reservation back before the
      ``CancelledError`` leaves it; a Redis call already sent is let finish (shielded) so
      that its connection stays usable and its result is known, then undone.
    * Redis unreachable (any ``redis`` or socket error): the limiter carries on with a
      local :class:`~convo.limits.RateLimiter` of the same limits, logs one warning on
      ``logging.getLogger("convo")``, tries Redis again at most every *probe_interval*
      seconds (on *clock*, or the monotonic clock) and rejoins it when it answers (an
      ``INFO`` record). No redis exception leaves any method.
    * Built from a URL, it uses bounded *blocking* pools (``BlockingConnectionPool``,
      sync and asyncio) of *max_connections* each: more concurrent callers than
      connections wait for one instead of failing.

    Args:
        redis: A ``redis.Redis`` client or a URL (``redis://127.0.0.1:6379/0``).
        key: The budget's name, e.g. ``"org-123:sonnet"``; every process sharing a rate
            limit uses the same key and the same limits.
        rpm: Requests per minute, or ``None`` (learned from headers).
        itpm: Input tokens per minute, or ``None``.
        otpm: Output tokens per minute, or ``None``.
        prefix: Prepended to every Redis key.
        idle_ttl: Seconds a budget's keys outlive the moment its buckets are full again.
        clock: Seconds, passed to the script instead of Redis ``TIME`` (tests); ``None``
            (the default) uses Redis's clock, the one every host agrees on.
        wall_clock: Seconds since the epoch, to read the RFC 3339 ``reset`` headers.
        async_redis: A ``redis.asyncio.Redis`` for the ``_async`` methods; by default one
            is built from the URL or the sync client's connection settings (on a blocking
            pool of *max_connections*), lazily, inside the running loop.
        latency: Seconds allowed from a release to the server's admission (see
            :class:`~convo.limits.RateLimiter`).
        max_connections: Size of each connection pool this limiter builds (not of a
            client it is given).
        probe_interval: Seconds between attempts to reach Redis again while degraded.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       Cancellation safety, the local fallback, blocking pools (``max_connections``,
       ``probe_interval``), ``release``, ``settle(headers=...)``, ``limits``, ``degraded``
       and the ``_async`` twins of every operation.
    """

    def __init__(
        self,
        redis: redis_module.Redis | str,
        *,
        key: str,
        rpm: int | None = None,
        itpm: int | None = None,
        otpm: int | None = None,
        prefix: str = "convo:limits:",
        idle_ttl: float = 60.0,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
        async_redis: redis_asyncio.Redis | None = None,
        latency: float = 1.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        probe_interval: float = 5.0,
    ) -> None:
        import_redis()
        if not key:
            raise ValueError("RedisRateLimiter needs a non-empty key naming the shared budget")
        if idle_ttl <= 0:
            raise ValueError(f"idle_ttl={idle_ttl}: pass a positive number of seconds")
        if latency < 0:
            raise ValueError(f"latency={latency}: pass the seconds a request takes to arrive, ≥ 0")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError("max_connections must be an int")
        if max_connections < 1:
            raise ValueError(f"max_connections={max_connections}: pass at least 1")
        if probe_interval < 0:
            raise ValueError(f"probe_interval={probe_interval}: pass seconds ≥ 0")
        self._limits = (
            check_limit("rpm", rpm),
            check_limit("itpm", itpm),
            check_limit("otpm", otpm),
        )
        self._keys = [f"{prefix}{{{key}}}:buckets", f"{prefix}{{{key}}}:pending"]
        self._idle_ttl = idle_ttl
        self._latency = latency
        self._clock = clock
        self._wall_clock = wall_clock
        self._link = RedisLink(
            redis,
            script=SCRIPT,
            keys=self._keys,
            owner=self,
            async_redis=async_redis,
            max_connections=max_connections,
            probe_clock=clock or time.monotonic,
            probe_interval=probe_interval,
        )
        self._fallback = self._new_fallback()

    def _new_fallback(self) -> RateLimiter:
        rpm, itpm, otpm = self._limits
        return RateLimiter(
            rpm=rpm,
            itpm=itpm,
            otpm=otpm,
            clock=self._clock or time.monotonic,
            wall_clock=self._wall_clock,
            latency=self._latency,
        )

    def __repr__(self) -> str:
        rpm, itpm, otpm = self._limits
        return f"RedisRateLimiter(key={self._keys[0]!r}, rpm={rpm}, itpm={itpm}, otpm={otpm})"

    @property
    def keys(self) -> tuple[str, str]:
        """The two Redis keys of this budget (state hash, pending set)."""
        return self._keys[0], self._keys[1]

    @property
    def degraded(self) -> bool:
        """Whether Redis was unreachable at the last try and the local fallback serves."""
        return self._link.degraded

    # -- talking to Redis, or not -----------------------------------------------------------

    def _argv(self, op: str, args: Sequence[str | float | None]) -> list[str]:
        now = None if self._clock is None else self._clock()
        head = [op, _arg(now), *(_arg(v) for v in self._limits), repr(self._idle_ttl)]
        head.append(repr(self._latency))
        return head + [_arg(a) for a in args]

    def _call(self, op: str, *args: str | float | None) -> list[str] | None:
        """Run *op* in Redis; ``None`` when Redis is down (the caller uses the fallback)."""
        return self._link.call(self._argv(op, args))

    async def _acall(self, op: str, *args: str | float | None) -> list[str] | None:
        """:meth:`_call` through redis.asyncio, shielded from the caller's cancellation."""
        return await self._link.acall(self._argv(op, args))

    # -- inspection -------------------------------------------------------------------------

    def _read(self, found: list[str] | None) -> tuple[dict[str, float], dict[str, int | None]]:
        if found is None:
            return self._fallback.levels(), self._fallback.limits
        levels = {kind: float(v) for kind, v in zip(KINDS, found[:3], strict=True) if v}
        limits = {
            kind: int(float(c)) if c else None for kind, c in zip(KINDS, found[3:], strict=True)
        }
        return levels, limits

    def levels(self) -> dict[str, float]:
        """What each limited bucket holds now (negative: debt), for inspection and tests.

        While degraded: the local fallback's levels.
        """
        return self._read(self._call("levels"))[0]

    async def levels_async(self) -> dict[str, float]:
        """:meth:`levels` through the asyncio Redis client."""
        return self._read(await self._acall("levels"))[0]

    @property
    def limits(self) -> dict[str, int | None]:
        """The effective per-minute capacity of each bucket (configured or learned)."""
        return self._read(self._call("levels"))[1]

    # -- reserving --------------------------------------------------------------------------

    @staticmethod
    def _amounts(input_tokens: int, output_tokens: int) -> tuple[int, int, int]:
        return (
            1,
            check_amount("input_tokens", input_tokens),
            check_amount("output_tokens", output_tokens),
        )

    def _local_grant(self, amounts: tuple[int, int, int]) -> Reservation:
        grant = self._fallback.reserve(input_tokens=amounts[1], output_tokens=amounts[2])
        return attrs.evolve(grant, ticket=_LOCAL + grant.ticket)

    @staticmethod
    def _grant(amounts: tuple[int, int, int], ticket: str, found: list[str]) -> Reservation:
        wait, at, *debits = (float(x) for x in found)
        return Reservation(
            amounts[1], amounts[2], wait, at, ticket, (debits[0], debits[1], debits[2])
        )

    def reserve(self, *, input_tokens: int, output_tokens: int = 0) -> Reservation:
        """Take one request and the tokens from the shared buckets now; never blocks.

        See :meth:`convo.limits.RateLimiter.reserve`; ``at`` is on the script's clock.
        """
        amounts = self._amounts(input_tokens, output_tokens)
        ticket = uuid.uuid4().hex
        found = self._call("reserve", ticket, *amounts)
        if found is None:
            return self._local_grant(amounts)
        return self._grant(amounts, ticket, found)

    async def _reserve_now(self, amounts: tuple[int, int, int]) -> Reservation:
        # Not through _acall: reserve_async shields this whole coroutine already.
        ticket = uuid.uuid4().hex
        found = None
        if self._link.try_redis():
            found = await self._link.send(self._argv("reserve", (ticket, *amounts)))
        if found is None:
            return self._local_grant(amounts)
        return self._grant(amounts, ticket, found)

    async def reserve_async(self, *, input_tokens: int, output_tokens: int = 0) -> Reservation:
        """:meth:`reserve` through the asyncio Redis client.

        Cancelled while Redis works, it lets the script finish and releases what it took
        before the ``CancelledError`` leaves.
        """
        amounts = self._amounts(input_tokens, output_tokens)
        reserving = self._link.spawn(self._reserve_now(amounts))
        try:
            return await asyncio.shield(reserving)
        except BaseException:
            await self._undo(reserving)
            raise

    async def _undo(self, reserving: asyncio.Future[Reservation]) -> None:
        """Release what *reserving* took once it is done, even if cancelled again meanwhile
        (the release then finishes in the background)."""

        async def undo() -> None:
            try:
                grant = await reserving
            except BaseException:  # nothing was reserved, nothing to undo
                return
            await self.release_async(grant)

        await asyncio.shield(self._link.spawn(undo()))

    def _hold_until(self, grant: Reservation) -> float:
        if not grant.ticket.startswith(_LOCAL):
            found = self._call("peek")
            if found is not None:
                return float(found[0])
        return self._fallback._hold_until()

    async def _hold_until_async(self, grant: Reservation) -> float:
        if not grant.ticket.startswith(_LOCAL):
            found = await self._acall("peek")
            if found is not None:
                return float(found[0])
        return self._fallback._hold_until()

    def acquire(
        self,
        *,
        input_tokens: int,
        output_tokens: int = 0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Reservation:
        """Reserve, then sleep until the request may be sent (a 429 meanwhile extends it).

        Interrupted while sleeping (``KeyboardInterrupt`` included), it releases first.
        """
        grant = self.reserve(input_tokens=input_tokens, output_tokens=output_tokens)
        try:
            return sleep_out(grant, lambda: self._hold_until(grant), sleep)
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
        """Like :meth:`acquire`, awaiting Redis and *sleep* instead of blocking.

        Cancelled at any point (inside a Redis call or while waiting), it gives the
        reservation back before the ``CancelledError`` leaves. One round trip when there
        is nothing to wait for; one more after a wait, to see a 429 hold set meanwhile.
        """
        grant = await self.reserve_async(input_tokens=input_tokens, output_tokens=output_tokens)

        async def hold_until() -> float:
            return await self._hold_until_async(grant)

        try:
            return await sleep_out_async(grant, hold_until, sleep)
        except BaseException:
            await asyncio.shield(self._link.spawn(self.release_async(grant)))
            raise

    # -- settling and releasing -------------------------------------------------------------

    def _settle_args(
        self,
        reservation: Reservation,
        input_tokens: int,
        output_tokens: int,
        headers: Mapping[str, str] | None,
    ) -> list[float | None]:
        args: list[float | None] = [
            check_amount("input_tokens", input_tokens) - reservation.input_tokens,
            check_amount("output_tokens", output_tokens) - reservation.output_tokens,
        ]
        synced = None if headers is None else self._sync_args(headers)
        return args + (synced or [])

    def _settle_locally(
        self,
        reservation: Reservation,
        input_tokens: int,
        output_tokens: int,
        headers: Mapping[str, str] | None,
    ) -> None:
        if reservation.ticket.startswith(_LOCAL):
            local = attrs.evolve(reservation, ticket=reservation.ticket[len(_LOCAL) :])
        else:
            # Reserved in Redis, which is gone: the fallback never took it, so it is only
            # charged what was used beyond the reservation, never refunded the rest.
            local = Reservation(
                min(reservation.input_tokens, input_tokens),
                min(reservation.output_tokens, output_tokens),
                0.0,
                0.0,
            )
        self._fallback.settle(
            local, input_tokens=input_tokens, output_tokens=output_tokens, headers=headers
        )

    def settle(
        self,
        reservation: Reservation,
        *,
        input_tokens: int,
        output_tokens: int,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Correct a reservation with the actual usage; with *headers*, also sync from them.

        One round trip for both. See :meth:`convo.limits.RateLimiter.settle`.
        """
        args = self._settle_args(reservation, input_tokens, output_tokens, headers)
        if reservation.ticket.startswith(_LOCAL) or self._call("settle", *args) is None:
            self._settle_locally(reservation, input_tokens, output_tokens, headers)

    async def settle_async(
        self,
        reservation: Reservation,
        *,
        input_tokens: int,
        output_tokens: int,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """:meth:`settle` through the asyncio Redis client (one round trip)."""
        args = self._settle_args(reservation, input_tokens, output_tokens, headers)
        if reservation.ticket.startswith(_LOCAL) or await self._acall("settle", *args) is None:
            self._settle_locally(reservation, input_tokens, output_tokens, headers)

    def _release_args(self, reservation: Reservation) -> list[str | float]:
        return [
            reservation.ticket,
            1,
            reservation.input_tokens,
            reservation.output_tokens,
            *reservation.in_flight,
        ]

    def _release_locally(self, reservation: Reservation) -> None:
        # A reservation Redis took while Redis is now unreachable is dropped: the fallback
        # never took it, and Redis's keys expire (or the next headers correct them).
        if reservation.ticket.startswith(_LOCAL):
            ticket = reservation.ticket[len(_LOCAL) :]
            self._fallback.release(attrs.evolve(reservation, ticket=ticket))

    def release(self, reservation: Reservation) -> None:
        """Give a reservation back whole: it was never sent. See :meth:`RateLimiter.release`."""
        if reservation.ticket.startswith(_LOCAL):
            self._release_locally(reservation)
        else:
            self._call("release", *self._release_args(reservation))

    async def release_async(self, reservation: Reservation) -> None:
        """:meth:`release` through the asyncio Redis client."""
        if reservation.ticket.startswith(_LOCAL):
            self._release_locally(reservation)
        else:
            await self._acall("release", *self._release_args(reservation))

    # -- what the server says ---------------------------------------------------------------

    def _sync_args(self, headers: Mapping[str, str]) -> list[float | None] | None:
        """Per kind: limit, remaining, seconds until reset; the script does the rest, as
        ``Buckets.sync`` does (it alone knows the capacity learned so far)."""
        readings = parse_headers(headers, wall_now=self._wall_clock())
        if not readings:
            return None
        args: list[float | None] = []
        for kind in KINDS:
            reading = readings.get(kind)
            if reading is None:
                args += [None, None, None]
            else:
                args += [reading.limit, reading.remaining, reading.reset_in]
        return args

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Correct the shared buckets from a response's ``anthropic-ratelimit-*`` headers."""
        args = self._sync_args(headers)
        if args is not None and self._call("sync", *args) is None:
            self._fallback.observe_headers(headers)

    async def observe_headers_async(self, headers: Mapping[str, str]) -> None:
        """:meth:`observe_headers` through the asyncio Redis client."""
        args = self._sync_args(headers)
        if args is not None and await self._acall("sync", *args) is None:
            self._fallback.observe_headers(headers)

    @staticmethod
    def _retry_after(retry_after: float | None) -> float:
        if retry_after is None:
            return DEFAULT_PENALTY_S
        if retry_after < 0:
            raise ValueError(f"retry_after={retry_after}: pass seconds ≥ 0, or None")
        return retry_after

    def observe_rate_limited(self, retry_after: float | None) -> None:
        """Record a 429: no process releases anything until ``retry_after`` from now."""
        seconds = self._retry_after(retry_after)
        if self._call("hold", seconds) is None:
            self._fallback.observe_rate_limited(seconds)

    async def observe_rate_limited_async(self, retry_after: float | None) -> None:
        """:meth:`observe_rate_limited` through the asyncio Redis client."""
        seconds = self._retry_after(retry_after)
        if await self._acall("hold", seconds) is None:
            self._fallback.observe_rate_limited(seconds)

    # -- housekeeping -----------------------------------------------------------------------

    def clear(self) -> None:
        """Delete this budget's keys (and reset the fallback): every bucket starts full."""
        self._fallback = self._new_fallback()
        self._link.delete()

    async def aclose(self) -> None:
        """Let background Redis calls finish, then close the asyncio client this limiter
        built (not one it was given)."""
        await self._link.aclose()

"""The in-process warm registry: single-flight cache writes and the TTL clock.

One ``WarmRegistry`` is shared by every session of a process (``WarmRegistry.default()``),
across threads and event loops. Its state is a dict of :class:`_Entry` guarded by one
``threading.Lock``; nothing is awaited while it is held. Waiters are woken by
``threading.Condition.notify_all`` (threads) and ``loop.call_soon_threadsafe(event.set)``
(coroutines) whenever a claim is released or the entry changes; nobody polls. A waiter
sleeps until it is woken, until the writer's claim would lapse (its deadline on the
registry's clock), or at most ``poll_interval`` seconds (default 1 s): that last bound is
a safety re-check, there so that an injected clock which jumps (a test's) is noticed
without a wake-up.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import ClassVar

from convo.warm.keys import (
    Flight,
    Role,
    WarmKey,
    WarmState,
    WarmWaitTimeout,
    check_refresh_at,
    check_ttl,
    needs_warming,
)

__all__ = ["WarmRegistry"]

#: How long an entry is remembered after it expired, before a sweep may forget it. Forgetting
#: it changes nothing but ``state()`` (which then says ``None``, i.e. cold).
RETENTION_SECONDS = 24 * 3600.0

#: A sweep of forgotten entries runs once per this many acquires.
SWEEP_EVERY = 1024


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` pass, whichever is first.

    Not ``asyncio.wait_for``: before Python 3.12 it can swallow a cancellation that
    arrives as the event is set, and a cancelled acquire would then go on and take a claim.
    A timer that sets the event is a plain re-check when it fires.
    """
    timer = asyncio.get_running_loop().call_later(seconds, event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()


def _later(refresh_at: float | None, waited: float) -> float | None:
    """The start to record a read from: ``refresh_at`` moved on by the time spent waiting."""
    return None if refresh_at is None else refresh_at + waited


class _Entry:
    """One prefix's mutable state; only touched with the registry's lock held.

    Invariant: ``writer_token`` is ``None`` or names the one writer whose response has not
    begun; that writer's claim lapses at ``writer_deadline`` (registry clock).
    """

    __slots__ = (
        "expires_at",
        "last_read_start",
        "last_write_start",
        "ttl_seconds",
        "writer_deadline",
        "writer_token",
    )

    def __init__(self) -> None:
        self.last_write_start: float | None = None
        self.last_read_start: float | None = None
        self.ttl_seconds = 0.0
        self.expires_at = -math.inf
        self.writer_token: str | None = None
        self.writer_deadline = -math.inf

    def writing(self, now: float) -> bool:
        return self.writer_token is not None and self.writer_deadline > now

    def touch(self, started_at: float, ttl_seconds: float, *, wrote: bool, read: bool) -> None:
        # Responses finish out of order, so keep maxima: an older request's late record
        # must never move a time backwards.
        if wrote and (self.last_write_start is None or started_at > self.last_write_start):
            self.last_write_start = started_at
        if read and (self.last_read_start is None or started_at > self.last_read_start):
            self.last_read_start = started_at
        if (wrote or read) and started_at + ttl_seconds > self.expires_at:
            self.expires_at = started_at + ttl_seconds
            self.ttl_seconds = ttl_seconds

    def snapshot(self, now: float) -> WarmState:
        return WarmState(
            last_write_start=self.last_write_start,
            last_read_start=self.last_read_start,
            ttl_seconds=self.ttl_seconds,
            expires_at=self.expires_at,
            writing=self.writing(now),
        )


class WarmRegistry:
    """Warm state of cached prefixes in this process, with single-flight writes.

    When many requests need the same cold prefix at once, exactly one (the *writer*) is let
    through; the others wait until the writer's response has begun (``began``), because
    only then is the entry readable on the server, and then go as *readers*. A live prefix
    gives readers at once. A writer that fails before its response begins calls
    ``abandon`` and one waiter becomes the next writer; one that never reports back (a
    crash) loses its claim after ``write_timeout`` seconds.

    Thread-safe, and usable from any number of event loops at once. Blocking ``acquire``
    must not be called on an event loop's thread; use ``acquire_async`` there.

    Args:
        clock: Wall-clock seconds; injectable for tests.
        write_timeout: Seconds after which a writer that called neither ``began`` nor
            ``abandon`` is presumed dead and its claim passes to a waiter.
        poll_interval: Longest real time a waiter sleeps without a wake-up before it
            re-checks anyway (a safety net, and how a jump of an injected clock is
            noticed); waiters are woken by ``began``, ``abandon`` and ``record``, not by
            polling.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 ``poll_interval`` defaults to 1 s (it was 50 ms of polling).
    """

    _default: ClassVar[WarmRegistry | None] = None
    _default_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        write_timeout: float = 60.0,
        poll_interval: float = 1.0,
    ) -> None:
        if write_timeout <= 0 or poll_interval <= 0:
            raise ValueError("write_timeout and poll_interval must be positive seconds")
        self._clock = clock
        self._write_timeout = float(write_timeout)
        self._poll_interval = float(poll_interval)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._entries: dict[WarmKey, _Entry] = {}
        # Coroutines waiting, each as (its loop, its event); woken thread-safely.
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._acquires = 0

    @classmethod
    def default(cls) -> WarmRegistry:
        """Return the process-wide registry every session uses unless given another."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls()
            return cls._default

    # -- acquiring -------------------------------------------------------------------------

    def _try(
        self, key: WarmKey, ttl_seconds: float, now: float, refresh_at: float | None
    ) -> tuple[Role, str, WarmState] | float:
        """Give a role (and the state as of it), or the clock time until which to wait.

        A reader of a live entry given ``refresh_at`` has its read recorded from then.
        Lock held.
        """
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        if entry.expires_at > now:
            if refresh_at is not None:
                entry.touch(refresh_at, ttl_seconds, wrote=False, read=True)
            return "reader", "", entry.snapshot(now)
        if entry.writing(now):
            return entry.writer_deadline
        # Cold or expired, and nobody is writing (or the writer's claim lapsed): write.
        token = uuid.uuid4().hex
        entry.writer_token = token
        entry.writer_deadline = now + self._write_timeout
        return "writer", token, entry.snapshot(now)

    def _start(self) -> float:
        """Count an acquire and now and then forget long-expired entries. Lock held."""
        now = self._clock()
        self._acquires += 1
        if self._acquires % SWEEP_EVERY == 0:
            stale = [
                key
                for key, entry in self._entries.items()
                if not entry.writing(now) and entry.expires_at + RETENTION_SECONDS < now
            ]
            for key in stale:
                del self._entries[key]
        return now

    def _wait_for(
        self, key: WarmKey, until: float, start: float, timeout: float | None, now: float
    ) -> float:
        """Real seconds to sleep before re-checking, or raise once ``timeout`` is used up."""
        if timeout is not None:
            if now - start >= timeout:
                raise WarmWaitTimeout(key, now - start)
            until = min(until, start + timeout)
        return max(0.0, min(self._poll_interval, until - now))

    def acquire(
        self,
        key: WarmKey,
        *,
        ttl_seconds: float,
        timeout: float | None = None,
        refresh_at: float | None = None,
    ) -> Flight:
        """Get a role for a request about to send ``key``'s prefix; wait while it is being written.

        Args:
            key: The prefix.
            ttl_seconds: The TTL the request will ask for (300 or 3600).
            timeout: Most seconds to wait for another writer; ``None`` waits as long as it
                takes (at most ``write_timeout`` per writer).
            refresh_at: The request's start (registry clock). When given and the caller
                becomes a reader of a live entry, the read is recorded in the same step,
                as ``record(read=True)`` would: the entry lives ``ttl_seconds`` from
                ``refresh_at`` plus the time spent waiting (never later than the request
                really starts). The caller then need not ``record`` a read.

        Returns:
            The flight: ``"writer"`` (call ``began`` or ``abandon`` later) or ``"reader"``,
            with the prefix's state as of the claim in ``flight.state``.

        Raises:
            WarmWaitTimeout: ``timeout`` passed while another request was writing.

        .. versionchanged:: 0.2 ``refresh_at``; ``Flight.state``.
        """
        check_ttl(ttl_seconds)
        check_refresh_at(refresh_at)
        with self._cond:
            start = now = self._start()
            while True:
                got = self._try(key, ttl_seconds, now, _later(refresh_at, now - start))
                if isinstance(got, tuple):
                    return self._flight(key, got, ttl_seconds, start, now)
                self._cond.wait(self._wait_for(key, got, start, timeout, now))
                now = self._clock()

    async def acquire_async(
        self,
        key: WarmKey,
        *,
        ttl_seconds: float,
        timeout: float | None = None,
        refresh_at: float | None = None,
    ) -> Flight:
        """Like :meth:`acquire`, awaiting instead of blocking the thread.

        Cancelled while waiting, it leaves nothing behind: it holds no claim until it
        returns one, and it unregisters its wake-up.
        """
        check_ttl(ttl_seconds)
        check_refresh_at(refresh_at)
        start: float | None = None
        now = 0.0
        # Made only by a claim that has to wait (most do not): what ``_wake`` sets.
        waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        try:
            while True:
                with self._lock:
                    if start is None:
                        start = now = self._start()
                    got = self._try(key, ttl_seconds, now, _later(refresh_at, now - start))
                    if isinstance(got, tuple):
                        return self._flight(key, got, ttl_seconds, start, now)
                    delay = self._wait_for(key, got, start, timeout, now)
                    if waiter is None:
                        waiter = (asyncio.get_running_loop(), asyncio.Event())
                    # Registered under the lock that ``_wake`` takes: no wake-up is lost
                    # between the check above and the wait below.
                    waiter[1].clear()
                    self._async_waiters.add(waiter)
                await wait_event(waiter[1], delay)
                now = self._clock()
        finally:
            if waiter is not None:
                with self._lock:
                    self._async_waiters.discard(waiter)

    def _flight(
        self,
        key: WarmKey,
        got: tuple[Role, str, WarmState],
        ttl_seconds: float,
        start: float,
        now: float,
    ) -> Flight:
        role, token, state = got
        return Flight(
            key=key,
            role=role,
            token=token,
            waited=now - start,
            acquired_at=now,
            ttl_seconds=ttl_seconds,
            state=state,
        )

    def _wake(self) -> None:
        """Wake every waiter to re-check. Lock held."""
        self._cond.notify_all()
        for loop, event in list(self._async_waiters):
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop was closed under its waiter: nobody to wake
                self._async_waiters.discard((loop, event))

    # -- reporting back --------------------------------------------------------------------

    def _release(self, flight: Flight) -> _Entry | None:
        """The writer's entry if ``flight`` still holds the write claim. Lock held."""
        if flight.role != "writer":
            return None
        entry = self._entries.get(flight.key)
        if entry is None or entry.writer_token != flight.token:
            return None  # a lapsed claim: another writer took over; leave its claim alone
        entry.writer_token = None
        entry.writer_deadline = -math.inf
        return entry

    def _holds(self, flight: Flight) -> bool:
        """Return whether ``flight`` is a writer whose claim this registry still holds."""
        if flight.role != "writer":
            return False
        with self._lock:
            entry = self._entries.get(flight.key)
            return entry is not None and entry.writer_token == flight.token

    def began(self, flight: Flight) -> None:
        """Report that ``flight``'s response has begun: a writer's entry is now readable.

        Every request waiting for this write goes on as a reader. The write is dated from
        ``flight.acquired_at`` (no later than the request's start) until :meth:`record`
        gives the exact start. For a reader this does nothing.
        """
        with self._lock:
            entry = self._release(flight)
            if entry is not None:
                entry.touch(flight.acquired_at, flight.ttl_seconds, wrote=True, read=False)
                self._wake()

    def abandon(self, flight: Flight) -> None:
        """Report that a writer failed before its response began; one waiter takes over."""
        with self._lock:
            if self._release(flight) is not None:
                # Every waiter re-checks; the first to take the lock becomes the writer and
                # the rest see its claim and wait again.
                self._wake()

    def record(
        self, key: WarmKey, *, started_at: float, ttl_seconds: float, wrote: bool, read: bool
    ) -> None:
        """Touch the TTL clock after a response: the entry lives ``ttl_seconds`` from its start.

        Args:
            key: The prefix.
            started_at: When the request started (registry clock), not when it ended.
            ttl_seconds: The TTL the request asked for.
            wrote: The response reported a cache write of the prefix.
            read: The response reported a cache read of it.
        """
        check_ttl(ttl_seconds)
        if not (wrote or read):
            return  # nothing cached, nothing refreshed (below the minimum, for instance)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.touch(started_at, ttl_seconds, wrote=wrote, read=read)
            self._wake()

    # -- inspecting ------------------------------------------------------------------------

    def state(self, key: WarmKey) -> WarmState | None:
        """Return what is known about ``key``'s prefix, or ``None`` if nothing is."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            now = self._clock()
            never_touched = entry.last_write_start is None and entry.last_read_start is None
            if never_touched and not entry.writing(now):
                return None  # only ever a lapsed or abandoned claim: nothing known
            return entry.snapshot(now)

    def needs_warming(self, key: WarmKey, *, margin: float = 0.0) -> bool:
        """Return whether a pre-warm should be sent now.

        True when the prefix is cold, expired or expires within ``margin`` seconds, and no
        write of it is in flight.
        """
        return needs_warming(self.state(key), self._clock(), margin)

    # -- the same, for async callers -------------------------------------------------------
    # Nothing here does I/O or waits long (the lock is held for microseconds), so the async
    # forms just call the sync ones; they exist so AsyncSession can treat every registry
    # (this one and RedisWarmRegistry) alike through :class:`convo.warm.WarmBackend`.

    async def began_async(self, flight: Flight) -> None:
        """Like :meth:`began`, for async callers."""
        self.began(flight)

    async def abandon_async(self, flight: Flight) -> None:
        """Like :meth:`abandon`, for async callers."""
        self.abandon(flight)

    async def record_async(
        self, key: WarmKey, *, started_at: float, ttl_seconds: float, wrote: bool, read: bool
    ) -> None:
        """Like :meth:`record`, for async callers."""
        self.record(key, started_at=started_at, ttl_seconds=ttl_seconds, wrote=wrote, read=read)

    async def state_async(self, key: WarmKey) -> WarmState | None:
        """Like :meth:`state`, for async callers."""
        return self.state(key)

    async def needs_warming_async(self, key: WarmKey, *, margin: float = 0.0) -> bool:
        """Like :meth:`needs_warming`, for async callers."""
        return self.needs_warming(key, margin=margin)

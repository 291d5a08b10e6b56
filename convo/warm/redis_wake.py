"""Waking the waiters of a shared write through Redis pub/sub, instead of polling.

The scripts that release a claim (``began``, ``abandon``) or change an entry while a claim
is held (``record``) ``PUBLISH`` the prefix's key base on one channel. Each event loop (and
each registry's threads) keeps **one** subscription to that channel, whatever the number
of waiters, and sets the local event of every waiter on the named prefix. So 1,000 waiting
coroutines hold one connection between them, not one each (a blocking pop per waiter would
need a pooled connection per waiter).

A waiter registers its event *before* it checks the claim, and the subscription is
confirmed before the first wait: a release published after a waiter's check always reaches
it. What pub/sub cannot promise (a message lost while the subscription reconnects, a
writer that dies without releasing) is covered by the waiter itself: it sleeps no longer
than until the claim would lapse on Redis's clock, and at most ``poll_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

__all__ = [
    "WAKE_ALL",
    "WAKE_ONE",
    "AsyncWake",
    "SyncWake",
    "listening_anew",
    "listening_anew_sync",
]

#: Seconds after a failed subscription before another is tried (waiters meanwhile rely on
#: their re-check, so a Redis that refuses pub/sub is not hammered).
RESUBSCRIBE_AFTER = 1.0

#: Longest blocking read of the subscription; bounds how late ``close`` is noticed.
_READ_SECONDS = 1.0

#: A message is one of these followed by the key base. ``*`` wakes every waiter on the
#: prefix (a write began, or the entry changed: they may all read now); ``1`` wakes one
#: per process (a claim was released: one waiter takes it over and the rest would only
#: find its new claim, so waking them all would cost a round trip each for nothing).
WAKE_ALL = "*:"
WAKE_ONE = "1:"


class _Settable(Protocol):
    def is_set(self) -> bool: ...

    def set(self) -> None: ...


def _wake(events: Iterable[_Settable], one: bool) -> None:
    """Set every event, or (``one``) the first that is not set already."""
    for event in events:
        if not one:
            event.set()
        elif not event.is_set():
            event.set()
            return


def _parse(data: bytes) -> tuple[bytes, bool]:
    """A message's key base, and whether it wakes one waiter (not all)."""
    return data[2:], data[:2] == WAKE_ONE.encode()


def _cancel_requested() -> bool:
    """Whether the running task was asked to stop, even if the request was swallowed.

    redis-py's timed read can turn a cancellation into its own timeout and return ``None``;
    a listener that went on reading would then hang ``asyncio.run``'s shutdown, which waits
    for every cancelled task. ``Task.cancelling()`` (Python 3.11+) still counts the request.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


class AsyncWake:
    """One subscription for the coroutines of one event loop.

    Args:
        client: The ``redis.asyncio.Redis`` of this loop; the subscription takes one
            connection of its pool for as long as it listens.
        channel: The channel the scripts publish on.
        on_shutdown: Awaited when the listening task is cancelled by anything but
            :meth:`aclose`: the loop is shutting down (``asyncio.run`` cancels every task
            at its end), the moment to close the loop's connections nobody else will.
    """

    def __init__(
        self,
        client: Any,
        channel: str,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._client = client
        self._channel = channel
        self._on_shutdown = on_shutdown
        self._waiters: dict[bytes, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[bool] | None = None
        self._failed_at = -float("inf")
        self._generation = 0
        self._closing = False

    def add(self, member: bytes, event: asyncio.Event) -> None:
        """Wake ``event`` whenever ``member`` (a key base) is published."""
        self._waiters.setdefault(member, set()).add(event)

    def discard(self, member: bytes, event: asyncio.Event) -> None:
        """Stop waking ``event`` (a cancelled or satisfied waiter leaves nothing behind).

        A waiter woken but leaving (cancelled before it checked) hands its wake-up on to
        another, or a released claim could find nobody to take it over.
        """
        events = self._waiters.get(member)
        if events is not None:
            events.discard(event)
            if not events:
                del self._waiters[member]
            elif event.is_set():
                _wake(events, one=True)

    @property
    def waiting(self) -> int:
        """How many waiters are registered (for tests and metrics)."""
        return sum(len(events) for events in self._waiters.values())

    @property
    def up(self) -> int | None:
        """The subscription's generation while it is confirmed and listening, else ``None``.

        A waiter that saw the same generation before its check and after it cannot have
        missed a message in between, so it need not check again before it waits.
        """
        ready = self._ready
        task = self._task
        if ready is None or task is None or task.done() or not ready.done() or not ready.result():
            return None
        return self._generation

    def start(self) -> None:
        """Start subscribing in the background, without waiting (a writer's hint: waiters
        on its write are likely to follow)."""
        if self._closing:
            return
        if self._task is None or self._task.done():
            if time.monotonic() - self._failed_at < RESUBSCRIBE_AFTER:
                return
            loop = asyncio.get_running_loop()
            self._generation += 1
            self._ready = loop.create_future()
            self._task = loop.create_task(self._listen(self._ready))

    async def listening(self, within: float) -> bool:
        """Make sure the subscription is up; return whether it is (waiting ``within`` s)."""
        self.start()
        if self._ready is None or self._task is None or self._task.done():
            return False
        # asyncio.wait, not wait_for: it neither cancels the shared future on timeout nor
        # (before Python 3.12) swallows a cancellation of this waiter.
        ready = self._ready
        await asyncio.wait({ready}, timeout=within)
        return ready.done() and ready.result()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def _listen(self, ready: asyncio.Future[bool]) -> None:
        shutdown = False
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            while not (self._closing or _cancel_requested()):
                message = await pubsub.get_message(timeout=_READ_SECONDS)
                if message is None:
                    continue
                kind = message.get("type")
                if kind == "subscribe" and not ready.done():
                    ready.set_result(True)
                elif kind == "message":
                    member, one = _parse(message["data"])
                    _wake(self._waiters.get(member, ()), one)
        except asyncio.CancelledError:
            shutdown = not self._closing
            raise
        except Exception:  # any trouble: waiters fall back on their re-checks
            self._failed_at = time.monotonic()
        finally:
            if not ready.done():
                ready.set_result(False)
            # Whatever was published while the subscription was down is lost: every
            # waiter checks again now (and learns whether Redis is there at all).
            self._wake_all()
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            if (shutdown or _cancel_requested()) and not self._closing and self._on_shutdown:
                with contextlib.suppress(Exception):
                    await self._on_shutdown()

    async def aclose(self) -> None:
        """Stop listening and give the subscription's connection back."""
        self._closing = True
        task, self._task = self._task, None
        # redis-py's timed read can swallow a cancellation (it turns into its own timeout),
        # so cancel until the task really ends; ``_closing`` stops the loop regardless.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.05)
        if task is not None and not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved


class SyncWake:
    """One subscription, read by a daemon thread, for the threads calling ``acquire``.

    Args:
        client: The ``redis.Redis`` of the registry.
        channel: The channel the scripts publish on.
    """

    def __init__(self, client: Any, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._lock = threading.Lock()
        self._waiters: dict[bytes, set[threading.Event]] = {}
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()
        self._settled = threading.Event()
        self._stop = threading.Event()
        self._failed_at = -float("inf")
        self._generation = 0

    def add(self, member: bytes, event: threading.Event) -> None:
        """Wake ``event`` whenever ``member`` (a key base) is published."""
        with self._lock:
            self._waiters.setdefault(member, set()).add(event)

    def discard(self, member: bytes, event: threading.Event) -> None:
        """Stop waking ``event``, handing a wake-up it did not use on to another waiter."""
        with self._lock:
            events = self._waiters.get(member)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[member]
                elif event.is_set():
                    _wake(events, one=True)

    @property
    def up(self) -> int | None:
        """The subscription's generation while it is confirmed and listening, else ``None``
        (see :attr:`AsyncWake.up`)."""
        with self._lock:
            thread = self._thread
            if thread is None or not thread.is_alive() or not self._subscribed.is_set():
                return None
            return self._generation

    def start(self) -> bool:
        """Start subscribing in the background unless it runs; return whether it may be up."""
        with self._lock:
            thread = self._thread
            if thread is not None and thread.is_alive():
                return True
            if self._stop.is_set() or time.monotonic() - self._failed_at < RESUBSCRIBE_AFTER:
                return False
            self._generation += 1
            self._subscribed.clear()
            self._settled.clear()
            self._thread = threading.Thread(
                target=self._listen, name="convo-warm-wake", daemon=True
            )
            self._thread.start()
            return True

    def listening(self, within: float) -> bool:
        """Make sure the subscription is up; return whether it is (waiting ``within`` s)."""
        if not self.start():
            return False
        self._settled.wait(within)
        return self._subscribed.is_set()

    def _wake_all(self) -> None:
        with self._lock:
            for events in self._waiters.values():
                for event in events:
                    event.set()

    def _listen(self) -> None:
        pubsub = None
        try:
            pubsub = self._client.pubsub()
            pubsub.subscribe(self._channel)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=_READ_SECONDS)
                if message is None:
                    continue
                kind = message.get("type")
                if kind == "subscribe":
                    self._subscribed.set()
                    self._settled.set()
                elif kind == "message":
                    member, one = _parse(message["data"])
                    with self._lock:
                        _wake(self._waiters.get(member, ()), one)
        except Exception:  # any trouble: waiters fall back on their re-checks
            self._failed_at = time.monotonic()
        finally:
            self._subscribed.clear()
            self._settled.set()
            self._wake_all()
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def close(self) -> None:
        """Stop the listening thread; it ends, and gives its connection back, within a second
        (its longest read), without this call waiting for it."""
        self._stop.set()


async def listening_anew(wake: AsyncWake, before: int | None, within: float) -> bool:
    """Whether a subscription listens now that did not listen throughout the last check
    (``before`` is its generation then): the waiter must check again before it waits."""
    up = wake.up
    if before is not None and up == before:
        return False
    return up is not None or await wake.listening(within)


def listening_anew_sync(wake: SyncWake, before: int | None, within: float) -> bool:
    """:func:`listening_anew` for the threads' subscription."""
    up = wake.up
    if before is not None and up == before:
        return False
    return up is not None or wake.listening(within)

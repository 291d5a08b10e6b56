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
from typing import Any

__all__ = ["AsyncWake", "SyncWake"]

#: Seconds after a failed subscription before another is tried (waiters meanwhile rely on
#: their re-check, so a Redis that refuses pub/sub is not hammered).
RESUBSCRIBE_AFTER = 1.0

#: Longest blocking read of the subscription; bounds how late ``close`` is noticed.
_READ_SECONDS = 1.0


class AsyncWake:
    """One subscription for the coroutines of one event loop.

    Args:
        client: The ``redis.asyncio.Redis`` of this loop; the subscription takes one
            connection of its pool for as long as it listens.
        channel: The channel the scripts publish on.
    """

    def __init__(self, client: Any, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._waiters: dict[bytes, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[bool] | None = None
        self._failed_at = -float("inf")

    def add(self, member: bytes, event: asyncio.Event) -> None:
        """Wake ``event`` whenever ``member`` (a key base) is published."""
        self._waiters.setdefault(member, set()).add(event)

    def discard(self, member: bytes, event: asyncio.Event) -> None:
        """Stop waking ``event`` (a cancelled or satisfied waiter leaves nothing behind)."""
        events = self._waiters.get(member)
        if events is not None:
            events.discard(event)
            if not events:
                del self._waiters[member]

    @property
    def waiting(self) -> int:
        """How many waiters are registered (for tests and metrics)."""
        return sum(len(events) for events in self._waiters.values())

    async def listening(self, within: float) -> bool:
        """Make sure the subscription is up; return whether it is (waiting ``within`` s)."""
        task = self._task
        if task is None or task.done():
            if time.monotonic() - self._failed_at < RESUBSCRIBE_AFTER:
                return False
            loop = asyncio.get_running_loop()
            self._ready = loop.create_future()
            self._task = task = loop.create_task(self._listen(self._ready))
        assert self._ready is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._ready), within)
        except asyncio.TimeoutError:
            return False

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def _listen(self, ready: asyncio.Future[bool]) -> None:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            while True:
                message = await pubsub.get_message(timeout=_READ_SECONDS)
                if message is None:
                    continue
                kind = message.get("type")
                if kind == "subscribe" and not ready.done():
                    ready.set_result(True)
                elif kind == "message":
                    for event in self._waiters.get(message["data"], ()):
                        event.set()
        except asyncio.CancelledError:
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

    async def aclose(self) -> None:
        """Stop listening and give the subscription's connection back."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


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

    def add(self, member: bytes, event: threading.Event) -> None:
        """Wake ``event`` whenever ``member`` (a key base) is published."""
        with self._lock:
            self._waiters.setdefault(member, set()).add(event)

    def discard(self, member: bytes, event: threading.Event) -> None:
        """Stop waking ``event``."""
        with self._lock:
            events = self._waiters.get(member)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[member]

    def listening(self, within: float) -> bool:
        """Make sure the subscription is up; return whether it is (waiting ``within`` s)."""
        with self._lock:
            thread = self._thread
            if thread is None or not thread.is_alive():
                if self._stop.is_set():
                    return False
                if time.monotonic() - self._failed_at < RESUBSCRIBE_AFTER:
                    return False
                self._subscribed.clear()
                self._settled.clear()
                self._thread = thread = threading.Thread(
                    target=self._listen, name="convo-warm-wake", daemon=True
                )
                thread.start()
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
                    with self._lock:
                        events = list(self._waiters.get(message["data"], ()))
                    for event in events:
                        event.set()
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
        """Stop the listening thread (within about a second) and release its connection."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(_READ_SECONDS * 3)

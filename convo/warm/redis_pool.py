"""The policy's pools shared through Redis: every process's observations, merged by all.

A :class:`~convo.RedisWarmRegistry` gives its sessions :class:`SharedPrefixPool` s
(:mod:`convo.policy.shared`) and a :class:`PoolExchange` that moves their observations:

- **One capped stream per prefix** (``<prefix>pool:<digest of the prefix's key>``). Each
  observation is one entry, appended with ``XADD ... MAXLEN = cap``: Redis keeps the latest
  *cap* of them, so old ones are bounded, and the stream expires a week after its last
  append.
- **Off the turn.** Recording stays in memory; a background thread runs :meth:`exchange`
  every ``interval`` seconds (and once more at close): one pipeline, so one round trip
  for every prefix, that appends what this process recorded since the last exchange and
  reads every entry after the last one it read. A turn gains no Redis round trip.
- **Counted once.** A read starts after the last entry read (stream ids only grow), a pool
  skips its own origin's entries, and a copy of an entry sent twice (a retried flush whose
  reply was lost) carries the number it had and is skipped (:meth:`SharedPrefixPool.merge`).
- **Redis trouble loses nothing recent.** A failed exchange puts what it took back in the
  queue (at most *cap* per prefix) for the next one; no ``redis`` exception leaves it.

A process that starts reads the stream from its start: a new worker begins with what the
fleet has learnt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
import weakref
from typing import Any

from convo.policy.shared import Observation, SharedPrefixPool

__all__ = ["PoolExchange"]

logger = logging.getLogger("convo")

#: How long a prefix's stream outlives its last append: gaps of a day and more still count
#: as gaps, so a fleet back after a quiet weekend keeps what it learnt.
KEEP_MS = 7 * 24 * 3600 * 1000


# Every exchange alive in this process, so a child of fork() can give each a new origin.
_EXCHANGES: weakref.WeakSet[PoolExchange] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for exchange in list(_EXCHANGES):
        exchange._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

#: Longest ``close()`` waits for an exchange the background thread has on the wire.
CLOSE_WAIT_S = 2.0


class PoolExchange:
    """The shared pools of one registry, and the exchange of their observations.

    Thread-safe; one exchange runs at a time.

    Args:
        redis: The registry's sync ``redis.Redis`` client.
        prefix: The registry's key prefix.
        interval: Seconds between exchanges of the background thread.
        cap: Observations kept per prefix in Redis (and queued per pool while Redis is away).
        trouble: The exceptions that mean Redis is in trouble.

    .. versionadded:: 0.3
    """

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str,
        interval: float,
        cap: int,
        trouble: tuple[type[BaseException], ...],
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._interval = interval
        self._cap = cap
        self._trouble = trouble
        #: This process's origin: entries carrying it are its own.
        self.origin = uuid.uuid4().hex
        self._lock = threading.Lock()  # guards _pools and the thread
        self._exchanging = threading.Lock()  # one exchange at a time (cursors, queues)
        self._pools: dict[str, tuple[SharedPrefixPool, str]] = {}
        self._cursors: dict[str, str] = {}  # stream -> the id of the last entry read
        self._stop: threading.Event | None = None  # set to stop the running thread
        _EXCHANGES.add(self)

    def _forked(self) -> None:
        """In a child of ``fork()`` (one thread): a new origin, so the parent's entries and
        the child's are told apart (with the parent's, the child would skip every sibling's
        entries as its own); fresh locks; no background thread yet (it did not survive the
        fork: the next :meth:`pool` starts one)."""
        self.origin = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._exchanging = threading.Lock()
        self._stop = None
        for pool, _ in self._pools.values():
            pool.forked(self.origin)

    def pool(self, prefix_key: str) -> SharedPrefixPool:
        """The shared pool of *prefix_key*; starts the background exchange if it is not
        running."""
        with self._lock:
            found = self._pools.get(prefix_key)
            if found is None:
                digest = hashlib.blake2b(prefix_key.encode(), digest_size=16).hexdigest()
                stream = f"{self._prefix}pool:{digest}"
                found = (SharedPrefixPool(self.origin, keep=self._cap), stream)
                self._pools[prefix_key] = found
            if self._stop is None:
                self._stop = threading.Event()
                threading.Thread(
                    target=_run,
                    args=(weakref.ref(self), self._stop, self._interval),
                    name="convo-pool-exchange",
                    daemon=True,
                ).start()
            return found[0]

    def exchange(self, *, wait: float | None = None) -> int:
        """Send what the pools recorded since the last exchange and merge the other
        processes' new observations, in one round trip. Returns how many were merged (0
        when Redis did not answer: what was taken is queued again).

        Args:
            wait: Longest seconds to wait for an exchange already running (the background
                thread's, perhaps stuck on an unanswering Redis); ``None``: as long as it
                takes. When the wait runs out, nothing is exchanged and 0 is returned.
        """
        if not self._exchanging.acquire(timeout=-1 if wait is None else max(0.0, wait)):
            return 0
        try:
            return self._exchange()
        finally:
            self._exchanging.release()

    def _exchange(self) -> int:
        """The exchange itself; the caller holds the exchange lock."""
        with self._lock:
            pools = list(self._pools.values())
        if not pools:
            return 0
        taken = [pool.take() for pool, _ in pools]
        pipe = self._redis.pipeline(transaction=False)
        for (_, stream), sent in zip(pools, taken, strict=True):
            for observation in sent:
                pipe.xadd(stream, observation.fields(), maxlen=self._cap, approximate=False)
            if sent:
                pipe.pexpire(stream, KEEP_MS)
        for _, stream in pools:
            pipe.xrange(stream, min=self._after(stream), max="+", count=self._cap)
        try:
            replies = pipe.execute()
        except self._trouble as error:
            for (pool, _), sent in zip(pools, taken, strict=True):
                pool.untake(sent)
            logger.debug("convo: sharing the policy's observations failed: %r", error)
            return 0
        merged = 0
        for (pool, stream), entries in zip(pools, replies[-len(pools) :], strict=True):
            if not entries:
                continue
            last = entries[-1][0]
            self._cursors[stream] = last.decode() if isinstance(last, bytes) else last
            found = (Observation.from_fields(fields) for _, fields in entries)
            merged += pool.merge(o for o in found if o is not None)
        return merged

    def close(self) -> None:
        """Stop the background exchange and run a last one (what was recorded since the
        last is sent). A pool asked for afterwards starts it again."""
        with self._lock:
            stop, self._stop = self._stop, None
        if stop is None:
            return
        stop.set()
        try:
            # Bounded: an exchange stuck on an unanswering Redis must not hold up close.
            self.exchange(wait=CLOSE_WAIT_S)
        except Exception:  # closing must not fail on a broken client
            logger.debug("convo: the last exchange of observations failed", exc_info=True)

    def _after(self, stream: str) -> str:
        """The first stream id after the last one read (XRANGE's start, inclusive)."""
        last = self._cursors.get(stream)
        if last is None:
            return "-"
        millis, _, seq = last.partition("-")
        return f"{millis}-{int(seq or 0) + 1}"


def _run(exchange: weakref.ref[PoolExchange], stop: threading.Event, interval: float) -> None:
    """The background exchange: every *interval* seconds until *stop* is set or nothing
    holds the exchange any more (a registry dropped without close: the thread goes too)."""
    while not stop.wait(interval):
        found = exchange()
        if found is None:
            return
        try:
            found.exchange()
        except Exception:  # a background thread must not die of a surprise
            logger.warning("convo: sharing the policy's observations failed", exc_info=True)
        del found  # not held while waiting

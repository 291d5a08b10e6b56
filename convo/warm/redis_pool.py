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
- **Idle prefixes are let go.** A prefix nobody in the fleet has used for longer than
  :data:`IDLE_S` (an hour, the longest TTL: by then every entry of it has lapsed, so its
  live state decides nothing) is no longer read, and the exchange stops holding its pool:
  with a prefix per user or per document, what a process holds and reads is bounded by the
  prefixes used in the last hour, not by every prefix it ever saw. A session that still
  holds the pool keeps it whole; when it records again, the exchange takes the pool back
  and reads on from where it stopped. Once nothing holds it, the pool is gone; a session
  that comes back to the prefix gets a new pool, which reads the stream from its start (a
  week of it, at most *cap* entries), as a new process does.

A process that starts reads the stream from its start: a new worker begins with what the
fleet has learnt.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import attrs

from convo.policy.observe import TTL_S
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

#: Default seconds between exchanges of the policy's observations. Short beside the
#: shortest TTL: a decision misses at most the other processes' last 5 s of turns, under 2%
#: of a 5-minute window, and re-warms are decided near an entry's end, minutes after the
#: turns they weigh. Cheap: one pipelined round trip per process every 5 s (0.2 a second,
#: where each warm turn makes up to 3). And at most 5 s of observations are lost when a
#: process dies without ``close()``.
SHARE_INTERVAL = 5.0

#: Longest ``close()`` waits for an exchange the background thread has on the wire.
CLOSE_WAIT_S = 2.0

#: Seconds (registry clock) a prefix may go unused fleet-wide before its pool is let go:
#: the longest TTL, after which no entry of the prefix can still be live.
IDLE_S = max(TTL_S.values())


@attrs.define
class _Held:
    """A pool the exchange holds and reads: its stream, the id of the last entry read,
    and when the prefix was last used (registry clock) as far as this process knows."""

    pool: SharedPrefixPool
    stream: str
    active: float
    cursor: str | None = None


@attrs.define
class _LetGo:
    """A pool let go while idle: held weakly (a session may still hold it) with where its
    reading stopped, so it can be taken back."""

    pool: weakref.ref[SharedPrefixPool]
    stream: str
    cursor: str | None
    #: Hands what the pool still queues to the exchange if the pool is dropped unsent.
    finalizer: weakref.finalize[Any, Any]


class PoolExchange:
    """The shared pools of one registry, and the exchange of their observations.

    Thread-safe; one exchange runs at a time.

    Args:
        redis: The registry's sync ``redis.Redis`` client.
        prefix: The registry's key prefix.
        interval: Seconds between exchanges of the background thread.
        cap: Observations kept per prefix in Redis (and queued per pool while Redis is away).
        trouble: The exceptions that mean Redis is in trouble.
        clock: The registry's clock (seconds): how long a prefix has gone unused.

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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._interval = interval
        self._cap = cap
        self._trouble = trouble
        self._clock = clock
        #: This process's origin; each pool's is made from it (entries carrying a pool's
        #: own origin are its own).
        self.origin = uuid.uuid4().hex
        self._made = 0  # pools made: the next one's origin
        self._lock = threading.Lock()  # guards the pools, the let-go ones and the thread
        self._exchanging = threading.Lock()  # one exchange at a time (cursors, queues)
        self._pools: dict[str, _Held] = {}
        self._let_go: dict[str, _LetGo] = {}
        # (stream, queue) of let-go pools dropped with observations unsent: a session
        # recorded into a pool let go while it held it, and ended before the next exchange.
        # Appended from the garbage collector (any thread, no lock: deque appends are
        # atomic), sent by the next exchange.
        self._orphans: collections.deque[tuple[str, list[Observation]]] = collections.deque()
        self._stop: threading.Event | None = None  # set to stop the running thread
        self._failing = False  # the last exchange failed (warned once per outage)
        _EXCHANGES.add(self)

    def _forked(self) -> None:
        """In a child of ``fork()`` (one thread): a new origin, so the parent's entries and
        the child's are told apart (with the parent's, the child would skip every sibling's
        entries as its own); fresh locks; no background thread yet (it did not survive the
        fork: the next :meth:`pool` starts one)."""
        self.origin = uuid.uuid4().hex
        self._made = 0
        self._lock = threading.Lock()
        self._exchanging = threading.Lock()
        self._orphans = collections.deque()
        self._stop = None
        pools = [held.pool for held in self._pools.values()]
        pools += [p for p in (gone.pool() for gone in self._let_go.values()) if p is not None]
        for pool in pools:
            pool.forked(self._origin())

    def _origin(self) -> str:
        """A new pool's origin (the caller holds the lock, or is the only thread)."""
        self._made += 1
        return f"{self.origin}.{self._made}"

    def pool(self, prefix_key: str) -> SharedPrefixPool:
        """The shared pool of *prefix_key*; starts the background exchange if it is not
        running."""
        with self._lock:
            held = self._pools.get(prefix_key)
            if held is None:
                held = self._take_back(prefix_key)
            if held is None:
                digest = hashlib.blake2b(prefix_key.encode(), digest_size=16).hexdigest()
                pool = SharedPrefixPool(self._origin(), keep=self._cap)
                held = _Held(pool, f"{self._prefix}pool:{digest}", self._clock())
                self._pools[prefix_key] = held
            else:
                held.active = self._clock()
            if self._stop is None:
                self._stop = threading.Event()
                threading.Thread(
                    target=_run,
                    args=(weakref.ref(self), self._stop, self._interval),
                    name="convo-pool-exchange",
                    daemon=True,
                ).start()
            return held.pool

    def _take_back(self, prefix_key: str) -> _Held | None:
        """Hold again the pool of *prefix_key* let go while idle, if something (a session)
        still holds it; it reads on from where it stopped. The caller holds the lock."""
        gone = self._let_go.pop(prefix_key, None)
        pool = None if gone is None else gone.pool()
        if gone is None or pool is None:
            return None
        gone.finalizer.detach()  # held again: the exchange takes its queue
        held = _Held(pool, gone.stream, self._clock(), gone.cursor)
        self._pools[prefix_key] = held
        return held

    def held(self) -> int:
        """How many prefixes' pools the exchange holds and reads (let-go ones not counted)."""
        with self._lock:
            return len(self._pools)

    def exchange(self, *, wait: float | None = None) -> int:
        """Send what the pools recorded since the last exchange and merge the other
        processes' new observations, in one round trip. Returns how many were merged (0
        when Redis did not answer: what was taken is queued again).

        First lets go the pools of prefixes unused fleet-wide for over :data:`IDLE_S` (they
        are not read), takes back those let go that have recorded since, and forgets those
        let go that nothing holds any more.

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
        now = self._clock()
        with self._lock:
            # A pool let go that has recorded since (a session held it) is taken back.
            for key, gone in list(self._let_go.items()):
                pool = gone.pool()
                if pool is None:
                    del self._let_go[key]
                elif pool.pending():
                    self._take_back(key)
            # A prefix unused fleet-wide for over IDLE_S, with nothing left to send, is let
            # go: no longer read, held weakly, with where its reading stopped.
            for key, held in list(self._pools.items()):
                if now - held.active > IDLE_S and not held.pool.pending():
                    del self._pools[key]
                    # The queue is empty now and is the list a session still holding the
                    # pool records into; if the pool goes before it is taken back, what
                    # it holds then is sent as an orphan.
                    queue = held.pool.queued()
                    last = weakref.finalize(held.pool, self._orphans.append, (held.stream, queue))
                    self._let_go[key] = _LetGo(
                        weakref.ref(held.pool), held.stream, held.cursor, last
                    )
            pools = list(self._pools.items())
        orphans = [self._orphans.popleft() for _ in range(len(self._orphans))]
        orphans = [(stream, queue) for stream, queue in orphans if queue]
        if not pools and not orphans:
            return 0
        taken = [held.pool.take() for _, held in pools]
        pipe = self._redis.pipeline(transaction=False)
        for stream, queue in orphans:
            for observation in queue:
                pipe.xadd(stream, observation.fields(), maxlen=self._cap, approximate=False)
            pipe.pexpire(stream, KEEP_MS)
        for (_, held), sent in zip(pools, taken, strict=True):
            for observation in sent:
                pipe.xadd(held.stream, observation.fields(), maxlen=self._cap, approximate=False)
            if sent:
                pipe.pexpire(held.stream, KEEP_MS)
        for _, held in pools:
            pipe.xrange(held.stream, min=_after(held.cursor), max="+", count=self._cap)
        try:
            replies = pipe.execute()
        except self._trouble as error:
            for (_, held), sent in zip(pools, taken, strict=True):
                held.pool.untake(sent)
            self._orphans.extendleft(reversed(orphans))  # for the next exchange
            if not self._failing:
                # Once per outage: sharing is on by default, and a Redis that refuses the
                # stream commands (an ACL) would otherwise fail every interval unseen.
                logger.warning(
                    "convo: sharing the TTL policy's observations through Redis failed "
                    "(%s: %s); each process learns alone until it answers (tried every "
                    "%g s; what was recorded is kept, up to %d per prefix)",
                    type(error).__name__,
                    error,
                    self._interval,
                    self._cap,
                )
            else:
                logger.debug("convo: sharing the policy's observations failed: %r", error)
            self._failing = True
            return 0
        if self._failing:
            logger.info("convo: sharing the TTL policy's observations through Redis again")
            self._failing = False
        now = self._clock()  # after the reply: activity it brought is as of now
        merged = 0
        reads = replies[len(replies) - len(pools) :]  # the XRANGEs come last
        for (_, held), sent, entries in zip(pools, taken, reads, strict=True):
            if entries:
                last = entries[-1][0]
                held.cursor = last.decode() if isinstance(last, bytes) else last
                found = (Observation.from_fields(fields) for _, fields in entries)
                count = held.pool.merge(o for o in found if o is not None)
                if count:
                    held.active = now  # used elsewhere in the fleet
                merged += count
            if sent:
                held.active = now
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


def _after(cursor: str | None) -> str:
    """The first stream id after *cursor*, the last one read (XRANGE's start, inclusive)."""
    if cursor is None:
        return "-"
    millis, _, seq = cursor.partition("-")
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

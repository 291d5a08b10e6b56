"""A prefix's pool shared by several processes: its observations out, theirs in.

A :class:`SharedPrefixPool` is a :class:`~convo.policy.PrefixPool` that also keeps what it
records as :class:`Observation` values for another process, and merges the observations
other processes send. Moving them is the I/O shell's business
(:mod:`convo.warm.redis_pool`); this module does no I/O and reads no clock.

What is shared, and how each merges so that every process ends with the same statistics
as one process that had seen every turn, whatever order they arrive in:

- **uses of the prefix** (``use``): gaps between uses are gaps between *anyone's* uses, so
  the pool keeps the start times of the fleet's latest uses and takes its gaps from them
  (:meth:`~convo.policy.PrefixPool.adopt_uses`); another process's use falls between two of
  this one's and splits their gap.
- **turns** (``turn``): per conversation, by time. A conversation's key is a digest (a key
  may hold the caller's suffix), the same in every process, so a conversation that moves
  between processes stays one conversation; a turn that arrives after a later one of its
  conversation (it moved faster than the exchange) splits the gap it falls in, as a use
  does (:meth:`~convo.policy.PrefixPool.split_turn_gap`).
- **writes of the prefix's entry** (``write``): every turn that sends the prefix says with
  which TTL it would write it. Whether it did write is the fleet's to judge, not the
  sender's (which may not have merged a use that kept the entry live): the pool replays
  the fleet's sends in time order against the fleet's refreshes (uses and re-warms), so
  the entry's TTL (``entry_ttl``, what :meth:`~convo.policy.PrefixPool.live` and
  :meth:`~convo.policy.PrefixPool.rescue` use) is that of the latest write fleet-wide.
- **re-warms** (``touch``): refreshes; the latest keeps the entry live.
- **turn growth** (``growth``): another sample.

Each observation carries its origin (the pool that made it) and a number in that origin's
sequence: a pool never merges its own, and merges another's at most once even when it is
sent twice (a flush retried after a reply was lost).

All of this is exact while the pool is within its bounds (:data:`USES_KEPT` uses, re-warms
and writes; a :class:`~convo.policy.PrefixPool`'s 512 gaps, 64 per conversation and 1,024
conversations). Past them the oldest go, and which of the oldest goes first follows the
order observations arrived in, not their times; a turn older than the 65 latest of its
conversation has no place left to fall into and is not split in.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import attrs

from convo.policy import observe
from convo.policy.observe import TTL_S, PrefixPool

__all__ = ["Observation", "SharedPrefixPool", "conversation_digest"]

Kind = Literal["use", "touch", "turn", "growth", "write"]
_KINDS: frozenset[str] = frozenset(("use", "touch", "turn", "growth", "write"))

#: Start times of the fleet's latest uses (and re-warms, and sends with their TTLs) kept per
#: pool: more than the gaps a pool keeps (512), so a late use from another process still
#: finds its neighbours.
USES_KEPT = 1024
#: Origins whose latest sequence number a pool remembers (processes seen lately).
_ORIGINS_KEPT = 1024


def conversation_digest(conversation: str) -> str:
    """The key a conversation's turns are pooled under: a digest of the session's key (which
    may hold the caller's suffix), the same in every process."""
    return hashlib.blake2b(conversation.encode(), digest_size=12).hexdigest()


@attrs.frozen
class Observation:
    """One thing a pool recorded, as another process needs it.

    Attributes:
        origin: The pool that recorded it (each pool has its own: a pool made again takes
            a new one).
        seq: Its place in that origin's sequence, from 1: a copy sent twice is merged once.
        kind: ``"use"``, ``"touch"``, ``"turn"``, ``"growth"`` or ``"write"``.
        at: When it happened, in the sessions' clock's seconds (0 for ``"growth"``).
        conversation: For a ``"turn"``, the conversation's digest (else empty).
        tokens: For a ``"growth"``, the tokens the turn added (else 0).
        ttl: For a ``"write"``, the TTL the prefix is written with if its entry has lapsed
            (``"5m"`` or ``"1h"``; else empty).

    .. versionadded:: 0.3
    """

    origin: str
    seq: int
    kind: Kind
    at: float = 0.0
    conversation: str = ""
    tokens: int = 0
    ttl: str = ""

    def fields(self) -> dict[str, str]:
        """The observation as string fields (a Redis stream entry's)."""
        return {
            "o": self.origin,
            "s": str(self.seq),
            "k": self.kind,
            "t": repr(float(self.at)),
            "c": self.conversation,
            "n": str(self.tokens),
            "l": self.ttl,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes] | Mapping[str, str]) -> Observation | None:
        """The observation *fields* hold, or ``None`` when they hold none this version reads
        (an entry written by another version is skipped, not fatal)."""
        text = {_text(k): _text(v) for k, v in fields.items()}
        try:
            kind, at, ttl = text["k"], float(text["t"]), text.get("l", "")
            if kind not in _KINDS or not math.isfinite(at):
                return None
            if kind == "write" and ttl not in TTL_S:
                return None
            return cls(
                origin=text["o"],
                seq=int(text["s"]),
                kind=kind,  # type: ignore[arg-type]  # checked against _KINDS above
                at=at,
                conversation=text.get("c", ""),
                tokens=int(text.get("n", "0")),
                ttl=ttl,
            )
        except (KeyError, ValueError):
            return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@attrs.define
class _Send:
    """A send of the prefix (a turn or a pre-warm), judged in the fleet's time order.

    ``entry`` and ``written`` are the entry after it: its TTL and when it was written
    (this send's time when it wrote it, else the previous writer's)."""

    at: float
    ttl: str
    entry: str = "5m"
    written: float | None = None


def _at(send: _Send) -> float:
    return send.at


#: Turns kept per conversation, to place a late one: one more than its gaps kept.
_TURNS_KEPT = observe._MAX_OWN_GAPS + 1


class SharedPrefixPool(PrefixPool):
    """A :class:`~convo.policy.PrefixPool` whose observations other processes share.

    It records and answers like a ``PrefixPool`` (the policy cannot tell them apart); what
    it records is also queued for :meth:`take`, and :meth:`merge` adds other processes'
    observations. Thread-safe.

    Invariants: ``_uses`` and ``_touches`` hold the start times of the latest
    :data:`USES_KEPT` uses and re-warms seen (this process's and merged ones), ascending
    (``_dropped_use`` and ``_dropped_touch``: the latest of those dropped, none later than
    any kept), and the pool's gaps between uses are the gaps between consecutive uses;
    ``_turns`` holds, per conversation the pool remembers, the start times of its latest
    turns, ascending; ``_sends`` holds the latest sends of the prefix in time order, each with the
    entry the fleet's refreshes and earlier sends make of it, and ``entry_ttl`` is the
    last one's (``_base``: the entry before the first kept).

    Args:
        origin: This pool's origin: unique to it (a pool made again after one was dropped
            takes a new one, so it merges what its predecessor sent).
        keep: Most observations queued while they cannot be sent (the oldest go first).

    .. versionadded:: 0.3
    """

    def __init__(self, origin: str, *, keep: int = 4096) -> None:
        super().__init__()
        self.origin = origin
        self._keep = keep
        # Held around a record and its queueing, and around a merge: the order of
        # observations in the queue is the order they were recorded in. Taken before the
        # pool's own lock, never after.
        self._share = threading.Lock()
        self._seq = 0
        self._outbox: list[Observation] = []
        self._uses: list[float] = []
        self._touches: list[float] = []
        self._sends: list[_Send] = []
        self._base: tuple[str, float | None] = (self.entry_ttl, None)
        # The latest use and re-warm dropped from _uses and _touches: the refresh before
        # the earliest kept, so a send judged again at the bounds' edge still finds it.
        self._dropped_use = -math.inf
        self._dropped_touch = -math.inf
        self._turns: collections.OrderedDict[str, list[float]] = collections.OrderedDict()
        self._seen: collections.OrderedDict[str, int] = collections.OrderedDict()

    def forked(self, origin: str) -> None:
        """Become a new process's pool after ``fork()``: what was recorded before the fork
        is this process's already (its parent sends it), so the parent's entries up to now
        are taken as merged, and new records carry *origin*. Call in the child only, while
        it has one thread (its locks are made anew: another thread may have held them)."""
        self._share = threading.Lock()
        self._lock = threading.Lock()
        self._seen[self.origin] = self._seq
        self._seen.move_to_end(self.origin)
        self.origin = origin
        self._seq = 0
        self._outbox = []

    # -- recording (and queueing) -----------------------------------------------------

    def record_use(self, at: float) -> None:
        """Record a use of the prefix starting at *at* (see ``PrefixPool.record_use``)."""
        with self._share:
            if self._uses and at < self._uses[-1]:
                self._insert_use(at)  # before a merged later use: it splits their gap
                self.adopt_uses(self._uses)
            else:
                super().record_use(at)
                self._uses.append(at)
                self._dropped_use = max(self._dropped_use, _trim(self._uses))
            if self._sends and self._sends[-1].at > at:  # sends after it: judge them again
                self._judge_sends(at, inclusive=False)
            self._queue("use", at=at)

    def record_touch(self, at: float) -> None:
        """Record a re-warm of the prefix at *at* (see ``PrefixPool.record_touch``)."""
        with self._share:
            super().record_touch(at)
            self._insert_touch(at)
            if self._sends and self._sends[-1].at > at:
                self._judge_sends(at, inclusive=False)
            self._queue("touch", at=at)

    def record_write(self, ttl: str, *, live: bool, at: float | None = None) -> str:
        """A turn (or pre-warm) starting at *at* is about to send the prefix with *ttl*
        (see ``PrefixPool.record_write``). Whether it writes the entry is judged from the
        fleet's refreshes before *at*, as :meth:`live` would judge it with every one of
        them known (*live*, this process's view, is not needed), and judged again when a
        refresh or send from before it is merged later. Without *at* the send cannot be
        placed among the fleet's: it is judged from *live* and not shared."""
        if at is None:
            return super().record_write(ttl, live=live)
        with self._share:
            sends = self._sends
            if not sends or sends[-1].at <= at:  # in order, as a process's own sends come
                sends.append(_Send(at, ttl))
                self._judge_from(len(sends) - 1)
            else:
                bisect.insort_right(sends, _Send(at, ttl), key=_at)
                self._judge_sends(at)
            self._trim_sends()  # once judged: the entry before the first kept is known
            self._queue("write", at=at, ttl=ttl)
            with self._lock:
                return self.entry_ttl

    def record_turn(self, conversation: str, at: float) -> None:
        """Record a turn of *conversation* at *at* (see ``PrefixPool.record_turn``)."""
        digest = conversation_digest(conversation)
        with self._share:
            self._turn(digest, at)
            self._queue("turn", at=at, conversation=digest)

    def record_growth(self, tokens: int) -> None:
        """Record how many tokens a turn added (see ``PrefixPool.record_growth``)."""
        with self._share:
            super().record_growth(tokens)
            self._queue("growth", tokens=tokens)

    # -- answering (conversations are pooled under their digest) ------------------------

    def next_turn(self, conversation: str | None, now: float, **window: float) -> float:
        """See ``PrefixPool.next_turn`` (*window*: its ``after``, ``before``, ``alive``):
        from the whole fleet's conversations."""
        return super().next_turn(_digest(conversation), now, **window)

    def next_turn_cdf(
        self, conversation: str | None, now: float, times: Sequence[float]
    ) -> list[float]:
        """See ``PrefixPool.next_turn_cdf``: from the whole fleet's conversations."""
        return super().next_turn_cdf(_digest(conversation), now, times)

    def latest_turn(self, conversation: str) -> float | None:
        """When *conversation*'s latest turn started, in any process whose turns were merged."""
        return super().latest_turn(conversation_digest(conversation))

    # -- exchanging ---------------------------------------------------------------------

    def pending(self) -> bool:
        """Whether observations wait to be sent (:meth:`take` would give some)."""
        with self._share:
            return bool(self._outbox)

    def queued(self) -> list[Observation]:
        """The list observations are queued in until the next :meth:`take` (the same list
        object until then): what is left in it, should the pool itself be dropped unsent.

        .. versionadded:: 0.3
        """
        with self._share:
            return self._outbox

    def take(self) -> list[Observation]:
        """The observations recorded since the last take, oldest first (they leave the
        queue: give back with :meth:`untake` those that could not be sent)."""
        with self._share:
            taken, self._outbox = self._outbox, []
            return taken

    def untake(self, observations: Sequence[Observation]) -> None:
        """Put back, before anything queued since, observations :meth:`take` gave that could
        not be sent. At most ``keep`` stay queued: the oldest go first."""
        with self._share:
            self._outbox = [*observations, *self._outbox][-self._keep :]

    def merge(self, observations: Iterable[Observation]) -> int:
        """Add other processes' observations; returns how many were new.

        This pool's own, and another origin's at or below the latest number merged from
        it, are skipped: each observation counts once however often it arrives. Each
        origin's observations must come in its own order (a Redis stream keeps it); the
        origins' may interleave in any order.
        """
        merged = 0
        with self._share:
            uses = False
            since = math.inf  # the earliest refresh or send merged: sends from it are judged
            for o in observations:
                if o.origin == self.origin or o.seq <= self._seen.get(o.origin, 0):
                    continue
                self._seen[o.origin] = o.seq
                self._seen.move_to_end(o.origin)
                while len(self._seen) > _ORIGINS_KEPT:
                    self._seen.popitem(last=False)
                merged += 1
                if o.kind == "use":
                    self._insert_use(o.at)
                    uses = True
                    since = min(since, o.at)
                elif o.kind == "touch":
                    super().record_touch(o.at)
                    self._insert_touch(o.at)
                    since = min(since, o.at)
                elif o.kind == "write":
                    bisect.insort_right(self._sends, _Send(o.at, o.ttl), key=_at)
                    since = min(since, o.at)
                elif o.kind == "turn":
                    self._turn(o.conversation, o.at)
                else:
                    super().record_growth(o.tokens)
            if uses:
                self.adopt_uses(self._uses)
            if since < math.inf:
                self._judge_sends(since)
                self._trim_sends()  # once judged: the entry before the first kept is known
        return merged

    # -- the merge's rules (the caller holds the share lock) ----------------------------

    def _turn(self, digest: str, at: float) -> None:
        """Record a turn of the conversation *digest* at *at*, in its place among the
        conversation's turns: after its latest, as a ``PrefixPool`` does; before it, by
        splitting the gap it falls in (a turn at a time already known adds nothing)."""
        # Popped and put back last, as PrefixPool does with its latest turns: the two stay
        # in step, and forget the same conversations (the least recently recorded).
        turns = self._turns.pop(digest, [])
        place = bisect.bisect_left(turns, at)
        late = place < len(turns)
        known = late and turns[place] == at
        super().record_turn(digest, at)  # the latest turn and its recency; a gap if in order
        if late and not known:
            following = turns[place]
            if place:
                previous = turns[place - 1]
                self.split_turn_gap(digest, following - previous, (at - previous, following - at))
            elif len(turns) < _TURNS_KEPT:  # before the conversation's first turn
                self.split_turn_gap(digest, None, (following - at,))
            # else: older than every turn kept; its gap is older than any kept too
        if not known:
            turns.insert(place, at)
            del turns[:-_TURNS_KEPT]
        self._turns[digest] = turns
        while len(self._turns) > observe._MAX_CONVERSATIONS:
            self._turns.popitem(last=False)

    def _judge_sends(self, at: float, *, inclusive: bool = True) -> None:
        """Judge again which sends wrote the entry: those from *at* on (after it, unless
        *inclusive*: after a refresh at *at*). A send writes the entry when no refresh (a
        use or re-warm, or the write of an earlier send) came within the entry's TTL before
        it; the entry then takes the send's TTL. A use at the send's own time is its own,
        and not counted."""
        search = bisect.bisect_left if inclusive else bisect.bisect_right
        self._judge_from(search(self._sends, at, key=_at))

    def _judge_from(self, first: int) -> None:
        """Judge again the sends from the index *first* on (see :meth:`_judge_sends`)."""
        sends = self._sends
        if first == len(sends):
            return
        entry, written = (sends[first - 1].entry, sends[first - 1].written) if first else self._base
        for send in sends[first:]:
            refresh = max(
                _before(self._uses, send.at, self._dropped_use),
                _before(self._touches, send.at, self._dropped_touch),
                -math.inf if written is None else written,
            )
            if send.at - refresh >= TTL_S[entry]:
                entry, written = send.ttl, send.at
            send.entry, send.written = entry, written
        with self._lock:
            self.entry_ttl = entry

    def _insert_use(self, at: float) -> None:
        self._dropped_use = max(self._dropped_use, _insert(self._uses, at))

    def _insert_touch(self, at: float) -> None:
        self._dropped_touch = max(self._dropped_touch, _insert(self._touches, at))

    def _trim_sends(self) -> None:
        """Keep the latest :data:`USES_KEPT` sends; the entry before the first kept is the
        one the last dropped left."""
        drop = len(self._sends) - USES_KEPT
        if drop > 0:
            last = self._sends[drop - 1]
            self._base = (last.entry, last.written)
            del self._sends[:drop]

    def _queue(
        self,
        kind: Kind,
        *,
        at: float = 0.0,
        conversation: str = "",
        tokens: int = 0,
        ttl: str = "",
    ) -> None:
        self._seq += 1
        self._outbox.append(
            Observation(self.origin, self._seq, kind, at, conversation, tokens, ttl)
        )
        if len(self._outbox) > self._keep:
            del self._outbox[0]


def _insert(times: list[float], at: float) -> float:
    """Put *at* in its place in the ascending *times*; keep the latest :data:`USES_KEPT`.
    Returns the latest time dropped (``-inf`` when none was)."""
    bisect.insort(times, at)
    return _trim(times)


def _trim(times: list[float]) -> float:
    """Keep the latest :data:`USES_KEPT` of the ascending *times*; return the latest
    dropped (``-inf`` when none was)."""
    drop = len(times) - USES_KEPT
    if drop <= 0:
        return -math.inf
    dropped = times[drop - 1]
    del times[:drop]
    return dropped


def _before(times: list[float], at: float, dropped: float = -math.inf) -> float:
    """The latest of the ascending *times* before *at*, or else *dropped* (the latest
    dropped from them) if it is before *at*; ``-inf`` when neither is. (A time dropped
    before the latest dropped is not known: a send older than *dropped* with no kept time
    before it finds none.)"""
    i = bisect.bisect_left(times, at)
    if i:
        return times[i - 1]
    return dropped if dropped < at else -math.inf


def _digest(conversation: str | None) -> str | None:
    return None if conversation is None else conversation_digest(conversation)

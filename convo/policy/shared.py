"""A prefix's pool shared by several processes: its observations out, theirs in.

A :class:`SharedPrefixPool` is a :class:`~convo.policy.PrefixPool` that also keeps what it
records as :class:`Observation` values for another process, and merges the observations
other processes send. Moving them is the I/O shell's business
(:mod:`convo.warm.redis_pool`); this module does no I/O and reads no clock.

What is shared, and how each merges so that every process ends with the same statistics
as one process that had seen every turn:

- **uses of the prefix** (``use``): gaps between uses are gaps between *anyone's* uses, so
  the pool keeps the start times of the fleet's latest uses and takes its gaps from them
  (:meth:`~convo.policy.PrefixPool.adopt_uses`); another process's use falls between two of
  this one's and splits their gap.
- **re-warms** (``touch``): the latest one counts.
- **turns** (``turn``): per conversation, in the order they come; a conversation's key is a
  digest (a key may hold the caller's suffix), the same in every process, so a
  conversation resumed elsewhere stays one conversation.
- **turn growth** (``growth``): another sample.

Each observation carries its origin (the pool that made it) and a number in that origin's
sequence: a pool never merges its own, and merges another's at most once even when it is
sent twice (a flush retried after a reply was lost).

Not shared: the TTL the prefix's entry was last written with (``entry_ttl``): the registry
holds the fleet's entry; each process keeps what it last saw written.
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

from convo.policy.observe import PrefixPool

__all__ = ["Observation", "SharedPrefixPool", "conversation_digest"]

Kind = Literal["use", "touch", "turn", "growth"]
_KINDS: frozenset[str] = frozenset(("use", "touch", "turn", "growth"))

#: Start times of the fleet's latest uses kept per pool: more than the gaps a pool keeps
#: (512), so a late use from another process still finds its neighbours.
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
        origin: The pool that recorded it (one per registry, so per process).
        seq: Its place in that origin's sequence, from 1: a copy sent twice is merged once.
        kind: ``"use"``, ``"touch"``, ``"turn"`` or ``"growth"``.
        at: When it happened, in the sessions' clock's seconds (0 for ``"growth"``).
        conversation: For a ``"turn"``, the conversation's digest (else empty).
        tokens: For a ``"growth"``, the tokens the turn added (else 0).

    .. versionadded:: 0.3
    """

    origin: str
    seq: int
    kind: Kind
    at: float = 0.0
    conversation: str = ""
    tokens: int = 0

    def fields(self) -> dict[str, str]:
        """The observation as string fields (a Redis stream entry's)."""
        return {
            "o": self.origin,
            "s": str(self.seq),
            "k": self.kind,
            "t": repr(float(self.at)),
            "c": self.conversation,
            "n": str(self.tokens),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes] | Mapping[str, str]) -> Observation | None:
        """The observation *fields* hold, or ``None`` when they hold none this version reads
        (an entry written by another version is skipped, not fatal)."""
        text = {_text(k): _text(v) for k, v in fields.items()}
        try:
            kind, at = text["k"], float(text["t"])
            if kind not in _KINDS or not math.isfinite(at):
                return None
            return cls(
                origin=text["o"],
                seq=int(text["s"]),
                kind=kind,  # type: ignore[arg-type]  # checked against _KINDS above
                at=at,
                conversation=text.get("c", ""),
                tokens=int(text.get("n", "0")),
            )
        except (KeyError, ValueError):
            return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SharedPrefixPool(PrefixPool):
    """A :class:`~convo.policy.PrefixPool` whose observations other processes share.

    It records and answers like a ``PrefixPool`` (the policy cannot tell them apart); what
    it records is also queued for :meth:`take`, and :meth:`merge` adds other processes'
    observations. Thread-safe.

    Invariant: ``_uses`` holds the start times of the latest :data:`USES_KEPT` uses seen
    (this process's and merged ones), ascending, and the pool's gaps between uses are the
    gaps between consecutive ones of them.

    Args:
        origin: This pool's origin (its registry's: one per process).
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
                del self._uses[:-USES_KEPT]
            self._queue("use", at=at)

    def record_touch(self, at: float) -> None:
        """Record a re-warm of the prefix at *at* (see ``PrefixPool.record_touch``)."""
        with self._share:
            super().record_touch(at)
            self._queue("touch", at=at)

    def record_turn(self, conversation: str, at: float) -> None:
        """Record a turn of *conversation* at *at* (see ``PrefixPool.record_turn``)."""
        digest = conversation_digest(conversation)
        with self._share:
            super().record_turn(digest, at)
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
        origin's observations must come in its own order (a Redis stream keeps it).
        """
        merged = 0
        with self._share:
            uses = False
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
                elif o.kind == "touch":
                    super().record_touch(o.at)
                elif o.kind == "turn":
                    super().record_turn(o.conversation, o.at)
                else:
                    super().record_growth(o.tokens)
            if uses:
                self.adopt_uses(self._uses)
        return merged

    def _insert_use(self, at: float) -> None:
        bisect.insort(self._uses, at)
        del self._uses[:-USES_KEPT]

    def _queue(
        self, kind: Kind, *, at: float = 0.0, conversation: str = "", tokens: int = 0
    ) -> None:
        self._seq += 1
        self._outbox.append(Observation(self.origin, self._seq, kind, at, conversation, tokens))
        if len(self._outbox) > self._keep:
            del self._outbox[0]


def _digest(conversation: str | None) -> str | None:
    return None if conversation is None else conversation_digest(conversation)

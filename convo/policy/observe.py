"""What the policy knows: inter-arrival times per conversation and pooled per prefix.

A :class:`PrefixPool` holds, for one shared prefix, the gaps between its uses (by every
session) and, per conversation, the gaps between turns plus the time of each
conversation's latest turn (a *censored* observation: its next turn has not come yet, so
its gap is known only to exceed the time since). Every probability it gives is computed at
the moment it is asked, from what was recorded before: nothing about the future.

Probabilities are Kaplan-Meier estimates with one pseudo-success and one pseudo-failure,
so with nothing observed they are 1/2 and no single observation makes them 0 or 1.

Pools live with the registry the sessions share (:func:`pool_for`), so every session of a
process that shares a :class:`~convo.WarmRegistry` learns from the others.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["BETWEEN_TTLS", "PrefixPool", "cdf", "pool_for", "within"]

_MAX_GAPS = 512  # recent gaps kept per pool: enough to estimate, bounded in memory
_MAX_CONVERSATIONS = 1024  # open conversations whose latest turn is remembered
_MAX_OWN_GAPS = 64  # recent gaps kept per conversation
TTL_S = {"5m": 300.0, "1h": 3600.0}
#: Where the turn-gap curve puts its pseudo-gap between the two TTLs: their geometric mean
#: (about 17 minutes). Only its side of each TTL matters to a decision, not the value.
BETWEEN_TTLS = math.sqrt(TTL_S["5m"] * TTL_S["1h"])


def within(
    gaps: Iterable[float],
    censored: Iterable[float],
    *,
    after: float,
    before: float,
    alive: float = 0.0,
    evidence_only: bool = False,
) -> float:
    """P(the next turn starts in ``(after, before]`` seconds | it did not start by ``alive``).

    Args:
        gaps: Observed gaps (a next turn came after that many seconds).
        censored: Seconds since turns with no next turn yet (their gap exceeds that).
        after: Start of the window (exclusive), in seconds since the turn; ``>= alive``.
        before: End of the window (inclusive).
        alive: Seconds already elapsed with no next turn (the condition).
        evidence_only: Leave out the pseudo-gap, keeping only the wait that never ends:
            the window's chance then comes from observed gaps alone (0 with none seen).
            For a decision to *spend* on a later turn coming (a re-warm): with little
            evidence it errs towards not spending, the side whose cost is known.

    The Kaplan-Meier estimate of the gap's survival ``S``, so a censored wait counts for
    as long as it is known and no longer: ``(S(after) - S(before)) / S(alive)``. Two
    pseudo-observations, a gap at the median observed gap (mid-window with none observed)
    and a wait that never ends, make it 1/2 with nothing observed and keep it away from 0
    and 1 on little evidence. After a silence longer than every gap seen, only the wait that
    never ends is left at risk: the estimate is 0 (nobody ever came back that late).
    """
    observed = sorted(gaps)
    events = (
        observed
        if evidence_only
        else sorted([*observed, _pseudo_gap(observed, (after + before) / 2)])
    )
    waits = sorted([*censored, math.inf])
    survival = _survival(events, waits)
    base = survival(alive)
    return (survival(after) - survival(before)) / base if base > 0 else 0.0


def cdf(gaps: Iterable[float], censored: Iterable[float], times: Sequence[float]) -> list[float]:
    """P(the next turn starts within each of *times* seconds), from one survival curve.

    One Kaplan-Meier curve serves every time. Its pseudo-observations: a gap at the median
    observed gap (at half the shortest time when nothing was observed), a gap between the
    two TTLs (:data:`BETWEEN_TTLS`) and a wait that never ends. With nothing observed that
    makes the chance of a turn within 5 minutes 1/3 and within the hour 2/3; with ``n`` gaps
    observed, all under 5 minutes, the hour adds ``1 / (n + 3)``. Without the gap between
    the TTLs the curve had no mass between them until a real gap fell there, so every
    conversation laid out before the fleet's first lull took 5m and wrote its whole history
    again after its own first pause.
    """
    events = _with_pseudo_gaps(sorted(gaps), times)
    survival = _survival(events, sorted([*censored, math.inf]))
    return [1.0 - survival(t) for t in times]


def _with_pseudo_gaps(observed: Sequence[float], times: Sequence[float]) -> list[float]:
    """The sorted gaps *observed* with the curve's two pseudo-gaps inserted in order: the
    prior of :func:`cdf`, in one place for it and :func:`_cdf_at`."""
    events = list(observed)
    bisect.insort(events, _pseudo_gap(observed, min(times) / 2))
    bisect.insort(events, BETWEEN_TTLS)
    return events


def _cdf_at(
    observed: Sequence[float],
    latest: Sequence[float],
    mine: float | None,
    now: float,
    times: Sequence[float],
) -> list[float]:
    """:func:`cdf` from sorted observed gaps and the sorted starts of every conversation's
    latest turn (*mine*, this conversation's, left out): the same estimate, computed
    without building and sorting the censored waits. A wait ``now - t`` is at risk at an
    event time ``e`` when ``now - t >= e``; the wait that never ends always is."""
    events = _with_pseudo_gaps(observed, times)
    order = sorted(range(len(times)), key=times.__getitem__)
    out = [0.0] * len(times)
    n = len(events)
    at_risk = len(latest)  # latest turns at or before now - e: their waits reach e
    # This conversation's own wait (now - mine) reaches an event time e when e <= mine_until.
    mine_until = -math.inf if mine is None else now - mine
    s = 1.0
    i = 0
    # This runs every turn over up to ~600 gaps. Between two event times where no wait
    # leaves the risk set, the factors (m - d) / m of the events in between telescope: their
    # product is (m_end) / (m_start), ties or not. So the loop steps from one change of the
    # risk set to the next (found by bisection), not from event to event.
    for k in order:
        end = bisect.bisect_right(events, times[k], i)
        while i < end:
            # Events ascend, so now - e descends: walk the latest turns down, never up.
            limit = now - events[i]
            while at_risk and latest[at_risk - 1] > limit:
                at_risk -= 1
            # The last event time before the next wait leaves the risk set, or before this
            # conversation's own wait (counted in at_risk, but not another's) does.
            bound = now - latest[at_risk - 1] if at_risk else math.inf
            mine_at_risk = events[i] <= mine_until
            if mine_at_risk and mine_until < bound:
                bound = mine_until
            j = max(bisect.bisect_right(events, bound, i, end), i + 1)
            # At a rounding edge (now - (now - e) is not always e), the bisection may take
            # in an event the walk above would drop: step back to the walk's own test.
            while at_risk and j - 1 > i and latest[at_risk - 1] > now - events[j - 1]:
                j -= 1
            waits = at_risk + (0 if mine_at_risk else 1)  # and the wait that never ends
            s *= (n - j + waits) / (n - i + waits)
            i = j
        out[k] = 1.0 - s
    return out


def _resort(ordered: list[float], out: float | None, into: float) -> None:
    """Keep the sorted list *ordered* sorted while one value *out* (if any) leaves it and
    *into* joins it: a bisection and a move each, instead of sorting it all again."""
    if out is not None:
        del ordered[bisect.bisect_left(ordered, out)]
    bisect.insort(ordered, into)


def _appended(values: collections.deque[float], value: float) -> float | None:
    """Append *value* to the bounded deque *values*; return the value that fell out."""
    out = values[0] if len(values) == values.maxlen else None
    values.append(value)
    return out


def _pseudo_gap(observed: Sequence[float], default: float) -> float:
    """Where the prior's pseudo-gap goes: at the median observed gap (so the prior follows
    the data and says nothing about silences longer than any seen), else at *default*."""
    return observed[len(observed) // 2] if observed else default


def _survival(events: list[float], waits: list[float]) -> Callable[[float], float]:
    """The Kaplan-Meier survival function of sorted event and censoring times."""
    total = len(events) + len(waits)
    steps: list[tuple[float, float]] = []  # (time, survival just after it)
    s = 1.0
    i = 0
    for time, group in itertools.groupby(events):
        deaths = len(list(group))
        at_risk = total - i - bisect.bisect_left(waits, time)
        s *= 1.0 - deaths / at_risk
        i += deaths
        steps.append((time, s))
    times = [t for t, _ in steps]

    def at(t: float) -> float:
        k = bisect.bisect_right(times, t)
        return steps[k - 1][1] if k else 1.0

    return at


class PrefixPool:
    """Observed timing for one shared prefix: its uses, and its conversations' turns.

    Thread-safe: sessions on several threads record into one pool.

    .. versionadded:: 0.2
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_use: float | None = None
        self._last_touch: float | None = None  # uses and re-warms: what keeps the entry live
        #: The TTL the prefix's entry was last written with, as far as this pool knows.
        self.entry_ttl = "5m"
        self._prefix_gaps: collections.deque[float] = collections.deque(maxlen=_MAX_GAPS)
        self._turn_gaps: collections.deque[float] = collections.deque(maxlen=_MAX_GAPS)
        self._own: dict[str, collections.deque[float]] = {}
        self._growth: collections.deque[int] = collections.deque(maxlen=_MAX_GAPS)
        self._latest: collections.OrderedDict[str, float] = collections.OrderedDict()
        # Sorted copies of the gaps and of the latest turns' starts, for the estimates asked
        # every turn. Each is kept sorted as observations come (a bisection per change, not
        # a sort of up to 512 values per turn); ``None`` means "build it again from the
        # deque or dict it mirrors" (what code that replaces those wholesale sets).
        self._sorted_turn_gaps: list[float] | None = None
        self._sorted_latest: list[float] | None = None
        self._sorted_prefix_gaps: list[float] | None = None
        self._median_growth: int | None = None

    def live(self, at: float) -> bool:
        """Whether the prefix's entry should still be live at *at*: used less than its TTL
        ago (every read refreshes it)."""
        with self._lock:
            return self._live(at)

    def _live(self, at: float) -> bool:
        ttl_s = TTL_S[self.entry_ttl]
        return self._last_touch is not None and at - self._last_touch < ttl_s

    def record_touch(self, at: float) -> None:
        """Record a re-warm (or pre-warm) of the prefix at *at*: it keeps the entry live
        but is not a use (not a gap between uses)."""
        with self._lock:
            self._last_touch = at if self._last_touch is None else max(self._last_touch, at)

    def record_write(self, ttl: str, *, live: bool, at: float | None = None) -> str:
        """A turn is about to send the prefix with *ttl*; *live* is :meth:`live` as of its
        start. When the entry is not live, the turn writes it with *ttl*. Returns the TTL of
        the entry the turn will find.

        *at* (when the turn started) is not needed here: a pool shared between processes
        (:class:`~convo.policy.shared.SharedPrefixPool`) orders the fleet's writes by it.

        .. versionchanged:: 0.3 *at*.
        """
        del at  # one process's writes come in order
        with self._lock:
            if not live:
                self.entry_ttl = ttl
            return self.entry_ttl

    def record_use(self, at: float) -> None:
        """Record a use of the prefix starting at *at* (a turn of any session)."""
        with self._lock:
            if self._last_use is not None and at >= self._last_use:
                gap = at - self._last_use
                out = _appended(self._prefix_gaps, gap)
                if self._sorted_prefix_gaps is not None:
                    _resort(self._sorted_prefix_gaps, out, gap)
            self._last_use = at if self._last_use is None else max(self._last_use, at)
            self._last_touch = at if self._last_touch is None else max(self._last_touch, at)

    def record_turn(self, conversation: str, at: float) -> None:
        """Record a turn of *conversation* starting at *at* (its use of the prefix is
        recorded apart, by :meth:`record_use`)."""
        with self._lock:
            previous = self._latest.pop(conversation, None)
            if previous is not None and at > previous:
                gap = at - previous
                out = _appended(self._turn_gaps, gap)
                if self._sorted_turn_gaps is not None:
                    _resort(self._sorted_turn_gaps, out, gap)
                own = self._own.setdefault(conversation, collections.deque(maxlen=_MAX_OWN_GAPS))
                own.append(gap)
            latest = at if previous is None else max(at, previous)
            self._latest[conversation] = latest
            ordered = self._sorted_latest
            if ordered is not None:
                _resort(ordered, previous, latest)
            while len(self._latest) > _MAX_CONVERSATIONS:
                old, started = self._latest.popitem(last=False)
                self._own.pop(old, None)
                if ordered is not None:
                    del ordered[bisect.bisect_left(ordered, started)]

    def last_use(self) -> float | None:
        """When the latest recorded use of the prefix started."""
        with self._lock:
            return self._last_use

    def prefix_gaps(self) -> list[float]:
        """Gaps between consecutive uses of the prefix, by any session (oldest first)."""
        with self._lock:
            return list(self._prefix_gaps)

    def _prefix_sorted(self) -> list[float]:
        if self._sorted_prefix_gaps is None:
            self._sorted_prefix_gaps = sorted(self._prefix_gaps)
        return self._sorted_prefix_gaps

    def prefix_gap_counts(self, *, extra: float | None = None) -> tuple[int, int]:
        """``(gaps of 5-60 minutes, gaps of an hour or more)`` between uses of the prefix,
        with *extra* counted as one more gap: what :func:`~convo.policy.prefix_ttl_counts`
        decides from."""
        with self._lock:
            ordered = self._prefix_sorted()
            five = bisect.bisect_left(ordered, TTL_S["5m"])
            hour = bisect.bisect_left(ordered, TTL_S["1h"])
            k, w = hour - five, len(ordered) - hour
        if extra is not None:
            k += TTL_S["5m"] <= extra < TTL_S["1h"]
            w += extra >= TTL_S["1h"]
        return k, w

    def prefix_lapse(self, ttl_s: float) -> float:
        """P(a gap between uses of the prefix by anyone reaches *ttl_s*): how often the fleet
        alone would let an entry of that TTL lapse."""
        with self._lock:
            ordered = self._prefix_sorted()
            reached = len(ordered) - bisect.bisect_left(ordered, ttl_s)
            return (reached + 1) / (len(ordered) + 2)

    def next_turn(
        self,
        conversation: str | None,
        now: float,
        *,
        after: float,
        before: float,
        alive: float = 0.0,
    ) -> float:
        """P(*conversation*'s next turn starts in ``(after, before]`` seconds after its latest
        turn, given none by ``alive``), from every conversation of this prefix. The
        conversation's own gaps count twice (once in the pool, once more on their own).
        From observed gaps only (``within(..., evidence_only=True)``): it prices re-warms."""
        with self._lock:
            gaps = list(self._turn_gaps)
            if conversation is not None:
                gaps.extend(self._own.get(conversation, ()))
            censored = [now - t for c, t in self._latest.items() if c != conversation]
        return within(gaps, censored, after=after, before=before, alive=alive, evidence_only=True)

    def next_turn_cdf(
        self, conversation: str | None, now: float, times: Sequence[float]
    ) -> list[float]:
        """P(*conversation*'s next turn starts within each of *times* seconds of its latest
        turn), from every conversation of this prefix (its own gaps count twice)."""
        with self._lock:
            if self._sorted_turn_gaps is None:
                self._sorted_turn_gaps = sorted(self._turn_gaps)
            if self._sorted_latest is None:
                self._sorted_latest = sorted(self._latest.values())
            observed = self._sorted_turn_gaps
            own = self._own.get(conversation) if conversation is not None else None
            if own:
                observed = sorted([*observed, *own])
            latest = self._sorted_latest
            mine = self._latest.get(conversation) if conversation is not None else None
            return _cdf_at(observed, latest, mine, now, times)

    def rescue(self, now: float) -> float:
        """P(anyone's next use of the prefix comes after its entry lapses but within a TTL of
        *now*), given none since the latest use: the chance that a re-warm now turns that use's
        write into a read. A use before the lapse would read anyway, and one after the
        re-warm's own entry lapses would write anyway: neither counts. 0 when the entry has
        lapsed already (a re-warm would write it, not refresh it)."""
        with self._lock:
            gaps = list(self._prefix_gaps)
            last_use, last_touch = self._last_use, self._last_touch
            ttl_s = TTL_S[self.entry_ttl]
        if last_use is None or last_touch is None or now >= last_touch + ttl_s:
            return 0.0
        alive = max(0.0, now - last_use)
        lapse = max(alive, last_touch + ttl_s - last_use)
        return within(gaps, [], after=lapse, before=alive + ttl_s, alive=alive, evidence_only=True)

    def touched_since(self, at: float) -> bool:
        """Whether any session used or re-warmed the prefix after *at*."""
        with self._lock:
            return self._last_touch is not None and self._last_touch > at

    def record_growth(self, tokens: int) -> None:
        """Record how many tokens a turn added to its conversation."""
        with self._lock:
            self._growth.append(tokens)
            self._median_growth = None

    def typical_growth(self) -> int:
        """The median tokens a turn added, of those recorded (0 before any)."""
        with self._lock:
            if self._median_growth is None:
                values = sorted(self._growth)
                self._median_growth = values[len(values) // 2] if values else 0
            return self._median_growth

    def latest_turn(self, conversation: str) -> float | None:
        """When *conversation*'s latest recorded turn started."""
        with self._lock:
            return self._latest.get(conversation)

    def adopt_uses(self, uses: Sequence[float]) -> None:
        """Take the gaps between uses of the prefix from *uses*: the start times of its
        latest uses, ascending, this pool's own among them (what a
        :class:`~convo.policy.shared.SharedPrefixPool` merging another process's uses
        knows). The pool then holds what it would had it recorded each of them in time
        order; its latest use and touch only move forward.

        .. versionadded:: 0.3
        """
        with self._lock:
            gaps = (later - earlier for earlier, later in itertools.pairwise(uses))
            self._prefix_gaps = collections.deque(gaps, maxlen=_MAX_GAPS)
            self._sorted_prefix_gaps = None
            if uses:
                last = uses[-1]
                self._last_use = last if self._last_use is None else max(self._last_use, last)
                self._last_touch = last if self._last_touch is None else max(self._last_touch, last)

    def split_turn_gap(self, conversation: str, gap: float | None, halves: Sequence[float]) -> None:
        """A turn of *conversation* recorded late (after a later one of the same
        conversation) falls inside its *gap*: replace that gap by *halves*, the two it is
        split into, in the pool and in the conversation's own gaps. With *gap* ``None`` the
        late turn came before the conversation's first: *halves* is the one gap it adds.

        A gap no longer held (aged out of the bounded gaps) is left out, and so are its
        halves, which are older still. Where the halves go among the gaps matters only for
        which gap ages out first: they take the split gap's place.

        .. versionadded:: 0.3
        """
        with self._lock:
            own = self._own.setdefault(conversation, collections.deque(maxlen=_MAX_OWN_GAPS))
            if gap is None:
                self._turn_gaps.extend(halves)
                if len(own) < _MAX_OWN_GAPS:
                    own.extendleft(reversed(halves))
            else:
                _splice(self._turn_gaps, gap, halves)
                _splice(own, gap, halves)
            self._sorted_turn_gaps = None


def _splice(values: collections.deque[float], old: float, new: Sequence[float]) -> None:
    """Replace the latest *old* in the bounded deque *values* by *new* (in its place); leave
    *values* as it is when *old* is not in it."""
    items = list(values)
    for i in range(len(items) - 1, -1, -1):
        if items[i] == old:
            items[i : i + 1] = new
            values.clear()
            values.extend(items)  # past maxlen, the oldest fall out of the deque
            return


_POOLS: weakref.WeakKeyDictionary[Any, dict[str, PrefixPool]] = weakref.WeakKeyDictionary()
_POOLS_LOCK = threading.Lock()


def pool_for(registry: Any, prefix_key: str) -> PrefixPool:
    """The pool of *prefix_key* shared by every session on *registry*.

    A registry that shares pools itself (a :class:`~convo.RedisWarmRegistry`: its
    ``shared_pool`` gives one whose observations other processes merge) gives the pool.
    Otherwise pools are kept beside the registry object: sessions of one process that share
    a registry learn together; other processes learn on their own.
    """
    shared = getattr(registry, "shared_pool", None)
    if shared is not None:
        pool: PrefixPool | None = shared(prefix_key)
        if pool is not None:
            return pool
    with _POOLS_LOCK:
        try:
            pools = _POOLS.setdefault(registry, {})
        except TypeError:  # not weak-referenceable: a pool per session
            return PrefixPool()
        pool = pools.get(prefix_key)
        if pool is None:
            pool = pools[prefix_key] = PrefixPool()
        return pool

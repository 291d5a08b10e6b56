"""The ideal: a lower bound on what any client could have paid for a request log.

Every request of a workload carries segments: the static prefix, a conversation's suffix,
each message of its history. A segment's tokens are billed, at each use, as uncached input,
a 5m or 1h cache write, or a cache read (only while an entry holding them is live). A read
at a use may also leave the tokens in a 1h entry: the request that reads them can write a
1h entry after them, which holds them too (an entry is keyed by everything before its
breakpoint, and only the tokens it adds are billed as its write). Between uses, a segment
may be kept alive by extra reads (keep-alive refreshes). The cheapest legal
history of each segment over its use times is found by dynamic programming; the sum over
segments is the ideal.

Why nothing can cost less: the per-segment problem *relaxes* the real one. It drops the
prefix constraint (a real read of a segment also reads everything before it), the minimum
cacheable length, the 4-breakpoint and 20-position lookback limits, and the rule that an
entry is readable only once the response writing it has begun; and it lets every read
refresh every live entry. Any real bill, split token by token, is one of the histories the
relaxed problem allows (every real read of a token follows a write or read of that token in
the same prefix within the entry's TTL), so it costs at least the relaxed minimum. The proof
is in ``docs/benchmarks.md``.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

import attrs

from convo.pricing import price
from convo.usage import Usage

__all__ = [
    "TTL_SECONDS",
    "SegmentPlan",
    "TurnLog",
    "UnitRates",
    "ideal_cost",
    "ideal_timeline",
    "ideal_usage",
    "plan_segment",
    "unit_rates",
]

TTL_SECONDS: Mapping[str, float] = {"5m": 300.0, "1h": 3600.0}


@attrs.frozen
class UnitRates:
    """Prices of one token of each kind (any unit; only ratios matter to the plan).

    .. versionadded:: 0.1
    """

    input: float
    write_5m: float
    write_1h: float
    read: float
    output: float = 0.0


def unit_rates(model: str) -> UnitRates:
    """The per-token rates of *model*, from :func:`convo.price` (so the plan and the bill
    use the same table).

    Raises:
        ValueError: when convo has no price for *model*.
    """
    million = 1_000_000

    def one(usage: Usage) -> float:
        cost = price(usage, model).usd
        if cost is None:
            raise ValueError(f"no price known for {model!r}; the ideal needs one")
        return float(cost) / million

    return UnitRates(
        input=one(Usage(input=million)),
        write_5m=one(Usage(cache_write_5m=million)),
        write_1h=one(Usage(cache_write_1h=million)),
        read=one(Usage(cache_read=million)),
        output=one(Usage(output=million)),
    )


@attrs.frozen
class SegmentPlan:
    """The cheapest legal history of one token over its use times.

    Attributes:
        cost: In the units of the :class:`UnitRates` given.
        input: Uses billed as uncached input.
        write_5m: 5-minute writes.
        write_1h: 1-hour writes.
        read: Uses billed as reads.
        refresh: Extra reads between uses that keep an entry alive.
        charges: What each use costs in this history (refreshes charged to the use they
            keep the entry alive for), in use order; they sum to ``cost``.

    .. versionadded:: 0.1
    """

    cost: float
    input: int = 0
    write_5m: int = 0
    write_1h: int = 0
    read: int = 0
    refresh: int = 0
    charges: tuple[float, ...] = ()


_NONE, _5M, _1H = 0, 1, 2
_TTL = {_5M: TTL_SECONDS["5m"], _1H: TTL_SECONDS["1h"]}


def _plus(plan: SegmentPlan, cost: float, **counts: int) -> SegmentPlan:
    return attrs.evolve(
        plan,
        cost=plan.cost + cost,
        charges=(*plan.charges, cost),
        **{name: getattr(plan, name) + n for name, n in counts.items()},
    )


def plan_segment(
    times: Sequence[float],
    rates: UnitRates,
    *,
    refresh: bool = True,
    chains: Sequence[str | None] | None = None,
) -> SegmentPlan:
    """Return the cheapest legal history of one token used at *times* (seconds).

    States after a use: nothing live, or an entry of TTL 5m / 1h last touched at that use.
    At a use with nothing live: input, or a 5m or 1h write. With an entry live at the use
    (kept alive through the gap by ``floor(gap / ttl)`` refresh reads): a read, which
    refreshes it. Writes at other times than uses, or reads while paying input, never help
    (each is dominated by a choice at a use; see ``docs/benchmarks.md``), so these choices
    span every history worth considering.

    A read may also leave the token in a 1h entry: the request that reads it can write a
    1h entry after it, which holds it too (the tokens after it pay for that write). Such an
    entry serves only requests that begin with that request's prompt: its own
    conversation's. *chains* names each use's conversation (``None``: none). A token that
    one conversation uses alone (its history) may move into a 1h entry at any read. A token
    several share (the static prefix) keeps the states above for the entries they share,
    which only a write of the token makes; and a conversation's later use may instead read
    it from an entry of its own, made at its previous use and kept alive by its own
    refreshes. (That previous use is assumed to have been able to make one, though a use
    that wrote the token for 5 minutes could not: 1h breakpoints must come first. Allowing
    more only lowers the bound.)

    With ``refresh=False`` no read happens between uses: an entry serves the next use only
    if it is younger than its TTL then. That is the bound for a client whose requests are
    its users' turns: the API reads a prompt from its start, so a refresh of one segment
    is a request that also reads every segment before it, which the relaxed plan does not
    charge.

    Raises:
        ValueError: when *times* are not in order, or *chains* is not one per use.
    """
    if any(b < a for a, b in itertools.pairwise(times)):
        raise ValueError("use times must be in non-decreasing order")
    if chains is not None and len(chains) != len(times):
        raise ValueError(f"{len(chains)} chains for {len(times)} uses")
    if not times:
        return SegmentPlan(cost=0.0)
    labels = list(chains) if chains is not None else [None] * len(times)
    shared = len({c for c in labels if c is not None}) > 1
    last_use: dict[str, float] = {}  # each conversation's previous use (shared tokens)
    if shared and labels[0] is not None:
        last_use[labels[0]] = times[0]
    start = SegmentPlan(cost=0.0)
    best: dict[int, SegmentPlan] = {
        _NONE: _plus(start, rates.input, input=1),
        _5M: _plus(start, rates.write_5m, write_5m=1),
        _1H: _plus(start, rates.write_1h, write_1h=1),
    }
    for index, (previous, now) in enumerate(itertools.pairwise(times), start=1):
        gap = now - previous
        cold = min(best.values(), key=lambda p: p.cost)  # any state may let its entry lapse
        step: dict[int, SegmentPlan] = {
            _NONE: _plus(cold, rates.input, input=1),
            _5M: _plus(cold, rates.write_5m, write_5m=1),
            _1H: _plus(cold, rates.write_1h, write_1h=1),
        }
        for state in (_5M, _1H):
            refreshes = math.floor(gap / _TTL[state])
            if refreshes and not refresh:
                continue  # the entry lapsed before this use
            kept = _plus(best[state], rates.read * (refreshes + 1), read=1, refresh=refreshes)
            # A token of one conversation may also move into a 1h entry here.
            for after in (state,) if shared else (state, _1H):
                if kept.cost < step[after].cost:
                    step[after] = kept
        chain = labels[index] if shared else None
        if chain is not None:
            own = last_use.get(chain)
            last_use[chain] = now
            if own is not None:
                # From the conversation's own entry: the shared ones may lapse meanwhile.
                hours = math.floor((now - own) / _TTL[_1H])
                if refresh or not hours:
                    private = _plus(cold, rates.read * (hours + 1), read=1, refresh=hours)
                    if private.cost < step[_NONE].cost:
                        step[_NONE] = private
        best = step
    return min(best.values(), key=lambda p: p.cost)


@attrs.frozen
class TurnLog:
    """One request of a workload as the ideal sees it.

    Attributes:
        at: When it was sent (seconds, any origin).
        segments: ``(key, tokens)`` of every segment of its prompt. A key names the content
            *and* everything that must precede it in any prompt (a history message's key
            includes the tools and system it follows).
        output: Output tokens it produced.
        conversation: The conversation it belongs to (its later requests begin with its
            prompt); ``None``: unknown, and no entry of its own is assumed.

    .. versionadded:: 0.1
    .. versionchanged:: 0.5
       ``conversation``.
    """

    at: float
    segments: tuple[tuple[str, int], ...]
    output: int = 0
    conversation: str | None = None


def _uses(ordered: Sequence[TurnLog]) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Per segment key, the indices of the turns (in *ordered*) that use it, and its size.

    Raises:
        ValueError: when a key comes with two sizes (a bug in the log, not something to
            average).
    """
    uses: dict[str, list[int]] = defaultdict(list)
    sizes: dict[str, int] = {}
    for index, turn in enumerate(ordered):
        for key, tokens in turn.segments:
            if sizes.setdefault(key, tokens) != tokens:
                raise ValueError(f"segment {key!r} has two sizes: {sizes[key]} and {tokens}")
            uses[key].append(index)
    return uses, sizes


def _plans(
    ordered: Sequence[TurnLog], rates: UnitRates, *, refresh: bool
) -> Iterable[tuple[list[int], int, SegmentPlan]]:
    """``(turn indices, tokens, plan)`` of every segment of *ordered*."""
    uses, sizes = _uses(ordered)
    for key, indices in uses.items():
        times = [ordered[i].at for i in indices]
        chains = [ordered[i].conversation for i in indices]
        yield indices, sizes[key], plan_segment(times, rates, refresh=refresh, chains=chains)


def ideal_usage(turns: Iterable[TurnLog], rates: UnitRates, *, refresh: bool = True) -> Usage:
    """Return the token counts, by kind, of the cheapest legal bill for *turns*.

    Refresh reads are counted as ``cache_read``; ``refresh=False`` allows none (see
    :func:`plan_segment`). Price the result with :func:`convo.price`.
    """
    ordered = sorted(turns, key=lambda t: t.at)
    total = Usage(output=sum(turn.output for turn in ordered))
    for _, n, plan in _plans(ordered, rates, refresh=refresh):
        total += Usage(
            input=n * plan.input,
            cache_write_5m=n * plan.write_5m,
            cache_write_1h=n * plan.write_1h,
            cache_read=n * (plan.read + plan.refresh),
        )
    return total


def ideal_timeline(turns: Iterable[TurnLog], rates: UnitRates) -> list[tuple[float, float]]:
    """Return ``(time, cumulative ideal cost)`` after each turn, in the units of *rates*
    (USD with :func:`unit_rates`): each use charged what the cheapest history charges it,
    output at the output rate. The last value is the ideal's total."""
    ordered = sorted(turns, key=lambda t: t.at)
    charged = [turn.output * rates.output for turn in ordered]
    for indices, n, plan in _plans(ordered, rates, refresh=True):
        for index, charge in zip(indices, plan.charges, strict=True):
            charged[index] += n * charge
    return list(zip([t.at for t in ordered], itertools.accumulate(charged), strict=True))


def ideal_cost(turns: Iterable[TurnLog], model: str) -> Decimal:
    """Return the ideal's cost in USD for *turns* on *model*."""
    usage = ideal_usage(turns, unit_rates(model))
    cost = price(usage, model).usd
    if cost is None:  # unit_rates already refused an unpriced model
        raise ValueError(f"no price known for {model!r}")
    return cost

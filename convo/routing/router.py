"""``Router``: model tiers, the complexity signal, and what a conversation's turns have shown.

A :class:`Router` is configuration (frozen, shareable between sessions). What it learns about
one conversation (which tiers its turns needed, how long its answers are) lives in a
:class:`RouteState` that the session keeps.
"""

from __future__ import annotations

import collections
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from convo import models
from convo.pricing import price
from convo.routing.decide import Prices
from convo.usage import Usage

__all__ = ["RouteState", "Router", "default_signal"]

#: What a signal is called with: the user's content and the conversation so far, and what
#: it returns: the name of the tier the turn needs.
Signal = Callable[[Any, Sequence[Mapping[str, Any]]], str]

# Words that tend to mark a request that needs reasoning rather than recall or chat.
_HARD_WORDS = re.compile(
    r"\b(prove|proof|derive|design|architect\w*|debug\w*|refactor\w*|analy[sz]\w*|"
    r"optimi[sz]\w*|trade-?offs?|step[- ]by[- ]step|compare|why)\b",
    re.IGNORECASE,
)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or ():
        if isinstance(block, Mapping) and isinstance(block.get("text"), str):
            parts.append(block["text"])
    return "\n".join(parts)


def default_signal(content: Any, history: Sequence[Mapping[str, Any]], tiers: Sequence[str]) -> str:
    """A deliberately simple complexity signal: a score from 0 to 3 mapped onto the tiers.

    One point each for a message over 400 characters, over 1,500 characters, a code fence,
    and words that ask for reasoning (prove, derive, design, debug, analyse, optimise,
    trade-off, step by step, compare, why). Score 0 picks the cheapest tier, 3 the top one,
    and the rest spread evenly between. Replace it with your own (a classifier, a rule of
    your product, a call to a small model): ``Router(signal=...)``.
    """
    text = _text_of(content)
    score = (len(text) > 400) + (len(text) > 1500) + ("```" in text)
    score += bool(_HARD_WORDS.search(text))
    rank = round(min(score, 3) / 3 * (len(tiers) - 1))
    return tiers[rank]


def _tiers(value: Mapping[str, str] | Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    items = tuple(value.items()) if isinstance(value, Mapping) else tuple(value)
    if not items:
        raise ValueError("a Router needs at least one tier, e.g. {'small': 'claude-haiku-4-5'}")
    for item in items:
        if (
            not isinstance(item, tuple)
            or len(item) != 2
            or not all(isinstance(x, str) and x for x in item)
        ):
            raise TypeError(f"each tier is a (name, model id) pair of strings; got {item!r:.60}")
    names = [name for name, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"tier names must be distinct; got {names}")
    ids = [model for _, model in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"each tier needs its own model; got {ids}")
    return items


@attrs.frozen
class Router:
    """Cache-aware routing of a conversation's turns between model tiers.

    Each turn needs a tier (from *signal*, or ``send(..., tier=...)``); the router sends it
    to the acceptable model (that tier or above) with the least **expected total cost**,
    counting what each model's cache holds: a warm conversation stays on a bigger model
    when moving down would cost more in writes than it saves (``docs/routing.md``). It never
    answers below the tier a turn needs.

    Args:
        tiers: Tier name to model id, cheapest tier first (a dict keeps its order), e.g.
            ``{"small": "claude-haiku-4-5", "large": "claude-opus-4-6"}``. Every model
            must have a known price (routing compares prices).
        signal: ``signal(content, history) -> tier name``; default :func:`default_signal`.
        cache_aware: ``False`` routes every turn to its tier's own model, ignoring the
            cache (what most routers do; kept for comparison).
        expected_turns: How many turns your conversations usually have; default: a
            conversation that has had *n* turns is expected to have about *n* more.

    .. versionadded:: 0.4
    """

    tiers: tuple[tuple[str, str], ...] = attrs.field(converter=_tiers)
    signal: Signal | None = None
    cache_aware: bool = True
    expected_turns: float | None = None
    _prices: dict[str, Prices] = attrs.field(factory=dict, init=False, repr=False, eq=False)
    # (rank a turn needed, rank its next turn needed) -> count, learnt from every
    # conversation routed by this Router: the prior of each one's estimates. Counts only
    # grow; a lost update under threads costs a little evidence.
    _pairs: dict[tuple[int, int], int] = attrs.field(factory=dict, init=False, repr=False, eq=False)
    # When the latest routed turns were sent (any conversation): the fleet's turn rate.
    _times: collections.deque[float] = attrs.field(
        factory=lambda: collections.deque(maxlen=256), init=False, repr=False, eq=False
    )
    # Turns so far of the latest conversations routed (by RouteState id, oldest first):
    # how long a conversation runs, for one that has had no turn yet.
    _lengths: collections.OrderedDict[int, int] = attrs.field(
        factory=collections.OrderedDict, init=False, repr=False, eq=False
    )

    def __attrs_post_init__(self) -> None:
        if self.expected_turns is not None and not (
            isinstance(self.expected_turns, (int, float)) and self.expected_turns >= 1
        ):
            raise ValueError(f"expected_turns must be a number >= 1, got {self.expected_turns!r}")
        for _, model in self.tiers:
            models.lookup(model)  # raises UnknownModel with the known ids
            if price(Usage(input=1), model).usd is None:
                raise ValueError(f"no price is known for {model!r}: routing compares prices")

    @property
    def names(self) -> tuple[str, ...]:
        """Tier names, cheapest first."""
        return tuple(name for name, _ in self.tiers)

    @property
    def models(self) -> tuple[str, ...]:
        """Model ids, cheapest tier first."""
        return tuple(model for _, model in self.tiers)

    def rank(self, tier: str) -> int:
        """The rank of tier *tier* (0 = cheapest).

        Raises:
            ValueError: for a name that is not one of the tiers.
        """
        try:
            return self.names.index(tier)
        except ValueError:
            known = self.names
            raise ValueError(f"unknown tier {tier!r}; the router's tiers are {known}") from None

    def rank_of_model(self, model: str) -> int | None:
        """The rank of the tier whose model is *model*, or ``None``."""
        return self.models.index(model) if model in self.models else None

    def required(self, content: Any, history: Sequence[Mapping[str, Any]], tier: str | None) -> int:
        """The rank the turn needs: *tier* when given, else the signal's answer."""
        if tier is None:
            tier = (
                self.signal(content, history)
                if self.signal is not None
                else default_signal(content, history, self.names)
            )
        return self.rank(tier)

    def observe_transition(self, before: int, after: int) -> None:
        """Learn that a turn needing rank *before* was followed by one needing *after*."""
        self._pairs[before, after] = self._pairs.get((before, after), 0) + 1

    def observe_turn_at(self, at: float) -> None:
        """Learn that a routed turn was sent at *at* (seconds, the session's clock)."""
        self._times.append(at)

    def observe_length(self, conversation: int, turns: int) -> None:
        """Learn that conversation *conversation* (the ``id()`` of its :class:`RouteState`:
        one that ended may pass its id on to a new one, which then takes its place) has
        had *turns* routed turns (the latest 1,024 conversations are kept)."""
        self._lengths[conversation] = turns
        self._lengths.move_to_end(conversation)
        while len(self._lengths) > 1_024:
            self._lengths.popitem(last=False)

    def fleet_turns(self) -> float | None:
        """The mean turns of the conversations this Router has routed, so far (one still
        going counts what it has had); ``None`` before any."""
        lengths = list(self._lengths.values())
        return statistics.fmean(lengths) if lengths else None

    def fleet_rate(self) -> float:
        """Routed turns per second across every conversation of this Router, over the
        latest ones (0 before two)."""
        times = list(self._times)
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def fleet_share(self) -> list[float]:
        """Per rank, the share of turns (in every conversation this Router routed, after
        each one's first) that needed exactly it; even shares before any (one pseudo-turn
        each)."""
        ranks = len(self.tiers)
        counts = [0] * ranks
        for (_, after), n in list(self._pairs.items()):
            counts[after] += n
        total = sum(counts)
        return [(counts[rank] + 1) / (total + ranks) for rank in range(ranks)]

    def fleet_p_same(self) -> list[float]:
        """Per rank, the share of turns needing exactly it whose next turn needed it too;
        ½ for a rank with nothing seen."""
        pairs = list(self._pairs.items())
        result = []
        for rank in range(len(self.tiers)):
            seen = sum(n for (before, _), n in pairs if before == rank)
            same = sum(n for (before, after), n in pairs if before == after == rank)
            result.append((same + 1) / (seen + 2))
        return result

    def fleet_p_above(self) -> list[float]:
        """Per rank, the share of turns at or below it (in every conversation this Router
        routed) whose next turn needed more, with two pseudo-turns at the uninformed rate:
        every tier equally likely next, so ``(tiers - 1 - rank) / tiers`` (½ with two
        tiers; ⅔ and ⅓ with three)."""
        pairs = list(self._pairs.items())
        ranks = len(self.tiers)
        result = []
        for rank in range(ranks):
            seen = sum(n for (before, _), n in pairs if before <= rank)
            up = sum(n for (before, after), n in pairs if before <= rank < after)
            result.append((up + 2 * (ranks - 1 - rank) / ranks) / (seen + 2))
        return result

    def prices(self, model: str, ttl: str) -> Prices:
        """*model*'s rates per token, cache writes at *ttl* (computed once per model)."""
        key = f"{model}|{ttl}"
        if key not in self._prices:
            million = 1_000_000

            def rate(usage: Usage) -> float:
                usd = price(usage, model).usd
                return float(usd) / million if usd is not None else 0.0

            write = Usage(cache_write_1h=million) if ttl == "1h" else Usage(cache_write_5m=million)
            self._prices[key] = Prices(
                input=rate(Usage(input=million)),
                read=rate(Usage(cache_read=million)),
                write=rate(write),
                output=rate(Usage(output=million)),
            )
        return self._prices[key]


@attrs.define
class RouteState:
    """What one conversation's turns have shown the router (kept by its session)."""

    needed: list[int] = attrs.field(factory=list)
    outputs: list[int] = attrs.field(factory=list)
    growths: list[int] = attrs.field(factory=list)

    def p_above(self, ranks: int, *, now: int, prior: Sequence[float] | None = None) -> list[float]:
        """For each rank *k*, P(the next turn needs more than tier *k*), given that the turn
        being routed needs rank *now* (the next turns' needs depend on this one's: hard turns
        come in runs).

        A first-order estimate: of this conversation's turns that needed at most *k* and
        had a next turn, the share whose next turn needed more; and for *k* below *now*
        (this turn already needs more), the share of turns above *k* followed by another.
        Two pseudo-turns at the *prior* (the fleet's rate; ½ when none) keep it away from
        0 and 1 on little evidence. The top rank's is 0.
        """
        pairs = self._pairs(now)
        result: list[float] = []
        for rank in range(ranks):
            if rank >= ranks - 1:
                result.append(0.0)
                continue
            base = prior[rank] if prior is not None and rank < len(prior) else 0.5
            below = now <= rank
            seen = [b for a, b in pairs if (a <= rank) == below]
            up = sum(1 for b in seen if b > rank)
            result.append((up + 2 * base) / (len(seen) + 2))
        return result

    def p_same(self, rank: int, *, now: int, prior: float) -> float:
        """P(the turn after one needing exactly *rank* needs exactly *rank* too): of this
        conversation's turns that needed *rank* and had a next turn (the turn being routed,
        needing *now*, is the next of the previous one), the share whose next did; two
        pseudo-turns at *prior* (the fleet's rate)."""
        seen = [after for before, after in self._pairs(now) if before == rank]
        return (sum(1 for after in seen if after == rank) + 2 * prior) / (len(seen) + 2)

    def _pairs(self, now: int) -> list[tuple[int, int]]:
        """(rank a turn needed, rank its next needed) for each turn with a next one, the
        turn being routed (needing *now*) counted as the next of the latest."""
        nexts = [*self.needed[1:], now][: len(self.needed)]
        return list(zip(self.needed, nexts, strict=True))

    def output(self, default: float) -> float:
        """Mean output tokens of this conversation's answers (*default* before any)."""
        return statistics.fmean(self.outputs[-50:]) if self.outputs else default

    def growth(self, default: float) -> float:
        """Mean tokens a turn has added (*default* before any)."""
        return statistics.fmean(self.growths[-50:]) if self.growths else default

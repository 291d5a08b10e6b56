"""The routing decision from its arithmetic: expected cost of each acceptable model, cache
state included. Pure: numbers in, a :class:`RouteDecision` out (no I/O, no clock).

A model's cache is its own: a conversation that moves from one model to another finds its
warm prefix and history on the first and must write them again on the second. So the cost of
answering a turn on model *m* is not this turn's price alone. It is

- **now**: this turn on *m*: what *m* holds warm read at *m*'s read rate, the rest of the
  context written (or sent uncached, below *m*'s minimum), the expected output;
- **the run**: the later turns that the required tier can answer, until one needs more (the
  ``horizon``, at most the expected remaining turns; the same window for every candidate),
  each reading the context and writing what a turn adds;
- **the way back**: when the turn that ends the window needs more than *m*, the model that
  answers it must write what it does not hold by then: only what the run added if its entry
  outlived the run, else the whole context (less a shared prefix the fleet keeps warm),
  summed over the run's possible lengths (a long run outlives the entry, a short one not).

The candidate with the least expected total wins; the current model wins ties. The
candidates are the models from the tier the turn requires up to the model the conversation
is on: never below what the turn needs, and never up past it to a model the conversation is
not on, unless the turn's own tier holds nothing of the conversation (then every candidate
writes it anew). ``docs/routing.md`` works one example
through by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

__all__ = [
    "Option",
    "Prices",
    "RouteDecision",
    "RouteFacts",
    "decide",
    "horizon",
    "p_return",
    "run_ends",
]


@attrs.frozen
class Prices:
    """A model's rates in USD per token.

    Attributes:
        input: Uncached input.
        read: Cache read.
        write: Cache write at the TTL this conversation writes with.
        output: Output.
    """

    input: float
    read: float
    write: float
    output: float


@attrs.frozen
class Option:
    """One model the turn could go to, and what its cache holds now.

    Attributes:
        model: The model id.
        tier: Its tier's rank (0 = the cheapest tier).
        prices: Its rates.
        warm: Tokens of the conversation this model would read from cache now.
        cold: Tokens of the conversation it would write now.
        uncached: Tokens of the conversation it would send uncached (below its minimum
            cacheable length, or after the last breakpoint).

    "The conversation" is either what there is so far (and ``RouteFacts.new`` adds the
    turn's message) or the turn's whole request (and ``new`` is 0), as the caller quotes
    it; sessions quote the whole request.
        shared: Tokens of the static prefix that stay warm on this model whatever this
            conversation does (another session keeps them alive).
        ttl_left_s: Seconds until what this model holds for the conversation expires.
        fleet_cold: Tokens of the static prefix among ``cold``: written now, they serve
            every conversation of the fleet that uses this model while they live, so a turn
            pays only its share.
        fleet_uses: Expected turns of other conversations on this model while a static
            prefix written now lives: they share its write.
        holds: ``(seconds left, tokens)`` of each entry this model holds for the
            conversation: how much of it is still warm at a later time (a 1h entry of the
            prefix can outlive a 5m entry of the history behind it). Empty: one entry of
            ``warm`` tokens with ``ttl_left_s`` left.
        prefix_write: The per-token rate of writing ``fleet_cold`` (the static prefix may be
            written at another TTL than the history); ``None``: ``prices.write``.
    """

    model: str
    tier: int
    prices: Prices
    warm: int
    cold: int
    uncached: int = 0
    shared: int = 0
    ttl_left_s: float = 0.0
    fleet_cold: int = 0
    fleet_uses: float = 0.0
    holds: tuple[tuple[float, int], ...] = ()
    prefix_write: float | None = None

    def write_cost(self, tokens: float) -> float:
        """Writing *tokens* of the conversation on this model (the static prefix's cold part
        among them first, at this conversation's share of it and at the prefix's own TTL)."""
        rate = self.prices.write if self.caches else self.prices.input
        fleet_rate = self.prefix_write if self.prefix_write is not None and self.caches else rate
        fleet = min(float(self.fleet_cold), max(0.0, tokens))
        return (tokens - fleet) * rate + fleet * fleet_rate / (1.0 + max(0.0, self.fleet_uses))

    def held_after(self, seconds: float) -> int:
        """Tokens of the conversation this model still holds *seconds* from now, if nothing
        refreshes them: the deepest of its entries that outlives them (at most ``warm``), or
        the fleet's ``shared`` prefix. Without ``holds``, one entry of ``warm`` tokens that
        lives ``ttl_left_s``."""
        holds = self.holds or ((self.ttl_left_s, self.warm),)
        live = (tokens for left, tokens in holds if left > seconds)
        return max(self.shared, min(self.warm, max(live, default=0)))

    @property
    def context(self) -> int:
        """Tokens of the conversation so far (prefix included) on this model."""
        return self.warm + self.cold + self.uncached

    @property
    def caches(self) -> bool:
        """Whether this model caches the conversation at all (something read or written)."""
        return self.warm + self.cold > 0


@attrs.frozen
class RouteFacts:
    """What is known of the conversation when the turn is routed.

    Attributes:
        required: The tier rank the turn needs.
        current: The model the conversation is on (``None`` before its first turn).
        new: Tokens this turn adds before the answer (the user's message, the suffix).
        output: Expected output tokens of a turn.
        growth: Tokens a turn adds to the context (message and answer).
        remaining: Expected turns after this one.
        p_above: For each tier rank, the probability that a later turn needs a tier above
            it (the top tier's is 0).
        gap_s: Expected seconds between turns.
        p_same: The probability that the next turn needs exactly the required tier, given
            that this one does (how long a run of this tier lasts; a turn of a lower tier
            ends it too, as it goes to its own cheaper model). Default: ``1 -
            p_above[required]``, the same thing when the required tier is the cheapest.
    """

    required: int
    current: str | None
    new: int
    output: float
    growth: float
    remaining: float
    p_above: Sequence[float]
    gap_s: float
    p_same: float | None = None

    @property
    def p_leave(self) -> float:
        """P(the next turn needs another tier than this one: the run ends)."""
        if self.p_same is not None:
            return min(1.0, max(0.0, 1.0 - self.p_same))
        return self.p_above[self.required] if self.required < len(self.p_above) else 0.0


@attrs.frozen
class Costed:
    """One candidate's expected cost, in parts (USD).

    Attributes:
        model: The model id.
        now: This turn.
        run: The turns after it that this model answers.
        back: The expected extra writes when a later turn needs a higher tier.
        turns: Expected turns of the run (after this one).
        writes: Tokens this turn writes (or sends uncached) on this model.
    """

    model: str
    now: float
    run: float
    back: float
    turns: float
    writes: int

    @property
    def total(self) -> float:
        """The expected total."""
        return self.now + self.run + self.back


@attrs.frozen
class RouteDecision:
    """Which model a turn went to, and why.

    Attributes:
        model: The chosen model id.
        tier: The chosen model's tier name.
        required: The tier the turn needed.
        reason: One sentence a person can read (``"stayed on claude-opus-4-6: moving to
            claude-haiku-4-5 would write 21,400 tokens ($0.0268) to save $0.0113 over
            ~2.1 turns"``).
        expected_usd: The chosen model's expected total over its horizon.
        candidates: Every acceptable model's expected cost, cheapest first.
        cache_aware: Whether the cache was counted (``False``: the signal's tier, as a
            naive router would).
    """

    model: str
    tier: str
    required: str
    reason: str
    expected_usd: float | None = None
    candidates: tuple[Costed, ...] = ()
    cache_aware: bool = True


def horizon(p_above: float, remaining: float) -> float:
    """Expected turns after this one before a turn needs a higher tier, at most *remaining*:
    ``sum((1 - p) ** k for k in 1..remaining)`` (each later turn independently needs more with
    probability *p*); a fractional *remaining* counts its last turn in part."""
    if remaining <= 0:
        return 0.0
    stay = 1.0 - p_above
    if p_above <= 0.0:
        return remaining
    if stay <= 0.0:
        return 0.0
    # The geometric sum, in closed form, over a real-valued number of turns.
    return float(stay * (1.0 - stay**remaining) / p_above)


def p_return(p_above: float, remaining: float) -> float:
    """Probability that some turn among the *remaining* needs a tier above."""
    if remaining <= 0 or p_above <= 0.0:
        return 0.0
    return float(1.0 - (1.0 - p_above) ** remaining)


def _now(option: Option, facts: RouteFacts) -> float:
    p = option.prices
    if option.caches:
        # The static prefix, if cold, is written once for the fleet: this turn's share.
        writes = option.write_cost(option.cold + facts.new)
    else:
        writes = (option.cold + facts.new) * p.input
    return option.warm * p.read + writes + option.uncached * p.input + facts.output * p.output


def _per_turn(option: Option, facts: RouteFacts) -> float:
    """A later turn on *option*'s model: reads the context, writes what a turn adds."""
    p = option.prices
    context = option.context + facts.new
    if option.caches:
        return context * p.read + facts.growth * p.write + facts.output * p.output
    return (context + facts.growth) * p.input + facts.output * p.output


def run_ends(p_leave: float, remaining: float) -> list[tuple[int, float]]:
    """``(k, probability)``: the run of this tier lasts exactly *k* turns after this one and
    the turn after them is of another tier, within the *remaining* turns. Each later turn
    leaves with probability *p_leave*, so ``P(k) = (1 - p)^k - (1 - p)^min(k + 1,
    remaining)``; the probabilities add up to ``p_return(p_leave, remaining)``."""
    if remaining <= 0 or p_leave <= 0.0:
        return []
    stay = 1.0 - p_leave
    ends = []
    k = 0
    while k < remaining and stay**k > 1e-9:
        ends.append((k, stay**k - stay ** min(k + 1.0, remaining)))
        k += 1
    return ends


def _way_back(option: Option, target: Option, facts: RouteFacts) -> float:
    """The expected write of *target* when the run on *option*'s model ends with a turn
    that needs *target* (before the probability that the turn needs a tier above at all).

    Summed over how long the run lasts rather than priced at its mean length: *target*'s
    entries lapse after a fixed time, so a long run can find them gone where the mean run
    would not, and the write of the whole context then dwarfs that of a short run's
    additions (the cost is not linear in the run's length)."""
    ends = run_ends(facts.p_leave, facts.remaining)
    total = sum(w for _, w in ends)
    if total <= 0.0:
        return 0.0
    expected = 0.0
    for k, weight in ends:
        # Time from now to the turn that returns: this turn's gap and the k turns' after it.
        away = (k + 1.0) * facts.gap_s
        context = option.context + facts.new + facts.output + k * facts.growth
        missing = max(0.0, context - target.held_after(away))
        expected += weight * target.write_cost(missing)
    return expected / total


def _cost(option: Option, options: Sequence[Option], facts: RouteFacts, turns: float) -> Costed:
    """*option*'s expected cost over the same window for every candidate: this turn, the
    *turns* after it that the required tier can answer, and the way back when the turn
    that ends the window needs more than *option*'s model."""
    p = facts.p_above
    p_leave = facts.p_leave
    p_up = p[option.tier] if option.tier < len(p) else 0.0
    back = 0.0
    above = [o for o in options if o.tier > option.tier]
    if above and p_leave > 0.0:
        # The way back goes to the current model when it is above this one (its entry may
        # outlive the run), else to the cheapest model of the next tier up.
        current = next((o for o in above if o.model == facts.current), None)
        target = current or min(above, key=lambda o: (o.tier, _now(o, facts)))
        # The window ends with a turn of another tier; it needs more than this model with
        # probability about p_up / p_leave.
        p_back = p_return(p_leave, facts.remaining) * min(1.0, p_up / p_leave)
        back = p_back * _way_back(option, target, facts)
    return Costed(
        model=option.model,
        now=_now(option, facts),
        run=turns * _per_turn(option, facts),
        back=back,
        turns=turns,
        writes=option.cold + option.uncached + facts.new,
    )


def decide(options: Sequence[Option], facts: RouteFacts, names: Sequence[str]) -> RouteDecision:
    """Choose the model for a turn by expected total cost.

    Args:
        options: Every model of every tier (one per tier), with its cache state; models below
            ``facts.required`` are kept for the way back but never chosen.
        facts: What is known of the conversation.
        names: Tier names by rank.

    Returns:
        The decision, with every acceptable candidate's costs, cheapest first.

    Raises:
        ValueError: when no option is at or above the required tier.
    """
    if not any(o.tier >= facts.required for o in options):
        raise ValueError(f"no model at or above tier {names[facts.required]!r}")
    # A turn goes to its tier's model, or stays on (or moves down towards it from) the
    # bigger model the conversation is on; never up past what it needs. A move up "to
    # write the context now rather than later" would be undone by the next turn's own
    # decision, which finds the smaller model warm again: one big write for nothing.
    current = next((o.tier for o in options if o.model == facts.current), -1)
    top = max(facts.required, current)
    needed = [o for o in options if o.tier >= facts.required]
    cheapest = min(needed, key=lambda o: o.tier)
    if cheapest.warm <= cheapest.shared:
        # The turn's own tier holds nothing of this conversation (beyond a prefix the fleet
        # keeps), as on its first turn: every candidate writes the conversation anew, and
        # the next easy turn would have no warm entry to move back down for. A bigger
        # model may go first, when the way back to it would cost more than this turn there.
        top = max(o.tier for o in options)
    acceptable = [o for o in needed if o.tier <= top]
    # One window for every candidate: the turns until one needs more than the required
    # tier (at most the expected remaining turns), so each is costed over the same turns.
    turns = horizon(facts.p_leave, facts.remaining)
    costed = sorted(
        (_cost(o, options, facts, turns) for o in acceptable),
        # Ties go to the current model (a move must earn its keep), then the cheaper tier.
        key=lambda c: (c.total, c.model != facts.current),
    )
    best = costed[0]
    chosen = next(o for o in acceptable if o.model == best.model)
    required = names[facts.required]
    return RouteDecision(
        model=best.model,
        tier=names[chosen.tier],
        required=required,
        reason=_reason(best, costed, acceptable, facts, required),
        expected_usd=best.total,
        candidates=tuple(costed),
    )


def _usd(value: float) -> str:
    return f"${value:.4f}"


def _reason(
    best: Costed,
    costed: Sequence[Costed],
    acceptable: Sequence[Option],
    facts: RouteFacts,
    required: str,
) -> str:
    if len(costed) == 1:
        return f"{best.model}: the only model at or above tier {required!r}"
    cheapest_tier = min(acceptable, key=lambda o: o.tier)
    current = facts.current
    if best.model == current and cheapest_tier.model != current:
        other = next(c for c in costed if c.model == cheapest_tier.model)
        return (
            f"stayed on {current}: moving to {other.model} would write {other.writes:,} tokens "
            f"({_usd(other.now)} this turn) and cost {_usd(other.total - best.total)} more "
            f"over ~{other.turns + 1:.1f} turns"
        )
    runner_up = costed[1]
    staying = next((c for c in costed if c.model == current), None)
    if current is None or best.model == current:
        return (
            f"{best.model}: cheapest at or above tier {required!r} "
            f"({_usd(best.total)} expected over ~{best.turns + 1:.1f} turns, "
            f"{runner_up.model} {_usd(runner_up.total)})"
        )
    if staying is None:
        return (
            f"moved to {best.model}: the turn needs tier {required!r}; "
            f"{_usd(best.total)} expected, {runner_up.model} {_usd(runner_up.total)}"
        )
    return (
        f"moved to {best.model}: writes {best.writes:,} tokens ({_usd(best.now)} this turn) "
        f"and saves {_usd(staying.total - best.total)} against staying on {current} "
        f"over ~{best.turns + 1:.1f} turns"
    )

"""Routing a session's turn (:class:`convo.Router`): what each model's cache holds for this
conversation, the decision, and moving the session onto the chosen model.

Kept apart from :mod:`convo.session.core` so the turn's path reads the same with or without
a router; the core calls :func:`route_turn` before it lays the turn out.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from convo import models
from convo.layout import Layout
from convo.policy import pool_for
from convo.policy.arithmetic import TTL_SECONDS
from convo.policy.reuse import prefix_on_model
from convo.routing import Option, RouteDecision, RouteFacts, decide
from convo.tokens import message_tokens
from convo.warm import WarmKey

if TYPE_CHECKING:
    from convo.session.core import SessionCore

__all__ = ["route_turn", "use_model"]


def route_turn(core: SessionCore, message: Mapping[str, Any], tier: str | None) -> RouteDecision:
    """Choose the model for the user turn *message* and move *core* onto it."""
    router = core.router
    assert router is not None
    required = router.required(message["content"], core.history.stored, tier)
    names = router.names
    if not router.cache_aware:
        model = router.models[required]
        decision = RouteDecision(
            model=model,
            tier=names[required],
            required=names[required],
            reason=f"{model}: tier {names[required]!r} by the signal (cache not counted)",
            cache_aware=False,
        )
    else:
        # Other conversations' turns per second, by tier: they share a cold prefix's write.
        others = max(0.0, router.fleet_rate() - 1.0 / _gap_s(core))
        per_tier = [others * share for share in router.fleet_share()]
        decision = decide(
            [
                _option(core, message, model, rank, per_tier[rank])
                for rank, model in enumerate(router.models)
            ],
            _facts(core, message, required),
            names,
        )
    use_model(core, decision.model)
    return decision


def _prefix_for(core: SessionCore, model: str) -> Any:
    return prefix_on_model(core.prefix, model)


def _option(
    core: SessionCore, message: Mapping[str, Any], model: str, rank: int, others: float
) -> Option:
    """What *model*'s cache holds for this turn's request (tracker and fleet); *others*:
    the other conversations' turns per second on *model*."""
    router = core.router
    assert router is not None
    prefix = _prefix_for(core, model)
    now = core.clock()
    # The request this turn would send to *model*, laid out as the turn will be (suffix,
    # breakpoints, the new message last): the server's 20-block lookback counts back from
    # its last breakpoint, so a quote without the new message could find an entry the real
    # request cannot reach. Rendering a plain list hashes the history again (a routed
    # turn's quote costs O(history); an unrouted turn never pays it).
    options: Any = core._layout_options
    layout = Layout(prefix, **options)
    rendered = layout.render([*core.history.stored, message], max_tokens=1)
    p = core.tracker.predict(rendered, previous=None)
    warm, cold, uncached = p.cache_read, p.cache_write_5m + p.cache_write_1h, p.input
    # The fleet's entry of the static prefix on this model (another session keeps it).
    content = prefix.keys[-1].hex() if prefix.keys else prefix.fingerprint
    key = WarmKey.for_api_key(core._workspace, model, content)
    pool = pool_for(core.registry, repr(key))
    shared = prefix.tokens if pool.live(now) and cold + warm >= prefix.tokens else 0
    if shared > warm:
        cold, warm = cold - (shared - warm), shared
    # The static prefix's part of what must be written: the fleet's, not this turn's alone
    # (the other conversations' turns on this model while it lives share it).
    fleet_cold = max(0, min(cold, prefix.tokens - warm))
    # What this model holds for the conversation, entry by entry: a 1h entry of the prefix
    # can outlive a 5m entry of the history behind it, so the time left is the deepest
    # entry's, not the longest-lived one's.
    factor = core.tracker.factor(model)
    holds = tuple(
        sorted(
            (left, round(e.tokens * factor))
            for e in core.tracker.entries()
            if e.model == model and (left := core.tracker.expires_at(e) - now) > 0
        )
    )
    deepest = [left for left, tokens in holds if tokens >= warm]
    ttl_left = max(deepest, default=max((left for left, _ in holds), default=0.0))
    return Option(
        model=model,
        tier=rank,
        prices=router.prices(model, core._history_ttl_now()),
        warm=warm,
        cold=max(0, cold),
        uncached=uncached,
        shared=shared,
        ttl_left_s=ttl_left,
        fleet_cold=fleet_cold,
        fleet_uses=others * _prefix_ttl_s(core),
        holds=holds,
        prefix_write=router.prices(model, prefix.ttl).write,
    )


def _facts(core: SessionCore, message: Mapping[str, Any], required: int) -> RouteFacts:
    router = core.router
    assert router is not None
    state = core.route_state
    new = message_tokens(message)
    # Before any answer: a quarter of max_tokens (answers rarely run to the limit).
    max_tokens: int = core._layout_options["max_tokens"]  # type: ignore[assignment]
    output = state.output(max_tokens / 4)
    turns = core.turns
    fleet = router.fleet_turns()
    if router.expected_turns is not None:
        remaining = max(1.0, router.expected_turns - turns - 1)
    elif turns == 0 and fleet is not None:
        # Nothing of this conversation yet: as long as the fleet's conversations so far.
        remaining = max(1.0, fleet - 1.0)
    else:
        remaining = max(1.0, float(turns))  # n turns so far: about n more
    p_above = state.p_above(len(router.tiers), now=required, prior=router.fleet_p_above())
    gap = _gap_s(core)
    # How long a run of this tier lasts (a turn of a lower tier ends it too).
    p_same = state.p_same(required, now=required, prior=router.fleet_p_same()[required])
    return RouteFacts(
        required=required,
        current=core.prefix.model if core.turns else None,
        new=0,  # the options' quotes hold the whole request, this turn's message included
        output=output,
        growth=state.growth(new + output),
        remaining=remaining,
        p_above=p_above,
        gap_s=gap,
        p_same=p_same,
    )


def _gap_s(core: SessionCore) -> float:
    """The conversation's typical seconds between turns: the median of its latest gaps;
    before two turns, half the 5-minute TTL (as likely to outlive it as not)."""
    gaps = core._gaps
    return max(1e-3, statistics.median(gaps[-20:])) if gaps else 150.0


def _prefix_ttl_s(core: SessionCore) -> float:
    """How long the static prefix lives once written: its TTL as laid out now."""
    return TTL_SECONDS.get(core.prefix.ttl, TTL_SECONDS["5m"])


def use_model(core: SessionCore, model: str) -> None:
    """Move *core* onto *model*: its layouts, warm key, policy pool, limiter and rules."""
    if model == core.prefix.model:
        return
    core._use_prefix(_prefix_for(core, model), core._workspace)
    core._info = models.lookup(model, core.prefix.models)
    core._pool = pool_for(core.registry, repr(core.warm_key))
    core._prefix_known_until = float("-inf")  # what the registry said was of another model
    core._checked = (None, 0)  # the rules differ by model: check the whole request again
    if core.limiter_for is not None:
        core.limiter = core.limiter_for(model)


def note_reply(core: SessionCore, decision: RouteDecision, output: int, added: int) -> None:
    """Remember what a routed turn showed: the tier it needed, its answer's length and how
    much it added to the context."""
    router = core.router
    assert router is not None
    rank = router.rank(decision.required)
    state = core.route_state
    if state.needed:
        router.observe_transition(state.needed[-1], rank)
    state.needed.append(rank)
    router.observe_length(id(state), len(state.needed))
    router.observe_turn_at(core.clock())
    core.route_state.outputs.append(output)
    core.route_state.growths.append(added)

"""The bench's workloads: who sends what, and when, drawn from a seed.

A :class:`Workload` is data: a static prefix (system text, tools), and conversations, each
a suffix and turns at fixed times (seconds from the start). Times are drawn up front (an
open-loop schedule), so every strategy is asked to send the same turns at the same times
and differences in cost come from the strategy alone. Text is made of words of at most five
letters, so its size in tokens (``convo.tokens``, which the emulator counts with) is exact.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

__all__ = [
    "QUICK",
    "ROUTING_SHAPES",
    "ROUTING_TIERS",
    "THREE_TIERS",
    "USERS_ARGUMENT",
    "WORKLOADS",
    "Conversation",
    "Turn",
    "Workload",
    "build",
    "names",
    "words",
]

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def words(rng: random.Random, count: int) -> str:
    """Return *count* random words of 2–5 letters: exactly *count* tokens."""
    return " ".join(
        "".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 5))) for _ in range(count)
    )


def _text(rng: random.Random, count: int) -> dict[str, Any]:
    return {"type": "text", "text": words(rng, count)}


@attrs.frozen
class Turn:
    """One user turn: when it is sent and its content blocks.

    Attributes:
        at: Seconds from the workload's start.
        blocks: The user message's content blocks (text).
        tier: The model tier the turn needs (``routing``: ``"small"`` or ``"large"``);
            ``None`` in the caching workloads, where every turn goes to one model.

    .. versionadded:: 0.1
    .. versionchanged:: 0.4
       ``tier``.
    """

    at: float
    blocks: tuple[Mapping[str, Any], ...]
    tier: str | None = None


@attrs.frozen
class Conversation:
    """One user's conversation (or one task).

    Attributes:
        id: Unique within the workload.
        suffix: The per-user dynamic text (``None``: none).
        turns: In time order.

    .. versionadded:: 0.1
    """

    id: str
    suffix: str | None
    turns: tuple[Turn, ...]


@attrs.frozen
class Workload:
    """A seeded workload.

    Attributes:
        name: One of :data:`WORKLOADS`.
        model: The model every request uses.
        system: The static system blocks' text.
        tools: Static tool definitions (may be empty).
        conversations: Everyone's turns.
        tools_after: The tool list from ``tools_change_at`` on (``agent``), else ``None``.
        tools_change_at: When the tool list changes (seconds), else ``None``.
        stateless: Serve every request from stored history with a fresh session.
        max_tokens: ``max_tokens`` of every turn.
        params: The sizes it was drawn with (for the report).
        tiers: Tier name to model id, cheapest first (``routing``; empty elsewhere).
        reply_tokens: Output tokens of each emulated answer (``None``: the emulator's 24).

    .. versionadded:: 0.1
    .. versionchanged:: 0.4
       ``tiers`` and ``reply_tokens``.
    """

    name: str
    model: str
    system: tuple[str, ...]
    tools: tuple[Mapping[str, Any], ...]
    conversations: tuple[Conversation, ...]
    tools_after: tuple[Mapping[str, Any], ...] | None = None
    tools_change_at: float | None = None
    stateless: bool = False
    max_tokens: int = 64
    params: Mapping[str, Any] = attrs.field(factory=dict)
    tiers: tuple[tuple[str, str], ...] = ()
    reply_tokens: int | None = None

    def tools_at(self, at: float) -> tuple[Mapping[str, Any], ...]:
        """The tool list in force at *at*."""
        changed = self.tools_after is not None and self.tools_change_at is not None
        if changed and at >= self.tools_change_at:  # type: ignore[operator]
            return self.tools_after  # type: ignore[return-value]
        return self.tools

    @property
    def requests(self) -> int:
        """Turns in the workload."""
        return sum(len(c.turns) for c in self.conversations)


_MODEL = "claude-sonnet-4-6"


def _think(rng: random.Random, long_share: float) -> float:
    """A think time: mostly 10–120 s, a share of 6–20 minutes (past a 5m TTL)."""
    if rng.random() < long_share:
        return rng.uniform(360.0, 1200.0)
    return rng.uniform(10.0, 120.0)


def chatbot(
    seed: int,
    *,
    users: int = 50,
    system_tokens: int = 10_000,
    suffix_tokens: int = 200,
    turns: tuple[int, int] = (5, 30),
    message_tokens: tuple[int, int] = (10, 80),
    long_gap_share: float = 0.15,
    stagger_s: float = 600.0,
    stateless: bool = False,
) -> Workload:
    """A chatbot: one static system prompt, a personal suffix per user, half the users
    starting in a burst at 0 and half staggered over *stagger_s*."""
    rng = random.Random(f"chatbot:{seed}")
    system = words(rng, system_tokens)
    conversations = []
    for user in range(users):
        at = 0.0 if user % 2 == 0 else rng.uniform(0.0, stagger_s)
        n = rng.randint(*turns)
        items = []
        for k in range(n):
            if k:
                at += _think(rng, long_gap_share)
            items.append(Turn(at, (_text(rng, rng.randint(*message_tokens)),)))
        conversations.append(
            Conversation(f"u{user:04d}", f"User {user}: " + words(rng, suffix_tokens), tuple(items))
        )
    return Workload(
        name="stateless" if stateless else "chatbot",
        model=_MODEL,
        system=(system,),
        tools=(),
        conversations=tuple(conversations),
        stateless=stateless,
        params={
            "users": users,
            "system_tokens": system_tokens,
            "suffix_tokens": suffix_tokens,
            "turns": list(turns),
            "long_gap_share": long_gap_share,
        },
    )


def worker_pool(
    seed: int,
    *,
    tasks: int = 500,
    workers: int = 32,
    prefix_tokens: int = 6_000,
    bursts: int = 5,
    burst_gap_s: tuple[float, float] = (120.0, 900.0),
    service_s: float = 3.0,
    task_tokens: tuple[int, int] = (50, 300),
) -> Workload:
    """Single-turn tasks on a shared prefix, arriving in bursts, run by a fixed pool of
    workers (a task starts when it has arrived and a worker is free; each takes
    *service_s*)."""
    rng = random.Random(f"worker-pool:{seed}")
    system = words(rng, prefix_tokens)
    arrivals: list[float] = []
    at = 0.0
    per_burst = [tasks // bursts + (1 if i < tasks % bursts else 0) for i in range(bursts)]
    for i, count in enumerate(per_burst):
        if i:
            at += rng.uniform(*burst_gap_s)
        arrivals.extend([at] * count)
    free = [0.0] * workers
    conversations = []
    for task, arrival in enumerate(arrivals):
        slot = min(range(workers), key=lambda w: free[w])
        start = max(arrival, free[slot])
        free[slot] = start + service_s
        turn = Turn(start, (_text(rng, rng.randint(*task_tokens)),))
        conversations.append(Conversation(f"t{task:05d}", None, (turn,)))
    return Workload(
        name="worker-pool",
        model=_MODEL,
        system=(system,),
        tools=(),
        conversations=tuple(conversations),
        params={
            "tasks": tasks,
            "workers": workers,
            "prefix_tokens": prefix_tokens,
            "bursts": bursts,
            "service_s": service_s,
        },
    )


def _tool(rng: random.Random, index: int, tokens: int) -> dict[str, Any]:
    return {
        "name": f"tool_{index:02d}",
        "description": words(rng, tokens),
        "input_schema": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": words(rng, 8)}},
            "required": ["query"],
        },
    }


def agent(
    seed: int,
    *,
    agents: int = 8,
    tools: int = 30,
    tool_tokens: int = 190,
    system_tokens: int = 1_000,
    steps: tuple[int, int] = (6, 20),
    blocks: tuple[int, int] = (5, 40),
    block_tokens: tuple[int, int] = (20, 200),
    step_s: tuple[float, float] = (2.0, 30.0),
    start_spread_s: float = 1_800.0,
) -> Workload:
    """Agents on ~8k tokens of tools: each step sends 5–40 blocks (tool results of parallel
    and sequential calls, as text blocks), a few seconds apart; the tool list changes once,
    midway through the run."""
    rng = random.Random(f"agent:{seed}")
    definitions = tuple(_tool(rng, i, tool_tokens) for i in range(tools))
    changed = (*definitions, _tool(rng, tools, tool_tokens))
    system = words(rng, system_tokens)
    conversations = []
    end = 0.0
    for index in range(agents):
        at = rng.uniform(0.0, start_spread_s)
        items = []
        for k in range(rng.randint(*steps)):
            if k:
                at += rng.uniform(*step_s)
            count = rng.randint(*blocks)
            items.append(
                Turn(at, tuple(_text(rng, rng.randint(*block_tokens)) for _ in range(count)))
            )
        end = max(end, at)
        conversations.append(Conversation(f"a{index:03d}", None, tuple(items)))
    return Workload(
        name="agent",
        model=_MODEL,
        system=(system,),
        tools=definitions,
        conversations=tuple(conversations),
        tools_after=changed,
        tools_change_at=end / 2,
        params={
            "agents": agents,
            "tools": tools,
            "tool_tokens": tool_tokens,
            "steps": list(steps),
            "blocks": list(blocks),
        },
    )


def idle_gaps(
    seed: int,
    *,
    users: int = 20,
    system_tokens: int = 8_000,
    suffix_tokens: int = 150,
    turns: tuple[int, int] = (3, 8),
    gap_min: tuple[float, float] = (2.0, 70.0),
    message_tokens: tuple[int, int] = (10, 80),
) -> Workload:
    """Sessions whose turns are 2–70 minutes apart: where TTL choice and keep-alive decide
    the bill."""
    rng = random.Random(f"idle-gaps:{seed}")
    system = words(rng, system_tokens)
    conversations = []
    for user in range(users):
        at = rng.uniform(0.0, 3_600.0)
        items = []
        for k in range(rng.randint(*turns)):
            if k:
                at += 60.0 * rng.uniform(*gap_min)
            items.append(Turn(at, (_text(rng, rng.randint(*message_tokens)),)))
        conversations.append(
            Conversation(f"u{user:04d}", f"User {user}: " + words(rng, suffix_tokens), tuple(items))
        )
    return Workload(
        name="idle-gaps",
        model=_MODEL,
        system=(system,),
        tools=(),
        conversations=tuple(conversations),
        params={"users": users, "system_tokens": system_tokens, "gap_min": list(gap_min)},
    )


#: The routing workload's tiers: a small and a large model, as in ``docs/routing.md``.
ROUTING_TIERS: tuple[tuple[str, str], ...] = (
    ("small", "claude-haiku-4-5"),
    ("large", "claude-opus-4-6"),
)

#: Three tiers, small / standard / large (``routing(..., tiers=THREE_TIERS)``).
THREE_TIERS: tuple[tuple[str, str], ...] = (
    ("small", "claude-haiku-4-5"),
    ("standard", "claude-sonnet-4-6"),
    ("large", "claude-opus-4-6"),
)


#: Other shapes of the routing workload that ``docs/routing.md`` measures, as size
#: arguments (``build("routing", seed, sizes=ROUTING_SHAPES["document"])``): a 20,000-token
#: document in each of 20 conversations with mostly hard turns (50–90% of easy turns
#: followed by a hard one, 90% of hard turns by another); hard messages that paste
#: 500–4,000 tokens (files, logs) so that the context grows fast; and the document shape
#: with Sonnet 4.6 as the large tier.
ROUTING_SHAPES: Mapping[str, Mapping[str, Any]] = {
    "document": {
        "users": 20,
        "suffix_tokens": 20_000,
        "enter_hard": (0.5, 0.9),
        "stay_hard": 0.9,
    },
    "document-sonnet": {
        "users": 20,
        "suffix_tokens": 20_000,
        "enter_hard": (0.5, 0.9),
        "stay_hard": 0.9,
        "tiers": (("small", "claude-haiku-4-5"), ("large", "claude-sonnet-4-6")),
    },
    "pasted": {"hard_message_tokens": (500, 4_000)},
}


def routing(
    seed: int,
    *,
    users: int = 40,
    system_tokens: int = 12_000,
    suffix_tokens: int = 200,
    turns: tuple[int, int] = (20, 40),
    message_tokens: tuple[int, int] = (10, 80),
    hard_message_tokens: tuple[int, int] = (60, 400),
    enter_hard: tuple[float, float] = (0.05, 0.30),
    stay_hard: float = 0.6,
    top_share: tuple[float, float] = (0.2, 0.6),
    long_gap_share: float = 0.15,
    stagger_s: float = 1_800.0,
    reply_tokens: int = 300,
    tiers: Sequence[tuple[str, str]] = ROUTING_TIERS,
) -> Workload:
    """Long conversations on a large shared prefix, each turn needing one of *tiers*.

    Whether a turn is hard follows a two-state Markov chain per user, so hard turns
    cluster (a user working through a problem asks several hard questions in a row): from
    an easy turn the next is hard with the user's own probability, drawn from
    *enter_hard*; from a hard turn it stays hard with *stay_hard*. The first turn is drawn
    from the chain's stationary share. With the defaults about 11–43% of a user's turns
    are hard (mean run of hard turns 2.5). An easy turn needs the cheapest tier. A run of
    hard turns needs one tier above it throughout (one problem, one level of difficulty):
    the top tier with the user's own probability, drawn from *top_share*, else one of the
    middle tiers at random (with two tiers every hard turn needs the top one). Hard
    messages are longer (a pasted snippet, a problem statement). Users start at uniform
    times over *stagger_s*; think times are the chatbot's (10–120 s, a share of 6–20
    minutes). Answers are *reply_tokens* long on every model (the emulator cannot tell a
    good answer from a bad one).
    """
    tiers = tuple((str(name), str(model)) for name, model in tiers)
    if len(tiers) < 2:
        raise ValueError(f"the routing workload needs at least two tiers; got {tiers}")
    rng = random.Random(f"routing:{seed}")
    system = words(rng, system_tokens)
    names = [name for name, _ in tiers]
    conversations = []
    for user in range(users):
        enter = rng.uniform(*enter_hard)
        # Drawn only with middle tiers, so the two-tier shape draws what it always drew.
        top = rng.uniform(*top_share) if len(tiers) > 2 else 1.0
        hard = rng.random() < enter / (enter + 1.0 - stay_hard)
        at = rng.uniform(0.0, stagger_s)
        items = []
        level = _hard_level(rng, top, len(tiers)) if hard else 0
        for k in range(rng.randint(*turns)):
            if k:
                at += _think(rng, long_gap_share)
                was = hard
                hard = rng.random() < (stay_hard if hard else enter)
                if hard and not was:
                    level = _hard_level(rng, top, len(tiers))
            size = rng.randint(*(hard_message_tokens if hard else message_tokens))
            tier = names[level] if hard else names[0]
            items.append(Turn(at, (_text(rng, size),), tier=tier))
        conversations.append(
            Conversation(f"u{user:04d}", f"User {user}: " + words(rng, suffix_tokens), tuple(items))
        )
    return Workload(
        name="routing",
        model=tiers[-1][1],
        system=(system,),
        tools=(),
        conversations=tuple(conversations),
        max_tokens=1_024,
        tiers=tiers,
        reply_tokens=reply_tokens,
        params={
            "users": users,
            "system_tokens": system_tokens,
            "turns": list(turns),
            "enter_hard": list(enter_hard),
            "stay_hard": stay_hard,
            "top_share": list(top_share),
            "long_gap_share": long_gap_share,
            "reply_tokens": reply_tokens,
            "tiers": [list(t) for t in tiers],
        },
    )


def _hard_level(rng: random.Random, top: float, count: int) -> int:
    """The tier rank a run of hard turns needs: the top with probability *top*, else a
    middle tier at random (the top when there is none)."""
    if count <= 2 or rng.random() < top:
        return count - 1
    return rng.randint(1, count - 2)


def _stateless(seed: int, **sizes: Any) -> Workload:
    return chatbot(seed, stateless=True, **sizes)


WORKLOADS: Mapping[str, Callable[..., Workload]] = {
    "chatbot": chatbot,
    "worker-pool": worker_pool,
    "agent": agent,
    "idle-gaps": idle_gaps,
    "stateless": _stateless,
    "routing": routing,
}

# What --quick runs: the same shapes, smaller, so all 35 runs take under a minute.
QUICK: Mapping[str, Mapping[str, Any]] = {
    "chatbot": {"users": 8, "system_tokens": 4_000, "turns": (3, 8)},
    "worker-pool": {"tasks": 48, "workers": 12, "prefix_tokens": 3_000, "bursts": 2},
    "agent": {"agents": 2, "tools": 12, "steps": (4, 8), "blocks": (5, 30)},
    "idle-gaps": {"users": 4, "system_tokens": 4_000, "turns": (3, 5)},
    "stateless": {"users": 6, "system_tokens": 4_000, "turns": (3, 6)},
    "routing": {"users": 6, "system_tokens": 5_000, "turns": (6, 10)},
}

# The argument of each workload that --users sets.
USERS_ARGUMENT: Mapping[str, str] = {
    "chatbot": "users",
    "worker-pool": "tasks",
    "agent": "agents",
    "idle-gaps": "users",
    "stateless": "users",
    "routing": "users",
}


def build(
    name: str,
    seed: int,
    *,
    quick: bool = False,
    users: int | None = None,
    sizes: Mapping[str, Any] | None = None,
) -> Workload:
    """Draw workload *name* from *seed*.

    Args:
        quick: Use the small sizes of ``--quick``.
        users: Override the number of users (tasks for ``worker-pool``, agents for
            ``agent``).
        sizes: Any other size argument of the workload's function.

    Raises:
        ValueError: for an unknown workload name.
    """
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    arguments: dict[str, Any] = dict(QUICK[name]) if quick else {}
    arguments.update(sizes or {})
    if users is not None:
        arguments[USERS_ARGUMENT[name]] = users
    return WORKLOADS[name](seed, **arguments)


def names() -> Sequence[str]:
    """Every workload's name, in the order the report shows them."""
    return tuple(WORKLOADS)

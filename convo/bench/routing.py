"""The routing workload's strategies: which model answers each turn.

Four ways to answer the same turns, all through :class:`convo.Session` with the same layout
and options, so they differ in the model alone: ``always-large`` and ``always-small`` (one
model for every turn), ``naive-router`` (each turn to its own tier's model, the cache
ignored: ``Router(cache_aware=False)``) and ``convo-router`` (``Router()``, which may keep a
warm conversation on the large model when moving down would cost more). The routers are
told each turn's tier (``send(..., tier=...)``); the workload knows it.

A turn succeeds when a model of at least its tier answered it (the emulator cannot judge an
answer). Each strategy keeps a ledger of its own (in memory) and marks every conversation a
success when all its turns succeeded, so the ledger's cost per successful task (tasks =
conversations there: a session's rows carry its conversation id as their task) can be set
beside the bench's per-turn figure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anthropic
import attrs

import convo
from convo.bench.strategies import Sent, _content
from convo.bench.workloads import Conversation, Workload
from convo.ledger import Ledger

__all__ = ["ROUTING_STRATEGIES", "Routed", "RoutingStrategy", "make"]

#: The routing workload's strategies, in the order the report shows them.
ROUTING_STRATEGIES: tuple[str, ...] = (
    "always-large",
    "always-small",
    "naive-router",
    "convo-router",
)


@attrs.frozen
class Routed(Sent):
    """One turn a routing strategy sent, and which model answered it.

    Attributes:
        model: The model that answered.
        required: The tier the turn needed.
        tier: The tier of the model that answered.
    """

    model: str = ""
    required: str | None = None
    tier: str | None = None


class RoutingStrategy:
    """One run of a routing strategy: a :class:`convo.Session` per conversation.

    Args:
        name: One of :data:`ROUTING_STRATEGIES`.
        workload: A workload with tiers (``routing``).
        client: The SDK client on the emulator.
        clock, sleep: The run's virtual clock and sleep.
    """

    ticks = False

    def __init__(
        self,
        name: str,
        workload: Workload,
        client: anthropic.Anthropic,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Any],
    ) -> None:
        if not workload.tiers:
            raise ValueError(f"{name!r} needs a workload with model tiers, such as 'routing'")
        self.name = name
        self._workload = workload
        self._client = client
        self._clock = clock
        self._sleep = sleep
        self._tiers = dict(workload.tiers)
        self._tier_of = {model: tier for tier, model in workload.tiers}
        names = list(self._tiers)
        self._router: convo.Router | None = None
        if name == "always-large":
            self._model = self._tiers[names[-1]]
        elif name == "always-small":
            self._model = self._tiers[names[0]]
        else:
            self._router = convo.Router(self._tiers, cache_aware=name == "convo-router")
            self._model = workload.model  # where a routed conversation starts
        # What a process shares (one registry, one limiter), on the run's virtual clock.
        self._registry = convo.WarmRegistry(clock=clock)
        self._limiter = convo.RateLimiter(clock=clock, wall_clock=clock)
        self.ledger = Ledger.open(":memory:")
        self._prefix = convo.Prefix(model=self._model, system=list(workload.system))
        self._sessions: dict[str, convo.Session] = {}
        self._next: dict[str, int] = {}
        self._ok: dict[str, bool] = {}  # every turn of the conversation so far succeeded
        self._lock = threading.Lock()

    def _session(self, conversation: Conversation) -> convo.Session:
        session = self._sessions.get(conversation.id)
        if session is None:
            session = convo.Session(
                self._prefix,
                client=self._client,
                suffix=conversation.suffix,
                registry=self._registry,
                limiter=self._limiter,
                ledger=self.ledger,
                conversation_id=conversation.id,
                clock=self._clock,
                sleep=self._sleep,
                max_tokens=self._workload.max_tokens,
                router=self._router,
            )
            self._sessions[conversation.id] = session
        return session

    def turn(
        self, conversation: Conversation, blocks: Sequence[Mapping[str, Any]], at: float
    ) -> list[Sent]:
        """Send the conversation's next turn (the driver sends them in order, once each)."""
        with self._lock:
            index = self._next.get(conversation.id, 0)
            self._next[conversation.id] = index + 1
            # Until it is answered, the turn counts against its conversation: a send that
            # raises is a turn that did not succeed.
            before = self._ok.get(conversation.id, True)
            self._ok[conversation.id] = False
        required = conversation.turns[index].tier
        session = self._session(conversation)
        if self._router is not None:
            reply = session.send([dict(b) for b in blocks], tier=required)
        else:
            reply = session.send([dict(b) for b in blocks])
        model = reply.route.model if reply.route is not None else self._model
        tier = self._tier_of[model]
        ok = required is None or self.rank(tier) >= self.rank(required)
        with self._lock:
            self._ok[conversation.id] = before and ok
        return [Routed("turn", reply.usage, _content(reply.message), model, required, tier)]

    def finish(self) -> dict[str, Any]:
        """Mark each conversation in the ledger (success: every turn sent and answered by
        a model of at least its tier), close the ledger, and return what it says."""
        for conversation in self._workload.conversations:
            if conversation.id not in self._next:
                continue
            done = self._next[conversation.id] == len(conversation.turns)
            ok = done and self._ok.get(conversation.id, False)
            self.ledger.mark_outcome(conversation.id, "success" if ok else "failure")
        tasks = self.ledger.task_cost()
        self.ledger.close()
        per = tasks.per_success
        return {
            "ledger_conversations_ok": tasks.successful,
            "ledger_conversations_failed": tasks.failed,
            "ledger_cost_usd": float(tasks.cost_usd),
            "ledger_cost_per_ok_conversation_usd": None if per is None else float(per),
        }

    def rank(self, tier: str) -> int:
        """The rank of *tier* (0 = the cheapest)."""
        return list(self._tiers).index(tier)

    def tick(self, conversation: Conversation) -> list[Sent]:
        """Routing strategies keep nothing alive."""
        return []


def make(
    name: str,
    workload: Workload,
    client: anthropic.Anthropic,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], Any],
) -> RoutingStrategy:
    """Build routing strategy *name* for one run of *workload*.

    Raises:
        ValueError: for an unknown name, or a workload without tiers.
    """
    if name not in ROUTING_STRATEGIES:
        raise ValueError(
            f"unknown routing strategy {name!r}; choose from {', '.join(ROUTING_STRATEGIES)}"
        )
    return RoutingStrategy(name, workload, client, clock=clock, sleep=sleep)

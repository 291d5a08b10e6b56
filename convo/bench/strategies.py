"""The strategies the bench compares: how a client lays out and sends each turn.

Four are hand layouts on the raw SDK (``none``, ``system-only``, ``docs-layout``,
``automatic``), two are convo (``convo``: defaults; ``convo-tuned``: warm, keep-alive,
adaptive TTL), and one is the peer on PyPI (``cacheguardian``, wrapped around the same SDK
client as its README says). Each is asked for the same turns at the same times; each returns
what every request it sent used (pre-warms and keep-alive re-warms included).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import anthropic
import attrs

import convo
from convo.bench.workloads import Conversation, Workload

__all__ = [
    "STRATEGIES",
    "VARIANTS",
    "Sent",
    "Strategy",
    "StrategyUnavailable",
    "make",
]

_EPHEMERAL: Mapping[str, str] = {"type": "ephemeral"}


class StrategyUnavailable(RuntimeError):
    """A strategy cannot run here (its package is not installed)."""


@attrs.frozen
class Sent:
    """One request a strategy sent.

    Attributes:
        kind: ``"turn"``, ``"warm"`` or ``"keep_alive"``.
        usage: What it was billed.
        content: The assistant content it got back (``turn`` only; kept in history).
    """

    kind: str
    usage: convo.Usage
    content: tuple[Mapping[str, Any], ...] = ()


class Strategy(Protocol):
    """What the driver needs of a strategy (one instance per run)."""

    name: str
    ticks: bool  # whether the driver should call tick() while a conversation is active

    def turn(
        self, conversation: Conversation, blocks: Sequence[Mapping[str, Any]], at: float
    ) -> list[Sent]:
        """Send one user turn of *conversation*, sent at *at*; the last item is the turn."""
        ...

    def tick(self, conversation: Conversation) -> list[Sent]:
        """Give keep-alive a chance to re-warm *conversation*."""
        ...


def _text(text: str, *, cache: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if cache:
        block["cache_control"] = dict(_EPHEMERAL)
    return block


def _content(message: Any) -> tuple[Mapping[str, Any], ...]:
    return tuple(
        {"type": "text", "text": block.text} for block in message.content if block.type == "text"
    )


class _Raw:
    """A hand layout on the raw SDK: the client keeps each conversation's history."""

    ticks = False

    def __init__(self, name: str, workload: Workload, client: Any) -> None:
        self.name = name
        self._workload = workload
        self._client = client
        self._history: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _body(
        self, conversation: Conversation, messages: list[dict[str, Any]], at: float
    ) -> dict[str, Any]:
        workload = self._workload
        tools = [dict(t) for t in workload.tools_at(at)]
        static = [_text(t) for t in workload.system]
        suffix = conversation.suffix
        body: dict[str, Any] = {"model": workload.model, "max_tokens": workload.max_tokens}
        if tools:
            body["tools"] = tools
        if self.name in ("docs-layout", "cacheguardian") and suffix is not None:
            first = messages[0]
            messages[0] = {**first, "content": [_text(suffix), *first["content"]]}
            suffix = None
        system = static + ([_text(suffix)] if suffix is not None else [])
        if self.name == "system-only":
            system[-1]["cache_control"] = dict(_EPHEMERAL)
        elif self.name == "docs-layout":
            static[-1]["cache_control"] = dict(_EPHEMERAL)
            body["cache_control"] = dict(_EPHEMERAL)
        elif self.name == "automatic":
            body["cache_control"] = dict(_EPHEMERAL)
        if self.name == "cacheguardian" and suffix is None and not tools and len(system) == 1:
            body["system"] = system[0]["text"]  # as its README writes it: a plain string
        else:
            body["system"] = system
        body["messages"] = messages
        return body

    def turn(
        self, conversation: Conversation, blocks: Sequence[Mapping[str, Any]], at: float
    ) -> list[Sent]:
        with self._lock:
            history = self._history.setdefault(conversation.id, [])
        history.append({"role": "user", "content": [dict(b) for b in blocks]})
        # A fresh copy per request, as an app rebuilding the request from its store would:
        # nothing a wrapper adds to one request leaks into the next.
        body = self._body(conversation, copy.deepcopy(history), at)
        try:
            message = self._client.messages.create(**body)
        except BaseException:
            history.pop()
            raise
        content = _content(message)
        history.append({"role": "assistant", "content": [dict(b) for b in content]})
        return [Sent("turn", convo.Usage.from_message(message), content)]

    def tick(self, conversation: Conversation) -> list[Sent]:
        return []


class _Convo:
    """convo's Session, one per conversation (or one per request when stateless)."""

    def __init__(
        self,
        name: str,
        workload: Workload,
        client: anthropic.Anthropic,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Any],
        tuned: bool,
        warm: bool = True,
    ) -> None:
        self.name = name
        self._warm = warm
        self.ticks = tuned and not workload.stateless
        self._workload = workload
        self._client = client
        self._clock = clock
        self._sleep = sleep
        self._tuned = tuned
        # What a process shares by default (one registry, one limiter per model class),
        # built on the run's virtual clock instead of the wall clock.
        self._registry = convo.WarmRegistry(clock=clock)
        self._limiter = convo.RateLimiter(clock=clock, wall_clock=clock)
        self._prefixes: dict[tuple[int, ...], convo.Prefix] = {}
        self._sessions: dict[str, tuple[convo.Session, convo.Prefix]] = {}
        self._stored: dict[str, list[dict[str, Any]]] = {}
        self._warmed: set[str] = set()
        self._lock = threading.Lock()

    def _prefix(self, at: float) -> convo.Prefix:
        tools = self._workload.tools_at(at)
        key = (id(tools),)
        with self._lock:
            if key not in self._prefixes:
                self._prefixes[key] = convo.Prefix(
                    model=self._workload.model,
                    system=list(self._workload.system),
                    tools=[dict(t) for t in tools],
                )
            return self._prefixes[key]

    def _session(
        self, conversation: Conversation, prefix: convo.Prefix, messages: list[dict[str, Any]]
    ) -> convo.Session:
        options: dict[str, Any] = {}
        if self._tuned:
            options = {"keep_alive": convo.KeepAlive(margin_s=60.0), "adaptive_ttl": True}
        return convo.Session(
            prefix,
            client=self._client,
            suffix=conversation.suffix,
            registry=self._registry,
            limiter=self._limiter,
            ledger=False,
            clock=self._clock,
            sleep=self._sleep,
            max_tokens=self._workload.max_tokens,
            messages=messages,
            **options,
        )

    def turn(
        self, conversation: Conversation, blocks: Sequence[Mapping[str, Any]], at: float
    ) -> list[Sent]:
        prefix = self._prefix(at)
        sent: list[Sent] = []
        if self._workload.stateless:
            # How many web apps run: a fresh Session per request, from stored history.
            session = self._session(conversation, prefix, self._stored.get(conversation.id, []))
        else:
            held = self._sessions.get(conversation.id)
            if held is None or held[1] is not prefix:  # first turn, or the tools changed
                messages = held[0].history if held is not None else []
                session = self._session(conversation, prefix, messages)
                self._sessions[conversation.id] = (session, prefix)
            else:
                session = held[0]
        if self._tuned and self._warm and conversation.id not in self._warmed:
            # Warm when a conversation opens (single flight: one pre-warm for the fleet
            # while the prefix is live), as an app does when a user opens the chat.
            self._warmed.add(conversation.id)
            warm = session.warm()
            if warm is not None:
                sent.append(Sent("warm", warm.usage))
        reply = session.send([dict(b) for b in blocks])
        if self._workload.stateless:
            self._stored[conversation.id] = session.history
        sent.append(Sent("turn", reply.usage, _content(reply.message)))
        return sent

    def tick(self, conversation: Conversation) -> list[Sent]:
        held = self._sessions.get(conversation.id)
        if held is None:
            return []
        reply = held[0].keep_alive_tick()
        return [] if reply is None else [Sent("keep_alive", reply.usage)]


#: Variants :func:`make` builds on request (``Bench.run(workload, name)``) that the default
#: runs leave out: ``convo-keepalive`` is ``convo-tuned`` without the pre-warm when a
#: conversation opens, to measure keep-alive on its own.
VARIANTS: tuple[str, ...] = ("convo-keepalive",)

STRATEGIES: tuple[str, ...] = (
    "none",
    "system-only",
    "docs-layout",
    "automatic",
    "convo",
    "convo-tuned",
    "cacheguardian",
)


def make(
    name: str,
    workload: Workload,
    client: anthropic.Anthropic,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], Any],
) -> Strategy:
    """Build strategy *name* for one run of *workload* on *client*.

    Raises:
        ValueError: for an unknown name.
        StrategyUnavailable: ``cacheguardian`` without the package (``convo[bench]``).
    """
    if name in ("convo", "convo-tuned"):
        return _Convo(name, workload, client, clock=clock, sleep=sleep, tuned=name == "convo-tuned")
    if name == "convo-keepalive":
        return _Convo(name, workload, client, clock=clock, sleep=sleep, tuned=True, warm=False)
    if name == "cacheguardian":
        try:
            import cacheguardian
        except ImportError as error:
            raise StrategyUnavailable(
                'cacheguardian is not installed; pip install "convo[bench]"'
            ) from error
        from cacheguardian.core import logger

        # Its README: client = cacheguardian.wrap(anthropic.Anthropic()), every option at its
        # default (auto_fix, ttl_strategy="auto"). It prints a line per request on its own
        # rich console whatever log_level says; silenced, so the bench's progress bar stays
        # readable (and printing does not count as its overhead).
        logger.console.quiet = True
        wrapped = cacheguardian.wrap(client)
        logging.getLogger("cacheguardian").disabled = True  # its hit-rate alerts, likewise
        return _Raw(name, workload, wrapped)
    if name in STRATEGIES:
        return _Raw(name, workload, client)
    raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")

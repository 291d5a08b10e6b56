"""What :class:`Session` and :class:`AsyncSession` share: construction, what a session
knows, outcomes and forks. Only waiting and HTTP differ between the two shells."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anthropic
import attrs

from convo.layout import Prefix
from convo.retry import RetryPolicy
from convo.session import steps
from convo.session.core import SessionCore
from convo.session.reply import Stats
from convo.session.turn import Pending
from convo.session.wiring import (
    default_ledger,
    default_limiter,
    default_registry,
    workspace_of,
)
from convo.tracker import CacheTracker
from convo.warm import WarmKey

__all__ = ["SessionBase"]

# Options a fork inherits as they are (client, registry, limiter, ledger are shared objects).
_INHERITED = (
    "suffix",
    "suffix_placement",
    "history",
    "history_ttl",
    "retry",
    "budget",
    "max_tokens",
    "clock",
    "sleep",
    "diagnostics",
    "keep_alive",
    "adaptive_ttl",
    "refresh",
    "hooks",
    "router",
)


class SessionBase:
    """The shared half of a session shell (not public: use Session or AsyncSession)."""

    _core: SessionCore
    _client: Any
    _sleep: Any
    _options: dict[str, Any]
    _io: steps.IO

    def _build(
        self,
        prefix: Prefix,
        client: anthropic.Anthropic | anthropic.AsyncAnthropic,
        options: Mapping[str, Any],
    ) -> None:
        """Wire the core from the shell's constructor arguments (filling the defaults)."""
        if not isinstance(prefix, Prefix):
            raise TypeError(
                "a session needs a convo.Prefix, e.g. convo.Session(convo.Prefix("
                f"model='claude-sonnet-4-6', system=[...])); got {type(prefix).__name__} "
                f"{prefix!r:.60}"
            )
        self._client = client.with_options(max_retries=0)  # convo's retry loop is the only one
        self._sleep = options["sleep"]
        registry = options["registry"]
        limiter = options["limiter"]
        ledger = options["ledger"]
        retry = options["retry"]
        workspace = workspace_of(client)
        self._core = SessionCore(
            prefix,
            workspace=workspace,
            suffix=options["suffix"],
            suffix_placement=options["suffix_placement"],
            history=options["history"],
            registry=registry if registry is not None else default_registry(options["clock"]),
            limiter=limiter if limiter is not None else default_limiter(prefix.model, workspace),
            # Routed to another model, a default limiter follows it (limits are per model).
            limiter_for=None if limiter is not None else lambda m: default_limiter(m, workspace),
            router=options["router"],
            ledger=default_ledger() if ledger is None or ledger is True else (ledger or None),
            retry=retry if retry is not None else RetryPolicy(),
            budget=options["budget"],
            max_tokens=options["max_tokens"],
            clock=options["clock"],
            diagnostics=options["diagnostics"],
            keep_alive=options["keep_alive"],
            adaptive_ttl=options["adaptive_ttl"],
            history_ttl=options["history_ttl"],
            refresh=options["refresh"],
            session_id=options["session_id"],
            conversation_id=options["conversation_id"],
            messages=options["messages"],
            hooks=options["hooks"],
            tracker=options["_tracker"],
        )
        self._io = steps.IO(
            registry=self._core.registry,
            limiter=self._core.limiter,
            ledger=self._core.ledger,
            client=self._client,
            sleep=self._sleep,
        )
        self._options = {name: options[name] for name in _INHERITED}
        self._options["retry"] = self._core.retry

    def _begin(
        self,
        content: Any,
        max_tokens: int | None,
        params: Mapping[str, Any] | None,
        tier: str | None,
    ) -> Pending:
        """Plan a user turn; a routed turn may have moved the session onto another model's
        limiter, which the steps must then use."""
        pending = self._core.begin_turn(content, max_tokens=max_tokens, params=params, tier=tier)
        if self._io.limiter is not self._core.limiter:
            self._io = attrs.evolve(self._io, limiter=self._core.limiter)
        return pending

    # -- what the session knows -----------------------------------------------------------

    @property
    def prefix(self) -> Prefix:
        """The static prefix (its TTL may change with ``adaptive_ttl``)."""
        return self._core.prefix

    @property
    def history(self) -> list[dict[str, Any]]:
        """A copy of the conversation so far (what was sent and answered, verbatim)."""
        return list(self._core.history)

    @property
    def stats(self) -> Stats:
        """Totals over this session's replies."""
        return self._core.stats

    @property
    def session_id(self) -> str:
        """This session's id (in every ledger row it writes)."""
        return self._core.session_id

    @property
    def conversation_id(self) -> str:
        """This conversation's id (the default task id for :meth:`mark`)."""
        return self._core.conversation_id

    @property
    def warm_key(self) -> WarmKey:
        """The registry key of this session's static prefix (the API key only hashed)."""
        return self._core.warm_key

    @property
    def last_decision(self) -> Any:
        """The cache policy's latest decision for this session (a TTL, or whether a
        pre-warm or keep-alive re-warm was sent and why): a
        :class:`convo.policy.Decision`, or ``None`` before any."""
        return self._core.last_decision

    @property
    def tracker(self) -> CacheTracker:
        """What this session believes the server's cache holds."""
        return self._core.tracker

    def mark(self, outcome: str, *, task_id: str | None = None) -> None:
        """Mark the task (default: this conversation) a ``"success"`` or ``"failure"`` in
        the ledger, for cost per successful task."""
        if self._core.ledger is None:
            raise ValueError("this session has no ledger (it was built with ledger=False)")
        self._core.ledger.mark_outcome(task_id or self.conversation_id, outcome)  # type: ignore[arg-type]

    def _fork_options(self) -> dict[str, Any]:
        """Arguments for a fork: same prefix, history so far, shared client and backends,
        and a copy of what this session believes is cached; a new conversation id."""
        tracker = CacheTracker(
            clock=self._core.clock, models=self.prefix.models, refresh=self._core.tracker.refresh
        )
        for entry in self._core.tracker.entries():
            tracker.add_entry(entry)
        return {
            "client": self._client,
            "registry": self._core.registry,
            "limiter": self._core.limiter,
            "ledger": self._core.ledger or False,
            "session_id": self.session_id,
            "messages": list(self._core.history),
            "_tracker": tracker,
            **self._options,
        }

    def _check_interval(self, interval: float) -> None:
        policy = self._core.keep_alive
        if policy is None:
            raise ValueError(
                "run_keep_alive needs the session built with keep_alive=KeepAlive(...)"
            )
        if not 0 < interval < policy.margin_s:
            raise ValueError(
                f"interval={interval} must be > 0 and shorter than KeepAlive.margin_s="
                f"{policy.margin_s}, or a tick can step over the re-warm window"
            )

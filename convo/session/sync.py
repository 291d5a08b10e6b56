"""``Session``: the synchronous shell over :class:`~convo.session.core.SessionCore`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import anthropic

from convo.budget import Budget
from convo.layout import Prefix
from convo.ledger import Ledger
from convo.limits import RateLimiter
from convo.retry import RetryPolicy
from convo.routing import Router
from convo.session import steps
from convo.session.base import SessionBase
from convo.session.reply import Reply
from convo.session.streaming import ReplyStream
from convo.session.turn import KeepAlive, Pending
from convo.tracker import CacheTracker
from convo.warm import WarmBackend

__all__ = ["Session"]


class Session(SessionBase):
    """One conversation on a frozen static prefix, with caching, retries, limits and a ledger.

    Args:
        prefix: The static tools and system blocks (:class:`convo.Prefix`).
        client: An ``anthropic.Anthropic``; convo re-wraps it with ``max_retries=0`` so
            retries happen in exactly one layer (convo's). Default: built from the
            environment (``ANTHROPIC_API_KEY``).
        suffix: Dynamic text after the prefix (a str, or a callable called every turn).
        suffix_placement: ``"system"`` or ``"message"`` (see ``docs/layout.md``).
        history: Breakpoint strategy for messages: ``"rolling"``, ``"none"`` or ``"auto"``.
        history_ttl: TTL of the history breakpoints (default: the prefix's); a 1h prefix with
            ``"5m"`` history keeps the shared part an hour and each conversation 5 minutes.
        registry: Warm state shared between sessions (single-flight writes of the prefix).
            Default: the process-wide :meth:`WarmRegistry.default`; a session given its own
            *clock* shares one with every session on that clock instead (TTLs are judged
            on one clock).
        limiter: Client-side rate limits. Default: one process-wide limiter per model
            class, which learns the limits from response headers.
        ledger: Where every attempt is recorded. Default: :meth:`convo.Ledger.default`;
            pass ``ledger=False`` to record nothing.
        retry: The retry policy.
        budget: One or more :class:`convo.Budget`, checked before sending.
        max_tokens: Default ``max_tokens`` per turn.
        clock: Wall-clock seconds (injected in tests; give the registry the same clock).
        sleep: How to wait (retries, rate limits); injected in tests.
        diagnostics: Ask the server for ``cache_miss_reason`` (beta) on every turn.
        keep_alive: Re-warm this conversation before its TTL ends while in use.
        adaptive_ttl: Lay out each turn's breakpoints by expected value (on by default): the
            prefix's TTL (5m or 1h) and whether the history gets a breakpoint, and with which
            TTL, from the gaps observed so far in this conversation and pooled over every
            session on the same registry and prefix (:mod:`convo.policy`; the break-even
            arithmetic is in ``docs/economics.md``). ``False``: the prefix's TTL and
            ``history``/``history_ttl`` as given. Switching keeps every cache entry.
        refresh: What a cache read refreshes, as the server does it: ``"path"`` (every entry
            on the request's path, the default) or ``"entry"`` (only the entry read). The API
            does not document it; set it to match what you observe (``docs/emulator.md``).
        messages: History to start from.
        hooks: Called with every :class:`Reply` (telemetry, logging).
        router: A :class:`convo.Router`: each turn goes to the model of the tier it needs,
            or stays on a bigger one when moving would cost more, cache included
            (``docs/routing.md``). The prefix's model must be one of its tiers; the
            conversation starts there. ``send(..., tier=...)`` names a turn's tier.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        prefix: Prefix,
        *,
        client: anthropic.Anthropic | None = None,
        suffix: str | Callable[[], str] | None = None,
        suffix_placement: str = "system",
        history: str = "rolling",
        history_ttl: str | None = None,
        registry: WarmBackend | None = None,
        limiter: RateLimiter | Any | None = None,
        ledger: Ledger | bool | None = None,
        retry: RetryPolicy | None = None,
        budget: Budget | Sequence[Budget] | None = None,
        max_tokens: int = 1024,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = time.sleep,
        diagnostics: bool = False,
        keep_alive: KeepAlive | None = None,
        adaptive_ttl: bool = True,
        refresh: str = "path",
        session_id: str | None = None,
        conversation_id: str | None = None,
        messages: Sequence[Mapping[str, Any]] = (),
        hooks: Sequence[Callable[[Reply], None]] = (),
        router: Router | None = None,
        _tracker: CacheTracker | None = None,
    ) -> None:
        # Every constructor argument, as given, for the shared wiring (and for forks).
        arguments = {k: v for k, v in locals().items() if k not in ("self", "prefix", "client")}
        if client is not None and not isinstance(client, anthropic.Anthropic):
            raise TypeError(
                f"Session needs an anthropic.Anthropic client, got {type(client).__name__}; "
                "use convo.AsyncSession for AsyncAnthropic"
            )
        base = client if client is not None else anthropic.Anthropic()
        self._build(prefix, base, arguments)

    # -- turns --------------------------------------------------------------------------

    def send(
        self,
        content: str | Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        params: Mapping[str, Any] | None = None,
        tier: str | None = None,
    ) -> Reply:
        """Send one user turn and return the reply (*tier*: with a router, the tier the
        turn needs; default: the router's signal decides).

        Raises:
            ValueError, TypeError: bad input, before anything is sent.
            convo.BudgetExceeded: a budget would be exceeded; nothing was sent.
            convo.RetriesExhausted, convo.SpendCapReached: the call failed for good.
            anthropic.APIStatusError: a non-retryable API error (400, 401, ...).
        """
        pending = self._begin(content, max_tokens, params, tier)
        if self._core.must_stream(pending):
            with self._stream(pending) as replying:
                replying.close()
            return replying.reply
        result: Reply = steps.drive(self._core.turn(pending), self._io)
        return result

    def warm(self, *, latency: bool = False) -> Reply | None:
        """Pre-warm the static prefix with ``max_tokens: 0``, by expected value: a live
        prefix about to expire is refreshed when the policy expects the refresh to pay
        (``docs/economics.md``); single flight, so concurrent sessions send one write.

        A cold prefix is written only with ``latency=True``. Such a pre-warm never saves
        money: the first turn then reads what it wrote, so it costs a read of the prefix
        more than letting that turn write it. What it buys is time to first token (the
        turn does not wait for the write). Its ledger row carries that negative expected
        saving.

        Returns:
            The pre-warm's reply, or ``None`` when nothing was sent (see
            ``session.last_decision`` for why).
        """
        margin = self._core.keep_alive.margin_s if self._core.keep_alive else 0.0
        if not self._core.registry.needs_warming(self._core.warm_key, margin=margin):
            return None
        pending = self._core.begin_warm(latency=latency)
        if pending is None:
            return None
        result: Reply = steps.drive(self._core.turn(pending), self._io)
        return result

    def keep_alive_tick(self) -> Reply | None:
        """Re-warm the conversation if keep-alive says it is due; call it periodically
        (:meth:`run_keep_alive` does).

        Returns:
            The re-warm's reply, or ``None`` when none was due.
        """
        if not self._core.keep_alive_due():
            return None
        pending = self._core.begin_warm(keep_alive=True)
        if pending is None:
            return None
        result: Reply = steps.drive(self._core.turn(pending, flight=False), self._io)
        return result

    def run_keep_alive(self, *, stop: Callable[[], bool], interval: float = 5.0) -> None:
        """Call :meth:`keep_alive_tick` every *interval* seconds until *stop()* is true
        (run it on a thread of its own)."""
        self._check_interval(interval)
        while not stop():
            self.keep_alive_tick()
            self._sleep(interval)

    def stream(
        self,
        content: str | Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        params: Mapping[str, Any] | None = None,
        tier: str | None = None,
        keep_partial: bool = False,
    ) -> contextlib.AbstractContextManager[ReplyStream]:
        """Send one user turn and stream the reply's text as it arrives.

        Usage::

            with session.stream("Tell me more") as s:
                for text in s.text_stream:
                    print(text, end="")
            s.reply.usage   # settled once the stream has ended

        Attempts are retried only until the first text reaches you. A stream cut after that
        (an error event, a dropped connection, Ctrl-C) raises :class:`convo.StreamInterrupted`
        carrying the partial text; what the server billed is recorded, and the history is
        as it was before the turn unless *keep_partial* asks to keep the partial reply.
        """
        pending = self._begin(content, max_tokens, params, tier)
        pending.keep_partial = keep_partial
        return self._stream(pending)

    @contextlib.contextmanager
    def _stream(self, pending: Pending) -> Iterator[ReplyStream]:
        turn = self._core.turn(pending, stream=True)
        replying = ReplyStream(turn, steps.drive(turn, self._io), self._io)
        try:
            yield replying
        except BaseException as error:
            replying.abort(error)
            raise
        replying.close()

    def fork(self) -> Session:
        """A new session on the same prefix and history so far, sharing the client,
        registry, limiter and ledger, with its own conversation id and a copy of what
        this session believes is cached."""
        return Session(self.prefix, **self._fork_options())

"""``AsyncSession``: the asyncio shell over :class:`~convo.session.core.SessionCore`.

Same constructor and behaviour as :class:`convo.Session`; the methods that wait are
awaitable. Waiting (single flight, rate limits, retries) never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import anthropic

from convo.budget import Budget
from convo.layout import Prefix
from convo.ledger import Ledger
from convo.limits import RateLimiter
from convo.retry import RetryPolicy
from convo.session.base import SessionBase
from convo.session.reply import Reply
from convo.session.streaming import AsyncReplyStream, open_stream_async
from convo.session.turn import KeepAlive, Pending
from convo.session.wiring import observe_error
from convo.tracker import CacheTracker
from convo.warm import WarmBackend

__all__ = ["AsyncSession"]


class AsyncSession(SessionBase):
    """The asyncio twin of :class:`convo.Session` (see it for every argument).

    ``client`` is an ``anthropic.AsyncAnthropic`` (re-wrapped with ``max_retries=0``) and
    ``sleep`` an awaitable (default ``asyncio.sleep``).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        prefix: Prefix,
        *,
        client: anthropic.AsyncAnthropic | None = None,
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
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        diagnostics: bool = False,
        keep_alive: KeepAlive | None = None,
        adaptive_ttl: bool = False,
        session_id: str | None = None,
        conversation_id: str | None = None,
        messages: Sequence[Mapping[str, Any]] = (),
        hooks: Sequence[Callable[[Reply], None]] = (),
        _tracker: CacheTracker | None = None,
    ) -> None:
        # Every constructor argument, as given, for the shared wiring (and for forks).
        arguments = {k: v for k, v in locals().items() if k not in ("self", "prefix", "client")}
        if client is not None and not isinstance(client, anthropic.AsyncAnthropic):
            raise TypeError(
                f"AsyncSession needs an anthropic.AsyncAnthropic client, got "
                f"{type(client).__name__}; use convo.Session for Anthropic"
            )
        base = client if client is not None else anthropic.AsyncAnthropic()
        self._build(prefix, base, arguments)

    async def send(
        self,
        content: str | Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Reply:
        """Send one user turn and return the reply (see :meth:`convo.Session.send`)."""
        pending = self._core.begin_turn(content, max_tokens=max_tokens, params=params)
        return await self._run(pending)

    async def warm(self) -> Reply | None:
        """Pre-warm the static prefix if cold or about to expire (single flight)."""
        margin = self._core.keep_alive.margin_s if self._core.keep_alive else 0.0
        needs = await self._core.registry.needs_warming_async(self._core.warm_key, margin=margin)
        if not needs:
            return None
        pending = self._core.begin_warm()
        return None if pending is None else await self._run(pending)

    async def keep_alive_tick(self) -> Reply | None:
        """Re-warm the conversation if keep-alive says it is due."""
        if not self._core.keep_alive_due():
            return None
        pending = self._core.begin_warm(keep_alive=True)
        return None if pending is None else await self._run(pending, flight=False)

    async def run_keep_alive(self, *, interval: float = 5.0) -> None:
        """Call :meth:`keep_alive_tick` every *interval* seconds until cancelled
        (``asyncio.create_task(session.run_keep_alive())``)."""
        self._check_interval(interval)
        while True:
            await self.keep_alive_tick()
            await self._sleep(interval)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        content: str | Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[AsyncReplyStream]:
        """Send one user turn and stream the reply (see :meth:`convo.Session.stream`)."""
        core = self._core
        pending = core.begin_turn(content, max_tokens=max_tokens, params=params)
        await self._before_send(pending)
        started = time.perf_counter()
        try:
            opened, _ = await core.retry.call_async(
                lambda: open_stream_async(self._client, pending.call_arguments, core.limiter),
                sleep=self._sleep,
                clock=core.clock,
                on_attempt=lambda record: core.record_attempt(pending, record),
            )
        except BaseException:
            self._after_failure(pending)
            raise
        reply_stream = AsyncReplyStream(
            opened,
            requested_ttl=core.requested_ttl(pending),
            on_start=lambda: self._began(pending),
            on_done=lambda message, usage: self._finish(pending, message, usage, started),
            on_error=lambda usage, error: core.fail_stream(pending, usage, error),
        )
        try:
            yield reply_stream
        finally:
            await reply_stream.aclose()

    def fork(self) -> AsyncSession:
        """A new session on the same prefix and history so far (see :meth:`convo.Session.fork`)."""
        return AsyncSession(self.prefix, **self._fork_options())

    async def _before_send(self, pending: Pending, *, flight: bool = True) -> None:
        core = self._core
        try:
            if flight and pending.prefix_position is not None:
                pending.flight = await core.registry.acquire_async(
                    core.warm_key, ttl_seconds=300.0 if core.prefix.ttl == "5m" else 3600.0
                )
                if pending.flight.waited > 0:
                    core.repredict(pending)
            pending.reservation = await core.limiter.acquire_async(
                input_tokens=core.itpm_weight(pending),
                output_tokens=pending.max_tokens,
                sleep=self._sleep,
            )
        except BaseException:
            self._after_failure(pending)
            raise

    async def _run(self, pending: Pending, *, flight: bool = True) -> Reply:
        core = self._core
        await self._before_send(pending, flight=flight)

        async def attempt() -> Any:
            try:
                raw = await self._client.messages.with_raw_response.create(**pending.call_arguments)
            except anthropic.APIStatusError as error:
                observe_error(core.limiter, error)
                raise
            core.limiter.observe_headers(raw.headers)
            return await raw.parse()

        started = time.perf_counter()
        try:
            message, _ = await core.retry.call_async(
                attempt,
                sleep=self._sleep,
                clock=core.clock,
                on_attempt=lambda record: core.record_attempt(pending, record),
            )
        except BaseException:
            self._after_failure(pending)
            raise
        return self._finish(pending, message, None, started)

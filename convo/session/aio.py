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
from convo.routing import Router
from convo.session import steps
from convo.session.base import SessionBase
from convo.session.reply import Reply
from convo.session.streaming import AsyncReplyStream
from convo.session.turn import KeepAlive, Pending
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
        tier: str | None = None,
    ) -> Reply:
        """Send one user turn and return the reply (see :meth:`convo.Session.send`)."""
        pending = self._begin(content, max_tokens, params, tier)
        if self._core.must_stream(pending):
            async with self._stream(pending) as replying:
                await replying.aclose()
            return replying.reply
        result: Reply = await steps.drive_async(self._core.turn(pending), self._io)
        return result

    async def warm(self, *, latency: bool = False) -> Reply | None:
        """Pre-warm the static prefix by expected value; a cold one only with
        ``latency=True`` (see :meth:`convo.Session.warm`)."""
        margin = self._core.keep_alive.margin_s if self._core.keep_alive else 0.0
        needs = await self._core.registry.needs_warming_async(self._core.warm_key, margin=margin)
        if not needs:
            return None
        pending = self._core.begin_warm(latency=latency)
        if pending is None:
            return None
        result: Reply = await steps.drive_async(self._core.turn(pending), self._io)
        return result

    async def keep_alive_tick(self) -> Reply | None:
        """Re-warm the conversation if keep-alive says it is due."""
        if not self._core.keep_alive_due():
            return None
        pending = self._core.begin_warm(keep_alive=True)
        if pending is None:
            return None
        result: Reply = await steps.drive_async(self._core.turn(pending, flight=False), self._io)
        return result

    async def run_keep_alive(self, *, interval: float = 5.0) -> None:
        """Call :meth:`keep_alive_tick` every *interval* seconds until cancelled
        (``asyncio.create_task(session.run_keep_alive())``)."""
        self._check_interval(interval)
        while True:
            await self.keep_alive_tick()
            await self._sleep(interval)

    def stream(
        self,
        content: str | Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        params: Mapping[str, Any] | None = None,
        tier: str | None = None,
        keep_partial: bool = False,
    ) -> contextlib.AbstractAsyncContextManager[AsyncReplyStream]:
        """Send one user turn and stream the reply (see :meth:`convo.Session.stream`)."""
        pending = self._begin(content, max_tokens, params, tier)
        pending.keep_partial = keep_partial
        return self._stream(pending)

    @contextlib.asynccontextmanager
    async def _stream(self, pending: Pending) -> AsyncIterator[AsyncReplyStream]:
        turn = self._core.turn(pending, stream=True)
        replying = AsyncReplyStream(turn, await steps.drive_async(turn, self._io), self._io)
        try:
            yield replying
        except BaseException as error:
            await replying.abort(error)
            raise
        await replying.aclose()

    def fork(self) -> AsyncSession:
        """A new session on the same prefix and history so far (see :meth:`convo.Session.fork`)."""
        return AsyncSession(self.prefix, **self._fork_options())

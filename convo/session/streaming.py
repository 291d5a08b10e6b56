"""Streaming a reply: retried only until the first text, settled when the stream ends.

:func:`open_stream` is one *attempt*: it opens the SSE stream and reads until the first
content event, buffering what it read. Any failure up to there (an HTTP error, or an
``error`` event before any text) is retryable by the session's policy, because nothing has
reached the caller yet. After that, :class:`ReplyStream` hands text over as it arrives; an
error then raises :class:`convo.StreamInterrupted` with the text received so far.

Usage is settled from the events themselves with :class:`convo.usage.UsageAccumulator`:
``message_start`` gives the input side and the TTL split, and each ``message_delta``
*replaces* the cumulative counts (they are never added).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import attrs
import httpx2

from convo.errors import StreamInterrupted
from convo.session.wiring import observe_error
from convo.usage import Usage, UsageAccumulator

__all__ = ["AsyncReplyStream", "Opened", "ReplyStream", "open_stream", "open_stream_async"]

# Events after which content has begun: from here on, text may reach the caller.
_CONTENT = frozenset({"text", "input_json", "thinking", "citation", "message_stop"})


@attrs.define
class Opened:
    """An open stream and the events read before its first content."""

    manager: Any
    stream: Any
    buffered: list[Any]
    iterator: Any

    @property
    def response(self) -> Any:
        """The HTTP response (its status and ``request-id`` go into the attempt record)."""
        return self.stream.response


def _connection_error(stream: Any, error: Exception) -> anthropic.APIConnectionError:
    """The SDK wraps transport errors only while it sends; one while reading the body (a
    dropped stream) arrives raw. Before any text, it is a connection error like any other,
    and the retry policy treats it so."""
    return anthropic.APIConnectionError(
        message=f"stream dropped: {error}", request=stream.response.request
    )


def open_stream(client: anthropic.Anthropic, body: dict[str, Any], limiter: Any) -> Opened:
    """Open a stream and read up to its first content event (one retryable attempt)."""
    manager = client.messages.stream(**body)
    try:
        stream = manager.__enter__()
    except anthropic.APIStatusError as error:
        observe_error(limiter, error)
        raise
    limiter.observe_headers(stream.response.headers)
    iterator = iter(stream)
    buffered: list[Any] = []
    try:
        for event in iterator:
            buffered.append(event)
            if event.type in _CONTENT:
                break
    except httpx2.TransportError as error:
        manager.__exit__(None, None, None)
        raise _connection_error(stream, error) from error
    except BaseException:
        manager.__exit__(None, None, None)
        raise
    return Opened(manager, stream, buffered, iterator)


async def open_stream_async(
    client: anthropic.AsyncAnthropic, body: dict[str, Any], limiter: Any
) -> Opened:
    """The awaitable twin of :func:`open_stream`."""
    manager = client.messages.stream(**body)
    try:
        stream = await manager.__aenter__()
    except anthropic.APIStatusError as error:
        observe_error(limiter, error)
        raise
    limiter.observe_headers(stream.response.headers)
    iterator = stream.__aiter__()
    buffered: list[Any] = []
    try:
        async for event in iterator:
            buffered.append(event)
            if event.type in _CONTENT:
                break
    except httpx2.TransportError as error:
        await manager.__aexit__(None, None, None)
        raise _connection_error(stream, error) from error
    except BaseException:
        await manager.__aexit__(None, None, None)
        raise
    return Opened(manager, stream, buffered, iterator)


class _Base:
    def __init__(
        self,
        opened: Opened,
        *,
        requested_ttl: str,
        on_start: Callable[[], None],
        on_done: Callable[[Any, Usage], Any],
        on_error: Callable[[Usage, BaseException], None],
    ) -> None:
        self._opened = opened
        self._usage = UsageAccumulator(requested_ttl=requested_ttl)  # type: ignore[arg-type]
        self._on_done = on_done
        self._on_error = on_error
        self._text: list[str] = []
        self._reply: Any = None
        self._finished = False
        on_start()  # message_start has arrived: the response has begun

    def _see(self, event: Any) -> str | None:
        if event.type in ("message_start", "message_delta"):
            self._usage.feed(event)
        if event.type == "text":
            self._text.append(event.text)
            return str(event.text)
        return None

    def _interrupted(self, error: BaseException) -> StreamInterrupted:
        self._finished = True
        self._on_error(self._usage.usage, error)
        partial = "".join(self._text)
        return StreamInterrupted(
            f"the stream failed after {len(partial)} characters of text reached you: {error}",
            partial_text=partial,
            usage=self._usage.usage,
        )

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._text)

    @property
    def reply(self) -> Any:
        """The settled :class:`convo.Reply`, once the stream has ended.

        Raises:
            RuntimeError: while the stream is still open.
        """
        if self._reply is None:
            raise RuntimeError("the reply is settled when the stream ends; read text_stream first")
        return self._reply


class ReplyStream(_Base):
    """Text as it arrives (:attr:`text_stream`), then the settled :attr:`reply`."""

    @property
    def text_stream(self) -> Iterator[str]:
        """Each piece of text as it arrives."""
        opened = self._opened
        try:
            for event in opened.buffered:
                if (text := self._see(event)) is not None:
                    yield text
            opened.buffered = []
            for event in opened.iterator:
                if (text := self._see(event)) is not None:
                    yield text
        except Exception as error:
            # An `error` event (anthropic.APIError) or the connection dropping mid-body (the
            # transport's own error): either way the turn failed after text reached you.
            opened.manager.__exit__(None, None, None)
            raise self._interrupted(error) from error
        self._settle()

    def _settle(self) -> None:
        if self._finished:
            return
        self._finished = True
        message = self._opened.stream.get_final_message()
        self._opened.manager.__exit__(None, None, None)
        self._reply = self._on_done(message, self._usage.usage)

    def close(self) -> None:
        """Finish reading (so usage is settled honestly) and release the connection."""
        if not self._finished:
            for _ in self.text_stream:
                pass


class AsyncReplyStream(_Base):
    """The awaitable twin of :class:`ReplyStream`."""

    @property
    async def text_stream(self) -> AsyncIterator[str]:
        """Each piece of text as it arrives."""
        opened = self._opened
        try:
            for event in opened.buffered:
                if (text := self._see(event)) is not None:
                    yield text
            opened.buffered = []
            async for event in opened.iterator:
                if (text := self._see(event)) is not None:
                    yield text
        except Exception as error:
            await opened.manager.__aexit__(None, None, None)
            raise self._interrupted(error) from error
        await self._settle()

    async def _settle(self) -> None:
        if self._finished:
            return
        self._finished = True
        message = await self._opened.stream.get_final_message()
        await self._opened.manager.__aexit__(None, None, None)
        self._reply = self._on_done(message, self._usage.usage)

    async def aclose(self) -> None:
        """Finish reading (so usage is settled honestly) and release the connection."""
        if not self._finished:
            async for _ in self.text_stream:
                pass

"""Streaming a reply: the caller reads the text, the turn settles when the stream ends.

The turn (:meth:`convo.session.core.SessionCore.turn`) opens the stream as one retryable
attempt, up to its first content event (:func:`convo.sdk.open_stream`), then pauses at a
:class:`~convo.session.steps.Deliver` step. A :class:`ReplyStream` hands the text over as it
arrives and, when the stream ends, sends the final message back into the turn, which then
records and settles it. If the stream is cut (an ``error`` event, a dropped connection) or
the caller stops reading (Ctrl-C, a cancelled task), the cut is thrown into the turn
instead: it records what the server billed, puts the history back as it was, and raises
:class:`convo.StreamInterrupted` with the partial text (a cancellation stays one).

Usage is settled from the events with :class:`convo.usage.UsageAccumulator`:
``message_start`` gives the input side and the TTL split, and each ``message_delta``
*replaces* the cumulative counts (they are never added).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from convo import sdk
from convo.session import steps
from convo.session.reply import Reply

__all__ = ["AsyncReplyStream", "ReplyStream"]


class _Base:
    def __init__(self, turn: steps.Turn, deliver: steps.Deliver, io: steps.IO) -> None:
        self._turn = turn
        self._opened: sdk.OpenStream = deliver.opened
        self._io = io
        self._reply: Reply | None = None
        self._finished = False

    def _next_buffered(self) -> Any:
        """The next event read while the stream was opened (already accounted for)."""
        return self._opened.buffered.pop(0) if self._opened.buffered else None

    @property
    def text(self) -> str:
        """The text received so far."""
        return self._opened.delivered_text

    @property
    def reply(self) -> Reply:
        """The settled :class:`convo.Reply`, once the stream has ended.

        Raises:
            RuntimeError: while the stream is still open.
        """
        if self._reply is None:
            raise RuntimeError("the reply is settled when the stream ends; read text_stream first")
        return self._reply


def _text_of(event: Any) -> str | None:
    return str(event.text) if getattr(event, "type", None) == "text" else None


class ReplyStream(_Base):
    """Text as it arrives (:attr:`text_stream`), then the settled :attr:`reply`."""

    @property
    def text_stream(self) -> Iterator[str]:
        """Each piece of text as it arrives."""
        if self._finished:
            return
        opened = self._opened
        try:
            while (event := self._next_buffered()) is not None:
                if (text := _text_of(event)) is not None:
                    yield text
            for event in opened.iterator:
                opened.see(event)
                if (text := _text_of(event)) is not None:
                    yield text
            message = opened.stream.get_final_message()
        except Exception as error:
            self.abort(error)
            return
        self._finished = True
        self._reply = steps.drive(self._turn, self._io, send=message)

    def abort(self, error: BaseException) -> None:
        """End the turn with the stream cut by *error* (raises what the turn decides)."""
        if self._finished:
            return
        self._finished = True
        steps.drive(self._turn, self._io, throw=error)

    def close(self) -> None:
        """Finish reading (so usage is settled honestly) and release the connection."""
        for _ in self.text_stream:
            pass


class AsyncReplyStream(_Base):
    """The awaitable twin of :class:`ReplyStream`."""

    @property
    async def text_stream(self) -> AsyncIterator[str]:
        """Each piece of text as it arrives."""
        if self._finished:
            return
        opened = self._opened
        try:
            while (event := self._next_buffered()) is not None:
                if (text := _text_of(event)) is not None:
                    yield text
            async for event in opened.iterator:
                opened.see(event)
                if (text := _text_of(event)) is not None:
                    yield text
            message = await opened.stream.get_final_message()
        except Exception as error:
            await self.abort(error)
            return
        self._finished = True
        self._reply = await steps.drive_async(self._turn, self._io, send=message)

    async def abort(self, error: BaseException) -> None:
        """End the turn with the stream cut by *error* (raises what the turn decides)."""
        if self._finished:
            return
        self._finished = True
        await steps.drive_async(self._turn, self._io, throw=error)

    async def aclose(self) -> None:
        """Finish reading (so usage is settled honestly) and release the connection."""
        async for _ in self.text_stream:
            pass

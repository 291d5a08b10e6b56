"""The I/O a turn needs, as values: the core yields them, the shells carry them out.

A turn (:meth:`convo.session.core.SessionCore.turn`) is one generator that reads top to
bottom. Where it needs I/O it yields a step; :class:`Session` runs the step's :meth:`run`
(calls), :class:`AsyncSession` its :meth:`arun` (awaits, so no backend call ever blocks the
event loop), and each sends the result back in, or throws the exception in. Each step is
written here once, with its two forms side by side, so the pair cannot drift apart.

The pattern is httpx's auth flows: one generator, driven by a sync and an async loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any

import attrs

from convo import sdk

__all__ = [
    "IO",
    "Abandon",
    "Began",
    "Claim",
    "CloseStream",
    "Deliver",
    "LedgerSpend",
    "ObserveFailure",
    "OpenStream",
    "RecordWarm",
    "Release",
    "Reserve",
    "Send",
    "Settle",
    "Sleep",
    "Step",
    "Turn",
]


@attrs.frozen
class IO:
    """What the steps act on: the session's backends, its client and how it waits."""

    registry: Any
    limiter: Any
    ledger: Any
    client: Any
    sleep: Callable[[float], Any]


class Step:
    """One piece of I/O; subclasses define both forms."""

    def run(self, io: IO) -> Any:
        """Carry the step out, blocking."""
        raise NotImplementedError

    async def arun(self, io: IO) -> Any:
        """Carry the step out on the event loop."""
        raise NotImplementedError


#: A turn: yields steps, is sent their results, returns its value.
Turn = Generator[Step, Any, Any]


@attrs.frozen
class LedgerSpend(Step):
    """What the ledger has recorded since *since* (for a ledger-scope budget)."""

    since: Any

    def run(self, io: IO) -> Any:
        return io.ledger.spend(since=self.since)

    async def arun(self, io: IO) -> Any:
        return await io.ledger.spend_async(since=self.since)


@attrs.frozen
class Claim(Step):
    """Join the single flight of the shared prefix's write (or read it, once written)."""

    key: Any
    ttl_seconds: float
    refresh_at: float | None

    def run(self, io: IO) -> Any:
        return io.registry.acquire(
            self.key, ttl_seconds=self.ttl_seconds, refresh_at=self.refresh_at
        )

    async def arun(self, io: IO) -> Any:
        return await io.registry.acquire_async(
            self.key, ttl_seconds=self.ttl_seconds, refresh_at=self.refresh_at
        )


@attrs.frozen
class Began(Step):
    """The writer's response has begun: its entry is readable, waiters may go."""

    flight: Any

    def run(self, io: IO) -> Any:
        io.registry.began(self.flight)

    async def arun(self, io: IO) -> Any:
        await io.registry.began_async(self.flight)


@attrs.frozen
class Abandon(Step):
    """The writer failed before its response began: hand the write to a waiter."""

    flight: Any

    def run(self, io: IO) -> Any:
        io.registry.abandon(self.flight)

    async def arun(self, io: IO) -> Any:
        await io.registry.abandon_async(self.flight)


@attrs.frozen
class RecordWarm(Step):
    """Tell the registry the shared prefix was written or read at *started_at*."""

    key: Any
    started_at: float
    ttl_seconds: float
    wrote: bool
    read: bool

    def _arguments(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "ttl_seconds": self.ttl_seconds,
            "wrote": self.wrote,
            "read": self.read,
        }

    def run(self, io: IO) -> Any:
        io.registry.record(self.key, **self._arguments())

    async def arun(self, io: IO) -> Any:
        await io.registry.record_async(self.key, **self._arguments())


@attrs.frozen
class Reserve(Step):
    """Wait for room under the rate limits and reserve it."""

    input_tokens: int
    output_tokens: int

    def run(self, io: IO) -> Any:
        return io.limiter.acquire(
            input_tokens=self.input_tokens, output_tokens=self.output_tokens, sleep=io.sleep
        )

    async def arun(self, io: IO) -> Any:
        return await io.limiter.acquire_async(
            input_tokens=self.input_tokens, output_tokens=self.output_tokens, sleep=io.sleep
        )


@attrs.frozen
class Settle(Step):
    """Replace a reservation by what was used, syncing from the response's headers."""

    reservation: Any
    input_tokens: int
    output_tokens: int
    headers: Mapping[str, str] | None

    def _arguments(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "headers": self.headers,
        }

    def run(self, io: IO) -> Any:
        io.limiter.settle(self.reservation, **self._arguments())

    async def arun(self, io: IO) -> Any:
        await io.limiter.settle_async(self.reservation, **self._arguments())


@attrs.frozen
class Release(Step):
    """Give a reservation back unused."""

    reservation: Any

    def run(self, io: IO) -> Any:
        io.limiter.release(self.reservation)

    async def arun(self, io: IO) -> Any:
        await io.limiter.release_async(self.reservation)


@attrs.frozen
class ObserveFailure(Step):
    """Let the limiter learn from a failed attempt's headers; hold back after a 429."""

    headers: Mapping[str, str]
    rate_limited: bool
    retry_after: float | None

    def run(self, io: IO) -> Any:
        io.limiter.observe_headers(self.headers)
        if self.rate_limited:
            io.limiter.observe_rate_limited(self.retry_after)

    async def arun(self, io: IO) -> Any:
        await io.limiter.observe_headers_async(self.headers)
        if self.rate_limited:
            await io.limiter.observe_rate_limited_async(self.retry_after)


@attrs.frozen
class Sleep(Step):
    """Wait between attempts."""

    seconds: float

    def run(self, io: IO) -> Any:
        io.sleep(self.seconds)

    async def arun(self, io: IO) -> Any:
        await io.sleep(self.seconds)


@attrs.frozen
class Send(Step):
    """One plain attempt; the result is an :class:`convo.sdk.Outcome`."""

    arguments: sdk.Arguments
    now: float

    def run(self, io: IO) -> sdk.Outcome:
        return sdk.send(io.client, self.arguments, now=self.now)

    async def arun(self, io: IO) -> sdk.Outcome:
        return await sdk.send_async(io.client, self.arguments, now=self.now)


@attrs.frozen
class OpenStream(Step):
    """One streaming attempt, up to its first content; an :class:`convo.sdk.Outcome`."""

    arguments: sdk.Arguments
    now: float
    requested_ttl: str

    def run(self, io: IO) -> sdk.Outcome:
        return sdk.open_stream(
            io.client, self.arguments, now=self.now, requested_ttl=self.requested_ttl
        )

    async def arun(self, io: IO) -> sdk.Outcome:
        return await sdk.open_stream_async(
            io.client, self.arguments, now=self.now, requested_ttl=self.requested_ttl
        )


@attrs.frozen
class CloseStream(Step):
    """Release a stream's connection."""

    opened: sdk.OpenStream

    def run(self, io: IO) -> Any:
        self.opened.manager.__exit__(None, None, None)

    async def arun(self, io: IO) -> Any:
        await self.opened.manager.__aexit__(None, None, None)


@attrs.frozen
class Deliver(Step):
    """Hand an open stream to the caller. The shell does not run this step: the caller's
    reading does, and the stream sends the final message (or throws the cut) back in."""

    opened: sdk.OpenStream


def drive(turn: Turn, io: IO, *, send: Any = None, throw: BaseException | None = None) -> Any:
    """Run *turn* blocking until it returns (its value) or reaches a :class:`Deliver`."""
    while True:
        try:
            step = turn.throw(throw) if throw is not None else turn.send(send)
        except StopIteration as done:
            return done.value
        if isinstance(step, Deliver):
            return step
        send, throw = None, None
        try:
            send = step.run(io)
        except BaseException as error:
            throw = error


async def drive_async(
    turn: Turn, io: IO, *, send: Any = None, throw: BaseException | None = None
) -> Any:
    """Run *turn* on the event loop until it returns or reaches a :class:`Deliver`.

    Once an exception has been thrown into the turn, every step it still yields is undoing
    something (giving a claim or a reservation back); those run shielded, so a second
    cancellation cannot leave a claim or a reservation behind.
    """
    undoing = throw is not None
    while True:
        try:
            step = turn.throw(throw) if throw is not None else turn.send(send)
        except StopIteration as done:
            return done.value
        if isinstance(step, Deliver):
            return step
        undoing = undoing or throw is not None
        send, throw = None, None
        try:
            result: Awaitable[Any] = step.arun(io)
            send = await (asyncio.shield(result) if undoing else result)
        except BaseException as error:
            throw = error

"""What you need to test your own code built on convo, without the network or real waits.

- :class:`FakeClock`: a clock that stands still until moved, with a ``sleep`` (and an
  awaitable ``asleep``) that records each wait and moves the clock instead of waiting.
  Give it to a session as ``clock=clock, sleep=clock.sleep`` (``clock.asleep`` for an
  ``AsyncSession``).
- :func:`emulator_clock`: the same, bound to a running emulator, so a session's waits
  (retries, rate limits, think times) move the emulator's TTLs and buckets along with it.
- pytest fixtures (this module needs pytest installed; load them with
  ``pytest_plugins = ["convo.testing"]`` in your ``conftest.py``): ``convo_emulator``
  (one in-process emulator per test session, reset before each test), ``convo_client``
  and ``convo_async_client`` (the real ``anthropic`` SDK pointed at it, with the SDK's
  own retries off).

Example::

    def test_my_bot_reads_the_cache(convo_emulator, convo_client):
        clock = emulator_clock(convo_emulator)
        session = convo.Session(PREFIX, client=convo_client, clock=clock, sleep=clock.sleep,
                                ledger=False)
        session.send("hi")
        clock.sleep(60)                      # a minute passes, on the emulator too
        assert session.send("again").cache.reason == "hit"

.. versionadded:: 0.2
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import anthropic
import pytest

if TYPE_CHECKING:
    from convo.emulator import RunningEmulator

__all__ = [
    "TEST_API_KEY",
    "FakeClock",
    "convo_async_client",
    "convo_client",
    "convo_emulator",
    "emulator_clock",
]

#: The API key the fixtures' clients send to the emulator (it accepts any key).
TEST_API_KEY = "sk-ant-convo-testing"


class FakeClock:
    """Epoch seconds that move only when told to; waits are recorded, not slept.

    Args:
        start: The time to start at.
        on_advance: Called with each advance (to move another clock along, e.g. an
            emulator's); :func:`emulator_clock` uses it.

    Attributes:
        now: The current time.
        slept: Every wait asked of :meth:`sleep` / :meth:`asleep`, in order.
    """

    def __init__(
        self, start: float = 1_800_000_000.0, *, on_advance: Callable[[float], Any] | None = None
    ) -> None:
        self.now = start
        self.slept: list[float] = []
        self._on_advance = on_advance

    def __call__(self) -> float:
        """The current time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by *seconds* (never back)."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward; got {seconds} seconds")
        self.now += seconds
        if self._on_advance is not None:
            self._on_advance(seconds)

    def sleep(self, seconds: float) -> None:
        """Record a wait and move the clock by it (a session's ``sleep=``)."""
        self.slept.append(seconds)
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        """The awaitable :meth:`sleep` (an ``AsyncSession``'s ``sleep=``)."""
        self.sleep(seconds)


class _EmulatorClock(FakeClock):
    """A FakeClock that reads and moves a running emulator's clock."""

    def __init__(self, running: RunningEmulator) -> None:
        super().__init__(running.emulator.clock.now(), on_advance=running.advance)
        self._running = running

    def __call__(self) -> float:
        return self._running.emulator.clock.now()

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock only moves forward; got {seconds} seconds")
        self._running.advance(seconds)
        self.now = self._running.emulator.clock.now()


def emulator_clock(running: RunningEmulator) -> FakeClock:
    """A :class:`FakeClock` on *running*'s clock: a session's waits move the emulator too,
    so TTLs and rate-limit buckets see the same time as the session."""
    return _EmulatorClock(running)


@pytest.fixture(scope="session")
def _convo_emulator_server() -> Iterator[RunningEmulator]:
    from convo.emulator import serve

    with serve() as running:
        yield running


@pytest.fixture
def convo_emulator(_convo_emulator_server: RunningEmulator) -> RunningEmulator:
    """The in-process emulator, with its cache, counters, buckets, clock and config reset."""
    _convo_emulator_server.reset(config=True)
    return _convo_emulator_server


@pytest.fixture
def convo_client(convo_emulator: RunningEmulator) -> Iterator[anthropic.Anthropic]:
    """The real sync SDK client on the emulator, with the SDK's own retries off."""
    with anthropic.Anthropic(
        base_url=convo_emulator.base_url, api_key=TEST_API_KEY, max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def convo_async_client(
    convo_emulator: RunningEmulator,
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The real async SDK client on the emulator, with the SDK's own retries off."""
    async with anthropic.AsyncAnthropic(
        base_url=convo_emulator.base_url, api_key=TEST_API_KEY, max_retries=0
    ) as client:
        yield client

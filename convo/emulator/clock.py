"""The emulator's notion of now.

Every TTL, bucket refill and ``reset`` time in the emulator reads one clock, so tests can
move time forward without sleeping. The default is real time plus every advance so far
(``POST /_emulator/clock/advance``); in-process callers may inject any clock.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Clock", "OffsetClock", "VirtualClock"]


class Clock(Protocol):
    """A source of the current time, in seconds since the epoch, that can be moved on."""

    def now(self) -> float:
        """Return the current time in seconds since the epoch."""
        ...

    def advance(self, seconds: float) -> None:
        """Move the clock forward by *seconds* (never backwards)."""
        ...


def _check_advance(seconds: float) -> None:
    if seconds < 0:
        raise ValueError(f"the emulator clock only moves forward; got {seconds} seconds")


class OffsetClock:
    """Real time plus the sum of every advance so far (the emulator's default clock)."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        """Return real time plus the accumulated offset."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        """Add *seconds* to the offset."""
        _check_advance(seconds)
        with self._lock:
            self._offset += seconds

    def reset(self) -> None:
        """Forget every advance: back to real time."""
        with self._lock:
            self._offset = 0.0


class VirtualClock:
    """A clock that stands still until advanced, for fully deterministic tests."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        """Return the virtual time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the virtual time forward by *seconds*."""
        _check_advance(seconds)
        with self._lock:
            self._now += seconds

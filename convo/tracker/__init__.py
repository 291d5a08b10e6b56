"""What this process believes the server's cache holds, and why a request reads what it
reads: :class:`CacheTracker` (``core``) and the values it speaks in (``values``)."""

from convo.tracker.core import CacheTracker
from convo.tracker.values import (
    REASONS,
    CacheEntry,
    CacheOutcome,
    Prediction,
    Reason,
    UsageLike,
)

__all__ = [
    "REASONS",
    "CacheEntry",
    "CacheOutcome",
    "CacheTracker",
    "Prediction",
    "Reason",
    "UsageLike",
]

"""What this process believes the server's cache holds, and why a request reads what it
reads: :class:`CacheTracker` (``core``) and the values it speaks in (``values``)."""

from convo.tracker.core import REFRESH_RULES, CacheTracker, Refresh
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
    "REFRESH_RULES",
    "CacheEntry",
    "CacheOutcome",
    "CacheTracker",
    "Prediction",
    "Reason",
    "Refresh",
    "UsageLike",
]

"""Cache-aware prompt layout: a frozen prefix, a dynamic suffix and append-only history.

:class:`Layout` renders request bodies with breakpoints placed by rule (at most 4, 1h
before 5m, never below the model's minimum, never on the volatile suffix) and
fingerprints them the way the server keys its cache. See ``docs/layout.md``.
"""

from convo.layout.history import History
from convo.layout.prefix import TTL, Prefix, PrefixTooShortWarning
from convo.layout.render import (
    LOOKBACK,
    MAX_BREAKPOINTS,
    Breakpoint,
    Layout,
    RenderedRequest,
    Strategy,
    SuffixPlacement,
)

__all__ = [
    "LOOKBACK",
    "MAX_BREAKPOINTS",
    "TTL",
    "Breakpoint",
    "History",
    "Layout",
    "Prefix",
    "PrefixTooShortWarning",
    "RenderedRequest",
    "Strategy",
    "SuffixPlacement",
]

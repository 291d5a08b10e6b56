"""Unexpected cache busts, said on the ``convo`` logger as they happen.

Every session warns here on each turn whose cache reason is a bust nobody asked for, with
the reason and the token counts only (never prompt text, never a key).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from convo.session.reply import Reply

__all__ = ["UNEXPECTED_BUSTS", "log_bust"]

_log = logging.getLogger("convo")

#: Reasons that are a bust nobody asked for: the cache held (or should have held) a prefix
#: and the request did not read it. ``cold`` (nothing cached yet) and ``below_minimum``
#: (nothing cacheable) are expected misses, not busts.
UNEXPECTED_BUSTS = frozenset(
    {
        "expired",
        "model_changed",
        "tools_changed",
        "system_changed",
        "messages_changed",
        "lookback_exceeded",
        "evicted_or_unknown",
    }
)


def log_bust(reply: Reply) -> None:
    """Warn on the ``convo`` logger if *reply* was an unexpected bust (a hook by itself:
    ``hooks=[convo.telemetry.log_bust]``). Only the reason and counts are logged."""
    cache = reply.cache
    if cache.reason not in UNEXPECTED_BUSTS:
        return
    predicted = cache.predicted
    where = f", message {cache.message_index}" if cache.message_index is not None else ""
    detail = f" ({cache.detail}{where})" if cache.detail or where else ""
    _log.warning(
        "convo: cache bust: %s%s on turn %d of model %s: read %d tokens (%d predicted), "
        "wrote %d, uncached %d",
        cache.reason,
        detail,
        reply.turn,
        predicted.model,
        reply.usage.cache_read,
        predicted.cache_read,
        reply.usage.cache_write,
        reply.usage.input,
    )

"""What the policy's per-turn work would otherwise rebuild every turn, memoized.

A session under the adaptive TTL switches its prefix between 5m and 1h markers (and a
routed session between models) and asks for its suffix's size on every turn; rebuilding a
:class:`~convo.Prefix` re-counts its tokens (milliseconds for a big system prompt), so a
fleet's sessions share one copy per TTL and model.
"""

from __future__ import annotations

import functools
import warnings

import attrs

from convo.layout import Prefix
from convo.tokens import estimate

__all__ = ["prefix_at_ttl", "prefix_on_model", "text_tokens"]


def prefix_at_ttl(prefix: Prefix, ttl: str) -> Prefix:
    """*prefix* with its markers at *ttl* (``"5m"`` or ``"1h"``), the same content.

    The model table is not part of a prefix's equality, so its identity is part of the
    memo's key (the cached prefix holds that table, so its id is not reused while cached).
    """
    return _evolved(prefix, id(prefix.models), prefix.model, "1h" if ttl == "1h" else "5m")


def prefix_on_model(prefix: Prefix, model: str) -> Prefix:
    """*prefix* sent to *model* instead (a routed turn), the same content and TTL."""
    return _evolved(prefix, id(prefix.models), model, prefix.ttl)


@functools.lru_cache(maxsize=64)
def _evolved(prefix: Prefix, models: int, model: str, ttl: str) -> Prefix:
    if (model, ttl) == (prefix.model, prefix.ttl):
        return prefix
    with warnings.catch_warnings():
        # The same content: its warnings were given once (on another model, e.g. below
        # that model's minimum, they are the router's business, not the caller's).
        warnings.simplefilter("ignore")
        return attrs.evolve(prefix, model=model, ttl="1h" if ttl == "1h" else "5m")


@functools.lru_cache(maxsize=1024)
def text_tokens(text: str) -> int:
    """Estimated tokens of *text* (a suffix: the policy asks every turn)."""
    return estimate(text)

"""Cache economics: when to write 5m or 1h, when a re-warm pays (``docs/economics.md``).

:mod:`convo.policy.arithmetic` is pure arithmetic (a distribution of gaps in, a decision
and its expected saving out); :mod:`convo.policy.observe` keeps the inter-arrival times it
is fed, per conversation and pooled per prefix. A :class:`~convo.Session` consults both.
"""

from convo.policy.arithmetic import (
    Decision,
    history_ttl,
    keep_alive,
    prefix_ttl,
    prefix_ttl_counts,
)
from convo.policy.observe import PrefixPool, pool_for, within

__all__ = [
    "Decision",
    "PrefixPool",
    "history_ttl",
    "keep_alive",
    "pool_for",
    "prefix_ttl",
    "prefix_ttl_counts",
    "within",
]

"""convo: Claude conversations that use the prompt cache well and count every token.

This module only re-exports the public names; each lives in the module named beside it.
"""

import logging as _logging

from convo import emulator, models, tokens
from convo.budget import Budget, BudgetWarning, Spend
from convo.errors import (
    BudgetExceeded,
    ConvoError,
    LayoutError,
    LedgerError,
    RetriesExhausted,
    SpendCapReached,
    StreamInterrupted,
)
from convo.layout import History, Layout, Prefix, PrefixTooShortWarning, RenderedRequest
from convo.ledger import Ledger, LedgerRow
from convo.limits import RateLimiter, RedisRateLimiter
from convo.pricing import Cost, Rates, price
from convo.request_rules import RequestRejected
from convo.retry import AttemptRecord, RetryPolicy, StackedRetriesWarning
from convo.routing import Router
from convo.session import AsyncSession, KeepAlive, Reply, Session, Stats
from convo.tracker import CacheOutcome, CacheTracker, Prediction
from convo.usage import Usage
from convo.warm import RedisWarmRegistry, WarmKey, WarmRegistry

__all__ = [
    "AsyncSession",
    "AttemptRecord",
    "Budget",
    "BudgetExceeded",
    "BudgetWarning",
    "CacheOutcome",
    "CacheTracker",
    "ConvoError",
    "Cost",
    "History",
    "KeepAlive",
    "Layout",
    "LayoutError",
    "Ledger",
    "LedgerError",
    "LedgerRow",
    "Prediction",
    "Prefix",
    "PrefixTooShortWarning",
    "RateLimiter",
    "Rates",
    "RedisRateLimiter",
    "RedisWarmRegistry",
    "RenderedRequest",
    "Reply",
    "RequestRejected",
    "RetriesExhausted",
    "RetryPolicy",
    "Router",
    "Session",
    "Spend",
    "SpendCapReached",
    "StackedRetriesWarning",
    "Stats",
    "StreamInterrupted",
    "Usage",
    "WarmKey",
    "WarmRegistry",
    "emulator",
    "models",
    "price",
    "tokens",
]

__version__ = "0.1.0.dev0"

# A library's logger stays silent until the application configures logging (the standard
# practice): without this, Python's last-resort handler would print convo's warnings.
_logging.getLogger("convo").addHandler(_logging.NullHandler())

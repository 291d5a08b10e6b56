"""convo: Claude conversations that use the prompt cache well and count every token.

This module only re-exports the public names; each lives in the module named beside it.
"""

from convo import emulator, models, tokens
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
from convo.pricing import Cost, Rates, price
from convo.tracker import CacheOutcome, CacheTracker, Prediction
from convo.usage import Usage

__all__ = [
    "BudgetExceeded",
    "CacheOutcome",
    "CacheTracker",
    "ConvoError",
    "Cost",
    "History",
    "Layout",
    "LayoutError",
    "Ledger",
    "LedgerError",
    "LedgerRow",
    "Prediction",
    "Prefix",
    "PrefixTooShortWarning",
    "Rates",
    "RenderedRequest",
    "RetriesExhausted",
    "SpendCapReached",
    "StreamInterrupted",
    "Usage",
    "emulator",
    "models",
    "price",
    "tokens",
]

__version__ = "0.1.0.dev0"

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

__all__ = [
    "BudgetExceeded",
    "ConvoError",
    "LayoutError",
    "LedgerError",
    "RetriesExhausted",
    "SpendCapReached",
    "StreamInterrupted",
    "emulator",
    "models",
    "tokens",
]

__version__ = "0.1.0.dev0"

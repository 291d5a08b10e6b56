"""The errors convo raises at run time.

Misuse (a wrong type, an impossible option) raises ``ValueError`` or ``TypeError`` with a
message that says what to do instead. Conditions met while running (a budget reached,
retries used up) raise a subclass of :class:`ConvoError`, carrying their context as
attributes and raised ``from`` their cause::

    ConvoError
    ├── LayoutError          (also a ValueError: the request cannot be built as asked)
    ├── BudgetExceeded       a budget would be or was exceeded; nothing was sent
    ├── RetriesExhausted     every allowed attempt failed
    ├── SpendCapReached      the organisation's spend cap: retrying cannot help
    ├── StreamInterrupted    an error event arrived after text reached the caller
    └── LedgerError          the ledger could not record or read
"""

from __future__ import annotations

__all__ = [
    "BudgetExceeded",
    "ConvoError",
    "LayoutError",
    "LedgerError",
    "RetriesExhausted",
    "SpendCapReached",
    "StreamInterrupted",
]


class ConvoError(Exception):
    """Root of every run-time error convo raises."""


class LayoutError(ConvoError, ValueError):
    """The prompt cannot be laid out as asked (too many breakpoints, bad TTL order, ...)."""


class BudgetExceeded(ConvoError):
    """A budget would be exceeded by a request, or was exceeded by one; nothing was sent."""


class RetriesExhausted(ConvoError):
    """Every attempt the retry policy allowed has failed."""


class SpendCapReached(ConvoError):
    """The organisation's monthly spend cap was reached; retrying cannot help."""


class StreamInterrupted(ConvoError):
    """A stream failed after some of its text had already reached the caller."""


class LedgerError(ConvoError):
    """The ledger could not record or read."""

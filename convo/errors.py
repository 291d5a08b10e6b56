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
    ├── StreamInterrupted    a stream was cut after text reached the caller
    ├── LedgerError          the ledger could not record or read
    ├── UnknownModel         a model id the model table does not know (also a LookupError)
    └── WarmWaitTimeout      waited too long for another session's write of a prefix
"""

from __future__ import annotations

from typing import Any

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
    """A budget would be exceeded by a request; nothing was sent.

    Attributes:
        limit: Which limit (``max_input_tokens``, ``max_output_tokens``, ``max_cost_usd``).
        maximum: Its value.
        estimate: What this request was estimated to add.
        spent: What the scope had already spent, or reserved for requests in flight.
        scope: ``request``, ``session`` or ``ledger``.
    """

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        maximum: object,
        estimate: object,
        spent: object,
        scope: str,
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.maximum = maximum
        self.estimate = estimate
        self.spent = spent
        self.scope = scope


class RetriesExhausted(ConvoError):
    """Every attempt the retry policy allowed has failed.

    Attributes:
        attempts: Every attempt's record (status, error type, wait, request id).
        last_error: The last attempt's exception (also the ``__cause__``).
        reason: Why retrying stopped (attempts, deadline or ``max_wait``).
    """

    def __init__(
        self,
        message: str,
        *,
        attempts: tuple[Any, ...] = (),
        last_error: BaseException | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last_error = last_error
        self.reason = reason


class SpendCapReached(ConvoError):
    """The organisation's monthly spend cap was reached; retrying cannot help.

    Attributes:
        attempts: The attempt records (one: it is never retried).
        request_id: The refused request's id.
        last_error: The SDK's ``RateLimitError`` (also the ``__cause__``).
    """

    def __init__(
        self,
        message: str,
        *,
        attempts: tuple[Any, ...] = (),
        request_id: str | None = None,
        last_error: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.request_id = request_id
        self.last_error = last_error


class StreamInterrupted(ConvoError):
    """A stream failed after some of its text had already reached the caller.

    Attributes:
        partial_text: The text that reached the caller before the failure.
        usage: What the stream had used by then (a ``convo.Usage``), as far as known.
    """

    def __init__(self, message: str, *, partial_text: str = "", usage: Any = None) -> None:
        super().__init__(message)
        self.partial_text = partial_text
        self.usage = usage


class LedgerError(ConvoError):
    """The ledger could not record or read."""

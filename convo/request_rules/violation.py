"""What a refused request carries: the :class:`Violation` value and the library's error."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

__all__ = ["RequestRejected", "Violation", "invalid", "tags"]


@attrs.frozen
class Violation:
    """The first rule a request breaks, as the API would answer it.

    Attributes:
        status: HTTP status (400, or 413 for the body size).
        type: The API's error type (``invalid_request_error``, ``request_too_large``).
        message: The error message, in the API's wording where it is known.
        rule: A short name for the rule (``body_too_large``, ``context_window``, ...), the
            key of its row in ``docs/emulator.md``.
    """

    status: int
    type: str
    message: str
    rule: str


class RequestRejected(ValueError):
    """A request the API would refuse before running it; raised by :func:`check_request`.

    A ``ValueError``: the request is wrong and sending it again cannot help. Nothing was
    sent and nothing was billed.

    Attributes:
        status: The HTTP status the API would answer (400 or 413).
        type: The API's error type.
        rule: Which rule (see :class:`Violation`).
        violation: The whole :class:`Violation`.
    """

    def __init__(self, violation: Violation) -> None:
        super().__init__(f"{violation.message} (the API would answer {violation.status})")
        self.violation = violation
        self.status = violation.status
        self.type = violation.type
        self.rule = violation.rule


def invalid(rule: str, message: str) -> Violation:
    """A 400 ``invalid_request_error`` for *rule*."""
    return Violation(400, "invalid_request_error", message, rule)


def tags(names: Iterable[str]) -> str:
    """``'a', 'b'``: names as the API lists expected tags."""
    return ", ".join(f"'{n}'" for n in sorted(names))

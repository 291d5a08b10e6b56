"""Errors the emulator answers with, in the API's JSON shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ERROR_TYPES", "APIError"]

#: HTTP status of each API error type, as documented.
ERROR_TYPES: Mapping[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class APIError(Exception):
    """An error response: status from the type, a message, extra headers and details."""

    def __init__(
        self,
        type: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.type = type
        self.status = ERROR_TYPES[type]
        self.message = message
        self.headers = dict(headers or {})
        self.details = dict(details) if details else None

    def body(self, request_id: str) -> dict[str, Any]:
        """Return the error body: ``{"type": "error", "error": {...}, "request_id": ...}``."""
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"type": "error", "error": error, "request_id": request_id}


def invalid(message: str) -> APIError:
    """Return a 400 ``invalid_request_error`` with *message*."""
    return APIError("invalid_request_error", message)

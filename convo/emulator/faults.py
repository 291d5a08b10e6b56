"""Injected faults: which request gets one, and the API's answer for it.

A config's script plays first, one entry per ``/v1/messages`` request; then each request
draws from the seeded random rates. The errors carry the bodies and headers the real API
sends (``retry-after``, ``retry-after-ms``, ``x-should-retry``, the spend cap's
``details.error_code``).
"""

from __future__ import annotations

import random
from email.utils import formatdate

from convo.emulator.config import Fault, FaultConfig
from convo.emulator.errors import APIError

__all__ = ["STREAM_ONLY", "FaultPlan"]

#: Faults that happen partway through an SSE stream, so only to streaming requests.
STREAM_ONLY = frozenset(
    {"stream_error", "stream_drop", "stream_error_before_text", "stream_drop_before_text"}
)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _should_retry(fault: Fault) -> dict[str, str]:
    if fault.should_retry is None:
        return {}
    return {"x-should-retry": "true" if fault.should_retry else "false"}


class FaultPlan:
    """The faults still to come for one config (caller holds the lock)."""

    def __init__(self, faults: FaultConfig, seed: int) -> None:
        self._script = list(faults.script)
        self._rates = sorted(faults.rates.items())
        self._rng = random.Random(seed)

    def next(self, *, stream: bool) -> Fault | None:
        """The fault for the next request, or ``None``."""
        if self._script:
            fault = self._script.pop(0)
        else:
            fault = None
            draw = self._rng.random()
            for kind, rate in self._rates:
                if draw < rate:
                    fault = Fault(kind=kind)
                    break
                draw -= rate
        if fault is not None and fault.kind in STREAM_ONLY and not stream:
            return None  # these need a stream to happen in
        return fault

    @staticmethod
    def error(fault: Fault, *, limit_headers: dict[str, str], now: float) -> APIError:
        """The API error a status fault answers with (not ``drop`` or the stream-only ones)."""
        headers: dict[str, str] = {}
        if fault.kind == "spend_cap":
            return APIError(
                "rate_limit_error",
                "You have reached your specified API usage limits. You will regain access on "
                "the first day of next month.",
                headers={**limit_headers, **_should_retry(fault)},
                details={"error_code": "enforced_spend_limit_reached"},
            )
        if fault.retry_after is not None or fault.kind == "rate_limit":
            seconds = fault.retry_after if fault.retry_after is not None else 1.0
            if fault.retry_after_http_date:
                headers["retry-after"] = formatdate(now + seconds, usegmt=True)
            else:
                headers["retry-after"] = _seconds(seconds)
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = str(fault.retry_after_ms)
        headers.update(_should_retry(fault))
        if fault.kind in ("rate_limit", "rate_limit_bare"):
            return APIError(
                "rate_limit_error",
                "This request would exceed the rate limit for your organization. "
                "Please retry after the time in the retry-after header.",
                headers={**limit_headers, **headers},
            )
        if fault.kind == "overloaded":
            return APIError("overloaded_error", "Overloaded", headers=headers)
        return APIError("api_error", "Internal server error", headers=headers)

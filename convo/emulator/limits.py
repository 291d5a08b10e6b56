"""Emulated rate limits: continuously refilled token buckets per workspace and model class.

Each rate-limit class has three buckets, RPM, ITPM and OTPM, each holding at most one
minute's allowance and refilling at ``limit / 60`` per second (so 60 RPM admits about one
request a second, not 60 at once). A request is admitted when it has a request, its input
weight (input plus cache writes; plus cache reads only where the model says reads count)
and a non-negative output balance; actual output is charged when known, which may take the
output bucket into debt until it refills.
"""

from __future__ import annotations

import datetime as dt
import math

import attrs

from convo.emulator.config import Limits

__all__ = ["Admission", "Bucket", "RateLimits", "rfc3339"]


def rfc3339(timestamp: float) -> str:
    """Format *timestamp* as an RFC 3339 UTC time with seconds, as the API's headers do."""
    moment = dt.datetime.fromtimestamp(math.ceil(timestamp), tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Bucket:
    """A token bucket of *capacity* refilling at ``capacity / 60`` per second."""

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = capacity
        self.rate = capacity / 60.0
        self._level = float(capacity)
        self._updated = now

    def level(self, now: float) -> float:
        """Return the current level after refilling up to *now* (may be negative: debt)."""
        if now > self._updated:
            self._level = min(self.capacity, self._level + (now - self._updated) * self.rate)
            self._updated = now
        return self._level

    def take(self, amount: float, now: float) -> None:
        """Remove *amount* (the level may go negative)."""
        self._level = self.level(now) - amount

    def seconds_until(self, amount: float, now: float) -> float:
        """Seconds until the level reaches *amount* (0 if it already has)."""
        missing = amount - self.level(now)
        return max(0.0, missing / self.rate)

    def full_at(self, now: float) -> float:
        """When the bucket will be full again."""
        return now + self.seconds_until(self.capacity, now)


@attrs.frozen
class Admission:
    """The outcome of a rate-limit check.

    ``retry_after`` is ``None`` when admitted, else seconds to wait; ``limited`` names the
    bucket that refused (``requests``, ``input_tokens`` or ``output_tokens``).
    """

    retry_after: float | None
    limited: str | None = None
    limit: int | None = None


class _ClassBuckets:
    def __init__(self, limits: Limits, now: float) -> None:
        self.requests = Bucket(limits.rpm, now) if limits.rpm else None
        self.input = Bucket(limits.itpm, now) if limits.itpm else None
        self.output = Bucket(limits.otpm, now) if limits.otpm else None
        self.count_tokens = (
            Bucket(limits.count_tokens_rpm, now) if limits.count_tokens_rpm else None
        )


class RateLimits:
    """All buckets, created on first use per (workspace, class)."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], _ClassBuckets] = {}

    def clear(self) -> None:
        """Forget every bucket (they start full again)."""
        self._buckets.clear()

    def _for(self, workspace: str, klass: str, limits: Limits, now: float) -> _ClassBuckets:
        key = (workspace, klass)
        found = self._buckets.get(key)
        if found is None:
            found = self._buckets[key] = _ClassBuckets(limits, now)
        return found

    def admit(
        self, workspace: str, klass: str, limits: Limits, *, input_weight: int, now: float
    ) -> Admission:
        """Admit a request of *input_weight* ITPM tokens, taking from RPM and ITPM if admitted."""
        b = self._for(workspace, klass, limits, now)
        checks = (
            ("requests", b.requests, 1.0),
            # A request larger than a whole minute's allowance is admitted on a full bucket,
            # then leaves it in debt; otherwise it could never be sent at all.
            (
                "input_tokens",
                b.input,
                float(min(input_weight, b.input.capacity)) if b.input else 0.0,
            ),
            ("output_tokens", b.output, 0.0),
        )
        for name, bucket, need in checks:
            if bucket is None:
                continue
            if name == "output_tokens":
                wait = 0.0 if bucket.level(now) >= 0 else bucket.seconds_until(0.0, now)
            else:
                wait = bucket.seconds_until(need, now)
            if wait > 0:
                return Admission(retry_after=wait, limited=name, limit=bucket.capacity)
        if b.requests:
            b.requests.take(1, now)
        if b.input:
            b.input.take(input_weight, now)
        return Admission(retry_after=None)

    def admit_count_tokens(self, workspace: str, limits: Limits, now: float) -> Admission:
        """Admit a count_tokens request against its own RPM bucket."""
        b = self._for(workspace, "count_tokens", limits, now)
        if b.count_tokens is None:
            return Admission(retry_after=None)
        wait = b.count_tokens.seconds_until(1.0, now)
        if wait > 0:
            return Admission(wait, "requests", b.count_tokens.capacity)
        b.count_tokens.take(1, now)
        return Admission(retry_after=None)

    def charge_output(
        self, workspace: str, klass: str, limits: Limits, output: int, now: float
    ) -> None:
        """Charge actual output tokens to OTPM once they are known."""
        b = self._for(workspace, klass, limits, now)
        if b.output:
            b.output.take(output, now)

    def headers(self, workspace: str, klass: str, limits: Limits, now: float) -> dict[str, str]:
        """Return the ``anthropic-ratelimit-*`` headers for the class's current state."""
        b = self._for(workspace, klass, limits, now)
        headers: dict[str, str] = {}
        token_buckets: list[tuple[float, Bucket]] = []
        for name, bucket in (
            ("requests", b.requests),
            ("input-tokens", b.input),
            ("output-tokens", b.output),
        ):
            if bucket is None:
                continue
            level = max(0.0, bucket.level(now))
            # Token counts are rounded down to thousands, as the API does; requests are exact.
            remaining = int(level) if name == "requests" else int(level) // 1000 * 1000
            headers[f"anthropic-ratelimit-{name}-limit"] = str(bucket.capacity)
            headers[f"anthropic-ratelimit-{name}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{name}-reset"] = rfc3339(bucket.full_at(now))
            if name != "requests":
                token_buckets.append((level / bucket.capacity, bucket))
        if token_buckets:
            _, tightest = min(token_buckets, key=lambda pair: pair[0])
            level = max(0.0, tightest.level(now))
            headers["anthropic-ratelimit-tokens-limit"] = str(tightest.capacity)
            headers["anthropic-ratelimit-tokens-remaining"] = str(int(level) // 1000 * 1000)
            headers["anthropic-ratelimit-tokens-reset"] = rfc3339(tightest.full_at(now))
        return headers

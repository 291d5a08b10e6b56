"""Retries for Messages API calls: which failures to retry, how long to wait, when to stop.

:class:`RetryPolicy` is convo's one retry layer. Its pure parts (``classify``, ``backoff``,
:func:`parse_retry_after`) decide; ``call`` and ``call_async`` run the loop on tenacity with
an injected ``sleep`` and ``clock``, so tests never wait for real.

**The client must have ``max_retries=0``.** The ``anthropic`` client retries by itself
(``max_retries=2`` by default); two loops multiply (4 convo attempts x 3 SDK tries = 12
requests) and the SDK's loop hides each attempt's status and request id from the ledger.
``Session`` re-wraps its client with ``client.with_options(max_retries=0)``; the tests prove
the SDK's loop is off by counting requests at the emulator.

Retried: :attr:`RetryPolicy.retry_statuses` (408, 409, 429, 500, 502-504, 529), connection
errors, timeouts and ``anthropic.RetryableError``; ``x-should-retry: true|false`` overrides
the status rule either way. Never retried: the spend-cap 429 (no ``retry-after``,
``error.details.error_code == "enforced_spend_limit_reached"``), which raises
:class:`~convo.errors.SpendCapReached` whatever ``x-should-retry`` says, and any other status
(400, 401, 403, 404, 413, ...), whose SDK exception is re-raised unchanged. ``call``
retries whatever ``fn`` raises; which stream failures may be retried is the Session's call.

.. versionadded:: 0.1
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import anthropic
import attrs
import tenacity
from tenacity.stop import stop_base

from convo.errors import RetriesExhausted, SpendCapReached

__all__ = [
    "AttemptRecord",
    "RetryDecision",
    "RetryPolicy",
    "StackedRetriesWarning",
    "parse_retry_after",
]

T = TypeVar("T")

SPEND_CAP_CODE = "enforced_spend_limit_reached"

# The documented error type of each status, so an `error` event inside a 200 stream
# (which the SDK raises as an APIStatusError with the stream's status, 200) is judged
# by the status the same error would have had as a response.
_STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


@attrs.frozen
class AttemptRecord:
    """What one attempt came to; ``Session`` puts these on the reply and in the ledger.

    Attributes:
        number: 1-based attempt number.
        status: HTTP status; ``None`` for connection errors and timeouts. A success is 200
            unless the result exposes its own status (a raw response or a stream).
        error_type: The API error type (``"overloaded_error"``, ...), else the exception's
            class name; ``None`` on success.
        request_id: The server's ``request-id``, when there was a response.
        wait: Seconds waited after this attempt before the next; 0.0 for the last.
        started_at: When the attempt began, on the injected ``clock``.
    """

    number: int
    status: int | None
    error_type: str | None
    request_id: str | None
    wait: float
    started_at: float


@attrs.frozen
class RetryDecision:
    """The pure verdict on one failure: whether to retry it, and what the server hinted.

    Attributes:
        retry: Whether another attempt may help.
        wait: The server's hinted wait in seconds (``retry-after-ms``, ``retry-after`` as
            seconds or an HTTP date), or ``None`` when it gave none.
        reason: Human words: ``"529 overloaded_error"``, ``"spend cap reached"``,
            ``"400 is not retryable"``, ...
        spend_cap: The failure is the organisation's spend cap (never retried).
    """

    retry: bool
    wait: float | None
    reason: str
    spend_cap: bool = False


def parse_retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """Read the server's hinted wait from response headers, in seconds.

    ``retry-after-ms`` comes first (it is the more precise); then ``retry-after`` as a
    number of seconds (a float is accepted, as the SDK does) or as an HTTP date, taken
    relative to ``now``. A date already past gives 0.0. No upper cap is applied here: the
    policy's ``max_wait`` decides what to do with a long wait.

    Args:
        headers: Response headers (an ``httpx`` ``Headers`` or any mapping; names are
            matched without regard to case).
        now: The current wall-clock time as a Unix epoch (``time.time()``).

    Returns:
        Seconds to wait, or ``None`` when neither header holds a usable value.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    millis = _non_negative_number(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative_number(value)
    if seconds is not None:
        return seconds
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, float(email.utils.mktime_tz(parsed)) - now)


def _non_negative_number(text: str | None) -> float | None:
    try:
        number = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _at_least(minimum: float, *, allow_none: bool = False) -> Callable[[Any, Any, Any], None]:
    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"RetryPolicy.{attribute.name} must be a number, got {value!r}")
        if not value >= minimum:
            raise ValueError(f"RetryPolicy.{attribute.name} must be >= {minimum}, got {value!r}")

    return check


def _statuses(value: Iterable[int]) -> frozenset[int]:
    statuses = frozenset(value)
    if not all(isinstance(s, int) and 100 <= s <= 599 for s in statuses):
        raise ValueError(f"retry_statuses must hold HTTP status codes (100-599), got {value!r}")
    return statuses


@attrs.frozen
class RetryPolicy:
    """Which failed API calls to retry, how long to wait between attempts, and when to stop.

    Waits follow the server when it hints (``retry-after-ms``, ``retry-after``); otherwise
    exponential backoff with full jitter. A hint above ``max_wait``, or a wait that would
    reach the ``deadline``, stops the retrying rather than waiting less than the server
    asked, which would only draw another 429.

    Attributes:
        max_attempts: Attempts in all, the first included (at least 1; 1 = no retries).
        deadline: Seconds from the first attempt's start beyond which no attempt begins,
            waits included; ``None`` for no deadline.
        max_wait: The longest single wait honoured, in seconds.
        backoff_base: Backoff ceiling of the first retry, in seconds; it doubles per attempt.
        backoff_cap: The largest backoff ceiling, in seconds.
        retry_statuses: HTTP statuses retried (unless ``x-should-retry`` says otherwise).
        retry_connection_errors: Retry connection errors and timeouts.
    """

    max_attempts: int = attrs.field(default=4, validator=_at_least(1))
    deadline: float | None = attrs.field(default=120.0, validator=_at_least(0, allow_none=True))
    max_wait: float = attrs.field(default=60.0, validator=_at_least(0))
    backoff_base: float = attrs.field(default=0.5, validator=_at_least(0))
    backoff_cap: float = attrs.field(default=8.0, validator=_at_least(0))
    retry_statuses: frozenset[int] = attrs.field(
        default=frozenset({408, 409, 429, 500, 502, 503, 504, 529}), converter=_statuses
    )
    retry_connection_errors: bool = True

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.max_attempts, int):
            raise TypeError(f"RetryPolicy.max_attempts must be an int, got {self.max_attempts!r}")

    def classify(self, error: BaseException, *, now: float | None = None) -> RetryDecision:
        """Decide whether one failure is worth another attempt. Pure: no I/O, no sleeping.

        Args:
            error: What the attempt raised.
            now: Wall-clock epoch time for reading an HTTP-date ``retry-after``;
                defaults to ``time.time()``.

        Returns:
            The verdict, with the server's hinted wait and a reason in words.
        """
        if isinstance(error, anthropic.APIStatusError):
            return self._classify_status(error, time.time() if now is None else now)
        if isinstance(error, anthropic.APIConnectionError):
            what = (
                "timed out" if isinstance(error, anthropic.APITimeoutError) else "connection error"
            )
            if self.retry_connection_errors:
                return RetryDecision(retry=True, wait=None, reason=what)
            return RetryDecision(retry=False, wait=None, reason=f"{what}; not retried by policy")
        if isinstance(error, anthropic.RetryableError):
            return RetryDecision(retry=True, wait=None, reason="RetryableError opted in")
        return RetryDecision(
            retry=False, wait=None, reason=f"{type(error).__name__} is not an API error"
        )

    def _classify_status(self, error: anthropic.APIStatusError, now: float) -> RetryDecision:
        headers = error.response.headers
        hint = parse_retry_after(headers, now=now)
        error_type = _body_field(error, "error", "type")
        status = error.status_code
        if status < 400:  # an `error` event in a stream: judge it by its documented status
            status = _STATUS_OF_TYPE.get(error_type or "", 500)
        label = f"{status} {error_type}" if error_type else str(status)
        if (
            status == 429
            and "retry-after" not in headers
            and "retry-after-ms" not in headers
            and _body_field(error, "error", "details", "error_code") == SPEND_CAP_CODE
        ):
            return RetryDecision(retry=False, wait=None, reason="spend cap reached", spend_cap=True)
        should = headers.get("x-should-retry")
        if should in ("true", "false"):
            verdict = "retried" if should == "true" else "not retried"
            reason = f"{label}, {verdict} as x-should-retry: {should} says"
            return RetryDecision(retry=should == "true", wait=hint, reason=reason)
        if status in self.retry_statuses:
            return RetryDecision(retry=True, wait=hint, reason=label)
        return RetryDecision(retry=False, wait=hint, reason=f"{status} is not retryable")

    def backoff(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """The jittered wait after failed attempt number ``attempt`` when the server gave none.

        Full jitter: uniform in ``[0, min(backoff_cap, backoff_base * 2 ** (attempt - 1))]``,
        so clients that failed together do not retry together.

        Args:
            attempt: The 1-based number of the attempt that just failed.
            rng: A source of floats in ``[0, 1)``; inject one for repeatable tests.

        Returns:
            Seconds to wait.
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ValueError(f"attempt is 1-based: pass 1 for the first attempt, got {attempt!r}")
        # The exponent is capped so a huge attempt number cannot overflow the float.
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** min(attempt - 1, 1000))
        return ceiling * rng()

    def call(
        self,
        fn: Callable[[], T],
        *,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        on_attempt: Callable[[AttemptRecord], None] | None = None,
    ) -> tuple[T, tuple[AttemptRecord, ...]]:
        """Call ``fn`` until it succeeds, fails for good, or the policy stops retrying.

        Args:
            fn: One attempt, e.g. ``lambda: client.messages.create(...)`` on a client with
                ``max_retries=0``.
            sleep: Waits between attempts (inject a recorder in tests).
            clock: Monotonic seconds, for the deadline and ``started_at``.
            wall_clock: Epoch seconds, for HTTP-date ``retry-after``.
            rng: Jitter source in ``[0, 1)``.
            on_attempt: Called with each attempt's record once its wait is known,
                before that wait (and for the final attempt before returning or raising).

        Returns:
            ``fn``'s result and the record of every attempt.

        Raises:
            RetriesExhausted: Attempts, deadline or ``max_wait`` ran out.
            SpendCapReached: The organisation's spend cap; not retried.
            Exception: A failure that is not retryable, re-raised unchanged.
        """

        def nap(seconds: float) -> None:
            sleep(float(seconds))

        run = _Run(self, clock=clock, wall_clock=wall_clock, rng=rng, on_attempt=on_attempt)
        retrying = tenacity.Retrying(sleep=nap, reraise=True, **run.strategies())
        try:
            result = retrying(fn)
        except Exception as error:
            run.fail(error)
            raise
        return run.succeed(result)

    async def call_async(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        on_attempt: Callable[[AttemptRecord], None] | None = None,
    ) -> tuple[T, tuple[AttemptRecord, ...]]:
        """The awaitable twin of :meth:`call`: same arguments, decisions, result and errors.

        ``fn`` (e.g. ``lambda: async_client.messages.create(...)``) and ``sleep`` are awaited.
        """

        # tenacity awaits only coroutine functions; `fn` is often a lambda returning one.
        async def attempt() -> T:
            return await fn()

        async def nap(seconds: float) -> None:
            await sleep(float(seconds))

        run = _Run(self, clock=clock, wall_clock=wall_clock, rng=rng, on_attempt=on_attempt)
        retrying = tenacity.AsyncRetrying(sleep=nap, reraise=True, **run.strategies())
        try:
            result: T = await retrying(attempt)
        except Exception as error:
            run.fail(error)
            raise
        return run.succeed(result)


class _Run:
    """The mutable state of one ``call``: tenacity's hooks read and write it in turn.

    Per attempt tenacity calls ``before``, then ``should_retry``; for a retry ``wait`` and
    ``stop``; then ``before_sleep`` unless stopping. ``_pending`` holds the attempt whose
    record waits for its wait to be known; ``finish`` turns it into a record exactly once.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        rng: Callable[[], float],
        on_attempt: Callable[[AttemptRecord], None] | None,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng
        self._on_attempt = on_attempt
        self._start = clock()
        self._started_at = self._start
        self._pending: AttemptRecord | None = None
        self._decision = RetryDecision(retry=False, wait=None, reason="")
        self._last_error: BaseException | None = None
        self._stop_reason = ""
        self.records: list[AttemptRecord] = []

    def strategies(self) -> dict[str, Any]:
        return {
            "before": self._before,
            "retry": self._should_retry,
            "wait": lambda state: self.next_wait(state.attempt_number),
            "stop": tenacity.stop_after_attempt(self._policy.max_attempts) | _Stop(self),
            "before_sleep": lambda state: self.finish(state.upcoming_sleep),
        }

    def _before(self, state: tenacity.RetryCallState) -> None:
        self._started_at = self._clock()

    def _should_retry(self, state: tenacity.RetryCallState) -> bool:
        outcome = state.outcome
        assert outcome is not None  # tenacity asks only after an attempt
        number = state.attempt_number
        if not outcome.failed:
            ok_status, ok_id = _success_facts(outcome.result())
            self._pending = AttemptRecord(number, ok_status, None, ok_id, 0.0, self._started_at)
            return False
        error = self._last_error = outcome.exception()
        if not isinstance(error, Exception):  # cancelled or interrupted: not an API outcome
            return False
        self._decision = self._policy.classify(error, now=self._wall_clock())
        _warn_if_the_sdk_retried(error)
        status, error_type, request_id = _failure_facts(error)
        self._pending = AttemptRecord(number, status, error_type, request_id, 0.0, self._started_at)
        return self._decision.retry

    def next_wait(self, attempt: int) -> float:
        hint = self._decision.wait
        # A zero hint (or a date already past) usually means clock skew; like the SDK,
        # back off instead of retrying at once.
        if hint is not None and hint > 0:
            return hint
        # Backoff is ours to shorten, unlike a server hint.
        return min(self._policy.backoff(attempt, self._rng), self._policy.max_wait)

    def beyond_limits(self, wait: float) -> bool:
        policy = self._policy
        if wait > policy.max_wait:
            self._stop_reason = (
                f"the server asked for {wait:g} s, above max_wait {policy.max_wait:g} s"
            )
            return True
        elapsed = self._clock() - self._start
        if policy.deadline is not None and elapsed + wait >= policy.deadline:
            self._stop_reason = (
                f"waiting {wait:.3g} s after {elapsed:.3g} s would reach the "
                f"{policy.deadline:g} s deadline"
            )
            return True
        return False

    def finish(self, wait: float) -> None:
        if self._pending is None:
            return
        record = attrs.evolve(self._pending, wait=float(wait))
        self._pending = None
        self.records.append(record)
        if self._on_attempt is not None:
            self._on_attempt(record)

    def succeed(self, result: T) -> tuple[T, tuple[AttemptRecord, ...]]:
        self.finish(0.0)
        return result, tuple(self.records)

    def fail(self, error: Exception) -> None:
        """Record the last attempt, then raise convo's error for ``error`` if it has one."""
        self.finish(0.0)
        if error is not self._last_error:
            return  # raised by a hook (on_attempt, clock, rng), not by an attempt: pass it on
        attempts = tuple(self.records)
        if self._decision.spend_cap:
            request_id = attempts[-1].request_id if attempts else None
            spend_cap = SpendCapReached(
                f"the organisation's spend cap is reached ({SPEND_CAP_CODE}, request id "
                f"{request_id}); retrying cannot help: raise the limit in the Console or wait "
                "for the next billing period",
                attempts=attempts,
                request_id=request_id,
                last_error=error,
            )
            raise spend_cap from error
        if not self._decision.retry:
            return  # not retryable: the caller gets the SDK's exception unchanged
        outcomes = ", ".join(str(r.status) if r.status else str(r.error_type) for r in attempts)
        last_id = attempts[-1].request_id if attempts else None
        where = f" (last request id {last_id})" if last_id else ""
        why = self._stop_reason or f"max_attempts={self._policy.max_attempts} reached"
        exhausted = RetriesExhausted(
            f"{len(attempts)} attempts failed: {outcomes}{where}; stopped: {why}",
            attempts=attempts,
            last_error=error,
            reason=why,
        )
        raise exhausted from error


class _Stop(stop_base):
    def __init__(self, run: _Run) -> None:
        self._run = run

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._run.beyond_limits(retry_state.upcoming_sleep)


def _body_field(error: anthropic.APIStatusError, *path: str) -> str | None:
    """A string at ``path`` inside the error body (``error.type``, ...), else ``None``."""
    value: object = error.body
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


class StackedRetriesWarning(UserWarning):
    """The client retried on its own under a RetryPolicy: two retry loops multiply."""


def _warn_if_the_sdk_retried(error: Exception) -> None:
    """Warn when the failed attempt was itself the SDK's retry (its client has max_retries > 0).

    The SDK numbers its own retries in the ``x-stainless-retry-count`` request header; a value
    above 0 means the policy's attempts are each several requests, and its records undercount.
    """
    response = getattr(error, "response", None)
    request = getattr(response, "request", None)
    count = getattr(request, "headers", {}).get("x-stainless-retry-count", "0")
    if count.isdigit() and int(count) > 0:
        warnings.warn(
            "the client retried this request itself (x-stainless-retry-count "
            f"{count}); build it with max_retries=0 so RetryPolicy is the only retry loop",
            StackedRetriesWarning,
            stacklevel=2,
        )


def _failure_facts(error: Exception) -> tuple[int | None, str | None, str | None]:
    if isinstance(error, anthropic.APIStatusError):
        kind = _body_field(error, "error", "type") or type(error).__name__
        status = error.status_code
        if status < 400:  # an `error` event inside a 200 stream: record the status it stands for
            status = _STATUS_OF_TYPE.get(kind, 500)
        return status, kind, error.request_id
    return None, type(error).__name__, None


def _success_facts(result: object) -> tuple[int, str | None]:
    # A parsed Message keeps its id as `_request_id`; raw responses and streams expose the
    # httpx response. The SDK raises on every non-2xx status, so 200 is the fallback.
    response = getattr(result, "http_response", None) or getattr(result, "response", None)
    status = getattr(response, "status_code", None)
    request_id = getattr(result, "_request_id", None) or getattr(result, "request_id", None)
    if request_id is None and response is not None:
        headers = getattr(response, "headers", None)
        request_id = headers.get("request-id") if isinstance(headers, Mapping) else None
    return (
        status if isinstance(status, int) else 200,
        request_id if isinstance(request_id, str) else None,
    )

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
import random
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from typing import Any, TypeVar

import attrs
import tenacity
from tenacity.stop import stop_base

from convo import sdk
from convo.errors import RetriesExhausted, SpendCapReached
from convo.sdk import parse_retry_after

__all__ = [
    "AttemptRecord",
    "RetryDecision",
    "RetryPolicy",
    "StackedRetriesWarning",
    "parse_retry_after",
]

T = TypeVar("T")

SPEND_CAP_CODE = sdk.SPEND_CAP_CODE

#: What :meth:`RetryPolicy.drive` yields when it wants the next attempt made.
ATTEMPT = "attempt"


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
        return self.decide(sdk.facts_of(error, now=time.time() if now is None else now))

    def decide(self, facts: sdk.AttemptFacts) -> RetryDecision:
        """Decide from an attempt's facts (:func:`convo.sdk.facts_of`) whether to retry."""
        category = facts.category
        if category == "status":
            return self._decide_status(facts)
        if category in ("connection", "timeout", "transport"):
            what = "timed out" if category == "timeout" else "connection error"
            if self.retry_connection_errors:
                return RetryDecision(retry=True, wait=None, reason=what)
            return RetryDecision(retry=False, wait=None, reason=f"{what}; not retried by policy")
        if category == "retryable":
            return RetryDecision(retry=True, wait=None, reason="RetryableError opted in")
        return RetryDecision(
            retry=False, wait=None, reason=f"{facts.error_type} is not an API error"
        )

    def _decide_status(self, facts: sdk.AttemptFacts) -> RetryDecision:
        status = facts.status or 500
        hint = facts.retry_after
        label = f"{status} {facts.error_type}" if facts.error_type else str(status)
        if facts.spend_cap:
            return RetryDecision(retry=False, wait=None, reason="spend cap reached", spend_cap=True)
        should = (facts.headers or {}).get("x-should-retry")
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

    def drive(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        on_attempt: Callable[[AttemptRecord], None] | None = None,
    ) -> Generator[str | float, Any, tuple[Any, tuple[AttemptRecord, ...]]]:
        """The retry loop as a generator, so one function can run it sync or async.

        It yields :data:`ATTEMPT` when it wants an attempt made: send it the attempt's
        result, or throw its exception in. It yields a float when it wants that many seconds
        slept: send ``None``. It returns the successful result with every attempt's record,
        or raises as :meth:`call` does. tenacity makes every decision (the same strategies
        as :meth:`call`); only who does the waiting changes.
        """
        run = _Run(self, clock=clock, wall_clock=wall_clock, rng=rng, on_attempt=on_attempt)
        # Most calls succeed at once: the first attempt is made before tenacity's machinery
        # is built (speed over uniformity; a success is recorded exactly as tenacity would).
        started = clock()
        try:
            first = yield ATTEMPT
        except Exception:
            failure = sys.exc_info()
        else:
            run.record_success(first, number=1, started_at=started)
            return run.succeed(first)
        retrying = tenacity.Retrying(reraise=True, **run.strategies())
        retrying.begin()
        state = tenacity.RetryCallState(retrying, fn=None, args=(), kwargs={})
        try:
            do = retrying.iter(retry_state=state)  # the first attempt, made above
            run.started_at = started
            state.set_exception(failure)  # type: ignore[arg-type]
            while True:
                do = retrying.iter(retry_state=state)
                if isinstance(do, tenacity.DoAttempt):
                    try:
                        result = yield ATTEMPT
                    except Exception:
                        # Only failures are outcomes; a cancellation or Ctrl-C
                        # (BaseException) goes straight through, never retried.
                        state.set_exception(sys.exc_info())  # type: ignore[arg-type]
                    else:
                        state.set_result(result)
                elif isinstance(do, tenacity.DoSleep):
                    state.prepare_for_next_attempt()
                    yield float(do)
                else:
                    return run.succeed(do)
        except Exception as error:
            run.fail(error)
            raise

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
        loop = self.drive(clock=clock, wall_clock=wall_clock, rng=rng, on_attempt=on_attempt)
        request = next(loop)
        while True:
            try:
                if request == ATTEMPT:
                    try:
                        value = fn()
                    except Exception as error:
                        request = loop.throw(error)
                    else:
                        request = loop.send(value)
                else:
                    sleep(float(request))
                    request = loop.send(None)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

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
        loop = self.drive(clock=clock, wall_clock=wall_clock, rng=rng, on_attempt=on_attempt)
        request = next(loop)
        while True:
            try:
                if request == ATTEMPT:
                    try:
                        value = await fn()
                    except Exception as error:
                        request = loop.throw(error)
                    else:
                        request = loop.send(value)
                else:
                    await sleep(float(request))
                    request = loop.send(None)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]


class _Run:
    """The mutable state of one retry loop: tenacity's hooks read and write it in turn.

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

    @property
    def started_at(self) -> float:
        """When the current attempt began."""
        return self._started_at

    @started_at.setter
    def started_at(self, value: float) -> None:
        self._started_at = value

    def record_success(self, result: object, *, number: int, started_at: float) -> None:
        """Hold the record of a successful attempt made outside tenacity's loop."""
        facts = _success_facts(result)
        self._pending = AttemptRecord(number, facts.status, None, facts.request_id, 0.0, started_at)

    def _should_retry(self, state: tenacity.RetryCallState) -> bool:
        outcome = state.outcome
        assert outcome is not None  # tenacity asks only after an attempt
        number = state.attempt_number
        if not outcome.failed:
            self.record_success(outcome.result(), number=number, started_at=self._started_at)
            return False
        error = self._last_error = outcome.exception()
        if not isinstance(error, Exception):  # cancelled or interrupted: not an API outcome
            return False
        facts = sdk.facts_of(error, now=self._wall_clock())
        self._decision = self._policy.decide(facts)
        _warn_if_the_sdk_retried(error)
        self._pending = AttemptRecord(
            number, facts.status, facts.error_type, facts.request_id, 0.0, self._started_at
        )
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
        record = self._pending
        if record.wait != wait:  # (evolve is slow; most attempts are followed by no wait)
            record = attrs.evolve(record, wait=float(wait))
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


def _success_facts(result: object) -> sdk.AttemptFacts:
    """A success's status and request id: from an :class:`convo.sdk.Outcome`'s facts, a
    parsed Message (``_request_id``), or a raw response or stream (its httpx response)."""
    if isinstance(result, sdk.Outcome):
        return result.facts
    response = getattr(result, "http_response", None) or getattr(result, "response", None)
    status = getattr(response, "status_code", None)
    request_id = getattr(result, "_request_id", None) or getattr(result, "request_id", None)
    if request_id is None and response is not None:
        headers = getattr(response, "headers", None)
        request_id = headers.get("request-id") if isinstance(headers, Mapping) else None
    return sdk.AttemptFacts(
        status=status if isinstance(status, int) else 200,
        request_id=request_id if isinstance(request_id, str) else None,
    )

"""RetryPolicy: pure decisions (classify, backoff, retry-after), the loop, and the real SDK."""

from __future__ import annotations

import email.utils
from typing import Any

import anthropic
import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convo.emulator import RunningEmulator
from convo.errors import RetriesExhausted, SpendCapReached
from convo.retry import AttemptRecord, RetryPolicy, StackedRetriesWarning, parse_retry_after

MODEL = "claude-sonnet-4-6"
HI: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hi"}]
NOW = 1_800_000_000.0  # a fixed wall-clock epoch for HTTP-date arithmetic


class VirtualTime:
    """A monotonic clock that stands still until `sleep` moves it; every wait is recorded."""

    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture
def vt() -> VirtualTime:
    """A fresh virtual clock and sleep recorder."""
    return VirtualTime()


def status_error(
    status: int,
    *,
    headers: dict[str, str] | None = None,
    error_type: str = "api_error",
    details: dict[str, Any] | None = None,
    cls: type[anthropic.APIStatusError] = anthropic.APIStatusError,
) -> anthropic.APIStatusError:
    """An SDK status error as the SDK builds it, without a network."""
    error: dict[str, Any] = {"type": error_type, "message": "scripted"}
    if details is not None:
        error["details"] = details
    body = {"type": "error", "error": error, "request_id": "req_test"}
    request = httpx2.Request("POST", "https://api.anthropic.com/v1/messages")
    response = httpx2.Response(
        status, headers={"request-id": "req_test", **(headers or {})}, json=body, request=request
    )
    return cls(f"Error code: {status}", response=response, body=body)


def connection_error(timeout: bool = False) -> anthropic.APIConnectionError:
    """A connection error (or timeout) as the SDK raises it."""
    request = httpx2.Request("POST", "https://api.anthropic.com/v1/messages")
    if timeout:
        return anthropic.APITimeoutError(request)
    return anthropic.APIConnectionError(request=request)


def failing(*errors: BaseException, result: str = "ok") -> Any:
    """A callable that raises each error in turn, then returns `result`."""
    pending = list(errors)

    def attempt() -> str:
        if pending:
            raise pending.pop(0)
        return result

    return attempt


def ask(client: anthropic.Anthropic, **extra: Any) -> Any:
    """One small Messages request."""
    return client.messages.create(model=MODEL, max_tokens=16, messages=HI, **extra)


def total_requests(emulator: RunningEmulator) -> int:
    """How many /v1/messages requests the emulator has seen since its reset."""
    return int(emulator.stats()["requests"]["total"])


class TestParseRetryAfter:
    """Reading the server's hinted wait from headers."""

    def test_ms_takes_precedence(self) -> None:
        """retry-after-ms wins over retry-after when both are present."""
        assert parse_retry_after({"retry-after-ms": "1200", "retry-after": "2"}, now=NOW) == 1.2

    def test_seconds_may_be_a_float(self) -> None:
        """retry-after as a number of seconds may carry a fraction."""
        assert parse_retry_after({"retry-after": "1.5"}, now=NOW) == 1.5

    def test_http_date_is_relative_to_now(self) -> None:
        """retry-after as an HTTP date is the time from `now` to that date."""
        date = email.utils.formatdate(NOW + 30, usegmt=True)
        assert parse_retry_after({"retry-after": date}, now=NOW) == 30.0

    def test_past_http_date_is_zero(self) -> None:
        """A date already past means no wait, never a negative one."""
        date = email.utils.formatdate(NOW - 30, usegmt=True)
        assert parse_retry_after({"retry-after": date}, now=NOW) == 0.0

    def test_no_cap_on_long_waits(self) -> None:
        """Long hints are returned whole; capping is the policy's business."""
        assert parse_retry_after({"retry-after": "3600"}, now=NOW) == 3600.0

    def test_header_names_ignore_case(self) -> None:
        """Header names are matched regardless of case, as HTTP requires."""
        assert parse_retry_after({"Retry-After-Ms": "250"}, now=NOW) == 0.25

    def test_bad_ms_falls_back_to_seconds(self) -> None:
        """An unusable retry-after-ms gives way to retry-after."""
        assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "3"}, now=NOW) == 3.0

    @pytest.mark.parametrize(
        "headers",
        [{}, {"retry-after": "soon"}, {"retry-after": "-5"}, {"retry-after-ms": "nan"}],
        ids=["none", "garbage", "negative", "nan-ms"],
    )
    def test_unusable_values_are_none(self, headers: dict[str, str]) -> None:
        """Missing, unparsable or negative values mean no hint."""
        assert parse_retry_after(headers, now=NOW) is None


class TestClassify:
    """The pure verdict on one failure."""

    @pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
    def test_retryable_statuses(self, status: int) -> None:
        """The listed transient statuses are retried."""
        assert RetryPolicy().classify(status_error(status), now=NOW).retry

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
    def test_other_statuses_are_not_retried(self, status: int) -> None:
        """Client errors are final, with a reason naming the status."""
        decision = RetryPolicy().classify(status_error(status), now=NOW)
        assert (decision.retry, decision.reason) == (False, f"{status} is not retryable")

    def test_hint_is_carried(self) -> None:
        """The decision carries the server's hinted wait."""
        error = status_error(429, headers={"retry-after": "2"}, error_type="rate_limit_error")
        assert RetryPolicy().classify(error, now=NOW).wait == 2.0

    def test_should_retry_false_overrides_a_retryable_status(self) -> None:
        """x-should-retry: false on a 500 is not retried."""
        error = status_error(500, headers={"x-should-retry": "false"})
        assert not RetryPolicy().classify(error, now=NOW).retry

    def test_should_retry_true_overrides_a_final_status(self) -> None:
        """x-should-retry: true on a 400 is retried."""
        error = status_error(400, headers={"x-should-retry": "true"})
        assert RetryPolicy().classify(error, now=NOW).retry

    def test_spend_cap_is_final(self) -> None:
        """A 429 without retry-after and the spend-limit code is the spend cap: not retried."""
        error = status_error(429, details={"error_code": "enforced_spend_limit_reached"})
        decision = RetryPolicy().classify(error, now=NOW)
        assert (decision.retry, decision.spend_cap) == (False, True)

    def test_spend_cap_ignores_should_retry_true(self) -> None:
        """x-should-retry: true cannot make the spend cap worth retrying."""
        error = status_error(
            429,
            headers={"x-should-retry": "true"},
            details={"error_code": "enforced_spend_limit_reached"},
        )
        assert not RetryPolicy().classify(error, now=NOW).retry

    def test_spend_code_with_retry_after_is_an_ordinary_429(self) -> None:
        """With a retry-after the 429 is a rate limit, retried after the hinted wait."""
        error = status_error(
            429,
            headers={"retry-after": "4"},
            details={"error_code": "enforced_spend_limit_reached"},
        )
        decision = RetryPolicy().classify(error, now=NOW)
        assert (decision.retry, decision.wait, decision.spend_cap) == (True, 4.0, False)

    @pytest.mark.parametrize("timeout", [False, True], ids=["connection", "timeout"])
    def test_connection_errors_follow_the_policy(self, timeout: bool) -> None:
        """Connection errors and timeouts are retried unless the policy turns that off."""
        error = connection_error(timeout)
        assert RetryPolicy().classify(error).retry
        assert not RetryPolicy(retry_connection_errors=False).classify(error).retry

    def test_non_api_errors_are_not_retried(self) -> None:
        """A bug in the caller's code (a ValueError) is never retried."""
        assert not RetryPolicy().classify(ValueError("bug")).retry

    def test_error_event_in_a_stream_is_judged_by_its_type(self) -> None:
        """An overloaded_error event inside a 200 stream is retried like a 529."""
        decision = RetryPolicy().classify(status_error(200, error_type="overloaded_error"))
        assert (decision.retry, decision.reason) == (True, "529 overloaded_error")


class TestBackoff:
    """Exponential backoff with full jitter."""

    @given(
        attempt=st.integers(min_value=1, max_value=5000),
        base=st.floats(min_value=0, max_value=100),
        cap=st.floats(min_value=0, max_value=1000),
        draw=st.floats(min_value=0, max_value=1, exclude_max=True),
    )
    def test_always_within_the_ceiling(
        self, attempt: int, base: float, cap: float, draw: float
    ) -> None:
        """Backoff lies in [0, min(cap, base·2^(n-1))] for any attempt and jitter draw."""
        policy = RetryPolicy(backoff_base=base, backoff_cap=cap)
        wait = policy.backoff(attempt, rng=lambda: draw)
        assert 0 <= wait <= min(cap, base * 2.0 ** min(attempt - 1, 1000))

    def test_ceiling_doubles_then_caps(self) -> None:
        """With the top jitter draw the ceiling is 0.5, 1, 2, 4, 8, 8 seconds."""
        policy = RetryPolicy()
        assert [policy.backoff(n, rng=lambda: 1.0) for n in range(1, 7)] == [0.5, 1, 2, 4, 8, 8]

    @pytest.mark.parametrize("attempt", [0, -1])
    def test_attempts_are_one_based(self, attempt: int) -> None:
        """Attempt numbers below 1 are misuse."""
        with pytest.raises(ValueError, match="1-based"):
            RetryPolicy().backoff(attempt)


class TestPolicyOptions:
    """Validation of the policy's options."""

    @pytest.mark.parametrize(
        "options",
        [{"max_attempts": 0}, {"deadline": -1.0}, {"max_wait": -1.0}, {"retry_statuses": [99]}],
        ids=["no-attempts", "negative-deadline", "negative-wait", "bad-status"],
    )
    def test_impossible_values_raise_value_error(self, options: dict[str, Any]) -> None:
        """Impossible options are refused at construction."""
        with pytest.raises(ValueError, match=r"RetryPolicy|retry_statuses"):
            RetryPolicy(**options)

    def test_wrong_type_raises_type_error(self) -> None:
        """A string where a number belongs is a TypeError."""
        with pytest.raises(TypeError, match="max_attempts"):
            RetryPolicy(max_attempts="4")  # type: ignore[arg-type]

    def test_statuses_become_a_frozenset(self) -> None:
        """Any iterable of statuses is accepted and frozen."""
        assert RetryPolicy(retry_statuses=[529]).retry_statuses == frozenset({529})


class TestCallLoop:
    """The loop's waits, stops and records, on a virtual clock with scripted failures."""

    def test_backoff_waits_are_recorded(self, vt: VirtualTime) -> None:
        """Without hints each wait is the backoff, and each record carries its own wait."""
        fn = failing(status_error(529), status_error(529))
        result, records = RetryPolicy().call(fn, sleep=vt.sleep, clock=vt.clock, rng=lambda: 1.0)
        assert (result, vt.waits, [r.wait for r in records]) == ("ok", [0.5, 1.0], [0.5, 1.0, 0.0])

    def test_started_at_is_on_the_injected_clock(self, vt: VirtualTime) -> None:
        """Each attempt's start is read from the injected clock."""
        _, records = RetryPolicy().call(
            failing(status_error(503)), sleep=vt.sleep, clock=vt.clock, rng=lambda: 1.0
        )
        assert [r.started_at for r in records] == [100.0, 100.5]

    def test_zero_hint_backs_off(self, vt: VirtualTime) -> None:
        """A zero retry-after (clock skew, usually) gets the backoff, not a hot retry."""
        fn = failing(status_error(429, headers={"retry-after": "0"}))
        RetryPolicy().call(fn, sleep=vt.sleep, clock=vt.clock, rng=lambda: 1.0)
        assert vt.waits == [0.5]

    def test_hint_above_max_wait_stops(self, vt: VirtualTime) -> None:
        """A hint longer than max_wait ends the retrying at once; nothing is waited."""
        fn = failing(status_error(429, headers={"retry-after": "90"}))
        with pytest.raises(RetriesExhausted, match="above max_wait 60 s") as caught:
            RetryPolicy().call(fn, sleep=vt.sleep, clock=vt.clock)
        assert (vt.waits, len(caught.value.attempts)) == ([], 1)

    def test_deadline_stops_before_a_wait_would_pass_it(self, vt: VirtualTime) -> None:
        """A wait that would reach the deadline is not taken."""
        fn = failing(*[status_error(429, headers={"retry-after": "4"})] * 5)
        with pytest.raises(RetriesExhausted, match="10 s deadline"):
            RetryPolicy(max_attempts=10, deadline=10.0).call(fn, sleep=vt.sleep, clock=vt.clock)
        assert vt.waits == [4.0, 4.0]

    def test_final_error_is_reraised_unchanged(self, vt: VirtualTime) -> None:
        """A non-retryable error is the caller's own exception object, after on_attempt."""
        error = status_error(400, error_type="invalid_request_error", cls=anthropic.BadRequestError)
        seen: list[AttemptRecord] = []
        with pytest.raises(anthropic.BadRequestError) as caught:
            RetryPolicy().call(failing(error), sleep=vt.sleep, on_attempt=seen.append)
        assert (caught.value, [r.status for r in seen]) == (error, [400])

    def test_on_attempt_sees_each_record_once(self, vt: VirtualTime) -> None:
        """on_attempt receives exactly the records returned, in order."""
        seen: list[AttemptRecord] = []
        _, records = RetryPolicy().call(
            failing(connection_error(), status_error(502)),
            sleep=vt.sleep,
            clock=vt.clock,
            on_attempt=seen.append,
        )
        assert tuple(seen) == records

    def test_errors_from_on_attempt_pass_through(self, vt: VirtualTime) -> None:
        """An on_attempt failure surfaces as itself, not as RetriesExhausted."""

        def broken(record: AttemptRecord) -> None:
            raise RuntimeError("ledger down")

        with pytest.raises(RuntimeError, match="ledger down"):
            RetryPolicy().call(failing(status_error(529)), sleep=vt.sleep, on_attempt=broken)

    def test_interrupts_propagate_without_a_record(self, vt: VirtualTime) -> None:
        """KeyboardInterrupt is neither retried nor recorded as an API outcome."""
        seen: list[AttemptRecord] = []
        with pytest.raises(KeyboardInterrupt):
            RetryPolicy().call(failing(KeyboardInterrupt()), sleep=vt.sleep, on_attempt=seen.append)
        assert seen == []


class TestThroughTheSDK:
    """The real SDK (max_retries=0) against the emulator's scripted faults."""

    def test_429_waits_retry_after_ms_then_succeeds(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, vt: VirtualTime
    ) -> None:
        """retry-after-ms: 1200 (beside retry-after: 2) is waited exactly 1.2 s, then success."""
        script = [{"kind": "rate_limit", "retry_after_ms": 1200, "retry_after": 2}]
        emulator.configure({"faults": {"script": script}})
        message, records = RetryPolicy().call(lambda: ask(client), sleep=vt.sleep, clock=vt.clock)
        assert message.type == "message"
        assert vt.waits == [1.2]
        assert [(r.status, r.wait) for r in records] == [(429, 1.2), (200, 0.0)]

    def test_529_three_times_then_success(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, vt: VirtualTime
    ) -> None:
        """Three 529s then a success within max_attempts=4; the emulator saw 4 requests."""
        emulator.configure({"faults": {"script": ["overloaded"] * 3}})
        _, records = RetryPolicy(max_attempts=4).call(lambda: ask(client), sleep=vt.sleep)
        assert [r.status for r in records] == [529, 529, 529, 200]
        assert total_requests(emulator) == 4

    def test_attempts_equal_requests_seen(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, vt: VirtualTime
    ) -> None:
        """Every attempt is one request at the server, so the SDK's own retries are off."""
        script = ["overloaded", "api_error", "drop", {"kind": "rate_limit", "retry_after": 1}]
        emulator.configure({"faults": {"script": script}})
        _, records = RetryPolicy(max_attempts=5).call(lambda: ask(client), sleep=vt.sleep)
        assert total_requests(emulator) == len(records) == 5
        assert [r.status for r in records] == [529, 500, None, 429, 200]

    def test_request_ids_are_the_servers(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, vt: VirtualTime
    ) -> None:
        """Failed and successful attempts carry the request-id the server sent."""
        emulator.configure({"faults": {"script": ["overloaded"]}})
        message, records = RetryPolicy().call(lambda: ask(client), sleep=vt.sleep)
        assert records[1].request_id == message._request_id
        assert records[0].request_id not in (None, records[1].request_id)

    def test_exhaustion_carries_every_attempt(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, vt: VirtualTime
    ) -> None:
        """529 × 5 with max_attempts=3 raises RetriesExhausted with 3 records, from the last 529."""
        emulator.configure({"faults": {"script": ["overloaded"] * 5}})
        with pytest.raises(RetriesExhausted, match="3 attempts failed: 529, 529, 529") as caught:
            RetryPolicy(max_attempts=3).call(lambda: ask(client), sleep=vt.sleep)
        attempts: tuple[AttemptRecord, ...] = caught.value.attempts
        assert [r.status for r in attempts] == [529, 529, 529]
        assert len({r.request_id for r in attempts if r.request_id}) == 3
        assert [r.error_type for r in attempts] == ["overloaded_error"] * 3
        assert attempts[-1].wait == 0.0
        assert isinstance(caught.value.__cause__, anthropic.OverloadedError)
        assert caught.value.last_error is caught.value.__cause__
        assert total_requests(emulator) == 3

    def test_spend_cap_fails_at_once(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, vt: VirtualTime
    ) -> None:
        """The spend-cap 429 raises SpendCapReached after exactly one request."""
        emulator.configure({"faults": {"script": ["spend_cap"]}})
        with pytest.raises(SpendCapReached, match="spend cap") as caught:
            RetryPolicy().call(lambda: ask(client), sleep=vt.sleep)
        assert total_requests(emulator) == 1
        assert vt.waits == []
        assert isinstance(caught.value.__cause__, anthropic.RateLimitError)
        assert caught.value.request_id == caught.value.__cause__.request_id
        assert len(caught.value.attempts) == 1

    def test_dropped_connection_is_retried(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, vt: VirtualTime
    ) -> None:
        """A dropped connection is recorded with no status and retried."""
        emulator.configure({"faults": {"script": ["drop"]}})
        _, records = RetryPolicy().call(lambda: ask(client), sleep=vt.sleep)
        assert [(r.status, r.error_type) for r in records] == [
            (None, "APIConnectionError"),
            (200, None),
        ]

    def test_400_is_not_retried(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, vt: VirtualTime
    ) -> None:
        """A 400 (five breakpoints) is raised as the SDK's BadRequestError after one request."""
        ephemeral = {"type": "ephemeral"}
        system = [
            {"type": "text", "text": f"part {i}", "cache_control": ephemeral} for i in range(5)
        ]
        with pytest.raises(anthropic.BadRequestError, match="maximum of 4 blocks"):
            RetryPolicy().call(lambda: ask(client, system=system), sleep=vt.sleep)
        assert total_requests(emulator) == 1

    def test_should_retry_false_on_500_is_not_retried(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, vt: VirtualTime
    ) -> None:
        """x-should-retry: false makes a 500 final: the SDK's error, one request."""
        emulator.configure({"faults": {"script": [{"kind": "api_error", "should_retry": False}]}})
        with pytest.raises(anthropic.InternalServerError):
            RetryPolicy().call(lambda: ask(client), sleep=vt.sleep)
        assert total_requests(emulator) == 1

    def test_http_date_retry_after_is_honoured(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, vt: VirtualTime
    ) -> None:
        """retry-after as an HTTP date 3 s ahead is waited about 3 s (dates have whole seconds)."""
        script = [{"kind": "rate_limit", "retry_after": 3, "retry_after_http_date": True}]
        emulator.configure({"faults": {"script": script}})
        RetryPolicy().call(lambda: ask(client), sleep=vt.sleep)
        assert len(vt.waits) == 1
        assert 1.5 < vt.waits[0] <= 3.0

    async def test_async_429_waits_retry_after_ms_then_succeeds(
        self,
        emulator: RunningEmulator,
        async_client: anthropic.AsyncAnthropic,
        vt: VirtualTime,
    ) -> None:
        """The async loop waits retry-after-ms: 1200 exactly, then succeeds; two requests."""
        script = [{"kind": "rate_limit", "retry_after_ms": 1200, "retry_after": 2}]
        emulator.configure({"faults": {"script": script}})
        message, records = await RetryPolicy().call_async(
            lambda: async_client.messages.create(model=MODEL, max_tokens=16, messages=HI),
            sleep=vt.async_sleep,
            clock=vt.clock,
        )
        assert message.type == "message"
        assert vt.waits == [1.2]
        assert [r.status for r in records] == [429, 200]
        assert total_requests(emulator) == 2


class TestStackedRetries:
    """Two retry loops multiply requests; convo says so instead of undercounting silently."""

    def test_a_client_that_retries_itself_is_warned_about(self, emulator: RunningEmulator) -> None:
        """A client with max_retries=2 under a RetryPolicy draws a StackedRetriesWarning."""
        fast = {"kind": "overloaded", "retry_after_ms": 1}  # so the SDK's own waits are short
        emulator.configure({"faults": {"script": [fast] * 9}})
        with anthropic.Anthropic(
            base_url=emulator.base_url, api_key="sk-test", max_retries=2
        ) as eager:
            ask: Any = {
                "model": "claude-sonnet-4-6",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}],
            }
            with (
                pytest.warns(StackedRetriesWarning, match="max_retries=0"),
                pytest.raises(RetriesExhausted),
            ):
                RetryPolicy(max_attempts=3).call(
                    lambda: eager.with_options(max_retries=2).messages.create(**ask),
                    sleep=lambda s: None,
                )
        assert emulator.stats()["requests"]["total"] == 9

"""The SDK boundary: every SDK exception is mapped, and its facts are read in one place."""

from __future__ import annotations

import inspect

import anthropic
import httpx2
import pytest

from convo import sdk


def _sdk_exception_classes() -> list[type[BaseException]]:
    return [
        klass
        for _, klass in inspect.getmembers(anthropic, inspect.isclass)
        if issubclass(klass, BaseException) and klass.__module__.startswith("anthropic")
    ]


class TestMapping:
    """Every exception class the SDK exports has a category (a new one fails here)."""

    def test_every_exported_exception_class_is_named(self) -> None:
        """A class the SDK adds must be read deliberately, not by accident of inheritance."""
        missing = [k.__name__ for k in _sdk_exception_classes() if k.__name__ not in sdk.CATEGORY]
        assert missing == [], f"map these SDK exceptions in convo.sdk.CATEGORY: {missing}"

    def test_http_errors_are_status_and_no_response_is_connection(self) -> None:
        """Status errors carry a response; connection errors and timeouts do not."""
        request = httpx2.Request("POST", "http://x/v1/messages")
        assert sdk.category_of(anthropic.APIConnectionError(request=request)) == "connection"
        assert sdk.category_of(anthropic.APITimeoutError(request=request)) == "timeout"
        assert sdk.category_of(httpx2.ReadError("gone")) == "transport"

    def test_a_bug_is_not_an_attempt_outcome(self) -> None:
        """Anything the SDK did not raise (a bug, a cancellation) is not read as a failure."""
        assert sdk.category_of(KeyError("x")) is None


def _status_error(
    status: int, body: dict[str, object], headers: dict[str, str] | None = None
) -> anthropic.APIStatusError:
    request = httpx2.Request("POST", "http://x/v1/messages")
    response = httpx2.Response(
        status, headers={"request-id": "req_1", **(headers or {})}, request=request
    )
    return anthropic.APIStatusError("failed", response=response, body=body)


class TestFacts:
    """An attempt's facts: status, type, request id, the server's hint, the spend cap."""

    def test_a_529_with_retry_after(self) -> None:
        """The status, the error type, the request id and the hinted wait are read."""
        error = _status_error(529, {"error": {"type": "overloaded_error"}}, {"retry-after": "2"})
        facts = sdk.facts_of(error, now=0.0)
        assert (facts.status, facts.error_type, facts.request_id, facts.retry_after) == (
            529,
            "overloaded_error",
            "req_1",
            2.0,
        )
        assert not facts.spend_cap

    def test_the_spend_cap_is_a_429_without_retry_after(self) -> None:
        """The documented spend-cap shape is recognised, and only it."""
        body = {
            "error": {
                "type": "rate_limit_error",
                "details": {"error_code": "enforced_spend_limit_reached"},
            }
        }
        assert sdk.facts_of(_status_error(429, body), now=0.0).spend_cap
        assert not sdk.facts_of(_status_error(429, body, {"retry-after": "1"}), now=0.0).spend_cap

    def test_an_error_event_in_a_200_stream_stands_for_its_status(self) -> None:
        """An ``error`` event arrives inside a 200 stream; its type gives its status."""
        facts = sdk.facts_of(_status_error(200, {"error": {"type": "overloaded_error"}}), now=0.0)
        assert facts.status == 529

    def test_an_http_date_retry_after_is_read_against_the_injected_clock(self) -> None:
        """A date hint is relative to the clock passed in, not the machine's."""
        error = _status_error(429, {}, {"retry-after": "Thu, 01 Jan 1970 00:01:00 GMT"})
        assert sdk.facts_of(error, now=30.0).retry_after == pytest.approx(30.0)

"""The SDK boundary: every SDK exception is mapped, and its facts are read in one place."""

from __future__ import annotations

import gc
import inspect
import warnings
from typing import Any

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

    def test_headers_are_kept_as_a_lookup_reads_them(self) -> None:
        """An attempt keeps the response's headers as a dict equal to ``dict(headers)``:
        names lowercased, a repeated name's values joined with ", ", in the reply's order."""
        headers = httpx2.Headers(
            [("Retry-After", "2"), ("X-Note", "a"), ("request-id", "req_1"), ("x-note", "b")]
        )
        request = httpx2.Request("POST", "http://x/v1/messages")
        response = httpx2.Response(529, headers=headers, request=request)
        body = {"error": {"type": "overloaded_error"}}
        error = anthropic.APIStatusError("failed", response=response, body=body)
        expected = dict(headers)
        assert expected == {"retry-after": "2", "x-note": "a, b", "request-id": "req_1"}
        assert sdk.facts_of(error, now=0.0).headers == expected
        success = sdk._success(None, sdk._plain(headers)).facts
        assert list(success.headers.items()) == list(expected.items())
        assert success.request_id == "req_1"

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


_USAGE = {
    "input_tokens": 3,
    "cache_creation_input_tokens": 120,
    "cache_read_input_tokens": 4000,
    "output_tokens": 9,
    "cache_creation": {"ephemeral_5m_input_tokens": 120, "ephemeral_1h_input_tokens": 0},
    "service_tier": "standard",
}
_REPLIES = {
    "text": [{"type": "text", "text": "Hello."}],
    "citations": [
        {
            "type": "text",
            "text": "Quoted.",
            "citations": [
                {
                    "type": "char_location",
                    "cited_text": "Quoted",
                    "document_index": 0,
                    "document_title": None,
                    "start_char_index": 0,
                    "end_char_index": 6,
                }
            ],
        }
    ],
    "tool_use": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": [1, 2.5, None]}},
    ],
    "thinking": [
        {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "Done."},
    ],
    "unknown_block": [{"type": "a_block_from_the_future", "payload": {"x": 1}}],
    "unknown_field": [{"type": "text", "text": "Hi.", "new_field": [1, "two"]}],
    "empty": [],
}


def _reply(content: list[dict[str, object]], **fields: object) -> dict[str, object]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _USAGE,
        **fields,
    }


_BODIES = {
    **{name: _reply(content) for name, content in _REPLIES.items()},
    "unknown_stop_reason": _reply(_REPLIES["text"], stop_reason="a_new_reason"),
    "extra_top_level": _reply(_REPLIES["text"], container=None, something_new={"a": 1}),
    "string_for_int": _reply(_REPLIES["text"], usage={**_USAGE, "output_tokens": "9"}),
}


def _shape(value: object) -> object:
    """What a caller sees of a parsed response: classes, values, unknown fields, which known
    fields were set (of unknown ones, the SDK's construct names some and not others), and
    the dump that is echoed back in the history."""
    if isinstance(value, anthropic.BaseModel):
        fields = {k: _shape(v) for k, v in value.__dict__.items()}
        extra = {k: _shape(v) for k, v in (value.__pydantic_extra__ or {}).items()}
        known = sorted(value.model_fields_set & set(type(value).model_fields))
        with warnings.catch_warnings():
            # The SDK's lenient parse holds values its types do not admit; pydantic warns.
            warnings.simplefilter("ignore")
            dump = value.model_dump(mode="json", exclude_unset=True)
        return (type(value), fields, extra, known, dump)
    if isinstance(value, list):
        return [_shape(v) for v in value]
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    return (type(value), value)


def _answering(body: dict[str, object], *, strict: bool = False) -> anthropic.Anthropic:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200,
            json=body,
            headers={
                "request-id": "req_parse",
                "anthropic-workspace-id": "wrk_parse",
                "content-type": "application/json",
            },
        )

    return anthropic.Anthropic(
        api_key="sk-test",
        base_url="http://parse.invalid",
        max_retries=0,
        http_client=anthropic.DefaultHttpxClient(transport=httpx2.MockTransport(handler)),
        _strict_response_validation=strict,
    )


class TestParse:
    """A reply sent as convo's bytes is parsed into what the SDK's own parse gives."""

    @pytest.mark.parametrize("kind", sorted(_BODIES))
    def test_same_message_as_the_sdk(self, kind: str) -> None:
        """Same classes, fields, unknown fields, fields set, request and workspace ids, for
        every kind of reply, including ones only the SDK's lenient parse accepts."""
        from convo import wire

        client = _answering(_BODIES[kind])
        body = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        request = wire.Request({**body, "model": "claude-sonnet-4-6"})
        outcome = sdk.send(client, request, now=0.0)
        assert outcome.ok, outcome.error
        expected = client.messages.create(model="claude-sonnet-4-6", **body)  # type: ignore[call-overload]
        assert _shape(outcome.value) == _shape(expected)
        assert outcome.value._request_id == expected._request_id == "req_parse"
        assert outcome.value._workspace_id == expected._workspace_id == "wrk_parse"
        assert outcome.facts.request_id == "req_parse"

    async def test_async_same_message_as_the_sdk(self) -> None:
        """The async path parses the same way."""
        from convo import wire

        body = _BODIES["tool_use"]

        async def handler(request: httpx2.Request) -> httpx2.Response:
            return httpx2.Response(
                200,
                json=body,
                headers={"request-id": "req_parse", "anthropic-workspace-id": "wrk_parse"},
            )

        client = anthropic.AsyncAnthropic(
            api_key="sk-test",
            base_url="http://parse.invalid",
            max_retries=0,
            http_client=anthropic.DefaultAsyncHttpxClient(transport=httpx2.MockTransport(handler)),
        )
        request = wire.Request(
            {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "model": "m"}
        )
        outcome = await sdk.send_async(client, request, now=0.0)
        expected = _answering(body).messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        assert _shape(outcome.value) == _shape(expected)
        await client.close()

    def test_strict_client_keeps_the_sdk_parse(self) -> None:
        """A client built with strict response validation gets the SDK's own check."""
        from convo import wire

        client = _answering(_BODIES["unknown_block"], strict=True)
        request = wire.Request(
            {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "model": "m"}
        )
        outcome = sdk.send(client, request, now=0.0)
        assert isinstance(outcome.error, anthropic.APIResponseValidationError)


class TestIdempotencyKey:
    """The SDK's idempotency key: made only where its client would send it."""

    @staticmethod
    def _seen(client_class: type[anthropic.Anthropic]) -> list[httpx2.Headers]:
        from convo import wire

        seen: list[httpx2.Headers] = []

        def handler(request: httpx2.Request) -> httpx2.Response:
            seen.append(request.headers)
            return httpx2.Response(200, json=_BODIES["text"], headers={"request-id": "req_1"})

        client = client_class(
            api_key="sk-test",
            base_url="http://keys.invalid",
            max_retries=0,
            http_client=anthropic.DefaultHttpxClient(transport=httpx2.MockTransport(handler)),
        )
        body = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "model": "m"}
        for _ in range(2):
            assert sdk.send(client, wire.Request(body), now=0.0).ok
        client.messages.with_raw_response.create(**body)  # type: ignore[arg-type]
        return seen

    def test_a_client_that_sends_no_key_gets_the_same_headers_as_from_the_sdk(self) -> None:
        """The Messages API client names no idempotency header: convo's requests carry the
        same header names as the SDK's own raw-response call (none of them a key)."""
        first, second, sdk_own = self._seen(anthropic.Anthropic)
        assert set(first) == set(second) == set(sdk_own)
        assert not [name for name in first if "idempotency" in name.lower()]

    def test_a_client_that_names_a_header_gets_a_fresh_key_per_request(self) -> None:
        """A client subclass that sends a key gets the SDK's own, a new one each request."""

        class Keyed(anthropic.Anthropic):
            def __init__(self, **options: object) -> None:
                super().__init__(**options)  # type: ignore[arg-type]
                self._idempotency_header = "Idempotency-Key"

        first, second, sdk_own = self._seen(Keyed)
        keys = [h["Idempotency-Key"] for h in (first, second, sdk_own)]
        assert len(set(keys)) == 3
        assert all(k.startswith("stainless-python-retry-") for k in keys)


class TestRequestUrl:
    """convo posts to the URL the SDK would, joined to the base URL once per client."""

    @staticmethod
    def _urls(client_class: type[anthropic.Anthropic], base_url: str) -> list[str]:
        from convo import wire

        seen: list[str] = []

        def handler(request: httpx2.Request) -> httpx2.Response:
            seen.append(str(request.url))
            return httpx2.Response(200, json=_BODIES["text"], headers={"request-id": "req_1"})

        client = client_class(
            api_key="sk-test",
            base_url=base_url,
            max_retries=0,
            http_client=anthropic.DefaultHttpxClient(transport=httpx2.MockTransport(handler)),
        )
        body = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "model": "m"}
        client.messages.create(**body)  # type: ignore[arg-type]
        for _ in range(2):
            assert sdk.send(client, wire.Request(body), now=0.0).ok
        with client.messages.stream(**body) as stream:  # type: ignore[arg-type]
            stream.until_done()
        opened = sdk.open_stream(client, wire.Request(body), now=0.0, requested_ttl="5m")
        assert opened.ok, opened.error
        opened.value.manager.__exit__(None, None, None)
        client.base_url = str(client.base_url).rstrip("/") + "/moved/"  # a new base URL
        assert sdk.send(client, wire.Request(body), now=0.0).ok
        client.messages.create(**body)  # type: ignore[arg-type]
        return seen

    @pytest.mark.parametrize(
        "base_url",
        [
            "http://api.invalid",
            "http://proxy.invalid/anthropic/v2",
            "http://[::1]:8080",
            "https://user:secret@gateway.invalid:8443/a%20b/",
        ],
    )
    def test_same_url_as_the_sdk_for_every_base_url(self, base_url: str) -> None:
        """Plain and streamed, before and after the base URL changes."""
        sdk_plain, ours, again, sdk_stream, our_stream, moved, sdk_moved = self._urls(
            anthropic.Anthropic, base_url
        )
        assert ours == again == sdk_plain == sdk_stream == our_stream
        assert moved == sdk_moved != sdk_plain

    def test_joined_once_per_client_however_many_live(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each session's copy of the client has its own base URL object: with hundreds of
        sessions alive, each is joined once, and forgotten when its copy goes."""
        from anthropic._base_client import BaseClient

        joins: list[str] = []
        prepare = BaseClient._prepare_url

        def counting(self: BaseClient[Any, Any], url: str) -> httpx2.URL:
            joins.append(url)
            return prepare(self, url)

        monkeypatch.setattr(BaseClient, "_prepare_url", counting)
        gc.collect()  # earlier tests' clients: gone before counting what is kept
        before = len(sdk._PATHS)
        client = anthropic.Anthropic(api_key="sk-test", base_url="http://api.invalid")
        copies = [client.with_options(max_retries=0) for _ in range(300)]
        assert len({id(c.base_url) for c in copies}) == 300
        first = [sdk._messages_path(c) for c in copies]
        joined = len(joins)
        assert [sdk._messages_path(c) for c in copies] == first
        assert set(first) == {"http://api.invalid/v1/messages"}
        assert len(joins) == joined == 600  # the join and its check, once per copy
        del copies
        gc.collect()
        assert len(sdk._PATHS) == before

    def test_a_base_url_without_weak_references_is_joined_each_time(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Where the base URL cannot be referenced weakly, nothing is kept and the URL is
        still the SDK's."""

        def refuse(obj: Any, callback: Any = None) -> Any:
            raise TypeError(f"cannot create weak reference to {type(obj).__name__!r} object")

        monkeypatch.setattr(sdk.weakref, "ref", refuse)
        client = anthropic.Anthropic(api_key="sk-test", base_url="http://api.invalid")
        before = dict(sdk._PATHS)
        assert sdk._messages_path(client) == "http://api.invalid/v1/messages"
        assert sdk._messages_path(client) == "http://api.invalid/v1/messages"
        assert len(sdk._PATHS) == len(before)
        assert all(sdk._PATHS[k] is entry for k, entry in before.items())

    def test_a_client_that_prepares_urls_its_own_way_is_given_the_path(self) -> None:
        """A subclass with its own URL preparation sees the relative path, as from the SDK."""
        given: list[str] = []

        class Rewriting(anthropic.Anthropic):
            def _prepare_url(self, url: str) -> httpx2.URL:
                given.append(url)
                return super()._prepare_url(url)

        self._urls(Rewriting, "http://api.invalid")
        assert set(given) == {"/v1/messages"}

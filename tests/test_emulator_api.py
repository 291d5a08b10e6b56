"""The emulator's API surface through the real SDK: streaming, errors, limits, faults, control."""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convo import tokens
from convo.emulator import RunningEmulator

from .conftest import API_KEY
from .test_emulator_caching import EPHEMERAL, MODEL, block, words

HI = [{"role": "user", "content": "hi"}]
VERSION = "2023-06-01"
_HTTP = httpx2.Client()  # one pooled connection: a new one per request costs ~40 ms here


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    _HTTP.close()


def raw(
    emulator: RunningEmulator, method: str, path: str, body: Any = None, **headers: str
) -> httpx2.Response:
    """One plain HTTP request, for what the SDK refuses to send (no key, broken JSON).

    It carries ``anthropic-version`` as the SDK does, unless *headers* set it to ``""``
    (then the header is left out).
    """
    content = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    sent = {"content-type": "application/json", "anthropic-version": VERSION, **headers}
    return _HTTP.request(
        method,
        f"{emulator.base_url}{path}",
        content=content,
        headers={k: v for k, v in sent.items() if v},
        timeout=10,
    )


class TestStreaming:
    """SSE in the documented order, with cumulative usage on every message_delta."""

    def test_stream_events_and_cumulative_usage(self, client: anthropic.Anthropic) -> None:
        """message_start has the input side; one message_delta (as a normal API stream
        carries) has the cumulative totals."""
        system = [block(words(1200), EPHEMERAL)]
        events = list(
            client.messages.create(
                model=MODEL, max_tokens=50, system=system, messages=HI, stream=True
            )
        )
        kinds = [e.type for e in events]
        assert kinds[0] == "message_start"
        assert kinds[-1] == "message_stop"
        assert kinds.count("message_delta") == 1
        start = events[0].message.usage  # type: ignore[union-attr]
        assert (start.input_tokens, start.cache_creation_input_tokens) == (1, 1200)
        assert start.cache_creation is not None
        assert start.cache_creation.ephemeral_5m_input_tokens == 1200
        deltas = [e.usage for e in events if e.type == "message_delta"]
        final_output = deltas[-1].output_tokens
        assert final_output == 24
        # Cumulative, not incremental: every delta carries the whole count so far.
        assert all(d.output_tokens == final_output for d in deltas)
        assert all(d.cache_creation_input_tokens == 1200 for d in deltas)
        text = "".join(e.delta.text for e in events if e.type == "content_block_delta")  # type: ignore[union-attr]
        assert tokens.estimate(text) == final_output

    def test_sdk_stream_helper_settles_the_same_usage_as_json(
        self, client: anthropic.Anthropic
    ) -> None:
        """The SDK's accumulated final message equals the non-streaming answer's usage."""
        system = [block(words(1200), EPHEMERAL)]
        ask = {"model": MODEL, "max_tokens": 40, "system": system, "messages": HI}
        client.messages.create(**ask)
        plain = client.messages.create(**ask)
        with client.messages.stream(**ask) as stream:
            streamed_text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert final.usage.model_dump() == {
            **plain.usage.model_dump(),
            "service_tier": final.usage.service_tier,
        }
        assert streamed_text == plain.content[0].text  # type: ignore[union-attr]

    def test_error_event_mid_stream(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """A stream_error fault sends an error event after N events; the SDK raises."""
        emulator.configure({"faults": {"script": [{"kind": "stream_error", "after_events": 4}]}})
        seen: list[str] = []
        stream = client.messages.create(model=MODEL, max_tokens=50, messages=HI, stream=True)
        with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
            seen.extend(event.type for event in stream)
        # The SDK hides pings: four events were sent (start, ping, block start, one delta).
        assert seen == ["message_start", "content_block_start", "content_block_delta"]

    def test_connection_dropped_mid_stream(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """A stream_drop fault closes the connection after N events: the read fails mid-body."""
        emulator.configure({"faults": {"script": [{"kind": "stream_drop", "after_events": 4}]}})
        seen: list[str] = []
        stream = client.messages.create(model=MODEL, max_tokens=50, messages=HI, stream=True)
        with pytest.raises((httpx2.RemoteProtocolError, anthropic.APIConnectionError)):
            seen.extend(event.type for event in stream)
        assert seen == ["message_start", "content_block_start", "content_block_delta"]


class TestErrors:
    """Bad input gets the API's 4xx shape, never a 500."""

    def test_unknown_model_is_404(self, client: anthropic.Anthropic) -> None:
        """An unknown model id answers not_found_error."""
        with pytest.raises(anthropic.NotFoundError) as caught:
            client.messages.create(model="claude-nonexistent-9", max_tokens=8, messages=HI)
        assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]

    def test_missing_api_key_is_401(self, emulator: RunningEmulator) -> None:
        """No x-api-key header: authentication_error with a request id."""
        response = raw(
            emulator, "POST", "/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": HI}
        )
        assert response.status_code == 401
        body = response.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == "authentication_error"
        assert body["request_id"] == response.headers["request-id"]

    @pytest.mark.parametrize(
        ("body", "fragment"),
        [
            ({"max_tokens": 8, "messages": HI}, "model"),
            ({"model": MODEL, "messages": HI}, "max_tokens"),
            ({"model": MODEL, "max_tokens": 8}, "messages"),
            (
                {"model": MODEL, "max_tokens": 8, "messages": [{"role": "robot", "content": "hi"}]},
                "role",
            ),
            (
                {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": ""}]},
                "non-empty",
            ),
            ({"model": MODEL, "max_tokens": -1, "messages": HI}, "max_tokens"),
            ({"model": MODEL, "max_tokens": 10**7, "messages": HI}, "max_tokens"),
            (
                {"model": MODEL, "max_tokens": 8, "messages": HI, "tools": [{"name": "t"}]},
                "input_schema",
            ),
        ],
        ids=[
            "no-model",
            "no-max-tokens",
            "no-messages",
            "bad-role",
            "empty-text",
            "negative",
            "too-many",
            "tool-schema",
        ],
    )
    def test_malformed_bodies_are_400(
        self, emulator: RunningEmulator, body: dict[str, Any], fragment: str
    ) -> None:
        """Each malformed body is a 400 invalid_request_error naming the field."""
        response = raw(emulator, "POST", "/v1/messages", body, **{"x-api-key": API_KEY})
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert fragment in response.json()["error"]["message"]

    def test_anthropic_defined_tools_need_no_schema(self, client: anthropic.Anthropic) -> None:
        """A typed tool (bash, text editor, web search) is accepted without input_schema."""
        tools: Any = [
            {"type": "bash_20250124", "name": "bash"},
            {"type": "web_search_20250305", "name": "web_search"},
        ]
        assert client.messages.create(model=MODEL, max_tokens=8, messages=HI, tools=tools).content

    def test_invalid_json_is_400(self, emulator: RunningEmulator) -> None:
        """A body that is not JSON is a 400, not a 500."""
        response = raw(emulator, "POST", "/v1/messages", b"{not json", **{"x-api-key": API_KEY})
        assert response.status_code == 400

    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        body=st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "model",
                            "max_tokens",
                            "messages",
                            "role",
                            "content",
                            "type",
                            "text",
                            "system",
                            "tools",
                            "cache_control",
                            "ttl",
                            "stream",
                            "name",
                        ]
                    ),
                    inner,
                    max_size=5,
                )
            ),
            max_leaves=12,
        )
    )
    def test_arbitrary_bodies_never_cause_a_server_error(
        self, emulator: RunningEmulator, body: Any
    ) -> None:
        """Whatever JSON arrives, the answer is a 2xx or 4xx, never 5xx."""
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            response = raw(emulator, "POST", path, body, **{"x-api-key": API_KEY})
            assert response.status_code < 500, response.text


class TestRateLimits:
    """Token buckets per class, headers on every response, cache reads free of ITPM."""

    def test_headers_on_every_response(self, client: anthropic.Anthropic) -> None:
        """Requests, input, output and combined token headers with RFC 3339 resets."""
        response = client.messages.with_raw_response.create(model=MODEL, max_tokens=8, messages=HI)
        headers = response.headers
        assert headers["request-id"].startswith("req_")
        for name in ("requests", "input-tokens", "output-tokens", "tokens"):
            for part in ("limit", "remaining", "reset"):
                assert f"anthropic-ratelimit-{name}-{part}" in headers
        reset = dt.datetime.fromisoformat(
            headers["anthropic-ratelimit-input-tokens-reset"].replace("Z", "+00:00")
        )
        assert reset.tzinfo is not None
        assert int(headers["anthropic-ratelimit-requests-remaining"]) == 3999
        assert int(headers["anthropic-ratelimit-input-tokens-remaining"]) % 1000 == 0

    def test_itpm_refuses_with_retry_after_and_cache_reads_are_free(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """With ITPM 3,000, a cached 1,200-token prompt repeats; an uncached one is refused."""
        emulator.configure({"limits": {"default": {"rpm": 1000, "itpm": 3000, "otpm": 100000}}})
        system = [block(words(1200), EPHEMERAL)]
        client.messages.create(model=MODEL, max_tokens=8, system=system, messages=HI)
        for _ in range(10):  # reads are free of ITPM: ten cached requests weigh 10 tokens in all
            cached = client.messages.create(model=MODEL, max_tokens=8, system=system, messages=HI)
            assert cached.usage.cache_read_input_tokens == 1200
        big = [{"role": "user", "content": words(1500, "big")}]
        client.messages.create(model=MODEL, max_tokens=8, messages=big)
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(
                model=MODEL,
                max_tokens=8,
                messages=[{"role": "user", "content": words(1500, "bog")}],
            )
        response = caught.value.response
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["anthropic-ratelimit-input-tokens-limit"] == "3000"
        assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        emulator.advance(60)
        client.messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": words(1500, "bog")}]
        )

    @pytest.mark.filterwarnings("ignore:The model 'claude-3-5-haiku-latest' is deprecated")
    def test_haiku_35_counts_cache_reads_toward_itpm(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """On Haiku 3.5 reads weigh on ITPM: a write and a read of 2,101 exhaust 5,000."""
        emulator.configure({"limits": {"default": {"itpm": 5000}}})
        ask: Any = {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 8,
            "system": [block(words(2100), EPHEMERAL)],
            "messages": HI,
        }
        assert client.messages.create(**ask).usage.cache_creation_input_tokens == 2100
        assert client.messages.create(**ask).usage.cache_read_input_tokens == 2100
        with pytest.raises(anthropic.RateLimitError):
            client.messages.create(**ask)

    def test_rpm_refills_continuously(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """6 RPM admits 6 at once, then one every 10 seconds, not 6 a minute later."""
        emulator.configure({"limits": {"default": {"rpm": 6}}})
        for _ in range(6):
            client.messages.create(model=MODEL, max_tokens=1, messages=HI)
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model=MODEL, max_tokens=1, messages=HI)
        assert int(caught.value.response.headers["retry-after"]) in range(9, 11)
        emulator.advance(10.0)
        client.messages.create(model=MODEL, max_tokens=1, messages=HI)
        with pytest.raises(anthropic.RateLimitError):
            client.messages.create(model=MODEL, max_tokens=1, messages=HI)

    def test_sse_carries_pings(self, emulator: RunningEmulator) -> None:
        """The raw stream has a ping after message_start (the SDK hides pings)."""
        body = {"model": MODEL, "max_tokens": 8, "messages": HI, "stream": True}
        response = raw(emulator, "POST", "/v1/messages", body, **{"x-api-key": API_KEY})
        names = [
            line.removeprefix("event: ")
            for line in response.text.splitlines()
            if line.startswith("event: ")
        ]
        assert names[:2] == ["message_start", "ping"]
        assert names[-1] == "message_stop"


class TestFaults:
    """Scripted and seeded faults, with the API's bodies and headers."""

    def test_scripted_529_then_success(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """Three 529s in a row, then a normal answer; stats count each status."""
        emulator.configure({"faults": {"script": ["overloaded", "overloaded", "overloaded"]}})
        for _ in range(3):
            with pytest.raises(anthropic.OverloadedError) as caught:
                client.messages.create(model=MODEL, max_tokens=8, messages=HI)
            assert caught.value.status_code == 529
            assert caught.value.body["error"] == {
                "type": "overloaded_error",
                "message": "Overloaded",
            }  # type: ignore[index]
        client.messages.create(model=MODEL, max_tokens=8, messages=HI)
        assert emulator.stats()["requests"]["by_status"] == {"529": 3, "200": 1}

    def test_scripted_429_with_retry_after_ms(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """A rate_limit fault carries retry-after and retry-after-ms as scripted."""
        emulator.configure(
            {
                "faults": {
                    "script": [{"kind": "rate_limit", "retry_after": 2, "retry_after_ms": 1200}]
                }
            }
        )
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model=MODEL, max_tokens=8, messages=HI)
        headers = caught.value.response.headers
        assert (headers["retry-after"], headers["retry-after-ms"]) == ("2", "1200")

    def test_retry_after_as_http_date(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """retry-after can be sent as an HTTP date instead of seconds."""
        emulator.configure(
            {
                "faults": {
                    "script": [
                        {"kind": "rate_limit", "retry_after": 30, "retry_after_http_date": True}
                    ]
                }
            }
        )
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model=MODEL, max_tokens=8, messages=HI)
        when = email.utils.parsedate_to_datetime(caught.value.response.headers["retry-after"])
        assert when.timestamp() >= emulator.emulator.clock.now() + 28

    def test_spend_cap_429_has_no_retry_after(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """The spend cap is a 429 with details.error_code and no retry-after."""
        emulator.configure({"faults": {"script": ["spend_cap"]}})
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model=MODEL, max_tokens=8, messages=HI)
        assert "retry-after" not in caught.value.response.headers
        assert caught.value.body["error"]["details"] == {
            "error_code": "enforced_spend_limit_reached"
        }  # type: ignore[index]

    def test_x_should_retry_header(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """A fault can say x-should-retry: false."""
        emulator.configure({"faults": {"script": [{"kind": "api_error", "should_retry": False}]}})
        with pytest.raises(anthropic.InternalServerError) as caught:
            client.messages.create(model=MODEL, max_tokens=8, messages=HI)
        assert caught.value.response.headers["x-should-retry"] == "false"

    def test_dropped_connection(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """A drop fault closes the connection mid-response: the SDK raises a connection error."""
        emulator.configure({"faults": {"script": ["drop"]}})
        with pytest.raises(anthropic.APIConnectionError):
            client.messages.create(model=MODEL, max_tokens=8, messages=HI)
        client.messages.create(model=MODEL, max_tokens=8, messages=HI)

    def test_sdk_retries_are_visible_at_the_emulator(self, emulator: RunningEmulator) -> None:
        """With the SDK's default retries, two 529s and a success are three requests."""
        emulator.configure(
            {"faults": {"script": ["overloaded", {"kind": "overloaded", "retry_after_ms": 10}]}}
        )
        with anthropic.Anthropic(
            base_url=emulator.base_url, api_key=API_KEY, max_retries=2
        ) as retrying:
            retrying.messages.create(model=MODEL, max_tokens=8, messages=HI)
        assert emulator.stats()["requests"]["total"] == 3

    def test_seeded_random_faults_repeat(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """The same seed and rates give the same fault sequence."""

        def sequence() -> list[int]:
            emulator.reset()
            emulator.configure(
                {"seed": 7, "faults": {"rates": {"overloaded": 0.3, "api_error": 0.2}}}
            )
            statuses = []
            for _ in range(30):
                try:
                    client.messages.create(model=MODEL, max_tokens=1, messages=HI)
                    statuses.append(200)
                except anthropic.APIStatusError as error:
                    statuses.append(error.status_code)
            return statuses

        first, second = sequence(), sequence()
        assert first == second
        assert {200, 500, 529} <= set(first)


class TestEndpoints:
    """Models and control endpoints."""

    def test_models_list_and_get(self, client: anthropic.Anthropic) -> None:
        """The SDK lists the table and fetches one entry; unknown ids are 404."""
        ids = [m.id for m in client.models.list(limit=100)]
        assert MODEL in ids
        assert client.models.retrieve(MODEL).display_name == "Claude Sonnet 4.6"
        page = client.models.list(limit=2)
        assert len(page.data) == 2
        assert page.has_more
        with pytest.raises(anthropic.NotFoundError):
            client.models.retrieve("claude-nope")

    def test_stats_shape(self, client: anthropic.Anthropic, emulator: RunningEmulator) -> None:
        """Stats count requests by status and billed tokens by kind."""
        system = [block(words(1200), EPHEMERAL)]
        client.messages.create(model=MODEL, max_tokens=8, system=system, messages=HI)
        client.messages.create(model=MODEL, max_tokens=8, system=system, messages=HI)
        stats = emulator.stats()
        assert stats["requests"] == {"total": 2, "by_status": {"200": 2}}
        assert stats["tokens"] == {
            "input": 2,
            "cache_read": 1200,
            "cache_write_5m": 1200,
            "cache_write_1h": 0,
            "output": 16,
        }

    def test_config_get_put_and_reject(self, emulator: RunningEmulator) -> None:
        """PUT replaces the config; a bad key is a 400 that names it."""
        got = raw(emulator, "GET", "/_emulator/config").json()
        assert got["limits"]["default"]["rpm"] == 4000
        put = raw(emulator, "PUT", "/_emulator/config", {"limits": {"default": {"rpm": 5}}})
        assert put.status_code == 200
        assert put.json()["limits"]["default"]["rpm"] == 5
        bad = raw(emulator, "PUT", "/_emulator/config", {"limits": {"default": {"rpn": 5}}})
        assert bad.status_code == 400
        assert "rpn" in bad.json()["error"]["message"]

    def test_reset_forgets_entries_and_counters(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """After POST /_emulator/reset the prefix is cold and counters are zero."""
        system = [block(words(1200), EPHEMERAL)]
        client.messages.create(model=MODEL, max_tokens=8, system=system, messages=HI)
        assert raw(emulator, "POST", "/_emulator/reset").status_code == 200
        assert emulator.stats()["requests"]["total"] == 0
        again = client.messages.create(model=MODEL, max_tokens=8, system=system, messages=HI)
        assert again.usage.cache_read_input_tokens == 0

    def test_forced_tool_choice_answers_with_tool_use(self, client: anthropic.Anthropic) -> None:
        """tool_choice {type: tool} gets a tool_use block and stop_reason tool_use."""
        tools: Any = [{"name": "lookup", "input_schema": {"type": "object"}}]
        message = client.messages.create(
            model=MODEL,
            max_tokens=64,
            messages=HI,
            tools=tools,
            tool_choice={"type": "tool", "name": "lookup"},
        )
        assert message.stop_reason == "tool_use"
        assert message.content[0].type == "tool_use"

    def test_max_tokens_caps_the_reply(self, client: anthropic.Anthropic) -> None:
        """A reply longer than max_tokens stops at it with stop_reason max_tokens."""
        message = client.messages.create(model=MODEL, max_tokens=5, messages=HI)
        assert message.usage.output_tokens == 5
        assert message.stop_reason == "max_tokens"


class TestRequestsRefused:
    """The limits the API enforces before it runs anything, through the real SDK."""

    def test_over_32_mb_is_413(
        self, client: anthropic.Anthropic, emulator: RunningEmulator
    ) -> None:
        """A 33 MiB message answers 413 request_too_large and bills nothing."""
        big = [{"role": "user", "content": "a" * (33 * 2**20)}]
        with pytest.raises(anthropic.ContentTooLargeError) as caught:
            client.messages.create(model=MODEL, max_tokens=8, messages=big)  # type: ignore[arg-type]
        assert caught.value.status_code == 413
        assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
        assert emulator.stats()["tokens"]["input"] == 0
        assert emulator.stats()["requests"]["by_status"] == {"413": 1}

    def test_over_the_context_window_is_400(
        self, client: anthropic.Anthropic, emulator: RunningEmulator
    ) -> None:
        """200,001 tokens on Haiku 4.5 (200k) is refused; the same on Sonnet 4.6 (1M) runs."""
        long = [{"role": "user", "content": " ".join(["plan"] * 200_001)}]
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=long)  # type: ignore[arg-type]
        assert caught.value.body["error"]["message"] == (  # type: ignore[index]
            "prompt is too long: 200001 tokens > 200000 maximum"
        )
        assert emulator.stats()["tokens"]["input"] == 0
        ok = client.messages.create(model=MODEL, max_tokens=8, messages=long)  # type: ignore[arg-type]
        assert ok.usage.input_tokens == 200_001

    def test_unknown_block_type_is_400(self, client: anthropic.Anthropic) -> None:
        """A block type the API does not know is refused, naming its position."""
        messages: Any = [{"role": "user", "content": [{"type": "hologram", "data": "x"}]}]
        with pytest.raises(anthropic.BadRequestError, match=r"messages\.0\.content\.0.*'hologram'"):
            client.messages.create(model=MODEL, max_tokens=8, messages=messages)

    @pytest.mark.parametrize(
        ("source", "fragment"),
        [
            ({"type": "base64", "media_type": "image/png", "data": "@@@"}, "invalid base64"),
            ({"type": "base64", "media_type": "image/tiff", "data": "AAAA"}, "media_type"),
            (
                {
                    "type": "base64",
                    "media_type": "image/jpeg",
                    "data": base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(16)).decode(),
                },
                "does not match the provided media type",
            ),
        ],
        ids=["bad-base64", "media-type", "mismatch"],
    )
    def test_malformed_image_is_400(
        self, client: anthropic.Anthropic, source: dict[str, str], fragment: str
    ) -> None:
        """Bad base64, an unsupported media type, or bytes of another format: 400."""
        messages: Any = [{"role": "user", "content": [{"type": "image", "source": source}]}]
        with pytest.raises(anthropic.BadRequestError, match=fragment):
            client.messages.create(model=MODEL, max_tokens=8, messages=messages)

    def test_a_real_png_is_accepted(self, client: anthropic.Anthropic) -> None:
        """A well-formed image passes and is billed at the flat image estimate."""
        png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(16)).decode()
        messages: Any = [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": png},
                    },
                    {"type": "text", "text": "hi"},
                ],
            }
        ]
        reply = client.messages.create(model=MODEL, max_tokens=8, messages=messages)
        assert reply.usage.input_tokens == tokens.IMAGE_TOKENS + 1

    @pytest.mark.parametrize("model", ["claude-sonnet-4-6", "claude-opus-4-6", "claude-opus-5"])
    def test_128k_max_tokens_where_documented(
        self, client: anthropic.Anthropic, model: str
    ) -> None:
        """max_tokens 128,000 runs on the 128k models (streamed, as the SDK requires);
        128,001 is refused with the API's message."""
        with client.messages.stream(model=model, max_tokens=128_000, messages=HI) as stream:  # type: ignore[arg-type]
            final = stream.get_final_message()
        assert final.usage.output_tokens > 0
        with pytest.raises(anthropic.BadRequestError, match="128001 > 128000"):
            client.messages.create(model=model, max_tokens=128_001, messages=HI, stream=True)  # type: ignore[arg-type]

    def test_max_tokens_above_a_64k_model(self, client: anthropic.Anthropic) -> None:
        """Haiku 4.5 stops at 64,000."""
        with pytest.raises(anthropic.BadRequestError, match="64001 > 64000"):
            client.messages.create(
                model="claude-haiku-4-5", max_tokens=64_001, messages=HI, stream=True
            )  # type: ignore[arg-type]

    def test_missing_anthropic_version_is_400(self, emulator: RunningEmulator) -> None:
        """Without the header (the SDK always sends it), every API route answers 400."""
        body = {"model": MODEL, "max_tokens": 8, "messages": HI}
        for method, path in (
            ("POST", "/v1/messages"),
            ("POST", "/v1/messages/count_tokens"),
            ("GET", "/v1/models"),
        ):
            response = raw(
                emulator,
                method,
                path,
                body if method == "POST" else None,
                **{"x-api-key": API_KEY, "anthropic-version": ""},
            )
            assert response.status_code == 400, path
            assert response.json()["error"] == {
                "type": "invalid_request_error",
                "message": "anthropic-version: header is required",
            }
        with_it = raw(emulator, "POST", "/v1/messages", body, **{"x-api-key": API_KEY})
        assert with_it.status_code == 200

    @pytest.mark.parametrize(
        ("model", "extra", "fragment"),
        [
            (
                "claude-sonnet-4-5",
                {"temperature": 0.5, "top_p": 0.9},
                "`temperature` and `top_p` cannot both be specified",
            ),
            ("claude-opus-4-7", {"temperature": 0.2}, "`temperature` is deprecated"),
            ("claude-opus-5", {"top_k": 5}, "`top_k` is deprecated"),
            (
                "claude-sonnet-4-6",
                {"messages": [*HI, {"role": "assistant", "content": "Sure:"}]},
                "does not support assistant message prefill",
            ),
            (
                "claude-sonnet-4-5",
                {"thinking": {"type": "enabled", "budget_tokens": 1000}},
                "greater than or equal to 1024",
            ),
            (
                "claude-sonnet-4-5",
                {"max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 2048}},
                "`max_tokens` must be greater than `thinking.budget_tokens`",
            ),
            (
                "claude-sonnet-4-5",
                {
                    "thinking": {"type": "enabled", "budget_tokens": 1024},
                    "tools": [{"name": "t", "input_schema": {"type": "object"}}],
                    "tool_choice": {"type": "any"},
                },
                "tool_choice forces tool use",
            ),
            (
                "claude-sonnet-4-5",
                {"thinking": {"type": "enabled", "budget_tokens": 1024}, "temperature": 0.5},
                "`temperature` may only be set to 1 when thinking is enabled",
            ),
            (
                "claude-opus-4-7",
                {"thinking": {"type": "enabled", "budget_tokens": 1024}},
                '"thinking.type.enabled" is not supported for this model',
            ),
        ],
        ids=[
            "temperature-and-top-p",
            "temperature-on-4-7",
            "top-k-on-5",
            "prefill-on-4-6",
            "budget-below-1024",
            "budget-not-below-max-tokens",
            "thinking-forced-tool",
            "thinking-temperature",
            "manual-thinking-on-4-7",
        ],
    )
    def test_sampling_prefill_and_thinking_rules(
        self,
        client: anthropic.Anthropic,
        emulator: RunningEmulator,
        model: str,
        extra: dict[str, Any],
        fragment: str,
    ) -> None:
        """Each rule answers 400 invalid_request_error with the API's wording; nothing billed."""
        body = {"model": model, "max_tokens": 4096, "messages": HI, **extra}
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.post("/v1/messages", body=body, cast_to=object)
        error = caught.value.body["error"]  # type: ignore[index]
        assert error["type"] == "invalid_request_error"
        assert fragment in error["message"]
        assert emulator.stats()["tokens"]["input"] == 0

    def test_the_same_requests_pass_where_allowed(self, client: anthropic.Anthropic) -> None:
        """Prefill on Sonnet 4.5, adaptive thinking on Opus 4.7, temperature alone on 4.5.

        (``client.post``: the SDK warns that Sonnet 4.5 is deprecated, and warnings fail.)
        """
        prefill = [*HI, {"role": "assistant", "content": "Sure:"}]
        for extra in ({"messages": prefill}, {"temperature": 0.5}):
            body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": HI, **extra}
            assert client.post("/v1/messages", body=body, cast_to=object)
        assert client.messages.create(
            model="claude-opus-4-7", max_tokens=8, messages=HI, thinking={"type": "adaptive"}
        )

    @pytest.mark.parametrize(
        ("model", "window", "output"),
        [
            ("claude-sonnet-4-6", 1_000_000, 128_000),
            ("claude-opus-4-6", 1_000_000, 128_000),
            ("claude-opus-5", 1_000_000, 128_000),
            ("claude-sonnet-4-5", 200_000, 64_000),
            ("claude-haiku-4-5", 200_000, 64_000),
            ("claude-opus-4-1", 200_000, 32_000),
            ("claude-3-5-haiku", 200_000, 8_192),
        ],
    )
    def test_models_endpoint_reports_each_models_limits(
        self, client: anthropic.Anthropic, model: str, window: int, output: int
    ) -> None:
        """GET /v1/models/{id} and the list carry each model's own window and output."""
        info = client.models.retrieve(model)
        assert (info.max_input_tokens, info.max_tokens) == (window, output)
        listed = {m.id: m for m in client.models.list(limit=100)}
        assert (listed[model].max_input_tokens, listed[model].max_tokens) == (window, output)

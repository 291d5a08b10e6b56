"""Usage: four input kinds, TTL split, streaming deltas replaced, conversions."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic.types import (
    Message,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
)
from hypothesis import given
from hypothesis import strategies as st

from convo.usage import ServerToolUse, Usage, UsageAccumulator

MISSION = {
    "input_tokens": 3,
    "output_tokens": 1021,
    "cache_read_input_tokens": 9390,
    "cache_creation_input_tokens": 58869,
    "cache_creation": {"ephemeral_5m_input_tokens": 58869, "ephemeral_1h_input_tokens": 0},
}


def _message(usage: dict[str, Any]) -> Message:
    return Message.model_validate(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-6",
            "content": [{"type": "text", "text": "Hello there"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
    )


def _stream(start_usage: dict[str, Any], deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A raw event sequence as the API sends it, with several cumulative message_deltas."""
    message = _message(start_usage).model_dump()
    message["content"] = []
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": message},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
    ]
    events += [
        {"type": "message_delta", "delta": {"stop_reason": None, "stop_sequence": None}, "usage": d}
        for d in deltas
    ]
    events.append({"type": "message_stop"})
    return events


_SDK_EVENTS = {
    "message_start": RawMessageStartEvent,
    "content_block_start": RawContentBlockStartEvent,
    "content_block_delta": RawContentBlockDeltaEvent,
    "content_block_stop": RawContentBlockStopEvent,
    "message_delta": RawMessageDeltaEvent,
    "message_stop": RawMessageStopEvent,
}


def _as_sdk(events: list[dict[str, Any]]) -> list[Any]:
    return [_SDK_EVENTS[e["type"]].model_validate(e) for e in events if e["type"] in _SDK_EVENTS]


class TestUsageValue:
    def test_mission_row_total_input(self) -> None:
        """The mission row's total input is input + reads + writes = 68,262."""
        u = Usage.from_dict(MISSION)
        assert (u.input, u.cache_read, u.cache_write, u.output) == (3, 9390, 58869, 1021)
        assert u.total_input == 3 + 9390 + 58869 == 68262

    def test_from_message_matches_from_dict(self) -> None:
        """An SDK Message gives the same Usage as its raw usage dict."""
        assert Usage.from_message(_message(MISSION)) == Usage.from_dict(MISSION)

    @pytest.mark.parametrize(
        "usage",
        [
            MISSION,
            {k: v for k, v in MISSION.items() if k != "cache_creation"},
            dict(MISSION, cache_creation=None, service_tier="batch", future_field=7),
            dict(MISSION, server_tool_use={"web_search_requests": 1, "web_fetch_requests": 0}),
        ],
        ids=["split", "no-split", "null-split-extra-field", "server-tools"],
    )
    def test_sdk_object_read_like_its_dump(self, usage: dict[str, Any]) -> None:
        """Reading an SDK Message's usage fields directly gives what its model_dump() gives."""
        message = _message(usage)
        dumped = Usage.from_dict(message.usage.model_dump(), requested_ttl="1h")
        assert Usage.from_message(message, requested_ttl="1h") == dumped
        assert Usage.from_message(message.usage, requested_ttl="1h") == dumped

    def test_ttl_split_kept(self) -> None:
        """cache_creation's 5m/1h split lands in the two write fields."""
        d = dict(MISSION, cache_creation_input_tokens=300)
        d["cache_creation"] = {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}
        u = Usage.from_dict(d)
        assert (u.cache_write_5m, u.cache_write_1h, u.cache_write) == (100, 200, 300)
        assert not u.ttl_split_assumed

    @pytest.mark.parametrize(("ttl", "field"), [("5m", "cache_write_5m"), ("1h", "cache_write_1h")])
    def test_missing_split_goes_to_requested_ttl(self, ttl: Any, field: str) -> None:
        """Without cache_creation, writes go to the requested TTL and are flagged."""
        d = {k: v for k, v in MISSION.items() if k != "cache_creation"}
        u = Usage.from_dict(d, requested_ttl=ttl)
        assert getattr(u, field) == 58869
        assert u.cache_write == 58869
        assert u.ttl_split_assumed

    def test_no_writes_no_flag(self) -> None:
        """Zero writes without a split is not an assumption."""
        assert not Usage.from_dict({"input_tokens": 5, "output_tokens": 1}).ttl_split_assumed

    def test_optional_fields(self) -> None:
        """server_tool_use, service_tier and inference_geo are carried when present."""
        d = dict(
            MISSION,
            server_tool_use={"web_search_requests": 2, "web_fetch_requests": 1},
            service_tier="standard",
            inference_geo="us",
        )
        u = Usage.from_message(_message(d))
        assert u.server_tool_use == ServerToolUse(2, 1)
        assert (u.service_tier, u.inference_geo) == ("standard", "us")

    def test_negative_count_rejected(self) -> None:
        """A negative token count is a ValueError."""
        with pytest.raises(ValueError, match="input must be >= 0"):
            Usage(input=-1)

    def test_non_int_rejected(self) -> None:
        """A float or bool token count is a TypeError."""
        with pytest.raises(TypeError, match="int token count"):
            Usage(output=1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            Usage.from_dict({"input_tokens": True})

    def test_bad_ttl_rejected(self) -> None:
        """requested_ttl must be 5m or 1h."""
        with pytest.raises(ValueError, match="'5m' or '1h'"):
            Usage.from_dict(MISSION, requested_ttl="10m")  # type: ignore[arg-type]

    def test_from_message_needs_usage(self) -> None:
        """An object without usage is a TypeError naming what was expected."""
        with pytest.raises(TypeError, match="SDK Message/Usage"):
            Usage.from_message(object())


class TestAddition:
    def test_zero_is_identity(self) -> None:
        """Usage.zero() + u == u, tiers included."""
        u = Usage.from_dict(dict(MISSION, service_tier="standard"))
        assert Usage.zero() + u == u
        assert u + Usage.zero() == u

    def test_sum_of_fields(self) -> None:
        """Adding sums every kind and ORs the assumption flag."""
        a = Usage(input=1, cache_read=2, cache_write_5m=3, cache_write_1h=4, output=5)
        b = Usage(input=10, cache_read=20, cache_write_5m=30, output=50, ttl_split_assumed=True)
        c = a + b
        kinds = (c.input, c.cache_read, c.cache_write_5m, c.cache_write_1h, c.output)
        assert kinds == (11, 22, 33, 4, 55)
        assert c.ttl_split_assumed

    def test_mixed_tiers_become_none(self) -> None:
        """A total over two service tiers has no single tier."""
        a = Usage(input=1, service_tier="standard")
        b = Usage(input=1, service_tier="priority")
        assert (a + b).service_tier is None
        assert (a + a).service_tier == "standard"

    @given(st.lists(st.tuples(*[st.integers(0, 10**7)] * 5), max_size=30))
    def test_total_input_additive(self, rows: list[tuple[int, ...]]) -> None:
        """total_input of a sum is the sum of total_inputs."""
        usages = [Usage(*r) for r in rows]
        total = sum(usages, Usage.zero())
        assert total.total_input == sum(u.total_input for u in usages)
        assert total.output == sum(u.output for u in usages)


START = {
    "input_tokens": 3,
    "output_tokens": 1,
    "cache_read_input_tokens": 9390,
    "cache_creation_input_tokens": 58869,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 58869},
}
DELTAS = [
    {"output_tokens": 200},
    {"output_tokens": 700, "input_tokens": 3},
    {
        "output_tokens": 1021,
        "input_tokens": 3,
        "cache_read_input_tokens": 9390,
        "cache_creation_input_tokens": 58869,
    },
]


class TestStreaming:
    def test_several_deltas_equal_final_message(self) -> None:
        """Cumulative deltas are replaced, not added: the stream equals the final message."""
        final = _message(dict(START, output_tokens=1021))
        assert Usage.from_events(_stream(START, DELTAS)) == Usage.from_message(final)

    def test_sdk_event_objects(self) -> None:
        """SDK event objects settle to the same Usage as raw dicts."""
        events = _stream(START, DELTAS)
        assert Usage.from_events(_as_sdk(events)) == Usage.from_events(events)

    def test_summing_deltas_would_be_wrong(self) -> None:
        """The settled output is the last delta's value, not the sum of deltas."""
        u = Usage.from_events(_stream(START, DELTAS))
        assert u.output == 1021 != sum(d["output_tokens"] for d in DELTAS)

    def test_delta_keeps_start_split(self) -> None:
        """A delta without TTL split keeps message_start's 1h split unflagged."""
        u = Usage.from_events(_stream(START, DELTAS), requested_ttl="5m")
        assert (u.cache_write_5m, u.cache_write_1h, u.ttl_split_assumed) == (0, 58869, False)

    def test_delta_changing_writes_flags(self) -> None:
        """A delta raising the write total puts the extra on the requested TTL, flagged."""
        deltas = [{"output_tokens": 5, "cache_creation_input_tokens": 58869 + 100}]
        u = Usage.from_events(_stream(START, deltas), requested_ttl="5m")
        assert (u.cache_write_5m, u.cache_write_1h, u.ttl_split_assumed) == (100, 58869, True)

    def test_accumulator_progress(self) -> None:
        """The accumulator shows the usage settled so far after every event."""
        acc = UsageAccumulator()
        assert not acc.started
        seen = [acc.feed(e).output for e in _stream(START, DELTAS)]
        assert acc.started
        assert seen == [1, 1, 1, 1, 1, 200, 700, 1021, 1021]

    def test_event_without_type(self) -> None:
        """An event without a type is a TypeError."""
        with pytest.raises(TypeError, match="'type'"):
            UsageAccumulator().feed({"usage": {}})


class TestConversions:
    def test_otel_input_is_inclusive(self) -> None:
        """gen_ai.usage.input_tokens includes cache tokens; cache attributes are parts of it."""
        attrs_ = Usage.from_dict(MISSION).to_otel_attributes()
        assert attrs_ == {
            "gen_ai.usage.input_tokens": 68262,
            "gen_ai.usage.output_tokens": 1021,
            "gen_ai.usage.cache_read.input_tokens": 9390,
            "gen_ai.usage.cache_creation.input_tokens": 58869,
        }

    def test_openai_style_inclusive(self) -> None:
        """prompt_tokens is inclusive with cached_tokens as a detail."""
        d = Usage.from_dict(MISSION).to_openai_style()
        assert d["prompt_tokens"] == 68262
        assert d["prompt_tokens_details"] == {"cached_tokens": 9390}
        assert d["total_tokens"] == 68262 + 1021


class TestStreamingThroughSdk:
    def test_emulator_stream_equals_final_message(self, client: Any) -> None:
        """Through the real SDK, a stream's settled usage equals its final message's."""
        system = [
            {
                "type": "text",
                "text": "You answer briefly. " * 800,
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            }
        ]
        seen = []
        for _ in range(2):  # a cold write, then a warm read
            with client.messages.stream(
                model="claude-sonnet-4-6",
                max_tokens=200,
                system=system,
                messages=[{"role": "user", "content": "Tell me a story"}],
            ) as stream:
                events = list(stream)
                final = stream.get_final_message()
            deltas = [e for e in events if e.type == "message_delta"]
            streamed = Usage.from_events(events, requested_ttl="1h")
            assert streamed == Usage.from_message(final, requested_ttl="1h")
            seen.append((len(deltas), streamed))
        (_, cold), (_, warm) = seen
        assert cold.cache_write_1h > 0
        assert warm.cache_read == cold.cache_write_1h
        assert all(n >= 1 for n, _ in seen)

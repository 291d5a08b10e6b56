"""Issue 9's rules, through the real SDK on the emulator, each with convo's prediction.

Every test states the figures the documented rule gives and checks both the emulator's
usage and, where convo predicts, :class:`convo.tracker.CacheTracker` before the call.
"""

from __future__ import annotations

import copy
from typing import Any

import anthropic
import httpx2
import pytest

from convo import tokens
from convo.emulator import RunningEmulator
from convo.tracker import CacheTracker
from convo.usage import Usage

SONNET = "claude-sonnet-4-6"  # minimum 1,024; keeps earlier thinking
HAIKU = "claude-haiku-4-5"  # minimum 4,096; strips earlier thinking
EPHEMERAL: dict[str, Any] = {"type": "ephemeral"}
HI = [{"role": "user", "content": "hi"}]


def words(n: int, seed: str = "w") -> str:
    """Text of exactly *n* tokens by convo.tokens (each word is at most five letters)."""
    text = " ".join(f"{seed}{'abcd'[i % 4]}" for i in range(n))
    assert tokens.estimate(text) == n
    return text


def system(n: int, seed: str = "s") -> list[dict[str, Any]]:
    return [{"type": "text", "text": words(n, seed), "cache_control": EPHEMERAL}]


def four(message: Any) -> tuple[int, int, int, int]:
    """(input, cache_read, cache_write_5m, cache_write_1h) of a response."""
    u = Usage.from_message(message)
    return (u.input, u.cache_read, u.cache_write_5m, u.cache_write_1h)


def marked(block: dict[str, Any]) -> dict[str, Any]:
    return {**block, "cache_control": EPHEMERAL}


def tool_calls(n: int, *, parallel: bool) -> list[dict[str, Any]]:
    """Messages for *n* tool calls after a user turn: one fan-out, or n round trips."""
    uses = [
        {"type": "tool_use", "id": f"toolu_{i:02d}", "name": "lookup", "input": {"word": f"w{i}"}}
        for i in range(n)
    ]
    results = [
        {"type": "tool_result", "tool_use_id": f"toolu_{i:02d}", "content": f"r{i}"}
        for i in range(n)
    ]
    if parallel:
        return [{"role": "assistant", "content": uses}, {"role": "user", "content": results}]
    messages: list[dict[str, Any]] = []
    for use, result in zip(uses, results, strict=True):
        messages += [
            {"role": "assistant", "content": [use]},
            {"role": "user", "content": [result]},
        ]
    return messages


def last_marked(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy with a breakpoint on the last block of the last message."""
    messages = copy.deepcopy(messages)
    content = messages[-1]["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    content[-1] = marked(content[-1])
    messages[-1]["content"] = content
    return messages


# A valid 1x1 PNG, base64.
ONE_PIXEL_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


class Tracked:
    """Sends raw bodies through the SDK, with the tracker's prediction checked first."""

    def __init__(self, client: anthropic.Anthropic, emulator: RunningEmulator, **kw: Any):
        self.client = client
        self.tracker = CacheTracker(clock=emulator.emulator.clock.now, **kw)

    def send(self, body: dict[str, Any], *, previous: Any = "last") -> Any:
        prediction = self.tracker.predict(body, previous=previous)
        message = self.client.messages.create(**body)
        outcome = self.tracker.observe(prediction, Usage.from_message(message))
        assert outcome.exact, outcome
        return prediction, message


TOOLS = [{"name": "lookup", "description": "Look a word up.", "input_schema": {"type": "object"}}]


class TestToolRuns:
    """A run of consecutive tool_use blocks is one lookback position; so is a tool_result run."""

    def _turns(self, n: int, parallel: bool) -> tuple[list[Any], list[Any]]:
        first = [{"role": "user", "content": [{"type": "text", "text": words(50, "u")}]}]
        second = first + tool_calls(n, parallel=parallel)
        return last_marked(first), last_marked(second)

    @pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "sequential"])
    def test_twelve_tool_calls_then_a_breakpoint(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, parallel: bool
    ) -> None:
        """12 parallel calls are 2 positions: the breakpoint after them reads the previous
        entry (1,200 + 50 tokens). 12 sequential calls are 24 positions: it reads 0."""
        tracked = Tracked(client, emulator)
        first, second = self._turns(12, parallel)
        base = {"model": SONNET, "max_tokens": 8, "system": words(1200), "tools": TOOLS}
        _, cold = tracked.send({**base, "messages": first})
        written = cold.usage.cache_creation_input_tokens
        assert written == tokens.request_tokens(messages=first, system=words(1200), tools=TOOLS)
        prediction, message = tracked.send({**base, "messages": second})
        read = written if parallel else 0
        assert message.usage.cache_read_input_tokens == prediction.cache_read == read
        assert prediction.reason == ("hit" if parallel else "lookback_exceeded")


class TestSettings:
    """Effort invalidates messages; speed and citations invalidate system and messages."""

    def _body(self, **extra: Any) -> dict[str, Any]:
        tools = [marked({**TOOLS[0], "description": words(1100, "t")})]
        messages = [{"role": "user", "content": [marked({"type": "text", "text": words(300)})]}]
        return {
            "model": SONNET,
            "max_tokens": 8,
            "tools": tools,
            "system": system(400),
            "messages": messages,
            **extra,
        }

    @pytest.mark.parametrize(
        ("change", "read", "reason"),
        [
            ({"output_config": {"effort": "high"}}, "all", "hit"),  # the default = absent
            ({"thinking": {"type": "disabled"}}, "all", "hit"),  # disabled = absent
            ({"output_config": {"effort": "low"}}, "system", "messages_changed"),
            (
                {"thinking": {"type": "enabled", "budget_tokens": 1024}},
                "system",
                "messages_changed",
            ),
            ({"speed": "fast"}, "tools", "system_changed"),
        ],
        ids=["effort-default", "thinking-disabled", "effort-low", "thinking", "speed"],
    )
    def test_what_each_setting_invalidates(
        self,
        emulator: RunningEmulator,
        client: anthropic.Anthropic,
        change: dict[str, Any],
        read: str,
        reason: str,
    ) -> None:
        """Tools 1,100+ tokens, system 400, messages 300: the read stops at the level."""
        tracked = Tracked(client, emulator)
        first, _ = tracked.send(self._body())
        tools_tokens = first.fingerprint.tokens[0]
        reads = {"all": first.total_input, "system": tools_tokens + 400, "tools": tools_tokens}
        body = self._body(max_tokens=2048, **change)
        prediction, message = tracked.send(body)
        assert message.usage.cache_read_input_tokens == prediction.cache_read == reads[read]
        assert prediction.reason == reason

    def test_citations_invalidate_system_and_messages(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """Turning citations on for a document read only the tools' entry."""
        tracked = Tracked(client, emulator)

        def body(cite: bool) -> dict[str, Any]:
            document = {
                "type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": words(200, "d")},
                "citations": {"enabled": cite},
            }
            messages = [
                {"role": "user", "content": [document, marked({"type": "text", "text": "q"})]}
            ]
            return {**self._body(), "messages": messages}

        first, _ = tracked.send(body(False))
        prediction, message = tracked.send(body(True))
        assert message.usage.cache_read_input_tokens == first.fingerprint.tokens[0]
        assert prediction.reason == "system_changed"


class TestThinking:
    """On models that strip earlier thinking, a plain user turn drops it from the prompt."""

    def _conversation(
        self, client: anthropic.Anthropic, tracked: Tracked, model: str
    ) -> tuple[Any, Any, int]:
        thinking = {"type": "enabled", "budget_tokens": 1024}
        base = {
            "model": model,
            "max_tokens": 2048,
            "system": system(5000),
            "thinking": thinking,
            "tools": TOOLS,
            "tool_choice": {"type": "auto"},
        }
        messages: list[dict[str, Any]] = [{"role": "user", "content": "look it up"}]
        _, first = tracked.send({**base, "messages": last_marked(messages)})
        thought = next(b for b in first.content if b.type == "thinking")
        use = {"type": "tool_use", "id": "toolu_01", "name": "lookup", "input": {"w": "x"}}
        messages += [
            {"role": "assistant", "content": [thought.model_dump(exclude_unset=True), use]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "ok"}],
            },
        ]
        # The tool result keeps the current turn's thinking: its entry includes it.
        tool_turn, _second = tracked.send({**base, "messages": last_marked(messages)})
        messages += [
            {"role": "assistant", "content": [{"type": "text", "text": "found it"}]},
            {"role": "user", "content": "and now?"},
        ]
        prediction, third = tracked.send({**base, "messages": last_marked(messages)})
        return tool_turn, (prediction, third), tokens.estimate(thought.thinking)

    def test_stripping_changes_usage_and_cache(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """Haiku 4.5: the plain turn reads only the entry before the thinking, and the 24
        thinking tokens are no longer input; Sonnet 4.6 keeps them and reads the whole
        tool turn's entry."""
        for model, strips in ((HAIKU, True), (SONNET, False)):
            emulator.reset()
            tracked = Tracked(client, emulator)
            tool_turn, (prediction, third), thought = self._conversation(client, tracked, model)
            assert thought == 24
            u = Usage.from_message(third)
            before_tool_turn = tool_turn.fingerprint.tokens[tool_turn.hit]
            tool_entry = tool_turn.total_input
            added = tokens.estimate("found it") + tokens.estimate("and now?")
            if strips:
                assert u.cache_read == before_tool_turn
                assert u.total_input == tool_entry + added - thought
                assert prediction.reason == "messages_changed"
            else:
                assert u.cache_read == tool_entry
                assert u.total_input == tool_entry + added
                assert prediction.reason == "hit"

    def test_count_tokens_leaves_stripped_thinking_out(self, client: anthropic.Anthropic) -> None:
        """count_tokens after a plain turn: Haiku 4.5 leaves the earlier thinking out,
        Sonnet 4.6 counts it."""
        thought = {"type": "thinking", "thinking": words(30, "t"), "signature": "sig"}
        messages = [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [thought, {"type": "text", "text": "a"}]},
            {"role": "user", "content": "next"},
        ]
        counts = {
            model: client.messages.count_tokens(model=model, messages=messages).input_tokens  # type: ignore[arg-type]
            for model in (HAIKU, SONNET)
        }
        assert counts == {HAIKU: 3, SONNET: 33}

    def test_thinking_blocks_stream_and_cannot_carry_cache_control(
        self, client: anthropic.Anthropic
    ) -> None:
        """A streamed thinking reply arrives as thinking and signature deltas; a
        cache_control on a thinking block is a 400."""
        body = {
            "model": SONNET,
            "max_tokens": 2048,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": HI,
        }
        with client.messages.stream(**body) as stream:
            final = stream.get_final_message()
        assert [b.type for b in final.content] == ["thinking", "text"]
        assert final.usage.output_tokens == 48
        thought = final.content[0].model_dump(exclude_unset=True)
        messages = [*HI, {"role": "assistant", "content": [marked(thought)]}, *HI]
        with pytest.raises(anthropic.BadRequestError, match="thinking"):
            client.messages.create(**{**body, "messages": messages})


class TestKeyOrder:
    """Blocks are hashed with their keys in the order sent."""

    def test_reordered_tool_use_input_misses_and_is_named_first(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """The same tool_use input with its keys swapped reads only the system entry;
        convo says messages_changed (message 1) before sending."""
        tracked = Tracked(client, emulator)
        use = {"type": "tool_use", "id": "toolu_01", "name": "lookup", "input": {"a": 1, "b": 2}}
        result = {"type": "tool_result", "tool_use_id": "toolu_01", "content": "ok"}

        def body(tool_use: dict[str, Any]) -> dict[str, Any]:
            messages = [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": [tool_use]},
                {"role": "user", "content": [marked(result)]},
            ]
            return {"model": SONNET, "max_tokens": 8, "system": system(1100), "messages": messages}

        tracked.send(body(use))
        _same, message = tracked.send(body(use))
        assert message.usage.input_tokens == 0
        swapped = {**use, "input": {"b": 2, "a": 1}}
        prediction = tracked.tracker.predict(body(swapped))
        assert (prediction.reason, prediction.message_index) == ("messages_changed", 1)
        assert prediction.cache_read == 1100
        _, message = tracked.send(body(swapped))
        assert message.usage.cache_read_input_tokens == 1100

    def test_reordered_tool_schema_is_tools_changed(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """A tool schema with keys in another order reads nothing: tools_changed."""
        tracked = Tracked(client, emulator)
        tool = {
            "name": "lookup",
            "description": words(1100, "t"),
            "input_schema": {"type": "object", "properties": {}},
        }
        reordered = {
            "input_schema": tool["input_schema"],
            "name": "lookup",
            "description": tool["description"],
        }
        for definition, read, reason in (
            (tool, 0, "cold"),
            (tool, -1, "hit"),
            (reordered, 0, "tools_changed"),
        ):
            body = {"model": SONNET, "max_tokens": 8, "tools": [marked(definition)], "messages": HI}
            prediction, message = tracked.send(body)
            assert prediction.reason == reason
            if read >= 0:
                assert message.usage.cache_read_input_tokens == read


class TestRefreshRule:
    """What a read refreshes: the whole path ("path", default) or the entry read ("entry")."""

    @pytest.mark.parametrize("rule", ["path", "entry"])
    def test_two_sessions_on_one_prefix(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, rule: str
    ) -> None:
        """A at t=0 writes a 5,600-token prefix and its turn; A at t=100 reads deeper; B at
        t=350: under "path" the prefix lives until 400 and B reads 5,600; under "entry" it
        expired at 300 and B reads 0. The tracker predicts both."""
        emulator.configure({"refresh": rule})
        tracked = Tracked(client, emulator, refresh=rule)
        base = {"model": SONNET, "max_tokens": 8, "system": system(5600)}
        a = [{"role": "user", "content": [marked({"type": "text", "text": words(30, "a")})]}]
        _, first = tracked.send({**base, "messages": a})
        assert four(first) == (0, 0, 5630, 0)
        emulator.advance(100)
        a2 = [
            {"role": "user", "content": [{"type": "text", "text": words(30, "a")}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [marked({"type": "text", "text": "more"})]},
        ]
        _, second = tracked.send({**base, "messages": a2})
        assert second.usage.cache_read_input_tokens == 5630
        emulator.advance(250)
        b = [{"role": "user", "content": [marked({"type": "text", "text": words(30, "b")})]}]
        prediction, third = tracked.send({**base, "messages": b}, previous=None)
        expected = 5600 if rule == "path" else 0
        assert third.usage.cache_read_input_tokens == prediction.cache_read == expected
        assert prediction.reason == ("hit" if rule == "path" else "expired")


class TestStreams:
    """One message_delta by default; several (cumulative) when configured."""

    def test_one_message_delta_by_default(self, client: anthropic.Anthropic) -> None:
        """A normal stream carries exactly one message_delta with the final usage."""
        events = list(client.messages.create(model=SONNET, max_tokens=50, messages=HI, stream=True))
        deltas = [e for e in events if e.type == "message_delta"]
        assert len(deltas) == 1
        assert deltas[0].usage.output_tokens == 24

    def test_several_cumulative_deltas_when_configured(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """message_deltas=3: 8, 16, 24 output tokens; the SDK's final message says 24."""
        emulator.configure({"message_deltas": 3})
        events = list(client.messages.create(model=SONNET, max_tokens=50, messages=HI, stream=True))
        assert [e.usage.output_tokens for e in events if e.type == "message_delta"] == [8, 16, 24]
        with client.messages.stream(model=SONNET, max_tokens=50, messages=HI) as stream:
            assert stream.get_final_message().usage.output_tokens == 24


class TestStopSequences:
    """A requested stop sequence that the reply would generate ends it there."""

    def test_sequence_asked_for_ends_the_reply(self, client: anthropic.Anthropic) -> None:
        """The user turn contains "###": the reply stops halfway, stop_reason stop_sequence."""
        ask = {"model": SONNET, "max_tokens": 50, "stop_sequences": ["###"]}
        messages = [{"role": "user", "content": "answer, then write ### and stop"}]
        message = client.messages.create(**ask, messages=messages)
        assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "###")
        assert message.usage.output_tokens == 12
        with client.messages.stream(**ask, messages=messages) as stream:
            final = stream.get_final_message()
        assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "###")
        assert final.content[0].text == message.content[0].text  # type: ignore[union-attr]

    def test_generated_word_ends_the_reply(self, client: anthropic.Anthropic) -> None:
        """A sequence that occurs in the generated text cuts the text before it."""
        full = client.messages.create(model=SONNET, max_tokens=50, messages=HI)
        text = full.content[0].text  # type: ignore[union-attr]
        word = text.split(" ")[5]
        message = client.messages.create(
            model=SONNET, max_tokens=50, messages=HI, stop_sequences=[f" {word} "]
        )
        assert message.stop_reason == "stop_sequence"
        kept = message.content[0].text  # type: ignore[union-attr]
        assert text.startswith(kept)
        assert f" {word} " not in kept
        assert f" {word} " in text


def _stream(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=SONNET, max_tokens=50, system=system(1100), messages=HI) as s:
        for _ in s:
            pass


class TestCutStreamBilling:
    """A cut stream bills message_start's input side and the output delivered (plan.md)."""

    @pytest.mark.parametrize(
        ("fault", "output", "written"),
        [
            ({"kind": "stream_error_before_text"}, 0, 1100),
            ({"kind": "stream_drop_before_text"}, 0, 1100),
            ({"kind": "stream_error"}, 4, 1100),  # the first delta: four words
            ({"kind": "stream_drop"}, 4, 1100),
            ({"kind": "stream_error", "after_events": 0}, None, 0),  # before message_start
            ({"kind": "stream_drop", "after_events": 5}, 8, 1100),  # two deltas
        ],
        ids=[
            "error-before-text",
            "drop-before-text",
            "error-after-text",
            "drop-after-text",
            "before-message-start",
            "drop-after-two-deltas",
        ],
    )
    def test_billed_tokens(
        self,
        emulator: RunningEmulator,
        client: anthropic.Anthropic,
        fault: dict[str, Any],
        output: int | None,
        written: int,
    ) -> None:
        """Stats count the input side in full (1 + 1,100 written) and the output delivered;
        a stream cut before message_start bills nothing and writes nothing."""
        emulator.configure({"faults": {"script": [fault]}})
        with pytest.raises((anthropic.APIError, httpx2.HTTPError)):
            _stream(client)
        billed = emulator.stats()["tokens"]
        expected_input = 1 if output is not None else 0
        assert billed == {
            "input": expected_input,
            "cache_read": 0,
            "cache_write_5m": written,
            "cache_write_1h": 0,
            "output": output or 0,
        }
        retry = client.messages.create(model=SONNET, max_tokens=8, system=system(1100), messages=HI)
        assert retry.usage.cache_read_input_tokens == written

    def test_cut_after_a_message_delta_bills_its_output(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """With two cumulative deltas, a cut after the first bills its 12 output tokens."""
        emulator.configure({"message_deltas": 2})
        events = list(client.messages.create(model=SONNET, max_tokens=50, messages=HI, stream=True))
        names = ["ping" if i == 1 else e.type for i, e in enumerate(events)]
        emulator.reset()
        # The SDK hides pings: count it back in to place the cut just after the first delta.
        after = names.index("message_delta") + 2
        emulator.configure(
            {
                "message_deltas": 2,
                "faults": {"script": [{"kind": "stream_drop", "after_events": after}]},
            }
        )
        with pytest.raises((anthropic.APIError, httpx2.HTTPError)):
            list(client.messages.create(model=SONNET, max_tokens=50, messages=HI, stream=True))
        assert emulator.stats()["tokens"]["output"] == 12

    def test_non_streaming_drop_bills_nothing(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """A dropped connection without a response bills nothing and writes nothing."""
        emulator.configure({"faults": {"script": ["drop"]}})
        with pytest.raises(anthropic.APIConnectionError):
            client.messages.create(model=SONNET, max_tokens=8, system=system(1100), messages=HI)
        assert set(emulator.stats()["tokens"].values()) == {0}


class TestSystemMessages:
    """Mid-conversation system messages, on the models the docs name (Opus 4.8)."""

    OPUS = "claude-opus-4-8"

    def test_appended_system_message_keeps_the_cache(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """Adding {"role": "system"} after the cached turn still reads the whole turn."""
        tracked = Tracked(client, emulator)
        turn = [{"role": "user", "content": [marked({"type": "text", "text": words(40, "u")})]}]
        base = {"model": self.OPUS, "max_tokens": 8, "system": system(1100)}
        _, _first = tracked.send({**base, "messages": turn})
        more = [*turn, {"role": "system", "content": "Answer in French from now on."}]
        prediction, message = tracked.send({**base, "messages": more})
        assert message.usage.cache_read_input_tokens == prediction.cache_read == 1140
        assert message.usage.input_tokens == tokens.estimate("Answer in French from now on.")

    @pytest.mark.parametrize(
        ("model", "messages", "fragment"),
        [
            (SONNET, [*HI, {"role": "system", "content": "x"}], "not supported"),
            ("claude-opus-4-8", [{"role": "system", "content": "x"}, *HI], "first"),
            (
                "claude-opus-4-8",
                [
                    *HI,
                    {
                        "role": "system",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    # A valid image, so only the system rule can refuse it.
                                    "data": ONE_PIXEL_PNG,
                                },
                            }
                        ],
                    },
                ],
                "text blocks only",
            ),
            (
                "claude-opus-4-8",
                [*HI, {"role": "system", "content": "x"}, {"role": "user", "content": "y"}],
                "followed by an assistant",
            ),
        ],
        ids=["other-model", "first", "not-text", "before-user"],
    )
    def test_refused_where_the_docs_refuse_it(
        self, client: anthropic.Anthropic, model: str, messages: list[Any], fragment: str
    ) -> None:
        """Other models, a first position, non-text content, a user turn after: 400."""
        with pytest.raises(anthropic.BadRequestError, match=fragment):
            client.messages.create(model=model, max_tokens=8, messages=messages)

"""The limits the API enforces before it runs anything, as one pure check (no emulator)."""

from __future__ import annotations

import base64
import json
import typing
from typing import Any

import anthropic
import anthropic.types
import anthropic.types.beta
import pytest
from anthropic import _constants as sdk_constants
from hypothesis import given, settings
from hypothesis import strategies as st

from convo import models, tokens
from convo.request_rules import (
    CONTENT_BLOCK_TYPES,
    MAX_BODY_BYTES,
    MAX_IMAGE_BYTES,
    NONSTREAMING_MAX_TOKENS,
    TOOL_RESULT_BLOCK_TYPES,
    RequestChecker,
    RequestRejected,
    Violation,
    check_request,
    first_violation,
    needs_streaming,
)
from convo.request_rules.sizes import bounds as request_bounds

SONNET_46 = "claude-sonnet-4-6"
HI = [{"role": "user", "content": "hi"}]

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 24
GIF = b"GIF89a" + b"\x00" * 24
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 16


def png(width: int, height: int) -> bytes:
    header = b"\x00\x00\x00\rIHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return b"\x89PNG\r\n\x1a\n" + header + bytes(8)


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + width.to_bytes(2, "little") + height.to_bytes(2, "little") + bytes(8)


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0\x00\x10JFIF\x00" + bytes(9)
    sof0 = b"\xff\xc0\x00\x11\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return b"\xff\xd8" + app0 + sof0 + bytes(12)


def webp(width: int, height: int, kind: str) -> bytes:
    if kind == "VP8X":
        body = bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    elif kind == "VP8 ":
        body = b"\x00\x00\x00\x9d\x01\x2a" + width.to_bytes(2, "little")
        body += height.to_bytes(2, "little")
    else:  # VP8L
        bits = (width - 1) | ((height - 1) << 14)
        body = b"\x2f" + bits.to_bytes(4, "little")
    chunk = kind.encode() + len(body).to_bytes(4, "little") + body
    return b"RIFF" + (4 + len(chunk)).to_bytes(4, "little") + b"WEBP" + chunk + bytes(8)


def request(model: str = SONNET_46, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 1024, "messages": HI, **extra}


def rule_of(body: dict[str, Any], **kwargs: Any) -> str | None:
    found = first_violation(body, **kwargs)
    return None if found is None else found.rule


def image(data: bytes | str, media_type: str = "image/png") -> dict[str, Any]:
    encoded = data if isinstance(data, str) else base64.b64encode(data).decode()
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": encoded},
    }


def plan_words(n: int) -> str:
    """Text of exactly *n* tokens by convo.tokens."""
    return " ".join(["plan"] * n)


def encoded_size(body: dict[str, Any]) -> int:
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())


class TestBodySize:
    """The encoded body is at most 32 MB (413 request_too_large)."""

    def test_over_32_mb_is_413(self) -> None:
        """A 33 MiB message answers 413 request_too_large with the encoded size."""
        body = request(messages=[{"role": "user", "content": "a" * (33 * 2**20)}])
        found = first_violation(body)
        assert found is not None
        assert (found.status, found.type, found.rule) == (
            413,
            "request_too_large",
            "body_too_large",
        )
        assert str(encoded_size(body)) in found.message

    def test_measured_on_the_encoded_bytes(self) -> None:
        """17 Mi two-byte characters are 34 MiB encoded: refused, though only 17 Mi long."""
        body = request(messages=[{"role": "user", "content": "é" * (17 * 2**20)}])
        assert rule_of(body, endpoint="count_tokens") == "body_too_large"

    def test_exactly_the_limit_passes_one_byte_more_does_not(self) -> None:
        """The limit is inclusive, measured as the SDK encodes (compact, UTF-8)."""
        body = request(messages=[{"role": "user", "content": ""}])
        pad = MAX_BODY_BYTES - encoded_size(body)
        body["messages"][0]["content"] = "a" * pad
        assert encoded_size(body) == MAX_BODY_BYTES
        assert rule_of(body, endpoint="count_tokens") is None
        body["messages"][0]["content"] += "a"
        assert rule_of(body, endpoint="count_tokens") == "body_too_large"

    def test_a_given_encoded_size_is_trusted(self) -> None:
        """The emulator passes the size of the bytes it received."""
        assert rule_of(request(), encoded_size=MAX_BODY_BYTES + 1) == "body_too_large"

    @settings(max_examples=150, deadline=None)
    @given(
        content=st.lists(
            st.one_of(
                st.builds(lambda t: {"type": "text", "text": t}, st.text(min_size=1)),
                st.builds(
                    lambda t, c: {"type": "text", "text": t, "cache_control": c},
                    st.text(min_size=1),
                    st.fixed_dictionaries({"type": st.just("ephemeral")}),
                ),
                st.builds(
                    lambda n, i: {"type": "tool_use", "id": "t1", "name": n, "input": i},
                    st.text(),
                    st.dictionaries(st.text(), st.text() | st.integers() | st.floats(-1e9, 1e9)),
                ),
                st.builds(
                    lambda t: {"type": "tool_result", "tool_use_id": "t1", "content": t},
                    st.text()
                    | st.lists(st.builds(lambda x: {"type": "text", "text": x}, st.text())),
                ),
                st.builds(
                    lambda t: {"type": "thinking", "thinking": t, "signature": "s"}, st.text()
                ),
                st.just(image(PNG)),
            ),
            min_size=1,
            max_size=6,
        ),
        system=st.none() | st.text(min_size=1),
        as_string=st.text(min_size=1),
    )
    def test_the_shortcut_bounds_are_upper_bounds(
        self, content: list[dict[str, Any]], system: str | None, as_string: str
    ) -> None:
        """The one-pass bounds never undercount the encoded bytes or the input tokens."""
        messages = [
            {"role": "user", "content": as_string},
            {"role": "assistant", "content": content},
        ]
        body = request(messages=messages, **({} if system is None else {"system": system}))
        bounds = request_bounds(body)
        assert bounds.size >= encoded_size(body)
        assert bounds.tokens >= tokens.request_tokens(messages=messages, system=system)
        assert bounds.images == sum(block["type"] == "image" for block in content)


class TestContextWindow:
    """Input beyond the model's context window is a 400."""

    def test_over_200k_on_haiku_45(self) -> None:
        """200,001 tokens on a 200k model: 'prompt is too long' with both numbers."""
        body = request(
            "claude-haiku-4-5", messages=[{"role": "user", "content": plan_words(200_001)}]
        )
        found = first_violation(body)
        assert found == Violation(
            400,
            "invalid_request_error",
            "prompt is too long: 200001 tokens > 200000 maximum",
            "context_window",
        )

    def test_exactly_the_window_passes(self) -> None:
        """200,000 tokens fit a 200k window."""
        body = request(
            "claude-haiku-4-5", messages=[{"role": "user", "content": plan_words(200_000)}]
        )
        assert first_violation(body) is None

    def test_1m_models_take_more(self) -> None:
        """Sonnet 4.6 (1M) takes 200,001 tokens and refuses 1,000,001."""
        body = request(messages=[{"role": "user", "content": plan_words(200_001)}])
        assert first_violation(body) is None
        assert rule_of(body, input_tokens=1_000_001) == "context_window"

    def test_long_context_beta_raises_sonnet_45(self) -> None:
        """context-1m-2025-08-07 gives Sonnet 4.5 a 1M window; without it, 200k."""
        body = request(
            "claude-sonnet-4-5", messages=[{"role": "user", "content": plan_words(200_001)}]
        )
        assert rule_of(body) == "context_window"
        assert rule_of(body, betas=[models.LONG_CONTEXT_BETA]) is None
        assert (
            rule_of(
                body,
                headers={
                    "anthropic-version": "2023-06-01",
                    "anthropic-beta": "a,context-1m-2025-08-07",
                },
            )
            is None
        )

    def test_counts_tools_system_and_images(self) -> None:
        """Every input counts: tool definitions, system, images at their flat estimate."""
        tool = {"name": "t", "input_schema": {"type": "object"}}
        text = plan_words(200_000 - tokens.block_tokens(tool) - tokens.IMAGE_TOKENS)
        messages = [{"role": "user", "content": [image(PNG), {"type": "text", "text": "go"}]}]
        body = request("claude-haiku-4-5", tools=[tool], system=text, messages=messages)
        assert tokens.request_tokens(messages=messages, system=text, tools=[tool]) == 200_001
        assert rule_of(body) == "context_window"

    def test_given_input_tokens_are_trusted(self) -> None:
        """A caller that already counted passes the count; nothing is recounted."""
        assert rule_of(request("claude-haiku-4-5"), input_tokens=200_001) == "context_window"


class TestBlocks:
    """Unknown content block types are 400s, wherever they sit."""

    def test_unknown_type_in_a_message(self) -> None:
        """The message names the position and the tag."""
        messages = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video"}]}]
        found = first_violation(request(messages=messages))
        assert found is not None
        assert found.rule == "unknown_block_type"
        assert found.message.startswith("messages.0.content.1: Input tag 'video'")

    def test_system_takes_text_only(self) -> None:
        """An image in the system prompt is refused."""
        assert rule_of(request(system=[image(PNG)])) == "unknown_block_type"

    def test_tool_result_content(self) -> None:
        """A tool result may hold text and images, not a tool_use."""
        ok = {"type": "tool_result", "tool_use_id": "t", "content": [image(PNG)]}
        bad = {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "tool_use"}]}
        assert rule_of(request(messages=[{"role": "user", "content": [ok]}])) is None
        assert (
            rule_of(request(messages=[{"role": "user", "content": [bad]}])) == "unknown_block_type"
        )

    @pytest.mark.parametrize("kind", sorted(CONTENT_BLOCK_TYPES))
    def test_every_known_type_passes(self, kind: str) -> None:
        """Known GA and beta types are not refused by this rule."""
        messages = [{"role": "user", "content": [{"type": kind}]}]
        assert rule_of(request(messages=messages)) != "unknown_block_type"

    def test_sdk_block_types_are_known(self) -> None:
        """Every type in the installed SDK's ContentBlockParam unions is known here."""

        def literals(annotation: Any) -> set[str]:
            if typing.get_origin(annotation) is typing.Literal:
                return set(typing.get_args(annotation))
            found: set[str] = set()
            for arg in typing.get_args(annotation):
                found |= literals(arg)
            return found

        def types_of(union: Any) -> set[str]:
            found: set[str] = set()
            for member in typing.get_args(union):
                if isinstance(member, type):
                    fields = getattr(member, "model_fields", None)  # a response model
                    hint = (
                        fields["type"].annotation
                        if fields
                        else typing.get_type_hints(member, include_extras=True)["type"]
                    )
                    found |= literals(hint)
                else:  # a nested (annotated) union of blocks
                    found |= types_of(member)
            return found

        assert types_of(anthropic.types.ContentBlockParam) <= CONTENT_BLOCK_TYPES
        assert types_of(anthropic.types.beta.BetaContentBlockParam) <= CONTENT_BLOCK_TYPES
        result_hints = typing.get_type_hints(anthropic.types.ToolResultBlockParam)
        inner = typing.get_args(typing.get_args(result_hints["content"])[1])[0]
        assert types_of(inner) <= TOOL_RESULT_BLOCK_TYPES

    def test_checked_messages_are_skipped(self) -> None:
        """Messages checked in an earlier turn are not walked again."""
        messages = [{"role": "user", "content": [{"type": "video"}]}, *HI]
        assert rule_of(request(messages=messages)) == "unknown_block_type"
        assert rule_of(request(messages=messages), checked_messages=1) is None


class TestImages:
    """Malformed images are 400s."""

    @pytest.mark.parametrize(
        ("data", "media_type"),
        [(PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp")],
        ids=["png", "jpeg", "gif", "webp"],
    )
    def test_each_supported_format_passes(self, data: bytes, media_type: str) -> None:
        """Bytes that are the claimed format pass."""
        assert (
            rule_of(request(messages=[{"role": "user", "content": [image(data, media_type)]}]))
            is None
        )

    @pytest.mark.parametrize(
        ("block", "fragment"),
        [
            (image("not base64!"), "invalid base64"),
            (image(PNG, "image/bmp"), "media_type: Input should be"),
            (image(PNG, "image/jpeg"), "does not match the provided media type image/jpeg"),
            (image(b"just some text"), "Could not process image"),
            ({"type": "image", "source": {"type": "s3", "data": "x"}}, "Input tag 's3'"),
            ({"type": "image"}, "source: Field required"),
            ({"type": "image", "source": {"type": "url"}}, "url: Field required"),
            (image(""), "data: Field required"),
            (image("A" * (MAX_IMAGE_BYTES + 4)), "image exceeds 10 MB maximum"),
        ],
        ids=[
            "bad-base64",
            "media-type",
            "mismatch",
            "not-an-image",
            "source-type",
            "no-source",
            "no-url",
            "empty",
            "over-10mb",
        ],
    )
    def test_malformed_images_are_400(self, block: dict[str, Any], fragment: str) -> None:
        """Each malformed image names the field, as the API does."""
        found = first_violation(request(messages=[{"role": "user", "content": [block]}]))
        assert found is not None
        assert found.status == 400
        assert found.rule in ("malformed_image", "image_too_large")
        assert fragment in found.message
        assert found.message.startswith("messages.0.content.0.image.source")

    @pytest.mark.parametrize(
        ("make", "media_type"),
        [
            (png, "image/png"),
            (gif, "image/gif"),
            (jpeg, "image/jpeg"),
            (lambda w, h: webp(w, h, "VP8X"), "image/webp"),
            (lambda w, h: webp(w, h, "VP8 "), "image/webp"),
            (lambda w, h: webp(w, h, "VP8L"), "image/webp"),
        ],
        ids=["png", "gif", "jpeg", "webp-vp8x", "webp-vp8", "webp-vp8l"],
    )
    def test_sides_up_to_8000_pixels(self, make: Any, media_type: str) -> None:
        """An 8000-pixel side passes; 8001 is refused with the API's message."""
        ok = image(make(8000, 600), media_type)
        assert rule_of(request(messages=[{"role": "user", "content": [ok]}])) is None
        tall = image(make(600, 8001), media_type)
        found = first_violation(request(messages=[{"role": "user", "content": [tall]}]))
        assert found is not None
        assert found.message == (
            "messages.0.content.0.image.source.base64.data: At least one of the image "
            "dimensions exceed max allowed size: 8000 pixels"
        )

    def test_more_than_20_images_are_held_to_2000_pixels(self) -> None:
        """With 21 images every one, earlier turns and tool results included, is <= 2000."""
        big = image(png(2001, 10))
        small = [image(png(100, 100)) for _ in range(19)]
        result = {"type": "tool_result", "tool_use_id": "t", "content": [image(png(10, 10))]}
        messages = [
            {"role": "user", "content": [big, {"type": "text", "text": "first"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [*small, result]},
        ]
        found = first_violation(request(messages=messages), checked_messages=2)
        assert found is not None
        assert found.message == (
            "messages.0.content.0.image.source.base64.data: At least one of the image "
            "dimensions exceed max allowed size for many-image requests: 2000 pixels"
        )
        messages[2]["content"] = small  # 20 images: the 8000-pixel limit again
        assert rule_of(request(messages=messages)) is None

    def test_images_in_tool_results_are_checked_with_their_path(self) -> None:
        """The path names the tool result, as the API's does."""
        result = {"type": "tool_result", "tool_use_id": "t", "content": [image("@@")]}
        found = first_violation(request(messages=[{"role": "user", "content": [result]}]))
        assert found is not None
        assert found.message.startswith(
            "messages.0.content.0.tool_result.content.0.image.source.base64"
        )

    @pytest.mark.parametrize(("model", "most"), [("claude-haiku-4-5", 100), (SONNET_46, 600)])
    def test_images_and_documents_per_request(self, model: str, most: int) -> None:
        """100 on 200k models, 600 on 1M models, images and PDFs together."""
        url = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
        pdf = {"type": "document", "source": {"type": "file", "file_id": "file_1"}}
        at_limit = [*[url] * (most - 1), pdf]
        assert rule_of(request(model, messages=[{"role": "user", "content": at_limit}])) is None
        over = [*at_limit, url]
        found = first_violation(request(model, messages=[{"role": "user", "content": over}]))
        assert found is not None
        assert found.message == f"too many images and documents: {most} + 1 > {most}"

    def test_url_and_file_sources_pass(self) -> None:
        """Images the server fetches itself are not inspected."""
        blocks = [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
        ]
        assert rule_of(request(messages=[{"role": "user", "content": blocks}])) is None


class TestMaxTokens:
    """max_tokens is accepted up to the model's documented maximum and refused above."""

    @pytest.mark.parametrize(
        ("model", "maximum"),
        [
            ("claude-sonnet-4-6", 128_000),
            ("claude-opus-4-6", 128_000),
            ("claude-opus-5", 128_000),
            ("claude-haiku-4-5", 64_000),
            ("claude-opus-4-1", 32_000),
            ("claude-3-5-haiku", 8_192),
        ],
    )
    def test_up_to_the_maximum(self, model: str, maximum: int) -> None:
        """The maximum itself passes; one more is a 400 naming both numbers."""
        assert rule_of(request(model, max_tokens=maximum)) is None
        found = first_violation(request(model, max_tokens=maximum + 1))
        assert found is not None
        assert found.rule == "max_tokens"
        assert found.message == (
            f"max_tokens: {maximum + 1} > {maximum}, which is the maximum allowed number of "
            f"output tokens for {model}"
        )

    def test_snapshot_ids_use_their_family(self) -> None:
        """A dated snapshot id has its family's limits."""
        assert rule_of(request("claude-opus-4-1-20250805", max_tokens=32_001)) == "max_tokens"

    def test_overrides_change_the_limit(self) -> None:
        """A model table with an override refuses by the overridden figure."""
        table = models.with_overrides({SONNET_46: {"max_output_tokens": 64_000}})
        assert rule_of(request(max_tokens=64_001), models=table) == "max_tokens"

    def test_unknown_models_are_left_to_the_api(self) -> None:
        """An unknown model gets no model rule here (the API answers 404)."""
        assert rule_of(request("claude-nope", max_tokens=10**9)) is None


class TestPrefill:
    """Assistant prefill is refused on the models that removed it."""

    PREFILL: typing.ClassVar[list[dict[str, Any]]] = [
        *HI,
        {"role": "assistant", "content": "Sure:"},
    ]

    @pytest.mark.parametrize(
        "model", ["claude-sonnet-4-6", "claude-opus-4-6", "claude-opus-4-7", "claude-opus-5"]
    )
    def test_refused_from_46_on(self, model: str) -> None:
        """A conversation ending with an assistant turn is a 400 on 4.6 and later."""
        found = first_violation(request(model, messages=self.PREFILL))
        assert found is not None
        assert found.rule == "prefill"
        assert "does not support assistant message prefill" in found.message

    def test_a_prewarm_is_not_a_prefill(self) -> None:
        """max_tokens 0 generates nothing: convo's keep-alive re-warm of a conversation that
        ends with the assistant's reply is not refused (undocumented; see docs)."""
        assert rule_of(request(messages=self.PREFILL, max_tokens=0)) is None

    @pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-opus-4-5", "claude-haiku-4-5"])
    def test_accepted_before_46(self, model: str) -> None:
        """Earlier models still take a prefill."""
        assert rule_of(request(model, messages=self.PREFILL)) is None


class TestSampling:
    """Sampling parameters the model does not accept are 400s."""

    def test_temperature_with_top_p(self) -> None:
        """4.1/4.5/4.6 models take one of temperature and top_p, not both."""
        both = {"temperature": 0.5, "top_p": 0.9}
        found = first_violation(request("claude-sonnet-4-5", **both))
        assert found is not None
        assert found.message.startswith("`temperature` and `top_p` cannot both be specified")
        assert rule_of(request("claude-sonnet-4-5", temperature=0.5)) is None
        assert rule_of(request("claude-sonnet-4-5", top_p=0.9)) is None
        assert rule_of(request("claude-sonnet-4", **both)) is None

    @pytest.mark.parametrize(
        ("extra", "refused"),
        [
            ({"temperature": 0.2}, True),
            ({"temperature": 1}, False),
            ({"top_p": 0.9}, True),
            ({"top_k": 5}, True),
            ({}, False),
        ],
    )
    def test_default_only_from_47(self, extra: dict[str, Any], refused: bool) -> None:
        """Opus 4.7 and later refuse non-default sampling parameters."""
        assert (rule_of(request("claude-opus-4-7", **extra)) == "sampling") is refused


class TestThinking:
    """Thinking budgets, modes and compatible settings."""

    def enabled(self, budget: int, **extra: Any) -> dict[str, Any]:
        return request(
            "claude-sonnet-4-5", thinking={"type": "enabled", "budget_tokens": budget}, **extra
        )

    def test_budget_at_least_1024(self) -> None:
        """1,023 is refused; 1,024 passes."""
        found = first_violation(self.enabled(1023))
        assert found is not None
        assert found.message == (
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        )
        assert rule_of(self.enabled(1024, max_tokens=2048)) is None

    def test_budget_below_max_tokens(self) -> None:
        """budget_tokens must be below max_tokens, unless interleaved thinking is on."""
        found = first_violation(self.enabled(2048, max_tokens=2048))
        assert found is not None
        assert found.message.startswith(
            "`max_tokens` must be greater than `thinking.budget_tokens`"
        )
        assert rule_of(self.enabled(2047, max_tokens=2048)) is None
        interleaved = ["interleaved-thinking-2025-05-14"]
        assert rule_of(self.enabled(4096, max_tokens=2048), betas=interleaved) is None

    def test_missing_budget(self) -> None:
        """type enabled without budget_tokens names the field."""
        body = request("claude-sonnet-4-5", thinking={"type": "enabled"})
        assert rule_of(body) == "thinking_budget"

    @pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "t"}])
    def test_forced_tool_choice(self, choice: dict[str, Any]) -> None:
        """Thinking with a forced tool choice is refused; auto passes."""
        tools = [{"name": "t", "input_schema": {"type": "object"}}]
        found = first_violation(
            self.enabled(1024, max_tokens=4096, tools=tools, tool_choice=choice)
        )
        assert found is not None
        assert found.message == "Thinking may not be enabled when tool_choice forces tool use."
        auto = self.enabled(1024, max_tokens=4096, tools=tools, tool_choice={"type": "auto"})
        assert rule_of(auto) is None

    def test_adaptive_with_forced_tool_choice(self) -> None:
        """Adaptive thinking is thinking too."""
        body = request(thinking={"type": "adaptive"}, tool_choice={"type": "any"})
        assert rule_of(body) == "thinking_tool_choice"

    @pytest.mark.parametrize(
        ("extra", "refused"),
        [
            ({"temperature": 0.7}, True),
            ({"temperature": 1}, False),
            ({"top_k": 40}, True),
            ({"top_p": 0.9}, True),
            ({"top_p": 0.95}, False),
        ],
    )
    def test_sampling_with_thinking(self, extra: dict[str, Any], refused: bool) -> None:
        """Thinking allows temperature 1, no top_k, and top_p from 0.95 to 1."""
        body = request(
            "claude-sonnet-4",
            max_tokens=4096,
            thinking={"type": "enabled", "budget_tokens": 1024},
            **extra,
        )
        assert (rule_of(body) == "thinking_sampling") is refused

    def test_manual_thinking_refused_from_47(self) -> None:
        """type enabled on Opus 4.7 is a 400 pointing to adaptive thinking."""
        found = first_violation(
            request("claude-opus-4-7", thinking={"type": "enabled", "budget_tokens": 1024})
        )
        assert found is not None
        assert found.message.startswith('"thinking.type.enabled" is not supported for this model.')
        assert "thinking.type.adaptive" in found.message
        assert rule_of(request("claude-opus-4-7", thinking={"type": "adaptive"})) is None

    def test_adaptive_needs_46(self) -> None:
        """Adaptive thinking before 4.6 is refused; on 4.6 both modes pass."""
        assert (
            rule_of(request("claude-sonnet-4-5", thinking={"type": "adaptive"})) == "thinking_type"
        )
        assert rule_of(request(thinking={"type": "adaptive"})) is None
        assert (
            rule_of(request(thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2000))
            is None
        )

    def test_no_thinking_on_haiku_35(self) -> None:
        """Haiku 3.5 has no thinking at all; disabled is always fine."""
        thinking = {"type": "enabled", "budget_tokens": 1024}
        assert (
            rule_of(request("claude-3-5-haiku", thinking=thinking, max_tokens=2000))
            == "thinking_type"
        )
        assert rule_of(request("claude-3-5-haiku", thinking={"type": "disabled"})) is None

    def test_prewarm_is_left_to_its_own_rule(self) -> None:
        """max_tokens 0 with thinking is the pre-warm rule's refusal, not the budget's."""
        assert rule_of(self.enabled(1024, max_tokens=0)) is None


class TestHeaders:
    """anthropic-version is required when headers are checked (the emulator)."""

    def test_missing_version(self) -> None:
        """No anthropic-version header: 400 naming it."""
        found = first_violation(request(), headers={"x-api-key": "k"})
        assert found == Violation(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
            "anthropic_version",
        )

    def test_present_in_any_case(self) -> None:
        """Header names are case-insensitive."""
        assert first_violation(request(), headers={"Anthropic-Version": "2023-06-01"}) is None


class TestCheckRequest:
    """The library's entry point raises before anything is sent."""

    def test_raises_a_value_error_with_the_api_facts(self) -> None:
        """RequestRejected is a ValueError carrying status, type and rule."""
        with pytest.raises(RequestRejected) as caught:
            check_request(request(max_tokens=128_001))
        assert isinstance(caught.value, ValueError)
        assert (caught.value.status, caught.value.type, caught.value.rule) == (
            400,
            "invalid_request_error",
            "max_tokens",
        )
        assert "128001 > 128000" in str(caught.value)

    def test_413_is_raised_too(self) -> None:
        """The body size rule raises with status 413."""
        with pytest.raises(RequestRejected) as caught:
            check_request(request(), encoded_size=MAX_BODY_BYTES + 1)
        assert caught.value.status == 413

    def test_a_good_request_passes(self) -> None:
        """Nothing is raised for a request the API accepts."""
        check_request(request(max_tokens=128_000))


class TestNeedsStreaming:
    """The SDK's 'Streaming is required' rule, mirrored exactly."""

    def test_copy_of_the_sdk_table(self) -> None:
        """The per-model limits equal the installed SDK's."""
        assert dict(NONSTREAMING_MAX_TOKENS) == sdk_constants.MODEL_NONSTREAMING_TOKENS

    def test_32000_on_sonnet_46_needs_streaming(self) -> None:
        """The issue's example: a valid but large max_tokens."""
        assert needs_streaming("claude-sonnet-4-6", 32_000)
        assert not needs_streaming("claude-sonnet-4-6", 21_333)
        assert needs_streaming("claude-sonnet-4-6", 21_334)

    @pytest.mark.parametrize(
        "model",
        ["claude-sonnet-4-6", "claude-opus-4-0", "claude-opus-4-1@20250805", "claude-opus-5"],
    )
    @pytest.mark.parametrize("max_tokens", [1, 8_192, 8_193, 21_333, 21_334, 64_000, 128_000])
    def test_agrees_with_the_sdk(self, model: str, max_tokens: int) -> None:
        """needs_streaming is True exactly when the SDK raises 'Streaming is required'."""
        client = anthropic.Anthropic(api_key="k")
        try:
            client._calculate_nonstreaming_timeout(
                max_tokens, sdk_constants.MODEL_NONSTREAMING_TOKENS.get(model)
            )
        except ValueError as exc:
            refused = "Streaming is required" in str(exc)
        else:
            refused = False
        finally:
            client.close()
        assert needs_streaming(model, max_tokens) is refused


class TestModelTable:
    """Every model carries its request limits with a source."""

    @pytest.mark.parametrize("info", list(models.MODELS.values()), ids=lambda m: m.id)
    def test_each_entry(self, info: models.ModelInfo) -> None:
        """A source page, a plausible window and output, known rule values."""
        assert info.limits_source
        assert info.context_window in (200_000, 1_000_000)
        assert 8_192 <= info.max_output_tokens <= 128_000
        assert info.sampling in models.SAMPLING_RULES
        assert set(info.thinking_types) <= {"enabled", "adaptive"}

    def test_overrides_from_json(self) -> None:
        """A JSON override (lists, strings) becomes a valid entry; a bad rule is refused."""
        table = models.with_overrides({"claude-opus-5": {"thinking_types": ["enabled"]}})
        assert table["claude-opus-5"].thinking_types == ("enabled",)
        with pytest.raises(ValueError, match="sampling"):
            models.with_overrides({"claude-opus-5": {"sampling": "some"}})


class TestRequestChecker:
    """The per-conversation checker walks only new messages and agrees with the plain check."""

    BLOCKS: typing.ClassVar[list[dict[str, Any]]] = [
        {"type": "text", "text": "plan the next step"},
        {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}},
        {"type": "hologram"},
        image(png(100, 100)),
        image(png(3000, 10)),
        image(png(9000, 10)),
        image("@@@"),
        {"type": "tool_result", "tool_use_id": "t", "content": [image(png(2500, 10))]},
    ]

    @settings(max_examples=80, deadline=None)
    @given(
        turns=st.lists(
            st.tuples(
                st.lists(st.integers(0, 7), min_size=1, max_size=4),
                st.integers(0, 12),  # how many copies of the 100-pixel image to add
                st.booleans(),  # whether to replace an earlier message by an equal new object
            ),
            min_size=1,
            max_size=6,
        ),
        model=st.sampled_from(["claude-haiku-4-5", SONNET_46]),
    )
    def test_agrees_with_first_violation(
        self, turns: list[tuple[list[int], int, bool]], model: str
    ) -> None:
        """Turn after turn (history shared, a message sometimes replaced; the unchanged
        count promised when it holds), the checker's verdict equals first_violation's."""
        checker = RequestChecker()
        history: list[dict[str, Any]] = []
        for picks, copies, replace in turns:
            unchanged: int | None = len(history)  # the caller's promise, when it holds
            content = [self.BLOCKS[i] for i in picks] + [self.BLOCKS[3]] * copies
            history.append({"role": "user", "content": content})
            if replace and len(history) > 1:
                history[0] = dict(history[0])
                unchanged = None
            body = request(model, messages=list(history))
            verdict = checker.first_violation(body, unchanged=unchanged)
            assert verdict == first_violation(body)
            history.append({"role": "assistant", "content": "ok"})

    def test_raises_like_check_request(self) -> None:
        """check raises RequestRejected with the same facts."""
        checker = RequestChecker()
        with pytest.raises(RequestRejected) as caught:
            checker.check(request(max_tokens=128_001))
        assert caught.value.rule == "max_tokens"
        checker.check(request())

    def test_reuses_what_it_has_seen(self) -> None:
        """A message object seen before is not walked again: changed in place (which the
        checker's contract forbids), it keeps its old verdict; as a new object, it is
        checked."""
        checker = RequestChecker()
        history: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "go on"},
        ]
        checker.check(request(messages=list(history)))
        history[0]["content"].append({"type": "hologram"})
        assert rule_of(request(messages=list(history))) == "unknown_block_type"
        assert checker.first_violation(request(messages=list(history))) is None
        history[0] = {"role": "user", "content": list(history[0]["content"])}
        found = checker.first_violation(request(messages=list(history)))
        assert found is not None
        assert found.rule == "unknown_block_type"


class TestRangesAndVersions:
    """Sampling values in range; a version header that is a date."""

    @pytest.mark.parametrize(
        ("extra", "message"),
        [
            ({"temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
            ({"temperature": -0.1}, "temperature: Input should be greater than or equal to 0"),
            ({"top_p": 2}, "top_p: Input should be less than or equal to 1"),
        ],
    )
    def test_out_of_range(self, extra: dict[str, Any], message: str) -> None:
        """temperature and top_p outside [0, 1] are refused on every model."""
        found = first_violation(request("claude-sonnet-4", **extra))
        assert found is not None
        assert (found.rule, found.message) == ("sampling_range", message)
        assert rule_of(request("claude-sonnet-4", temperature=0, top_p=1)) is None

    def test_version_must_be_a_date(self) -> None:
        """A doubled header (a proxy bug seen in the wild) is not a valid version."""
        found = first_violation(request(), headers={"anthropic-version": "2023-06-01, 2023-06-01"})
        assert found is not None
        assert found.message == 'anthropic-version: "2023-06-01, 2023-06-01" is not a valid version'
        assert first_violation(request(), headers={"anthropic-version": "2026-10-21"}) is None

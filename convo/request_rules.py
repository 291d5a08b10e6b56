"""The limits the Messages API enforces before it runs anything, as one pure check.

The emulator answers a request that breaks one of these rules with the API's error body; a
session calls :func:`check_request` before sending, so bad input gets a clear error and
costs nothing. Both go through :func:`first_violation`, so the two cannot drift apart.

Rules, checked in this order (the first one broken is reported):

1. The encoded body is at most :data:`MAX_BODY_BYTES` (32 MB): 413 ``request_too_large``.
2. The ``anthropic-version`` header is present (only when *headers* are given).
3. Every content block has a known ``type`` (system blocks: ``text``; ``tool_result``
   content: the types a tool result may carry); every image has a ``base64`` / ``url`` /
   ``file`` source, and a base64 image has a supported media type, at most 10 MB of data,
   valid base64, bytes that are the media type it claims, and sides of at most 8,000
   pixels (2,000 in a request of more than 20 images).
4. Model rules (skipped for a model the table does not know; the API answers 404 then):
   ``max_tokens`` at most the model's maximum output; the input within the context
   window; at most 100 or 600 images and documents; no assistant prefill on models that
   reject it (except a ``max_tokens: 0`` pre-warm); sampling parameters the model
   accepts; thinking: a ``thinking.type`` the model accepts, ``budget_tokens`` >= 1,024 and
   below ``max_tokens``, no forced ``tool_choice``, and ``temperature`` / ``top_k`` /
   ``top_p`` as thinking allows.

Each rule, its source page and its status are listed in ``docs/emulator.md`` ("Requests
refused before anything runs"). The per-model facts (context window, maximum output,
prefill, sampling, thinking types) are data on :class:`convo.models.ModelInfo`.

Nothing here does I/O; the checks walk the body once and count tokens only when a cheap
upper bound says the input might not fit.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import attrs

from convo import models as _models
from convo import tokens

__all__ = [
    "CONTENT_BLOCK_TYPES",
    "IMAGE_MEDIA_TYPES",
    "INTERLEAVED_THINKING_BETA",
    "MANY_IMAGES",
    "MAX_BODY_BYTES",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_SIDE",
    "MAX_IMAGE_SIDE_MANY",
    "MAX_MEDIA",
    "MAX_MEDIA_200K",
    "MIN_THINKING_BUDGET",
    "NONSTREAMING_MAX_TOKENS",
    "TOOL_RESULT_BLOCK_TYPES",
    "RequestRejected",
    "Violation",
    "check_request",
    "first_violation",
    "needs_streaming",
]

#: The Messages and Token Counting APIs' body limit (errors page, "Request size limits":
#: 32 MB, answered by Cloudflare with 413 ``request_too_large``). Read as MiB (32 x 2**20):
#: the page does not say which; if the API means 10**6, convo lets through up to 1.5 MB more
#: than it would, and never refuses a body the API accepts.
MAX_BODY_BYTES = 32 * 1024 * 1024

#: The largest base64 string of one image, measured on the base64 text. API answers quoted
#: in public reports said 5 MB (5,242,880) through May 2026 and 10 MB from July 2026; the
#: larger, current figure is used so that convo never refuses an image the API accepts.
MAX_IMAGE_BYTES = 10 * 1024 * 1024

#: The longest side of an image (vision page, "General limits").
MAX_IMAGE_SIDE = 8000

#: Above this many images in one request, every image in it is held to
#: :data:`MAX_IMAGE_SIDE_MANY` (vision page; images resent from earlier turns and images in
#: tool results count).
MANY_IMAGES = 20

#: The longest side of each image in a request of more than :data:`MANY_IMAGES` images.
MAX_IMAGE_SIDE_MANY = 2000

#: Images and documents per request: 100 on models with a 200k-token context window, 600
#: on the others (vision page, "General limits").
MAX_MEDIA_200K = 100
MAX_MEDIA = 600

#: The smallest ``thinking.budget_tokens`` (extended-thinking page).
MIN_THINKING_BUDGET = 1024

#: The beta under which ``budget_tokens`` may exceed ``max_tokens`` (interleaved thinking).
INTERLEAVED_THINKING_BETA = "interleaved-thinking-2025-05-14"

#: Media types a base64 image may have (vision page; the SDK's ``Base64ImageSourceParam``).
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")

#: Content block types a message may carry: the SDK's ``ContentBlockParam`` union plus the
#: beta ``BetaContentBlockParam`` additions (anthropic 2.14). Beta types are accepted
#: without their beta header: convo cannot tell which header unlocks which.
CONTENT_BLOCK_TYPES = frozenset(
    {
        "bash_code_execution_tool_result",
        "code_execution_tool_result",
        "container_upload",
        "document",
        "image",
        "redacted_thinking",
        "search_result",
        "server_tool_use",
        "text",
        "text_editor_code_execution_tool_result",
        "thinking",
        "tool_result",
        "tool_search_tool_result",
        "tool_use",
        "web_fetch_tool_result",
        "web_search_tool_result",
        # beta
        "advisor_tool_result",
        "compaction",
        "fallback",
        "mcp_tool_listing",
        "mcp_tool_result",
        "mcp_tool_use",
        "tool_addition",
        "tool_removal",
    }
)

#: Block types a ``tool_result``'s content list may carry (the SDK's ``ToolResultBlockParam``).
TOOL_RESULT_BLOCK_TYPES = frozenset(
    {"text", "image", "search_result", "document", "tool_reference", "browser_state"}
)

#: The SDK's ``MODEL_NONSTREAMING_TOKENS`` (anthropic 2.14, ``_constants.py``): model ids
#: whose non-streaming requests the SDK refuses above this ``max_tokens``. A test holds this
#: copy equal to the installed SDK's.
NONSTREAMING_MAX_TOKENS: Mapping[str, int] = {
    "claude-opus-4-20250514": 8_192,
    "claude-opus-4-0": 8_192,
    "claude-4-opus-20250514": 8_192,
    "anthropic.claude-opus-4-20250514-v1:0": 8_192,
    "claude-opus-4@20250514": 8_192,
    "anthropic.claude-opus-4-1-20250805-v1:0": 8_192,
    "claude-opus-4-1@20250805": 8_192,
}

_SYSTEM_BLOCK_TYPES = frozenset({"text"})
_IMAGE_SOURCES = ("base64", "file", "url")
_FORCED_TOOL_CHOICES = ("any", "tool")
_THINKING_DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
_SEE_THINKING = (
    "Please consult our documentation at "
    f"{_THINKING_DOCS}#important-considerations-when-using-extended-thinking"
)
# Leading bytes of each image format, for "the bytes are what the media type claims".
_SIGNATURES: tuple[tuple[str, bytes], ...] = (
    ("image/png", b"\x89PNG\r\n\x1a\n"),
    ("image/jpeg", b"\xff\xd8\xff"),
    ("image/gif", b"GIF87a"),
    ("image/gif", b"GIF89a"),
)


@attrs.frozen
class Violation:
    """The first rule a request breaks, as the API would answer it.

    Attributes:
        status: HTTP status (400, or 413 for the body size).
        type: The API's error type (``invalid_request_error``, ``request_too_large``).
        message: The error message, in the API's wording where it is known.
        rule: A short name for the rule (``body_too_large``, ``context_window``, ...), the
            key of its row in ``docs/emulator.md``.
    """

    status: int
    type: str
    message: str
    rule: str


class RequestRejected(ValueError):
    """A request the API would refuse before running it; raised by :func:`check_request`.

    A ``ValueError``: the request is wrong and sending it again cannot help. Nothing was
    sent and nothing was billed.

    Attributes:
        status: The HTTP status the API would answer (400 or 413).
        type: The API's error type.
        rule: Which rule (see :class:`Violation`).
        violation: The whole :class:`Violation`.
    """

    def __init__(self, violation: Violation) -> None:
        super().__init__(f"{violation.message} (the API would answer {violation.status})")
        self.violation = violation
        self.status = violation.status
        self.type = violation.type
        self.rule = violation.rule


def _invalid(rule: str, message: str) -> Violation:
    return Violation(400, "invalid_request_error", message, rule)


def _tags(names: Iterable[str]) -> str:
    return ", ".join(f"'{n}'" for n in sorted(names))


# -- structure -------------------------------------------------------------------------


def _image_violation(source: Any, where: str, max_side: int) -> Violation | None:
    if not isinstance(source, Mapping):
        return _invalid("malformed_image", f"{where}.source: Field required")
    kind = source.get("type")
    if kind not in _IMAGE_SOURCES:
        return _invalid(
            "malformed_image",
            f"{where}.source: Input tag '{kind}' found using 'type' does not match any of the "
            f"expected tags: {_tags(_IMAGE_SOURCES)}",
        )
    if kind != "base64":
        field = "url" if kind == "url" else "file_id"
        if not isinstance(source.get(field), str) or not source[field]:
            return _invalid("malformed_image", f"{where}.source.{kind}.{field}: Field required")
        return None
    media_type = source.get("media_type")
    if media_type not in IMAGE_MEDIA_TYPES:
        allowed = ", ".join(f"'{m}'" for m in IMAGE_MEDIA_TYPES[:-1])
        return _invalid(
            "malformed_image",
            f"{where}.source.base64.media_type: Input should be {allowed} or "
            f"'{IMAGE_MEDIA_TYPES[-1]}'",
        )
    data = source.get("data")
    if not isinstance(data, str) or not data:
        return _invalid("malformed_image", f"{where}.source.base64.data: Field required")
    if len(data) > MAX_IMAGE_BYTES:
        return _invalid(
            "image_too_large",
            f"{where}.source.base64: image exceeds {MAX_IMAGE_BYTES // 2**20} MB maximum: "
            f"{len(data)} bytes > {MAX_IMAGE_BYTES} bytes",
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return _invalid("malformed_image", f"{where}.source.base64.data: invalid base64 data")
    actual = _image_format(raw)
    if actual is None:
        return _invalid("malformed_image", f"{where}.source.base64.data: Could not process image")
    if actual != media_type:
        return _invalid(
            "malformed_image",
            f"{where}.source.base64.data: Image does not match the provided media type "
            f"{media_type}",
        )
    size = _image_dimensions(raw)
    if size is not None and max(size) > max_side:
        many = " for many-image requests" if max_side < MAX_IMAGE_SIDE else ""
        return _invalid(
            "image_dimensions",
            f"{where}.source.base64.data: At least one of the image dimensions exceed max "
            f"allowed size{many}: {max_side} pixels",
        )
    return None


def _image_format(raw: bytes) -> str | None:
    for media_type, signature in _SIGNATURES:
        if raw.startswith(signature):
            return media_type
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    return None


def _le(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def _be(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _image_dimensions(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from an image's header, or ``None`` when the header is not read
    (then no dimension rule is applied: convo never refuses what it cannot measure)."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n") and raw[12:16] == b"IHDR" and len(raw) >= 24:
        return _be(raw[16:20]), _be(raw[20:24])
    if raw[:6] in (b"GIF87a", b"GIF89a") and len(raw) >= 10:
        return _le(raw[6:8]), _le(raw[8:10])
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP" and len(raw) >= 30:
        chunk = raw[12:16]
        if chunk == b"VP8X":  # extended: 24-bit canvas width - 1, height - 1
            return 1 + _le(raw[24:27]), 1 + _le(raw[27:30])
        if chunk == b"VP8 ":  # lossy: 14-bit sizes after the frame tag and start code
            return _le(raw[26:28]) & 0x3FFF, _le(raw[28:30]) & 0x3FFF
        if chunk == b"VP8L":  # lossless: 14 bits each, minus one, after the signature byte
            bits = _le(raw[21:25])
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return None
    if raw.startswith(b"\xff\xd8"):  # JPEG: walk the segments to the first frame header
        i = 2
        while i + 9 <= len(raw) and raw[i] == 0xFF:
            marker = raw[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
                i += 2
                continue
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return _be(raw[i + 7 : i + 9]), _be(raw[i + 5 : i + 7])
            i += 2 + _be(raw[i + 2 : i + 4])
    return None


def _blocks_violation(
    content: Any,
    where: str,
    allowed: frozenset[str],
    max_side: int,
    *,
    nested: bool = False,
) -> Violation | None:
    """Check a list of content blocks; strings and shapes the parser refuses pass here."""
    if not isinstance(content, list):
        return None
    for i, block in enumerate(content):
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if not isinstance(kind, str):
            continue
        here = f"{where}.{i}"
        if kind not in allowed:
            return _invalid(
                "unknown_block_type",
                f"{here}: Input tag '{kind}' found using 'type' does not match any of the "
                f"expected tags: {_tags(allowed)}",
            )
        if kind == "image":
            found = _image_violation(block.get("source"), f"{here}.image", max_side)
        elif kind == "tool_result" and not nested:
            found = _blocks_violation(
                block.get("content"),
                f"{here}.tool_result.content",
                TOOL_RESULT_BLOCK_TYPES,
                max_side,
                nested=True,
            )
        else:
            found = None
        if found is not None:
            return found
    return None


def _structure_violation(
    body: Mapping[str, Any], checked_messages: int, max_side: int
) -> Violation | None:
    found = _blocks_violation(body.get("system"), "system", _SYSTEM_BLOCK_TYPES, max_side)
    if found is not None:
        return found
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for m in range(max(0, checked_messages), len(messages)):
        message = messages[m]
        if isinstance(message, Mapping):
            found = _blocks_violation(
                message.get("content"), f"messages.{m}.content", CONTENT_BLOCK_TYPES, max_side
            )
            if found is not None:
                return found
    return None


# -- sizes -----------------------------------------------------------------------------


def _bound(value: Any) -> int:
    """An upper bound on *value*'s encoded JSON size, in bytes (and in characters).

    A string costs at most 6 bytes a character (``\\uXXXX``) plus its quotes; a number,
    boolean or null at most 32.
    """
    if isinstance(value, str):
        return 6 * len(value) + 2
    if isinstance(value, Mapping):
        return 2 + sum(_bound(item) + 6 * len(str(key)) + 4 for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return 2 + sum(_bound(item) + 1 for item in value)
    return 32


def _text_bound(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(str(value))


def _content_token_bound(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(_block_token_bound(block) for block in content)
    return _bound(content)


def _block_token_bound(block: Any) -> int:
    """An upper bound on :func:`convo.tokens.block_tokens`, without counting.

    It follows ``block_tokens`` case by case: :func:`convo.tokens.estimate` never gives a
    character more than one token, so a text is bounded by its length; what is counted as
    canonical JSON is bounded by :func:`_bound`; images and binary documents count their
    flat ``IMAGE_TOKENS``.
    """
    if isinstance(block, str):
        return len(block)
    if not isinstance(block, Mapping):
        return _bound(block)
    kind = block.get("type")
    if kind == "text":
        return _text_bound(block.get("text", ""))
    if kind == "thinking":
        return _text_bound(block.get("thinking", ""))
    if kind == "redacted_thinking":
        return _text_bound(block.get("data", ""))
    if kind == "image":
        return tokens.IMAGE_TOKENS
    if kind == "document":
        source = block.get("source") or {}
        if isinstance(source, Mapping) and source.get("type") == "text":
            return _text_bound(source.get("data", ""))
        if isinstance(source, Mapping) and source.get("type") == "content":
            return _content_token_bound(source.get("content"))
        return tokens.IMAGE_TOKENS
    if kind == "tool_use":
        return _text_bound(block.get("name", "")) + _bound(block.get("input", {}))
    if kind == "tool_result":
        return _content_token_bound(block.get("content"))
    return _bound(block)


_TEXT_KEYS = frozenset({"type", "text", "cache_control"})


class _Bounds(NamedTuple):
    size: int  # bytes, upper bound
    tokens: int  # input tokens by convo.tokens, upper bound
    images: int  # image blocks, exact
    documents: int  # binary (PDF) document blocks, exact


def _media(block: Mapping[str, Any]) -> tuple[int, int]:
    """(images, binary documents) in one message block, tool results included."""
    kind = block.get("type")
    if kind == "image":
        return 1, 0
    if kind == "document":
        source = block.get("source")
        binary = isinstance(source, Mapping) and source.get("type") in _IMAGE_SOURCES
        return 0, int(binary)
    if kind == "tool_result" and isinstance(block.get("content"), list):
        images = documents = 0
        for inner in block["content"]:
            if isinstance(inner, Mapping):
                more_images, more_documents = _media(inner)
                images += more_images
                documents += more_documents
        return images, documents
    return 0, 0


def _bounds(body: Mapping[str, Any]) -> _Bounds:
    """Bounds on the encoded body's bytes and its input tokens; its images and documents.

    One pass; a plain text block (the bulk of a long history) costs O(1).
    """
    size = 0
    for key, value in body.items():
        if key != "messages":
            size += _bound(value) + 6 * len(key) + 4
    tokens_bound = sum(_bound(tool) for tool in body.get("tools") or ())
    tokens_bound += _content_token_bound(body.get("system"))
    images = documents = 0
    messages = body.get("messages")
    if not isinstance(messages, list):
        return _Bounds(size + _bound(messages) + 16, tokens_bound, 0, 0)
    size += 16 + len(messages)
    for message in messages:
        if not isinstance(message, Mapping):
            size += _bound(message)
            continue
        size += 2
        for key, value in message.items():
            size += 6 * len(key) + 4
            if key != "content":
                size += _bound(value)
            elif isinstance(value, str):
                size += 6 * len(value) + 2
                tokens_bound += len(value)
            elif isinstance(value, list):
                size += 2 + len(value)
                for block in value:
                    text = block.get("text") if isinstance(block, Mapping) else None
                    if (
                        isinstance(text, str)
                        and block.get("type") == "text"
                        and block.keys() <= _TEXT_KEYS
                    ):
                        size += 6 * len(text) + 40 + _bound(block.get("cache_control"))
                        tokens_bound += len(text)
                        continue
                    size += _bound(block)
                    tokens_bound += _block_token_bound(block)
                    if isinstance(block, Mapping):
                        more_images, more_documents = _media(block)
                        images += more_images
                        documents += more_documents
            else:
                size += _bound(value)
                tokens_bound += _content_token_bound(value)
    return _Bounds(size + 2, tokens_bound, images, documents)


def _encoded_size(body: Mapping[str, Any]) -> int | None:
    """The body's size as the SDK encodes it (compact, UTF-8, ``ensure_ascii=False``)."""
    try:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return None  # not JSON: the SDK refuses it itself
    return len(text.encode("utf-8"))


def _input_tokens(body: Mapping[str, Any]) -> int | None:
    try:
        return tokens.request_tokens(
            messages=body.get("messages") or [],
            system=body.get("system"),
            tools=body.get("tools"),
        )
    except (AttributeError, TypeError):
        return None  # malformed: the parser (or the API) refuses it with its own message


# -- model rules -----------------------------------------------------------------------


def _present(body: Mapping[str, Any], name: str) -> bool:
    return body.get(name) is not None


def _sampling_violation(body: Mapping[str, Any], model: _models.ModelInfo) -> Violation | None:
    if model.sampling == "default_only":
        temperature = body.get("temperature")
        if temperature is not None and temperature != 1:
            return _invalid("sampling", "`temperature` is deprecated for this model.")
        for name in ("top_p", "top_k"):
            if _present(body, name):
                return _invalid("sampling", f"`{name}` is deprecated for this model.")
    if (
        model.sampling == "temperature_or_top_p"
        and _present(body, "temperature")
        and _present(body, "top_p")
    ):
        return _invalid(
            "sampling",
            "`temperature` and `top_p` cannot both be specified for this model. "
            "Please use only one.",
        )
    return None


def _thinking_violation(
    body: Mapping[str, Any], model: _models.ModelInfo, max_tokens: int | None, betas: Sequence[str]
) -> Violation | None:
    thinking = body.get("thinking")
    if not isinstance(thinking, Mapping):
        return None
    kind = thinking.get("type")
    if not isinstance(kind, str) or kind == "disabled":
        return None
    if kind not in model.thinking_types:
        hint = (
            ' Use "thinking.type.adaptive" and "output_config.effort" to control thinking behavior.'
            if "adaptive" in model.thinking_types
            else ""
        )
        return _invalid(
            "thinking_type", f'"thinking.type.{kind}" is not supported for this model.{hint}'
        )
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            return _invalid("thinking_budget", "thinking.enabled.budget_tokens: Field required")
        if budget < MIN_THINKING_BUDGET:
            return _invalid(
                "thinking_budget",
                "thinking.enabled.budget_tokens: Input should be greater than or equal to "
                f"{MIN_THINKING_BUDGET}",
            )
        # max_tokens 0 is a cache pre-warm, refused with thinking by its own rule.
        if max_tokens and budget >= max_tokens and INTERLEAVED_THINKING_BETA not in betas:
            return _invalid(
                "thinking_budget",
                "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                f"documentation at {_THINKING_DOCS}#max-tokens-and-context-window-size",
            )
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping) and choice.get("type") in _FORCED_TOOL_CHOICES:
        return _invalid(
            "thinking_tool_choice", "Thinking may not be enabled when tool_choice forces tool use."
        )
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        mode = "enabled" if kind == "enabled" else "enabled or in adaptive mode"
        return _invalid(
            "thinking_sampling",
            f"`temperature` may only be set to 1 when thinking is {mode}. {_SEE_THINKING}",
        )
    if _present(body, "top_k"):
        return _invalid(
            "thinking_sampling", f"`top_k` must be unset when thinking is enabled. {_SEE_THINKING}"
        )
    top_p = body.get("top_p")
    if isinstance(top_p, (int, float)) and not 0.95 <= top_p <= 1:
        return _invalid(
            "thinking_sampling",
            "`top_p` must be greater than or equal to 0.95 or unset when thinking is enabled.",
        )
    return None


def _model_violation(
    body: Mapping[str, Any],
    model: _models.ModelInfo,
    *,
    input_tokens: int | None,
    media: tuple[int, int],
    betas: Sequence[str],
) -> Violation | None:
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        max_tokens = None  # missing or malformed: the parser names the field
    if max_tokens is not None and max_tokens > model.max_output_tokens:
        return _invalid(
            "max_tokens",
            f"max_tokens: {max_tokens} > {model.max_output_tokens}, which is the maximum allowed "
            f"number of output tokens for {model.id}",
        )

    window = model.context_window
    if model.long_context_beta is not None and model.long_context_beta in betas:
        window = max(window, 1_000_000)
    if input_tokens is None:
        input_tokens = _input_tokens(body)
    if input_tokens is not None and input_tokens > window:
        return _invalid(
            "context_window", f"prompt is too long: {input_tokens} tokens > {window} maximum"
        )

    images, documents = media
    most = MAX_MEDIA_200K if window <= 200_000 else MAX_MEDIA
    if images + documents > most:
        return _invalid(
            "too_much_media", f"too many images and documents: {images} + {documents} > {most}"
        )

    messages = body.get("messages")
    # A pre-warm (max_tokens 0) generates nothing, so nothing is prefilled: whether the API
    # refuses one that ends with an assistant turn is not documented, and convo does not
    # refuse what it cannot show the API refuses (see docs/emulator.md).
    if (
        model.rejects_prefill
        and max_tokens != 0
        and isinstance(messages, list)
        and messages
        and isinstance(messages[-1], Mapping)
        and messages[-1].get("role") == "assistant"
    ):
        return _invalid(
            "prefill",
            "This model does not support assistant message prefill. The conversation must end "
            "with a user message.",
        )
    return _sampling_violation(body, model) or _thinking_violation(body, model, max_tokens, betas)


# -- public ----------------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = {k.lower(): v for k, v in headers.items()}
        value = lowered.get(name)
    return value


def first_violation(
    body: Mapping[str, Any],
    *,
    models: Mapping[str, _models.ModelInfo] = _models.MODELS,
    headers: Mapping[str, str] | None = None,
    betas: Sequence[str] = (),
    encoded_size: int | None = None,
    input_tokens: int | None = None,
    checked_messages: int = 0,
    endpoint: str = "messages",
) -> Violation | None:
    """Return the first rule *body* breaks, as the API would answer it, or ``None``.

    Args:
        body: A ``/v1/messages`` request body, as it will be sent.
        models: The model table (``convo.models.with_overrides(...)`` to change it).
        headers: The request headers, if known (the emulator): then ``anthropic-version``
            must be among them, and ``anthropic-beta`` adds to *betas*.
        betas: Beta features the request is sent with (``context-1m-2025-08-07`` raises
            Sonnet 4/4.5 to a 1M window; ``interleaved-thinking-2025-05-14`` lets
            ``budget_tokens`` exceed ``max_tokens``).
        encoded_size: The encoded body's size in bytes, if known; otherwise it is bounded
            from the body and encoded only when the bound is over the limit.
        input_tokens: The request's input tokens by :mod:`convo.tokens`, if already counted;
            otherwise counted only when a cheap upper bound exceeds the context window.
        checked_messages: How many leading messages were already checked in an earlier
            turn: their blocks and images are not checked again (sizes still count them;
            past 20 images every image is checked again, held to 2,000 pixels).
        endpoint: ``"messages"``, or ``"count_tokens"`` (only the size, header and block
            rules apply: it generates nothing).

    Returns:
        The :class:`Violation`, or ``None`` when the request passes every rule here. A body
        too malformed to check (no ``messages`` list, no model) passes: the API refuses it
        with its own message.
    """
    try:
        bounds: _Bounds | None = _bounds(body)
    except TypeError:  # a shape convo.tokens cannot count either: measure exactly below
        bounds = None
    if encoded_size is None and (bounds is None or bounds.size > MAX_BODY_BYTES):
        encoded_size = _encoded_size(body)
    if encoded_size is not None and encoded_size > MAX_BODY_BYTES:
        return Violation(
            413,
            "request_too_large",
            f"Request exceeds the maximum allowed number of bytes: {encoded_size} > "
            f"{MAX_BODY_BYTES} (32 MB).",
            "body_too_large",
        )
    if headers is not None:
        if not _header(headers, "anthropic-version"):
            return _invalid("anthropic_version", "anthropic-version: header is required")
        beta_header = _header(headers, "anthropic-beta") or ""
        betas = [*betas, *(b.strip() for b in beta_header.split(",") if b.strip())]
    images = bounds.images if bounds is not None else 0
    documents = bounds.documents if bounds is not None else 0
    if images > MANY_IMAGES:  # every image in the request is held to the stricter size
        found = _structure_violation(body, 0, MAX_IMAGE_SIDE_MANY)
    else:
        found = _structure_violation(body, checked_messages, MAX_IMAGE_SIDE)
    if found is not None or endpoint == "count_tokens":
        return found
    model_id = body.get("model")
    if not isinstance(model_id, str):
        return None
    try:
        model = _models.lookup(model_id, models)
    except _models.UnknownModel:
        return None
    if input_tokens is None and bounds is not None and bounds.tokens <= model.context_window:
        input_tokens = 0  # the bound fits the window (and every larger one): nothing to count
    return _model_violation(
        body, model, input_tokens=input_tokens, media=(images, documents), betas=betas
    )


def check_request(
    body: Mapping[str, Any],
    *,
    models: Mapping[str, _models.ModelInfo] = _models.MODELS,
    betas: Sequence[str] = (),
    encoded_size: int | None = None,
    input_tokens: int | None = None,
    checked_messages: int = 0,
) -> None:
    """Raise :class:`RequestRejected` if the API would refuse *body* before running it.

    Call it before sending: a refused request costs nothing and reaches nobody. The
    arguments are those of :func:`first_violation` (without *headers*: the SDK adds
    ``anthropic-version`` itself).

    Raises:
        RequestRejected: with the status, error type, rule and message the API would give.
    """
    found = first_violation(
        body,
        models=models,
        betas=betas,
        encoded_size=encoded_size,
        input_tokens=input_tokens,
        checked_messages=checked_messages,
    )
    if found is not None:
        raise RequestRejected(found)


def needs_streaming(model: str, max_tokens: int) -> bool:
    """Whether the SDK refuses this request unless it streams ("Streaming is required").

    Mirrors ``anthropic``'s ``_calculate_nonstreaming_timeout`` (``_base_client.py``, 2.14):
    a non-streaming request is refused when ``3600 * max_tokens / 128_000`` seconds exceeds
    10 minutes (``max_tokens`` above 21,333), or when the exact model id has a lower limit in
    :data:`NONSTREAMING_MAX_TOKENS` (Opus 4 / 4.1 snapshots: 8,192). The SDK applies it only
    when neither the call nor the client sets a timeout other than its default.
    """
    expected_seconds = 60 * 60 * max_tokens / 128_000
    limit = NONSTREAMING_MAX_TOKENS.get(model)
    return expected_seconds > 60 * 10 or bool(limit and max_tokens > limit)

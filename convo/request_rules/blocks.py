"""Content blocks and images the API refuses: unknown block types, malformed images."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from convo.request_rules.violation import Violation, invalid, tags

__all__ = [
    "CONTENT_BLOCK_TYPES",
    "IMAGE_MEDIA_TYPES",
    "IMAGE_SOURCES",
    "MANY_IMAGES",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_SIDE",
    "MAX_IMAGE_SIDE_MANY",
    "TOOL_RESULT_BLOCK_TYPES",
    "blocks_violation",
    "structure_violation",
    "system_violation",
]

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

#: Source types an image (or a binary document) may have.
IMAGE_SOURCES = ("base64", "file", "url")

_SYSTEM_BLOCK_TYPES = frozenset({"text"})

# Leading bytes of each image format, for "the bytes are what the media type claims".
_SIGNATURES: tuple[tuple[str, bytes], ...] = (
    ("image/png", b"\x89PNG\r\n\x1a\n"),
    ("image/jpeg", b"\xff\xd8\xff"),
    ("image/gif", b"GIF87a"),
    ("image/gif", b"GIF89a"),
)


def _image_violation(source: Any, where: str, max_side: int) -> Violation | None:
    if not isinstance(source, Mapping):
        return invalid("malformed_image", f"{where}.source: Field required")
    kind = source.get("type")
    if kind not in IMAGE_SOURCES:
        return invalid(
            "malformed_image",
            f"{where}.source: Input tag '{kind}' found using 'type' does not match any of the "
            f"expected tags: {tags(IMAGE_SOURCES)}",
        )
    if kind != "base64":
        field = "url" if kind == "url" else "file_id"
        if not isinstance(source.get(field), str) or not source[field]:
            return invalid("malformed_image", f"{where}.source.{kind}.{field}: Field required")
        return None
    media_type = source.get("media_type")
    if media_type not in IMAGE_MEDIA_TYPES:
        allowed = ", ".join(f"'{m}'" for m in IMAGE_MEDIA_TYPES[:-1])
        return invalid(
            "malformed_image",
            f"{where}.source.base64.media_type: Input should be {allowed} or "
            f"'{IMAGE_MEDIA_TYPES[-1]}'",
        )
    data = source.get("data")
    if not isinstance(data, str) or not data:
        return invalid("malformed_image", f"{where}.source.base64.data: Field required")
    if len(data) > MAX_IMAGE_BYTES:
        return invalid(
            "image_too_large",
            f"{where}.source.base64: image exceeds {MAX_IMAGE_BYTES // 2**20} MB maximum: "
            f"{len(data)} bytes > {MAX_IMAGE_BYTES} bytes",
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return invalid("malformed_image", f"{where}.source.base64.data: invalid base64 data")
    actual = _image_format(raw)
    if actual is None:
        return invalid("malformed_image", f"{where}.source.base64.data: Could not process image")
    if actual != media_type:
        return invalid(
            "malformed_image",
            f"{where}.source.base64.data: Image does not match the provided media type "
            f"{media_type}",
        )
    size = _image_dimensions(raw)
    if size is not None and max(size) > max_side:
        many = " for many-image requests" if max_side < MAX_IMAGE_SIDE else ""
        return invalid(
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


def blocks_violation(
    content: Any,
    where: str,
    allowed: frozenset[str],
    max_side: int,
    *,
    nested: bool = False,
) -> Violation | None:
    """The first unknown block type or malformed image in *content*, a list of blocks at
    *where* (``messages.3.content``); a string, or a shape the parser refuses, passes."""
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
            return invalid(
                "unknown_block_type",
                f"{here}: Input tag '{kind}' found using 'type' does not match any of the "
                f"expected tags: {tags(allowed)}",
            )
        if kind == "image":
            found = _image_violation(block.get("source"), f"{here}.image", max_side)
        elif kind == "tool_result" and not nested:
            found = blocks_violation(
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


def system_violation(body: Mapping[str, Any], max_side: int) -> Violation | None:
    """The first block of the system prompt that is not a text block."""
    return blocks_violation(body.get("system"), "system", _SYSTEM_BLOCK_TYPES, max_side)


def structure_violation(
    body: Mapping[str, Any], checked_messages: int, max_side: int
) -> Violation | None:
    """The first unknown block type or malformed image in the system prompt or in the
    messages from *checked_messages* on, images held to *max_side* pixels."""
    found = system_violation(body, max_side)
    if found is not None:
        return found
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for m in range(max(0, checked_messages), len(messages)):
        message = messages[m]
        if isinstance(message, Mapping):
            found = blocks_violation(
                message.get("content"), f"messages.{m}.content", CONTENT_BLOCK_TYPES, max_side
            )
            if found is not None:
                return found
    return None

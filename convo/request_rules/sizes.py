"""How big a request is: upper bounds computed in one cheap pass, exact figures on demand.

The exact figures (the encoded size, the input tokens by :mod:`convo.tokens`) cost a full
encode or a full count; the bounds cost O(1) per plain text block, so a check computes the
exact figure only when a bound is over the limit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from convo import tokens
from convo.request_rules.blocks import IMAGE_SOURCES

__all__ = [
    "MAX_BODY_BYTES",
    "Bounds",
    "bounds",
    "count_input_tokens",
    "encoded_size",
    "message_bounds",
    "outer_bounds",
]

#: The Messages and Token Counting APIs' body limit (errors page, "Request size limits":
#: 32 MB, answered by Cloudflare with 413 ``request_too_large``). Read as MiB (32 x 2**20):
#: the page does not say which; if the API means 10**6, convo lets through up to 1.5 MB more
#: than it would, and never refuses a body the API accepts.
MAX_BODY_BYTES = 32 * 1024 * 1024


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


class Bounds(NamedTuple):
    """Upper bounds on a request's (or a message's) encoded size and input tokens, and its
    exact count of images and binary documents."""

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
        binary = isinstance(source, Mapping) and source.get("type") in IMAGE_SOURCES
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


def message_bounds(message: Any) -> Bounds:
    """The :class:`Bounds` of one message (its size includes the separating comma)."""
    size = 1
    tokens_bound = images = documents = 0
    # Fast path for the usual shape, {"role": str, "content": str | list}, as plain dicts
    # (isinstance against Mapping costs an ABC check per call).
    if type(message) is dict and len(message) == 2:
        role = message.get("role")
        content = message.get("content")
        if type(role) is str and type(content) is str:
            return Bounds(6 * (len(role) + len(content)) + 81, len(content), 0, 0)
        if type(role) is str and type(content) is list:
            size += 6 * len(role) + 80 + len(content)
            for block in content:
                text = block.get("text") if type(block) is dict else None
                if (
                    type(text) is str
                    and block.get("type") == "text"
                    and (len(block) == 2 or block.keys() <= _TEXT_KEYS)
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
            return Bounds(size, tokens_bound, images, documents)
    if not isinstance(message, Mapping):
        return Bounds(size + _bound(message), 0, 0, 0)
    size += 2
    for key, value in message.items():
        size += 6 * len(key) + 4
        if key != "content":
            size += _bound(value)
        elif isinstance(value, list):
            size += 2 + len(value)
            for block in value:
                size += _bound(block)
                tokens_bound += _block_token_bound(block)
                if isinstance(block, Mapping):
                    more_images, more_documents = _media(block)
                    images += more_images
                    documents += more_documents
        else:
            size += _bound(value)
            tokens_bound += _content_token_bound(value)
    return Bounds(size, tokens_bound, images, documents)


def outer_bounds(body: Mapping[str, Any]) -> Bounds:
    """The :class:`Bounds` of everything but the messages (tools, system, settings)."""
    size = 18  # the braces and the "messages" list around the messages
    for key, value in body.items():
        if key != "messages":
            size += _bound(value) + 6 * len(key) + 4
    tokens_bound = sum(_bound(tool) for tool in body.get("tools") or ())
    tokens_bound += _content_token_bound(body.get("system"))
    return Bounds(size, tokens_bound, 0, 0)


def bounds(body: Mapping[str, Any]) -> Bounds:
    """Bounds on the encoded body's bytes and its input tokens; its images and documents.

    One pass; a plain text block (the bulk of a long history) costs O(1).
    """
    size, tokens_bound, images, documents = outer_bounds(body)
    messages = body.get("messages")
    if not isinstance(messages, list):
        return Bounds(size + _bound(messages), tokens_bound, 0, 0)
    for message in messages:
        more = message_bounds(message)
        size += more.size
        tokens_bound += more.tokens
        images += more.images
        documents += more.documents
    return Bounds(size, tokens_bound, images, documents)


def encoded_size(body: Mapping[str, Any]) -> int | None:
    """The body's size as the SDK encodes it (compact, UTF-8, ``ensure_ascii=False``)."""
    try:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return None  # not JSON: the SDK refuses it itself
    return len(text.encode("utf-8"))


def count_input_tokens(body: Mapping[str, Any]) -> int | None:
    """The request's input tokens by :mod:`convo.tokens`, or ``None`` for a malformed body."""
    try:
        return tokens.request_tokens(
            messages=body.get("messages") or [],
            system=body.get("system"),
            tools=body.get("tools"),
        )
    except (AttributeError, TypeError):
        return None  # malformed: the parser (or the API) refuses it with its own message

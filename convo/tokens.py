"""A deterministic, documented estimate of Claude's token counts.

Claude's tokenizer is not public, so convo uses one approximation everywhere: the emulator
bills with it, the layout decides breakpoints with it, and the tracker predicts with it.
Because both sides share this module, a prediction made by the library matches the
emulator token for token; against the real API the tracker calibrates a per-model factor
from observed totals instead (see ``docs/layout.md``).

The rule, chosen to land near Claude's ~1.3 tokens per English word:

- a run of letters counts one token per started 5 letters (``"plan"`` 1, ``"planning"`` 2);
- a run of digits counts one token per started 3 digits;
- each CJK character, punctuation mark or symbol counts one token;
- whitespace is free.

Block rules: a text block counts its text; ``tool_use`` its name plus its input as
canonical JSON; ``tool_result`` its content; ``thinking`` its thinking text; an image or a
base64 document a flat :data:`IMAGE_TOKENS`; anything else (tool definitions included) its
canonical JSON without ``cache_control``. Counts are additive: a request's input is the sum
of its blocks, with no hidden per-message overhead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "IMAGE_TOKENS",
    "block_tokens",
    "canonical_json",
    "estimate",
    "message_tokens",
    "request_tokens",
]

#: Flat estimate for one image or one base64 document block (about a 1.2 MP image).
IMAGE_TOKENS = 1_600

_PIECE = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]"  # one CJK character
    r"|[^\W\d_\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]{1,5}"  # up to 5 letters
    r"|\d{1,3}"  # up to 3 digits
    r"|[^\w\s]|_"  # one symbol
)


#: Chunks longer than this are counted each time, not remembered (a long run of base64
#: or of CJK text is seldom seen twice, and would crowd out the words that are).
_MEMO_CHUNK = 40
#: The most chunks remembered; the memo starts afresh when full.
_MEMO_SIZE = 65_536


class _ChunkTokens(dict[str, int]):
    """Token counts of whitespace-free chunks, each counted by the pattern when first seen.

    No piece of :data:`_PIECE` contains whitespace, and whitespace matches none, so a text's
    count is the sum of its whitespace-separated chunks' counts (``str.split`` and the
    pattern's ``\\s`` agree on what whitespace is). Prose repeats its words: counting them
    from this memo is about 5x faster than running the pattern over the whole text, which
    convo does for every block it hashes (a text of unique short chunks, all misses, is
    about 1.4x slower).
    """

    def __missing__(self, chunk: str) -> int:
        count = len(_PIECE.findall(chunk))
        if len(chunk) <= _MEMO_CHUNK:
            if len(self) >= _MEMO_SIZE:
                self.clear()
            self[chunk] = count
        return count


_CHUNK_TOKENS = _ChunkTokens()


def estimate(text: str) -> int:
    """Return the estimated token count of *text* (0 for an empty string)."""
    return sum(map(_CHUNK_TOKENS.__getitem__, text.split()))


def canonical_json(value: Any) -> str:
    """Serialise *value* the one way convo hashes and counts it: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _without_cache_control(block: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k != "cache_control"}


def _content_tokens(content: str | Iterable[Mapping[str, Any]] | None) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return estimate(content)
    return sum(block_tokens(b) for b in content)


def message_tokens(message: Mapping[str, Any]) -> int:
    """Return the estimated tokens of one message's content (a str or content blocks)."""
    return _content_tokens(message.get("content"))


def block_tokens(block: Mapping[str, Any] | str) -> int:
    """Return the estimated tokens of one content block, tool definition or string."""
    if isinstance(block, str):
        return estimate(block)
    kind = block.get("type")
    if kind == "text":
        return estimate(str(block.get("text", "")))
    if kind == "image":
        return IMAGE_TOKENS
    if kind == "document":
        source = block.get("source") or {}
        if isinstance(source, Mapping) and source.get("type") == "text":
            return estimate(str(source.get("data", "")))
        if isinstance(source, Mapping) and source.get("type") == "content":
            return _content_tokens(source.get("content"))
        return IMAGE_TOKENS
    if kind == "tool_use":
        return estimate(str(block.get("name", ""))) + estimate(
            canonical_json(block.get("input", {}))
        )
    if kind == "tool_result":
        return _content_tokens(block.get("content"))
    if kind == "thinking":
        return estimate(str(block.get("thinking", "")))
    if kind == "redacted_thinking":
        return estimate(str(block.get("data", "")))
    return estimate(canonical_json(_without_cache_control(block)))


def request_tokens(
    *,
    messages: Sequence[Mapping[str, Any]],
    system: str | Sequence[Mapping[str, Any]] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """Return the estimated total input of a request: tools, system and messages."""
    total = sum(block_tokens(t) for t in tools or ())
    total += _content_tokens(system)
    for message in messages:
        total += _content_tokens(message.get("content"))
    return total

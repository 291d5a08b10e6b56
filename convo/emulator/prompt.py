"""Turn a Messages API request body into the block positions the cache keys.

The server sees a prompt as one sequence of blocks: each custom tool definition, then
each server tool (web search, web fetch, ...), then each system block, then each content
block of each message. Every position has a key: a cumulative hash of everything up to and
including that block, with the block's role and position as context. ``cache_control``
is not part of a block's key, so marking a block does not move its entry.

Each block is hashed as compact JSON with its keys in the order they were sent: the
docs warn that a reordered key (in a ``tool_use`` input or a tool schema) is a new prefix.

Request settings that the docs say invalidate later levels are folded into the keys of
that level: server tools sit between custom tools and system, so toggling web search
keeps the tool entries and invalidates system and messages; the speed setting and
citations fold into every system and message key; ``tool_choice`` (with
``disable_parallel_tool_use``), ``thinking``, the effort (``output_config.effort``, an
effort equal to the default counting as absent) and whether any image is present fold
into every message key.

Lookback positions: a run of consecutive ``tool_use`` blocks is one position, and so is a
run of consecutive ``tool_result`` blocks (:attr:`Prompt.groups`). On models that do not
keep earlier thinking, thinking blocks before the newest user turn that is not a tool
result are stripped: they are neither positions nor input.

Validation here answers bad input with the API's 400/404 errors before anything is billed.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import attrs
import xxhash

from convo import models, tokens
from convo.emulator.errors import APIError, invalid

__all__ = [
    "DEFAULT_EFFORT",
    "MAX_BREAKPOINTS",
    "SYSTEM_MESSAGE_MODELS",
    "Breakpoint",
    "Prompt",
    "block_bytes",
    "parse_prompt",
]

#: The API's limit on blocks carrying ``cache_control`` in one request.
MAX_BREAKPOINTS = 4

#: The effort a request without ``output_config.effort`` runs at (effort page: ``high`` is
#: the default; sending it equals leaving it out). ``convo.fingerprint.DEFAULT_EFFORT`` is
#: the library's copy: the emulator stands for the server and imports no client module.
DEFAULT_EFFORT = "high"

#: Models that accept a ``role: "system"`` message inside ``messages`` (mid-conversation
#: system messages page, checked 2026-11: "available on Claude Opus 4.8 only"). The
#: emulator config's ``system_message_models`` overrides it.
SYSTEM_MESSAGE_MODELS = ("claude-opus-4-8",)

_TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
_RUNS = ("tool_use", "tool_result")
_THINKING = ("thinking", "redacted_thinking")
_LEVELS = ("tools", "server_tools", "system", "messages")


@attrs.frozen
class Breakpoint:
    """A block position that writes a cache entry, and the entry's TTL."""

    position: int
    ttl: str

    @property
    def ttl_seconds(self) -> float:
        """The TTL in seconds."""
        return _TTL_SECONDS[self.ttl]


@attrs.frozen
class Prompt:
    """A validated request, as cache positions.

    Attributes:
        model: The model's table entry.
        keys: Cumulative key of each block position.
        cumulative_tokens: Tokens from the start through each position.
        levels: Which level (tools, server_tools, system, messages) each position is in.
        message_index: For message blocks, the index of their message; -1 otherwise.
        groups: Lookback position of each block: non-decreasing, equal across a run of
            consecutive ``tool_use`` (or ``tool_result``) blocks.
        breakpoints: Explicit and automatic breakpoints, in position order.
        settings_key: Digest of the request settings folded into message keys, then of
            those folded into system keys (diagnostics compares it).
        has_images: Whether any message carries an image.
        stripped_thinking: Thinking blocks stripped from the prompt (not positions).
    """

    model: models.ModelInfo
    keys: tuple[bytes, ...]
    cumulative_tokens: tuple[int, ...]
    levels: tuple[str, ...]
    message_index: tuple[int, ...]
    breakpoints: tuple[Breakpoint, ...]
    settings_key: bytes
    has_images: bool
    groups: tuple[int, ...] = ()
    stripped_thinking: int = 0

    def lookback_floor(self, position: int, lookback: int) -> int:
        """The lowest position a breakpoint at *position* still checks (its window)."""
        if not self.groups:
            return max(position - lookback + 1, 0)
        return bisect.bisect_right(self.groups, self.groups[position] - lookback)

    @property
    def total_tokens(self) -> int:
        """Total input tokens of the request."""
        return self.cumulative_tokens[-1] if self.cumulative_tokens else 0

    def tokens_through(self, position: int) -> int:
        """Tokens from the start through *position* (0 for position -1)."""
        return self.cumulative_tokens[position] if position >= 0 else 0

    def level_key(self, level: str) -> bytes:
        """Key of the last position at or before the end of *level* (empty if none)."""
        last = b""
        order = _LEVELS.index(level)
        for key, lvl in zip(self.keys, self.levels, strict=True):
            if _LEVELS.index(lvl) > order:
                break
            last = key
        return last

    def level_tokens(self, level: str) -> int:
        """Tokens of the prompt up to the end of *level*."""
        order = _LEVELS.index(level)
        total = 0
        for position, lvl in enumerate(self.levels):
            if _LEVELS.index(lvl) > order:
                break
            total = self.cumulative_tokens[position]
        return total


class _TokenMemo:
    """Token counts by block digest: a cached 10k-token block is counted once, not per request."""

    def __init__(self, capacity: int = 50_000) -> None:
        self._counts: dict[bytes, int] = {}
        self._capacity = capacity

    def count(self, digest: bytes, block: Mapping[str, Any]) -> int:
        found = self._counts.get(digest)
        if found is None:
            if len(self._counts) >= self._capacity:
                self._counts.clear()  # simple bound; recounting is cheap relative to a leak
            found = self._counts[digest] = tokens.block_tokens(block)
        return found


_MEMO = _TokenMemo()


def _cache_ttl(value: Any, where: str) -> str:
    if not isinstance(value, Mapping) or value.get("type") != "ephemeral":
        raise invalid(f'{where}.cache_control: expected {{"type": "ephemeral"}}')
    unknown = set(value) - {"type", "ttl"}
    if unknown:
        raise invalid(f"{where}.cache_control: Extra inputs are not permitted: {sorted(unknown)}")
    ttl = value.get("ttl", "5m")
    if ttl not in _TTL_SECONDS:
        raise invalid(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    return str(ttl)


def _as_blocks(content: Any, where: str) -> list[Mapping[str, Any]]:
    if isinstance(content, str):
        if not content:
            raise invalid(f"{where}: text content blocks must be non-empty")
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise invalid(f"{where}: Input should be a valid string or list of content blocks")
    if not content:
        raise invalid(f"{where}: content must contain at least one block")
    for i, block in enumerate(content):
        if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
            raise invalid(f"{where}.{i}: each content block must be an object with a 'type'")
        if block["type"] == "text" and not (isinstance(block.get("text"), str) and block["text"]):
            raise invalid(f"{where}.{i}: text content blocks must be non-empty")
    return content


def _is_typed_tool(tool: Mapping[str, Any]) -> bool:
    """An Anthropic-defined tool (server or client): it needs no ``input_schema``."""
    kind = tool.get("type")
    return isinstance(kind, str) and kind != "custom"


def _check_tools(tools: Any) -> list[Mapping[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise invalid("tools: Input should be a valid list")
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str):
            raise invalid(f"tools.{i}: each tool must be an object with a 'name'")
        if not _is_typed_tool(tool) and not isinstance(tool.get("input_schema"), Mapping):
            raise invalid(f"tools.{i}.input_schema: Field required")
    return tools


def block_bytes(block: Mapping[str, Any]) -> bytes:
    """The bytes a block is keyed by: compact JSON, keys in the order sent, no cache_control."""
    payload = {k: v for k, v in block.items() if k != "cache_control"}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _effort(body: Mapping[str, Any]) -> Any:
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, Mapping) else None
    return None if effort == DEFAULT_EFFORT else effort


def _thinking(body: Mapping[str, Any]) -> Any:
    thinking = body.get("thinking")
    if isinstance(thinking, Mapping) and thinking.get("type") == "disabled":
        return None  # disabled and absent are the same request
    return thinking


def _settings_key(body: Mapping[str, Any], has_images: bool) -> bytes:
    settings = {
        "tool_choice": body.get("tool_choice"),
        "thinking": _thinking(body),
        "effort": _effort(body),
        "images": has_images,
    }
    return xxhash.xxh3_128_digest(tokens.canonical_json(settings).encode())


def _system_settings_key(body: Mapping[str, Any], has_citations: bool) -> bytes:
    speed = body.get("speed")
    settings = {"speed": None if speed in (None, "standard") else speed, "citations": has_citations}
    return xxhash.xxh3_128_digest(tokens.canonical_json(settings).encode())


def _cites(block: Mapping[str, Any]) -> bool:
    citations = block.get("citations")
    return (
        block.get("type") == "document"
        and isinstance(citations, Mapping)
        and citations.get("enabled") is True
    )


def _is_tool_results(content: Any) -> bool:
    """A user turn that answers tool calls (it holds a tool result): it keeps the current
    turn's thinking. Text beside the results does not make it a new turn."""
    return isinstance(content, list) and any(
        isinstance(b, Mapping) and b.get("type") == "tool_result" for b in content
    )


def _family(model_id: str) -> str:
    family, _, suffix = model_id.rpartition("-")
    if suffix.isdigit() and len(suffix) == 8:
        return family
    return model_id.removesuffix("-latest")


def _check_system_message(messages: Sequence[Any], m: int) -> None:
    """The placement and content rules of the mid-conversation system messages page."""
    where = f"messages.{m}"
    if m == 0:
        raise invalid(
            f"{where}: a system message cannot be the first message; use the top-level system"
        )
    before = messages[m - 1]
    if not isinstance(before, Mapping) or before.get("role") != "user":
        raise invalid(f"{where}: a system message must immediately follow a user message")
    after = messages[m + 1] if m + 1 < len(messages) else None
    if after is not None and (not isinstance(after, Mapping) or after.get("role") != "assistant"):
        raise invalid(
            f"{where}: a system message must be the last message or be followed by an "
            "assistant message"
        )
    content = messages[m].get("content")
    if isinstance(content, list) and any(
        not isinstance(b, Mapping) or b.get("type") != "text" for b in content
    ):
        raise invalid(f"{where}.content: system messages support text blocks only")


def parse_prompt(
    body: Mapping[str, Any],
    table: Mapping[str, models.ModelInfo] = models.MODELS,
    *,
    system_message_models: Collection[str] = SYSTEM_MESSAGE_MODELS,
) -> Prompt:
    """Validate a ``/v1/messages`` (or count_tokens) body and lay it out as positions.

    Args:
        body: The request body.
        table: The model table.
        system_message_models: Model ids (families) that accept ``role: "system"``
            messages inside ``messages``; elsewhere such a message is a 400.

    Raises:
        APIError: 400 for a malformed body, 404 for an unknown model.
    """
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise invalid("model: Field required")
    try:
        model = models.lookup(model_id, table)
    except models.UnknownModel:
        raise APIError("not_found_error", f"model: {model_id}") from None

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages: Field required and must contain at least one message")
    tools = _check_tools(body.get("tools"))
    system = body.get("system")
    system_blocks = [] if system is None else _as_blocks(system, "system")

    # (level, message index, context tag, block, where) for each position, in prompt order.
    layout: list[tuple[str, int, str, Mapping[str, Any], str]] = []
    custom = [(i, t) for i, t in enumerate(tools) if not models.is_server_tool(t)]
    server = [(i, t) for i, t in enumerate(tools) if models.is_server_tool(t)]
    layout += [("tools", -1, "tool", t, f"tools.{i}") for i, t in custom]
    layout += [("server_tools", -1, "server_tool", t, f"tools.{i}") for i, t in server]
    layout += [("system", -1, "system", b, f"system.{i}") for i, b in enumerate(system_blocks)]
    has_images = False
    has_citations = any(_cites(b) for b in system_blocks)
    # Earlier thinking is stripped before the newest user turn that is not a tool result,
    # on models that do not keep it (extended-thinking page).
    strip_before = -1
    if not model.keeps_thinking:
        for m, message in enumerate(messages):
            if (
                isinstance(message, Mapping)
                and message.get("role") == "user"
                and not _is_tool_results(message.get("content"))
            ):
                strip_before = m
    stripped = 0
    for m, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise invalid(f"messages.{m}: Input should be an object")
        role = message.get("role")
        if role == "system" and _family(model_id) in system_message_models:
            _check_system_message(messages, m)
        elif role == "system":
            raise invalid(
                f"messages.{m}.role: system messages inside messages are not supported by "
                f"{model_id}; use the top-level system field"
            )
        elif role not in ("user", "assistant"):
            raise invalid(f"messages.{m}.role: Input should be 'user' or 'assistant'")
        blocks = _as_blocks(message.get("content"), f"messages.{m}.content")
        for b, block in enumerate(blocks):
            kind = block.get("type")
            where = f"messages.{m}.content.{b}"
            if kind in _THINKING and block.get("cache_control") is not None:
                raise invalid(f"{where}.cache_control: thinking blocks cannot be cached directly")
            if kind in _THINKING and role == "assistant" and m < strip_before:
                stripped += 1
                continue  # stripped: neither a position nor input
            has_images = has_images or kind == "image"
            has_citations = has_citations or _cites(block)
            layout.append(("messages", m, f"m{m}:{role}", block, where))

    settings_key = _settings_key(body, has_images)
    system_key = _system_settings_key(body, has_citations)
    keys: list[bytes] = []
    cumulative: list[int] = []
    groups: list[int] = []
    breakpoints: list[Breakpoint] = []
    previous = xxhash.xxh3_128_digest(b"convo-emulator-v2")
    running = 0
    group, last_kind = -1, None
    for position, (level, _, tag, block, where) in enumerate(layout):
        digest = xxhash.xxh3_128_digest(block_bytes(block))
        context = tag.encode()
        if level in ("system", "messages"):
            context += system_key
        if level == "messages":
            context += settings_key
        previous = xxhash.xxh3_128_digest(previous + context + digest)
        keys.append(previous)
        running += _MEMO.count(digest, block)
        cumulative.append(running)
        kind = block.get("type") if level == "messages" else None
        if not (kind in _RUNS and kind == last_kind):
            group += 1
        last_kind = kind
        groups.append(group)
        if "cache_control" in block and block["cache_control"] is not None:
            breakpoints.append(Breakpoint(position, _cache_ttl(block["cache_control"], where)))

    auto = body.get("cache_control")
    if auto is not None:
        ttl = _cache_ttl(auto, "top-level")
        if len(breakpoints) >= MAX_BREAKPOINTS:
            raise invalid(
                "Automatic caching (top-level cache_control) needs a free breakpoint slot, but "
                f"{MAX_BREAKPOINTS} blocks already have cache_control."
            )
        last = len(layout) - 1
        if breakpoints and breakpoints[-1].position == last:
            if breakpoints[-1].ttl != ttl:
                raise invalid(
                    "Automatic caching (top-level cache_control) conflicts with the last block's "
                    f"cache_control: ttl '{breakpoints[-1].ttl}' vs '{ttl}'."
                )
        else:
            breakpoints.append(Breakpoint(last, ttl))

    if len(breakpoints) > MAX_BREAKPOINTS:
        raise invalid(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(breakpoints)}."
        )
    seen_5m = False
    for bp in breakpoints:
        if bp.ttl == "5m":
            seen_5m = True
        elif seen_5m:
            raise invalid(
                "cache_control blocks with ttl='1h' must come before those with ttl='5m' "
                f"(a '1h' breakpoint at {layout[bp.position][4]} follows a '5m' one)."
            )

    return Prompt(
        model=model,
        keys=tuple(keys),
        cumulative_tokens=tuple(cumulative),
        levels=tuple(entry[0] for entry in layout),
        message_index=tuple(entry[1] for entry in layout),
        breakpoints=tuple(breakpoints),
        settings_key=settings_key + system_key,
        has_images=has_images,
        groups=tuple(groups),
        stripped_thinking=stripped,
    )


def check_generation(body: Mapping[str, Any], model: models.ModelInfo) -> int:
    """Validate the generation settings of a ``/v1/messages`` body; return ``max_tokens``.

    Raises:
        APIError: 400 for a missing or out-of-range ``max_tokens``, or a pre-warm
            (``max_tokens: 0``) combined with streaming, extended thinking, structured
            output or a forced tool choice.
    """
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise invalid("max_tokens: Field required")
    if max_tokens < 0:
        raise invalid("max_tokens: Input should be greater than or equal to 0")
    if max_tokens > model.max_output_tokens:
        raise invalid(
            f"max_tokens: {max_tokens} > {model.max_output_tokens}, which is the maximum allowed "
            f"number of output tokens for {model.id}"
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream: Input should be a valid boolean")
    if max_tokens == 0:
        thinking = body.get("thinking")
        tool_choice = body.get("tool_choice")
        output_config = body.get("output_config")
        reasons: Sequence[tuple[bool, str]] = (
            (stream, "stream: true"),
            (
                isinstance(thinking, Mapping) and thinking.get("type") == "enabled",
                "extended thinking",
            ),
            (
                isinstance(output_config, Mapping) and "format" in output_config,
                "output_config.format",
            ),
            (
                isinstance(tool_choice, Mapping) and tool_choice.get("type") in ("any", "tool"),
                "a forced tool_choice",
            ),
        )
        for bad, what in reasons:
            if bad:
                raise invalid(f"max_tokens: 0 (cache pre-warming) cannot be combined with {what}")
    return max_tokens

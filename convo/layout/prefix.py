"""The static prefix: tools and system blocks, frozen, validated and fingerprinted once."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import attrs
import xxhash

from convo.errors import LayoutError
from convo.fingerprint import ROOT, block_digest, chain
from convo.models import MODELS, ModelInfo, UnknownModel, is_server_tool, lookup
from convo.tokens import block_tokens, canonical_json
from convo.wire import encode

__all__ = [
    "TTL",
    "TTLS",
    "FrozenMap",
    "Prefix",
    "PrefixTooShortWarning",
    "check_block",
    "check_cache_control",
    "freeze",
    "thaw",
]

TTL = Literal["5m", "1h"]
#: The TTLs the API accepts, and their lifetimes in seconds.
TTLS: Mapping[str, float] = {"5m": 300.0, "1h": 3600.0}


class PrefixTooShortWarning(UserWarning):
    """The static prefix is shorter than the model's minimum cacheable length."""


class FrozenMap(Mapping[str, Any]):
    """An immutable, hashable mapping with its keys in sorted order.

    Sorting makes the serialised bytes independent of how the caller built the dict, so
    two processes given the same tools send the same bytes.
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, items: Mapping[str, Any]) -> None:
        self._data = {k: items[k] for k in sorted(items)}
        self._hash = hash(tuple(self._data.items()))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._data == other._data
        return isinstance(other, Mapping) and self._data == dict(other)

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


def freeze(value: Any, where: str) -> Any:
    """Deep-copy *value* into immutable JSON data (FrozenMap, tuple, scalars).

    Raises:
        TypeError: for a value JSON cannot carry, naming where it was found.
    """
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"{where}: keys must be strings, got {key!r}")
        return FrozenMap({k: freeze(v, f"{where}.{k}") for k, v in value.items()})
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return tuple(freeze(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(
        f"{where}: {type(value).__name__} cannot be sent as JSON; use dicts, lists, "
        "strings, numbers, booleans or None"
    )


def thaw(value: Any) -> Any:
    """Return plain dicts and lists (what the SDK serialises) for frozen data."""
    if isinstance(value, FrozenMap):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def check_cache_control(marker: Any, where: str) -> str:
    """Validate a caller-supplied ``cache_control`` marker and return its TTL.

    Raises:
        LayoutError: for anything but ``{"type": "ephemeral"}`` with an optional ``ttl`` of
            ``"5m"`` or ``"1h"``.
    """
    if not isinstance(marker, Mapping) or marker.get("type") != "ephemeral":
        raise LayoutError(
            f'{where}.cache_control must be {{"type": "ephemeral"}} (optionally with '
            f'"ttl": "5m" or "1h"); got {marker!r}'
        )
    ttl = marker.get("ttl", "5m")
    if ttl not in TTLS or set(marker) - {"type", "ttl"}:
        raise LayoutError(
            f"{where}.cache_control has unknown ttl or fields {dict(marker)!r}; the API accepts "
            'only "type": "ephemeral" and "ttl": "5m" or "1h"'
        )
    return str(ttl)


def check_block(block: Mapping[str, Any], where: str) -> None:
    """Refuse an empty text block and validate any ``cache_control`` on *block*.

    Raises:
        LayoutError: naming *where*, for an empty or whitespace-only text block (the API
            rejects those) or an invalid marker.
    """
    text = block.get("text")
    if block.get("type") == "text" and (not isinstance(text, str) or not text.strip()):
        raise LayoutError(
            f"{where} is an empty text block; the API rejects it: drop it or add text"
        )
    if "cache_control" in block:
        check_cache_control(block["cache_control"], where)


def _freeze_system(value: str | Sequence[str | Mapping[str, Any]]) -> tuple[FrozenMap, ...]:
    items = [value] if isinstance(value, str) else list(value)
    blocks = []
    for i, item in enumerate(items):
        where = f"Prefix.system[{i}]"
        block = {"type": "text", "text": item} if isinstance(item, str) else item
        if not isinstance(block, Mapping) or block.get("type") != "text":
            raise LayoutError(f"{where} must be a string or a text block dict; got {item!r}")
        check_block(block, where)
        blocks.append(freeze(block, where))
    return tuple(blocks)


def _freeze_tools(value: Sequence[Mapping[str, Any]]) -> tuple[FrozenMap, ...]:
    tools = []
    names: set[str] = set()
    for i, tool in enumerate(value):
        where = f"Prefix.tools[{i}]"
        if not isinstance(tool, Mapping):
            raise LayoutError(f"{where} must be a tool definition dict; got {tool!r}")
        kind = tool.get("type", "custom")
        if kind == "custom" and not isinstance(tool.get("input_schema"), Mapping):
            raise LayoutError(
                f"{where} needs an 'input_schema' (a JSON Schema object, e.g. "
                '{"type": "object"}); only Anthropic-defined tools with a "type" go without'
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise LayoutError(f"{where} needs a non-empty string 'name'")
        if name in names:
            raise LayoutError(f"{where}: tool name {name!r} appears twice; names must be unique")
        names.add(name)
        if "cache_control" in tool:
            check_cache_control(tool["cache_control"], where)
        tools.append(freeze(tool, where))
    # The server keys custom tools first, then server tools (web search, ...): sending them
    # in that order keeps block positions equal to the server's.
    return tuple(sorted(tools, key=is_server_tool))


def _check_ttl(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in TTLS:
        raise LayoutError(f'Prefix.ttl must be "5m" or "1h"; got {value!r}')


@attrs.frozen
class Prefix:
    """The static part of every request: tool definitions and system blocks.

    Inputs are deep-copied and frozen, so mutating the dicts you passed in changes nothing
    that is sent; keys are sorted, so the bytes are the same in every process.

    Args:
        model: The model id; it scopes the cache and sets the minimum cacheable length.
        system: The static system text: one string, or strings and text-block dicts.
        tools: Tool definitions, in the order they are sent (order is part of the key).
        ttl: Lifetime of the prefix's cache entry: ``"5m"`` or ``"1h"``.
        models: The model table to read the minimum from (see :mod:`convo.models`).

    Raises:
        LayoutError: for an unknown model or TTL, an empty or non-text system block, a
            tool without a name, or an invalid ``cache_control`` marker.

    Warns:
        PrefixTooShortWarning: when the prefix is shorter than the model's minimum
            cacheable length, so the prefix alone can never be cached.

    .. versionadded:: 0.1
    """

    model: str
    system: tuple[FrozenMap, ...] = attrs.field(default=(), converter=_freeze_system, repr=False)
    tools: tuple[FrozenMap, ...] = attrs.field(default=(), converter=_freeze_tools, repr=False)
    ttl: TTL = attrs.field(default="5m", validator=_check_ttl)
    models: Mapping[str, ModelInfo] = attrs.field(
        default=MODELS, eq=False, repr=False, hash=False, kw_only=True
    )
    # Derived once; every render reuses them.
    info: ModelInfo = attrs.field(init=False, eq=False, repr=False, hash=False)
    keys: tuple[bytes, ...] = attrs.field(init=False, eq=False, repr=False, hash=False)
    block_digests: tuple[bytes, ...] = attrs.field(init=False, eq=False, repr=False, hash=False)
    cumulative: tuple[int, ...] = attrs.field(init=False, eq=False, repr=False, hash=False)
    tools_digest: str = attrs.field(init=False, eq=False, repr=False, hash=False)
    system_digest: str = attrs.field(init=False, eq=False, repr=False, hash=False)
    fingerprint: str = attrs.field(init=False, eq=False, hash=False)
    #: Each tool, then each system block, as sent (:func:`convo.wire.encode`): encoded once
    #: per prefix, shared by every session's layouts (a long system prompt is most of a
    #: session's setup cost otherwise).
    encoded: tuple[bytes, ...] = attrs.field(init=False, eq=False, repr=False, hash=False)
    #: ``(position, ttl)`` of every ``cache_control`` the caller put in tools or system.
    caller_marks: tuple[tuple[int, str], ...] = attrs.field(
        init=False, eq=False, repr=False, hash=False
    )
    # Those markers as given, ``(position, cache_control)``, for each render's body digest.
    _caller_markers: tuple[tuple[int, dict[str, Any]], ...] = attrs.field(
        init=False, eq=False, repr=False, hash=False
    )

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise TypeError(f"Prefix.model must be a model id string, got {self.model!r}")
        try:
            info = lookup(self.model, self.models)
        except UnknownModel as exc:
            raise LayoutError(f"Prefix.model: {exc}") from exc
        keys: list[bytes] = []
        block_digests: list[bytes] = []
        encoded: list[bytes] = []
        cumulative: list[int] = []
        previous, total = ROOT, 0
        digests = {"tool": xxhash.xxh3_128(), "system": xxhash.xxh3_128()}
        marks = []
        for kind, blocks in (("tool", self.tools), ("system", self.system)):
            for frozen in blocks:
                block = thaw(frozen)
                encoded.append(encode(block))
                digest = block_digest(kind, block)
                digests[kind].update(digest)
                block_digests.append(digest)
                previous = chain(previous, digest)
                total += block_tokens(block)
                keys.append(previous)
                cumulative.append(total)
                if "cache_control" in block:
                    marks.append([len(keys) - 1, block["cache_control"]])
        fingerprint = xxhash.xxh3_128_hexdigest(
            previous + canonical_json([marks, self.ttl]).encode()
        )
        caller_marks = tuple((i, check_cache_control(marker, "Prefix")) for i, marker in marks)
        for name, value in (
            ("caller_marks", caller_marks),
            ("_caller_markers", tuple((i, marker) for i, marker in marks)),
            ("info", info),
            ("keys", tuple(keys)),
            ("block_digests", tuple(block_digests)),
            ("cumulative", tuple(cumulative)),
            ("tools_digest", digests["tool"].hexdigest()),
            ("system_digest", digests["system"].hexdigest()),
            ("fingerprint", fingerprint),
            ("encoded", tuple(encoded)),
        ):
            object.__setattr__(self, name, value)
        if total < info.min_cacheable_tokens:
            warnings.warn(
                f"the prefix is about {total} tokens, below {self.model}'s minimum cacheable "
                f"length of {info.min_cacheable_tokens} tokens: it can never be cached on its "
                "own (history breakpoints may still cache once the conversation is long enough)",
                PrefixTooShortWarning,
                stacklevel=3,
            )

    @property
    def tokens(self) -> int:
        """Estimated tokens of the tools and system blocks (:func:`convo.tokens.estimate`)."""
        return self.cumulative[-1] if self.cumulative else 0

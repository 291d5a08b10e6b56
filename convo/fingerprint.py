"""Cumulative per-block hashes over the exact bytes a request sends, like the server's keys.

The server keys a cache entry by a hash of everything up to and including one block:
tools, then system blocks, then each content block of each message. convo computes the
same shape of key so the tracker can tell, before a call, which entries a request can
read. Each block is hashed once (xxh3-128 over its canonical JSON, without
``cache_control``, which does not change a block's key) and the keys are a chain over those
block digests: ``key[i] = xxh3_128(key[i-1] + digest[i])``. Appending a turn therefore
hashes only the new blocks (:class:`BlockChain`); only a change in front of the messages
(tools, system, request settings) re-chains them, and re-chaining reuses the block digests.

Segment digests (model, tools, static system, suffix, request settings, each message) let
the tracker name *what* changed between two requests, and :attr:`Fingerprint.digest` covers
the whole body as sent (breakpoint markers and top-level parameters included), so it
changes if and only if the rendered bytes change.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar, overload

import attrs
import xxhash

from convo.models import is_server_tool
from convo.tokens import block_tokens, canonical_json

__all__ = [
    "BlockChain",
    "Fingerprint",
    "Segments",
    "block_bytes",
    "block_digest",
    "body_digest",
    "body_params",
    "chain",
    "fingerprint_body",
    "settings_digest",
]

T = TypeVar("T")

#: The key in front of the first block: a version tag, so a change of scheme changes keys.
ROOT = xxhash.xxh3_128_digest(b"convo-cache-key-v1")

#: The request settings that fold into message-level keys (the server's rule: changing
#: these invalidates messages but not tools or system).
MESSAGE_SETTINGS = ("tool_choice", "thinking")

SegmentKind = Literal["tools", "system", "suffix", "message"]


def block_bytes(block: Mapping[str, Any]) -> bytes:
    """Return the bytes convo hashes for one block: canonical JSON without ``cache_control``."""
    return canonical_json({k: v for k, v in block.items() if k != "cache_control"}).encode()


def block_digest(kind: str, block: Mapping[str, Any]) -> bytes:
    """Return the 16-byte digest of one block, tagged with where it stands.

    *kind* is ``"tool"``, ``"system"`` or ``"<role>:<0|1>"`` (``0`` for the first block of
    a message), so the same text moved between roles or messages is a different block.
    """
    return xxhash.xxh3_128_digest(kind.encode() + b"\x1e" + block_bytes(block))


def chain(previous: bytes, digest: bytes) -> bytes:
    """Return the cumulative key after *previous*, extended by one block *digest*."""
    return xxhash.xxh3_128_digest(previous + digest)


def settings_digest(settings: Mapping[str, Any], *, has_images: bool) -> bytes:
    """Return the digest of the request settings that fold into message-level keys."""
    # An explicit null and an absent field are the same request to the server.
    picked = {k: settings[k] for k in MESSAGE_SETTINGS if settings.get(k) is not None}
    return xxhash.xxh3_128_digest(canonical_json([picked, has_images]).encode())


def _hex(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


class _Spliced(Sequence[T]):
    """A read-only view: a tuple head, then the first *n* items of a list, then a tail.

    The list belongs to an append-only :class:`BlockChain`, so the first *n* items never
    change; viewing them instead of copying keeps a fingerprint O(1) in history length.
    """

    __slots__ = ("_body", "_head", "_n", "_tail")

    def __init__(self, head: Sequence[T], body: Sequence[T], n: int, tail: Sequence[T]) -> None:
        self._head = head
        self._body = body
        self._n = n
        self._tail = tail

    def __len__(self) -> int:
        return len(self._head) + self._n + len(self._tail)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...
    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError(index)
        if index < len(self._head):
            return self._head[index]
        index -= len(self._head)
        if index < self._n:
            return self._body[index]
        return self._tail[index - self._n]

    def __iter__(self) -> Iterator[T]:
        yield from self._head
        for i in range(self._n):
            yield self._body[i]
        yield from self._tail

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=False))

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"<{len(self)} items>"


class _Offset(Sequence[int]):
    """A read-only view of an int sequence with a constant added to every item."""

    __slots__ = ("_base", "_offset")

    def __init__(self, base: Sequence[int], offset: int) -> None:
        self._base = base
        self._offset = offset

    def __len__(self) -> int:
        return len(self._base)

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...
    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        if isinstance(index, slice):
            return [v + self._offset for v in self._base[index]]
        return self._base[index] + self._offset


@attrs.frozen
class Segments:
    """Hex digests of each part of a request, to name what changed between two requests.

    Attributes:
        model: Digest of the model id.
        tools: Digest over the tool definitions, in order.
        system: Digest over the static system blocks.
        suffix: Digest of the dynamic suffix and where it was placed ("" when none).
        settings: Digest of the settings folded into message keys (tool_choice, thinking,
            whether any image is present).
        messages: One digest per message, over its blocks as sent (a suffix folded into the
            newest user turn is not part of that message's digest).
    """

    model: str
    tools: str
    system: str
    suffix: str
    settings: str
    messages: Sequence[str] = attrs.field(eq=False)


@attrs.frozen
class Fingerprint:
    """The cache keys and token counts of one request, position by position.

    Positions count tool definitions, then system blocks, then message content blocks.
    ``keys[i]`` is the cumulative key through position *i*; ``tokens[i]`` the cumulative
    estimated tokens through it (:func:`convo.tokens.block_tokens`).

    Attributes:
        model: The model id; caches are scoped per model, so it is not part of the keys.
        keys: Cumulative 16-byte keys, one per position.
        tokens: Cumulative estimated tokens, one per position.
        tools_end: Number of tool positions.
        system_end: Position just past the static system blocks.
        suffix_end: Position just past a suffix system block (== ``system_end`` if none).
        message_starts: The position of each message's first block.
        volatile: Positions that change from turn to turn (the dynamic suffix).
        segments: Digests per part, for naming what changed.
        digest: Hex digest of the whole body as sent; changes iff the body's bytes change.
    """

    model: str
    keys: Sequence[bytes] = attrs.field(eq=False, repr=False)
    tokens: Sequence[int] = attrs.field(eq=False, repr=False)
    tools_end: int
    system_end: int
    suffix_end: int
    message_starts: Sequence[int] = attrs.field(eq=False, repr=False)
    volatile: tuple[int, ...]
    segments: Segments = attrs.field(repr=False)
    digest: str

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def total_tokens(self) -> int:
        """Estimated total input of the request."""
        return self.tokens[-1] if len(self.tokens) else 0

    def segment_of(self, position: int) -> tuple[SegmentKind, int | None]:
        """Return which part *position* belongs to, and the message index for messages."""
        if position < self.tools_end:
            return "tools", None
        if position < self.system_end:
            return "system", None
        if position < self.suffix_end or position in self.volatile:
            return "suffix", None
        return "message", bisect.bisect_right(self.message_starts, position) - 1

    def common_prefix(self, other: Fingerprint) -> int:
        """Return how many leading positions *other* shares with this request.

        Keys are cumulative, so equality at a position implies equality everywhere
        before it: a binary search finds the first divergence in O(log n).
        """
        lo, hi = 0, min(len(self.keys), len(other.keys))
        while lo < hi:
            mid = (lo + hi) // 2
            if self.keys[mid] == other.keys[mid]:
                lo = mid + 1
            else:
                hi = mid
        return lo


class BlockChain:
    """Append-only message blocks with their digests, tokens and cumulative keys.

    Each appended block is hashed and counted once. Keys depend on what stands in front
    of the messages (the *seed*); the chain for the most recent seed is kept and extended
    in place, so a turn with an unchanged prefix costs only its new blocks.
    """

    def __init__(self) -> None:
        self._digests: list[bytes] = []
        self._cum: list[int] = []
        self._starts: list[int] = []
        self._message_digests: list[str] = []
        self._has_images = False
        self._seed: bytes | None = None
        self._keys: list[bytes] = []

    def append(self, role: str, blocks: Sequence[Mapping[str, Any]]) -> None:
        """Add one message's content blocks (already normalised to a list of dicts)."""
        self._starts.append(len(self._digests))
        total = self._cum[-1] if self._cum else 0
        message = xxhash.xxh3_128()
        for i, block in enumerate(blocks):
            digest = block_digest(f"{role}:{0 if i == 0 else 1}", block)
            message.update(digest)
            self._digests.append(digest)
            total += block_tokens(block)
            self._cum.append(total)
            if block.get("type") == "image":
                self._has_images = True
        self._message_digests.append(message.hexdigest())

    @property
    def has_images(self) -> bool:
        """Whether any message holds an image block (it folds into message keys)."""
        return self._has_images

    @property
    def block_count(self) -> int:
        """Number of message blocks so far."""
        return len(self._digests)

    @property
    def message_count(self) -> int:
        """Number of messages so far."""
        return len(self._starts)

    @property
    def starts(self) -> Sequence[int]:
        """Each message's first block index (message-relative), read-only view."""
        return _Spliced((), self._starts, len(self._starts), ())

    @property
    def message_digests(self) -> Sequence[str]:
        """One hex digest per message, read-only view."""
        return _Spliced((), self._message_digests, len(self._message_digests), ())

    @property
    def cumulative_tokens(self) -> Sequence[int]:
        """Cumulative tokens within the messages, read-only view."""
        return _Spliced((), self._cum, len(self._cum), ())

    def keys(self, seed: bytes) -> Sequence[bytes]:
        """Return the cumulative keys of every message block after *seed*, as a view."""
        if seed != self._seed:
            # A new list rather than clearing the old one: fingerprints already handed out
            # keep viewing the keys they were built with.
            self._seed = seed
            self._keys = []
        keys = self._keys
        previous = keys[-1] if keys else seed
        for digest in self._digests[len(keys) :]:
            previous = chain(previous, digest)
            keys.append(previous)
        return _Spliced((), keys, len(keys), ())


def body_params(body: Mapping[str, Any], *, lists_only: bool = False) -> dict[str, Any]:
    """Return everything in a body that is not a block, plus the forms the blocks took.

    A string ``system`` or string message content keys like one text block but is other
    bytes, so the form goes into :attr:`Fingerprint.digest`. *lists_only* promises every
    message content is a list (the layout's output), skipping an O(history) scan.
    """
    params = {k: v for k, v in body.items() if k not in ("tools", "system", "messages")}
    system = body.get("system")
    messages = body.get("messages", ())
    forms: object = "lists"
    if not lists_only and any(isinstance(m.get("content"), str) for m in messages):
        forms = [isinstance(m.get("content"), str) for m in messages]
    params["\x00forms"] = [
        "tools" in body,
        "absent" if system is None else "str" if isinstance(system, str) else "list",
        forms,
    ]
    return params


def body_digest(
    params: Mapping[str, Any], last_key: bytes, marks: Sequence[tuple[int, Any]]
) -> str:
    """Return the digest of a whole body from its parts (see :attr:`Fingerprint.digest`).

    Args:
        params: The body's non-block fields, with the block forms (see :func:`body_params`).
        last_key: The final cumulative key (covers every block, role and boundary).
        marks: ``(position, cache_control)`` for every block carrying ``cache_control``.
    """
    data = canonical_json([params, [[p, m] for p, m in marks]]).encode()
    return _hex(last_key + data)


def _as_blocks(content: str | Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content)


def fingerprint_body(
    body: Mapping[str, Any], *, suffix_in_system: bool = False, suffix_in_message: bool = False
) -> Fingerprint:
    """Fingerprint any request body (the full, non-incremental path).

    Args:
        body: Keyword arguments for ``client.messages.create`` (``model``, ``messages``,
            optional ``system``, ``tools``, ``tool_choice``, ``thinking``, ...).
        suffix_in_system: Treat the last system block as the dynamic suffix.
        suffix_in_message: Treat the last block of the last message as the dynamic suffix.

    Returns:
        The same keys, tokens and digest that :mod:`convo.layout` computes incrementally.
    """
    model = str(body.get("model", ""))
    keys: list[bytes] = []
    cum: list[int] = []
    marks: list[tuple[int, Any]] = []
    total = 0
    previous = ROOT
    tools_hash, system_hash = xxhash.xxh3_128(), xxhash.xxh3_128()

    def add(kind: str, block: Mapping[str, Any]) -> bytes:
        nonlocal total, previous
        digest = block_digest(kind, block)
        if "cache_control" in block:
            marks.append((len(keys), block["cache_control"]))
        total += block_tokens(block)
        previous = chain(previous, digest)
        keys.append(previous)
        cum.append(total)
        return digest

    # Custom tools first, then server tools: the order the server keys them in (and the
    # order convo.Prefix sends them in).
    for tool in sorted(body.get("tools", ()) or (), key=is_server_tool):
        tools_hash.update(add("tool", tool))
    system_blocks = _as_blocks(body.get("system"))
    static = system_blocks[:-1] if suffix_in_system and system_blocks else system_blocks
    for block in static:
        system_hash.update(add("system", block))
    tools_end, system_end = len(body.get("tools", ()) or ()), len(keys)
    suffix = ""
    if suffix_in_system and system_blocks:
        suffix = _hex(b"system" + add("system", system_blocks[-1]))
    suffix_end = len(keys)

    chain_ = BlockChain()
    messages = list(body.get("messages", ()))
    folded: Mapping[str, Any] | None = None
    for index, message in enumerate(messages):
        blocks = _as_blocks(message.get("content"))
        if suffix_in_message and index == len(messages) - 1 and blocks:
            blocks, folded = blocks[:-1], blocks[-1]
        chain_.append(str(message.get("role")), blocks)
    seed = chain(previous, settings_digest(body, has_images=chain_.has_images))
    msg_keys = list(chain_.keys(seed))
    volatile: tuple[int, ...] = ()
    for index, message in enumerate(messages):
        for i, block in enumerate(_as_blocks(message.get("content"))):
            if "cache_control" in block:
                marks.append((suffix_end + chain_.starts[index] + i, block["cache_control"]))
    keys.extend(msg_keys)
    cum.extend(c + total for c in chain_.cumulative_tokens)
    if folded is not None:
        volatile = (len(keys),)
        last = messages[-1]
        kind = f"{last.get('role')}:{0 if len(_as_blocks(last.get('content'))) == 1 else 1}"
        digest = block_digest(kind, folded)
        keys.append(chain(keys[-1] if keys else seed, digest))
        cum.append((cum[-1] if cum else 0) + block_tokens(folded))
        suffix = _hex(b"message" + digest)
    starts = tuple(suffix_end + s for s in chain_.starts)
    segments = Segments(
        model=_hex(model.encode()),
        tools=tools_hash.hexdigest(),
        system=system_hash.hexdigest(),
        suffix=suffix,
        settings=_hex(settings_digest(body, has_images=chain_.has_images)),
        messages=tuple(chain_.message_digests),
    )
    return Fingerprint(
        model=model,
        keys=tuple(keys),
        tokens=tuple(cum),
        tools_end=tools_end,
        system_end=system_end,
        suffix_end=suffix_end,
        message_starts=starts,
        volatile=volatile,
        segments=segments,
        digest=body_digest(body_params(body), keys[-1] if keys else ROOT, sorted(marks)),
    )

"""Cumulative per-block hashes over the exact bytes a request sends, like the server's keys.

The server keys a cache entry by a hash of everything up to and including one block:
tools, then system blocks, then each content block of each message. convo computes the
same shape of key so the tracker can tell, before a call, which entries a request can
read. Each block is hashed once (xxh3-128 over its compact JSON with the keys in the order
given, as they go on the wire, without ``cache_control``, which does not change a block's
key: a reordered key is a new prefix, as on the server) and the keys are a chain over those
block digests: ``key[i] = xxh3_128(key[i-1] + digest[i])``. Appending a turn therefore
hashes only the new blocks (:class:`BlockChain`); only a change in front of the messages
(tools, system, request settings) re-chains them, and re-chaining reuses the block digests.

The server's other rules are modelled here too: request settings fold into the level they
invalidate (speed and citations into system and messages; ``tool_choice``, thinking,
effort and images into messages); a run of consecutive ``tool_use`` (or ``tool_result``)
blocks is one lookback position (:attr:`Fingerprint.groups`); and on models that do not
keep earlier thinking, a thinking block before the newest user turn that is not a tool
result is *stripped*: it keeps its position (so positions still match the body's blocks)
but adds no key, no tokens and no lookback position.

Segment digests (model, tools, static system, suffix, request settings, each message) let
the tracker name *what* changed between two requests, and :attr:`Fingerprint.digest` covers
the whole body as sent (breakpoint markers and top-level parameters included), so it
changes if and only if the rendered bytes change.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar, overload

import attrs
import xxhash

from convo.models import MODELS, ModelInfo, UnknownModel, is_server_tool, lookup
from convo.tokens import block_tokens, canonical_json

__all__ = [
    "DEFAULT_EFFORT",
    "LOOKBACK",
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
    "system_settings_digest",
]

T = TypeVar("T")

#: The key in front of the first block: a version tag, so a change of scheme changes keys.
ROOT = xxhash.xxh3_128_digest(b"convo-cache-key-v2")

#: Positions one breakpoint checks, counting itself (a tool run counts once).
LOOKBACK = 20

#: The request settings that fold into message-level keys (the server's rule: changing
#: these invalidates messages but not tools or system); ``output_config.effort`` too.
MESSAGE_SETTINGS = ("tool_choice", "thinking")

#: The effort a request without ``output_config.effort`` runs at: sending it is the same
#: request as leaving it out (effort page).
DEFAULT_EFFORT = "high"

# Block kinds that matter to the cache: runs of tool_use / tool_result are one lookback
# position; thinking may be stripped.
_PLAIN, _TOOL_USE, _TOOL_RESULT, _THINKING = 0, 1, 2, 3
_KINDS = {
    "tool_use": _TOOL_USE,
    "tool_result": _TOOL_RESULT,
    "thinking": _THINKING,
    "redacted_thinking": _THINKING,
}

SegmentKind = Literal["tools", "system", "suffix", "message"]


def block_bytes(block: Mapping[str, Any]) -> bytes:
    """Return the bytes convo hashes for one block: compact JSON, keys in the order given,
    without ``cache_control`` (the block as it goes on the wire, less its marker)."""
    payload = {k: v for k, v in block.items() if k != "cache_control"}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def block_digest(kind: str, block: Mapping[str, Any], encoded: bytes | None = None) -> bytes:
    """Return the 16-byte digest of one block, tagged with where it stands.

    *kind* is ``"tool"``, ``"system"`` or ``"<role>:<0|1>"`` (``0`` for the first block of
    a message), so the same text moved between roles or messages is a different block.
    *encoded* is the block's bytes as sent (:func:`convo.wire.encode`), when already made:
    for a block without ``cache_control`` they are the bytes hashed, so the key is a hash
    of exactly what the server receives.
    """
    if encoded is None or "cache_control" in block:
        encoded = block_bytes(block)
    return xxhash.xxh3_128_digest(kind.encode() + b"\x1e" + encoded)


def chain(previous: bytes, digest: bytes) -> bytes:
    """Return the cumulative key after *previous*, extended by one block *digest*."""
    return xxhash.xxh3_128_digest(previous + digest)


def _message_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    # An explicit null and an absent field are the same request to the server; so are a
    # disabled thinking and none, and the default effort and none.
    picked = {k: settings[k] for k in MESSAGE_SETTINGS if settings.get(k) is not None}
    thinking = picked.get("thinking")
    if isinstance(thinking, Mapping) and thinking.get("type") == "disabled":
        del picked["thinking"]
    config = settings.get("output_config")
    effort = config.get("effort") if isinstance(config, Mapping) else None
    if effort is not None and effort != DEFAULT_EFFORT:
        picked["effort"] = effort
    return picked


def settings_digest(settings: Mapping[str, Any], *, has_images: bool) -> bytes:
    """Return the digest of the request settings that fold into message-level keys.

    ``tool_choice``, ``thinking`` (disabled = absent) and ``output_config.effort``
    (:data:`DEFAULT_EFFORT` = absent), and whether any image is present.
    """
    picked = _message_settings(settings)
    if not picked:  # most turns: no setting that re-keys messages, computed once
        return _NO_SETTINGS[has_images]
    return _settings_digest(picked, has_images)


def _settings_digest(picked: Mapping[str, Any], has_images: bool) -> bytes:
    return xxhash.xxh3_128_digest(canonical_json([picked, has_images]).encode())


_NO_SETTINGS = {flag: _settings_digest({}, flag) for flag in (False, True)}


def system_settings_digest(settings: Mapping[str, Any], *, has_citations: bool) -> bytes | None:
    """Return the digest of the settings that fold into system (and so message) keys.

    The speed setting (``"standard"`` = absent) and whether any document has citations
    enabled. ``None`` when both are at their defaults, so the usual keys are unchanged.
    """
    speed = settings.get("speed")
    if speed == "standard":
        speed = None
    if speed is None and not has_citations:
        return None
    return xxhash.xxh3_128_digest(canonical_json([speed, has_citations]).encode())


def _cites(block: Mapping[str, Any]) -> bool:
    citations = block.get("citations")
    return (
        block.get("type") == "document"
        and isinstance(citations, Mapping)
        and citations.get("enabled") is True
    )


def _answers_tools(blocks: Sequence[Mapping[str, Any]]) -> bool:
    # A user turn holding a tool result continues the tool loop (keeps its thinking), even
    # with text beside the results (a suffix folded into it, say).
    return any(b.get("type") == "tool_result" for b in blocks)


def lookback_floor(groups: Sequence[int] | None, position: int, lookback: int = LOOKBACK) -> int:
    """Return the lowest position a breakpoint at *position* checks.

    *groups* holds each position's lookback position (non-decreasing; equal across a tool
    run); ``None`` means every block is its own position.
    """
    ceiling = max(position - lookback + 1, 0)  # each position is at least one step back
    if groups is None or ceiling == 0:
        return ceiling
    target = groups[position] - lookback
    if groups[ceiling - 1] <= target:
        return ceiling  # no tool run in the window: the usual case, one look
    # A run widens the window: gallop down, then bisect (O(log width), not O(log n)).
    high, step = ceiling - 1, 1  # groups[high] > target
    low = high - step
    while low >= 0 and groups[low] > target:
        high, step = low, step * 2
        low = high - step
    return bisect.bisect_right(groups, target, max(low, 0), high)


def strips_thinking(model: str, models: Mapping[str, ModelInfo] = MODELS) -> bool:
    """Whether *model* drops earlier turns' thinking from the prompt (unknown: no)."""
    try:
        return not lookup(model, models).keeps_thinking
    except UnknownModel:
        return False


def _hex(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


class _Spliced(Sequence[T]):
    """A read-only view: a tuple head, then the first *n* items of a list, then a tail.

    The list belongs to an append-only :class:`BlockChain`, so the first *n* items never
    change; viewing them instead of copying keeps a fingerprint O(1) in history length.
    A *body* that is itself a plain view (no head, no tail) is unwrapped, so indexing is
    one level deep. Lengths are fixed at construction (the tracker and the layout index
    these views a hundred times a turn: speed over brevity in ``__getitem__``).
    """

    __slots__ = ("_body", "_head", "_head_len", "_n", "_size", "_tail")
    _body: Sequence[T]
    _head: Sequence[T]
    _head_len: int
    _n: int
    _size: int
    _tail: Sequence[T]

    def __init__(self, head: Sequence[T], body: Sequence[T], n: int, tail: Sequence[T]) -> None:
        if type(body) is _Spliced and not body._head_len and body._size == body._n:
            body = body._body
        self._head = head
        self._body = body
        self._n = n
        self._tail = tail
        self._head_len = len(head)
        self._size = self._head_len + n + len(tail)

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...
    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._size))]
        if index < 0:
            index += self._size
            if index < 0:
                raise IndexError(index)
        if index < self._head_len:
            return self._head[index]
        index -= self._head_len
        if index < self._n:
            return self._body[index]
        if index - self._n >= len(self._tail):
            raise IndexError(index + self._head_len)
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

    __slots__ = ("_base", "_len", "_offset")

    def __init__(self, base: Sequence[int], offset: int) -> None:
        self._len = len(base)
        # A plain view over a growing list: index the list itself, within this length.
        if type(base) is _Spliced and not base._head_len and base._size == base._n:
            base = base._body
        self._base = base
        self._offset = offset

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...
    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._len))]
        if index < 0:
            index += self._len
            if index < 0:
                raise IndexError(index)
        elif index >= self._len:
            raise IndexError(index)
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
            effort, whether any image is present).
        messages: One digest per message, over its blocks as sent (a suffix folded into the
            newest user turn is not part of that message's digest).
        system_settings: Digest of the settings folded into system keys (speed, citations);
            ``""`` when both are at their defaults.
    """

    model: str
    tools: str
    system: str
    suffix: str
    settings: str
    messages: Sequence[str] = attrs.field(eq=False)
    system_settings: str = ""


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
        groups: Each position's lookback position (non-decreasing; one per tool run, and a
            stripped thinking block shares its predecessor's); ``None``: one per block.
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
    groups: Sequence[int] | None = attrs.field(default=None, eq=False, repr=False)

    def lookback_floor(self, position: int, lookback: int = LOOKBACK) -> int:
        """The lowest position a breakpoint at *position* checks (see :data:`LOOKBACK`)."""
        return lookback_floor(self.groups, position, lookback)

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


class _View:
    """Keys, cumulative tokens and lookback groups of a chain for one seed and strip rule.

    Lists only grow, except when more thinking becomes stripped: then the lists are
    replaced (never cut in place), so fingerprints already handed out keep their values.
    """

    __slots__ = ("cum", "groups", "keys", "kinds", "seed", "strip", "stripped")

    def __init__(self, seed: bytes, strip: bool) -> None:
        self.seed = seed
        self.strip = strip
        self.stripped = 0  # thinking blocks (from the first) treated as stripped
        self.keys: list[bytes] = []
        self.cum: list[int] = []
        self.groups: list[int] = []
        self.kinds: list[int] = []  # kind of the last block that is not stripped


class BlockChain:
    """Append-only message blocks with their digests, tokens and cumulative keys.

    Each appended block is hashed and counted once. Keys depend on what stands in front
    of the messages (the *seed*) and on whether the model strips earlier thinking; the
    chain for the most recent seed is kept and extended in place, so a turn with an
    unchanged prefix costs only its new blocks.
    """

    def __init__(self) -> None:
        self._digests: list[bytes] = []
        self._tokens: list[int] = []
        self._kinds: list[int] = []
        self._cum: list[int] = []
        self._starts: list[int] = []
        self._message_digests: list[str] = []
        self._thinking: list[int] = []  # block indexes of assistant thinking blocks
        self._boundary = 0  # first block of the newest user turn that is not tool results
        self._has_images = False
        self._has_citations = False
        self._views: dict[bool, _View] = {}
        self._content = ROOT  # a chain over every block digest, stripped or not

    def append(
        self,
        role: str,
        blocks: Sequence[Mapping[str, Any]],
        encoded: Sequence[bytes] | None = None,
    ) -> None:
        """Add one message's content blocks (already normalised to a list of dicts), with
        their bytes as sent when already encoded (see :func:`block_digest`)."""
        start = len(self._digests)
        self._starts.append(start)
        total = self._cum[-1] if self._cum else 0
        message = xxhash.xxh3_128()
        for i, block in enumerate(blocks):
            digest = block_digest(
                f"{role}:{0 if i == 0 else 1}", block, encoded[i] if encoded else None
            )
            message.update(digest)
            self._digests.append(digest)
            self._content = chain(self._content, digest)
            count = block_tokens(block)
            self._tokens.append(count)
            total += count
            self._cum.append(total)
            kind = _KINDS.get(str(block.get("type")), _PLAIN)
            self._kinds.append(kind)
            if kind == _THINKING and role == "assistant":
                self._thinking.append(start + i)
            if block.get("type") == "image":
                self._has_images = True
            if _cites(block):
                self._has_citations = True
        if role == "user" and not _answers_tools(blocks):
            self._boundary = start
        self._message_digests.append(message.hexdigest())

    @property
    def has_images(self) -> bool:
        """Whether any message holds an image block (it folds into message keys)."""
        return self._has_images

    @property
    def content_key(self) -> bytes:
        """A key over every block appended (stripped thinking included), for body digests."""
        return self._content

    @property
    def has_citations(self) -> bool:
        """Whether any document block has citations enabled (it folds into system keys)."""
        return self._has_citations

    @property
    def block_count(self) -> int:
        """Number of message blocks so far."""
        return len(self._digests)

    @property
    def message_count(self) -> int:
        """Number of messages so far."""
        return len(self._starts)

    def is_thinking(self, index: int) -> bool:
        """Whether block *index* is a thinking block (it may not carry a breakpoint)."""
        return self._kinds[index] == _THINKING

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
        """Cumulative tokens within the messages (nothing stripped), read-only view."""
        return _Spliced((), self._cum, len(self._cum), ())

    def keys(self, seed: bytes) -> Sequence[bytes]:
        """Return the cumulative keys of every message block after *seed*, as a view."""
        return self.view(seed)[0]

    def view(
        self, seed: bytes, *, strip: bool = False
    ) -> tuple[Sequence[bytes], Sequence[int], Sequence[int]]:
        """Return keys, cumulative tokens and lookback groups of every message block.

        Args:
            seed: The key in front of the first message block.
            strip: Whether thinking before the newest user turn that is not a tool result
                is stripped (models that do not keep earlier thinking): such a block keeps
                its index but repeats its predecessor's key, tokens and group.

        Groups count from 0 and are equal across a run of consecutive ``tool_use`` (or
        ``tool_result``) blocks.
        """
        view = self._views.get(strip)
        if view is None or view.seed != seed:
            # A new view rather than clearing the old one: fingerprints already handed out
            # keep viewing the lists they were built with.
            view = self._views[strip] = _View(seed, strip)
        target = bisect.bisect_left(self._thinking, self._boundary) if strip else 0
        if view.stripped != target:
            first = self._thinking[view.stripped]
            view.keys, view.cum = view.keys[:first], view.cum[:first]
            view.groups, view.kinds = view.groups[:first], view.kinds[:first]
            view.stripped = target
        keys, cum, groups, kinds = view.keys, view.cum, view.groups, view.kinds
        limit = self._thinking[target - 1] + 1 if target else 0  # thinking below is stripped
        for i in range(len(keys), len(self._digests)):
            key = keys[-1] if keys else seed
            total = cum[-1] if cum else 0
            group = groups[-1] if groups else -1
            last = kinds[-1] if kinds else _PLAIN
            kind = self._kinds[i]
            if kind == _THINKING and i < limit:
                keys.append(key)
                cum.append(total)
                groups.append(max(group, 0))
                kinds.append(last)
                continue
            keys.append(chain(key, self._digests[i]))
            cum.append(total + self._tokens[i])
            run = kind in (_TOOL_USE, _TOOL_RESULT) and kind == last and group >= 0
            groups.append(group if run else group + 1)
            kinds.append(kind)
        n = len(self._digests)
        return _Spliced((), keys, n, ()), _Spliced((), cum, n, ()), _Spliced((), groups, n, ())


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
    body: Mapping[str, Any],
    *,
    suffix_in_system: bool = False,
    suffix_in_message: bool = False,
    models: Mapping[str, ModelInfo] = MODELS,
) -> Fingerprint:
    """Fingerprint any request body (the full, non-incremental path).

    Args:
        body: Keyword arguments for ``client.messages.create`` (``model``, ``messages``,
            optional ``system``, ``tools``, ``tool_choice``, ``thinking``, ...).
        suffix_in_system: Treat the last system block as the dynamic suffix.
        suffix_in_message: Treat the last block of the last message as the dynamic suffix.
        models: The model table (whether the model strips earlier thinking).

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
    tools_end = len(keys)
    system_blocks = _as_blocks(body.get("system"))
    messages = list(body.get("messages", ()))
    chain_ = BlockChain()
    folded: Mapping[str, Any] | None = None
    for index, message in enumerate(messages):
        blocks = _as_blocks(message.get("content"))
        if suffix_in_message and index == len(messages) - 1 and blocks:
            blocks, folded = blocks[:-1], blocks[-1]
        chain_.append(str(message.get("role")), blocks)
    has_citations = chain_.has_citations or any(_cites(b) for b in system_blocks)
    system_settings = system_settings_digest(body, has_citations=has_citations)
    if system_settings is not None:
        previous = chain(previous, system_settings)
    static = system_blocks[:-1] if suffix_in_system and system_blocks else system_blocks
    for block in static:
        system_hash.update(add("system", block))
    system_end = len(keys)
    suffix = ""
    if suffix_in_system and system_blocks:
        suffix = _hex(b"system" + add("system", system_blocks[-1]))
    suffix_end = len(keys)

    seed = chain(previous, settings_digest(body, has_images=chain_.has_images))
    msg_keys, msg_cum, msg_groups = chain_.view(seed, strip=strips_thinking(model, models))
    volatile: tuple[int, ...] = ()
    for index, message in enumerate(messages):
        for i, block in enumerate(_as_blocks(message.get("content"))):
            if "cache_control" in block:
                marks.append((suffix_end + chain_.starts[index] + i, block["cache_control"]))
    groups = list(range(suffix_end))
    keys.extend(msg_keys)
    cum.extend(c + total for c in msg_cum)
    groups.extend(g + suffix_end for g in msg_groups)
    if folded is not None:
        volatile = (len(keys),)
        last = messages[-1]
        kind = f"{last.get('role')}:{0 if len(_as_blocks(last.get('content'))) == 1 else 1}"
        digest = block_digest(kind, folded)
        keys.append(chain(keys[-1] if keys else seed, digest))
        cum.append((cum[-1] if cum else 0) + block_tokens(folded))
        groups.append((groups[-1] if groups else -1) + 1)
        suffix = _hex(b"message" + digest)
    starts = tuple(suffix_end + s for s in chain_.starts)
    segments = Segments(
        model=_hex(model.encode()),
        tools=tools_hash.hexdigest(),
        system=system_hash.hexdigest(),
        suffix=suffix,
        settings=_hex(settings_digest(body, has_images=chain_.has_images)),
        messages=tuple(chain_.message_digests),
        system_settings="" if system_settings is None else _hex(system_settings),
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
        digest=body_digest(
            body_params(body), (keys[-1] if keys else ROOT) + chain_.content_key, sorted(marks)
        ),
        groups=tuple(groups),
    )

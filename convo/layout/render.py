"""Breakpoint planning and rendering a request body from prefix, suffix and history."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import attrs
import xxhash

from convo.errors import LayoutError
from convo.fingerprint import (
    LOOKBACK,
    ROOT,
    Fingerprint,
    Segments,
    _Offset,
    _Spliced,
    block_digest,
    body_digest,
    body_params,
    chain,
    settings_digest,
    strips_thinking,
    system_settings_digest,
)
from convo.layout.history import History
from convo.layout.prefix import TTL, TTLS, Prefix, freeze, thaw
from convo.tokens import block_tokens
from convo.wire import Fragment, encode, mark, marker_bytes

__all__ = [
    "LOOKBACK",
    "MAX_BREAKPOINTS",
    "Breakpoint",
    "Layout",
    "RenderedRequest",
    "Strategy",
    "Suffix",
    "SuffixPlacement",
]

# LOOKBACK (re-exported from convo.fingerprint): positions the server checks per
# breakpoint, counting the breakpoint itself; a run of tool_use or tool_result blocks
# counts as one.
#: Blocks with ``cache_control`` the API accepts in one request.
MAX_BREAKPOINTS = 4

Strategy = Literal["none", "rolling", "auto"]
SuffixPlacement = Literal["system", "message"]
Suffix = str | Callable[[], str] | None
BreakpointSource = Literal["prefix", "newest", "earlier", "lookback", "auto", "caller"]

_RESERVED = frozenset({"model", "system", "tools", "messages", "cache_control", "max_tokens"})


@attrs.frozen
class Breakpoint:
    """One block that carries ``cache_control`` in a rendered request.

    Attributes:
        position: Block position (tools, then system blocks, then message blocks).
        ttl: ``"5m"`` or ``"1h"``.
        tokens: Estimated tokens of the prefix through this block.
        source: Why it is there: ``prefix`` (end of the static prefix), ``newest`` (newest
            stable history block), ``earlier`` (the last block the conversation had before
            its newest user turn, when that turn's own breakpoint has a shorter TTL than the
            history's), ``lookback`` (keeps the previous write within the
            server's 20-block lookback), ``auto`` (top-level automatic caching, resolved
            to the last block), or ``caller`` (a marker in the caller's own blocks).
    """

    position: int
    ttl: TTL
    tokens: int
    source: BreakpointSource


@attrs.frozen
class RenderedRequest:
    """A request body ready for ``client.messages.create(**body)``, with its analysis.

    Attributes:
        body: The keyword arguments to send. It shares the history's stored message
            dicts (see :class:`History`); treat it as read-only.
        fingerprint: Cache keys and tokens per block position.
        breakpoints: Every breakpoint, in position order (at most 4).
        minimum: The model's minimum cacheable prefix, in tokens.
    """

    body: dict[str, Any] = attrs.field(eq=False, repr=False)
    fingerprint: Fingerprint
    breakpoints: tuple[Breakpoint, ...]
    minimum: int
    #: ``messages``, ``system`` and ``tools`` as sent (:mod:`convo.wire`), joined from the
    #: bytes each block was encoded to once.
    encoded: Mapping[str, Fragment] = attrs.field(eq=False, repr=False, factory=dict)
    #: Indexes of the messages that are not the history's stored dicts (a block gained a
    #: breakpoint, or the suffix was folded in), in order.
    replaced: tuple[int, ...] = attrs.field(eq=False, repr=False, default=())

    @property
    def model(self) -> str:
        """The model the request is for."""
        return self.fingerprint.model

    @property
    def tokens(self) -> int:
        """Estimated total input tokens."""
        return self.fingerprint.total_tokens


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise LayoutError(f"Layout {name} must be one of {allowed}; got {value!r}")


def _marked(block: Mapping[str, Any], ttl: str) -> dict[str, Any]:
    marker = {"type": "ephemeral"} if ttl == "5m" else {"ttl": ttl, "type": "ephemeral"}
    return {**block, "cache_control": marker}


class Layout:
    """Renders requests for one conversation: static prefix, dynamic suffix, history.

    Args:
        prefix: The static tools and system blocks.
        suffix: Text that may change every turn (a string, or a callable evaluated at each
            render); empty text is left out.
        suffix_placement: ``"system"`` (default) puts the suffix in an uncached system
            block after the prefix: a changed suffix re-keys all history after it.
            ``"message"`` folds it into the newest user turn, after that turn's content,
            so a changing suffix never invalidates cached history.
        history: Breakpoint strategy for messages. ``"none"``: only the prefix is cached.
            ``"rolling"``: a breakpoint on the newest stable block and, when the blocks
            added since the previous turn's breakpoint are more than the server's 20-block
            lookback, one more that keeps the previous write reachable. ``"auto"``:
            top-level automatic caching plus the prefix breakpoint.
        history_ttl: TTL of history breakpoints; defaults to the prefix's TTL. A ``"1h"``
            history after a ``"5m"`` prefix is refused (1h breakpoints must come first).
        newest_ttl: TTL of the newest user turn's own breakpoint (``"rolling"``); defaults
            to *history_ttl*. ``newest_ttl="5m"`` under a ``"1h"`` history puts the 1h
            breakpoint on the last block before the newest user turn (the previous answer)
            and a 5m one on that turn: the entry at the 1h breakpoint holds the whole
            conversation before the turn for an hour, and only the previous answer is
            written at the 1h rate, the turn's own message at the 5m one. A first turn,
            with no earlier block of its own, gets *history_ttl*.
        lookback_guard: Add the extra ``"rolling"`` breakpoint (turn off only to study
            what happens without it).
        max_tokens: Default ``max_tokens`` of rendered bodies.

    Raises:
        LayoutError: for an unknown option, a TTL order the API would refuse, or
            ``history="auto"`` with ``suffix_placement="message"`` (automatic caching
            would put its breakpoint on the volatile suffix).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        prefix: Prefix,
        *,
        suffix: Suffix = None,
        suffix_placement: SuffixPlacement = "system",
        history: Strategy = "rolling",
        history_ttl: TTL | None = None,
        newest_ttl: TTL | None = None,
        lookback_guard: bool = True,
        max_tokens: int = 1024,
    ) -> None:
        _check_choice("suffix_placement", suffix_placement, ("system", "message"))
        _check_choice("history", history, ("none", "rolling", "auto"))
        ttl = prefix.ttl if history_ttl is None else history_ttl
        _check_choice("history_ttl", ttl, tuple(TTLS))
        newest = ttl if newest_ttl is None else newest_ttl
        _check_choice("newest_ttl", newest, tuple(TTLS))
        if ttl == "5m" and newest == "1h":
            raise LayoutError(
                'newest_ttl="1h" after a 5m history would put a 1h breakpoint after a 5m one, '
                'which the API refuses; use history_ttl="1h" or newest_ttl="5m"'
            )
        if prefix.ttl == "5m" and ttl == "1h" and history != "none":
            raise LayoutError(
                'history_ttl="1h" after a prefix with ttl="5m" would put a 1h breakpoint '
                'after a 5m one, which the API refuses; use Prefix(ttl="1h") or history_ttl="5m"'
            )
        if history == "auto" and suffix_placement == "message":
            raise LayoutError(
                'history="auto" caches the last block, which suffix_placement="message" makes '
                'the volatile suffix; use history="rolling" or suffix_placement="system"'
            )
        if not callable(suffix) and suffix is not None and not isinstance(suffix, str):
            raise TypeError(
                f"suffix must be a str, a callable returning str, or None; got {suffix!r}"
            )
        self.prefix = prefix
        self.suffix = suffix
        self.suffix_placement: SuffixPlacement = suffix_placement
        self.strategy: Strategy = history
        self.history_ttl: TTL = ttl
        self.newest_ttl: TTL = newest
        self.lookback_guard = lookback_guard
        self.max_tokens = max_tokens
        self._system = [thaw(b) for b in prefix.system]
        self._strip_thinking = strips_thinking(prefix.model, prefix.models)
        self._tools = [thaw(t) for t in prefix.tools]
        # Each prefix block encoded once; the arrays per set of breakpoints on them.
        self._tool_wire = list(prefix.encoded[: len(self._tools)])
        self._system_wire = list(prefix.encoded[len(self._tools) :])
        self._head_wire: dict[tuple[tuple[int, str], ...], tuple[bytes, bytes, bytes]] = {}

    def _suffix_text(self) -> str:
        value = self.suffix() if callable(self.suffix) else self.suffix
        if value is None:
            return ""
        if not isinstance(value, str):
            raise TypeError(f"the suffix callable must return a str; got {value!r}")
        return value if value.strip() else ""

    def render(
        self,
        history: History | Sequence[Mapping[str, Any]],
        *,
        params: Mapping[str, Any] | None = None,
        max_tokens: int | None = None,
    ) -> RenderedRequest:
        """Render the request body for the next call.

        Args:
            history: The conversation so far, ending with the turn to send. A
                :class:`History` renders in time independent of its length; a plain list
                is copied and hashed whole on every call.
            params: Other request fields (``tool_choice``, ``thinking``, ``temperature``,
                ``metadata``, ...), deep-copied into the body.
            max_tokens: Overrides the layout's ``max_tokens``.

        Raises:
            LayoutError: for an empty history, more than 4 breakpoints, a TTL order the
                API refuses, or a suffix to fold into a turn that is not the user's.
        """
        if not isinstance(history, History):
            history = History(history)
        if not len(history):
            raise LayoutError("history is empty; render needs at least one user message")
        # Deep-copied, so a caller's later change to its dicts changes nothing sent.
        extra = thaw(freeze(dict(params), "params")) if params else {}
        reserved = _RESERVED & set(extra)
        if reserved:
            raise LayoutError(
                f"params may not set {sorted(reserved)}: the layout owns them "
                "(pass max_tokens= to render; put model, tools and system in the Prefix)"
            )
        prefix, info = self.prefix, self.prefix.info
        suffix_text = self._suffix_text()
        suffix_block = {"text": suffix_text, "type": "text"} if suffix_text else None
        in_system = suffix_block is not None and self.suffix_placement == "system"
        in_message = suffix_block is not None and self.suffix_placement == "message"
        stored = history.stored
        if in_message and stored[-1]["role"] != "user":
            raise LayoutError(
                'suffix_placement="message" folds the suffix into the newest user turn, but '
                "the history ends with an assistant message"
            )

        # Positions and keys in front of the messages.
        head_keys: list[bytes] = list(prefix.keys)
        head_tokens: list[int] = list(prefix.cumulative)
        tools_end, system_end = len(prefix.tools), len(prefix.keys)
        blocks = history.chain
        system_settings = system_settings_digest(extra, has_citations=blocks.has_citations)
        system_seed = head_keys[tools_end - 1] if tools_end else ROOT
        if system_settings is not None:
            # Speed or citations re-key the system blocks and everything after them.
            system_seed = chain(system_seed, system_settings)
            previous = system_seed
            for i in range(tools_end, system_end):
                previous = chain(previous, prefix.block_digests[i])
                head_keys[i] = previous
        suffix_digest = ""
        if in_system:
            assert suffix_block is not None
            digest = block_digest("system", suffix_block)
            suffix_digest = xxhash.xxh3_128_hexdigest(b"system" + digest)
            head_keys.append(
                chain(head_keys[-1] if len(head_keys) > tools_end else system_seed, digest)
            )
            head_tokens.append(prefix.tokens + block_tokens(suffix_block))
        suffix_end = len(head_keys)
        offset = head_tokens[-1] if head_tokens else 0

        settings = settings_digest(extra, has_images=blocks.has_images)
        in_front = head_keys[-1] if len(head_keys) > tools_end else system_seed
        msg_keys, msg_cum, msg_groups = blocks.view(
            chain(in_front, settings), strip=self._strip_thinking
        )
        n = blocks.block_count
        last_stable = suffix_end + n - 1
        tail_keys: tuple[bytes, ...] = ()
        tail_tokens: tuple[int, ...] = ()
        tail_groups: tuple[int, ...] = ()
        volatile: tuple[int, ...] = ()
        if in_message:
            assert suffix_block is not None
            digest = block_digest("user:1", suffix_block)
            suffix_digest = xxhash.xxh3_128_hexdigest(b"message" + digest)
            tail_keys = (chain(msg_keys[-1], digest),)
            tail_tokens = (offset + msg_cum[-1] + block_tokens(suffix_block),)
            tail_groups = (suffix_end + msg_groups[-1] + 1,)
            volatile = (suffix_end + n,)
        keys = _Spliced(head_keys, msg_keys, n, tail_keys)
        tokens = _Spliced(head_tokens, _Offset(msg_cum, offset), n, tail_tokens)
        groups = _Spliced(range(suffix_end), _Offset(msg_groups, suffix_end), n, tail_groups)

        breakpoints = self._plan(
            history, tokens, groups, system_end, suffix_end, last_stable, volatile
        )

        # The body: fresh containers, sharing history's stored message dicts.
        marks = {bp.position: bp.ttl for bp in breakpoints if bp.source not in ("caller", "auto")}
        tools = [_marked(t, marks[i]) if i in marks else dict(t) for i, t in enumerate(self._tools)]
        system = [
            _marked(b, marks[i + tools_end]) if i + tools_end in marks else dict(b)
            for i, b in enumerate(self._system)
        ]
        if in_system:
            system.append(dict(suffix_block or {}))
        messages = list(stored)
        starts = blocks.starts
        for position in [p for p in marks if p >= suffix_end]:
            relative = position - suffix_end
            index = _message_of(starts, relative)
            message = messages[index]
            content = list(message["content"])
            content[relative - starts[index]] = _marked(
                content[relative - starts[index]], marks[position]
            )
            messages[index] = {**message, "content": content}
        if in_message:
            last = messages[-1]
            messages[-1] = {**last, "content": [*last["content"], dict(suffix_block or {})]}
        body: dict[str, Any] = {"max_tokens": self.max_tokens if max_tokens is None else max_tokens}
        body["messages"] = messages
        body["model"] = prefix.model
        if system:
            body["system"] = system
        if tools:
            body["tools"] = tools
        body.update(extra)
        if self.strategy == "auto":
            ttl = self.history_ttl
            body["cache_control"] = (
                {"type": "ephemeral"}
                if ttl == "5m"
                else {
                    "ttl": ttl,
                    "type": "ephemeral",
                }
            )
        encoded, replaced = self._encode(
            history,
            marks,
            tools_end,
            suffix_end,
            suffix_block,
            in_system=in_system,
            in_message=in_message,
        )
        caller_markers = dict(prefix._caller_markers)
        caller_markers.update((suffix_end + p, m) for p, m in history.markers.items())
        all_marks = sorted(
            (
                bp.position,
                caller_markers[bp.position]
                if bp.source == "caller"
                else {"type": "ephemeral"}
                if bp.ttl == "5m"
                else {"ttl": bp.ttl, "type": "ephemeral"},
            )
            for bp in breakpoints
            if bp.source != "auto"
        )
        segments = Segments(
            model=xxhash.xxh3_128_hexdigest(prefix.model.encode()),
            tools=prefix.tools_digest,
            system=prefix.system_digest,
            suffix=suffix_digest,
            settings=xxhash.xxh3_128_hexdigest(settings),
            messages=blocks.message_digests,
            system_settings=""
            if system_settings is None
            else xxhash.xxh3_128_hexdigest(system_settings),
        )
        fingerprint = Fingerprint(
            model=prefix.model,
            keys=keys,
            tokens=tokens,
            tools_end=tools_end,
            system_end=system_end,
            suffix_end=suffix_end,
            message_starts=_Offset(starts, suffix_end),
            volatile=volatile,
            segments=segments,
            digest=body_digest(
                body_params(body, lists_only=True), keys[-1] + blocks.content_key, all_marks
            ),
            groups=groups,
        )
        return RenderedRequest(
            body=body,
            fingerprint=fingerprint,
            breakpoints=breakpoints,
            minimum=info.min_cacheable_tokens,
            encoded=encoded,
            replaced=replaced,
        )

    def _encode(
        self,
        history: History,
        marks: Mapping[int, str],
        tools_end: int,
        suffix_end: int,
        suffix_block: Mapping[str, Any] | None,
        *,
        in_system: bool,
        in_message: bool,
    ) -> tuple[dict[str, Fragment], tuple[int, ...]]:
        """``messages``, ``system`` and ``tools`` as bytes, from the blocks' cached bytes:
        only a block a breakpoint moved onto, and the suffix, are new each turn."""
        encoded: dict[str, Fragment] = {}
        head_marks = tuple(sorted((p, t) for p, t in marks.items() if p < suffix_end))
        head = self._head_wire.get(head_marks)
        if head is None:
            tools = [
                mark(b, marker_bytes(marks[i])) if i in marks else b
                for i, b in enumerate(self._tool_wire)
            ]
            system = [
                mark(b, marker_bytes(marks[i + tools_end])) if i + tools_end in marks else b
                for i, b in enumerate(self._system_wire)
            ]
            items = b",".join(system)
            head = self._head_wire[head_marks] = (
                b"[" + b",".join(tools) + b"]",
                items,
                b"[" + items + b"]",
            )
        if self._tool_wire:
            encoded["tools"] = head[0]
        if in_system:
            suffix = encode(suffix_block)
            encoded["system"] = (
                b"".join((b"[", head[1], b",", suffix, b"]")) if head[1] else b"[" + suffix + b"]"
            )
        elif head[1]:
            encoded["system"] = head[2]
        wire, starts = history.wire, history.chain.starts
        block_marks: dict[int, dict[int, bytes]] = {}
        for position, ttl in marks.items():
            if position >= suffix_end:
                relative = position - suffix_end
                index = _message_of(starts, relative)
                block_marks.setdefault(index, {})[relative - starts[index]] = marker_bytes(ttl)
        replaced = {i: wire.message(i, m) for i, m in block_marks.items()}
        last = len(wire) - 1
        if in_message:
            replaced[last] = wire.message(last, block_marks.get(last), encode(suffix_block))
        encoded["messages"] = wire.array(len(wire), replaced)
        return encoded, tuple(sorted(replaced))

    def _plan(
        self,
        history: History,
        tokens: Sequence[int],
        groups: Sequence[int],
        system_end: int,
        suffix_end: int,
        last_stable: int,
        volatile: tuple[int, ...],
    ) -> tuple[Breakpoint, ...]:
        """Choose breakpoints: the caller's, then the prefix's, newest, lookback, auto."""
        minimum = self.prefix.info.min_cacheable_tokens
        caller = dict(self.prefix.caller_marks)
        caller.update((suffix_end + p, ttl) for p, ttl in history.marks)
        if len(caller) > MAX_BREAKPOINTS:
            raise LayoutError(
                f"the prefix and history carry {len(caller)} cache_control markers; the API "
                f"accepts at most {MAX_BREAKPOINTS}: remove some of your own markers"
            )
        wanted: list[tuple[int, TTL, BreakpointSource]] = []
        if system_end and system_end - 1 not in caller:
            wanted.append((system_end - 1, self.prefix.ttl, "prefix"))
        if self.strategy == "rolling":
            # Under a 1h history with a 5m newest turn, the 1h entry ends before that turn.
            earlier = None
            if self.newest_ttl != self.history_ttl:
                earlier = self._earlier(history, suffix_end, last_stable)
            newest_ttl = self.history_ttl if earlier is None else self.newest_ttl
            wanted.append((last_stable, newest_ttl, "newest"))
            anchor = self._anchor(history, suffix_end)
            # Distances count lookback positions, not blocks: a parallel fan-out (a run of
            # tool_use, then of tool_result) is two positions however many calls it holds.
            if (
                self.lookback_guard
                and anchor is not None
                and groups[last_stable] - groups[anchor] >= LOOKBACK
            ):
                # The deepest block whose window still reaches the anchor.
                guard = bisect.bisect_right(groups, groups[anchor] + LOOKBACK - 1) - 1
                while guard > anchor and _is_thinking(history, guard - suffix_end):
                    guard -= 1  # thinking blocks cannot carry cache_control
                before = earlier is not None and guard < earlier  # 1h ones come first
                wanted.append((guard, self.history_ttl if before else newest_ttl, "lookback"))
            if earlier is not None:
                wanted.append((earlier, self.history_ttl, "earlier"))
        # Never below the minimum (it would write nothing), never on a volatile block,
        # never twice on one block; the first-listed wins when slots run out.
        planned: dict[int, tuple[TTL, BreakpointSource]] = {}
        free = MAX_BREAKPOINTS - len(caller) - (self.strategy == "auto")
        for position, ttl, source in wanted:
            if (
                len(planned) < free
                and tokens[position] >= minimum
                and position not in volatile
                and position not in caller
                and position not in planned
            ):
                planned[position] = (ttl, source)
        result = [Breakpoint(p, t, tokens[p], s) for p, (t, s) in planned.items()]
        result += [Breakpoint(p, t, tokens[p], "caller") for p, t in caller.items()]  # type: ignore[arg-type]
        if self.strategy == "auto":
            last = len(tokens) - 1
            if last in caller and caller[last] != self.history_ttl:
                raise LayoutError(
                    f"the last block carries a {caller[last]} cache_control and automatic "
                    f"caching asks for {self.history_ttl}; the API refuses the mismatch"
                )
            if free < 0:
                raise LayoutError(
                    "automatic caching needs one of the 4 breakpoint slots, and your markers "
                    "use all of them: remove one"
                )
            if last not in caller:
                result.append(Breakpoint(last, self.history_ttl, tokens[last], "auto"))
        result.sort(key=lambda bp: bp.position)
        seen_5m = None
        for bp in result:
            if bp.ttl == "5m" and seen_5m is None:
                seen_5m = bp
            elif bp.ttl == "1h" and seen_5m is not None:
                raise LayoutError(
                    f"a 1h breakpoint at block {bp.position} ({bp.source}) follows a 5m one at "
                    f"block {seen_5m.position} ({seen_5m.source}); the API requires every 1h "
                    "breakpoint before every 5m one: make the later marker 5m or the earlier 1h"
                )
        return tuple(result)

    def _earlier(self, history: History, suffix_end: int, last_stable: int) -> int | None:
        """Position of the last block before the newest user turn: the end of the newest
        assistant message (thinking blocks cannot carry cache_control), if there is one
        and a user turn follows it."""
        index = history.last_assistant
        starts = history.chain.starts
        if index < 0 or index + 1 >= len(starts):
            return None
        position = suffix_end + starts[index + 1] - 1
        first = suffix_end + starts[index]
        while position >= first and _is_thinking(history, position - suffix_end):
            position -= 1
        return position if first <= position < last_stable else None

    def _anchor(self, history: History, suffix_end: int) -> int | None:
        """Position of the previous turn's newest breakpoint, if the history shows one.

        The previous request ended with the message just before the newest assistant
        message; its newest stable block was that message's last block (a suffix folded
        into it then is not in the history, so the position is unchanged).
        """
        index = history.last_assistant
        if index < 1:
            return None
        starts = history.chain.starts
        return suffix_end + starts[index] - 1


def _is_thinking(history: History, relative: int) -> bool:
    return 0 <= relative < history.chain.block_count and history.chain.is_thinking(relative)


def _message_of(starts: Sequence[int], relative: int) -> int:
    lo, hi = 0, len(starts)
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        if starts[mid] <= relative:
            lo = mid
        else:
            hi = mid
    return lo

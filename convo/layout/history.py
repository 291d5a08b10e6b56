"""Append-only conversation history, hashed and counted once per block."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from convo.errors import LayoutError
from convo.fingerprint import BlockChain
from convo.layout.prefix import check_block, check_cache_control
from convo.wire import WireMessages

__all__ = ["History", "normalise_message"]


def _sorted(value: Any) -> Any:
    """Deep-copy JSON data with every dict's keys sorted (deterministic bytes)."""
    if isinstance(value, Mapping):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value  # immutable: nothing to copy
    return copy.deepcopy(value)


def _as_dict(block: Any) -> Any:
    # SDK content blocks are pydantic models; echo exactly the fields the server sent.
    dump = getattr(block, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude_unset=True)
    return block


def normalise_message(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate one message and return a deep copy with list content and sorted keys.

    String content becomes one text block, which the server keys exactly like the string.

    Raises:
        LayoutError: for an unknown role, empty content, an empty text block, or an invalid
            ``cache_control`` marker.
    """
    if not isinstance(message, Mapping):
        raise LayoutError(f"{where} must be a dict with 'role' and 'content'; got {message!r}")
    role = message.get("role")
    if role not in ("user", "assistant", "system"):
        raise LayoutError(
            f"{where}.role must be 'user', 'assistant' or 'system' (a mid-conversation system "
            f"message, on the models that accept one); got {role!r}"
        )
    content = message.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, Sequence) or not content:
        raise LayoutError(f"{where}.content is empty; send at least one non-empty block")
    blocks = []
    for i, raw in enumerate(content):
        block = _as_dict(raw)
        here = f"{where}.content[{i}]"
        if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
            raise LayoutError(f"{here} must be a content block dict with a 'type'; got {raw!r}")
        check_block(block, here)
        blocks.append(_sorted(block))
    extra = {k: _sorted(v) for k, v in message.items() if k not in ("role", "content")}
    return {"content": blocks, "role": role, **extra}


class History:
    """An append-only list of messages, each validated, copied and hashed once.

    Messages are stored as deep copies with sorted keys, so mutating a dict after
    appending it changes nothing that is sent, and every render sends the same bytes.
    Rendered request bodies share these stored dicts rather than copying them (speed
    over purity: a copy per turn would make each turn cost O(history)); treat a rendered
    body as read-only.

    Args:
        messages: Messages to start with, oldest first.

    .. versionadded:: 0.1
    """

    def __init__(self, messages: Iterable[Mapping[str, Any]] = ()) -> None:
        self._messages: list[dict[str, Any]] = []
        self._chain = BlockChain()
        # (message-relative block position, ttl) of caller-supplied markers, oldest first.
        self._marks: list[tuple[int, str]] = []
        self._markers: dict[int, dict[str, Any]] = {}
        self._last_assistant = -1
        self._wire = WireMessages()
        self.extend(messages)

    def append(self, message: Mapping[str, Any]) -> None:
        """Add one message (a dict, or with SDK content blocks) at the end.

        Raises:
            LayoutError: if the message is invalid (see :func:`normalise_message`).
        """
        stored = normalise_message(message, f"messages[{len(self._messages)}]")
        start = self._chain.block_count
        for i, block in enumerate(stored["content"]):
            if "cache_control" in block:
                self._marks.append((start + i, check_cache_control(block["cache_control"], "")))
                self._markers[start + i] = block["cache_control"]
        try:
            encoded = self._wire.append(stored)
        except (TypeError, ValueError) as error:
            raise LayoutError(
                f"messages[{len(self._messages)}] cannot be sent as JSON: {error}"
            ) from error
        self._chain.append(stored["role"], stored["content"], encoded)
        if stored["role"] == "assistant":
            self._last_assistant = len(self._messages)
        self._messages.append(stored)

    def extend(self, messages: Iterable[Mapping[str, Any]]) -> None:
        """Append each of *messages* in order."""
        for message in messages:
            self.append(message)

    def __len__(self) -> int:
        return len(self._messages)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Return a deep copy of one stored message."""
        return copy.deepcopy(self._messages[index])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self._messages)):
            yield self[i]

    @property
    def chain(self) -> BlockChain:
        """The hashed, counted blocks (used by :class:`convo.layout.Layout`)."""
        return self._chain

    @property
    def wire(self) -> WireMessages:
        """The stored messages as encoded for the wire (used by :class:`convo.layout.Layout`)."""
        return self._wire

    @property
    def stored(self) -> Sequence[dict[str, Any]]:
        """The stored messages themselves (not copies); do not mutate them."""
        return self._messages

    @property
    def marks(self) -> Sequence[tuple[int, str]]:
        """``(message-relative block position, ttl)`` of caller ``cache_control`` markers."""
        return self._marks

    @property
    def markers(self) -> Mapping[int, dict[str, Any]]:
        """The caller's ``cache_control`` dicts, by message-relative block position."""
        return self._markers

    @property
    def last_assistant(self) -> int:
        """Index of the newest assistant message, or -1 if there is none."""
        return self._last_assistant

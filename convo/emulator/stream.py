"""The SSE events of a streamed message, and what a stream cut short is billed.

Events follow the streaming page's order: ``message_start`` (input side of usage and the
TTL split), ``ping``, per content block ``content_block_start`` / ``content_block_delta``...
/ ``content_block_stop``, then ``message_delta`` (one by default, as the API sends; the
config's ``message_deltas`` sends several, each carrying the *cumulative* usage), then
``message_stop``.

Billing of a cut stream (cuts fall between events, never inside one):

- cut before ``message_start``: nothing is billed (and the cache writes are withdrawn:
  the response never began);
- cut after it: the input side of ``message_start`` in full; output is the
  ``output_tokens`` of the last ``message_delta`` written before the cut, if any, else
  :func:`convo.tokens.estimate` of the text, ``partial_json`` and thinking of every
  content delta written before the cut.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from convo import tokens
from convo.emulator.config import Fault

__all__ = ["Cut", "cut_for", "stream_events"]

Event = tuple[str, dict[str, Any]]


def _pieces(text: str, words_per_piece: int = 4) -> list[str]:
    words = text.split(" ")
    return [
        " ".join(words[i : i + words_per_piece]) + (" " if i + words_per_piece < len(words) else "")
        for i in range(0, len(words), words_per_piece)
    ]


def _block_events(index: int, block: dict[str, Any]) -> list[Event]:
    def delta(body: dict[str, Any]) -> Event:
        return (
            "content_block_delta",
            {"type": "content_block_delta", "index": index, "delta": body},
        )

    def start(content_block: dict[str, Any]) -> Event:
        return (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": content_block},
        )

    kind = block["type"]
    if kind == "text":
        events = [start({"type": "text", "text": ""})]
        events += [delta({"type": "text_delta", "text": p}) for p in _pieces(block["text"])]
    elif kind == "thinking":
        events = [start({"type": "thinking", "thinking": "", "signature": ""})]
        events += [
            delta({"type": "thinking_delta", "thinking": p}) for p in _pieces(block["thinking"])
        ]
        events.append(delta({"type": "signature_delta", "signature": block["signature"]}))
    else:
        events = [start({**block, "input": {}})]
        partial = json.dumps(block["input"], separators=(",", ":"), ensure_ascii=False)
        events.append(delta({"type": "input_json_delta", "partial_json": partial}))
    events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


def stream_events(message: dict[str, Any], *, message_deltas: int = 1) -> list[Event]:
    """The SSE events for *message*, in the documented order, with cumulative usage."""
    usage = message["usage"]
    start_usage = {**usage, "output_tokens": min(1, usage["output_tokens"])}
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    start.pop("diagnostics", None)
    events: list[Event] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(message["content"]):
        events += _block_events(index, block)
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    output = usage["output_tokens"]
    for i in range(1, message_deltas + 1):
        # Each message_delta carries the usage *so far*: a client must replace, not add.
        delta_usage = {
            "input_tokens": usage["input_tokens"],
            "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
            "cache_read_input_tokens": usage["cache_read_input_tokens"],
            "output_tokens": output * i // message_deltas,
        }
        events.append(
            ("message_delta", {"type": "message_delta", "delta": dict(delta), "usage": delta_usage})
        )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


@attrs.frozen
class Cut:
    """Where a stream fault cuts the events, and what the cut stream bills.

    Attributes:
        at: Events written before the cut (``events[:at]``).
        started: Whether ``message_start`` was written (the response began).
        output: Output tokens billed.
    """

    at: int
    started: bool
    output: int


def _first(events: Sequence[Event], name: str) -> int:
    return next((i for i, (n, _) in enumerate(events) if n == name), len(events))


def cut_for(events: Sequence[Event], fault: Fault) -> Cut:
    """Where *fault* cuts *events*, and the output the cut stream is billed."""
    first_delta = min(_first(events, "content_block_delta"), _first(events, "message_delta"))
    if fault.after_events is not None:
        at = min(fault.after_events, len(events))
    elif fault.kind.endswith("_before_text"):
        at = first_delta
    else:
        at = min(first_delta + 1, len(events))
    written = events[:at]
    started = bool(written) and written[0][0] == "message_start"
    if not started:
        return Cut(at=at, started=False, output=0)
    reported = [d["usage"]["output_tokens"] for n, d in written if n == "message_delta"]
    if reported:
        return Cut(at=at, started=True, output=reported[-1])
    pieces = []
    for name, data in written:
        if name == "content_block_delta":
            body = data["delta"]
            pieces.append(
                body.get("text") or body.get("partial_json") or body.get("thinking") or ""
            )
    return Cut(at=at, started=True, output=tokens.estimate("".join(pieces)))

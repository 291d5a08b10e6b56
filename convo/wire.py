"""The request body as the API receives it: each block encoded once, the body joined.

The ``anthropic`` SDK turns the keyword arguments of ``messages.create`` into bytes on every
call: it deep-copies the whole request (``_utils/_prepare.copy_tree``, which drops omitted
values, turns tuples and iterators into lists, dumps pydantic models, formats dates and
reads base64 file inputs) and then JSON-encodes it (compact separators, ``ensure_ascii``
off, ``NaN`` refused). A conversation resends its whole history every turn, so that work
grows with the conversation.

convo applies that same transform and that same encoder *once per block*, when the block
enters the history (:class:`WireMessages`) or the prefix, and keeps the bytes. A request's
body is then joined from those fragments plus the few parts that change per turn: the
new messages, the suffix, and the blocks a moving breakpoint touches (a marked block is its
stored bytes with ``,"cache_control":{...}`` put before the closing brace, no re-encode).
The same bytes are what convo hashes for its cache keys (:func:`convo.fingerprint.block_digest`
is given them), so the fingerprint is by construction a hash of what the server receives.

The top-level fields go in the order the SDK's own ``messages.create`` (or
``messages.stream``) writes them, fields the SDK does not model after them, as its
``extra_body`` would put them: the bytes equal a fresh encoding of the body the SDK builds
from the same arguments. :func:`check` proves that per request when the debug switch is on
(:func:`set_check`, or ``CONVO_CHECK_WIRE=1`` in the environment; the test suite turns it on).

.. versionadded:: 0.3
"""

from __future__ import annotations

import bisect
import contextvars
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import anthropic
import attrs
import httpx2
from anthropic._utils._json import openapi_dumps
from anthropic._utils._prepare import prepare_request_data

__all__ = [
    "CREATE_ORDER",
    "OPTION_PARAMS",
    "STREAM_ORDER",
    "Request",
    "WireMessages",
    "WireMismatch",
    "check",
    "checking",
    "encode",
    "joined",
    "mark",
    "sdk_arguments",
    "set_check",
    "split_arguments",
]

#: The body fields of ``messages.create``, in the order the SDK writes them.
CREATE_ORDER = (
    "max_tokens",
    "messages",
    "model",
    "cache_control",
    "container",
    "diagnostics",
    "inference_geo",
    "metadata",
    "output_config",
    "service_tier",
    "speed",
    "stop_sequences",
    "stream",
    "system",
    "thinking",
    "tool_choice",
    "tools",
)
#: The body fields of ``messages.stream``, in the order the SDK writes them (not the same).
STREAM_ORDER = (
    "max_tokens",
    "messages",
    "model",
    "cache_control",
    "diagnostics",
    "inference_geo",
    "metadata",
    "output_config",
    "container",
    "service_tier",
    "speed",
    "stop_sequences",
    "system",
    "tools",
    "thinking",
    "tool_choice",
    "stream",
)
#: Arguments of ``messages.create`` that are request options, not body fields.
OPTION_PARAMS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})
#: Arguments the SDK sends as headers.
HEADER_PARAMS = {
    "user_profile_id": "anthropic-user-profile-id",
    "workspace_id": "anthropic-workspace-id",
}
_CREATE_FIELDS = frozenset(CREATE_ORDER)
_SCALARS = (str, int, bool, type(None))


class WireMismatch(AssertionError):
    """The bytes convo sent differ from the body the SDK would have built (a convo bug).

    Raised only with the debug check on (:func:`set_check`).
    """


def encode(value: Any) -> bytes:
    """The bytes the SDK sends for *value*: its request transform, then its JSON encoder.

    Raises:
        ValueError: for ``NaN`` or an infinity (the API refuses them; so does the SDK).
        TypeError: for a value JSON cannot carry.
    """
    if type(value) in _SCALARS:
        return openapi_dumps(value)
    if type(value) is dict and all(type(v) in _SCALARS for v in value.values()):
        # A flat dict of plain values (a text block, most blocks): the transform would
        # return an equal copy, so skip it (no date, model, file input or omitted value
        # can hide in a str, int, bool or None).
        return openapi_dumps(value)
    return openapi_dumps(prepare_request_data(value, location="body"))


def _key(name: str) -> bytes:
    return openapi_dumps(name) + b":"


def mark(fragment: bytes, marker: bytes) -> bytes:
    """A block's bytes with a ``cache_control`` *marker* added as its last key (as the
    layout's ``{**block, "cache_control": marker}`` would encode): no re-encode."""
    if fragment == b"{}":
        return b'{"cache_control":' + marker + b"}"
    return fragment[:-1] + b',"cache_control":' + marker + b"}"


def marker_bytes(ttl: str) -> bytes:
    """The encoded ``cache_control`` the layout places for *ttl*."""
    return (
        b'{"type":"ephemeral"}'
        if ttl == "5m"
        else b'{"ttl":"' + ttl.encode() + b'","type":"ephemeral"}'
    )


#: Bytes of joined messages kept in one growing buffer before it is sealed into an
#: immutable chunk (a request holds views of sealed chunks, never of the growing buffer).
CHUNK_BYTES = 1 << 16

#: An encoded field: bytes, or the pieces (bytes and views) that join into them.
Fragment = bytes | list[Any]


def joined(fragment: Fragment) -> bytes:
    """The bytes of a fragment."""
    return fragment if isinstance(fragment, bytes) else b"".join(fragment)


class WireMessages:
    """The encoded messages of an append-only history, kept joined.

    Each message is encoded once, block by block (:meth:`append`). :meth:`array` returns the
    JSON array of the first *n* messages, with some replaced (a message whose block gained a
    breakpoint, or the newest turn with the suffix folded in), as *pieces*: views of
    buffers that already hold the messages joined, plus the replaced messages. The body is
    joined from them once, when it is sent: a turn copies the history's bytes once, and
    encodes only what is new.

    Invariants: the messages' bytes, each followed by one comma, concatenated, are the
    sealed ``_chunks`` followed by ``_tail``; message *i* spans ``_offsets[i]`` to
    ``_offsets[i + 1]`` of that concatenation; sealed chunks never change (a view of one
    stays valid), and ``_tail`` is copied, never viewed.
    """

    __slots__ = (
        "_blocks",
        "_chunk_starts",
        "_chunks",
        "_offsets",
        "_tail",
        "_tail_start",
        "_tails",
    )

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._chunk_starts: list[int] = []
        self._tail = bytearray()
        self._tail_start = 0
        self._offsets = [0]
        self._blocks: list[list[bytes]] = []
        self._tails: list[bytes] = []

    def append(self, message: Mapping[str, Any]) -> list[bytes]:
        """Encode one normalised message (``content`` first, a list of block dicts); return
        its blocks' bytes."""
        keys = iter(message)
        if next(keys, None) != "content":
            raise ValueError("a normalised message starts with its 'content'")
        blocks = [encode(block) for block in message["content"]]
        tail = b"]" + b"".join(b"," + _key(k) + encode(message[k]) for k in keys) + b"}"
        self._blocks.append(blocks)
        self._tails.append(tail)
        self._tail += b'{"content":[' + b",".join(blocks) + tail + b","
        self._offsets.append(self._tail_start + len(self._tail))
        if len(self._tail) >= CHUNK_BYTES:
            self._chunks.append(bytes(self._tail))
            self._chunk_starts.append(self._tail_start)
            self._tail_start += len(self._tail)
            self._tail = bytearray()
        return blocks

    def __len__(self) -> int:
        return len(self._blocks)

    def blocks(self, index: int) -> Sequence[bytes]:
        """The bytes of message *index*'s blocks."""
        return self._blocks[index]

    def message(
        self, index: int, marks: Mapping[int, bytes] | None = None, extra: bytes | None = None
    ) -> bytes:
        """Message *index* with ``cache_control`` markers on some blocks (block index to
        encoded marker) and optionally one more block (a folded suffix) at the end."""
        blocks = list(self._blocks[index])
        for i, marker in (marks or {}).items():
            blocks[i] = mark(blocks[i], marker)
        if extra is not None:
            blocks.append(extra)
        return b'{"content":[' + b",".join(blocks) + self._tails[index]

    def _span(self, start: int, end: int, parts: list[Any]) -> None:
        """Add the pieces holding bytes *start* to *end* of the joined messages."""
        if start < self._tail_start:
            i = bisect.bisect_right(self._chunk_starts, start) - 1
            while start < end and start < self._tail_start:
                base = self._chunk_starts[i]
                chunk = self._chunks[i]
                stop = min(end, base + len(chunk))
                parts.append(memoryview(chunk)[start - base : stop - base])
                start, i = stop, i + 1
        if start < end:
            parts.append(bytes(self._tail[start - self._tail_start : end - self._tail_start]))

    def array(self, n: int, replaced: Mapping[int, bytes]) -> list[Any]:
        """The JSON array of messages ``0..n-1``, with *replaced* messages swapped in, as
        pieces to join (:func:`joined`)."""
        offsets = self._offsets
        parts: list[Any] = [b"["]
        start = 0
        for index in sorted(replaced):
            if index > start:
                self._span(offsets[start], offsets[index], parts)  # ends with a comma
            parts += (replaced[index], b",")
            start = index + 1
        if start < n:
            self._span(offsets[start], offsets[n] - 1, parts)
        elif len(parts) > 1:
            parts.pop()  # the comma after the last replaced message
        parts.append(b"]")
        return parts


@attrs.frozen
class Request:
    """One request ready for the SDK client: the body's fields, some already encoded.

    Attributes:
        body: The body fields, as the layout rendered them (plain data).
        encoded: Bytes for some fields (``messages``, ``system``, ``tools``), joined from
            cached fragments; the others are encoded when the body is.
        headers: Extra request headers (the diagnostics beta).
    """

    body: Mapping[str, Any] = attrs.field(repr=False)
    encoded: Mapping[str, Fragment] = attrs.field(repr=False, factory=dict)
    headers: Mapping[str, str] = attrs.field(factory=dict)

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of the equivalent ``messages.create`` call."""
        arguments = dict(self.body)
        if self.headers:
            extra = dict(arguments.get("extra_headers") or {})
            arguments["extra_headers"] = {**self.headers, **extra}
        return arguments


def split_arguments(
    body: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, str]]:
    """Split call arguments into SDK-modelled fields, extra body fields, request options
    and header fields (``user_profile_id``, ``workspace_id``)."""
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    options: dict[str, Any] = {}
    headers: dict[str, str] = {}
    for key, value in body.items():
        if key in _CREATE_FIELDS and key != "stream":
            fields[key] = value
        elif key in OPTION_PARAMS:
            options[key] = value
        elif key in HEADER_PARAMS:
            headers[HEADER_PARAMS[key]] = value
        else:
            extra[key] = value
    return fields, extra, options, headers


def sdk_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``messages.create`` / ``messages.stream``: the fields the SDK
    models as they are, the others in ``extra_body`` (the SDK takes no other keywords)."""
    fields, extra, options, headers = split_arguments(arguments)
    call: dict[str, Any] = {**fields, **options}
    for name, header in HEADER_PARAMS.items():
        if header in headers:
            call[name] = headers[header]
    if extra:
        call["extra_body"] = {**extra, **(options.get("extra_body") or {})}
    return call


def body_bytes(request: Request, *, stream: bool) -> tuple[bytes, dict[str, Any], dict[str, str]]:
    """The body's bytes as the SDK would send them, its request options and headers.

    Fields the SDK models go in its order; ``extra_body`` fields and fields it does not
    model follow, in the order given (the SDK merges ``extra_body`` last).
    """
    fields, extra, options, headers = split_arguments(request.body)
    encoded = request.encoded
    extra_body = options.pop("extra_body", None)
    if extra_body:
        extra.update(extra_body)
    if stream:
        fields["stream"] = True
    # The SDK's own merge: {**fields_in_its_order, **extra}; an extra key that names a
    # field keeps the field's place and takes the extra value.
    ordered: dict[str, tuple[Any, Fragment | None]] = {
        key: (fields[key], encoded.get(key))
        for key in (STREAM_ORDER if stream else CREATE_ORDER)
        if key in fields
    }
    for key, value in extra.items():
        ordered[key] = (value, encoded.get(key) if key not in fields else None)
    parts: list[Any] = []
    for key, (value, fragment) in ordered.items():
        parts += (b",", _key(key))
        if fragment is None:
            parts.append(encode(value))
        elif isinstance(fragment, bytes):
            parts.append(fragment)
        else:
            parts += fragment
    parts[0] = b"{"
    parts.append(b"}")
    headers.update(request.headers)
    extra_headers = options.pop("extra_headers", None)
    if extra_headers:
        headers.update(extra_headers)
    return b"".join(parts), options, headers


# -- the debug check -------------------------------------------------------------------------

_check = os.environ.get("CONVO_CHECK_WIRE", "") not in ("", "0", "false", "no")
_captured: contextvars.ContextVar[list[bytes] | None] = contextvars.ContextVar(
    "convo_wire_captured", default=None
)
_probe: anthropic.Anthropic | None = None


class _Captured(Exception):
    pass


def set_check(enabled: bool) -> None:
    """Turn the debug check on or off: every request's bytes are compared with the body the
    SDK builds from the same arguments (slow: the SDK's whole encoding runs beside convo's).

    ``CONVO_CHECK_WIRE=1`` in the environment turns it on at import.
    """
    global _check
    _check = bool(enabled)


def checking() -> bool:
    """Whether the debug check is on."""
    return _check


def _capture(request: httpx2.Request) -> httpx2.Response:
    captured = _captured.get()
    if captured is not None:
        captured.append(request.read())
    raise _Captured


def sdk_body(arguments: Mapping[str, Any], *, stream: bool) -> bytes:
    """The bytes the SDK itself sends for ``messages.create(**arguments)`` (or
    ``messages.stream``), captured from a client whose transport sends nothing."""
    global _probe
    if _probe is None:
        _probe = anthropic.Anthropic(
            api_key="sk-convo-wire-probe",
            base_url="http://convo-wire-probe.invalid",
            max_retries=0,
            http_client=httpx2.Client(transport=httpx2.MockTransport(_capture)),
        )
    call = sdk_arguments(arguments)
    captured: list[bytes] = []
    token = _captured.set(captured)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the call sent for real has warned already
            if stream:
                with _probe.messages.stream(**call):
                    pass
            else:
                _probe.messages.create(**call)
    except anthropic.APIConnectionError:
        pass
    finally:
        _captured.reset(token)
    if len(captured) != 1:
        raise WireMismatch(f"the SDK sent {len(captured)} requests for one call")
    return captured[0]


def check(sent: bytes, request: Request, *, stream: bool) -> None:
    """Raise :class:`WireMismatch` unless *sent* decodes to the same JSON as the body the
    SDK builds from *request*'s arguments."""
    expected = sdk_body(request.arguments(), stream=stream)
    if sent == expected:
        return
    mine, theirs = json.loads(sent), json.loads(expected)
    if mine != theirs:
        differing = sorted(
            k for k in set(mine) | set(theirs) if mine.get(k, ...) != theirs.get(k, ...)
        )
        raise WireMismatch(
            f"the bytes sent differ from the SDK's body in {differing}: "
            f"sent {sent[:300]!r}..., SDK {expected[:300]!r}..."
        )

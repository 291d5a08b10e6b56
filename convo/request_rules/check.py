"""The checks in order: :func:`first_violation` (the emulator's), :func:`check_request` and
:class:`RequestChecker` (the library's)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from convo import models as models_module
from convo.request_rules import sizes
from convo.request_rules.blocks import (
    CONTENT_BLOCK_TYPES,
    MANY_IMAGES,
    MAX_IMAGE_SIDE,
    MAX_IMAGE_SIDE_MANY,
    blocks_violation,
    structure_violation,
    system_violation,
)
from convo.request_rules.model_rules import model_violation
from convo.request_rules.violation import RequestRejected, Violation, invalid

__all__ = ["RequestChecker", "check_request", "first_violation"]

_Table = Mapping[str, models_module.ModelInfo]

# A version is a date; which dates exist is the API's business (an unknown date passes).
_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = {k.lower(): v for k, v in headers.items()}
        value = lowered.get(name)
    return value


def _too_large(size: int) -> Violation:
    return Violation(
        413,
        "request_too_large",
        f"Request exceeds the maximum allowed number of bytes: {size} > "
        f"{sizes.MAX_BODY_BYTES} (32 MB).",
        "body_too_large",
    )


def _size_violation(
    body: Mapping[str, Any], bounds: sizes.Bounds | None, encoded_size: int | None
) -> Violation | None:
    if encoded_size is None and (bounds is None or bounds.size > sizes.MAX_BODY_BYTES):
        encoded_size = sizes.encoded_size(body)
    if encoded_size is not None and encoded_size > sizes.MAX_BODY_BYTES:
        return _too_large(encoded_size)
    return None


def _model_of(body: Mapping[str, Any], table: _Table) -> models_module.ModelInfo | None:
    model_id = body.get("model")
    if not isinstance(model_id, str):
        return None
    try:
        return models_module.lookup(model_id, table)
    except models_module.UnknownModel:
        return None  # the API answers 404; the emulator's parser does too


def _model_rules(
    body: Mapping[str, Any],
    table: _Table,
    bounds: sizes.Bounds | None,
    input_tokens: int | None,
    betas: Sequence[str],
) -> Violation | None:
    model = _model_of(body, table)
    if model is None:
        return None
    if input_tokens is None and bounds is not None and bounds.tokens <= model.context_window:
        input_tokens = 0  # the bound fits the window (and every larger one): nothing to count
    media = (bounds.images, bounds.documents) if bounds is not None else (0, 0)
    return model_violation(body, model, input_tokens=input_tokens, media=media, betas=betas)


def first_violation(
    body: Mapping[str, Any],
    *,
    models: _Table = models_module.MODELS,
    headers: Mapping[str, str] | None = None,
    betas: Sequence[str] = (),
    encoded_size: int | None = None,
    input_tokens: int | None = None,
    checked_messages: int = 0,
    endpoint: str = "messages",
) -> Violation | None:
    """Return the first rule *body* breaks, as the API would answer it, or ``None``.

    Args:
        body: A ``/v1/messages`` request body, as it will be sent.
        models: The model table (``convo.models.with_overrides(...)`` to change it).
        headers: The request headers, if known (the emulator): then ``anthropic-version``
            must be among them, and ``anthropic-beta`` adds to *betas*.
        betas: Beta features the request is sent with (``context-1m-2025-08-07`` raises
            Sonnet 4/4.5 to a 1M window; ``interleaved-thinking-2025-05-14`` lets
            ``budget_tokens`` exceed ``max_tokens``).
        encoded_size: The encoded body's size in bytes, if known; otherwise it is bounded
            from the body and encoded only when the bound is over the limit.
        input_tokens: The request's input tokens by :mod:`convo.tokens`, if already counted;
            otherwise counted only when a cheap upper bound exceeds the context window.
        checked_messages: How many leading messages were already checked in an earlier
            turn: their blocks and images are not checked again (sizes still count them;
            past 20 images every image is checked again, held to 2,000 pixels).
        endpoint: ``"messages"``, or ``"count_tokens"`` (only the size, header, block and
            image rules apply: it generates nothing).

    Returns:
        The :class:`Violation`, or ``None`` when the request passes every rule here. A body
        too malformed to check (no ``messages`` list, no model) passes: the API refuses it
        with its own message.
    """
    try:
        bounds: sizes.Bounds | None = sizes.bounds(body)
    except TypeError:  # a shape convo.tokens cannot count either: measure exactly
        bounds = None
    found = _size_violation(body, bounds, encoded_size)
    if found is not None:
        return found
    if headers is not None:
        version = _header(headers, "anthropic-version")
        if not version:
            return invalid("anthropic_version", "anthropic-version: header is required")
        if not _VERSION.fullmatch(version):
            return invalid(
                "anthropic_version", f'anthropic-version: "{version}" is not a valid version'
            )
        beta_header = _header(headers, "anthropic-beta") or ""
        betas = [*betas, *(b.strip() for b in beta_header.split(",") if b.strip())]
    if bounds is not None and bounds.images > MANY_IMAGES:
        # Every image in the request is held to the stricter size, checked or not.
        found = structure_violation(body, 0, MAX_IMAGE_SIDE_MANY)
    else:
        found = structure_violation(body, checked_messages, MAX_IMAGE_SIDE)
    if found is not None or endpoint == "count_tokens":
        return found
    return _model_rules(body, models, bounds, input_tokens, betas)


def check_request(
    body: Mapping[str, Any],
    *,
    models: _Table = models_module.MODELS,
    betas: Sequence[str] = (),
    encoded_size: int | None = None,
    input_tokens: int | None = None,
    checked_messages: int = 0,
) -> None:
    """Raise :class:`RequestRejected` if the API would refuse *body* before running it.

    Call it before sending: a refused request costs nothing and reaches nobody. The
    arguments are those of :func:`first_violation` (without *headers*: the SDK adds
    ``anthropic-version`` itself). A session checking every turn of one conversation
    walks less with a :class:`RequestChecker`.

    Raises:
        RequestRejected: with the status, error type, rule and message the API would give.
    """
    found = first_violation(
        body,
        models=models,
        betas=betas,
        encoded_size=encoded_size,
        input_tokens=input_tokens,
        checked_messages=checked_messages,
    )
    if found is not None:
        raise RequestRejected(found)


class _Prefix(NamedTuple):
    """What the checker knows of messages[: i + 1]: summed bounds, the first block or image
    refused at 8,000 pixels, and the first refused at 2,000 (for requests of many images)."""

    size: int
    tokens: int
    images: int
    documents: int
    refused: Violation | None
    refused_many: Violation | None


_EMPTY = _Prefix(0, 0, 0, 0, None, None)


class RequestChecker:
    """Checks the requests of one conversation, turn after turn, walking only what changed.

    A conversation resends its whole history every turn, and :func:`check_request` walks
    all of it (about a microsecond a message). A checker remembers each message it has
    checked, by identity: when the same message object comes back at the same position
    (convo's layout shares the history's stored message dicts between turns), its bounds
    and verdict are reused, so a turn costs an identity comparison per message plus the
    work for the new ones. The verdicts are those of :func:`first_violation`.

    Messages must not be changed in place once checked: a changed message needs to be a
    new object (as the layout makes one for a message that gains a ``cache_control``).

    Args:
        models: The model table.
        betas: Beta features every request is sent with.

    .. versionadded:: 0.1
    """

    def __init__(self, *, models: _Table = models_module.MODELS, betas: Sequence[str] = ()):
        self._models = models
        self._betas = tuple(betas)
        self._messages: list[object] = []
        self._prefixes: list[_Prefix] = []

    def check(
        self,
        body: Mapping[str, Any],
        *,
        input_tokens: int | None = None,
        encoded_size: int | None = None,
        unchanged: int | None = None,
    ) -> None:
        """Raise :class:`RequestRejected` if the API would refuse *body*.

        *input_tokens* and *encoded_size* are those of :func:`check_request`. *unchanged*
        promises that the first *unchanged* messages are the objects of the previous call
        (a session that only appends knows this): the identity scan, the one per-message
        cost left, is skipped.

        Raises:
            RequestRejected: with the status, error type, rule and message.
        """
        found = self.first_violation(
            body, input_tokens=input_tokens, encoded_size=encoded_size, unchanged=unchanged
        )
        if found is not None:
            raise RequestRejected(found)

    def first_violation(
        self,
        body: Mapping[str, Any],
        *,
        input_tokens: int | None = None,
        encoded_size: int | None = None,
        unchanged: int | None = None,
    ) -> Violation | None:
        """Return the first rule *body* breaks, or ``None`` (as :func:`first_violation`;
        the arguments are those of :meth:`check`)."""
        messages = body.get("messages")
        if not isinstance(messages, list):
            return first_violation(
                body,
                models=self._models,
                betas=self._betas,
                input_tokens=input_tokens,
                encoded_size=encoded_size,
            )
        try:
            outer = sizes.outer_bounds(body)
            prefix = self._walk(messages, unchanged)
        except TypeError:  # a shape convo.tokens cannot count: the plain check decides
            return first_violation(
                body, models=self._models, betas=self._betas, encoded_size=encoded_size
            )
        bounds = sizes.Bounds(
            outer.size + prefix.size,
            outer.tokens + prefix.tokens,
            prefix.images,
            prefix.documents,
        )
        found = _size_violation(body, bounds, encoded_size)
        if found is not None:
            return found
        found = system_violation(body, MAX_IMAGE_SIDE)
        if found is None:
            found = prefix.refused_many if prefix.images > MANY_IMAGES else prefix.refused
        if found is not None:
            return found
        return _model_rules(body, self._models, bounds, input_tokens, self._betas)

    def _walk(self, messages: list[Any], unchanged: int | None) -> _Prefix:
        known = self._messages
        limit = min(len(known), len(messages))
        if unchanged is not None:
            same = max(0, min(unchanged, limit))
        else:  # the first position whose message is not the object seen there before
            same = 0
            while same < limit and known[same] is messages[same]:
                same += 1
        del known[same:]
        del self._prefixes[same:]
        prefix = self._prefixes[-1] if self._prefixes else _EMPTY
        for index in range(same, len(messages)):
            message = messages[index]
            prefix = _extend(prefix, index, message)
            known.append(message)
            self._prefixes.append(prefix)
        return prefix


def _extend(prefix: _Prefix, index: int, message: Any) -> _Prefix:
    bounds = sizes.message_bounds(message)
    content = message.get("content") if isinstance(message, Mapping) else None
    where = f"messages.{index}.content"
    here = blocks_violation(content, where, CONTENT_BLOCK_TYPES, MAX_IMAGE_SIDE)
    here_many = (
        blocks_violation(content, where, CONTENT_BLOCK_TYPES, MAX_IMAGE_SIDE_MANY)
        if bounds.images
        else here
    )
    return _Prefix(
        prefix.size + bounds.size,
        prefix.tokens + bounds.tokens,
        prefix.images + bounds.images,
        prefix.documents + bounds.documents,
        prefix.refused or here,
        prefix.refused_many or here_many,
    )

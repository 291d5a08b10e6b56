"""The limits the Messages API enforces before it runs anything, as one pure check.

The emulator answers a request that breaks one of these rules with the API's error body; a
session checks before sending (:func:`check_request`, or a :class:`RequestChecker` per
conversation), so bad input gets a clear error and costs nothing. Both go through the same
rules, so the two cannot drift apart.

Rules, checked in this order (the first one broken is reported):

1. The encoded body is at most :data:`MAX_BODY_BYTES` (32 MB): 413 ``request_too_large``.
2. The ``anthropic-version`` header is present and a date (only when *headers* are given).
3. Every content block has a known ``type`` (system blocks: ``text``; ``tool_result``
   content: the types a tool result may carry); every image has a ``base64`` / ``url`` /
   ``file`` source, and a base64 image has a supported media type, at most 10 MB of data,
   valid base64, bytes that are the media type it claims, and sides of at most 8,000
   pixels (2,000 in a request of more than 20 images).
4. Model rules (skipped for a model the table does not know; the API answers 404 then):
   ``max_tokens`` at most the model's maximum output; the input within the context
   window; at most 100 or 600 images and documents; no assistant prefill on models that
   reject it (except a ``max_tokens: 0`` pre-warm); ``temperature`` and ``top_p`` in
   [0, 1] and as the model accepts them; thinking: a ``thinking.type`` the model
   accepts, ``budget_tokens`` >= 1,024 and below ``max_tokens``, no forced
   ``tool_choice``, and ``temperature`` / ``top_k`` / ``top_p`` as thinking allows.

Each rule, its source page and its status are listed in ``docs/emulator.md`` ("Requests
refused before anything runs"). The per-model facts (context window, maximum output,
prefill, sampling, thinking types) are data on :class:`convo.models.ModelInfo`.

Nothing here does I/O. The checks bound the body's size and tokens in one cheap pass and
encode or count exactly only when a bound is over the limit.

Modules: :mod:`~convo.request_rules.check` (the order), ``blocks`` (block types, images),
``sizes`` (bounds), ``model_rules``, ``streaming`` (the SDK's "Streaming is required"),
``violation`` (the value and the error).
"""

from convo.request_rules.blocks import (
    CONTENT_BLOCK_TYPES,
    IMAGE_MEDIA_TYPES,
    MANY_IMAGES,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_SIDE,
    MAX_IMAGE_SIDE_MANY,
    TOOL_RESULT_BLOCK_TYPES,
)
from convo.request_rules.check import RequestChecker, check_request, first_violation
from convo.request_rules.model_rules import (
    INTERLEAVED_THINKING_BETA,
    MAX_MEDIA,
    MAX_MEDIA_200K,
    MIN_THINKING_BUDGET,
)
from convo.request_rules.sizes import MAX_BODY_BYTES
from convo.request_rules.streaming import NONSTREAMING_MAX_TOKENS, needs_streaming
from convo.request_rules.violation import RequestRejected, Violation

__all__ = [
    "CONTENT_BLOCK_TYPES",
    "IMAGE_MEDIA_TYPES",
    "INTERLEAVED_THINKING_BETA",
    "MANY_IMAGES",
    "MAX_BODY_BYTES",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_SIDE",
    "MAX_IMAGE_SIDE_MANY",
    "MAX_MEDIA",
    "MAX_MEDIA_200K",
    "MIN_THINKING_BUDGET",
    "NONSTREAMING_MAX_TOKENS",
    "TOOL_RESULT_BLOCK_TYPES",
    "RequestChecker",
    "RequestRejected",
    "Violation",
    "check_request",
    "first_violation",
    "needs_streaming",
]

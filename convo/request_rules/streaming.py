"""The SDK's "Streaming is required" rule, mirrored so a session can stream on its own."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["NONSTREAMING_MAX_TOKENS", "needs_streaming"]

#: The SDK's ``MODEL_NONSTREAMING_TOKENS`` (anthropic 2.14, ``_constants.py``): model ids
#: whose non-streaming requests the SDK refuses above this ``max_tokens``. A test holds this
#: copy equal to the installed SDK's.
NONSTREAMING_MAX_TOKENS: Mapping[str, int] = {
    "claude-opus-4-20250514": 8_192,
    "claude-opus-4-0": 8_192,
    "claude-4-opus-20250514": 8_192,
    "anthropic.claude-opus-4-20250514-v1:0": 8_192,
    "claude-opus-4@20250514": 8_192,
    "anthropic.claude-opus-4-1-20250805-v1:0": 8_192,
    "claude-opus-4-1@20250805": 8_192,
}


def needs_streaming(model: str, max_tokens: int) -> bool:
    """Whether the SDK refuses this request unless it streams ("Streaming is required").

    Mirrors ``anthropic``'s ``_calculate_nonstreaming_timeout`` (``_base_client.py``, 2.14):
    a non-streaming request is refused when ``3600 * max_tokens / 128_000`` seconds exceeds
    10 minutes (``max_tokens`` above 21,333), or when the exact model id has a lower limit in
    :data:`NONSTREAMING_MAX_TOKENS` (Opus 4 / 4.1 snapshots: 8,192). The SDK applies it only
    when neither the call nor the client sets a timeout other than its default.
    """
    expected_seconds = 60 * 60 * max_tokens / 128_000
    limit = NONSTREAMING_MAX_TOKENS.get(model)
    return expected_seconds > 60 * 10 or bool(limit and max_tokens > limit)

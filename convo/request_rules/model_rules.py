"""The rules that depend on the model: output and context limits, media per request,
prefill, sampling parameters and thinking. The per-model facts are data on
:class:`convo.models.ModelInfo`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from convo import models
from convo.request_rules.sizes import count_input_tokens
from convo.request_rules.violation import Violation, invalid

__all__ = [
    "INTERLEAVED_THINKING_BETA",
    "MAX_MEDIA",
    "MAX_MEDIA_200K",
    "MIN_THINKING_BUDGET",
    "model_violation",
]

#: The smallest ``thinking.budget_tokens`` (extended-thinking page).
MIN_THINKING_BUDGET = 1024

#: The beta under which ``budget_tokens`` may exceed ``max_tokens`` (interleaved thinking).
INTERLEAVED_THINKING_BETA = "interleaved-thinking-2025-05-14"

#: Images and documents per request: 100 on models with a 200k-token context window, 600
#: on the others (vision page, "General limits").
MAX_MEDIA_200K = 100
MAX_MEDIA = 600

_FORCED_TOOL_CHOICES = ("any", "tool")
_THINKING_DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
_SEE_THINKING = (
    "Please consult our documentation at "
    f"{_THINKING_DOCS}#important-considerations-when-using-extended-thinking"
)


def _present(body: Mapping[str, Any], name: str) -> bool:
    return body.get(name) is not None


def _range_violation(body: Mapping[str, Any]) -> Violation | None:
    """``temperature`` and ``top_p`` lie in [0, 1] (Messages API reference)."""
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # absent, or a type the parser refuses with its own message
        if value < 0:
            return invalid("sampling_range", f"{name}: Input should be greater than or equal to 0")
        if value > 1:
            return invalid("sampling_range", f"{name}: Input should be less than or equal to 1")
    return None


def _sampling_violation(body: Mapping[str, Any], model: models.ModelInfo) -> Violation | None:
    found = _range_violation(body)
    if found is not None:
        return found
    if model.sampling == "default_only":
        temperature = body.get("temperature")
        if temperature is not None and temperature != 1:
            return invalid("sampling", "`temperature` is deprecated for this model.")
        for name in ("top_p", "top_k"):
            if _present(body, name):
                return invalid("sampling", f"`{name}` is deprecated for this model.")
    if (
        model.sampling == "temperature_or_top_p"
        and _present(body, "temperature")
        and _present(body, "top_p")
    ):
        return invalid(
            "sampling",
            "`temperature` and `top_p` cannot both be specified for this model. "
            "Please use only one.",
        )
    return None


def _thinking_violation(
    body: Mapping[str, Any], model: models.ModelInfo, max_tokens: int | None, betas: Sequence[str]
) -> Violation | None:
    thinking = body.get("thinking")
    if not isinstance(thinking, Mapping):
        return None
    kind = thinking.get("type")
    if not isinstance(kind, str) or kind == "disabled":
        return None
    if kind not in model.thinking_types:
        hint = (
            ' Use "thinking.type.adaptive" and "output_config.effort" to control thinking behavior.'
            if "adaptive" in model.thinking_types
            else ""
        )
        return invalid(
            "thinking_type", f'"thinking.type.{kind}" is not supported for this model.{hint}'
        )
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            return invalid("thinking_budget", "thinking.enabled.budget_tokens: Field required")
        if budget < MIN_THINKING_BUDGET:
            return invalid(
                "thinking_budget",
                "thinking.enabled.budget_tokens: Input should be greater than or equal to "
                f"{MIN_THINKING_BUDGET}",
            )
        # max_tokens 0 is a cache pre-warm, refused with thinking by its own rule.
        if max_tokens and budget >= max_tokens and INTERLEAVED_THINKING_BETA not in betas:
            return invalid(
                "thinking_budget",
                "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                f"documentation at {_THINKING_DOCS}#max-tokens-and-context-window-size",
            )
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping) and choice.get("type") in _FORCED_TOOL_CHOICES:
        return invalid(
            "thinking_tool_choice", "Thinking may not be enabled when tool_choice forces tool use."
        )
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        mode = "enabled" if kind == "enabled" else "enabled or in adaptive mode"
        return invalid(
            "thinking_sampling",
            f"`temperature` may only be set to 1 when thinking is {mode}. {_SEE_THINKING}",
        )
    if _present(body, "top_k"):
        return invalid(
            "thinking_sampling", f"`top_k` must be unset when thinking is enabled. {_SEE_THINKING}"
        )
    top_p = body.get("top_p")
    if isinstance(top_p, (int, float)) and not 0.95 <= top_p <= 1:
        return invalid(
            "thinking_sampling",
            "`top_p` must be greater than or equal to 0.95 or unset when thinking is enabled.",
        )
    return None


def model_violation(
    body: Mapping[str, Any],
    model: models.ModelInfo,
    *,
    input_tokens: int | None,
    media: tuple[int, int],
    betas: Sequence[str],
) -> Violation | None:
    """The first model rule *body* breaks: ``max_tokens``, context window, media count,
    prefill, sampling, thinking. *input_tokens* ``None`` means count them here; *media* is
    (images, binary documents)."""
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        max_tokens = None  # missing or malformed: the parser names the field
    if max_tokens is not None and max_tokens > model.max_output_tokens:
        return invalid(
            "max_tokens",
            f"max_tokens: {max_tokens} > {model.max_output_tokens}, which is the maximum allowed "
            f"number of output tokens for {model.id}",
        )

    window = model.context_window
    if model.long_context_beta is not None and model.long_context_beta in betas:
        window = max(window, 1_000_000)
    if input_tokens is None:
        input_tokens = count_input_tokens(body)
    if input_tokens is not None and input_tokens > window:
        return invalid(
            "context_window", f"prompt is too long: {input_tokens} tokens > {window} maximum"
        )

    images, documents = media
    most = MAX_MEDIA_200K if window <= 200_000 else MAX_MEDIA
    if images + documents > most:
        return invalid(
            "too_much_media", f"too many images and documents: {images} + {documents} > {most}"
        )

    messages = body.get("messages")
    # A pre-warm (max_tokens 0) generates nothing, so nothing is prefilled: whether the API
    # refuses one that ends with an assistant turn is not documented, and convo does not
    # refuse what it cannot show the API refuses (see docs/emulator.md).
    if (
        model.rejects_prefill
        and max_tokens != 0
        and isinstance(messages, list)
        and messages
        and isinstance(messages[-1], Mapping)
        and messages[-1].get("role") == "assistant"
    ):
        return invalid(
            "prefill",
            "This model does not support assistant message prefill. The conversation must end "
            "with a user message.",
        )
    return _sampling_violation(body, model) or _thinking_violation(body, model, max_tokens, betas)

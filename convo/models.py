"""What convo knows about each Claude model, as data.

The emulator and the library read the same table, so a rule changed here changes both
sides at once: the minimum cacheable prefix, the rate-limit class, whether cache reads
count toward input-tokens-per-minute, and the limits a request must respect before the
API runs it (context window, maximum output, prefill, sampling and thinking rules; see
:mod:`convo.request_rules`).

The table is data with a source date, not truth: the documentation moves, and one entry
(Sonnet 4.6) is disputed. Users override entries with :func:`with_overrides` or the
emulator's config instead of editing code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

import attrs

from convo.errors import ConvoError

__all__ = [
    "LIMITS_SOURCE_DATE",
    "LONG_CONTEXT_BETA",
    "MODELS",
    "SAMPLING_RULES",
    "SERVER_TOOL_TYPES",
    "SOURCE_DATE",
    "ModelInfo",
    "UnknownModel",
    "is_server_tool",
    "lookup",
    "with_overrides",
]

#: Type prefixes of the server tools (run by Anthropic) whose toggling invalidates system and
#: messages but not the custom tools: the server keys them after the custom tools.
#: Anthropic-defined client tools (``bash_*``, ``text_editor_*``, ``computer_*``) are ordinary
#: tools in this respect and keep their place.
SERVER_TOOL_TYPES = ("web_search_", "web_fetch_", "code_execution_")


def is_server_tool(tool: Mapping[str, object]) -> bool:
    """Whether *tool* is a server tool (web search, web fetch, code execution)."""
    kind = tool.get("type")
    return isinstance(kind, str) and kind.startswith(SERVER_TOOL_TYPES)


#: When the caching and rate-limit numbers below were read from the prompt-caching and
#: rate-limit docs.
SOURCE_DATE = dt.date(2026, 11, 1)

#: When the request limits (context window, maximum output, prefill, sampling and thinking
#: rules) were read; each entry's ``limits_source`` names its page.
LIMITS_SOURCE_DATE = dt.date(2026, 11, 30)

#: ``ModelInfo.sampling`` values: which sampling parameters a model accepts.
SAMPLING_RULES = ("any", "temperature_or_top_p", "default_only")

#: The beta header that raised Sonnet 4 and 4.5 to a 1M-token context window.
LONG_CONTEXT_BETA = "context-1m-2025-08-07"

_PAGE = "platform.claude.com/docs/en/models/{}/overview"


def _sampling_rule(instance: object, attribute: object, value: str) -> None:
    if value not in SAMPLING_RULES:
        raise ValueError(f"sampling must be one of {SAMPLING_RULES}, not {value!r}")


@attrs.frozen
class ModelInfo:
    """One model's caching, rate-limit and request-limit facts.

    Attributes:
        id: The model id as sent in requests (``claude-sonnet-4-6``).
        display_name: A human name (``Claude Sonnet 4.6``).
        min_cacheable_tokens: Prefix length, in tokens, below which a breakpoint writes
            nothing and no error is raised.
        rate_limit_class: Models of one class share RPM/ITPM/OTPM buckets.
        cache_reads_count_itpm: Whether cache reads count toward ITPM (Haiku 3.5 only).
        max_output_tokens: The largest ``max_tokens`` the model accepts.
        context_window: The largest total input, in tokens.
        keeps_thinking: Whether earlier turns' thinking blocks stay part of the prompt
            (Opus 4.5+, Sonnet 4.6+ and the 5 family, per the extended-thinking page). On
            models that strip them, a user turn that is not a tool result drops earlier
            thinking from the input, and the cache entry written with it no longer matches.
        released: Release date, for ``GET /v1/models``.
        note: Why an entry is uncertain, if it is.
        rejects_prefill: Whether a conversation ending with an assistant message (a
            prefill) is a 400 (the 4.6 models and later).
        sampling: Which sampling parameters the model accepts: ``"any"``;
            ``"temperature_or_top_p"`` (one of the two, not both: the 4.1/4.5/4.6
            generation); ``"default_only"`` (4.7 and later: ``temperature`` only at its
            default of 1, ``top_p`` and ``top_k`` not at all).
        thinking_types: The ``thinking.type`` values accepted besides ``"disabled"``:
            ``"enabled"`` (manual, with ``budget_tokens``) up to the 4.6 models,
            ``"adaptive"`` from 4.6 on; empty for a model without thinking.
        long_context_beta: A beta header that raises the context window to 1M tokens on
            this model, if there is one.
        limits_source: The page the request limits were read from (on
            :data:`LIMITS_SOURCE_DATE`).

    .. versionchanged:: 0.1
       ``rejects_prefill``, ``sampling``, ``thinking_types``, ``long_context_beta`` and
       ``limits_source`` added; ``context_window`` and ``max_output_tokens`` filled per model.
    """

    id: str
    display_name: str
    min_cacheable_tokens: int
    rate_limit_class: str
    cache_reads_count_itpm: bool = False
    max_output_tokens: int = 64_000
    context_window: int = 200_000
    keeps_thinking: bool = False
    released: dt.date = dt.date(2025, 1, 1)
    note: str = ""
    rejects_prefill: bool = False
    sampling: str = attrs.field(default="any", validator=_sampling_rule)
    thinking_types: tuple[str, ...] = attrs.field(default=("enabled",), converter=tuple)
    long_context_beta: str | None = None
    limits_source: str = ""


class UnknownModel(ConvoError, LookupError):
    """Raised by :func:`lookup` for a model id the table does not know."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"unknown model {model!r}; known models: {', '.join(sorted(MODELS))}. "
            "Add it with convo.models.with_overrides(...) or the emulator config."
        )
        self.model = model


def _m(
    id: str,
    name: str,
    minimum: int,
    klass: str,
    released: dt.date,
    **extra: object,
) -> ModelInfo:
    return ModelInfo(id, name, minimum, klass, released=released, **extra)  # type: ignore[arg-type]


# The request limits of each generation, from the model pages (Context window / Max output),
# the migration guides (prefill removed in 4.6, sampling parameters removed in 4.7) and the
# extended-thinking page (manual thinking rejected from 4.7 on). See docs/emulator.md,
# "Requests refused before anything runs", for the page of every rule.
_GEN_5 = {  # the 5 family and Opus 4.7/4.8: 1M context, 128k output, adaptive thinking only
    "context_window": 1_000_000,
    "max_output_tokens": 128_000,
    "rejects_prefill": True,
    "sampling": "default_only",
    "thinking_types": ("adaptive",),
    "keeps_thinking": True,
}
_GEN_46 = {  # Opus 4.6, Sonnet 4.6: 1M context, 128k output, both thinking modes
    "context_window": 1_000_000,
    "max_output_tokens": 128_000,
    "rejects_prefill": True,
    "sampling": "temperature_or_top_p",
    "thinking_types": ("enabled", "adaptive"),
    "keeps_thinking": True,
}

_TABLE = [
    _m(
        "claude-opus-5",
        "Claude Opus 5",
        512,
        "opus-5",
        dt.date(2026, 9, 1),
        **_GEN_5,
        limits_source="platform.claude.com/docs/en/models/overview (Compare models)",
    ),
    _m(
        "claude-fable-5",
        "Claude Fable 5",
        512,
        "fable-5",
        dt.date(2026, 6, 9),
        **_GEN_5,
        limits_source=_PAGE.format("fable-5"),
    ),
    _m(
        "claude-mythos-5",
        "Claude Mythos 5",
        512,
        "mythos-5",
        dt.date(2026, 6, 9),
        **_GEN_5,
        limits_source=_PAGE.format("fable-5")
        + " (Mythos 5 shares Fable 5's specifications and announcement)",
    ),
    _m(
        "claude-opus-4-8",
        "Claude Opus 4.8",
        1024,
        "opus-4",
        dt.date(2026, 5, 28),
        **_GEN_5,
        limits_source=_PAGE.format("opus-4-8"),
    ),
    _m(
        "claude-sonnet-5",
        "Claude Sonnet 5",
        1024,
        "sonnet-5",
        dt.date(2026, 8, 1),
        **_GEN_5,
        limits_source="platform.claude.com/docs/en/models/overview (Compare models)",
    ),
    _m(
        "claude-sonnet-4-6",
        "Claude Sonnet 4.6",
        1024,
        "sonnet-4",
        dt.date(2026, 2, 17),
        note="documented 1,024; several users observe about 2,048. Max output: the model page "
        "says 128K (2026-11); listings from May 2026 said 64K.",
        **_GEN_46,
        limits_source=_PAGE.format("sonnet-4-6"),
    ),
    _m(
        "claude-sonnet-4-5",
        "Claude Sonnet 4.5",
        1024,
        "sonnet-4",
        dt.date(2025, 9, 29),
        sampling="temperature_or_top_p",
        long_context_beta=LONG_CONTEXT_BETA,
        limits_source=_PAGE.format("sonnet-4-5"),
    ),
    _m(
        "claude-sonnet-4",
        "Claude Sonnet 4",
        1024,
        "sonnet-4",
        dt.date(2025, 5, 22),
        long_context_beta=LONG_CONTEXT_BETA,
        limits_source="models overview, legacy table (2025-10); not re-read: page retired",
    ),
    _m(
        "claude-opus-4-1",
        "Claude Opus 4.1",
        1024,
        "opus-4",
        dt.date(2025, 8, 5),
        max_output_tokens=32_000,
        sampling="temperature_or_top_p",
        limits_source="models overview, legacy table (2025-10); not re-read: page retired",
    ),
    _m(
        "claude-opus-4",
        "Claude Opus 4",
        1024,
        "opus-4",
        dt.date(2025, 5, 22),
        max_output_tokens=32_000,
        limits_source="models overview, legacy table (2025-10); not re-read: page retired",
    ),
    _m(
        "claude-opus-4-7",
        "Claude Opus 4.7",
        2048,
        "opus-4",
        dt.date(2026, 4, 16),
        **_GEN_5,
        limits_source="Bedrock and Vertex AI model cards for Claude Opus 4.7 (the "
        "platform.claude.com page was not readable here); released 2026-04-16 per both",
    ),
    _m(
        "claude-3-5-haiku",
        "Claude Haiku 3.5",
        2048,
        "haiku-3",
        dt.date(2024, 10, 22),
        cache_reads_count_itpm=True,
        max_output_tokens=8_192,
        thinking_types=(),
        limits_source="models overview, legacy table (2025-10); not re-read: page retired",
    ),
    _m(
        "claude-opus-4-6",
        "Claude Opus 4.6",
        4096,
        "opus-4",
        dt.date(2026, 2, 5),
        **_GEN_46,
        limits_source=_PAGE.format("opus-4-6"),
    ),
    _m(
        "claude-opus-4-5",
        "Claude Opus 4.5",
        4096,
        "opus-4",
        dt.date(2025, 11, 24),
        keeps_thinking=True,
        sampling="temperature_or_top_p",
        limits_source=_PAGE.format("opus-4-5"),
    ),
    _m(
        "claude-haiku-4-5",
        "Claude Haiku 4.5",
        4096,
        "haiku-4",
        dt.date(2025, 10, 1),
        sampling="temperature_or_top_p",
        limits_source="platform.claude.com/docs/en/models/overview (Compare models)",
    ),
]

#: The built-in table, by model id.
MODELS: Mapping[str, ModelInfo] = {m.id: m for m in _TABLE}


def lookup(model: str, table: Mapping[str, ModelInfo] = MODELS) -> ModelInfo:
    """Return the entry for *model*, accepting dated snapshot ids.

    ``claude-sonnet-4-5-20250929`` resolves to ``claude-sonnet-4-5``: a snapshot id is the
    family id followed by ``-YYYYMMDD``, and snapshots share their family's caching rules.

    Raises:
        UnknownModel: when neither the id nor its family is in *table*.
    """
    info = table.get(model)
    if info is not None:
        return info
    family, _, suffix = model.rpartition("-")
    if suffix.isdigit() and len(suffix) == 8 and family in table:
        return attrs.evolve(table[family], id=model)
    if model.endswith("-latest") and model.removesuffix("-latest") in table:
        return attrs.evolve(table[model.removesuffix("-latest")], id=model)
    raise UnknownModel(model)


def with_overrides(
    overrides: Mapping[str, Mapping[str, object]] | Iterable[ModelInfo],
    table: Mapping[str, ModelInfo] = MODELS,
) -> dict[str, ModelInfo]:
    """Return a copy of *table* with entries replaced or added.

    *overrides* is either ``ModelInfo`` values, or a mapping from model id to the fields
    to change, for example ``{"claude-sonnet-4-6": {"min_cacheable_tokens": 2048}}``.
    A mapping for an id that is not in the table must give every required field.

    Raises:
        ValueError: for a field name ``ModelInfo`` does not have.
    """
    result = dict(table)
    if isinstance(overrides, Mapping):
        known = {a.name for a in attrs.fields(ModelInfo)}
        for model_id, changes in overrides.items():
            unknown = set(changes) - known
            if unknown:
                raise ValueError(
                    f"model override for {model_id!r} has unknown field(s) {sorted(unknown)}; "
                    f"allowed: {sorted(known - {'id'})}"
                )
            fields = dict(changes)
            if isinstance(fields.get("released"), str):
                fields["released"] = dt.date.fromisoformat(str(fields["released"]))
            if model_id in result:
                result[model_id] = attrs.evolve(result[model_id], **fields)
            else:
                try:
                    result[model_id] = ModelInfo(id=model_id, **fields)
                except TypeError as exc:
                    raise ValueError(
                        f"new model {model_id!r} needs display_name, min_cacheable_tokens "
                        f"and rate_limit_class: {exc}"
                    ) from exc
    else:
        for info in overrides:
            result[info.id] = info
    return result

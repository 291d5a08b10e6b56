"""The emulator's configuration: rate limits, faults, latency and model overrides.

A config is a frozen value. It round-trips through plain dicts (``GET``/``PUT
/_emulator/config``) and loads from a JSON or TOML file (``convo emulator serve --config``).
Unknown keys are errors, not silently ignored: a typo in a fault script must not turn a
test of retries into a test of nothing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

__all__ = [
    "FAULT_KINDS",
    "EmulatorConfig",
    "Fault",
    "FaultConfig",
    "LatencyModel",
    "Limits",
    "load_config",
]

FaultKind = Literal[
    "overloaded",
    "api_error",
    "rate_limit",
    "rate_limit_bare",
    "spend_cap",
    "drop",
    "stream_error",
    "stream_drop",
    "stream_error_before_text",
    "stream_drop_before_text",
]

#: Every fault the emulator can inject, and what it does.
FAULT_KINDS: Mapping[str, str] = {
    "overloaded": "HTTP 529 overloaded_error",
    "api_error": "HTTP 500 api_error",
    "rate_limit": "HTTP 429 rate_limit_error with retry-after (and retry-after-ms if given)",
    "rate_limit_bare": "HTTP 429 rate_limit_error without retry-after (as an acceleration "
    "limit may answer): the client backs off on its own",
    "spend_cap": "HTTP 429 without retry-after, error.details.error_code "
    "= enforced_spend_limit_reached",
    "drop": "the connection closes before a complete response (nothing is billed)",
    "stream_error": "an `error` event after the first content delta, or after `after_events` "
    "SSE events (streams only)",
    "stream_drop": "the connection closes after the first content delta, or after "
    "`after_events` SSE events (streams only)",
    "stream_error_before_text": "an `error` event after message_start, before any content "
    "delta, or after `after_events` SSE events (streams only)",
    "stream_drop_before_text": "the connection closes after message_start, before any "
    "content delta, or after `after_events` SSE events (streams only)",
}

T = TypeVar("T")


def _from_mapping(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be an object, got {type(data).__name__}")
    names = {a.name for a in attrs.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _positive_or_none(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0 or null (unlimited), got {value}")


@attrs.frozen
class Limits:
    """Per-minute limits for one rate-limit class; ``None`` means unlimited.

    The defaults are a generous paid tier, so ordinary tests never meet them.
    """

    rpm: int | None = attrs.field(default=4_000, validator=_positive_or_none)
    itpm: int | None = attrs.field(default=2_000_000, validator=_positive_or_none)
    otpm: int | None = attrs.field(default=400_000, validator=_positive_or_none)
    count_tokens_rpm: int | None = attrs.field(default=2_000, validator=_positive_or_none)


@attrs.frozen
class LatencyModel:
    """Modelled time to first byte and decode time, in seconds.

    Time to first byte is ``base_s`` plus a prefill cost per uncached input token (input
    and cache writes) and a smaller one per cached token; decode adds a cost per output
    token. The emulator sleeps these times multiplied by the config's ``time_scale``.
    """

    base_s: float = attrs.field(default=0.2, validator=_non_negative)
    prefill_uncached_s: float = attrs.field(default=1e-4, validator=_non_negative)
    prefill_cached_s: float = attrs.field(default=1e-5, validator=_non_negative)
    decode_s: float = attrs.field(default=0.02, validator=_non_negative)

    def time_to_first_byte(self, *, uncached: int, cached: int) -> float:
        """Return the modelled seconds before the response begins."""
        return self.base_s + uncached * self.prefill_uncached_s + cached * self.prefill_cached_s

    def decode(self, output_tokens: int) -> float:
        """Return the modelled seconds spent producing *output_tokens*."""
        return output_tokens * self.decode_s


def _check_kind(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {value!r}; known: {sorted(FAULT_KINDS)}")


@attrs.frozen
class Fault:
    """One injected fault.

    Attributes:
        kind: One of :data:`FAULT_KINDS`.
        retry_after: Seconds for ``retry-after`` (``rate_limit``; default 1). Also sent on
            ``overloaded`` and ``api_error`` when given.
        retry_after_ms: Milliseconds for ``retry-after-ms``, when given.
        retry_after_http_date: Send ``retry-after`` as an HTTP date instead of seconds.
        should_retry: Value of ``x-should-retry`` (``True``/``False``), when given.
        after_events: For the stream faults: SSE events sent before the error event, or
            before the connection closes. ``None`` (default) cuts ``stream_error`` and
            ``stream_drop`` just after the first content delta, and the ``*_before_text``
            kinds just before it.
        latency_s: Extra seconds before the fault is answered (scaled by time_scale).
    """

    kind: str = attrs.field(validator=_check_kind)
    retry_after: float | None = attrs.field(default=None, validator=_non_negative)
    retry_after_ms: int | None = attrs.field(default=None, validator=_non_negative)
    retry_after_http_date: bool = False
    should_retry: bool | None = None
    after_events: int | None = attrs.field(default=None, validator=_non_negative)
    latency_s: float = attrs.field(default=0.0, validator=_non_negative)

    @classmethod
    def from_value(cls, value: str | Mapping[str, Any] | None, where: str) -> Fault | None:
        """Build from ``"overloaded"``, ``{"kind": ...}``, or ``None`` / ``"none"`` (no fault;
        TOML has no null, so ``"none"`` is the way to let a request through there)."""
        if value is None or value == "none":
            return None
        if isinstance(value, str):
            return _from_mapping(cls, {"kind": value}, where)
        if isinstance(value, Mapping) and "kind" not in value:
            raise ValueError(f"{where}: each fault needs a 'kind' (one of {sorted(FAULT_KINDS)})")
        return _from_mapping(cls, value, where)


def _rates(value: Mapping[str, float]) -> dict[str, float]:
    rates = dict(value)
    for kind, rate in rates.items():
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} in rates; known: {sorted(FAULT_KINDS)}")
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"fault rate for {kind!r} must be within [0, 1], got {rate}")
    if sum(rates.values()) > 1.0:
        raise ValueError("fault rates must sum to at most 1")
    return rates


@attrs.frozen
class FaultConfig:
    """Faults for ``POST /v1/messages``: a script played first, then seeded random rates.

    ``script`` is consumed one entry per request, in arrival order; ``null`` entries let a
    request through untouched. Once the script is used up, each request draws a fault
    with the probabilities in ``rates`` from an RNG seeded with the config's ``seed``.
    """

    script: tuple[Fault | None, ...] = ()
    rates: Mapping[str, float] = attrs.field(factory=dict, converter=_rates)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultConfig:
        """Build from the JSON shape ``{"script": [...], "rates": {...}}``."""
        base = _from_mapping(cls, {k: v for k, v in data.items() if k != "script"}, "faults")
        script = tuple(
            Fault.from_value(v, f"faults.script[{i}]") for i, v in enumerate(data.get("script", []))
        )
        return attrs.evolve(base, script=script)


def _check_refresh(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in ("path", "entry"):
        raise ValueError(f'refresh must be "path" or "entry", got {value!r}')


def _at_least_one(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{attribute.name} must be an integer >= 1, got {value!r}")


@attrs.frozen
class EmulatorConfig:
    """Everything about the emulator that a test or a user may change.

    Attributes:
        limits: Per rate-limit class (``"sonnet-4"``, ...); ``"default"`` covers the rest.
        faults: Scripted and random faults.
        latency: The latency model.
        time_scale: 0 answers at once; 1 sleeps the modelled latency in real time.
        seed: Seeds the fault RNG and the generated reply text.
        reply_tokens: Output tokens of a generated reply, before ``max_tokens`` caps it.
        models: Overrides and additions to :data:`convo.models.MODELS`, e.g.
            ``{"claude-sonnet-4-6": {"min_cacheable_tokens": 2048}}``.
        refresh: What a cache read refreshes (undocumented by the API): ``"path"``
            (default) every live entry on the request's path up to the entry read,
            ``"entry"`` only the entry read. Give ``convo.CacheTracker`` the same rule.
        message_deltas: ``message_delta`` events per stream (the API sends one; more, each
            carrying cumulative usage, test clients that must not add them up).
        system_message_models: Model ids that accept ``role: "system"`` inside
            ``messages`` (the docs name Opus 4.8 only).
    """

    limits: Mapping[str, Limits] = attrs.field(factory=lambda: {"default": Limits()})
    faults: FaultConfig = attrs.field(factory=FaultConfig)
    latency: LatencyModel = attrs.field(factory=LatencyModel)
    time_scale: float = attrs.field(default=0.0, validator=_non_negative)
    seed: int = 0
    reply_tokens: int = attrs.field(default=24, validator=_non_negative)
    models: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    refresh: Literal["path", "entry"] = attrs.field(default="path", validator=_check_refresh)
    message_deltas: int = attrs.field(default=1, validator=_at_least_one)
    system_message_models: tuple[str, ...] = attrs.field(
        default=("claude-opus-4-8",), converter=tuple
    )

    def limits_for(self, rate_limit_class: str) -> Limits:
        """Return the limits of *rate_limit_class*, falling back to ``"default"``."""
        return self.limits.get(rate_limit_class) or self.limits.get("default") or Limits()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmulatorConfig:
        """Build from the JSON shape; missing keys take their defaults.

        Raises:
            ValueError: naming the first bad key or value.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"config must be an object, got {type(data).__name__}")
        fields = dict(data)
        if "limits" in fields:
            fields["limits"] = {
                name: _from_mapping(Limits, value, f"limits.{name}")
                for name, value in dict(fields["limits"]).items()
            }
        if "faults" in fields:
            fields["faults"] = FaultConfig.from_dict(fields["faults"])
        if "latency" in fields:
            fields["latency"] = _from_mapping(LatencyModel, fields["latency"], "latency")
        return _from_mapping(cls, fields, "config")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape that :meth:`from_dict` reads."""
        return {
            "limits": {name: attrs.asdict(value) for name, value in self.limits.items()},
            "faults": {
                "script": [None if f is None else attrs.asdict(f) for f in self.faults.script],
                "rates": dict(self.faults.rates),
            },
            "latency": attrs.asdict(self.latency),
            "time_scale": self.time_scale,
            "seed": self.seed,
            "reply_tokens": self.reply_tokens,
            "models": {k: dict(v) for k, v in self.models.items()},
            "refresh": self.refresh,
            "message_deltas": self.message_deltas,
            "system_message_models": list(self.system_message_models),
        }


def load_config(path: str | Path) -> EmulatorConfig:
    """Read a config from a ``.json`` or ``.toml`` file.

    Raises:
        ValueError: for another suffix, a file that does not parse, or a bad key.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ValueError(f"config file {path} must end in .json or .toml")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"config file {path} does not parse: {exc}") from exc
    return EmulatorConfig.from_dict(data)

"""The emulator's state and request handling, free of HTTP.

:class:`Emulator` decides what one request gets: an error, or a :class:`Plan` holding the
message (or its SSE events), the modelled latency, and hooks the HTTP layer calls when the
response begins. All state sits behind one lock, so the ASGI app (on its event loop) and
a test (on its own thread) can both touch it.
"""

from __future__ import annotations

import itertools
import math
import random
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from convo import models, tokens
from convo.emulator.cache import CacheDecision, CacheStore
from convo.emulator.clock import Clock, OffsetClock
from convo.emulator.config import EmulatorConfig, Fault
from convo.emulator.diagnostics import DIAGNOSTICS_BETA, NOT_ASKED, Diagnostics
from convo.emulator.errors import APIError
from convo.emulator.faults import STREAM_ONLY, FaultPlan
from convo.emulator.limits import RateLimits
from convo.emulator.prompt import Prompt, check_generation, parse_prompt

__all__ = ["DIAGNOSTICS_BETA", "Emulator", "Plan"]


_WORDS = (
    "sure",
    "here",
    "is",
    "a",
    "short",
    "note",
    "on",
    "the",
    "plan",
    "we",
    "can",
    "take",
    "next",
    "step",
    "by",
    "step",
    "and",
    "then",
    "check",
    "each",
    "part",
    "with",
    "care",
    "so",
    "that",
    "it",
    "fits",
    "what",
    "you",
    "asked",
    "for",
    "today",
)


@attrs.frozen
class Plan:
    """A successful answer, to be delivered by the HTTP layer.

    Attributes:
        message: The complete message body.
        headers: Response headers (request id, rate limits).
        time_to_first_byte: Modelled seconds before the response begins (unscaled).
        decode_time: Modelled seconds spent producing the output (unscaled).
        fault: A fault to apply while delivering (``drop``, ``stream_error``,
            ``stream_drop``), if any.
        begin: Call when the response begins: makes written cache entries readable.
        abandon: Call if the response never begins: drops the unreadable entries.
    """

    message: dict[str, Any]
    headers: dict[str, str]
    time_to_first_byte: float
    decode_time: float
    fault: Fault | None
    begin: Callable[[], None]
    abandon: Callable[[], None]


class Emulator:
    """The state of one emulated Messages API.

    Args:
        config: Limits, faults, latency and model overrides (default: generous limits,
            no faults, answers at once).
        clock: The time source (default: real time plus every ``advance``).
    """

    def __init__(self, config: EmulatorConfig | None = None, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or OffsetClock()
        self._lock = threading.RLock()
        self._instance = secrets.token_hex(3)
        self._ids = itertools.count(1)
        self._cache = CacheStore()
        self._limits = RateLimits()
        self._diagnostics = Diagnostics()
        self._status: Counter[str] = Counter()
        self._tokens: Counter[str] = Counter()
        self._counters: Counter[str] = Counter()
        self.configure(config or EmulatorConfig())

    # -- control ------------------------------------------------------------------------

    @property
    def config(self) -> EmulatorConfig:
        """The config in force."""
        return self._config

    def configure(self, config: EmulatorConfig) -> None:
        """Replace the config; restarts the fault script and RNG, keeps cache and buckets.

        Raises:
            ValueError: when a model override is malformed.
        """
        table = models.with_overrides(config.models)
        with self._lock:
            self._config = config
            self._table = table
            self._faults = FaultPlan(config.faults, config.seed)

    def reset(self, *, config: bool = False) -> None:
        """Forget cache entries, counters, buckets and diagnostics; optionally the config too.

        A clock that can be reset (the default one) goes back to real time.
        """
        with self._lock:
            self._cache.clear()
            self._limits.clear()
            self._diagnostics.clear()
            self._status.clear()
            self._tokens.clear()
            self._counters.clear()
            reset_clock = getattr(self.clock, "reset", None)
            if callable(reset_clock):
                reset_clock()
            self.configure(EmulatorConfig() if config else self._config)

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock forward by *seconds*."""
        self.clock.advance(seconds)

    def stats(self) -> dict[str, Any]:
        """Return request counts by status and billed tokens by kind."""
        with self._lock:
            return {
                "requests": {"total": sum(self._status.values()), "by_status": dict(self._status)},
                "tokens": {
                    kind: self._tokens[kind]
                    for kind in (
                        "input",
                        "cache_read",
                        "cache_write_5m",
                        "cache_write_1h",
                        "output",
                    )
                },
                "cache": {
                    "writes": self._counters["cache_writes"],
                    "reads": self._counters["cache_reads"],
                    "entries": len(self._cache),
                },
                "faults": {
                    k.removeprefix("fault:"): v
                    for k, v in self._counters.items()
                    if k.startswith("fault:")
                },
                "clock": self.clock.now(),
            }

    def record_status(self, status: int) -> None:
        """Count one answered request with HTTP *status*."""
        with self._lock:
            self._status[str(status)] += 1

    def new_request_id(self) -> str:
        """Return a fresh ``request-id``."""
        return f"req_emu{self._instance}{next(self._ids):010d}"

    # -- requests -----------------------------------------------------------------------

    @staticmethod
    def workspace(headers: Mapping[str, str]) -> str:
        """Return the API key that scopes caches and limits, or raise 401."""
        key = headers.get("x-api-key") or ""
        auth = headers.get("authorization", "")
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if not key:
            raise APIError(
                "authentication_error",
                "x-api-key header is required (or Authorization: Bearer for OAuth tokens)",
            )
        return key

    def count_tokens(
        self, headers: Mapping[str, str], body: Mapping[str, Any]
    ) -> tuple[dict[str, int], dict[str, str]]:
        """Answer ``count_tokens``: the total input, ignoring caching.

        Raises:
            APIError: 401, 400, 404, or 429 from count_tokens' own RPM limit.
        """
        workspace = self.workspace(headers)
        with self._lock:
            prompt = parse_prompt(body, self._table)
            now = self.clock.now()
            limits = self._config.limits_for(prompt.model.rate_limit_class)
            admission = self._limits.admit_count_tokens(workspace, limits, now)
            if admission.retry_after is not None:
                raise self._rate_limited(admission.retry_after, admission.limited, admission.limit)
            return {"input_tokens": prompt.total_tokens}, {}

    def messages(self, headers: Mapping[str, str], body: Mapping[str, Any]) -> Plan:
        """Decide the answer to ``POST /v1/messages``.

        Raises:
            APIError: for bad input, an injected fault, or a rate limit.
        """
        workspace = self.workspace(headers)
        with self._lock:
            prompt = parse_prompt(body, self._table)
            max_tokens = check_generation(body, prompt.model)
            previous_id = self._diagnostics.requested(headers, body)
            fault = self._faults.next(stream=bool(body.get("stream")))
            if fault is not None:
                self._counters[f"fault:{fault.kind}"] += 1
            klass = prompt.model.rate_limit_class
            limits = self._config.limits_for(klass)
            now = self.clock.now()
            if fault is not None and fault.kind != "drop" and fault.kind not in STREAM_ONLY:
                limit_headers = self._limits.headers(workspace, klass, limits, now)
                raise FaultPlan.error(fault, limit_headers=limit_headers, now=now)
            if fault is not None and fault.kind == "drop":
                return self._dropped(fault)

            dry = self._cache.decide(workspace, prompt, now, commit=False)
            weight = dry.input + dry.cache_write
            if prompt.model.cache_reads_count_itpm:
                weight += dry.cache_read
            admission = self._limits.admit(workspace, klass, limits, input_weight=weight, now=now)
            if admission.retry_after is not None:
                error = self._rate_limited(
                    admission.retry_after, admission.limited, admission.limit
                )
                error.headers.update(self._limits.headers(workspace, klass, limits, now))
                raise error

            decision = self._cache.decide(workspace, prompt, now)
            content, stop_reason = self._reply(body, prompt, max_tokens)
            output = sum(tokens.block_tokens(block) for block in content)
            self._limits.charge_output(workspace, klass, limits, output, now)
            self._count(decision, output)
            message_id = f"msg_emu{self._instance}{next(self._ids):010d}"
            message: dict[str, Any] = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": _usage(decision, output),
            }
            if previous_id is not NOT_ASKED:
                message["diagnostics"] = self._diagnostics.diagnose(workspace, prompt, previous_id)
            self._diagnostics.remember(message_id, workspace, prompt, decision)
            response_headers = self._limits.headers(workspace, klass, limits, now)

        latency = self._config.latency
        return Plan(
            message=message,
            headers=response_headers,
            time_to_first_byte=latency.time_to_first_byte(
                uncached=decision.input + decision.cache_write, cached=decision.cache_read
            ),
            decode_time=latency.decode(output),
            fault=fault,
            begin=lambda: self._begin(workspace, prompt, decision),
            abandon=lambda: self._abandon(workspace, prompt, decision),
        )

    # -- helpers ------------------------------------------------------------------------

    def _begin(self, workspace: str, prompt: Prompt, decision: CacheDecision) -> None:
        with self._lock:
            self._cache.begin_response(workspace, prompt, decision)

    def _abandon(self, workspace: str, prompt: Prompt, decision: CacheDecision) -> None:
        with self._lock:
            self._cache.abandon(workspace, prompt, decision)

    def _count(self, decision: CacheDecision, output: int) -> None:
        self._tokens["input"] += decision.input
        self._tokens["cache_read"] += decision.cache_read
        self._tokens["cache_write_5m"] += decision.cache_write_5m
        self._tokens["cache_write_1h"] += decision.cache_write_1h
        self._tokens["output"] += output
        if decision.cache_write:
            self._counters["cache_writes"] += 1
        if decision.cache_read:
            self._counters["cache_reads"] += 1

    def _dropped(self, fault: Fault) -> Plan:
        def nothing() -> None:
            return None

        return Plan({}, {}, fault.latency_s, 0.0, fault, nothing, nothing)

    @staticmethod
    def _rate_limited(wait: float, limited: str | None, limit: int | None) -> APIError:
        what = {
            "requests": "requests",
            "input_tokens": "input tokens",
            "output_tokens": "output tokens",
        }
        return APIError(
            "rate_limit_error",
            f"This request would exceed the rate limit for your organization of {limit:,} "
            f"{what.get(limited or '', 'tokens')} per minute. Please retry after the time in "
            "the retry-after header, or reduce the prompt length or the request rate.",
            headers={"retry-after": str(max(1, math.ceil(wait)))},
        )

    def _reply(
        self, body: Mapping[str, Any], prompt: Prompt, max_tokens: int
    ) -> tuple[list[dict[str, Any]], str]:
        if max_tokens == 0:
            return [], "max_tokens"
        choice = body.get("tool_choice")
        tools = [t for t in body.get("tools") or [] if "input_schema" in t]
        if isinstance(choice, Mapping) and choice.get("type") in ("any", "tool") and tools:
            name = choice.get("name") if choice.get("type") == "tool" else tools[0]["name"]
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": f"toolu_emu{next(self._ids):012d}",
                "name": name,
                "input": {},
            }
            return [block], "tool_use"
        rng = random.Random(int.from_bytes(prompt.keys[-1][:8], "big") ^ self._config.seed)
        wanted = self._config.reply_tokens
        count = min(wanted, max_tokens)
        # Each word is at most five letters, so it is exactly one token by convo.tokens.
        text = " ".join(rng.choice(_WORDS) for _ in range(count)).capitalize()
        if not text:
            return [], "max_tokens" if wanted else "end_turn"
        return [{"type": "text", "text": text}], "max_tokens" if wanted > max_tokens else "end_turn"


def _usage(decision: CacheDecision, output: int) -> dict[str, Any]:
    return {
        "input_tokens": decision.input,
        "cache_creation_input_tokens": decision.cache_write,
        "cache_read_input_tokens": decision.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": decision.cache_write_5m,
            "ephemeral_1h_input_tokens": decision.cache_write_1h,
        },
        "output_tokens": output,
        "service_tier": "standard",
    }

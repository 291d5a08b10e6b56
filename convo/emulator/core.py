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
from convo.emulator.stream import Cut, Event, cut_for, stream_events

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
        fault: A fault to apply while delivering (``drop`` or a stream fault), if any.
        begin: Call when the response begins: makes written cache entries readable.
        abandon: Call if the response never begins: drops the unreadable entries.
        events: For a streaming request, its SSE events (the whole stream).
        cut: For a stream fault, where it cuts the events and what was billed.
    """

    message: dict[str, Any]
    headers: dict[str, str]
    time_to_first_byte: float
    decode_time: float
    fault: Fault | None
    begin: Callable[[], None]
    abandon: Callable[[], None]
    events: list[Event] | None = None
    cut: Cut | None = None


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
            self._cache.refresh = config.refresh
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
            prompt = self._parse(body)
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
            prompt = self._parse(body)
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
            content, stop_reason, stop_sequence = self._reply(body, prompt, max_tokens)
            output = sum(tokens.block_tokens(block) for block in content)
            message_id = f"msg_emu{self._instance}{next(self._ids):010d}"
            message: dict[str, Any] = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": stop_sequence,
                "usage": _usage(decision, output),
            }
            events: list[Event] | None = None
            cut: Cut | None = None
            if body.get("stream"):
                events = stream_events(message, message_deltas=self._config.message_deltas)
                if fault is not None and fault.kind in STREAM_ONLY:
                    cut = cut_for(events, fault)
            # What is billed: everything, or what a cut stream had delivered (stream.py).
            if cut is None or cut.started:
                billed = output if cut is None else cut.output
                self._limits.charge_output(workspace, klass, limits, billed, now)
                self._count(decision, billed)
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
            events=events,
            cut=cut,
        )

    # -- helpers ------------------------------------------------------------------------

    def _parse(self, body: Mapping[str, Any]) -> Prompt:
        return parse_prompt(
            body, self._table, system_message_models=self._config.system_message_models
        )

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
    ) -> tuple[list[dict[str, Any]], str, str | None]:
        """Generate the reply: content, stop reason, and the stop sequence met (if any).

        Text is ``reply_tokens`` one-token words from an RNG seeded by the prompt. With
        thinking on, a thinking block of as many words comes first (both count against
        ``max_tokens``). Stop sequences: when the newest user turn's text contains one of
        the request's ``stop_sequences``, the reply "says" it halfway (the text stops
        before it); otherwise the first requested sequence that occurs in the generated
        text ends it there. Either way ``stop_reason`` is ``stop_sequence`` and
        ``stop_sequence`` names it; output counts the text returned.
        """
        if max_tokens == 0:
            return [], "max_tokens", None
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
            return [block], "tool_use", None
        seed = int.from_bytes(prompt.keys[-1][:8], "big") if prompt.keys else 0
        rng = random.Random(seed ^ self._config.seed)
        wanted = self._config.reply_tokens
        budget = max_tokens
        content: list[dict[str, Any]] = []
        thinking = body.get("thinking")
        if isinstance(thinking, Mapping) and thinking.get("type") in ("enabled", "adaptive"):
            count = min(wanted, budget)
            thought = " ".join(rng.choice(_WORDS) for _ in range(count))
            if thought:
                signature = f"sig{seed ^ self._config.seed:016x}"
                content.append({"type": "thinking", "thinking": thought, "signature": signature})
                budget -= count
        count = min(wanted, budget)
        # Each word is at most five letters, so it is exactly one token by convo.tokens.
        words = [rng.choice(_WORDS) for _ in range(count)]
        sequences = [s for s in body.get("stop_sequences") or () if isinstance(s, str) and s]
        asked = _newest_user_text(body)
        said = next((s for s in sequences if s in asked), None)
        if said is not None and words:
            text = " ".join(words[: max(1, len(words) // 2)]).capitalize()
            content.append({"type": "text", "text": text})
            return content, "stop_sequence", said
        text = " ".join(words).capitalize()
        found = [(text.find(s), s) for s in sequences if s in text]
        if found:
            at, sequence = min(found)
            if text[:at]:
                content.append({"type": "text", "text": text[:at]})
            return content, "stop_sequence", sequence
        if text:
            content.append({"type": "text", "text": text})
        if not text and not wanted:
            return content, "end_turn", None
        return content, "max_tokens" if wanted > budget else "end_turn", None


def _newest_user_text(body: Mapping[str, Any]) -> str:
    messages = body.get("messages") or []
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(b.get("text", "")) for b in content if isinstance(b, Mapping))
            return ""
    return ""


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

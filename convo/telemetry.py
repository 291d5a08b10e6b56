"""OpenTelemetry spans and metrics for convo's turns, and a Prometheus endpoint (``convo[otel]``).

The ``anthropic`` SDK already emits a span per API call with the GenAI ``gen_ai.usage.*``
attributes; convo does not duplicate it. It adds what only convo knows, per turn: the 5m/1h
split of the cache write, the cost and the saving, the cache reason predicted before the
call against what was observed, the attempts. Two ways to wire it (``docs/telemetry.md``):

- as a hook, on the sessions you choose: ``Session(..., hooks=[Telemetry()])``. The span is
  written when the turn has ended (with its real start time); it is not the parent of the
  SDK's span, because a hook runs after the call.
- ``Telemetry().instrument()``: every ``Session`` and ``AsyncSession`` in the process, with
  the turn's span current while the turn runs, so the SDK's call spans (every attempt) are
  its children. ``uninstrument()`` undoes it. This wraps the sessions' public methods (the
  usual way instrumentation libraries work); it changes nothing else.

Through the global OpenTelemetry providers by default, as instrumented libraries do; pass
``tracer_provider=`` / ``meter_provider=`` to use others. Every unexpected cache bust is
also logged as a warning on the ``convo`` logger with its reason. No API key and no prompt
or reply text is ever put on a span, a metric or a log line: only counts, ids, model names
and reasons.

.. versionadded:: 0.2
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import Span, Status, StatusCode
except ImportError as error:  # pragma: no cover - only without the extra installed
    raise ImportError("convo.telemetry needs OpenTelemetry: pip install 'convo[otel]'") from error

from convo.session.busts import UNEXPECTED_BUSTS, log_bust

if TYPE_CHECKING:
    # Imported where used: the session core may import log_bust from here.
    from convo.session import Reply

__all__ = [
    "CACHE_WRITE_ATTRIBUTES",
    "UNEXPECTED_BUSTS",
    "PrometheusEndpoint",
    "Telemetry",
    "log_bust",
    "serve_prometheus",
]

_log = logging.getLogger("convo")

#: The name of convo's instrumentation scope (tracer and meter).
SCOPE = "convo"

#: Attribute names the cache write goes under on convo's span, by default: the older GenAI
#: name that existing dashboards query (the SDK's own span has the newer
#: ``gen_ai.usage.cache_write.input_tokens``).
CACHE_WRITE_ATTRIBUTES = ("gen_ai.usage.cache_creation.input_tokens",)

# The turn being traced by instrument(), so a Telemetry that is also a hook of the same
# session does not record the turn twice.
_active: contextvars.ContextVar[_Turn | None] = contextvars.ContextVar(
    "convo_telemetry_turn", default=None
)


class _Turn:
    """One turn traced by instrument(): its span, and the reply once the hook saw it."""

    def __init__(self, owner: Telemetry, span: Span) -> None:
        self.owner = owner
        self.span = span
        self.reply: Reply | None = None


def _usd(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


class Telemetry:
    """Spans, metrics and bust warnings for convo's turns (see the module doc).

    Args:
        tracer_provider: Where spans go. Default: the global provider.
        meter_provider: Where metrics go. Default: the global provider.
        cache_write_attributes: Attribute names the cache write (both TTLs) is also
            written under on convo's span (default :data:`CACHE_WRITE_ATTRIBUTES`); add
            ``"gen_ai.usage.cache_write.input_tokens"`` to have the newer name there too.
        log_busts: Also warn on the ``convo`` logger on every unexpected bust (sessions
            already do; turn this on only for a session built without convo's core).

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        *,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        cache_write_attributes: Sequence[str] = CACHE_WRITE_ATTRIBUTES,
        log_busts: bool = False,
    ) -> None:
        from convo import __version__

        self._tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
        self.cache_write_attributes = tuple(cache_write_attributes)
        self.log_busts = log_busts
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens per turn by gen_ai.token.type (input is inclusive of "
            "cache_read and cache_creation, as in the GenAI conventions).",
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Wall time of a turn's successful attempt.",
        )
        self._cost = meter.create_counter(
            "convo.cost", unit="USD", description="True cost of turns (priced turns only)."
        )
        self._saved = meter.create_counter(
            "convo.saved", unit="USD", description="What caching saved against no caching."
        )
        self._turns = meter.create_counter(
            "convo.turns", unit="{turn}", description="Turns by cache reason."
        )
        self._busts = meter.create_counter(
            "convo.cache.busts",
            unit="{turn}",
            description="Turns that read less than the cache could hold, by reason.",
        )
        self._retries = meter.create_counter(
            "convo.retries", unit="{attempt}", description="Attempts after the first."
        )
        self._rate_limited = meter.create_counter(
            "convo.rate_limited", unit="{attempt}", description="Attempts refused with 429."
        )
        self._limiter_wait = meter.create_histogram(
            "convo.limiter.wait",
            unit="s",
            description="Seconds a turn waited for the client-side rate limiter.",
        )
        self._errors = meter.create_counter(
            "convo.turn.errors", unit="{turn}", description="Turns that failed, by error.type."
        )
        # Running sums behind the hit-ratio gauge, per model.
        self._sums: dict[str, list[int]] = {}
        self._sums_lock = threading.Lock()
        meter.create_observable_gauge(
            "convo.cache.hit_ratio",
            callbacks=[self._observe_hit_ratio],
            unit="1",
            description="cache_read / total input over every turn this Telemetry saw.",
        )
        self._undo: list[Callable[[], None]] = []

    # -- the hook ---------------------------------------------------------------------------

    def __call__(self, reply: Reply) -> None:
        """Record one turn (the hook form)."""
        turn = _active.get()
        if turn is not None and turn.owner is self:
            turn.reply = reply  # instrument() records it on the turn's own span
            return
        end = time.time_ns()
        start = end - int(reply.latency_s * 1e9)
        span = self._tracer.start_span(
            "convo.turn", start_time=start, attributes=self._start_attributes(reply, None)
        )
        self._record(span, reply)
        span.end(end_time=end)

    # -- what is recorded -------------------------------------------------------------------

    @staticmethod
    def _start_attributes(reply: Reply | None, session: Any) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "anthropic",
        }
        if session is not None:
            attributes["gen_ai.request.model"] = session.prefix.model
            attributes["gen_ai.conversation.id"] = session.conversation_id
            attributes["convo.session.id"] = session.session_id
            attributes["convo.prefix.fingerprint"] = session.prefix.fingerprint
        elif reply is not None:
            attributes["gen_ai.request.model"] = reply.cache.predicted.model
        return attributes

    def _record(self, span: Span, reply: Reply) -> None:
        usage, cost, cache = reply.usage, reply.cost, reply.cache
        predicted = cache.predicted
        model = predicted.model
        attributes: dict[str, Any] = {
            "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": usage.total_input,
            "gen_ai.usage.output_tokens": usage.output,
            "gen_ai.usage.cache_read.input_tokens": usage.cache_read,
            "convo.usage.uncached_input_tokens": usage.input,
            "convo.usage.cache_read_tokens": usage.cache_read,
            "convo.usage.cache_write_tokens": usage.cache_write,
            "convo.usage.cache_write_5m_tokens": usage.cache_write_5m,
            "convo.usage.cache_write_1h_tokens": usage.cache_write_1h,
            "convo.cost.rate_limit_tokens": cost.rate_limit_tokens,
            "convo.cache.reason": str(cache.reason),
            "convo.cache.unexpected_bust": cache.reason in UNEXPECTED_BUSTS,
            "convo.cache.predicted.reason": str(predicted.reason),
            "convo.cache.predicted.read_tokens": predicted.cache_read,
            "convo.cache.predicted.write_tokens": predicted.cache_write,
            "convo.cache.predicted.uncached_input_tokens": predicted.input,
            "convo.cache.exact": cache.exact,
            "convo.attempts": len(reply.attempts),
            "convo.retries": max(0, len(reply.attempts) - 1),
            "convo.rate_limited": sum(1 for a in reply.attempts if a.status == 429),
            "convo.turn": reply.turn,
            "convo.prewarm": reply.turn == 0,
            "convo.latency_s": reply.latency_s,
            "convo.limiter.wait_s": reply.limiter_wait_s,
            "convo.purpose": reply.purpose,
        }
        if reply.warm_role is not None:
            attributes["convo.warm.role"] = reply.warm_role
        route = reply.route
        if route is not None:
            attributes["convo.route.tier"] = route.tier
            attributes["convo.route.required_tier"] = route.required
            attributes["convo.route.reason"] = route.reason
            attributes["convo.route.cache_aware"] = route.cache_aware
            if route.expected_usd is not None:
                attributes["convo.route.expected_usd"] = route.expected_usd
        for name in self.cache_write_attributes:
            attributes[name] = usage.cache_write
        if cache.detail:
            attributes["convo.cache.detail"] = cache.detail
        if cache.message_index is not None:
            attributes["convo.cache.message_index"] = cache.message_index
        if cache.server_reason is not None:
            attributes["convo.cache.server_reason"] = cache.server_reason
        if cost.usd is not None:
            attributes["convo.cost.usd"] = float(cost.usd)
        if cost.saved_usd is not None:
            attributes["convo.cost.saved_usd"] = float(cost.saved_usd)
        if reply.request_id:
            attributes["convo.request.id"] = reply.request_id
        message_id = getattr(reply.message, "id", None)
        if isinstance(message_id, str):
            attributes["gen_ai.response.id"] = message_id
        response_model = getattr(reply.message, "model", None)
        if isinstance(response_model, str):
            attributes["gen_ai.response.model"] = response_model
        span.set_attributes(attributes)

        base = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": model,
        }
        for kind, count in (
            ("input", usage.total_input),
            ("output", usage.output),
            ("cache_read", usage.cache_read),
            ("cache_creation", usage.cache_write),
        ):
            self._tokens.record(count, {**base, "gen_ai.token.type": kind})
        self._duration.record(reply.latency_s, base)
        if cost.usd is not None:
            self._cost.add(float(cost.usd), base)
        if cost.saved_usd is not None and cost.saved_usd > 0:
            self._saved.add(float(cost.saved_usd), base)
        reason = {**base, "convo.cache.reason": str(cache.reason)}
        if route is not None:
            reason["convo.route"] = f"{route.required}>{route.tier}"
        self._turns.add(1, reason)
        if cache.reason != "hit":
            self._busts.add(1, reason)
        retries = max(0, len(reply.attempts) - 1)
        if retries:
            self._retries.add(retries, base)
        limited = sum(1 for a in reply.attempts if a.status == 429)
        if limited:
            self._rate_limited.add(limited, base)
        self._limiter_wait.record(reply.limiter_wait_s, base)
        with self._sums_lock:
            sums = self._sums.setdefault(model, [0, 0])
            sums[0] += usage.cache_read
            sums[1] += usage.total_input
        if self.log_busts:
            log_bust(reply)

    def _observe_hit_ratio(self, options: CallbackOptions) -> Iterator[Observation]:
        with self._sums_lock:
            sums = {model: tuple(s) for model, s in self._sums.items()}
        for model, (read, total) in sums.items():
            if total:
                yield Observation(read / total, {"gen_ai.request.model": model})

    def _failed(self, span: Span, error: BaseException, model: str) -> None:
        kind = type(error).__name__
        # Only the exception's type: an error's message may quote the request.
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, kind))
        self._errors.add(1, {"gen_ai.request.model": model, "error.type": kind})

    # -- instrument() -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _turn(self, session: Any, purpose: str) -> Iterator[_Turn]:
        span = self._tracer.start_span(
            "convo.turn",
            attributes={**self._start_attributes(None, session), "convo.purpose": purpose},
        )
        turn = _Turn(self, span)
        token = _active.set(turn)
        try:
            with trace.use_span(
                span, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                yield turn
        except BaseException as error:
            self._failed(span, error, session.prefix.model)
            span.end()
            raise
        finally:
            _active.reset(token)

    def _finish(self, turn: _Turn, reply: Reply | None) -> None:
        reply = reply if reply is not None else turn.reply
        if reply is None:
            return  # nothing was sent (warm() with nothing to warm): no span is exported
        self._record(turn.span, reply)
        turn.span.end()

    def instrument(self) -> Telemetry:
        """Trace every ``Session`` and ``AsyncSession`` turn in this process, with the
        turn's span current while it runs (the parent of the SDK's spans). Returns self."""
        from convo.session import AsyncSession, Session

        if self._undo:
            return self
        telemetry = self

        def sync(name: str, purpose: str) -> None:
            original = getattr(Session, name)

            @functools.wraps(original)
            def wrapper(session: Any, *args: Any, **kwargs: Any) -> Any:
                with telemetry._turn(session, purpose) as turn:
                    reply = original(session, *args, **kwargs)
                telemetry._finish(turn, reply)
                return reply

            self._patch(Session, name, wrapper)

        def asynchronous(name: str, purpose: str) -> None:
            original = getattr(AsyncSession, name)

            @functools.wraps(original)
            async def wrapper(session: Any, *args: Any, **kwargs: Any) -> Any:
                with telemetry._turn(session, purpose) as turn:
                    reply = await original(session, *args, **kwargs)
                telemetry._finish(turn, reply)
                return reply

            self._patch(AsyncSession, name, wrapper)

        for name, purpose in (
            ("send", "turn"),
            ("warm", "warm"),
            ("keep_alive_tick", "keep_alive"),
        ):
            sync(name, purpose)
            asynchronous(name, purpose)

        sync_stream = Session.stream

        @functools.wraps(sync_stream)
        @contextlib.contextmanager
        def stream(session: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            with (
                telemetry._turn(session, "turn") as turn,
                sync_stream(session, *args, **kwargs) as s,
            ):
                yield s
            telemetry._finish(turn, turn.reply or _settled(s))

        self._patch(Session, "stream", stream)
        async_stream = AsyncSession.stream

        @functools.wraps(async_stream)
        @contextlib.asynccontextmanager
        async def astream(session: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            with telemetry._turn(session, "turn") as turn:
                async with async_stream(session, *args, **kwargs) as s:
                    yield s
            telemetry._finish(turn, turn.reply or _settled(s))

        self._patch(AsyncSession, "stream", astream)
        return self

    def _patch(self, cls: type, name: str, wrapper: Any) -> None:
        original = cls.__dict__[name]
        setattr(cls, name, wrapper)
        self._undo.append(lambda: setattr(cls, name, original))

    def uninstrument(self) -> None:
        """Undo :meth:`instrument`."""
        while self._undo:
            self._undo.pop()()


def _settled(stream: Any) -> Reply | None:
    try:
        reply: Reply = stream.reply
    except Exception:
        return None
    return reply


class PrometheusEndpoint:
    """A Prometheus scrape endpoint over OpenTelemetry metrics (:func:`serve_prometheus`).

    Attributes:
        url: Where to scrape (``http://host:port/metrics``).
        meter_provider: The provider whose metrics it serves; give it to
            :class:`Telemetry` (or set it as the global provider).
    """

    def __init__(self, url: str, meter_provider: Any, server: Any, thread: Any) -> None:
        self.url = url
        self.meter_provider = meter_provider
        self._server = server
        self._thread = thread

    def close(self) -> None:
        """Stop serving and shut the meter provider down."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self.meter_provider.shutdown()

    def __enter__(self) -> PrometheusEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_prometheus(host: str = "127.0.0.1", port: int = 0) -> PrometheusEndpoint:
    """Serve OpenTelemetry metrics for Prometheus over HTTP, through the OpenTelemetry
    Prometheus exporter, on a registry of its own (*port* 0: any free port).

    Usage::

        endpoint = convo.telemetry.serve_prometheus(port=9464)
        telemetry = convo.telemetry.Telemetry(meter_provider=endpoint.meter_provider)
    """
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError as error:  # pragma: no cover - only without the extra installed
        raise ImportError(
            "serve_prometheus needs opentelemetry-sdk and opentelemetry-exporter-prometheus: "
            "pip install 'convo[otel]'"
        ) from error
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    provider = MeterProvider(metric_readers=[reader])
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = server.server_address[1]
    return PrometheusEndpoint(f"http://{host}:{bound}/metrics", provider, server, thread)

"""convo.telemetry: spans, metrics, bust warnings, a Prometheus endpoint, and no secrets."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

import convo
from convo.emulator import RunningEmulator
from convo.telemetry import Telemetry, serve_prometheus

MODEL = "claude-sonnet-4-6"
SYSTEM = "You help people write SQL. " * 400
PREFIX = convo.Prefix(model=MODEL, system=[SYSTEM])
EDITED = convo.Prefix(model=MODEL, system=[SYSTEM + " Now: 2026-11-30 08:00."])

_SPANS = InMemorySpanExporter()
_METRICS = InMemoryMetricReader()


class _Gate(SimpleSpanProcessor):
    """Exports while open; closed after this module, so the spans of later tests (the
    global provider cannot be replaced or unset) are not kept in memory."""

    open = True

    def on_end(self, span: ReadableSpan) -> None:
        if self.open:
            super().on_end(span)


@pytest.fixture(scope="module", autouse=True)
def global_providers() -> Iterator[None]:
    """The SDK's in-memory exporters set as the global providers (once per process: the
    OpenTelemetry API refuses to replace them)."""
    gate = _Gate(_SPANS)
    provider = TracerProvider()
    provider.add_span_processor(gate)
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[_METRICS]))
    yield
    gate.open = False
    _SPANS.clear()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """The global in-memory span exporter, emptied."""
    _SPANS.clear()
    return _SPANS


@pytest.fixture
def session_client(emulator: RunningEmulator) -> Iterator[anthropic.Anthropic]:
    """A client built after the global providers are set (the SDK traces through them)."""
    with anthropic.Anthropic(
        base_url=emulator.base_url, api_key="sk-ant-test-key", max_retries=0
    ) as client:
        yield client


def turn_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == "convo.turn"]


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            if scope.scope.name != "convo":
                continue
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def _two_sessions(client: anthropic.Anthropic, telemetry: Telemetry) -> list[convo.Reply]:
    """cold, hit, then the system prompt edited: system_changed."""
    first = convo.Session(
        PREFIX, client=client, ledger=False, registry=convo.WarmRegistry(), hooks=[telemetry]
    )
    replies = [first.send("hello"), first.send("and again")]
    second = convo.Session(
        EDITED,
        client=client,
        ledger=False,
        registry=convo.WarmRegistry(),
        hooks=[telemetry],
        messages=first.history,
        _tracker=first.tracker,
    )
    replies.append(second.send("now what"))
    return replies


class TestSpans:
    """A span per turn with convo's attributes, through the global provider by default."""

    def test_hook(self, spans: InMemorySpanExporter, session_client: anthropic.Anthropic) -> None:
        """As a hook: one convo.turn span per turn with usage, the TTL split, cost, reason,
        predicted against observed, attempts; the cache write under the older GenAI name."""
        replies = _two_sessions(session_client, Telemetry())
        found = turn_spans(spans)
        assert len(found) == 3
        for span, reply in zip(found, replies, strict=True):
            a = span.attributes or {}
            assert a["gen_ai.usage.input_tokens"] == reply.usage.total_input
            assert a["gen_ai.usage.cache_read.input_tokens"] == reply.usage.cache_read
            assert a["gen_ai.usage.cache_creation.input_tokens"] == reply.usage.cache_write
            assert a["convo.usage.cache_write_5m_tokens"] == reply.usage.cache_write_5m
            assert a["convo.usage.cache_write_1h_tokens"] == reply.usage.cache_write_1h
            assert a["convo.cache.reason"] == reply.reason
            assert a["convo.cache.predicted.read_tokens"] == reply.cache.predicted.cache_read
            assert a["convo.cost.usd"] == pytest.approx(float(reply.cost.usd or 0))
            assert a["convo.attempts"] == 1
            assert a["gen_ai.response.id"] == reply.message.id
        reasons = [(s.attributes or {})["convo.cache.reason"] for s in found]
        assert reasons == ["cold", "hit", "system_changed"]
        assert (found[2].attributes or {})["convo.cache.unexpected_bust"] is True
        assert (found[1].attributes or {})["convo.cost.saved_usd"] > 0

    def test_newer_write_name(
        self, spans: InMemorySpanExporter, session_client: anthropic.Anthropic
    ) -> None:
        """The attribute names of the cache write are configurable."""
        names = ("gen_ai.usage.cache_write.input_tokens",)
        session = convo.Session(
            PREFIX,
            client=session_client,
            ledger=False,
            registry=convo.WarmRegistry(),
            hooks=[Telemetry(cache_write_attributes=names)],
        )
        reply = session.send("hi")
        (span,) = turn_spans(spans)
        a = span.attributes or {}
        assert a["gen_ai.usage.cache_write.input_tokens"] == reply.usage.cache_write > 0
        assert "gen_ai.usage.cache_creation.input_tokens" not in a

    def test_instrument_parents_sdk_spans(
        self, spans: InMemorySpanExporter, session_client: anthropic.Anthropic
    ) -> None:
        """instrument(): the turn's span is the parent of the SDK's own call span, and a
        Telemetry that is also a hook records the turn once."""
        telemetry = Telemetry().instrument()
        try:
            session = convo.Session(
                PREFIX,
                client=session_client,
                ledger=False,
                registry=convo.WarmRegistry(),
                hooks=[telemetry],
            )
            session.send("hi")
            with session.stream("stream it") as s:
                "".join(s.text_stream)
        finally:
            telemetry.uninstrument()
        finished = spans.get_finished_spans()
        turns = turn_spans(spans)
        assert len(turns) == 2
        sdk = [
            s
            for s in finished
            if s.instrumentation_scope
            and s.instrumentation_scope.name == "com.anthropic.sdk.python"
        ]
        assert len(sdk) == 2
        for child, parent in zip(sdk, turns, strict=True):
            assert child.parent is not None
            assert child.parent.span_id == parent.context.span_id
        assert [(t.attributes or {})["convo.cache.reason"] for t in turns] == ["cold", "hit"]
        assert "send" not in type(session).__dict__ or not hasattr(
            type(session).__dict__["send"], "__wrapped__"
        )

    async def test_instrument_async(
        self, spans: InMemorySpanExporter, emulator: RunningEmulator
    ) -> None:
        """instrument() traces AsyncSession turns and streams too."""
        telemetry = Telemetry().instrument()
        try:
            async with anthropic.AsyncAnthropic(
                base_url=emulator.base_url, api_key="sk-ant-test-key", max_retries=0
            ) as client:
                session = convo.AsyncSession(
                    PREFIX, client=client, ledger=False, registry=convo.WarmRegistry()
                )
                await session.send("hi")
                async with session.stream("more") as s:
                    async for _ in s.text_stream:
                        pass
        finally:
            telemetry.uninstrument()
        turns = turn_spans(spans)
        assert [(t.attributes or {})["convo.cache.reason"] for t in turns] == ["cold", "hit"]

    def test_failed_turn(self, spans: InMemorySpanExporter, emulator: RunningEmulator) -> None:
        """A turn that fails is a span with error.type and an error status (no message)."""
        telemetry = Telemetry().instrument()
        try:
            with anthropic.Anthropic(base_url="http://127.0.0.1:1", api_key="k") as client:
                session = convo.Session(
                    PREFIX,
                    client=client,
                    ledger=False,
                    registry=convo.WarmRegistry(),
                    retry=convo.RetryPolicy(max_attempts=1),
                )
                with pytest.raises(convo.RetriesExhausted):
                    session.send("hi")
        finally:
            telemetry.uninstrument()
        (span,) = turn_spans(spans)
        assert (span.attributes or {})["error.type"] == "RetriesExhausted"
        assert span.status.status_code == trace.StatusCode.ERROR
        assert span.status.description == "RetriesExhausted"  # the type, never the message


class TestMetrics:
    """Token usage by type, cost, hit ratio, busts by reason, retries."""

    def test_global_and_private_providers(self, session_client: anthropic.Anthropic) -> None:
        """Metrics go to the global provider by default, or to the one given."""
        private = InMemoryMetricReader()
        replies = _two_sessions(
            session_client, Telemetry(meter_provider=MeterProvider(metric_readers=[private]))
        )
        points = metric_points(private)
        tokens = {
            p.attributes["gen_ai.token.type"]: p.sum for p in points["gen_ai.client.token.usage"]
        }
        assert tokens == {
            "input": sum(r.usage.total_input for r in replies),
            "output": sum(r.usage.output for r in replies),
            "cache_read": sum(r.usage.cache_read for r in replies),
            "cache_creation": sum(r.usage.cache_write for r in replies),
        }
        busts = {p.attributes["convo.cache.reason"]: p.value for p in points["convo.cache.busts"]}
        assert busts == {"cold": 1, "system_changed": 1}
        (ratio,) = points["convo.cache.hit_ratio"]
        assert ratio.value == pytest.approx(tokens["cache_read"] / tokens["input"])
        (cost,) = points["convo.cost"]
        assert cost.value == pytest.approx(sum(float(r.cost.usd or 0) for r in replies))
        _two_sessions(session_client, Telemetry())
        assert "gen_ai.client.token.usage" in metric_points(_METRICS)

    def test_retries_and_429s(self, emulator: RunningEmulator, session_client: Any) -> None:
        """Retried attempts and 429s are counted."""
        emulator.configure({"faults": {"script": ["rate_limit", "none"]}})
        reader = InMemoryMetricReader()
        telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
        session = convo.Session(
            PREFIX,
            client=session_client,
            ledger=False,
            registry=convo.WarmRegistry(),
            hooks=[telemetry],
            sleep=lambda s: None,
        )
        reply = session.send("hi")
        points = metric_points(reader)
        assert [a.status for a in reply.attempts] == [429, 200]
        assert points["convo.rate_limited"][0].value == 1
        assert points["convo.retries"][0].value == 1


class TestLogging:
    """The convo logger warns on every unexpected bust, with its reason."""

    def test_bust_warned(
        self, caplog: pytest.LogCaptureFixture, session_client: anthropic.Anthropic
    ) -> None:
        """A system_changed bust is one warning naming it; cold and hit are not warned."""
        with caplog.at_level(logging.WARNING, logger="convo"):
            _two_sessions(session_client, Telemetry())
        warnings = [r for r in caplog.records if r.name == "convo"]
        assert len(warnings) == 1
        assert "system_changed (static)" in warnings[0].getMessage()


class TestNoSecrets:
    """No API key and no prompt text reach a span, a metric, a log line or Prometheus."""

    def test_planted(
        self,
        spans: InMemorySpanExporter,
        caplog: pytest.LogCaptureFixture,
        emulator: RunningEmulator,
    ) -> None:
        """A planted key and a marker in the prompt and reply appear nowhere."""
        key = "sk-ant-api03-PLANTED" + uuid.uuid4().hex
        marker = "MARKER" + uuid.uuid4().hex
        telemetry = Telemetry(log_busts=True).instrument()
        reader = InMemoryMetricReader()
        private = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
        prefix = convo.Prefix(model=MODEL, system=[SYSTEM + marker])
        try:
            with (
                caplog.at_level(logging.DEBUG, logger="convo"),
                serve_prometheus() as endpoint,
                anthropic.Anthropic(base_url=emulator.base_url, api_key=key) as client,
            ):
                scraper = Telemetry(meter_provider=endpoint.meter_provider)
                session = convo.Session(
                    prefix,
                    client=client,
                    ledger=False,
                    registry=convo.WarmRegistry(),
                    hooks=[private, scraper],
                )
                session.send(f"repeat {marker}")
                again = convo.Session(
                    convo.Prefix(model=MODEL, system=[SYSTEM + marker + "!"]),
                    client=client,
                    ledger=False,
                    registry=convo.WarmRegistry(),
                    hooks=[private, scraper],
                    messages=session.history,
                    _tracker=session.tracker,
                )
                again.send(f"and {marker}")
                scraped = httpx.get(endpoint.url).text
        finally:
            telemetry.uninstrument()
        # convo's own log lines (the SDK's and httpx's DEBUG logs are theirs: the SDK logs
        # request options, prompt included, at DEBUG).
        logged = "\n".join(
            r.getMessage() for r in caplog.records if r.name.split(".")[0] == "convo"
        )
        texts = [logged, scraped, reader.get_metrics_data().to_json()]
        for span in spans.get_finished_spans():
            texts.append(span.to_json())
        assert any("convo.turn" in t for t in texts)
        assert "system_changed" in logged
        for text in texts:
            assert key not in text
            assert key[-16:] not in text
            assert marker not in text


class TestPrometheus:
    """The Prometheus exposition, scraped over real HTTP and parsed."""

    def test_scrape(self, session_client: anthropic.Anthropic) -> None:
        """Token usage by type, turns by reason and cost are in the scrape."""
        with serve_prometheus() as endpoint:
            replies = _two_sessions(
                session_client, Telemetry(meter_provider=endpoint.meter_provider)
            )
            response = httpx.get(endpoint.url)
        assert response.status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        usage = families["gen_ai_client_token_usage"]
        sums = {
            s.labels["gen_ai_token_type"]: s.value for s in usage.samples if s.name.endswith("_sum")
        }
        assert sums["cache_read"] == sum(r.usage.cache_read for r in replies)
        assert sums["cache_creation"] == sum(r.usage.cache_write for r in replies)
        turns = {
            s.labels["convo_cache_reason"]: s.value
            for s in families["convo_turns"].samples
            if s.name.endswith("_total")
        }
        assert turns == {"cold": 1, "hit": 1, "system_changed": 1}
        cost = next(n for n in families if n.startswith("convo_cost"))
        assert families[cost].samples[0].value == pytest.approx(
            sum(float(r.cost.usd or 0) for r in replies)
        )
        assert "convo_cache_hit_ratio" in families

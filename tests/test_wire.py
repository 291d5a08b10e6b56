"""The bytes convo sends are the bytes the SDK would send, and the bytes convo hashes."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import anthropic
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convo
from convo import sdk, wire
from convo.emulator import Emulator, EmulatorConfig
from convo.emulator.prompt import parse_prompt
from convo.layout import History, Layout, RenderedRequest

MODEL = "claude-sonnet-4-6"  # keeps earlier thinking: positions are the same on both sides
SYSTEM = " ".join(("alpha", "beta", "gamma", "delta")[i % 4] for i in range(3_000))
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
TOOLS = [
    {
        "name": "lookup",
        "description": "Look a word up.",
        "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}},
    }
]
UNLIMITED = {"limits": {"default": {"rpm": 10**8, "itpm": 10**12, "otpm": 10**12}}}


class Wire:
    """A client whose transport hands each request to the emulator's core in-process and
    keeps the bytes it carried; the requests convo checked, with their fingerprints."""

    def __init__(self) -> None:
        self.emulator = Emulator(EmulatorConfig.from_dict(UNLIMITED))
        self.sent: list[bytes] = []
        self.checked: list[tuple[bytes, wire.Request, bool]] = []
        self.rendered: dict[int, RenderedRequest] = {}

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        content = request.read()
        self.sent.append(content)
        body = json.loads(content)
        if body.get("stream"):
            return httpx2.Response(400, json={"type": "error"})  # not used here
        plan = self.emulator.messages(request.headers, body)
        plan.begin()
        return httpx2.Response(
            200, content=json.dumps(plan.message).encode(), headers=dict(plan.headers)
        )

    def client(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            api_key="sk-wire",
            base_url="http://wire.invalid",
            max_retries=0,
            http_client=httpx2.Client(transport=httpx2.MockTransport(self)),
        )

    def session(self, **options: Any) -> convo.Session:
        session = convo.Session(
            convo.Prefix(model=MODEL, system=[SYSTEM], tools=TOOLS),
            client=self.client(),
            ledger=False,
            registry=convo.WarmRegistry(),  # this emulator's own: nothing is warm yet
            **options,
        )
        tracker = session._core.tracker
        predict = tracker.predict

        def spy(rendered: RenderedRequest, *args: Any, **kwargs: Any) -> Any:
            self.rendered[id(rendered.body)] = rendered
            return predict(rendered, *args, **kwargs)

        tracker.predict = spy  # type: ignore[method-assign]
        return session


class Seen(list[tuple[bytes, wire.Request, bool]]):
    """What the check saw (a short repr: Hypothesis prints the test's arguments)."""

    def __repr__(self) -> str:
        return f"<{len(self)} checked requests>"


@pytest.fixture
def spy_check(monkeypatch: pytest.MonkeyPatch) -> Seen:
    """Every request's bytes and arguments, as the debug check saw them."""
    seen = Seen()
    original = wire.check

    def check(sent: bytes, request: wire.Request, *, stream: bool) -> None:
        seen.append((sent, request, stream))
        original(sent, request, stream=stream)

    monkeypatch.setattr(wire, "check", check)
    monkeypatch.setattr(wire, "_check", True)
    monkeypatch.setattr(wire, "CHUNK_BYTES", 300)  # views across many sealed chunks
    # Another test may have set a global OpenTelemetry provider (then the SDK builds bodies
    # itself, see TestFallback); these tests are about convo's own bytes.
    monkeypatch.setattr(sdk, "_spans_record", lambda client: False)
    return seen


def shuffled(block: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The same block with its keys (and nested keys) in another order."""
    items = list(block.items())
    rng.shuffle(items)
    return {k: shuffled(v, rng) if isinstance(v, dict) else v for k, v in items}


# -- strategies ---------------------------------------------------------------------------

words = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=30
).filter(lambda s: s.strip() != "")

text_block = st.builds(lambda t: {"type": "text", "text": t}, words)
image_block = st.just(
    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
)
document_block = st.builds(
    lambda t, cite: {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": t},
        **({"citations": {"enabled": True}} if cite else {}),
    },
    words,
    st.booleans(),
)
user_blocks = st.lists(st.one_of(text_block, image_block, document_block), min_size=1, max_size=3)


@st.composite
def conversations(draw: st.DrawFn) -> dict[str, Any]:
    """A seeded history (tool use and results, thinking) and the user turns that follow."""
    seed: list[dict[str, Any]] = []
    for n in range(draw(st.integers(0, 2))):
        use_id = f"toolu_{n:04d}"
        assistant: list[dict[str, Any]] = []
        if draw(st.booleans()):
            assistant.append({"type": "thinking", "thinking": draw(words), "signature": "sig"})
        assistant.append(
            {"type": "tool_use", "id": use_id, "name": "lookup", "input": {"word": draw(words)}}
        )
        seed += [
            {"role": "user", "content": draw(user_blocks)},
            {"role": "assistant", "content": assistant},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use_id, "content": draw(words)}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": draw(words)}]},
        ]
    return {
        "seed": seed,
        "turns": draw(st.lists(user_blocks, min_size=1, max_size=4)),
        "key_seed": draw(st.integers(0, 2**32)),
        "suffix": draw(st.sampled_from([None, "system", "message"])),
        "history": draw(st.sampled_from(["rolling", "none", "auto"])),
        "diagnostics": draw(st.booleans()),
        "params": draw(
            st.sampled_from(
                [{}, {"metadata": {"user_id": "u1"}}, {"stop_sequences": ["END"], "top_k": 5}]
            )
        ),
    }


def common(a: tuple[bytes, ...], b: tuple[bytes, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class TestWireBytes:
    """Random conversations: what goes out is what the SDK would send and what convo hashed."""

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(conversations())
    def test_bytes_sent_are_the_sdk_body_and_keys_agree(
        self, spy_check: Seen, case: dict[str, Any]
    ) -> None:
        """The bytes on the wire equal the SDK's own encoding of the same arguments and a
        fresh encoding of themselves; the emulator's keys diverge where convo's do."""
        spy_check.clear()
        rng = random.Random(case["key_seed"])
        transport = Wire()
        placement = case["suffix"]
        options: dict[str, Any] = {"history": case["history"], "diagnostics": case["diagnostics"]}
        if placement is not None and not (placement == "message" and case["history"] == "auto"):
            options["suffix"] = lambda: f"now {rng.random():.6f}"
            options["suffix_placement"] = placement
        session = transport.session(
            messages=[
                {**m, "content": [shuffled(b, rng) for b in m["content"]]} for m in case["seed"]
            ],
            **options,
        )
        for blocks in case["turns"]:
            session.send([shuffled(b, rng) for b in blocks], params=case["params"] or None)

        assert len(transport.sent) == len(case["turns"]) == len(spy_check)
        previous: tuple[Any, Any] | None = None
        for sent, (checked, request, stream) in zip(transport.sent, spy_check, strict=True):
            rendered = transport.rendered[id(request.body)]
            assert not stream
            assert sent == checked
            assert sent == wire.sdk_body(request.arguments(), stream=False)
            decoded = json.loads(sent)
            fresh = json.dumps(decoded, separators=(",", ":"), ensure_ascii=False).encode()
            assert sent == fresh
            prompt = parse_prompt(decoded)
            fingerprint = rendered.fingerprint
            assert len(prompt.keys) == len(fingerprint.keys)
            assert [b.position for b in prompt.breakpoints] == [
                b.position for b in rendered.breakpoints
            ]
            if previous is not None:
                last_prompt, last_fingerprint = previous
                assert common(prompt.keys, last_prompt.keys) == fingerprint.common_prefix(
                    last_fingerprint
                )
            previous = (prompt, fingerprint)


class TestEncoder:
    """The encoder's pieces."""

    def test_encode_is_the_sdk_encoding(self) -> None:
        """Tuples become lists, non-ASCII stays as is, separators are compact."""
        assert wire.encode({"b": (1, 2.5), "a": "héllo"}) == '{"b":[1,2.5],"a":"héllo"}'.encode()

    def test_nan_is_refused(self) -> None:
        """The API (and the SDK) refuse NaN; convo refuses it when the block is stored."""
        with pytest.raises(ValueError, match="JSON compliant"):
            wire.encode({"x": float("nan")})
        with pytest.raises(convo.LayoutError):
            History(
                [{"role": "user", "content": [{"type": "text", "text": "x", "n": float("nan")}]}]
            )

    def test_mark_adds_cache_control_last(self) -> None:
        """A marked block's bytes are its bytes with the marker as the last key."""
        block = {"type": "text", "text": "hi"}
        marked = {**block, "cache_control": {"ttl": "1h", "type": "ephemeral"}}
        assert wire.mark(wire.encode(block), wire.marker_bytes("1h")) == wire.encode(marked)

    def test_rendered_messages_equal_the_body(self) -> None:
        """The joined fragments decode to the rendered body's messages, breakpoints included."""
        history = History()
        layout = Layout(
            convo.Prefix(model=MODEL, system=[SYSTEM]), suffix="s", suffix_placement="message"
        )
        for i in range(300):  # past several sealed chunks
            history.append({"role": "user", "content": f"question {i} " + "word " * 60})
            rendered = layout.render(history)
            assert wire.encode(rendered.body["messages"]) == wire.joined(
                rendered.encoded["messages"]
            )
            assert wire.encode(rendered.body["system"]) == wire.joined(rendered.encoded["system"])
            history.append({"role": "assistant", "content": f"answer {i}"})

    def test_unmodelled_fields_follow_as_extra_body(self) -> None:
        """A field the SDK does not model goes after its fields, as extra_body would put it."""
        request = wire.Request(
            {"model": MODEL, "max_tokens": 5, "messages": [], "top_k": 3, "metadata": {}}
        )
        sent, _, _ = wire.body_bytes(request, stream=False)
        assert sent == wire.sdk_body(request.arguments(), stream=False)
        assert list(json.loads(sent)) == ["max_tokens", "messages", "model", "metadata", "top_k"]


class TestSending:
    """Requests go out through the SDK client, plain and streaming, sync and async."""

    def test_stream_bytes_are_the_sdk_stream_body(
        self, spy_check: Seen, client: anthropic.Anthropic
    ) -> None:
        """A streamed turn's bytes are those of ``messages.stream`` (its own field order)."""
        session = convo.Session(
            convo.Prefix(model=MODEL, system=[SYSTEM]),
            client=client,
            ledger=False,
            diagnostics=True,
        )
        session.send("first")
        with session.stream("second") as stream:
            text = "".join(stream.text_stream)
        assert text
        sent, request, is_stream = spy_check[-1]
        assert is_stream
        assert sent == wire.sdk_body(request.arguments(), stream=True)
        assert json.loads(sent)["stream"] is True

    def test_async_session(self, spy_check: Seen, emulator: Any) -> None:
        """An AsyncSession sends pre-encoded bytes too, and gets its replies."""

        async def main() -> list[str]:
            async with anthropic.AsyncAnthropic(
                base_url=emulator.base_url, api_key="k", max_retries=0
            ) as client:
                session = convo.AsyncSession(
                    convo.Prefix(model=MODEL, system=[SYSTEM]), client=client, ledger=False
                )
                return [(await session.send(f"turn {i}")).text for i in range(3)]

        assert all(asyncio.run(main()))
        assert len(spy_check) == 3

    def test_check_catches_a_difference(self) -> None:
        """The debug check fails when the bytes differ from the SDK's body."""
        request = wire.Request({"model": MODEL, "max_tokens": 5, "messages": []})
        with pytest.raises(wire.WireMismatch):
            wire.check(
                b'{"max_tokens":6,"messages":[],"model":"' + MODEL.encode() + b'"}',
                request,
                stream=False,
            )


class TestFallback:
    """Where something reads the body the SDK holds, the SDK builds it from the arguments."""

    def test_plain_arguments_go_through_messages_create(
        self, spy_check: Seen, client: anthropic.Anthropic
    ) -> None:
        """Keyword arguments (not a convo.wire.Request) are sent by ``messages.create``."""
        outcome = sdk.send(
            client,
            {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
            now=0.0,
        )
        assert outcome.ok
        assert outcome.facts.status == 200
        assert not spy_check  # convo's bytes were not used

    def test_unmodelled_fields_go_in_extra_body(
        self, spy_check: Seen, client: anthropic.Anthropic, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On the SDK's own path (spans recording), a field it has no keyword for is sent in
        ``extra_body``, as on convo's path, instead of failing."""
        monkeypatch.setattr(sdk, "_spans_record", lambda client: True)
        session = convo.Session(
            convo.Prefix(model=MODEL, system=[SYSTEM]), client=client, ledger=False
        )
        assert session.send("hi", params={"top_k": 5}).text
        assert not spy_check

    def test_other_clients_get_keyword_arguments(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A client that is not Anthropic / AsyncAnthropic (Bedrock, Vertex) is not given
        pre-encoded bytes: they route a request by the model in its body."""
        monkeypatch.setattr(sdk, "_spans_record", lambda client: False)
        request = wire.Request({"model": MODEL, "max_tokens": 5, "messages": []})
        assert sdk._pre_encoded(object(), request) is None
        first_party = anthropic.Anthropic(api_key="k", base_url="http://x.invalid")
        assert sdk._pre_encoded(first_party, request) is request

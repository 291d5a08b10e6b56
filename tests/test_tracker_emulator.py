"""CacheTracker against the emulator, through the real SDK: predictions match token for token."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from convo.emulator import DIAGNOSTICS_BETA, RunningEmulator
from convo.layout import History, Layout, Prefix, PrefixTooShortWarning, RenderedRequest
from convo.tracker import CacheOutcome, CacheTracker
from convo.usage import Usage

MODEL = "claude-sonnet-4-6"
BIG = "rules " * 1200
TOOLS = [
    {"name": "lookup", "description": "Look a word up.", "input_schema": {"type": "object"}},
    {"name": "define", "description": "Define a word.", "input_schema": {"type": "object"}},
]


def send(
    client: anthropic.Anthropic,
    tracker: CacheTracker,
    request: RenderedRequest,
    previous_id: str | None = None,
) -> tuple[CacheOutcome, Any]:
    """Predict, send through the SDK with cache diagnostics on, observe."""
    prediction = tracker.predict(request)
    message = client.messages.create(
        **request.body,
        extra_headers={"anthropic-beta": DIAGNOSTICS_BETA},
        extra_body={"diagnostics": {"previous_message_id": previous_id}},
    )
    diagnostics = getattr(message, "diagnostics", None)
    return tracker.observe(prediction, Usage.from_message(message), diagnostics), message


class Conversation:
    """One conversation driven turn by turn against the emulator."""

    def __init__(
        self,
        client: anthropic.Anthropic,
        emulator: RunningEmulator,
        layout: Layout,
        *,
        refresh: Any = "path",
    ):
        self.client, self.layout = client, layout
        self.tracker = CacheTracker(
            clock=emulator.emulator.clock.now, models=layout.prefix.models, refresh=refresh
        )
        self.history = History([{"role": "user", "content": "hello there"}])
        self.previous_id: str | None = None
        self.params: dict[str, Any] = {}
        self.calls = 0

    def send(self) -> CacheOutcome:
        thinking = "thinking" in self.params
        request = self.layout.render(
            self.history, params=self.params, max_tokens=2048 if thinking else None
        )
        assert len(request.breakpoints) <= 4
        outcome, message = send(self.client, self.tracker, request, self.previous_id)
        self.previous_id = message.id
        self.history.append({"role": "assistant", "content": message.content})
        return outcome

    def ask(self, text: str = "and then?", blocks: int = 1) -> None:
        content = [{"type": "text", "text": f"{text} {i}"} for i in range(blocks)]
        self.history.append({"role": "user", "content": content})

    def tools(self, calls: int, *, parallel: bool) -> None:
        """A user turn, then *calls* tool calls answered: one fan-out or one by one."""
        self.ask("use the tools")
        uses, results = [], []
        for _ in range(calls):
            self.calls += 1
            uses.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{self.calls:04d}",
                    "name": "lookup",
                    "input": {"word": f"w{self.calls}", "depth": self.calls % 3},
                }
            )
            results.append(
                {
                    "type": "tool_result",
                    "tool_use_id": f"toolu_{self.calls:04d}",
                    "content": f"found {self.calls}",
                }
            )
        # With thinking on, each assistant turn thinks before calling (kept through the tool
        # loop; stripped by the next plain user turn on models that strip it).
        thought = [
            {"type": "thinking", "thinking": f"plan call {self.calls}", "signature": "sig"}
        ] * ("thinking" in self.params)
        if parallel:
            self.history.append({"role": "assistant", "content": [*thought, *uses]})
            self.history.append({"role": "user", "content": results})
            return
        for use, result in zip(uses, results, strict=True):
            self.history.append({"role": "assistant", "content": [*thought, use]})
            self.history.append({"role": "user", "content": [result]})


def prefix(**kwargs: Any) -> Prefix:
    options: dict[str, Any] = {"model": MODEL, "system": [BIG], "tools": TOOLS}
    options.update(kwargs)
    return Prefix(**options)


# Clock jumps chosen so no sum of them lands within 30 s of 300 s or 3600 s: the emulator's
# clock also moves in real time, and a jump exactly onto an expiry would make the test race.
JUMPS = [0, 130, 410, 4000]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("ask"), st.sampled_from([1, 3, 25])),
        st.tuples(st.just("wait"), st.sampled_from(JUMPS)),
        st.tuples(st.just("suffix"), st.sampled_from([None, "User: Ada", "User: Bob"])),
        st.tuples(st.just("tools"), st.sampled_from([0, 1, 2])),
        st.tuples(st.just("ttl"), st.sampled_from(["5m", "1h"])),
        st.tuples(st.just("fanout"), st.sampled_from([(3, True), (12, True), (12, False)])),
        st.tuples(st.just("thinking"), st.booleans()),
        st.tuples(st.just("effort"), st.sampled_from([None, "low", "high"])),
    ),
    min_size=1,
    max_size=10,
)

#: Sonnet 4.6 keeps earlier thinking; Sonnet 4 strips it (both cache from 1,024 tokens).
THINKING_MODELS = ["claude-sonnet-4-6", "claude-sonnet-4"]


class TestPredictionMatchesEmulator:
    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        steps,
        st.sampled_from(["none", "rolling", "auto"]),
        st.sampled_from(["system", "message"]),
        st.booleans(),
        st.sampled_from(THINKING_MODELS),
        st.sampled_from(["path", "entry"]),
        st.booleans(),
    )
    def test_every_turn_token_for_token(
        self,
        emulator: RunningEmulator,
        client: anthropic.Anthropic,
        actions: list[tuple[str, Any]],
        strategy: Any,
        placement: Any,
        guard: bool,
        model: str,
        refresh: Any,
        split: bool,
    ) -> None:
        """Over random turns, suffix/tool/TTL changes, clock jumps, tool fan-outs (parallel
        and sequential), thinking turns and effort changes, on a model that keeps earlier
        thinking and one that strips it, under either refresh rule, and (*split*) with a 1h
        history ending before a 5m newest turn while the prefix is 1h: prediction == usage."""
        emulator.reset(config=True)
        emulator.configure({"refresh": refresh})
        if strategy == "auto":
            placement = "system"
        options: dict[str, Any] = {"suffix": "User: Ada", "ttl": "5m", "tools": 0}

        def build() -> Layout:
            tools = [TOOLS, TOOLS[::-1], TOOLS[:1]][options["tools"]]
            return Layout(
                prefix(model=model, tools=tools, ttl=options["ttl"]),
                suffix=options["suffix"],
                suffix_placement=placement,
                history=strategy,
                history_ttl="1h" if split and options["ttl"] == "1h" else "5m",
                newest_ttl="5m",
                lookback_guard=guard,
            )

        convo = Conversation(client, emulator, build(), refresh=refresh)
        outcome = convo.send()
        assert outcome.exact, outcome
        for kind, value in actions:
            if kind == "wait":
                emulator.advance(value)
                continue
            if kind == "ask":
                convo.ask(blocks=value)
            elif kind == "fanout":
                convo.tools(value[0], parallel=value[1])
            elif kind in ("thinking", "effort"):
                if kind == "thinking" and value:
                    convo.params["thinking"] = {"type": "enabled", "budget_tokens": 1024}
                elif kind == "effort" and value is not None:
                    convo.params["output_config"] = {"effort": value}
                else:
                    convo.params.pop("thinking" if kind == "thinking" else "output_config", None)
                convo.ask()
            else:
                options[kind] = value
                convo.layout = build()
                convo.ask()
            outcome = convo.send()
            event(f"reason: {outcome.reason}")
            assert outcome.exact, (kind, value, outcome)
            assert outcome.reason != "evicted_or_unknown"


class TestSharedPrefix:
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("send"), st.sampled_from([0, 1])),
                st.tuples(st.just("wait"), st.sampled_from(JUMPS)),
            ),
            min_size=2,
            max_size=12,
        ),
        st.sampled_from(["path", "entry"]),
        st.sampled_from(["5m", "1h"]),
    )
    def test_two_conversations_on_one_prefix(
        self,
        emulator: RunningEmulator,
        client: anthropic.Anthropic,
        actions: list[tuple[str, int]],
        refresh: Any,
        ttl: Any,
    ) -> None:
        """Two conversations share a prefix and one tracker; whichever refresh rule the
        emulator follows, the tracker told the same rule predicts every turn exactly."""
        emulator.reset(config=True)
        emulator.configure({"refresh": refresh})
        lay = Layout(prefix(ttl=ttl), history_ttl="5m")
        first = Conversation(client, emulator, lay, refresh=refresh)
        second = Conversation(client, emulator, lay, refresh=refresh)
        second.tracker = first.tracker
        second.history = History([{"role": "user", "content": "another opening"}])
        conversations = [first, second]
        for kind, value in actions:
            if kind == "wait":
                emulator.advance(value)
                continue
            convo = conversations[value]
            if convo.previous_id is not None:
                convo.ask()
            outcome = convo.send()
            event(f"read: {'prefix' if outcome.cache_read == lay.prefix.tokens else 'other'}")
            assert outcome.exact, (kind, value, outcome)


class TestThinkingToolLoops:
    @pytest.mark.parametrize("model", THINKING_MODELS)
    @pytest.mark.parametrize("placement", ["system", "message"])
    def test_thinking_through_a_tool_loop_and_a_plain_turn(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, model: str, placement: Any
    ) -> None:
        """Thinking replies, a parallel and a sequential tool loop (a suffix folded into the
        tool results with placement "message"), then plain turns: exact every turn."""
        lay = Layout(prefix(model=model), suffix="User: Ada", suffix_placement=placement)
        convo = Conversation(client, emulator, lay)
        convo.params["thinking"] = {"type": "enabled", "budget_tokens": 1024}
        reasons = [convo.send().reason]
        for action in ("parallel", "ask", "sequential", "ask", "ask"):
            if action == "ask":
                convo.ask()
            else:
                convo.tools(4, parallel=action == "parallel")
            outcome = convo.send()
            assert outcome.exact, (action, outcome)
            reasons.append(outcome.reason)
        assert "evicted_or_unknown" not in reasons
        strips = model == "claude-sonnet-4"
        # The plain turn after each loop strips the loop's thinking: the entry that held it
        # no longer matches.
        assert (reasons.count("messages_changed") == 2) is strips, reasons


class TestBustReasons:
    def test_timestamp_in_static_system(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """A timestamp in the static system text busts the cache: system_changed (static)."""
        convo = Conversation(client, emulator, Layout(prefix(system=[BIG, "Now: 10:00:00"])))
        convo.send()
        convo.ask()
        convo.layout = Layout(prefix(system=[BIG, "Now: 10:00:07"]))
        outcome = convo.send()
        assert (outcome.reason, outcome.detail) == ("system_changed", "static")
        assert outcome.server_reason == "system_changed"
        assert outcome.agrees
        assert outcome.exact

    def test_changing_system_suffix(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """A changed suffix in system keeps the prefix read but re-keys history (suffix)."""
        convo = Conversation(client, emulator, Layout(prefix(), suffix="plan: free"))
        convo.send()
        convo.ask()
        convo.layout = Layout(prefix(), suffix="plan: pro")
        outcome = convo.send()
        assert (outcome.reason, outcome.detail) == ("system_changed", "suffix")
        assert outcome.cache_read == prefix().tokens
        assert outcome.exact

    def test_reordered_tool(self, emulator: RunningEmulator, client: anthropic.Anthropic) -> None:
        """Reordering the tools busts everything: tools_changed."""
        convo = Conversation(client, emulator, Layout(prefix()))
        convo.send()
        convo.ask()
        convo.layout = Layout(prefix(tools=TOOLS[::-1]))
        outcome = convo.send()
        assert outcome.reason == "tools_changed"
        assert outcome.server_reason == "tools_changed"
        assert outcome.agrees
        assert (outcome.cache_read, outcome.exact) == (0, True)

    def test_model_switch(self, emulator: RunningEmulator, client: anthropic.Anthropic) -> None:
        """Switching model reads nothing: caches are per model."""
        convo = Conversation(client, emulator, Layout(prefix()))
        convo.send()
        convo.ask()
        convo.layout = Layout(prefix(model="claude-sonnet-5"))
        outcome = convo.send()
        assert outcome.reason == "model_changed"
        assert outcome.server_reason == "model_changed"
        assert outcome.agrees
        assert (outcome.cache_read, outcome.exact) == (0, True)

    def test_edited_earlier_message(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """Editing an earlier message reads only up to it: messages_changed at that index."""
        convo = Conversation(client, emulator, Layout(prefix()))
        for _ in range(3):
            convo.send()
            convo.ask()
        edited = list(convo.history)
        edited[2] = {"role": "user", "content": "an edited question"}
        convo.history = History(edited)
        outcome = convo.send()
        assert (outcome.reason, outcome.message_index) == ("messages_changed", 2)
        assert outcome.server_reason == "messages_changed"
        assert outcome.agrees
        assert outcome.cache_read > 0
        assert outcome.exact

    def test_six_minute_gap_with_5m_ttl(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """Six minutes of silence expires 5-minute entries: expired."""
        convo = Conversation(client, emulator, Layout(prefix()))
        convo.send()
        convo.ask()
        emulator.advance(360)
        outcome = convo.send()
        assert (outcome.reason, outcome.cache_read, outcome.exact) == ("expired", 0, True)

    def test_six_minute_gap_keeps_1h_prefix(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """With a 1h prefix, six minutes expires only the 5m history: the prefix is read."""
        lay = Layout(prefix(ttl="1h"), history_ttl="5m")
        convo = Conversation(client, emulator, lay)
        first = convo.send()
        convo.ask()
        emulator.advance(360)
        outcome = convo.send()
        assert outcome.reason == "expired"
        assert outcome.cache_read == first.cache_write_1h > 0
        assert outcome.exact

    def test_a_one_hour_entry_ending_before_the_newest_turn_outlives_a_pause(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """A 1h history with a 5m newest turn: the turn writes the previous answer at the
        1h rate and its own message at the 5m one; after 20 minutes the next turn reads
        everything up to the previous answer (the 1h entry) and writes the rest again.
        The tracker predicts every step exactly."""
        lay = Layout(prefix(ttl="1h"), history_ttl="1h", newest_ttl="5m")
        convo = Conversation(client, emulator, lay)
        convo.send()
        convo.ask("a question of some length " * 20)
        second = convo.send()
        assert second.exact
        assert second.cache_write_1h > 0  # the first answer, under the 1h breakpoint
        assert second.cache_write_5m > second.cache_write_1h  # the longer question, at 5m
        convo.ask()
        emulator.advance(1200)
        third = convo.send()
        assert third.exact
        # Read: the prefix, the first turn and the first answer; the question lapsed and is
        # written again with the second answer, under this turn's own 1h breakpoint.
        assert third.cache_read == second.cache_read + second.cache_write_1h
        assert third.cache_write_1h > second.cache_write_5m
        assert 0 < third.cache_write_5m < second.cache_write_5m  # its short question

    @pytest.mark.parametrize("guard", [False, True], ids=["without-guard", "with-guard"])
    def test_25_block_fan_out(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, guard: bool
    ) -> None:
        """25 new blocks outrun the 20-block lookback unless the extra breakpoint is placed."""
        convo = Conversation(client, emulator, Layout(prefix(), lookback_guard=guard))
        convo.send()
        convo.ask()
        convo.send()
        convo.ask(blocks=25)
        outcome = convo.send()
        assert outcome.exact
        assert outcome.reason == ("hit" if guard else "lookback_exceeded")
        if not guard:
            assert outcome.server_reason is None  # nothing changed: only the reach fell short

    def test_parallel_fan_out_reads_without_a_lookback_breakpoint(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """25 parallel tool calls are two lookback positions: the layout spends no extra
        breakpoint and the turn still reads the previous entry."""
        convo = Conversation(client, emulator, Layout(prefix()))
        convo.send()
        convo.ask()
        before = convo.send()
        convo.tools(25, parallel=True)
        request = convo.layout.render(convo.history)
        assert [bp.source for bp in request.breakpoints] == ["prefix", "newest"]
        outcome = convo.send()
        assert (outcome.reason, outcome.exact) == ("hit", True)
        assert outcome.cache_read == before.cache_read + before.cache_write_5m


class TestToolOrder:
    """Server tools are keyed after custom tools, whatever order a raw body lists them in."""

    def test_raw_body_with_a_server_tool_first_is_predicted_exactly(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """A body listing web_search before a cached custom tool: prediction == usage twice."""
        tracker = CacheTracker(clock=emulator.emulator.clock.now)
        body: dict[str, Any] = {
            "model": "claude-sonnet-4-6",
            "max_tokens": 8,
            "tools": [
                {"type": "web_search_20250305", "name": "web_search"},
                {
                    "name": "lookup",
                    "description": "Look a record up. " * 300,
                    "input_schema": {"type": "object"},
                    "cache_control": {"type": "ephemeral"},
                },
            ],
            "messages": [{"role": "user", "content": "hi"}],
        }
        for expected in ("cold", "hit"):
            prediction = tracker.predict(body)
            usage = Usage.from_message(client.messages.create(**body))
            outcome = tracker.observe(prediction, usage)
            assert outcome.exact
            assert outcome.reason == expected

    def test_anthropic_client_tools_keep_their_place(self) -> None:
        """bash/text-editor tools are ordinary tools: a Prefix sends them where they were."""
        bash = {"type": "bash_20250124", "name": "bash"}
        lookup = {"name": "lookup", "input_schema": {"type": "object"}}
        search = {"type": "web_search_20250305", "name": "web_search"}
        with pytest.warns(PrefixTooShortWarning):  # only the order matters here
            p = Prefix(model="claude-sonnet-4-6", system=["x"], tools=[search, bash, lookup])
        assert [t["name"] for t in p.tools] == ["bash", "lookup", "web_search"]

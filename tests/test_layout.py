"""Layout: the frozen prefix, suffix placement, history strategies and breakpoint planning."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convo import LayoutError
from convo.fingerprint import fingerprint_body
from convo.layout import History, Layout, Prefix, PrefixTooShortWarning

MODEL = "claude-sonnet-4-6"  # minimum cacheable prefix: 1,024 tokens
BIG = "rules " * 1200  # about 1,200 tokens
TOOL = {"name": "lookup", "description": "Look a word up.", "input_schema": {"type": "object"}}


def prefix(**kwargs: Any) -> Prefix:
    options: dict[str, Any] = {"model": MODEL, "system": [BIG], "tools": [TOOL]}
    options.update(kwargs)
    return Prefix(**options)


def chat(turns: int) -> History:
    history = History([{"role": "user", "content": "hello"}])
    for i in range(turns):
        history.append({"role": "assistant", "content": f"answer {i}"})
        history.append({"role": "user", "content": f"question {i}"})
    return history


def wide_turn(history: History, width: int) -> History:
    """An assistant answer, then one user turn of *width* text blocks."""
    history.append({"role": "assistant", "content": "answer wide"})
    history.append(
        {"role": "user", "content": [{"type": "text", "text": f"part {i}"} for i in range(width)]}
    )
    return history


def fan_out(history: History, width: int) -> History:
    history.append(
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": f"tu{i}", "name": "lookup", "input": {"i": i}}
                for i in range(width)
            ],
        }
    )
    history.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": f"tu{i}", "content": "ok"}
                for i in range(width)
            ],
        }
    )
    return history


class TestPrefix:
    def test_inputs_are_deep_copied(self) -> None:
        """Mutating the dicts given to Prefix afterwards changes nothing that is sent."""
        tool = {"name": "lookup", "input_schema": {"type": "object", "properties": {}}}
        p = prefix(tools=[tool])
        before = Layout(p).render([{"role": "user", "content": "hi"}]).body
        tool["input_schema"]["properties"]["x"] = {"type": "string"}
        tool["name"] = "changed"
        after = Layout(p).render([{"role": "user", "content": "hi"}]).body
        assert json.dumps(before) == json.dumps(after)
        assert after["tools"][0]["name"] == "lookup"

    def test_tool_serialisation_ignores_key_order(self) -> None:
        """Tools built with keys in another order give the same bytes and fingerprint."""
        a = prefix(tools=[{"name": "t", "input_schema": {"type": "object", "required": []}}])
        b = prefix(tools=[{"input_schema": {"required": [], "type": "object"}, "name": "t"}])
        assert a == b
        assert a.fingerprint == b.fingerprint
        body_a = Layout(a).render([{"role": "user", "content": "x"}]).body
        body_b = Layout(b).render([{"role": "user", "content": "x"}]).body
        assert json.dumps(body_a) == json.dumps(body_b)

    def test_fingerprint_and_tokens(self) -> None:
        """The fingerprint changes with any tool or system byte; tokens follow convo.tokens."""
        p = prefix()
        assert p.tokens > 1200
        assert prefix(system=[BIG + "!"]).fingerprint != p.fingerprint
        assert prefix(tools=[{**TOOL, "description": "Other."}]).fingerprint != p.fingerprint
        assert prefix(ttl="1h").fingerprint != p.fingerprint

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"ttl": "10m"}, "Prefix.ttl"),
            ({"system": [BIG, ""]}, r"Prefix.system\[1\] is an empty text block"),
            ({"system": [BIG, {"type": "image"}]}, r"Prefix.system\[1\] must be"),
            ({"tools": [TOOL, TOOL]}, "appears twice"),
            ({"tools": [{"input_schema": {}}]}, "needs a non-empty string 'name'"),
            ({"model": "claude-nonexistent"}, "Prefix.model: unknown model"),
            (
                {"system": [{"type": "text", "text": BIG, "cache_control": {"type": "x"}}]},
                "cache_control must be",
            ),
            (
                {
                    "system": [
                        {
                            "type": "text",
                            "text": BIG,
                            "cache_control": {"type": "ephemeral", "ttl": "2h"},
                        }
                    ]
                },
                "unknown ttl",
            ),
        ],
        ids=[
            "ttl",
            "empty-block",
            "non-text-system",
            "duplicate-tool",
            "nameless-tool",
            "unknown-model",
            "bad-marker",
            "bad-marker-ttl",
        ],
    )
    def test_invalid_input_is_refused_with_the_field_named(
        self, kwargs: dict[str, Any], message: str
    ) -> None:
        """Invalid prefixes raise LayoutError naming the field before anything is sent."""
        with pytest.raises(LayoutError, match=message):
            prefix(**kwargs)

    def test_pickles_to_an_equal_prefix_that_renders_the_same(self) -> None:
        """A prefix crosses a process boundary (pickle) whole: equal, same fingerprint, same
        caller markers, same rendered bytes and body digest."""
        marked = {"type": "text", "text": BIG, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        p = prefix(system=[marked])
        q = pickle.loads(pickle.dumps(p))
        assert q == p
        assert q.fingerprint == p.fingerprint
        assert q.caller_marks == p.caller_marks == ((1, "1h"),)
        history = [{"role": "user", "content": "hi"}]
        a, b = Layout(p).render(history), Layout(q).render(history)
        assert json.dumps(a.body) == json.dumps(b.body)
        assert a.fingerprint.digest == b.fingerprint.digest

    def test_short_prefix_warns_with_minimum_and_estimate(self) -> None:
        """A prefix below the model's minimum warns, naming the minimum and the estimate."""
        with pytest.warns(PrefixTooShortWarning, match=r"about \d+ tokens.*1024 tokens"):
            Prefix(model=MODEL, system=["short"])


class TestSuffix:
    def test_system_suffix_is_an_uncached_block_after_the_prefix(self) -> None:
        """The default places the suffix in its own system block, with no breakpoint on it."""
        r = Layout(prefix(), suffix="User: Ada").render(chat(0))
        assert r.body["system"][-1] == {"type": "text", "text": "User: Ada"}
        assert "cache_control" in r.body["system"][0]
        suffix_position = r.fingerprint.suffix_end - 1
        assert suffix_position not in {bp.position for bp in r.breakpoints}

    def test_message_suffix_folds_into_newest_user_turn_only(self) -> None:
        """suffix_placement='message' appends the suffix to the newest user turn, unmarked."""
        history = chat(2)
        r = Layout(prefix(), suffix="User: Ada", suffix_placement="message").render(history)
        last = r.body["messages"][-1]["content"]
        assert last[-1] == {"type": "text", "text": "User: Ada"}
        assert "cache_control" in last[-2]
        assert all("User: Ada" not in json.dumps(m) for m in r.body["messages"][:-1])
        assert r.fingerprint.volatile == (len(r.fingerprint) - 1,)
        assert history[-1]["content"] == [{"type": "text", "text": "question 1"}]

    def test_changing_message_suffix_keeps_history_keys(self) -> None:
        """With the suffix in the message, a new suffix changes only the suffix block's key."""
        history = chat(3)
        a = Layout(prefix(), suffix="v1", suffix_placement="message").render(history)
        b = Layout(prefix(), suffix="v2", suffix_placement="message").render(history)
        assert a.fingerprint.common_prefix(b.fingerprint) == len(a.fingerprint) - 1

    def test_changing_system_suffix_rekeys_history(self) -> None:
        """With the suffix in system, a new suffix changes every key after the prefix."""
        history = chat(3)
        a = Layout(prefix(), suffix="v1").render(history)
        b = Layout(prefix(), suffix="v2").render(history)
        assert a.fingerprint.common_prefix(b.fingerprint) == a.fingerprint.system_end

    def test_callable_suffix_is_evaluated_per_render(self) -> None:
        """A callable suffix is called at every render."""
        values = iter(["one", "two"])
        layout = Layout(prefix(), suffix=lambda: next(values))
        assert layout.render(chat(0)).body["system"][-1]["text"] == "one"
        assert layout.render(chat(0)).body["system"][-1]["text"] == "two"

    def test_auto_with_message_suffix_is_refused(self) -> None:
        """history='auto' would mark the volatile suffix, so it is refused with the fix."""
        with pytest.raises(LayoutError, match="suffix_placement"):
            Layout(prefix(), history="auto", suffix_placement="message")


class TestStrategies:
    def test_none_caches_only_the_prefix(self) -> None:
        """history='none' puts one breakpoint, on the last static system block."""
        r = Layout(prefix(), history="none").render(chat(3))
        assert [(bp.source, bp.position) for bp in r.breakpoints] == [("prefix", 1)]

    def test_rolling_marks_newest_stable_block(self) -> None:
        """history='rolling' adds a breakpoint on the newest history block."""
        r = Layout(prefix(), history="rolling").render(chat(3))
        assert [bp.source for bp in r.breakpoints] == ["prefix", "newest"]
        assert r.breakpoints[-1].position == len(r.fingerprint) - 1
        assert r.body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}

    def test_rolling_adds_lookback_breakpoint_after_many_blocks(self) -> None:
        """When 20+ positions separate the newest block from the last write, one more is
        added, on the deepest block whose window still reaches that write."""
        r = Layout(prefix()).render(wide_turn(chat(2), 25))
        sources = {bp.source: bp.position for bp in r.breakpoints}
        anchor = r.fingerprint.message_starts[len(r.body["messages"]) - 2] - 1
        assert sources["lookback"] == anchor + 19
        assert sources["newest"] - anchor >= 20

    def test_parallel_fan_out_needs_no_lookback_breakpoint(self) -> None:
        """25 parallel tool calls are two lookback positions (a tool_use run, a tool_result
        run): the newest breakpoint still reaches the last write, so no slot is spent."""
        history = fan_out(chat(2), 25)
        r = Layout(prefix()).render(history)
        assert [bp.source for bp in r.breakpoints] == ["prefix", "newest"]
        fp = r.fingerprint
        anchor = fp.message_starts[len(history) - 2] - 1
        assert fp.lookback_floor(len(fp) - 1) <= anchor

    def test_lookback_guard_can_be_turned_off(self) -> None:
        """lookback_guard=False leaves a wide turn without the extra breakpoint."""
        r = Layout(prefix(), lookback_guard=False).render(wide_turn(chat(2), 25))
        assert "lookback" not in {bp.source for bp in r.breakpoints}

    def test_auto_sets_top_level_cache_control(self) -> None:
        """history='auto' marks the prefix and sets top-level automatic caching."""
        r = Layout(prefix(), history="auto").render(chat(1))
        assert r.body["cache_control"] == {"type": "ephemeral"}
        assert [bp.source for bp in r.breakpoints] == ["prefix", "auto"]

    def test_no_breakpoint_below_the_minimum(self) -> None:
        """Blocks whose prefix is below the model minimum get no breakpoint."""
        with pytest.warns(PrefixTooShortWarning):
            small = Prefix(model=MODEL, system=["short rules"])
        r = Layout(small).render(chat(1))
        assert r.breakpoints == ()
        assert "cache_control" not in json.dumps(r.body)

    def test_one_hour_prefix_with_five_minute_history(self) -> None:
        """A 1h prefix may precede 5m history breakpoints."""
        r = Layout(prefix(ttl="1h"), history_ttl="5m").render(chat(1))
        assert [bp.ttl for bp in r.breakpoints] == ["1h", "5m"]
        assert r.body["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}

    def test_one_hour_history_after_five_minute_prefix_is_refused(self) -> None:
        """A 1h history after a 5m prefix breaks the API's TTL order and is refused."""
        with pytest.raises(LayoutError, match="1h"):
            Layout(prefix(ttl="5m"), history_ttl="1h")

    def test_one_hour_history_can_end_before_a_five_minute_newest_turn(self) -> None:
        """newest_ttl='5m' under a 1h history: the 1h breakpoint goes on the previous
        answer (the last block before the newest user turn), a 5m one on that turn."""
        history = chat(2)
        r = Layout(prefix(ttl="1h"), history_ttl="1h", newest_ttl="5m").render(history)
        assert [(bp.source, bp.ttl) for bp in r.breakpoints] == [
            ("prefix", "1h"),
            ("earlier", "1h"),
            ("newest", "5m"),
        ]
        earlier = r.breakpoints[1].position
        assert earlier == r.fingerprint.message_starts[len(history) - 1] - 1
        answer = r.body["messages"][-2]
        assert answer["role"] == "assistant"
        assert answer["content"][-1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
        assert r.body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}

    def test_a_first_turn_has_no_earlier_block_and_keeps_the_history_ttl(self) -> None:
        """With nothing before the first user turn, its own breakpoint takes the 1h."""
        r = Layout(prefix(ttl="1h"), history_ttl="1h", newest_ttl="5m").render(chat(0))
        assert [(bp.source, bp.ttl) for bp in r.breakpoints] == [
            ("prefix", "1h"),
            ("newest", "1h"),
        ]

    def test_a_one_hour_newest_turn_after_a_five_minute_history_is_refused(self) -> None:
        """newest_ttl='1h' under a 5m history would put 1h after 5m."""
        with pytest.raises(LayoutError, match="newest_ttl"):
            Layout(prefix(ttl="1h"), history_ttl="5m", newest_ttl="1h")

    def test_caller_markers_beyond_four_are_refused(self) -> None:
        """More than four caller cache_control markers raise LayoutError before sending."""
        mark = {"type": "ephemeral"}
        history = History(
            {"role": "user", "content": [{"type": "text", "text": f"m{i}", "cache_control": mark}]}
            for i in range(5)
        )
        with pytest.raises(LayoutError, match="at most 4"):
            Layout(prefix()).render(history)

    def test_caller_one_hour_after_planned_five_minute_is_refused(self) -> None:
        """A caller's 1h marker after the layout's 5m prefix breakpoint is a TTL-order error."""
        history = History(
            [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "x",
                            "cache_control": {"type": "ephemeral", "ttl": "1h"},
                        }
                    ],
                }
            ]
        )
        with pytest.raises(LayoutError, match="before every 5m"):
            Layout(prefix()).render(history)

    def test_empty_blocks_are_refused(self) -> None:
        """An empty text block in history is refused with the message index."""
        with pytest.raises(LayoutError, match=r"messages\[1\].content\[0\] is an empty text"):
            History(
                [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": [{"type": "text", "text": " "}]},
                ]
            )


histories = st.lists(
    st.one_of(
        st.integers(min_value=1, max_value=30).map(lambda w: ("fan", w)),
        st.booleans().map(lambda marked: ("turn", marked)),
    ),
    max_size=8,
)


class TestProperties:
    @settings(max_examples=60, deadline=None)
    @given(
        histories,
        st.sampled_from(["none", "rolling", "auto"]),
        st.sampled_from(["system", "message"]),
        st.sampled_from(["5m", "1h"]),
        st.sampled_from([None, "User: Ada", "plan: pro"]),
        st.booleans(),
    )
    def test_at_most_four_breakpoints_and_incremental_equals_full(
        self,
        steps: list[tuple[str, Any]],
        strategy: Any,
        placement: Any,
        ttl: Any,
        suffix: str | None,
        newest_5m: bool,
    ) -> None:
        """Any history renders with at most 4 breakpoints, 1h ones first; incremental
        fingerprint == full."""
        if strategy == "auto" and placement == "message":
            placement = "system"
        layout = Layout(
            prefix(ttl=ttl),
            suffix=suffix,
            suffix_placement=placement,
            history=strategy,
            newest_ttl="5m" if newest_5m else None,
        )
        history = chat(0)
        marks = 0
        for kind, value in steps:
            if kind == "fan":
                fan_out(history, value)
            else:
                block: dict[str, Any] = {"type": "text", "text": "more"}
                if value and marks < 2:
                    block["cache_control"] = {"type": "ephemeral", "ttl": ttl}
                    marks += 1
                history.append({"role": "assistant", "content": "ok"})
                history.append({"role": "user", "content": [block]})
            r = layout.render(history)
            body_json = json.dumps(r.body)
            count = body_json.count('"cache_control"')
            assert count <= 4
            assert len(r.breakpoints) <= 4
            full = fingerprint_body(
                r.body,
                suffix_in_system=bool(suffix) and placement == "system",
                suffix_in_message=bool(suffix) and placement == "message",
            )
            assert full == r.fingerprint
            assert list(full.keys) == list(r.fingerprint.keys)
            assert list(full.tokens) == list(r.fingerprint.tokens)
            assert all(bp.position not in r.fingerprint.volatile for bp in r.breakpoints)
            ttls = [bp.ttl for bp in sorted(r.breakpoints, key=lambda bp: bp.position)]
            assert ttls == sorted(ttls, key=lambda t: t == "5m")  # every 1h before every 5m


SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    sys.path.insert(0, {root!r})
    from tests.test_layout import Layout, chat, fan_out, prefix
    layout = Layout(prefix(ttl="1h"), suffix="User: Ada", suffix_placement="message",
                    history_ttl="5m")
    body = layout.render(fan_out(chat(3), 22)).body
    print(hashlib.sha256(json.dumps(body).encode()).hexdigest())
    """
)


class TestDeterminism:
    def test_identical_inputs_give_identical_bytes_across_processes(self) -> None:
        """Rendering the same inputs in fresh processes (other hash seeds) gives the same bytes."""
        import pathlib

        root = str(pathlib.Path(__file__).resolve().parent.parent)
        body = (
            Layout(
                prefix(ttl="1h"), suffix="User: Ada", suffix_placement="message", history_ttl="5m"
            )
            .render(fan_out(chat(3), 22))
            .body
        )
        here = hashlib.sha256(json.dumps(body).encode()).hexdigest()
        for seed in ("1", "2"):
            out = subprocess.run(
                [sys.executable, "-c", SCRIPT.format(root=root)],
                capture_output=True,
                text=True,
                check=True,
                env={"PYTHONHASHSEED": seed, "PATH": ""},
            )
            assert out.stdout.strip() == here


class TestPrefixMisuse:
    """A Prefix refuses what the server would refuse, before anything is sent."""

    def test_custom_tool_needs_an_input_schema(self) -> None:
        """A custom tool without input_schema is a LayoutError naming the fix."""
        with pytest.raises(LayoutError, match="input_schema"):
            Prefix(model="claude-sonnet-4-6", system=["word " * 1100], tools=[{"name": "lookup"}])

    def test_model_must_be_a_string(self) -> None:
        """Prefix(model=4) is a TypeError, not an AttributeError from deep inside."""
        with pytest.raises(TypeError, match="model id string"):
            Prefix(model=4, system=["word " * 1100])  # type: ignore[arg-type]

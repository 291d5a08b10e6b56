"""Fingerprints: cumulative per-block keys, segment digests, and the whole-body digest."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from convo.fingerprint import BlockChain, chain, fingerprint_body

MODEL = "claude-sonnet-4-6"


def body(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 64,
        "system": [{"type": "text", "text": "You are terse."}],
        "tools": [{"name": "t", "input_schema": {"type": "object"}}],
        "messages": messages,
        **extra,
    }


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


class TestKeys:
    def test_one_key_per_block_in_prompt_order(self) -> None:
        """Tools, system blocks and message blocks each get one position, in that order."""
        fp = fingerprint_body(body([user("a"), {"role": "assistant", "content": "b"}, user("c")]))
        assert len(fp.keys) == 5
        assert (fp.tools_end, fp.system_end) == (1, 2)
        assert list(fp.message_starts) == [2, 3, 4]
        assert len(set(fp.keys)) == 5

    def test_cache_control_does_not_change_keys(self) -> None:
        """Marking a block keeps its key (as on the server) but changes the body digest."""
        plain = body([user("hello")])
        marked = copy.deepcopy(plain)
        marked["messages"][0]["content"][0]["cache_control"] = {"type": "ephemeral"}
        a, b = fingerprint_body(plain), fingerprint_body(marked)
        assert list(a.keys) == list(b.keys)
        assert a.digest != b.digest

    def test_string_content_keys_like_one_text_block(self) -> None:
        """String content is keyed like a text block, but its different bytes change the digest."""
        a = fingerprint_body(body([{"role": "user", "content": "hello"}]))
        b = fingerprint_body(body([user("hello")]))
        assert list(a.keys) == list(b.keys)
        assert a.digest != b.digest

    def test_role_is_part_of_the_key(self) -> None:
        """The same text as an assistant turn is a different block."""
        a = fingerprint_body(body([user("x"), user("y")]))
        b = fingerprint_body(
            body([user("x"), {"role": "assistant", "content": [user("y")["content"][0]]}])
        )
        assert a.keys[-1] != b.keys[-1]
        assert a.common_prefix(b) == 3

    def test_tool_choice_rekeys_messages_only(self) -> None:
        """tool_choice folds into message keys; tool and system keys are unchanged."""
        a = fingerprint_body(body([user("x")]))
        b = fingerprint_body(body([user("x")], tool_choice={"type": "auto"}))
        assert a.common_prefix(b) == 2
        assert a.segments.settings != b.segments.settings


class TestBlockChain:
    def test_appending_keeps_earlier_keys(self) -> None:
        """Appending a message extends the key chain; earlier keys and views are unchanged."""
        blocks = BlockChain()
        blocks.append("user", [{"type": "text", "text": "one"}])
        seed = b"\x00" * 16
        before = blocks.keys(seed)
        first = list(before)
        blocks.append("assistant", [{"type": "text", "text": "two"}])
        after = blocks.keys(seed)
        assert list(before) == first
        assert list(after)[:1] == first
        assert after[1] == chain(after[0], blocks._digests[1])

    def test_new_seed_rechains_from_digests(self) -> None:
        """A different seed (a changed prefix) gives different keys for every message block."""
        blocks = BlockChain()
        blocks.append("user", [{"type": "text", "text": "one"}, {"type": "text", "text": "x"}])
        a, b = list(blocks.keys(b"\x00" * 16)), list(blocks.keys(b"\x01" * 16))
        assert all(x != y for x, y in zip(a, b, strict=True))


texts = st.text(alphabet="abc ", min_size=1, max_size=6).filter(lambda s: s.strip())
messages = st.lists(texts, min_size=1, max_size=5).map(
    lambda items: [
        {"role": "user" if i % 2 == 0 else "assistant", "content": [{"type": "text", "text": t}]}
        for i, t in enumerate(items)
    ]
)
marks = st.lists(st.integers(min_value=0, max_value=6), max_size=2)


class TestDigestProperty:
    @settings(max_examples=150, deadline=None)
    @given(messages, marks, messages, marks, st.sampled_from([None, {"type": "auto"}]))
    def test_digest_changes_iff_bytes_change(
        self,
        first: list[dict[str, Any]],
        first_marks: list[int],
        second: list[dict[str, Any]],
        second_marks: list[int],
        tool_choice: dict[str, str] | None,
    ) -> None:
        """Two bodies have equal fingerprints exactly when their serialised bytes are equal."""

        def build(msgs: list[dict[str, Any]], where: list[int], choice: Any) -> dict[str, Any]:
            msgs = copy.deepcopy(msgs)
            flat = [b for m in msgs for b in m["content"]]
            for i in where:
                if i < len(flat):
                    flat[i]["cache_control"] = {"type": "ephemeral"}
            return body(msgs, **({"tool_choice": choice} if choice else {}))

        a = build(first, first_marks, None)
        b = build(second, second_marks, tool_choice)
        same_bytes = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
        assert (fingerprint_body(a).digest == fingerprint_body(b).digest) == same_bytes


def tool_round(n: int, *, parallel: bool) -> list[dict[str, Any]]:
    uses = [{"type": "tool_use", "id": f"t{i}", "name": "t", "input": {}} for i in range(n)]
    results = [{"type": "tool_result", "tool_use_id": f"t{i}", "content": "ok"} for i in range(n)]
    if parallel:
        return [{"role": "assistant", "content": uses}, {"role": "user", "content": results}]
    out: list[dict[str, Any]] = []
    for use, result in zip(uses, results, strict=True):
        out += [{"role": "assistant", "content": [use]}, {"role": "user", "content": [result]}]
    return out


THOUGHT = {"type": "thinking", "thinking": "let me think about it", "signature": "sig"}


class TestServerRules:
    """Key order, tool runs, settings levels and thinking stripping, as the server keys them."""

    def test_key_order_is_part_of_the_key(self) -> None:
        """A tool_use input or a tool schema with its keys reordered is another prefix."""
        use = {"type": "tool_use", "id": "t1", "name": "t", "input": {"a": 1, "b": 2}}
        swapped = {**use, "input": {"b": 2, "a": 1}}
        a = fingerprint_body(body([user("x"), {"role": "assistant", "content": [use]}]))
        b = fingerprint_body(body([user("x"), {"role": "assistant", "content": [swapped]}]))
        assert a.common_prefix(b) == 3
        tool = {"name": "t", "input_schema": {"type": "object"}}
        reordered = {"input_schema": {"type": "object"}, "name": "t"}
        c = fingerprint_body({**body([user("x")]), "tools": [tool]})
        d = fingerprint_body({**body([user("x")]), "tools": [reordered]})
        assert c.common_prefix(d) == 0

    def test_a_tool_run_is_one_lookback_position(self) -> None:
        """12 parallel calls are 2 positions; 12 sequential ones are 24."""
        parallel = fingerprint_body(body([user("x"), *tool_round(12, parallel=True)]))
        sequential = fingerprint_body(body([user("x"), *tool_round(12, parallel=False)]))
        assert parallel.groups is not None
        assert sequential.groups is not None
        assert parallel.groups[-1] - parallel.groups[2] == 2
        assert sequential.groups[-1] - sequential.groups[2] == 24
        assert parallel.lookback_floor(len(parallel) - 1) == 0
        assert sequential.lookback_floor(len(sequential) - 1) == len(sequential) - 20

    def test_effort_rekeys_messages_default_effort_does_not(self) -> None:
        """output_config.effort folds into message keys; "high" is the same as none."""
        a = fingerprint_body(body([user("x")]))
        high = fingerprint_body(body([user("x")], output_config={"effort": "high"}))
        low = fingerprint_body(body([user("x")], output_config={"effort": "low"}))
        assert list(a.keys) == list(high.keys)
        assert a.common_prefix(low) == 2

    def test_speed_rekeys_system_and_messages(self) -> None:
        """Fast mode keeps the tool keys and re-keys system and messages."""
        a = fingerprint_body(body([user("x")]))
        fast = fingerprint_body(body([user("x")], speed="fast"))
        assert a.common_prefix(fast) == 1
        assert a.segments.system_settings != fast.segments.system_settings

    def test_earlier_thinking_is_stripped_on_models_that_strip_it(self) -> None:
        """After a plain user turn, Sonnet 4 drops the thinking (same key, no tokens);
        Sonnet 4.6 keeps it."""
        messages = [user("x"), {"role": "assistant", "content": [THOUGHT, user("y")["content"][0]]}]
        for model, strips in (("claude-sonnet-4", True), ("claude-sonnet-4-6", False)):
            during = fingerprint_body({**body(messages), "model": model})
            after = fingerprint_body({**body([*messages, user("z")]), "model": model})
            thinking = 3
            if strips:
                assert after.keys[thinking] == after.keys[thinking - 1]
                assert after.tokens[thinking] == after.tokens[thinking - 1]
                assert during.keys[thinking] != during.keys[thinking - 1]
            else:
                assert after.common_prefix(during) == len(during)

    def test_incremental_stripping_equals_full(self) -> None:
        """A History that grows through a tool loop and a plain turn keys like the full path."""
        from convo.layout import History, Layout, Prefix

        prefix = Prefix(model="claude-sonnet-4", system=["word " * 1100])
        history = History([user("x")])
        layout = Layout(prefix)
        use = {"type": "tool_use", "id": "t1", "name": "t", "input": {}}
        result = {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}
        steps = [
            {"role": "assistant", "content": [THOUGHT, use]},
            {"role": "user", "content": [result]},
            {"role": "assistant", "content": [THOUGHT, user("done")["content"][0]]},
            user("next"),
        ]
        for message in steps:
            history.append(message)
            if message["role"] != "user":
                continue
            rendered = layout.render(history)
            full = fingerprint_body(rendered.body)
            assert list(rendered.fingerprint.keys) == list(full.keys)
            assert list(rendered.fingerprint.tokens) == list(full.tokens)
            assert list(rendered.fingerprint.groups or ()) == list(full.groups or ())


class TestLookbackFloor:
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(0, 30), min_size=1, max_size=200), st.data())
    def test_galloping_equals_bisect(self, runs: list[int], data: st.DataObject) -> None:
        """The floor found by galloping equals a plain bisect over the whole sequence."""
        import bisect

        from convo.fingerprint import lookback_floor

        groups = [g for g, width in enumerate(runs) for _ in range(width + 1)]
        position = data.draw(st.integers(0, len(groups) - 1))
        lookback = data.draw(st.integers(1, 25))
        expected = bisect.bisect_right(groups, groups[position] - lookback)
        assert lookback_floor(groups, position, lookback) == expected

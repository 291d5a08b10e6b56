"""The emulator's pure parts: config parsing, token buckets, prompt layout, the token estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from convo import models, tokens
from convo.emulator import EmulatorConfig, VirtualClock, load_config
from convo.emulator.cache import CacheStore
from convo.emulator.errors import APIError
from convo.emulator.limits import Bucket, rfc3339
from convo.emulator.prompt import parse_prompt

MODEL = "claude-sonnet-4-6"


class TestConfig:
    """Configs round-trip and reject what they do not know."""

    def test_round_trip(self) -> None:
        """from_dict(to_dict(c)) == c for a config with every part set."""
        config = EmulatorConfig.from_dict(
            {
                "limits": {"default": {"rpm": 50, "itpm": 30000, "otpm": 8000}},
                "faults": {
                    "script": ["overloaded", None, {"kind": "rate_limit", "retry_after_ms": 1200}],
                    "rates": {"api_error": 0.1},
                },
                "latency": {"base_s": 0.1},
                "time_scale": 1.0,
                "seed": 3,
                "refresh": "entry",
                "message_deltas": 3,
                "system_message_models": ["claude-opus-4-8", "claude-opus-5"],
            }
        )
        assert EmulatorConfig.from_dict(config.to_dict()) == config

    @pytest.mark.parametrize(
        ("data", "fragment"),
        [
            ({"limit": {}}, "limit"),
            ({"faults": {"script": ["explode"]}}, "explode"),
            ({"faults": {"rates": {"overloaded": 1.5}}}, "within"),
            ({"faults": {"rates": {"overloaded": 0.6, "api_error": 0.6}}}, "sum"),
            ({"limits": {"default": {"rpm": 0}}}, "rpm"),
            ({"time_scale": -1}, "time_scale"),
            ({"refresh": "deep"}, "refresh"),
            ({"message_deltas": 0}, "message_deltas"),
        ],
        ids=[
            "unknown-key",
            "unknown-fault",
            "rate-range",
            "rate-sum",
            "zero-limit",
            "negative-scale",
            "unknown-refresh",
            "no-message-delta",
        ],
    )
    def test_bad_config_names_the_problem(self, data: dict[str, object], fragment: str) -> None:
        """A bad config raises ValueError naming the key or value."""
        with pytest.raises(ValueError, match=fragment):
            EmulatorConfig.from_dict(data)

    def test_toml_lets_a_request_through_with_none(self, tmp_path: Path) -> None:
        """TOML has no null: "none" in a fault script is a request let through."""
        (tmp_path / "c.toml").write_text('[faults]\nscript = ["overloaded", "none", "api_error"]\n')
        script = load_config(tmp_path / "c.toml").faults.script
        assert [f.kind if f else None for f in script] == ["overloaded", None, "api_error"]

    def test_a_fault_without_kind_says_so(self) -> None:
        """{} in a script is an error that asks for a kind."""
        with pytest.raises(ValueError, match="needs a 'kind'"):
            EmulatorConfig.from_dict({"faults": {"script": [{}]}})

    def test_load_json_and_toml(self, tmp_path: Path) -> None:
        """The same config loads from JSON and from TOML."""
        data = {"seed": 5, "limits": {"default": {"rpm": 10}}}
        (tmp_path / "c.json").write_text(json.dumps(data))
        (tmp_path / "c.toml").write_text("seed = 5\n[limits.default]\nrpm = 10\n")
        assert load_config(tmp_path / "c.json") == load_config(tmp_path / "c.toml")
        (tmp_path / "c.yaml").write_text("seed: 5")
        with pytest.raises(ValueError, match=r"\.json or \.toml"):
            load_config(tmp_path / "c.yaml")


class TestBucket:
    """Continuously refilled token buckets."""

    def test_refills_at_limit_per_sixty_seconds(self) -> None:
        """An emptied 600/min bucket has 10 after one second and never exceeds 600."""
        bucket = Bucket(600, now=0.0)
        bucket.take(600, now=0.0)
        assert bucket.level(1.0) == pytest.approx(10.0)
        assert bucket.level(1000.0) == 600
        assert bucket.seconds_until(600, now=1000.0) == 0

    @given(st.lists(st.tuples(st.floats(0, 5), st.integers(0, 200)), max_size=50))
    def test_admitted_never_exceeds_capacity_plus_refill(
        self, steps: list[tuple[float, int]]
    ) -> None:
        """Taking only what the level allows, the total stays within capacity + rate × time."""
        bucket = Bucket(120, now=0.0)
        now, taken = 0.0, 0
        for gap, amount in steps:
            now += gap
            if bucket.level(now) >= amount:
                bucket.take(amount, now)
                taken += amount
        assert taken <= 120 + now * 2 + 1e-6

    def test_rfc3339_rounds_up_to_the_second(self) -> None:
        """Reset times are whole seconds in UTC with a Z."""
        assert rfc3339(0.2) == "1970-01-01T00:00:01Z"


class TestPromptLayout:
    """Request bodies become positions with cumulative keys and token counts."""

    def test_positions_and_tokens_are_additive(self) -> None:
        """Tools, then system, then message blocks; cumulative tokens sum the blocks."""
        tool = {"name": "t", "input_schema": {"type": "object"}}
        body = {
            "model": MODEL,
            "tools": [tool],
            "system": "You are terse.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        }
        prompt = parse_prompt(body)
        assert prompt.levels == ("tools", "system", "messages")
        expected = [tokens.block_tokens(tool), tokens.estimate("You are terse."), 2]
        assert list(prompt.cumulative_tokens) == [sum(expected[: i + 1]) for i in range(3)]
        assert prompt.total_tokens == tokens.request_tokens(
            tools=[tool], system="You are terse.", messages=body["messages"]
        )

    def test_cache_control_does_not_change_keys(self) -> None:
        """Marking a block leaves every key as it was."""
        plain = {
            "model": MODEL,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}],
        }
        marked = {
            "model": MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}
                    ],
                }
            ],
        }
        assert parse_prompt(plain).keys == parse_prompt(marked).keys

    def test_role_is_part_of_the_key(self) -> None:
        """The same text as user and as assistant is not the same position."""

        def body(role: str) -> dict[str, object]:
            return {"model": MODEL, "messages": [{"role": role, "content": "same"}]}

        assert parse_prompt(body("user")).keys != parse_prompt(body("assistant")).keys

    def test_dated_snapshot_ids_resolve(self) -> None:
        """claude-sonnet-4-5-20250929 uses claude-sonnet-4-5's rules."""
        body = {
            "model": "claude-sonnet-4-5-20250929",
            "messages": [{"role": "user", "content": "x"}],
        }
        assert parse_prompt(body).model.min_cacheable_tokens == 1024

    def test_unknown_model_is_a_404(self) -> None:
        """An unknown model raises the API's not_found_error."""
        with pytest.raises(APIError) as caught:
            parse_prompt({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
        assert caught.value.status == 404


class TestCacheStore:
    """The store on a virtual clock, without HTTP."""

    def test_pending_entry_is_invisible_until_its_response_begins(self) -> None:
        """A second request before begin_response writes again; after it, it reads."""
        clock = VirtualClock()
        store = CacheStore()
        body = {
            "model": MODEL,
            "system": [
                {"type": "text", "text": "word " * 1100, "cache_control": {"type": "ephemeral"}}
            ],
            "messages": [{"role": "user", "content": "hi"}],
        }
        prompt = parse_prompt(body)
        first = store.decide("ws", prompt, clock.now())
        second = store.decide("ws", prompt, clock.now())
        assert (first.cache_write, second.cache_write) == (1100, 1100)
        store.begin_response("ws", prompt, first)
        third = store.decide("ws", prompt, clock.now())
        assert (third.cache_read, third.cache_write) == (1100, 0)

    def test_abandoning_one_of_two_writers_keeps_the_entry(self) -> None:
        """If one of two parallel writers fails, the other's response still makes it readable."""
        store = CacheStore()
        body = {
            "model": MODEL,
            "system": [
                {"type": "text", "text": "word " * 1100, "cache_control": {"type": "ephemeral"}}
            ],
            "messages": [{"role": "user", "content": "hi"}],
        }
        prompt = parse_prompt(body)
        first = store.decide("ws", prompt, 0.0)
        second = store.decide("ws", prompt, 0.0)
        store.abandon("ws", prompt, second)
        store.begin_response("ws", prompt, first)
        assert store.decide("ws", prompt, 1.0).cache_read == 1100
        lone = store.decide("other", prompt, 0.0)
        store.abandon("other", prompt, lone)
        assert store.decide("other", prompt, 1.0).cache_read == 0


class TestTokenEstimate:
    """The shared token estimate is deterministic and additive."""

    @given(st.lists(st.text(max_size=40), max_size=8))
    def test_additive_over_blocks(self, texts: list[str]) -> None:
        """A request's total equals the sum of its non-empty blocks."""
        blocks = [{"type": "text", "text": t} for t in texts if t]
        if not blocks:
            return
        messages = [{"role": "user", "content": blocks}]
        assert tokens.request_tokens(messages=messages) == sum(tokens.estimate(t) for t in texts)

    @pytest.mark.parametrize(
        ("text", "count"),
        [("", 0), ("plan", 1), ("planning", 2), ("12345", 2), ("Hi, you!", 4), ("日本", 2)],
        ids=["empty", "short-word", "long-word", "digits", "punctuation", "cjk"],
    )
    def test_documented_rule(self, text: str, count: int) -> None:
        """Letters per 5, digits per 3, each symbol and CJK character one, spaces free."""
        assert tokens.estimate(text) == count

    @given(
        st.text(
            alphabet=st.one_of(
                st.characters(),
                st.sampled_from(" \t\n\x0b\x0c\r\x1c\x1f\x85\xa0\u2028\u3000\u200b_"),
            ),
            max_size=60,
        )
    )
    def test_counted_by_chunk_as_by_the_whole_text(self, text: str) -> None:
        """Counting whitespace-separated chunks (remembered ones among them) gives what the
        pattern gives over the whole text, for any text, Unicode whitespace included; so
        does a second count, served from the memo."""
        whole = len(tokens._PIECE.findall(text))
        assert tokens.estimate(text) == whole
        assert tokens.estimate(text) == whole


class TestModelTable:
    """The model table as data."""

    def test_override_and_unknown_field(self) -> None:
        """Overrides replace fields; an unknown field is a ValueError naming it."""
        table = models.with_overrides({MODEL: {"min_cacheable_tokens": 2048}})
        assert models.lookup(MODEL, table).min_cacheable_tokens == 2048
        assert models.lookup(MODEL).min_cacheable_tokens == 1024
        with pytest.raises(ValueError, match="minimum"):
            models.with_overrides({MODEL: {"minimum": 1}})

    def test_unknown_model_names_the_known_ones(self) -> None:
        """UnknownModel's message lists what is known and how to add a model."""
        with pytest.raises(models.UnknownModel, match="with_overrides"):
            models.lookup("claude-unknown")

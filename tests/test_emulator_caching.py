"""The emulator's prompt cache, driven through the real SDK and checked with numbers."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import pytest

from convo import tokens
from convo.emulator import DIAGNOSTICS_BETA, RunningEmulator

MODEL = "claude-sonnet-4-6"  # minimum cacheable prefix: 1,024 tokens (documented)
EPHEMERAL: dict[str, Any] = {"type": "ephemeral"}
ONE_HOUR: dict[str, Any] = {"type": "ephemeral", "ttl": "1h"}


def words(n: int, seed: str = "w") -> str:
    """Text of exactly *n* tokens by convo.tokens (each word is at most five letters)."""
    assert seed.isalpha()
    assert len(seed) <= 4
    text = " ".join(f"{seed}{'abcd'[i % 4]}" for i in range(n))
    assert tokens.estimate(text) == n
    return text


def letters(n: int) -> str:
    """A short alphabetic tag for *n*, for seeding distinct texts."""
    return "q" + "abcdefghijklmnopqrstuvwxyz"[n // 26] + "abcdefghijklmnopqrstuvwxyz"[n % 26]


def block(text: str, cache: dict[str, Any] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"type": "text", "text": text}
    if cache is not None:
        result["cache_control"] = cache
    return result


def numbered_blocks(count: int, *, breakpoint_at: int, size: int = 120) -> list[dict[str, Any]]:
    """Blocks 1..count of *size* tokens each, with a 5m breakpoint on block *breakpoint_at*."""
    return [
        block(words(size, seed=letters(n)), EPHEMERAL if n == breakpoint_at else None)
        for n in range(1, count + 1)
    ]


def usage_of(message: anthropic.types.Message) -> tuple[int, int, int, int]:
    """(input, cache_read, cache_write_5m, cache_write_1h) of a response."""
    u = message.usage
    split = u.cache_creation
    assert split is not None
    assert (u.cache_creation_input_tokens or 0) == (
        split.ephemeral_5m_input_tokens + split.ephemeral_1h_input_tokens
    )
    return (
        u.input_tokens,
        u.cache_read_input_tokens or 0,
        split.ephemeral_5m_input_tokens,
        split.ephemeral_1h_input_tokens,
    )


def ask(client: anthropic.Anthropic, **kwargs: Any) -> anthropic.types.Message:
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("max_tokens", 16)
    return client.messages.create(**kwargs)


class TestLookback:
    """The docs' worked example: turns of 10, 15 and 35 blocks."""

    def test_docs_example_hits_then_misses_beyond_twenty_positions(
        self, client: anthropic.Anthropic
    ) -> None:
        """Turn 2 reads the entry at block 10; turn 3 checks 35..16 and misses block 15's."""
        size = 120
        turn1 = ask(
            client, messages=[{"role": "user", "content": numbered_blocks(10, breakpoint_at=10)}]
        )
        assert usage_of(turn1) == (0, 0, 10 * size, 0)

        turn2 = ask(
            client, messages=[{"role": "user", "content": numbered_blocks(15, breakpoint_at=15)}]
        )
        assert usage_of(turn2) == (0, 10 * size, 5 * size, 0)

        turn3 = ask(
            client, messages=[{"role": "user", "content": numbered_blocks(35, breakpoint_at=35)}]
        )
        assert usage_of(turn3) == (0, 0, 35 * size, 0)

    def test_twentieth_position_back_is_still_found(self, client: anthropic.Anthropic) -> None:
        """The breakpoint counts as the first of 20: an entry 19 positions earlier is read."""
        ask(client, messages=[{"role": "user", "content": numbered_blocks(10, breakpoint_at=10)}])
        reach = ask(
            client, messages=[{"role": "user", "content": numbered_blocks(29, breakpoint_at=29)}]
        )
        assert usage_of(reach)[1] == 10 * 120
        client_side_miss = ask(
            client,
            messages=[{"role": "user", "content": numbered_blocks(10, breakpoint_at=10)}],
            system="A different prefix so nothing above is shared.",
        )
        assert usage_of(client_side_miss)[1] == 0

    def test_highest_hit_over_several_breakpoints_wins(self, client: anthropic.Anthropic) -> None:
        """With two breakpoints, the later window's hit is used, not the earlier one's."""
        blocks = numbered_blocks(12, breakpoint_at=4)
        blocks[11] = block(blocks[11]["text"], EPHEMERAL)
        first = ask(client, messages=[{"role": "user", "content": blocks}])
        assert usage_of(first) == (0, 0, 12 * 120, 0)
        again = ask(client, messages=[{"role": "user", "content": blocks}])
        assert usage_of(again) == (0, 12 * 120, 0, 0)


class TestMinimum:
    """A prefix under the model's minimum caches nothing and raises nothing."""

    @pytest.mark.parametrize(
        ("prefix_tokens", "cached"),
        [(1023, False), (1024, True), (1025, True)],
        ids=["one-under", "exactly", "one-over"],
    )
    def test_minimum_boundary(
        self, client: anthropic.Anthropic, prefix_tokens: int, cached: bool
    ) -> None:
        """Sonnet 4.6's minimum is 1,024: 1,023 writes nothing; 1,024 and 1,025 write."""
        system = [block(words(prefix_tokens), EPHEMERAL)]
        first = ask(client, system=system, messages=[{"role": "user", "content": "hi"}])
        second = ask(client, system=system, messages=[{"role": "user", "content": "hi"}])
        if cached:
            assert usage_of(first) == (1, 0, prefix_tokens, 0)
            assert usage_of(second) == (1, prefix_tokens, 0, 0)
        else:
            assert usage_of(first) == (prefix_tokens + 1, 0, 0, 0)
            assert usage_of(second) == (prefix_tokens + 1, 0, 0, 0)

    def test_minimum_is_per_model(self, client: anthropic.Anthropic) -> None:
        """3,000 tokens cache on Sonnet 4.6 (1,024) but not on Haiku 4.5 (4,096)."""
        system = [block(words(3000), EPHEMERAL)]
        sonnet = ask(client, system=system, messages=[{"role": "user", "content": "hi"}])
        haiku = ask(
            client,
            model="claude-haiku-4-5",
            system=system,
            messages=[{"role": "user", "content": "hi"}],
        )
        assert usage_of(sonnet)[2] == 3000
        assert usage_of(haiku) == (3001, 0, 0, 0)

    def test_model_override_changes_minimum(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """The disputed Sonnet 4.6 minimum can be set to 2,048 by config."""
        emulator.configure({"models": {"claude-sonnet-4-6": {"min_cacheable_tokens": 2048}}})
        system = [block(words(1500), EPHEMERAL)]
        message = ask(
            client,
            model="claude-sonnet-4-6",
            system=system,
            messages=[{"role": "user", "content": "hi"}],
        )
        assert usage_of(message) == (1501, 0, 0, 0)


class TestPrefixChanges:
    """Any byte change is a new prefix; the read position moves to the last shared entry."""

    def test_one_byte_in_a_system_block_moves_the_read_position(
        self, client: anthropic.Anthropic
    ) -> None:
        """Changing the second system block keeps the entry at the first one only."""
        one, two = words(1100, "s"), words(300, "t")
        messages = [{"role": "user", "content": "hi"}]
        ask(client, system=[block(one, EPHEMERAL), block(two, EPHEMERAL)], messages=messages)
        changed = two[:-1] + "x"
        assert tokens.estimate(changed) == 300
        moved = ask(
            client, system=[block(one, EPHEMERAL), block(changed, EPHEMERAL)], messages=messages
        )
        assert usage_of(moved) == (1, 1100, 300, 0)
        first_changed = "X" + one[1:]
        cold = ask(
            client,
            system=[block(first_changed, EPHEMERAL), block(changed, EPHEMERAL)],
            messages=messages,
        )
        assert usage_of(cold) == (1, 0, 1400, 0)

    def test_cache_control_marker_does_not_change_the_key(
        self, client: anthropic.Anthropic
    ) -> None:
        """An entry written at a breakpoint is read by a request that marks a later block."""
        system = words(1200)
        ask(client, system=[block(system, EPHEMERAL)], messages=[{"role": "user", "content": "hi"}])
        later = ask(
            client,
            system=[block(system)],
            messages=[{"role": "user", "content": [block("hello there", EPHEMERAL)]}],
        )
        assert usage_of(later) == (0, 1200, 2, 0)

    def test_tools_change_invalidates_everything_after(self, client: anthropic.Anthropic) -> None:
        """Reordering tools is a new prefix from the first tool on."""
        tools = [
            {
                "name": f"tool_{i}",
                "description": words(300, "d" + letters(i)),
                "input_schema": {"type": "object"},
            }
            for i in range(4)
        ]
        tools[-1]["cache_control"] = EPHEMERAL
        total = sum(tokens.block_tokens(t) for t in tools)
        first = ask(client, tools=tools, messages=[{"role": "user", "content": "hi"}])
        assert usage_of(first) == (1, 0, total, 0)
        reordered = [tools[1], tools[0], tools[2], tools[3]]
        second = ask(client, tools=reordered, messages=[{"role": "user", "content": "hi"}])
        assert usage_of(second) == (1, 0, total, 0)

    def test_tool_choice_invalidates_messages_but_not_system(
        self, client: anthropic.Anthropic
    ) -> None:
        """tool_choice folds into message keys only: the system entry still reads."""
        tool = {"name": "lookup", "input_schema": {"type": "object"}}
        system = [block(words(1100), EPHEMERAL)]
        history = [{"role": "user", "content": [block(words(200, "u"), EPHEMERAL)]}]
        tool_tokens = tokens.block_tokens(tool)
        ask(client, tools=[tool], system=system, messages=history)
        again = ask(
            client, tools=[tool], system=system, messages=history, tool_choice={"type": "auto"}
        )
        assert usage_of(again) == (0, tool_tokens + 1100, 200, 0)

    def test_web_search_toggle_keeps_tools_but_invalidates_system(
        self, client: anthropic.Anthropic
    ) -> None:
        """A server tool sits after the custom tools: toggling it keeps their entry."""
        custom = {
            "name": "lookup",
            "description": words(1100, "d"),
            "input_schema": {"type": "object"},
            "cache_control": EPHEMERAL,
        }
        search = {"type": "web_search_20250305", "name": "web_search"}
        system = [block(words(300, "s"), EPHEMERAL)]
        messages = [{"role": "user", "content": "hi"}]
        custom_tokens = tokens.block_tokens(custom)
        ask(client, tools=[custom], system=system, messages=messages)
        toggled = ask(client, tools=[custom, search], system=system, messages=messages)
        read, written = usage_of(toggled)[1], usage_of(toggled)[2]
        assert read == custom_tokens
        assert written == tokens.block_tokens(search) + 300

    def test_entries_are_scoped_by_api_key_and_model(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """Another workspace, or another model, does not read this one's entries."""
        system = [block(words(1200), EPHEMERAL)]
        messages = [{"role": "user", "content": "hi"}]
        ask(client, system=system, messages=messages)
        with anthropic.Anthropic(
            base_url=emulator.base_url, api_key="sk-other", max_retries=0
        ) as other:
            assert usage_of(ask(other, system=system, messages=messages))[1] == 0
        assert (
            usage_of(ask(client, model="claude-opus-4-8", system=system, messages=messages))[1] == 0
        )
        assert usage_of(ask(client, system=system, messages=messages))[1] == 1200


class TestBreakpointRules:
    """At most four breakpoints; 1h before 5m; automatic caching's slot."""

    def test_one_hour_and_five_minute_split(self, client: anthropic.Anthropic) -> None:
        """A 1h system breakpoint then a 5m message one: usage splits B - A and C - B."""
        system = [block(words(1100), ONE_HOUR)]
        messages = [{"role": "user", "content": [block(words(400, "m"), EPHEMERAL)]}]
        first = ask(client, system=system, messages=messages)
        assert usage_of(first) == (0, 0, 400, 1100)
        assert first.usage.cache_creation_input_tokens == 1500
        longer = [
            *messages,
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [block(words(50, "n"), EPHEMERAL)]},
        ]
        second = ask(client, system=system, messages=longer)
        assert usage_of(second) == (0, 1500, 51, 0)

    def test_fifth_breakpoint_is_rejected_with_the_api_message(
        self, client: anthropic.Anthropic
    ) -> None:
        """Five cache_control blocks: 400 invalid_request_error, with the API's own words."""
        system = [block(f"part {i}", EPHEMERAL) for i in range(5)]
        with pytest.raises(anthropic.BadRequestError) as caught:
            ask(client, system=system, messages=[{"role": "user", "content": "hi"}])
        assert caught.value.status_code == 400
        body = caught.value.body
        assert isinstance(body, dict)
        assert body["error"] == {
            "type": "invalid_request_error",
            "message": "A maximum of 4 blocks with cache_control may be provided. Found 5.",
        }

    def test_one_hour_after_five_minutes_is_rejected(self, client: anthropic.Anthropic) -> None:
        """A 1h breakpoint after a 5m one is a 400."""
        system = [block("first", EPHEMERAL), block("second", ONE_HOUR)]
        with pytest.raises(anthropic.BadRequestError, match="1h"):
            ask(client, system=system, messages=[{"role": "user", "content": "hi"}])

    def test_unknown_ttl_is_rejected(self, client: anthropic.Anthropic) -> None:
        """Only 5m and 1h exist."""
        system = [block("first", {"type": "ephemeral", "ttl": "10m"})]
        with pytest.raises(anthropic.BadRequestError, match="ttl"):
            ask(client, system=system, messages=[{"role": "user", "content": "hi"}])

    def test_automatic_caching_moves_with_the_conversation(
        self, client: anthropic.Anthropic
    ) -> None:
        """Top-level cache_control writes at the last block, and the next turn reads it."""
        history: list[dict[str, Any]] = [{"role": "user", "content": words(1200)}]
        first = client.messages.create(
            model=MODEL, max_tokens=8, messages=history, cache_control=EPHEMERAL
        )
        assert usage_of(first) == (0, 0, 1200, 0)
        history += [
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": "more"},
        ]
        second = client.messages.create(
            model=MODEL, max_tokens=8, messages=history, cache_control=EPHEMERAL
        )
        assert usage_of(second)[1] == 1200
        assert usage_of(second)[2] == 8 + 1

    def test_automatic_caching_needs_a_free_slot(self, client: anthropic.Anthropic) -> None:
        """Four explicit breakpoints plus automatic caching is a 400."""
        system = [block(f"part {i}", EPHEMERAL) for i in range(4)]
        with pytest.raises(anthropic.BadRequestError, match="Automatic caching"):
            client.messages.create(
                model=MODEL,
                max_tokens=8,
                system=system,
                messages=[{"role": "user", "content": "hi"}],
                cache_control=EPHEMERAL,
            )

    def test_automatic_caching_conflicting_ttl_on_last_block(
        self, client: anthropic.Anthropic
    ) -> None:
        """The last block marked 5m and automatic caching at 1h is a 400; the same TTL is fine."""
        messages = [{"role": "user", "content": [block(words(1200), EPHEMERAL)]}]
        with pytest.raises(anthropic.BadRequestError, match="conflicts"):
            client.messages.create(
                model=MODEL, max_tokens=8, messages=messages, cache_control=ONE_HOUR
            )
        same = client.messages.create(
            model=MODEL, max_tokens=8, messages=messages, cache_control=EPHEMERAL
        )
        assert usage_of(same) == (0, 0, 1200, 0)


class TestTTL:
    """Entries live for their TTL from the start of the request that wrote or last read them."""

    def test_five_minute_entry_refreshes_on_each_hit_and_expires_when_idle(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """Hits at 4 and 8 minutes keep it; after 6 idle minutes it is gone."""
        system = [block(words(1200), EPHEMERAL)]
        messages = [{"role": "user", "content": "hi"}]
        assert usage_of(ask(client, system=system, messages=messages))[2] == 1200
        emulator.advance(240)
        assert usage_of(ask(client, system=system, messages=messages))[1] == 1200
        emulator.advance(240)  # 8 minutes after the write, 4 after the refresh
        assert usage_of(ask(client, system=system, messages=messages))[1] == 1200
        emulator.advance(360)
        expired = ask(client, system=system, messages=messages)
        assert usage_of(expired) == (1, 0, 1200, 0)

    def test_one_hour_entry_outlives_five_minutes(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """A 1h entry is read after 59 minutes and gone after 61 idle minutes."""
        system = [block(words(1200), ONE_HOUR)]
        messages = [{"role": "user", "content": "hi"}]
        assert usage_of(ask(client, system=system, messages=messages))[3] == 1200
        emulator.advance(59 * 60)
        assert usage_of(ask(client, system=system, messages=messages))[1] == 1200
        emulator.advance(61 * 60)
        assert usage_of(ask(client, system=system, messages=messages))[3] == 1200

    def test_clock_advance_over_http(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """POST /_emulator/clock/advance expires entries like the in-process call does."""
        system = [block(words(1200), EPHEMERAL)]
        messages = [{"role": "user", "content": "hi"}]
        ask(client, system=system, messages=messages)
        before = emulator.stats()["clock"]
        client.post("/_emulator/clock/advance", body={"seconds": 301}, cast_to=object)
        assert emulator.stats()["clock"] >= before + 301
        assert usage_of(ask(client, system=system, messages=messages))[1] == 0


class TestConcurrency:
    """An entry is readable only once the response writing it has begun."""

    async def test_parallel_cold_requests_each_pay_a_write(
        self, emulator: RunningEmulator, async_client: anthropic.AsyncAnthropic
    ) -> None:
        """Five requests sent together on a cold prefix each write; the next one reads."""
        emulator.configure(
            {
                "time_scale": 1.0,
                "latency": {
                    "base_s": 0.3,
                    "prefill_uncached_s": 0.0,
                    "prefill_cached_s": 0.0,
                    "decode_s": 0.0,
                },
            }
        )
        system = [block(words(1200), EPHEMERAL)]
        messages = [{"role": "user", "content": "hi"}]
        results = await asyncio.gather(
            *(
                async_client.messages.create(
                    model=MODEL, max_tokens=8, system=system, messages=messages
                )
                for _ in range(5)
            )
        )
        assert [usage_of(m)[2] for m in results] == [1200] * 5
        after = await async_client.messages.create(
            model=MODEL, max_tokens=8, system=system, messages=messages
        )
        assert usage_of(after)[1] == 1200
        stats = emulator.stats()
        assert stats["cache"]["writes"] == 5
        assert stats["tokens"]["cache_write_5m"] == 6000


class TestPrewarm:
    """max_tokens: 0 writes the cache and returns no content."""

    def test_prewarm_writes_and_answers_empty(self, client: anthropic.Anthropic) -> None:
        """Empty content, stop_reason max_tokens, no output; the next request reads."""
        system = [block(words(1200), EPHEMERAL)]
        messages = [{"role": "user", "content": "hi"}]
        warm = ask(client, max_tokens=0, system=system, messages=messages)
        assert warm.content == []
        assert warm.stop_reason == "max_tokens"
        assert warm.usage.output_tokens == 0
        assert usage_of(warm) == (1, 0, 1200, 0)
        assert usage_of(ask(client, system=system, messages=messages))[1] == 1200

    @pytest.mark.parametrize(
        "extra",
        [
            {"stream": True},
            {"thinking": {"type": "enabled", "budget_tokens": 1024}},
            {
                "tool_choice": {"type": "any"},
                "tools": [{"name": "t", "input_schema": {"type": "object"}}],
            },
        ],
        ids=["stream", "thinking", "forced-tool"],
    )
    def test_prewarm_rejects_incompatible_options(
        self, client: anthropic.Anthropic, extra: dict[str, Any]
    ) -> None:
        """max_tokens 0 with streaming, thinking or a forced tool choice is a 400."""
        with pytest.raises(anthropic.BadRequestError, match="max_tokens: 0"):
            client.post(
                "/v1/messages",
                body={
                    "model": MODEL,
                    "max_tokens": 0,
                    "messages": [{"role": "user", "content": "hi"}],
                    **extra,
                },
                cast_to=object,
            )


class TestDiagnostics:
    """With the beta header, the response says why the prefix diverged from a previous one."""

    def diagnose(
        self, client: anthropic.Anthropic, previous: str | None, **kwargs: Any
    ) -> anthropic.types.Message:
        return ask(
            client,
            diagnostics={"previous_message_id": previous},
            extra_headers={"anthropic-beta": DIAGNOSTICS_BETA},
            **kwargs,
        )

    def reason(self, message: anthropic.types.Message) -> dict[str, Any] | None:
        if message.diagnostics is None:
            return None
        miss = message.diagnostics.cache_miss_reason
        return None if miss is None else miss.model_dump()

    def test_each_reason_type(self, client: anthropic.Anthropic) -> None:
        """model, system, tools and messages changes, appends, unknown ids and other settings."""
        tool = {"name": "lookup", "input_schema": {"type": "object"}}
        system = [block(words(1200), EPHEMERAL)]
        history = [{"role": "user", "content": [block(words(100, "u"), EPHEMERAL)]}]
        tool_tokens = tokens.block_tokens(tool)
        first = self.diagnose(client, None, tools=[tool], system=system, messages=history)
        assert first.diagnostics is None
        reach = tool_tokens + 1300

        appended = [
            *history,
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "more"},
        ]
        same = self.diagnose(client, first.id, tools=[tool], system=system, messages=appended)
        assert self.reason(same) is None

        model = self.diagnose(
            client, first.id, model="claude-opus-4-8", tools=[tool], system=system, messages=history
        )
        assert self.reason(model) == {"type": "model_changed", "cache_missed_input_tokens": reach}

        tools = self.diagnose(
            client,
            first.id,
            tools=[{**tool, "description": "new"}],
            system=system,
            messages=history,
        )
        assert self.reason(tools) == {"type": "tools_changed", "cache_missed_input_tokens": reach}

        changed_system = self.diagnose(
            client,
            first.id,
            tools=[tool],
            system=[block(words(1200, "z"), EPHEMERAL)],
            messages=history,
        )
        assert self.reason(changed_system) == {
            "type": "system_changed",
            "cache_missed_input_tokens": reach - tool_tokens,
        }

        edited = [{"role": "user", "content": [block(words(100, "e"), EPHEMERAL)]}]
        messages = self.diagnose(client, first.id, tools=[tool], system=system, messages=edited)
        assert self.reason(messages) == {
            "type": "messages_changed",
            "cache_missed_input_tokens": 100,
        }

        other = self.diagnose(
            client,
            first.id,
            tools=[tool],
            system=system,
            messages=history,
            tool_choice={"type": "auto"},
        )
        assert self.reason(other) == {"type": "unavailable"}

        unknown = self.diagnose(
            client, "msg_does_not_exist", tools=[tool], system=system, messages=history
        )
        assert self.reason(unknown) == {"type": "previous_message_not_found"}

    def test_diagnostics_needs_the_beta_header(self, client: anthropic.Anthropic) -> None:
        """Without the beta header the request is a 400 that names the header."""
        with pytest.raises(anthropic.BadRequestError, match=DIAGNOSTICS_BETA):
            ask(
                client,
                diagnostics={"previous_message_id": None},
                messages=[{"role": "user", "content": "hi"}],
            )


class TestCountTokens:
    """count_tokens returns the total input, ignoring caching."""

    def test_count_equals_total_input_of_a_cached_request(
        self, client: anthropic.Anthropic
    ) -> None:
        """input + cache_read + cache_write of a real request equals count_tokens' answer."""
        system = [block(words(1200), EPHEMERAL)]
        messages = [{"role": "user", "content": "How are you doing today?"}]
        ask(client, system=system, messages=messages)
        cached = ask(client, system=system, messages=messages)
        counted = client.messages.count_tokens(model=MODEL, system=system, messages=messages)
        u = cached.usage
        total = (
            u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)
        )
        assert counted.input_tokens == total == 1200 + 6

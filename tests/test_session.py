"""Session and AsyncSession against the emulator through the real SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

import convo
from convo.emulator import RunningEmulator
from convo.ledger import Ledger
from convo.limits import RateLimiter
from convo.session import AsyncSession, KeepAlive, Session
from convo.tokens import message_tokens
from convo.warm import WarmRegistry

MODEL = "claude-sonnet-4-6"
SYSTEM = "You answer questions about the travel plan, briefly and exactly. " * 120  # 2,040 tokens
OVERLAP = {  # requests overlap in time: entries become readable only after 0.3 s
    "time_scale": 1.0,
    "latency": {"base_s": 0.3, "prefill_uncached_s": 0.0, "prefill_cached_s": 0.0, "decode_s": 0.0},
}


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    with Ledger.open(":memory:") as led:
        yield led


@pytest.fixture
def registry(emulator: RunningEmulator) -> WarmRegistry:
    """A registry on the emulator's clock (TTLs are judged on one clock)."""
    return WarmRegistry(clock=emulator.emulator.clock.now)


class Waits:
    """An injected sleep that records every wait instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def make_session(
    emulator: RunningEmulator, client: anthropic.Anthropic, registry: WarmRegistry, ledger: Ledger
) -> Callable[..., Session]:
    def make(*, prefix_ttl: str = "5m", **options: Any) -> Session:
        options.setdefault("client", client)
        options.setdefault("clock", emulator.emulator.clock.now)
        options.setdefault("registry", registry)
        options.setdefault("limiter", RateLimiter())
        options.setdefault("ledger", ledger)
        options.setdefault("max_tokens", 64)
        return Session(convo.Prefix(model=MODEL, system=[SYSTEM], ttl=prefix_ttl), **options)

    return make


def _users_came_back_after(
    make_session: Callable[..., Session], emulator: RunningEmulator, *gaps: float
) -> None:
    """An earlier user whose turns came *gaps* seconds apart: what keep-alive prices from."""
    earlier = make_session()
    earlier.send("An earlier user")
    for gap in gaps:
        emulator.advance(gap)
        earlier.send("Back again")
    emulator.advance(60)


class TestConversation:
    """Turns, history, replies and the ledger."""

    def test_turns_hit_the_cache_and_predictions_are_exact(
        self, make_session: Callable[..., Session]
    ) -> None:
        """A cold first turn, then hits; every prediction equals the observed usage."""
        session = make_session(suffix="User: Ada, plan: pro")
        replies = [session.send(q) for q in ("Where first?", "And then?", "How long?")]
        assert [r.reason for r in replies] == ["cold", "hit", "hit"]
        assert all(r.cache.exact for r in replies)
        assert replies[1].usage.cache_read == replies[0].usage.cache_write
        assert [r.turn for r in replies] == [1, 2, 3]
        assert session.stats.requests == 3
        assert session.stats.hit_requests == 2

    def test_history_echoes_assistant_content_verbatim(
        self, make_session: Callable[..., Session]
    ) -> None:
        """History holds the user turns and the assistant's content blocks exactly as returned."""
        session = make_session()
        reply = session.send("Hello")
        history = session.history
        assert history[0] == {"role": "user", "content": [{"type": "text", "text": "Hello"}]}
        assert history[1]["role"] == "assistant"
        assert history[1]["content"] == [
            b.model_dump(exclude_none=True) for b in reply.message.content
        ]

    def test_every_attempt_is_in_the_ledger(
        self, emulator: RunningEmulator, make_session: Callable[..., Session], ledger: Ledger
    ) -> None:
        """A 529 then a success are two rows: an error row and the priced reply."""
        emulator.configure({"faults": {"script": ["overloaded"]}})
        session = make_session(sleep=Waits())
        reply = session.send("Hello")
        ledger.flush()
        rows = ledger.rows(session=session.session_id)
        assert [(r.status, r.http_status) for r in rows] == [("error", 529), ("ok", 200)]
        assert rows[1].request_id == reply.request_id
        assert rows[1].cost_usd == reply.cost.usd
        assert rows[1].cache_reason == "cold"

    def test_mark_outcome_feeds_cost_per_success(
        self, make_session: Callable[..., Session], ledger: Ledger
    ) -> None:
        """A conversation marked success counts in the ledger's cost per successful task."""
        session = make_session()
        reply = session.send("Hello")
        session.mark("success")
        ledger.flush()
        per_task = ledger.task_cost()
        assert per_task.per_success == reply.cost.usd

    def test_fork_shares_the_cached_history(self, make_session: Callable[..., Session]) -> None:
        """A fork continues from the same history and reads what the parent cached."""
        parent = make_session()
        parent.send("Plan a day in Lisbon")
        child = parent.fork()
        assert child.history == parent.history
        assert child.conversation_id != parent.conversation_id
        reply = child.send("Make it rainy-day friendly")
        assert reply.reason == "hit"
        assert reply.usage.cache_read >= parent.stats.usage.cache_write

    def test_sessions_without_a_ledger_share_the_default_one(
        self, client: anthropic.Anthropic, registry: WarmRegistry
    ) -> None:
        """Sessions built with no ledger share one default ledger (one writer), not one each."""
        prefix = convo.Prefix(model=MODEL, system=[SYSTEM])
        first = Session(prefix, client=client, registry=registry, limiter=RateLimiter())
        second = Session(prefix, client=client, registry=registry, limiter=RateLimiter())
        first.send("Hello")
        ledger = first._core.ledger
        assert ledger is not None
        assert ledger is second._core.ledger
        ledger.flush()
        assert ledger.total(session=first.session_id).requests == 1

    def test_default_limiters_are_per_api_key(
        self, emulator: RunningEmulator, registry: WarmRegistry
    ) -> None:
        """Two API keys (two organisations' budgets) get separate default limiters."""
        prefix = convo.Prefix(model=MODEL, system=[SYSTEM])
        with (
            anthropic.Anthropic(base_url=emulator.base_url, api_key="sk-org-a") as a,
            anthropic.Anthropic(base_url=emulator.base_url, api_key="sk-org-b") as b,
        ):
            first = Session(prefix, client=a, registry=registry, ledger=False)
            same = Session(prefix, client=a, registry=registry, ledger=False)
            other = Session(prefix, client=b, registry=registry, ledger=False)
        assert first._core.limiter is same._core.limiter
        assert first._core.limiter is not other._core.limiter

    def test_bad_input_is_refused_before_sending(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """Blank text and wrong types raise at once; the emulator sees nothing."""
        session = make_session()
        with pytest.raises(ValueError, match="non-empty"):
            session.send("   ")
        with pytest.raises(TypeError, match="content-block"):
            session.send(42)  # type: ignore[arg-type]
        assert emulator.stats()["requests"]["total"] == 0
        assert session.history == []

    def test_caller_client_is_rewrapped_without_sdk_retries(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """Even a client built with max_retries=5 makes exactly the attempts convo decides."""
        emulator.configure({"faults": {"script": ["overloaded", "overloaded"]}})
        with anthropic.Anthropic(
            base_url=emulator.base_url, api_key="sk-test", max_retries=5
        ) as eager:
            session = make_session(
                client=eager, sleep=Waits(), retry=convo.RetryPolicy(max_attempts=2)
            )
            with pytest.raises(convo.RetriesExhausted):
                session.send("Hello")
        assert emulator.stats()["requests"]["total"] == 2


class TestRetries:
    """429/529 retried honouring retry-after; the spend cap fails fast."""

    def test_429_with_retry_after_ms_is_waited_then_succeeds(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """retry-after-ms: 1200 (with retry-after: 2) is waited exactly 1.2 s, then a 200."""
        emulator.configure(
            {
                "faults": {
                    "script": [{"kind": "rate_limit", "retry_after": 2, "retry_after_ms": 1200}]
                }
            }
        )
        waits = Waits()
        reply = make_session(sleep=waits).send("Hello")
        assert waits.waits == [1.2]
        assert [a.status for a in reply.attempts] == [429, 200]
        assert reply.attempts[0].wait == 1.2
        assert emulator.stats()["requests"]["total"] == len(reply.attempts) == 2

    def test_three_529s_then_success(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """529 × 3 then a 200: four attempts, and the emulator saw exactly four."""
        emulator.configure({"faults": {"script": ["overloaded"] * 3}})
        reply = make_session(sleep=Waits(), retry=convo.RetryPolicy(max_attempts=4)).send("Hello")
        assert [a.status for a in reply.attempts] == [529, 529, 529, 200]
        assert emulator.stats()["requests"]["total"] == 4

    def test_spend_cap_fails_without_retry(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """The spend-cap 429 raises SpendCapReached after one attempt; history is unchanged."""
        emulator.configure({"faults": {"script": ["spend_cap"]}})
        session = make_session(sleep=Waits())
        with pytest.raises(convo.SpendCapReached):
            session.send("Hello")
        assert emulator.stats()["requests"]["total"] == 1
        assert session.history == []

    def test_exhausted_retries_carry_every_attempt(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """Five 529s against three attempts: RetriesExhausted with three records."""
        emulator.configure({"faults": {"script": ["overloaded"] * 5}})
        session = make_session(sleep=Waits(), retry=convo.RetryPolicy(max_attempts=3))
        with pytest.raises(convo.RetriesExhausted) as caught:
            session.send("Hello")
        attempts = caught.value.attempts
        assert [a.status for a in attempts] == [529, 529, 529]
        assert all(a.request_id for a in attempts)
        assert emulator.stats()["requests"]["total"] == 3


class TestDiagnostics:
    """With diagnostics on, the server's reason is recorded beside the local one."""

    def test_server_and_local_reasons_agree(self, make_session: Callable[..., Session]) -> None:
        """Appending turns: no divergence; a changed system suffix: both say system_changed."""
        suffix = {"text": "User: Ada"}
        session = make_session(diagnostics=True, suffix=lambda: suffix["text"])
        session.send("Hello")
        hit = session.send("More")
        assert (hit.reason, hit.cache.server_reason) == ("hit", None)
        suffix["text"] = "User: Ada, plan: pro"
        changed = session.send("And now?")
        assert changed.reason == "system_changed"
        assert changed.cache.server_reason == "system_changed"
        assert changed.cache.agrees is True


class TestBudget:
    """Budgets refuse before any money is spent."""

    def test_request_over_the_input_budget_is_not_sent(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """A 500-token per-request input cap refuses a 2,000-token request, naming both."""
        session = make_session(budget=convo.Budget(max_input_tokens=500, scope="request"))
        with pytest.raises(convo.BudgetExceeded) as caught:
            session.send("Hello")
        error = caught.value
        assert error.limit == "max_input_tokens"
        assert error.maximum == 500
        assert error.estimate > 500  # type: ignore[operator]
        assert emulator.stats()["requests"]["total"] == 0
        assert session.history == []

    def test_session_cost_budget_counts_what_was_spent(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """After spending, the next request's estimate on top of it is refused."""
        session = make_session(budget=convo.Budget(max_cost_usd="0.014", warn_at=1.0))
        first = session.send("Hello")
        assert first.cost.usd is not None
        with pytest.raises(convo.BudgetExceeded) as caught:
            session.send("Again")
        assert caught.value.spent == first.cost.usd
        assert emulator.stats()["requests"]["total"] == 1

    def test_ledger_budget_is_shared_by_sessions_on_one_ledger(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """A ledger-scope budget counts every session's spend: the second session is refused."""
        budget = convo.Budget(max_cost_usd="0.014", scope="ledger", warn_at=1.0)
        make_session(budget=budget).send("Hello")
        with pytest.raises(convo.BudgetExceeded) as caught:
            make_session(budget=budget).send("Hello from another session")
        assert caught.value.scope == "ledger"
        assert caught.value.spent > 0  # type: ignore[operator]
        assert emulator.stats()["requests"]["total"] == 1


class TestStreaming:
    """Text as it arrives; usage settled at the end; retries only before the first text."""

    def test_stream_yields_text_and_settles_usage(
        self, make_session: Callable[..., Session]
    ) -> None:
        """The streamed text is the reply's text; usage and reason are settled."""
        session = make_session()
        session.send("Hello")
        with session.stream("Tell me more") as s:
            pieces = list(s.text_stream)
        assert len(pieces) > 1
        assert "".join(pieces) == s.reply.text
        assert s.reply.reason == "hit"
        assert s.reply.cache.exact
        assert session.history[-1]["role"] == "assistant"

    def test_error_before_text_is_retried(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """An error event right after message_start (no text yet) is retried transparently."""
        emulator.configure({"faults": {"script": [{"kind": "stream_error", "after_events": 2}]}})
        session = make_session(sleep=Waits())
        with session.stream("Hello") as s:
            text = "".join(s.text_stream)
        assert text
        assert len(s.reply.attempts) == 2
        assert emulator.stats()["requests"]["total"] == 2

    def test_error_after_text_keeps_the_partial_text(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """An error event after text reached the caller raises StreamInterrupted with it."""
        emulator.configure({"faults": {"script": [{"kind": "stream_error", "after_events": 5}]}})
        session = make_session(sleep=Waits())
        received: list[str] = []
        with pytest.raises(convo.StreamInterrupted) as caught, session.stream("Hello") as s:  # noqa: PT012
            for text in s.text_stream:
                received.append(text)
        assert received
        assert caught.value.partial_text == "".join(received)
        assert session.history == []
        assert emulator.stats()["requests"]["total"] == 1

    def test_connection_drop_after_text_is_an_interruption(
        self, emulator: RunningEmulator, make_session: Callable[..., Session], ledger: Ledger
    ) -> None:
        """A connection lost mid-stream raises StreamInterrupted; nothing is recorded as ok."""
        emulator.configure({"faults": {"script": [{"kind": "stream_drop", "after_events": 5}]}})
        session = make_session(sleep=Waits())
        received: list[str] = []
        with pytest.raises(convo.StreamInterrupted) as caught, session.stream("Hello") as s:  # noqa: PT012
            for text in s.text_stream:
                received.append(text)
        assert received
        assert caught.value.partial_text == "".join(received)
        assert session.history == []
        assert session.stats.requests == 0
        ledger.flush()
        assert [(r.status, r.error_type) for r in ledger.rows(session=session.session_id)] == [
            ("error", "stream_interrupted")
        ]

    def test_streamed_reply_carries_its_request_id(
        self, make_session: Callable[..., Session], ledger: Ledger
    ) -> None:
        """A streamed reply, its attempt and its ledger row all carry the server's request id."""
        session = make_session()
        with session.stream("Hello") as s:
            "".join(s.text_stream)
        assert s.reply.request_id is not None
        assert s.reply.request_id.startswith("req_")
        assert s.reply.attempts[-1].request_id == s.reply.request_id
        ledger.flush()
        assert ledger.rows(session=session.session_id)[-1].request_id == s.reply.request_id

    def test_failed_stream_attempt_is_in_the_ledger(
        self, emulator: RunningEmulator, make_session: Callable[..., Session], ledger: Ledger
    ) -> None:
        """An error event before any text is retried, and the failed attempt is recorded as 529."""
        emulator.configure({"faults": {"script": [{"kind": "stream_error", "after_events": 1}]}})
        session = make_session(sleep=Waits())
        with session.stream("Hello") as s:
            "".join(s.text_stream)
        assert [a.status for a in s.reply.attempts] == [529, 200]
        ledger.flush()
        rows = ledger.rows(session=session.session_id)
        assert [(r.status, r.http_status, r.error_type) for r in rows] == [
            ("error", 529, "overloaded_error"),
            ("ok", 200, None),
        ]


class TestWarmState:
    """Single flight, pre-warming, TTLs and keep-alive."""

    async def test_fifty_concurrent_sessions_write_the_prefix_once(
        self,
        emulator: RunningEmulator,
        async_client: anthropic.AsyncAnthropic,
        registry: WarmRegistry,
        ledger: Ledger,
    ) -> None:
        """50 AsyncSessions on one cold prefix: one request writes, 49 wait and read."""
        emulator.configure(OVERLAP)
        prefix = convo.Prefix(model=MODEL, system=[SYSTEM])
        sessions = [
            AsyncSession(
                prefix,
                client=async_client,
                history="none",
                registry=registry,
                limiter=RateLimiter(),
                ledger=ledger,
                clock=emulator.emulator.clock.now,
                max_tokens=16,
            )
            for _ in range(50)
        ]
        replies = await asyncio.gather(*(s.send(f"Question {i}") for i, s in enumerate(sessions)))
        stats = emulator.stats()
        assert stats["cache"]["writes"] == 1
        written = stats["tokens"]["cache_write_5m"] + stats["tokens"]["cache_write_1h"]
        assert written == prefix.tokens
        assert sum(r.usage.cache_read == prefix.tokens for r in replies) == 49
        assert all(r.cache.exact for r in replies)

    async def test_five_minute_and_one_hour_sessions_share_one_write(
        self,
        emulator: RunningEmulator,
        async_client: anthropic.AsyncAnthropic,
        registry: WarmRegistry,
        ledger: Ledger,
    ) -> None:
        """Sessions on the same prefix bytes with different TTLs are one single flight."""
        emulator.configure(OVERLAP)
        sessions = [
            AsyncSession(
                convo.Prefix(model=MODEL, system=[SYSTEM], ttl=ttl),
                client=async_client,
                history="none",
                registry=registry,
                limiter=RateLimiter(),
                ledger=ledger,
                clock=emulator.emulator.clock.now,
                max_tokens=16,
            )
            for ttl in ("5m", "1h", "5m", "1h", "5m", "1h")
        ]
        await asyncio.gather(*(s.send("Question") for s in sessions))
        assert emulator.stats()["cache"]["writes"] == 1

    async def test_without_a_shared_registry_each_cold_session_writes(
        self, emulator: RunningEmulator, async_client: anthropic.AsyncAnthropic, ledger: Ledger
    ) -> None:
        """The control: sessions with registries of their own each pay a write."""
        emulator.configure(OVERLAP)
        prefix = convo.Prefix(model=MODEL, system=[SYSTEM])
        sessions = [
            AsyncSession(
                prefix,
                client=async_client,
                history="none",
                limiter=RateLimiter(),
                ledger=ledger,
                registry=WarmRegistry(clock=emulator.emulator.clock.now),
                clock=emulator.emulator.clock.now,
                max_tokens=16,
            )
            for _ in range(10)
        ]
        await asyncio.gather(*(s.send("Question") for s in sessions))
        assert emulator.stats()["cache"]["writes"] == 10

    def test_warm_only_when_cold(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """warm() sends max_tokens 0 when cold, nothing when warm; the first turn then hits."""
        session = make_session()
        warm = session.warm(latency=True)
        assert warm is not None
        assert warm.message.content == []
        assert warm.usage.output == 0
        assert session.warm() is None
        reply = session.send("Hello")
        assert reply.usage.cache_read == session.prefix.tokens
        assert emulator.stats()["requests"]["total"] == 2

    def test_a_cold_pre_warm_is_sent_only_to_buy_latency(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """By default warm() does not write a cold prefix (it would cost a read more than
        the first turn writing it) and says why; latency=True writes it."""
        session = make_session()
        assert session.warm() is None
        assert emulator.stats()["requests"]["total"] == 0
        assert session.last_decision is not None
        assert session.last_decision.action == "skip"
        assert session.last_decision.expected_saving < 0
        assert session.warm(latency=True) is not None
        assert emulator.stats()["requests"]["total"] == 1

    def test_a_session_on_its_own_clock_judges_ttls_on_it_without_a_registry(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """No registry given, a virtual clock: the default registry must run on that clock,
        or after six virtual minutes it would still call the prefix live (wall time barely
        moved) and the turn would predict a read that misses."""
        clock = emulator.emulator.clock.now
        session = Session(
            convo.Prefix(model=MODEL, system=[SYSTEM]),
            client=client,
            clock=clock,
            ledger=False,
            max_tokens=64,
            suffix="User: Ada",
        )
        replies = [session.send("One")]
        emulator.advance(60)
        replies.append(session.send("Two"))
        emulator.advance(400)
        replies.append(session.send("Three"))
        assert [r.reason for r in replies] == ["cold", "hit", "expired"]
        assert all(r.cache.exact for r in replies)

    def test_ttl_on_the_virtual_clock(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """Warm, idle 4 min, send: hit. Idle 6 min, send: expired (a 5m layout)."""
        session = make_session(adaptive_ttl=False)
        session.warm(latency=True)
        emulator.advance(240)
        assert session.send("After four minutes").reason == "hit"
        emulator.advance(360)
        assert session.send("After six more").reason == "expired"

    def test_keep_alive_bridges_the_six_minute_gap(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """With keep-alive ticking through the gap, the turn after 6 idle minutes is a hit
        (where users were seen coming back after about that long: a re-warm pays)."""
        _users_came_back_after(make_session, emulator, 400.0, 400.0)
        session = make_session(keep_alive=KeepAlive(margin_s=60), adaptive_ttl=False)
        session.warm(latency=True)
        emulator.advance(240)
        assert session.send("After four minutes").reason == "hit"
        ticks = []
        for _ in range(12):  # a tick every 30 s, as run_keep_alive(interval=30) would
            emulator.advance(30)
            ticks.append(session.keep_alive_tick())
        rewarms = [t for t in ticks if t is not None]
        assert len(rewarms) == 1
        assert rewarms[0].usage.output == 0
        assert session.send("After six more").reason == "hit"

    def test_adaptive_ttl_moves_to_one_hour_when_gaps_make_it_pay(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """Nothing seen: the prefix is written for an hour. After a gap over an hour (and
        none of 5-60 minutes) it is written for 5 minutes; a 400 s gap then lapses it and
        tips it back to 1h, and a 16-minute gap after that still reads it."""
        session = make_session(adaptive_ttl=True)
        assert session.send("First").usage.cache_write_1h >= 2040
        emulator.advance(4000)
        after_an_hour = session.send("After an hour")
        assert after_an_hour.usage.cache_write_5m >= 2040
        assert after_an_hour.usage.cache_write_1h == 0
        emulator.advance(400)
        expired = session.send("Almost seven minutes later")
        assert expired.reason == "expired"
        assert session.prefix.ttl == "1h"
        assert expired.usage.cache_write_1h >= 2040
        emulator.advance(16 * 60)
        assert session.send("Sixteen minutes later").usage.cache_read >= 2040

    def test_a_one_hour_history_writes_only_the_previous_answer_for_an_hour(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """Once a 10-minute pause makes a 1h history pay, a turn's 1h breakpoint sits on the
        previous answer and its own short message gets a 5m one (alone, it is not worth an
        hour); after another long pause the next turn reads everything up to that answer."""
        session = make_session()
        for gap in (60, 60, 600):
            session.send("Tell me more about the plan, please.")
            emulator.advance(gap)
        session.send("After ten minutes")  # the lapse that moves prefix and history to 1h
        emulator.advance(60)
        reply = session.send("One minute later")
        answer = message_tokens(session.history[-3])  # the answer before this turn
        asked = message_tokens(session.history[-2])
        assert (reply.usage.cache_write_1h, reply.usage.cache_write_5m) == (answer, asked)
        before = reply.usage.cache_read + answer  # what the 1h entry holds
        emulator.advance(700)
        later = session.send("Twelve minutes later")
        assert later.usage.cache_read == before  # only the 5m message lapsed
        assert later.usage.input == 0

    def test_a_session_per_request_decides_as_one_session_does(
        self,
        emulator: RunningEmulator,
        make_session: Callable[..., Session],
    ) -> None:
        """A stateless backend (a new Session per request, from the stored messages) pools
        its turns under the same conversation as one long-lived Session, its first turn
        included, so it lays out and pays exactly the same, turn by turn."""
        gaps = (60, 60, 600, 60, 700, 60, 60)

        def run(stateless: bool) -> list[tuple[int, int, int]]:
            emulator.reset()
            registry = WarmRegistry(clock=emulator.emulator.clock.now)
            session = make_session(registry=registry)
            paid = []
            for i, gap in enumerate(gaps):
                if stateless:
                    session = make_session(registry=registry, messages=session.history)
                usage = session.send(f"Question {i} about the plan").usage
                paid.append((usage.cache_read, usage.cache_write_5m, usage.cache_write_1h))
                emulator.advance(gap)
            return paid

        one = run(stateless=False)
        assert any(w1h for _, _, w1h in one)  # the pauses made a 1h history pay
        assert run(stateless=True) == one

    def test_a_conversation_is_keyed_by_its_first_exchange(
        self, make_session: Callable[..., Session]
    ) -> None:
        """Sessions rebuilt from the same stored exchange pool as one conversation; two
        conversations that open with the same words but were answered differently do not
        (a greeting shared by a thousand users is not one conversation)."""

        def key(answer: str) -> str | None:
            messages = [
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": answer},
            ]
            return make_session(messages=messages)._core._conversation()

        assert key("Hi, how can I help?") == key("Hi, how can I help?") is not None
        assert key("Hi, how can I help?") != key("Hello! What do you need?")
        assert make_session()._core._conversation() is None  # nothing to key on yet

    def test_keep_alive_lets_an_idle_session_go(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """Its own re-warms do not keep a session active: after active_for_s they stop."""
        _users_came_back_after(make_session, emulator, 400.0, 700.0, 1000.0)
        keep_alive = KeepAlive(margin_s=60, active_for_s=600)
        session = make_session(keep_alive=keep_alive, adaptive_ttl=False)
        session.send("Hello")
        rewarms = 0
        for _ in range(60):  # half an hour of ticks, 30 s apart, with nobody talking
            emulator.advance(30)
            rewarms += session.keep_alive_tick() is not None
        assert rewarms == 2  # at about 4 and 8 minutes; none once 10 idle minutes passed

    def test_warm_sends_nothing_for_a_prefix_that_cannot_cache(
        self,
        emulator: RunningEmulator,
        client: anthropic.Anthropic,
        registry: WarmRegistry,
        ledger: Ledger,
    ) -> None:
        """A prefix below the model's minimum has nothing to pre-warm: no request is made."""
        with pytest.warns(convo.PrefixTooShortWarning):
            prefix = convo.Prefix(model=MODEL, system=["A short prompt."])
        session = Session(
            prefix,
            client=client,
            registry=registry,
            ledger=ledger,
            limiter=RateLimiter(),
            clock=emulator.emulator.clock.now,
        )
        assert session.warm() is None
        assert emulator.stats()["requests"]["total"] == 0

    def test_keep_alive_respects_its_spend_cap(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """A zero spend cap means no re-warm is ever sent."""
        session = make_session(keep_alive=KeepAlive(margin_s=60, max_cost_usd=0))
        session.send("Hello")
        emulator.advance(250)
        assert session.keep_alive_tick() is None


class TestRateLimits:
    """A shared limiter paces sessions under the emulator's limits: no 429s."""

    async def test_sessions_under_small_itpm_draw_no_429(
        self, emulator: RunningEmulator, async_client: anthropic.AsyncAnthropic, ledger: Ledger
    ) -> None:
        """12 uncached requests of 2,044 tokens under ITPM 6,000: paced, none refused."""
        emulator.configure({"limits": {"default": {"rpm": 1000, "itpm": 6000, "otpm": 100000}}})
        clock = emulator.emulator.clock.now
        limiter = RateLimiter(itpm=6000, clock=clock, wall_clock=clock)
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)
            emulator.advance(seconds)  # the emulator's buckets refill on its own clock

        sessions = [
            AsyncSession(
                convo.Prefix(model=MODEL, system=[f"Case {i}. " + SYSTEM]),
                client=async_client,
                history="none",
                limiter=limiter,
                ledger=ledger,
                sleep=sleep,
                registry=WarmRegistry(clock=emulator.emulator.clock.now),
                clock=emulator.emulator.clock.now,
                max_tokens=16,
            )
            for i in range(12)
        ]
        for s in sessions:
            await s.send("Go")
        assert emulator.stats()["requests"]["by_status"] == {"200": 12}
        assert sum(slept) > 0


class TestFirstUse:
    """What a new user runs into: clear errors before spending, and the documented behaviour."""

    @pytest.mark.parametrize(
        ("options", "fragment"),
        [
            ({"ledger": ":memory:"}, "convo.Ledger"),
            ({"budget": {"max_cost_usd": "1"}}, "convo.Budget"),
            ({"hooks": [1]}, "callables"),
            ({"registry": "redis://x"}, "WarmRegistry"),
            ({"max_tokens": "10"}, "int"),
        ],
        ids=["ledger-str", "budget-dict", "hook-int", "registry-str", "max-tokens-str"],
    )
    def test_wrong_types_fail_at_construction(
        self,
        emulator: RunningEmulator,
        make_session: Callable[..., Session],
        options: dict[str, Any],
        fragment: str,
    ) -> None:
        """Each wrong type is a TypeError naming what to pass; nothing is sent."""
        with pytest.raises(TypeError, match=fragment):
            make_session(**options)
        assert emulator.stats()["requests"]["total"] == 0

    def test_negative_max_tokens_is_refused_before_sending(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """send(max_tokens=-1) says what is allowed; nothing is sent, history unchanged."""
        session = make_session()
        with pytest.raises(ValueError, match=">= 1"):
            session.send("Hello", max_tokens=-1)
        assert emulator.stats()["requests"]["total"] == 0
        assert session.history == []

    def test_a_failing_hook_warns_and_keeps_the_turn(
        self, make_session: Callable[..., Session]
    ) -> None:
        """A hook that raises does not undo a paid, recorded turn."""

        def broken(reply: convo.Reply) -> None:
            raise RuntimeError("telemetry is down")

        session = make_session(hooks=[broken])
        with pytest.warns(RuntimeWarning, match="telemetry is down"):
            session.send("Hello")
        assert len(session.history) == 2

    def test_a_short_prefix_says_below_minimum(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """A prefix under the model's minimum gives reason below_minimum, not cold."""
        with pytest.warns(convo.PrefixTooShortWarning):
            prefix = convo.Prefix(model=MODEL, system=["A short prompt. " * 20])
        session = Session(
            prefix,
            client=client,
            ledger=False,
            limiter=RateLimiter(),
            registry=WarmRegistry(clock=emulator.emulator.clock.now),
            clock=emulator.emulator.clock.now,
            history="none",
        )
        assert session.send("Hello").reason == "below_minimum"

    def test_the_tracker_reads_the_prefix_model_table(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """Emulator and Prefix given the same override (minimum 2,048): exact predictions."""
        override = {MODEL: {"min_cacheable_tokens": 2048}}
        emulator.configure({"models": override})
        with pytest.warns(convo.PrefixTooShortWarning, match="2048"):
            prefix = convo.Prefix(
                model=MODEL, system=["word " * 1500], models=convo.models.with_overrides(override)
            )
        session = Session(
            prefix,
            client=client,
            ledger=False,
            limiter=RateLimiter(),
            registry=WarmRegistry(clock=emulator.emulator.clock.now),
            clock=emulator.emulator.clock.now,
        )
        replies = [session.send(q) for q in ("One", "Two", "Three")]
        assert all(
            r.cache.exact for r in replies
        )  # with the built-in 1,024 it would predict writes
        assert {r.reason for r in replies} == {"below_minimum"}

    def test_history_ttl_through_a_session(self, make_session: Callable[..., Session]) -> None:
        """A 1h prefix with 5m history: the prefix writes 1h, the history 5m."""
        session = make_session(prefix_ttl="1h", history_ttl="5m")
        reply = session.send("Hello")
        assert reply.usage.cache_write_1h > 0
        assert reply.usage.cache_write_5m > 0

    def test_keep_alive_interval_must_be_shorter_than_the_margin(
        self, make_session: Callable[..., Session]
    ) -> None:
        """run_keep_alive refuses an interval that could step over the re-warm window."""
        session = make_session(keep_alive=KeepAlive(margin_s=60))
        with pytest.raises(ValueError, match="shorter than"):
            session.run_keep_alive(stop=lambda: True, interval=60)
        with pytest.raises(ValueError, match="> 0 seconds"):
            KeepAlive(margin_s=-1)

    def test_a_stream_dropped_before_any_text_is_retried(
        self, emulator: RunningEmulator, make_session: Callable[..., Session]
    ) -> None:
        """A connection lost before the first text is a connection error: retried."""
        emulator.configure({"faults": {"script": [{"kind": "stream_drop", "after_events": 2}]}})
        session = make_session(sleep=Waits())
        with session.stream("Hello") as s:
            text = "".join(s.text_stream)
        assert text
        assert [a.error_type for a in s.reply.attempts] == ["APIConnectionError", None]
        assert emulator.stats()["requests"]["total"] == 2


class TestBustWarnings:
    """Every unexpected bust is a warning on the ``convo`` logger, telemetry or not."""

    def test_a_changed_system_prompt_is_warned_about(
        self,
        make_session: Callable[..., Session],
        client: anthropic.Anthropic,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The warning names the reason; a cold first turn is no bust and says nothing."""
        caplog.set_level("WARNING", logger="convo")
        first = make_session()
        first.send("Hello")
        assert not [r for r in caplog.records if "cache bust" in r.getMessage()]
        edited = Session(
            convo.Prefix(model=MODEL, system=[SYSTEM + " Be brief."]),
            client=client,
            ledger=False,
            messages=first.history,
            _tracker=first.tracker,
        )
        assert edited.send("Again").reason == "system_changed"
        busts = [r.getMessage() for r in caplog.records if "cache bust" in r.getMessage()]
        assert len(busts) == 1
        assert "system_changed" in busts[0]


class TestReplyFacts:
    """A reply says its part in the single flight, its purpose and its limiter wait."""

    def test_writer_then_reader(self, make_session: Callable[..., Session]) -> None:
        """The first session on a cold prefix writes it; a second session reads it."""
        first = make_session().send("Hello")
        second = make_session().send("Hello too")
        assert (first.warm_role, second.warm_role) == ("writer", "reader")
        assert first.purpose == second.purpose == "turn"
        assert first.limiter_wait_s == 0.0

"""Cut streams, cancellations and interrupts: every billed token recorded, nothing half-done."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

import convo
from convo.emulator import RunningEmulator
from convo.ledger import Ledger
from convo.limits import RateLimiter
from convo.testing import emulator_clock
from convo.warm import WarmRegistry

MODEL = "claude-sonnet-4-6"
SYSTEM = "You answer questions about the travel plan, briefly and exactly. " * 120  # 2,040 tokens
KINDS = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output")


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    with Ledger.open(":memory:") as led:
        yield led


def billed(emulator: RunningEmulator) -> dict[str, int]:
    tokens: dict[str, int] = emulator.stats()["tokens"]
    return tokens


def recorded(ledger: Ledger) -> dict[str, int]:
    ledger.flush()
    totals = ledger.total()
    return {kind: getattr(totals, kind) for kind in KINDS}


def session_on(
    emulator: RunningEmulator, client: Any, ledger: Ledger, **options: Any
) -> convo.Session:
    clock = emulator_clock(emulator)
    options.setdefault("registry", WarmRegistry(clock=clock))
    options.setdefault("limiter", RateLimiter())
    return convo.Session(
        convo.Prefix(model=MODEL, system=[SYSTEM]),
        client=client,
        ledger=ledger,
        clock=clock,
        sleep=clock.sleep,
        max_tokens=200,
        **options,
    )


def read(stream: Any, *, interrupt_at: int | None = None) -> str:
    """Read a stream to its end (or press Ctrl-C after *interrupt_at* pieces)."""
    with stream as replying:
        for count, _ in enumerate(replying.text_stream):
            if count == interrupt_at:
                raise KeyboardInterrupt
    return str(replying.reply.text)


def cut_after(emulator: RunningEmulator, kind: str, events: int) -> None:
    """The next request's stream is cut by *kind* after *events* SSE events."""
    emulator.configure({"faults": {"script": [{"kind": kind, "after_events": events}]}})


class TestCutStreams:
    """A stream cut after text reached the caller is no finished turn, and is billed."""

    @pytest.mark.parametrize("kind", ["stream_error", "stream_drop"])
    def test_a_cut_raises_stream_interrupted_and_leaves_the_history(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, ledger: Ledger, kind: str
    ) -> None:
        """The caller gets the partial text; the history is as before; the ledger matches
        what the emulator billed, in every kind."""
        session = session_on(emulator, client, ledger)
        session.send("Where do we start?")
        before = session.history
        cut_after(emulator, kind, 8)
        with pytest.raises(convo.StreamInterrupted) as caught:
            read(session.stream("And then?"))
        assert caught.value.partial_text
        assert session.history == before
        assert recorded(ledger) == billed(emulator)
        rows = ledger.rows()
        assert [r.status for r in rows][-1] == "error"

    def test_keep_partial_keeps_the_partial_reply(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, ledger: Ledger
    ) -> None:
        """Asked to, the partial reply stays in the history as the assistant's turn."""
        session = session_on(emulator, client, ledger)
        cut_after(emulator, "stream_error", 8)
        with pytest.raises(convo.StreamInterrupted) as caught:
            read(session.stream("Where?", keep_partial=True))
        kept = session.history[-1]
        assert kept["role"] == "assistant"
        assert kept["content"] == [{"type": "text", "text": caught.value.partial_text}]

    def test_ctrl_c_mid_stream(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, ledger: Ledger
    ) -> None:
        """Ctrl-C while reading: StreamInterrupted with the partial text, the history as
        before, and a ``cancelled`` row with the input billed and the output delivered."""
        session = session_on(emulator, client, ledger)
        session.send("Where do we start?")
        before = session.history
        with pytest.raises(convo.StreamInterrupted) as caught:
            read(session.stream("Tell me everything"), interrupt_at=2)
        assert isinstance(caught.value.__cause__, KeyboardInterrupt)
        assert caught.value.partial_text
        assert session.history == before
        row = ledger.rows()[-1]
        assert row.status == "cancelled"
        assert row.cache_read > 0
        assert row.output == convo.tokens.estimate(caught.value.partial_text)
        assert row.usage_estimated

    def test_a_stream_failing_before_text_is_retried_and_its_start_billed(
        self, emulator: RunningEmulator, client: anthropic.Anthropic, ledger: Ledger
    ) -> None:
        """An error event after ``message_start`` but before text is retried; the failed
        attempt's row carries the input its ``message_start`` reported."""
        session = session_on(emulator, client, ledger)
        cut_after(emulator, "stream_error", 1)
        with session.stream("Where?") as replying:
            for _ in replying.text_stream:
                pass
        assert len(replying.reply.attempts) == 2
        failed = ledger.rows()[0]
        assert failed.status == "error"
        assert failed.usage.total_input > 0
        assert recorded(ledger) == billed(emulator)


class TestCancellation:
    """A cancelled send or stream gives back what it held and leaves the history alone."""

    async def test_cancelled_sends_release_everything(
        self, emulator: RunningEmulator, async_client: anthropic.AsyncAnthropic, ledger: Ledger
    ) -> None:
        """Random cancellations: limiter levels back, no stuck claim, a row for each
        request the server saw, and every history as before."""
        emulator.configure(
            {
                "time_scale": 1.0,
                "latency": {"base_s": 0.05, "prefill_uncached_s": 0.0, "decode_s": 0.001},
            }
        )
        registry = WarmRegistry(clock=emulator.emulator.clock.now)
        limiter = RateLimiter(itpm=10_000_000, otpm=10_000_000, rpm=100_000)
        sessions = [
            convo.AsyncSession(
                convo.Prefix(model=MODEL, system=[SYSTEM]),
                client=async_client,
                registry=registry,
                limiter=limiter,
                ledger=ledger,
                clock=emulator.emulator.clock.now,
                max_tokens=64,
            )
            for _ in range(20)
        ]
        rng = random.Random(4)

        async def one(session: convo.AsyncSession) -> None:
            if rng.random() < 0.5:
                await session.send("Which gate?")
            else:
                async with session.stream("Which gate?") as replying:
                    async for _ in replying.text_stream:
                        pass

        tasks = [asyncio.create_task(one(s)) for s in sessions]
        await asyncio.sleep(0.06)
        for task in tasks:
            if rng.random() < 0.5:
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        cancelled = [
            s
            for s, r in zip(sessions, results, strict=True)
            if isinstance(r, asyncio.CancelledError)
        ]
        assert cancelled
        assert all(not isinstance(r, Exception) for r in results)
        for session, result in zip(sessions, results, strict=True):
            expected = 0 if isinstance(result, BaseException) else 2
            assert len(session.history) == expected

        # Nothing stuck: the next request is admitted at once (a reservation a cancelled
        # request kept would leave the buckets short), and it is not made to wait on an
        # abandoned claim of the shared prefix.
        async def must_not_wait(seconds: float) -> None:
            raise AssertionError(f"the limiter made a fresh request wait {seconds} s")

        fresh = await limiter.acquire_async(
            input_tokens=2_000, output_tokens=64, sleep=must_not_wait
        )
        limiter.release(fresh)
        flight = await registry.acquire_async(sessions[0].warm_key, ttl_seconds=300, timeout=1.0)
        assert flight.role in ("writer", "reader")
        await asyncio.sleep(0.3)  # let the server finish what it had begun
        ledger.flush()
        rows = ledger.rows()
        # A row for every request the server saw; a cancelled one only if it was sent.
        assert len(rows) >= emulator.stats()["requests"]["total"]
        assert len([r for r in rows if r.status == "cancelled"]) <= len(cancelled)
        assert len([r for r in rows if r.status == "ok"]) == len(sessions) - len(cancelled)


class TestSharedBudget:
    """One Budget object given to 32 concurrent sessions is one cap, and it holds."""

    @pytest.mark.parametrize("scope", ["session", "ledger"])
    async def test_thirty_two_sessions_stay_under_one_cap(
        self,
        emulator: RunningEmulator,
        async_client: anthropic.AsyncAnthropic,
        ledger: Ledger,
        scope: str,
    ) -> None:
        """Each request reserves its estimated maximum before it is sent: together the
        sessions never pass the cap, and the ones refused sent nothing."""
        cap = convo.Budget(max_cost_usd="0.10", scope=scope, warn_at=1.0)  # type: ignore[arg-type]
        registry = WarmRegistry(clock=emulator.emulator.clock.now)
        sessions = [
            convo.AsyncSession(
                convo.Prefix(model=MODEL, system=[SYSTEM]),
                client=async_client,
                registry=registry,
                limiter=RateLimiter(),
                ledger=ledger,
                budget=cap,
                clock=emulator.emulator.clock.now,
                max_tokens=256,
            )
            for _ in range(32)
        ]

        async def chat(session: convo.AsyncSession) -> int:
            refused = 0
            for turn in range(6):
                try:
                    await session.send(f"Question {turn}: which gate?")
                except convo.BudgetExceeded:
                    refused += 1
            return refused

        refusals = await asyncio.gather(*(chat(s) for s in sessions))
        ledger.flush()
        spent = ledger.total().cost_usd
        assert sum(refusals) > 0, "the cap was never reached: the test proves nothing"
        assert spent <= cap.max_cost_usd
        answered = sum(len(s.history) // 2 for s in sessions)
        assert emulator.stats()["requests"]["total"] == answered

"""convo.store: conversations saved and restored by id, on SQLite, Redis and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

import convo
from convo.emulator import RunningEmulator
from convo.store import (
    ConversationBusy,
    ConversationConflict,
    ConversationState,
    ConversationStore,
    PostgresStore,
    RedisStore,
    SQLiteStore,
    StoreError,
    open_store,
)
from tests.conftest import API_KEY, service_missing

REDIS_URL = "redis://127.0.0.1:6379/0"
MODEL = "claude-sonnet-4-6"
SYSTEM = "You answer questions about the convo library. " * 300
TOOLS = [
    {
        "name": "search_docs",
        "description": "Search the documentation.",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
    {
        "name": "open_page",
        "description": "Open one documentation page.",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
    },
]


def prefix_for(variant: str) -> convo.Prefix:
    """The prefix of each step of the scenario: as first deployed, with a timestamp added
    to the system prompt, and with the tool list reordered on top of that."""
    system = [SYSTEM]
    tools = list(TOOLS)
    if variant in ("edited", "reordered"):
        system = [SYSTEM + " Today is 2026-11-30T08:00:00Z."]
    if variant == "reordered":
        tools.reverse()
    return convo.Prefix(model=MODEL, system=system, tools=tools)


#: (prefix variant, user text, the reason a long-lived session names).
SCENARIO = [
    ("base", "What is a breakpoint?", "cold"),
    ("base", "And the lookback?", "hit"),
    ("edited", "What changed?", "system_changed"),
    ("edited", "Say more.", "hit"),
    ("reordered", "And now?", "tools_changed"),
    ("reordered", "Thanks.", "hit"),
]


def outcome_of(reply: convo.Reply) -> dict[str, Any]:
    p = reply.cache.predicted
    return {
        "predicted": [p.cache_read, p.cache_write_5m, p.cache_write_1h, p.input, p.reason],
        "detail": p.detail,
        "observed": [reply.usage.cache_read, reply.usage.cache_write, reply.usage.input],
        "reason": reply.reason,
    }


# -- backends ---------------------------------------------------------------------------


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the shared Redis; its keys deleted after."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        service_missing("no Redis server at 127.0.0.1:6379")
    prefix = f"convo-test:store:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


def make_store(kind: str, request: pytest.FixtureRequest, **options: Any) -> ConversationStore:
    if kind == "sqlite":
        tmp: Path = request.getfixturevalue("tmp_path")
        return SQLiteStore(tmp / "conversations.sqlite3", **options)
    if kind == "redis":
        return RedisStore(REDIS_URL, key_prefix=request.getfixturevalue("redis_prefix"), **options)
    return PostgresStore(request.getfixturevalue("pg_url"), **options)


BACKENDS = ["sqlite", "redis", "postgres"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> Iterator[ConversationStore]:
    """One store per backend."""
    with make_store(request.param, request) as opened:
        yield opened


# -- behaviour --------------------------------------------------------------------------


class TestRestoredLikeLongLived:
    """A conversation restored on every request names busts as one long-lived session.

    The layout is fixed (``adaptive_ttl=False``): the TTL policy decides from the timing
    its registry's pool has seen, and a process per request sees less than a long-lived
    one, so with it the two may lay a turn out differently, each predicting its own bill.
    What is compared here is what the restored tracker knows."""

    def reference(self, client: anthropic.Anthropic) -> list[dict[str, Any]]:
        """One process keeping the conversation's session state (its tracker) alive; a
        new prefix needs a new Session object, which takes the tracker over."""
        registry = convo.WarmRegistry()
        results, session = [], None
        for variant, text, _ in SCENARIO:
            prefix = prefix_for(variant)
            if session is None or session.prefix.fingerprint != prefix.fingerprint:
                session = convo.Session(
                    prefix,
                    client=client,
                    ledger=False,
                    registry=registry,
                    adaptive_ttl=False,
                    messages=session.history if session else (),
                    _tracker=session.tracker if session else None,
                )
            results.append(outcome_of(session.send(text)))
        return results

    def test_reference_names_each_bust(self, client: anthropic.Anthropic) -> None:
        """The long-lived reference itself: cold, hit, system_changed, hit, tools_changed, hit."""
        assert [r["reason"] for r in self.reference(client)] == [s[2] for s in SCENARIO]

    def test_fresh_session_per_turn(
        self, store: ConversationStore, client: anthropic.Anthropic, emulator: RunningEmulator
    ) -> None:
        """A fresh Session per turn from the store predicts exactly what the long-lived one
        does (every figure and reason), on every backend."""
        expected = self.reference(client)
        emulator.reset()
        got = []
        for variant, text, _ in SCENARIO:
            with store.session(
                "conv-1",
                prefix_for(variant),
                client=client,
                ledger=False,
                registry=convo.WarmRegistry(),
                adaptive_ttl=False,
            ) as session:
                got.append(outcome_of(session.send(text)))
        assert got == expected
        assert store.revision("conv-1") == len(SCENARIO)

    @pytest.mark.slow
    def test_separate_processes(
        self, tmp_path: Path, client: anthropic.Anthropic, emulator: RunningEmulator
    ) -> None:
        """Each turn served by its own Python process restoring from a SQLite file gives
        the long-lived session's predictions and reasons, including the named busts."""
        expected = self.reference(client)
        emulator.reset()
        script = tmp_path / "turn.py"
        script.write_text(WORKER)
        db = tmp_path / "c.sqlite3"
        got = []
        for variant, text, _ in SCENARIO:
            done = subprocess.run(
                [sys.executable, str(script), emulator.base_url, str(db), variant, text],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=Path(__file__).parent.parent,
            )
            assert done.returncode == 0, done.stderr
            got.append(json.loads(done.stdout.splitlines()[-1]))
        assert got == expected
        assert [g["reason"] for g in got] == [s[2] for s in SCENARIO]
        assert got[2]["detail"] == "static"


WORKER = textwrap.dedent(
    f"""
    import json, sys
    sys.path.insert(0, ".")
    import anthropic, convo
    from convo.store import SQLiteStore
    from tests.test_store import prefix_for, outcome_of

    base_url, db, variant, text = sys.argv[1:]
    client = anthropic.Anthropic(base_url=base_url, api_key={API_KEY!r}, max_retries=0)
    with SQLiteStore(db).session("conv-web", prefix_for(variant), client=client,
                                 ledger=False, adaptive_ttl=False) as session:
        reply = session.send(text)
    print(json.dumps(outcome_of(reply)))
    """
)


class TestOwnHistory:
    """An application that keeps the history itself passes messages=; the stored tracker
    names what changed."""

    def test_edited_old_message(self, tmp_path: Path, client: anthropic.Anthropic) -> None:
        """An edited old message is messages_changed at its index, not a hit."""
        store = SQLiteStore(tmp_path / "h.sqlite3")
        kwargs: dict[str, Any] = {"client": client, "ledger": False}
        for text in ("first question", "second question"):
            with store.session("conv-h", prefix_for("base"), **kwargs) as session:
                session.send(text)
                history = session.history
        history[2] = {"role": "user", "content": "second question, edited"}
        with store.session("conv-h", prefix_for("base"), messages=history, **kwargs) as session:
            reply = session.send("third question")
        assert reply.reason == "messages_changed"
        assert reply.cache.message_index == 2
        assert reply.cache.exact


class TestConcurrency:
    """Two requests on one conversation are serialised, or refused with a clear error."""

    def test_serialised(self, store: ConversationStore, client: anthropic.Anthropic) -> None:
        """Two threads on one id each add a turn; both turns are kept, one after the other."""
        prefix = prefix_for("base")
        inside = threading.Event()
        order: list[str] = []

        def turn(text: str, hold: float) -> None:
            with store.session("conv-c", prefix, client=client, ledger=False) as session:
                inside.set()
                order.append(f"in {text}")
                session.send(text)
                time.sleep(hold)
                order.append(f"out {text}")

        failures: list[BaseException] = []

        def in_thread() -> None:
            try:
                turn("one", 0.3)
            except BaseException as error:
                failures.append(error)
                inside.set()

        first = threading.Thread(target=in_thread)
        first.start()
        inside.wait(10)
        turn("two", 0)
        first.join()
        assert failures == []
        assert order == ["in one", "out one", "in two", "out two"]
        state = store.load("conv-c")
        assert state is not None
        assert [m["content"][0].get("text") for m in state.messages[::2]] == ["one", "two"]
        assert store.revision("conv-c") == 2

    def test_busy(self, store: ConversationStore, client: anthropic.Anthropic) -> None:
        """A request that cannot get the conversation within its timeout is refused."""
        held = store.acquire("conv-b")
        try:
            started = time.monotonic()
            with pytest.raises(ConversationBusy, match="in use by another request") as caught:  # noqa: SIM117
                with store.session("conv-b", prefix_for("base"), client=client, timeout=0.2):
                    pass
            assert 0.2 <= time.monotonic() - started < 5
            assert caught.value.conversation_id == "conv-b"
            assert isinstance(caught.value, convo.ConvoError)
        finally:
            store.release("conv-b", held.token)
        with store.session("conv-b", prefix_for("base"), client=client, ledger=False):
            pass  # free again once released

    def test_expired_lease_cannot_overwrite(
        self, request: pytest.FixtureRequest, client: anthropic.Anthropic
    ) -> None:
        """A lease that outlived its expiry lets another request in, but the late save is
        refused rather than overwriting that request's turn."""
        for kind in BACKENDS:
            with make_store(kind, request, lease_s=0.05) as short:
                slow = short.acquire("conv-x")
                time.sleep(0.1)
                with short.session("conv-x", prefix_for("base"), client=client, ledger=False) as s:
                    s.send("fast")
                late = convo.Session(
                    prefix_for("base"), client=client, ledger=False, conversation_id="conv-x"
                )
                with pytest.raises(ConversationConflict, match="another writer"):
                    short.save(slow, late)
                state = short.load("conv-x")
                assert state is not None
                assert len(state.messages) == 2, kind


class TestAsync:
    """store.async_session: the same for AsyncSession, without blocking the event loop."""

    async def test_two_requests_at_once(
        self, store: ConversationStore, async_client: anthropic.AsyncAnthropic
    ) -> None:
        """Two tasks on one conversation: served one after the other, both turns kept, and
        the loop keeps running while the second waits for the lease."""
        import asyncio

        prefix = prefix_for("base")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async def turn(text: str) -> str:
            async with store.async_session(
                "conv-a", prefix, client=async_client, ledger=False, registry=convo.WarmRegistry()
            ) as session:
                reply = await session.send(text)
                await asyncio.sleep(0.2)
                return reply.reason

        background = asyncio.create_task(ticker())
        try:
            reasons = await asyncio.gather(turn("one"), turn("two"))
        finally:
            background.cancel()
        assert sorted(reasons) == ["cold", "hit"]
        assert ticks >= 20  # the loop ran while one task held the conversation
        state = store.load("conv-a")
        assert state is not None
        assert len(state.messages) == 4

    async def test_cancelled_acquire_leaves_no_lease(self, store: ConversationStore) -> None:
        """An acquire_async cancelled while waiting, or at any point of taking a free
        lease, leaves the conversation free."""
        import asyncio

        held = store.acquire("conv-w")
        waiting = asyncio.create_task(store.acquire_async("conv-w", timeout=10))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        store.release("conv-w", held.token)
        for delay in (0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02):
            task = asyncio.create_task(store.acquire_async("conv-w"))
            await asyncio.sleep(delay)
            task.cancel()
            try:
                stored = await task
            except asyncio.CancelledError:
                pass
            else:
                store.release("conv-w", stored.token)  # it finished before the cancel
            free = await store.acquire_async("conv-w", timeout=0.5)
            store.release("conv-w", free.token)


class TestState:
    """What is stored, and what is not."""

    def test_round_trip(self, tmp_path: Path, client: anthropic.Anthropic) -> None:
        """History, tracker entries, last message id, gaps and stats come back as saved."""
        store = SQLiteStore(tmp_path / "s.sqlite3")
        with store.session("conv-r", prefix_for("base"), client=client, ledger=False) as s:
            s.send("one")
            first = s.send("two")
            before = (s.history, s.tracker.entries(), s.stats, s._core._gaps)
        with store.session("conv-r", prefix_for("base"), client=client, ledger=False) as s:
            assert (s.history, s.tracker.entries(), s.stats, s._core._gaps) == before
            assert s._core._last_message_id == first.message.id
            assert s.tracker.last is not None
            assert s.tracker.last.reason == "hit"

    def test_a_routed_conversation_goes_on_from_its_model(
        self, tmp_path: Path, client: anthropic.Anthropic
    ) -> None:
        """A routed conversation restored in a fresh session is on the model it left on,
        with what its turns showed the router; its next turn reads that model's cache."""
        router = convo.Router({"small": "claude-haiku-4-5", "large": "claude-opus-4-6"})
        prefix = convo.Prefix(model="claude-opus-4-6", system=[SYSTEM * 4])
        store = SQLiteStore(tmp_path / "s.sqlite3")
        options: dict[str, Any] = {"client": client, "ledger": False, "router": router}
        with store.session("conv-routed", prefix, **options) as s:
            for tier in ("large", "small", "small", "small", "small"):
                last = s.send(f"A {tier} question, asked at some length. " * 12, tier=tier)
            assert last.route is not None
            left_on, shown = s.prefix.model, s._core.route_state
        assert left_on == "claude-haiku-4-5"  # the run of easy turns moved down
        with store.session("conv-routed", prefix, **options) as s:
            assert s.prefix.model == left_on
            assert s._core.route_state == shown
            reply = s.send("One more small one.", tier="small")
        assert reply.route is not None
        assert reply.route.model == left_on
        assert reply.reason == "hit"

    def test_no_api_key(self, tmp_path: Path, emulator: RunningEmulator) -> None:
        """The API key never reaches the stored state."""
        planted = "sk-ant-PLANTED-" + uuid.uuid4().hex
        with anthropic.Anthropic(base_url=emulator.base_url, api_key=planted) as c:
            store = SQLiteStore(tmp_path / "k.sqlite3")
            with store.session("conv-k", prefix_for("base"), client=c, ledger=False) as s:
                s.send("hello")
        raw = (tmp_path / "k.sqlite3").read_bytes() + b"".join(
            p.read_bytes() for p in tmp_path.glob("k.sqlite3*")
        )
        assert planted.encode() not in raw
        assert planted[-12:].encode() not in raw

    def test_newer_format_refused(self) -> None:
        """A state written by a newer convo is refused with a message, not misread."""
        with pytest.raises(ValueError, match="format 99"):
            ConversationState.from_json('{"format": 99}')

    def test_bad_conversation_id(self, tmp_path: Path) -> None:
        """An empty conversation id is refused before anything is locked."""
        store = SQLiteStore(tmp_path / "o.sqlite3")
        with pytest.raises(ValueError, match="non-empty"):
            store.acquire("")


class TestOpen:
    """open_store picks the backend from the URL."""

    def test_urls(self, tmp_path: Path, redis_prefix: str, pg_url: str) -> None:
        """A path and sqlite:/// open SQLite; redis:// Redis; postgresql:// PostgreSQL."""
        assert isinstance(open_store(tmp_path / "a.db"), SQLiteStore)
        assert isinstance(open_store(f"sqlite:///{tmp_path}/b.db"), SQLiteStore)
        assert isinstance(open_store(REDIS_URL, key_prefix=redis_prefix), RedisStore)
        with open_store(pg_url) as pg:
            assert isinstance(pg, PostgresStore)
        with pytest.raises(ValueError, match="unknown store URL"):
            open_store("mysql://x")

    def test_default_path(self) -> None:
        """With no URL the store is a SQLite file under $CONVO_HOME."""
        import os

        store = open_store()
        assert isinstance(store, SQLiteStore)
        assert str(store.path).startswith(os.environ["CONVO_HOME"])

    def test_backend_failure(self) -> None:
        """An unreachable backend is a StoreError naming the conversation."""
        store = RedisStore("redis://127.0.0.1:1/0")
        with pytest.raises(StoreError, match="conv-z") as caught:
            store.load("conv-z")
        assert caught.value.conversation_id == "conv-z"

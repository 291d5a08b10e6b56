"""Ledger: append-only rows, background batches, migrations, queries, backends."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convo.errors import LedgerError
from convo.ledger import Ledger, LedgerRow
from convo.ledger.backends import SQLiteBackend, redact
from convo.ledger.schema import SCHEMA_VERSION, SQLITE, migration_statements
from convo.pricing import price
from convo.usage import Usage

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.timezone.utc)
MISSION = Usage(input=3, cache_read=9390, cache_write_5m=58869, output=1021)
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _row(i: int = 0, **fields: Any) -> LedgerRow:
    fields.setdefault("time", T0 + dt.timedelta(hours=i))
    fields.setdefault("session_id", f"s{i % 2}")
    fields.setdefault("conversation_id", f"c{i % 3}")
    model = fields.pop("model", "claude-sonnet-4-6")
    usage = fields.pop("usage", MISSION)
    return LedgerRow.build(usage, price(usage, model, at=T0), model=model, **fields)


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    """An in-memory SQLite ledger, closed after the test."""
    with Ledger.open(":memory:") as led:
        yield led


def _pg_available() -> bool:
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=2).close()
    except Exception:
        return False
    return True


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL on a fresh schema, dropped after the test."""
    if not _pg_available():
        pytest.skip("no PostgreSQL server at 127.0.0.1:5432")
    import psycopg

    schema = f"convo_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


class TestOpen:
    @pytest.mark.parametrize("form", ["path", "sqlite:///", "pathlib"])
    def test_file_forms(self, tmp_path: Path, form: str) -> None:
        """A plain path, sqlite:///path and a Path all open the same SQLite file."""
        target = tmp_path / "sub" / "l.db"
        url: Any = {"path": str(target), "sqlite:///": f"sqlite:///{target}", "pathlib": target}
        with Ledger.open(url[form]) as led:
            led.append(_row())
        assert sqlite3.connect(target).execute("SELECT COUNT(*) FROM convo_usage").fetchone() == (
            1,
        )

    def test_wal_mode(self, tmp_path: Path) -> None:
        """A file ledger runs in WAL mode."""
        with Ledger.open(tmp_path / "l.db"):
            mode = sqlite3.connect(tmp_path / "l.db").execute("PRAGMA journal_mode").fetchone()
        assert mode == ("wal",)

    def test_default_under_convo_home(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Ledger.default() writes under $CONVO_HOME."""
        monkeypatch.setenv("CONVO_HOME", str(tmp_path))
        with Ledger.default() as led:
            assert led.where == str(tmp_path / "ledger.sqlite3")

    def test_unknown_scheme(self) -> None:
        """An unsupported URL scheme is a ValueError naming the supported ones."""
        with pytest.raises(ValueError, match="postgresql://"):
            Ledger.open("mysql://host/db")

    def test_unopenable_path(self, tmp_path: Path) -> None:
        """A path that cannot be a database is a LedgerError."""
        (tmp_path / "dir.db").mkdir()
        with pytest.raises(LedgerError, match=r"dir\.db"):
            Ledger.open(tmp_path / "dir.db")

    def test_redact_password(self) -> None:
        """A URL's password never appears in where/logs."""
        assert redact("postgresql://u:s3cret@h/db") == "postgresql://u:***@h/db"


class TestAppend:
    def test_round_trip(self, ledger: Ledger) -> None:
        """A row read back equals the row appended (cost to the nano-dollar)."""
        row = _row(request_id="req_1", latency_ms=12.5, cache_reason="cold", attempts=2)
        ledger.append(row)
        assert ledger.rows() == [row]
        assert row.cost_usd == Decimal("0.23889975")

    def test_text_dropped_by_default(self, ledger: Ledger) -> None:
        """Prompt and completion text are not stored unless store_text is on."""
        ledger.append(_row(prompt_text="secret plan", completion_text="ok"))
        (back,) = ledger.rows()
        assert (back.prompt_text, back.completion_text) == (None, None)

    def test_text_kept_when_enabled(self) -> None:
        """With store_text=True the text is kept."""
        with Ledger.open(":memory:", store_text=True) as led:
            led.append(_row(prompt_text="hi", completion_text="hello"))
            assert led.rows()[0].prompt_text == "hi"

    def test_append_type_checked(self, ledger: Ledger) -> None:
        """Appending something other than a LedgerRow is a TypeError."""
        with pytest.raises(TypeError, match="LedgerRow"):
            ledger.append({"model": "x"})  # type: ignore[arg-type]

    def test_append_after_close(self) -> None:
        """Appending to a closed ledger is a LedgerError; close is idempotent."""
        led = Ledger.open(":memory:")
        led.close()
        led.close()
        with pytest.raises(LedgerError, match="closed"):
            led.append(_row())

    def test_naive_time_rejected(self) -> None:
        """A naive datetime is a ValueError saying to use UTC."""
        with pytest.raises(ValueError, match="timezone-aware"):
            LedgerRow(model="m", time=dt.datetime(2026, 1, 1))

    def test_many_threads(self, ledger: Ledger) -> None:
        """Appends from many threads at once are all kept."""

        def work(t: int) -> None:
            for i in range(500):
                ledger.append(_row(i, request_id=f"{t}-{i}"))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert ledger.total().requests == 4000

    async def test_append_on_event_loop(self, ledger: Ledger) -> None:
        """append() from tasks does not block the loop; aflush() commits them."""

        async def task(k: int) -> None:
            for i in range(200):
                ledger.append(_row(i, request_id=f"{k}-{i}"))
                await asyncio.sleep(0)

        await asyncio.gather(*(task(k) for k in range(5)))
        await ledger.aflush()
        assert ledger.total().requests == 1000


class FlakyBackend(SQLiteBackend):
    """A SQLite backend whose first *fail* inserts raise, as a dropped connection would."""

    def __init__(self, fail: int) -> None:
        super().__init__(":memory:")
        self.fail = fail

    def insert(self, rows: Sequence[tuple[Any, ...]], outcomes: Sequence[tuple[Any, ...]]) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise LedgerError("simulated outage")
        super().insert(rows, outcomes)


class TestFailures:
    def test_failed_batch_kept_and_retried(self) -> None:
        """A batch that fails to commit is reported by flush, kept, and written later."""
        led = Ledger(FlakyBackend(fail=1))
        for i in range(10):
            led.append(_row(i))
        with pytest.raises(LedgerError, match="simulated outage"):
            led.flush()
        led.flush()
        assert led.total().requests == 10
        led.close()


class TestMigrations:
    def test_v1_file_upgraded_additively(self, tmp_path: Path) -> None:
        """A version-1 ledger keeps its rows and gains the new columns and tables."""
        path = tmp_path / "old.db"
        conn = sqlite3.connect(path)
        for statement in migration_statements(SQLITE, 0, 1):
            conn.execute(statement)
        conn.execute("CREATE TABLE convo_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO convo_meta VALUES ('schema_version', '1')")
        conn.execute(
            "INSERT INTO convo_usage (ts, model, input) VALUES (?, 'claude-opus-4-6', 7)",
            (T0.timestamp(),),
        )
        conn.commit()
        conn.close()
        with Ledger.open(path) as led:
            assert led.schema_version_found == 1
            (old,) = led.rows()
            assert (old.input, old.ttl_split_assumed, old.prompt_text) == (7, False, None)
            led.append(_row())
            assert led.total().requests == 2
        version = sqlite3.connect(path).execute("SELECT value FROM convo_meta").fetchone()
        assert version == (str(SCHEMA_VERSION),)

    def test_reopen_is_noop(self, tmp_path: Path) -> None:
        """Opening an up-to-date ledger applies nothing."""
        Ledger.open(tmp_path / "l.db").close()
        with Ledger.open(tmp_path / "l.db") as led:
            assert led.schema_version_found == SCHEMA_VERSION


def _fill(led: Ledger) -> None:
    models = ["claude-sonnet-4-6", "claude-opus-4-6", "claude-imaginary-9"]
    for i in range(30):
        usage = MISSION if i % 3 else Usage(input=100, cache_read=0, cache_write_1h=2000, output=5)
        status = "error" if i == 29 else "ok"
        led.append(
            _row(
                i,
                model=models[i % 3],
                usage=usage,
                status=status,
                cache_reason=["hit", "cold", "system_changed", "expired", "hit"][i % 5],
                prefix_fingerprint=f"fp{i % 4}",
            )
        )


class TestQueries:
    def test_total_matches_rows(self, ledger: Ledger) -> None:
        """The overall total equals sums over the rows appended."""
        _fill(ledger)
        rows = ledger.rows()
        t = ledger.total()
        assert t.requests == 30 == len(rows)
        assert t.usage == sum((r.usage for r in rows), Usage.zero())
        assert t.cost_usd == sum(r.cost_usd for r in rows if r.cost_usd is not None)
        assert t.unpriced == 10  # the imaginary model
        assert t.errors == 1
        assert t.rate_limit_tokens == sum(r.rate_limit_tokens for r in rows)

    def test_empty_total(self, ledger: Ledger) -> None:
        """An empty ledger totals to zeros, with no hit rate."""
        t = ledger.total()
        assert (t.requests, t.cost_usd, t.token_hit_rate, t.request_hit_rate) == (
            0,
            Decimal(0),
            None,
            None,
        )

    @pytest.mark.parametrize(
        ("by", "keys"),
        [
            ("model", ["claude-imaginary-9", "claude-opus-4-6", "claude-sonnet-4-6"]),
            ("session", ["s0", "s1"]),
            ("prefix", ["fp0", "fp1", "fp2", "fp3"]),
            ("day", ["2026-11-01", "2026-11-02"]),
        ],
    )
    def test_group_by(self, ledger: Ledger, by: Any, keys: list[str]) -> None:
        """Totals group by model, session, prefix and UTC day, and add up to the whole."""
        _fill(ledger)
        groups = ledger.totals(by=by)
        assert [g.key for g in groups] == keys
        assert sum(g.requests for g in groups) == 30
        assert sum(g.cost_usd for g in groups) == ledger.total().cost_usd

    def test_filters(self, ledger: Ledger) -> None:
        """since, until, model and session narrow every query."""
        _fill(ledger)
        assert ledger.total(since=T0 + dt.timedelta(hours=20)).requests == 10
        assert ledger.total(until=T0 + dt.timedelta(hours=5)).requests == 5
        assert ledger.total(model="claude-opus-4-6").requests == 10
        assert ledger.total(session="s1", model="claude-opus-4-6").requests == 5

    def test_naive_since_rejected(self, ledger: Ledger) -> None:
        """A naive since is a ValueError."""
        with pytest.raises(ValueError, match="timezone-aware"):
            ledger.total(since=dt.datetime(2026, 1, 1))

    def test_hit_rates(self, ledger: Ledger) -> None:
        """Token hit rate is reads over total input; request hit rate counts ok requests."""
        _fill(ledger)
        t = ledger.total()
        assert t.token_hit_rate == t.cache_read / t.total_input
        hits = sum(1 for r in ledger.rows() if r.cache_read > 0 and r.status == "ok")
        assert t.request_hit_rate == hits / 29

    def test_top_busts(self, ledger: Ledger) -> None:
        """Top busts count every non-hit reason, most frequent first."""
        _fill(ledger)
        busts = ledger.top_busts()
        assert {b.reason: b.requests for b in busts} == {
            "cold": 6,
            "system_changed": 6,
            "expired": 6,
        }
        assert ledger.top_busts(limit=1)[0].reason == "cold"

    def test_cost_per_successful_task(self, ledger: Ledger) -> None:
        """Spend on marked tasks over successes; the latest mark wins; unmarked left out."""
        _fill(ledger)
        ledger.mark_outcome("c0", "failure")
        ledger.mark_outcome("c0", "success")
        ledger.mark_outcome("c1", "failure")
        tc = ledger.task_cost()
        rows = ledger.rows()
        spend = sum(r.cost_usd or 0 for r in rows if r.task_id in ("c0", "c1"))
        assert (tc.successful, tc.failed, tc.cost_usd) == (1, 1, spend)
        assert tc.per_success == spend

    def test_outcome_on_row(self, ledger: Ledger) -> None:
        """An outcome given at append time counts without a mark."""
        ledger.append(_row(task_id="t1", outcome="success"))
        assert ledger.task_cost().successful == 1

    def test_bad_outcome(self, ledger: Ledger) -> None:
        """An outcome other than success/failure is a ValueError."""
        with pytest.raises(ValueError, match="success"):
            ledger.mark_outcome("t", "maybe")  # type: ignore[arg-type]


usages = st.builds(
    Usage,
    input=st.integers(0, 10**6),
    cache_read=st.integers(0, 10**6),
    cache_write_5m=st.integers(0, 10**6),
    cache_write_1h=st.integers(0, 10**6),
    output=st.integers(0, 10**5),
)


class TestProperties:
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(
            st.tuples(
                usages,
                st.sampled_from(
                    ["claude-sonnet-4-6", "claude-haiku-4-5", "claude-3-5-haiku", "nope"]
                ),
            ),
            max_size=25,
        )
    )
    def test_ledger_sums_equal_totals(self, items: list[tuple[Usage, str]]) -> None:
        """Whatever is appended, the ledger's totals equal the sums of the Usage and Cost."""
        with Ledger.open(":memory:") as led:
            costs = []
            for usage, model in items:
                cost = price(usage, model, at=T0)
                costs.append(cost)
                led.append(LedgerRow.build(usage, cost, model=model, time=T0))
            t = led.total()
        assert t.usage == sum((u for u, _ in items), Usage.zero())
        assert t.cost_usd == sum(
            (c.usd.quantize(Decimal("1e-9")) for c in costs if c.usd is not None), Decimal(0)
        )
        assert t.rate_limit_tokens == sum(c.rate_limit_tokens for c in costs)
        assert t.unpriced == sum(1 for c in costs if c.usd is None)


class TestPostgres:
    def test_same_answers_as_sqlite(self, pg_url: str) -> None:
        """A PostgreSQL ledger stores and reports exactly what SQLite does."""
        with Ledger.open(pg_url) as pg, Ledger.open(":memory:") as lite:
            for led in (pg, lite):
                _fill(led)
                led.mark_outcome("c2", "success")
            assert pg.rows() == lite.rows()
            for by in (None, "model", "day", "session", "prefix"):
                assert pg.totals(by=by) == lite.totals(by=by)  # type: ignore[arg-type]
            assert pg.top_busts() == lite.top_busts()
            assert pg.task_cost() == lite.task_cost()

    def test_many_threads(self, pg_url: str) -> None:
        """Two PostgreSQL ledgers fed from several threads lose no row."""
        leds = [Ledger.open(pg_url), Ledger.open(pg_url)]

        def work(k: int) -> None:
            for i in range(300):
                leds[k % 2].append(_row(i, request_id=f"{k}-{i}"))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for led in leds:
            led.flush()
        assert leds[0].total().requests == 1200
        for led in leds:
            led.close()

    def test_where_hides_password(self) -> None:
        """The ledger's where never shows a password, even when connecting fails."""
        with pytest.raises(LedgerError) as info:
            Ledger.open("postgresql://postgres:hunter2@127.0.0.1:1/none")
        assert "hunter2" not in str(info.value)

"""The ledger's writer thread: rows that arrive spread out share a transaction; a flush or a
stop never waits out the linger, and nothing is lost."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import pytest

from convo.ledger import LedgerRow
from convo.ledger.backends import SQLiteBackend
from convo.ledger.writer import BatchWriter
from convo.usage import Usage

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.timezone.utc)
#: Longer than any test may take: a test that waited it out would time out instead.
LONG = 30.0


class CountingBackend(SQLiteBackend):
    """An in-memory SQLite backend that counts its transactions."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.migrate()
        self.commits: list[int] = []

    def insert(self, rows: Sequence[tuple[Any, ...]], outcomes: Sequence[tuple[Any, ...]]) -> None:
        super().insert(rows, outcomes)
        self.commits.append(len(rows))

    def count(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM convo_usage")[0][0])


def _row(i: int) -> LedgerRow:
    return LedgerRow.build(
        Usage(input=i + 1, output=1), model="claude-sonnet-4-6", time=T0, session_id=f"s{i}"
    )


@pytest.fixture
def backend() -> CountingBackend:
    return CountingBackend()


class TestLinger:
    """A row that wakes the writer waits a little for the rows behind it."""

    def test_rows_put_together_commit_together(self, backend: CountingBackend) -> None:
        """Rows queued while the writer lingers go in one transaction."""
        writer = BatchWriter(backend, linger=LONG)
        for i in range(20):
            writer.put(_row(i))
        started = time.perf_counter()
        writer.flush(timeout=LONG)
        assert time.perf_counter() - started < LONG / 3  # the flush cut the linger short
        assert backend.commits == [20]
        assert backend.count() == 20
        writer.stop()

    def test_a_lone_row_is_written_after_the_linger(self, backend: CountingBackend) -> None:
        """Without a flush, a row still reaches the store once the linger has passed."""
        writer = BatchWriter(backend, linger=0.01)
        writer.put(_row(0))
        deadline = time.monotonic() + 10
        while writer.written < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert writer.written == 1
        assert backend.count() == 1
        writer.stop()

    def test_stop_writes_everything_at_once(self, backend: CountingBackend) -> None:
        """stop() cuts a linger short and writes every queued row before the thread ends."""
        writer = BatchWriter(backend, linger=LONG)
        for i in range(50):
            writer.put(_row(i))
        started = time.perf_counter()
        writer.stop(timeout=LONG)
        assert time.perf_counter() - started < LONG / 3
        assert backend.count() == 50
        assert sum(backend.commits) == 50

    async def test_flush_async_cuts_the_linger_short(self, backend: CountingBackend) -> None:
        """An awaited flush does not wait out the linger either."""
        writer = BatchWriter(backend, linger=LONG)
        writer.put(_row(0))
        writer.put(_row(1))
        await asyncio.wait_for(writer.flush_async(), timeout=LONG / 3)
        assert backend.count() == 2
        writer.stop()

    def test_zero_linger_commits_what_is_queued(self, backend: CountingBackend) -> None:
        """linger=0 keeps the old behaviour: every row is written, no waiting."""
        writer = BatchWriter(backend, linger=0)
        for i in range(10):
            writer.put(_row(i))
        writer.flush(timeout=LONG)
        assert backend.count() == 10
        writer.stop()

    def test_negative_linger_refused(self, backend: CountingBackend) -> None:
        """A negative linger is misuse."""
        with pytest.raises(ValueError, match="linger"):
            BatchWriter(backend, linger=-1)

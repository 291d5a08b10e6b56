"""Ledger under load: many processes and threads, and a writer killed mid-batch."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from convo.ledger import Ledger

pytestmark = pytest.mark.slow

#: Appends ``rows`` rows from ``threads`` threads into one Ledger, then exits cleanly
#: without calling close(): the exit itself must flush.
WORKER = textwrap.dedent(
    """
    import sys, threading
    from convo.ledger import Ledger, LedgerRow

    path, proc, threads, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ledger = Ledger.open(path, batch_size=500)

    def work(t):
        n = rows // threads + (1 if t < rows % threads else 0)
        for i in range(n):
            ledger.append(LedgerRow(model="claude-haiku-4-5", session_id=f"p{proc}",
                                    request_id=f"p{proc}-t{t}-{i}", input=1, output=2))

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    """
)

#: Appends rows forever; after each flush prints how many rows are durable so far.
KILLED = textwrap.dedent(
    """
    import sys
    from convo.ledger import Ledger, LedgerRow

    ledger = Ledger.open(sys.argv[1], batch_size=200)
    i = 0
    while True:
        for _ in range(1000):
            ledger.append(LedgerRow(model="claude-haiku-4-5", request_id=str(i), input=i))
            i += 1
        ledger.flush()
        print(i, flush=True)
    """
)


def _python(code: str, *args: object) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _check(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    return conn


class TestManyWriters:
    def test_8_processes_4_threads_50000_rows(self, tmp_path: Path) -> None:
        """8 processes x 4 threads appending 50,000 rows in total lose none."""
        path = tmp_path / "stress.db"
        procs = [_python(WORKER, path, p, 4, 6250) for p in range(8)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        conn = _check(path)
        count, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM convo_usage"
        ).fetchone()
        assert (count, distinct) == (50_000, 50_000)
        per_process = dict(conn.execute("SELECT session_id, COUNT(*) FROM convo_usage GROUP BY 1"))
        assert per_process == {f"p{p}": 6250 for p in range(8)}


class TestKilledWriter:
    def test_sigkill_loses_at_most_unflushed(self, tmp_path: Path) -> None:
        """A writer killed mid-batch keeps every flushed row and leaves an intact file."""
        path = tmp_path / "killed.db"
        durable = 0
        with _python(KILLED, path) as proc:
            assert proc.stdout is not None
            for _ in range(5):
                line = proc.stdout.readline()
                assert line, proc.stderr.read() if proc.stderr else ""
                durable = int(line)
            # Let it get into the middle of the next batches, then kill without warning.
            time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        conn = _check(path)
        count, max_id = conn.execute("SELECT COUNT(*), MAX(input) FROM convo_usage").fetchone()
        assert count >= durable
        # Rows are committed in order, so what survived is a prefix of what was appended.
        assert max_id == count - 1
        # Whatever was lost was appended after the last flush.
        assert conn.execute("SELECT COUNT(DISTINCT input) FROM convo_usage").fetchone() == (count,)
        # The roll-up moved in the same transactions: it sums exactly the surviving rows.
        assert conn.execute(
            "SELECT SUM(requests), SUM(input), (SELECT last_id FROM convo_rollup_mark) "
            "FROM convo_rollup"
        ).fetchone() == (count, count * (count - 1) // 2, count)
        conn.close()
        with Ledger.open(path) as led:
            assert led.total().input == count * (count - 1) // 2
            days: dict[str, int] = {}
            for row in led.rows():
                day = row.time.strftime("%Y-%m-%d")
                days[day] = days.get(day, 0) + row.input
            assert {t.key: t.input for t in led.totals(by="day")} == days

    def test_clean_exit_without_close_flushes(self, tmp_path: Path) -> None:
        """A process that exits normally without close() still writes every row."""
        path = tmp_path / "exit.db"
        proc = _python(WORKER, path, 0, 2, 3000)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert _check(path).execute("SELECT COUNT(*) FROM convo_usage").fetchone() == (3000,)

"""Storage backends: SQLite (default, WAL) and PostgreSQL (psycopg 3).

A backend does five things: migrate, insert a batch in one transaction, run a read query,
run the same read query without blocking an event loop (:meth:`Backend.query_async`), close.
SQL is written once with ``?`` placeholders; the PostgreSQL backend rewrites them to ``%s``.
Database exceptions become :class:`convo.errors.LedgerError` here and nowhere else.

Async reads: SQLite has no async driver, so :meth:`SQLiteBackend.query_async` runs the query
in a worker thread (``sqlite3`` releases the GIL while a statement steps). PostgreSQL reads
go through a psycopg ``AsyncConnection`` per event loop, opened on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from convo.errors import LedgerError
from convo.ledger.record import COLUMNS
from convo.ledger.schema import (
    META_TABLE,
    POSTGRES,
    SCHEMA_VERSION,
    SQLITE,
    Dialect,
    migration_statements,
    rollup_catch_up,
)

__all__ = ["Backend", "PostgresBackend", "SQLiteBackend", "redact"]

_INSERT = f"INSERT INTO convo_usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_INSERT_OUTCOME = "INSERT INTO convo_outcomes (ts, task_id, outcome) VALUES (?, ?, ?)"
_GET_VERSION = "SELECT value FROM convo_meta WHERE key = 'schema_version'"
_CATCH_UP = rollup_catch_up(SQLITE)


_SECRET_PARAMETERS = {"password", "sslpassword"}

# Rows converted between two yields to the loop when an async PostgreSQL read is big.
_ASYNC_SLICE = 200


def redact(url: str) -> str:
    """Return *url* with any password replaced by ``***``, safe to log or show.

    Both places libpq takes one are covered: ``user:password@host`` and the
    ``?password=`` / ``?sslpassword=`` query parameters.
    """
    original = parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        parts = parts._replace(netloc=netloc)
    if parts.query:
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        hidden = [(k, "***" if k.lower() in _SECRET_PARAMETERS else v) for k, v in pairs]
        if hidden != pairs:
            parts = parts._replace(query=urllib.parse.urlencode(hidden, safe="*"))
    # Rebuild only what changed: urlunsplit would rewrite "sqlite:///path" as "sqlite:/path".
    return url if parts == original else urllib.parse.urlunsplit(parts)


@contextlib.contextmanager
def _translated(what: str, where: str) -> Iterator[None]:
    """Turn a database failure into a LedgerError that says what was being done, where."""
    try:
        yield
    except LedgerError:
        raise
    except (sqlite3.Error, OSError) as exc:
        raise LedgerError(f"ledger {where}: could not {what}: {exc}") from exc
    except Exception as exc:
        # psycopg is optional, so its base class cannot be named in the except clause above.
        if type(exc).__module__.startswith("psycopg"):
            raise LedgerError(f"ledger {where}: could not {what}: {exc}") from exc
        raise


class Backend(Protocol):
    """What :class:`~convo.ledger.Ledger` needs from a store."""

    dialect: Dialect
    #: Where the ledger lives, with any password redacted.
    where: str

    def migrate(self) -> int:
        """Bring the schema up to date; return the version found before."""

    def insert(self, rows: Sequence[tuple[Any, ...]], outcomes: Sequence[tuple[Any, ...]]) -> None:
        """Insert usage rows and outcome marks in one transaction."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query written with ``?`` placeholders."""

    async def query_async(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """:meth:`query`, awaited: never blocks the running event loop."""

    def close(self) -> None:
        """Close the connection."""


class SQLiteBackend:
    """A SQLite file in WAL mode (or ``:memory:``), safe across threads and processes.

    WAL with ``synchronous=NORMAL``: a committed batch survives the writer process being
    killed; only a power loss can drop the last few commits. Speed over the last
    milliseconds of durability here, because every batch is an fsync otherwise.
    """

    dialect = SQLITE

    def __init__(self, path: str, *, timeout: float = 60.0) -> None:
        self.where = path
        self._lock = threading.Lock()
        with _translated("open", path):
            self._conn = self._connect(path, timeout)
            if path != ":memory:":
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = NORMAL")
                # Checkpoint every ~40 MiB of WAL instead of every ~4 MiB: a 10,000-row
                # batch is more than 1,000 pages, so the default checkpointed (and fsynced)
                # after almost every commit. The price is a larger -wal file between
                # checkpoints, and a longer recovery read after a crash.
                self._conn.execute("PRAGMA wal_autocheckpoint = 10000")
                # Reports scan the table; mapping it saves a copy per page read.
                self._conn.execute("PRAGMA mmap_size = 268435456")
            # The (session_id, ts) index takes each batch's rows at a thousand places; with
            # the default 2 MiB page cache those pages are evicted and read back every
            # batch. 64 MiB is a ceiling, not an allocation: a small ledger never uses it.
            self._conn.execute("PRAGMA cache_size = -65536")
            # A file gets a second connection for reads, so a long report never holds the
            # writer's lock (WAL lets it read while a batch commits). ":memory:" is one
            # database per connection: there reads share the writer's.
            if path == ":memory:":
                self._reader, self._read_lock = self._conn, self._lock
            else:
                self._reader, self._read_lock = self._connect(path, timeout), threading.Lock()
                self._reader.execute("PRAGMA mmap_size = 268435456")

    @staticmethod
    def _connect(path: str, timeout: float) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        return conn

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Cursor]:
        with self._lock, _translated(what, self.where):
            cur = self._conn.cursor()
            # IMMEDIATE takes the write lock up front, so the busy timeout applies to it and
            # two writers never deadlock upgrading from a read lock.
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def migrate(self) -> int:
        with self._write("migrate the schema") as cur:
            cur.execute(META_TABLE)
            found = cur.execute(_GET_VERSION).fetchone()
            version = int(found[0]) if found else 0
            for statement in migration_statements(self.dialect, version):
                cur.execute(statement)
            _set_version(cur, version)
            return version

    def insert(self, rows: Sequence[tuple[Any, ...]], outcomes: Sequence[tuple[Any, ...]]) -> None:
        with self._write("append rows") as cur:
            if rows:
                cur.executemany(_INSERT, rows)
                # The roll-up moves in the same transaction as the rows it sums, so a
                # kill at any point leaves both or neither.
                for statement in _CATCH_UP:
                    cur.execute(statement)
            if outcomes:
                cur.executemany(_INSERT_OUTCOME, outcomes)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock, _translated("read", self.where):
            return self._reader.execute(sql, tuple(params)).fetchall()

    async def query_async(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        # A worker thread: the loop keeps running while SQLite steps (it drops the GIL).
        # Cancelling the await abandons the result; the statement still runs to its end.
        return await asyncio.to_thread(self.query, sql, params)

    def close(self) -> None:
        if self._reader is not self._conn:
            with self._read_lock, _translated("close", self.where):
                self._reader.close()
        with self._lock, _translated("close", self.where):
            self._conn.close()


class PostgresBackend:
    """A PostgreSQL database through psycopg 3 (``pip install "convo[postgres]"``)."""

    dialect = POSTGRES

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise ImportError(
                'a postgresql:// ledger needs psycopg 3: pip install "convo[postgres]"'
            ) from exc
        self.where = redact(url)
        self._url = url
        self._lock = threading.Lock()
        with _translated("connect", self.where):
            self._conn = psycopg.connect(url)
        # Async readers, one per event loop (a psycopg AsyncConnection belongs to the loop
        # it was opened on): id(loop) -> (loop, connection or None, the lock that opens it).
        self._async: dict[int, tuple[asyncio.AbstractEventLoop, Any, asyncio.Lock]] = {}
        self._async_guard = threading.Lock()

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[Any]:
        with self._lock, _translated(what, self.where), self._conn.transaction():
            yield self._conn.cursor()

    def migrate(self) -> int:
        with self._write("migrate the schema") as cur:
            # One migrator at a time across every process; released at commit.
            cur.execute("SELECT pg_advisory_xact_lock(7130301)")
            cur.execute(META_TABLE)
            found = cur.execute(_GET_VERSION).fetchone()
            version = int(found[0]) if found else 0
            for statement in migration_statements(self.dialect, version):
                cur.execute(statement)
            _set_version(cur, version, placeholder="%s")
            return version

    def insert(self, rows: Sequence[tuple[Any, ...]], outcomes: Sequence[tuple[Any, ...]]) -> None:
        with self._write("append rows") as cur:
            if rows:
                # COPY is several times faster than INSERT for a batch.
                with cur.copy(f"COPY convo_usage ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            if outcomes:
                cur.executemany(_INSERT_OUTCOME.replace("?", "%s"), outcomes)
            # The roll-up needs nothing here: the convo_usage_rollup trigger folds each
            # COPY inside this transaction.

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock, _translated("read", self.where):
            try:
                rows: list[tuple[Any, ...]] = self._conn.execute(
                    sql.replace("?", "%s"), tuple(params)
                ).fetchall()
            finally:
                # End the implicit read transaction so the next read sees new commits.
                self._conn.rollback()
            return rows

    async def query_async(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = await self._async_connection()
        try:
            with _translated("read", self.where):
                cur = await conn.execute(sql.replace("?", "%s"), tuple(params))
                # The result is already on the client; turning it into Python values is
                # loop time (~10 µs a row), so a big result is read in slices with a yield
                # between them. A probe saw 30-50 ms stalls reading 5,000 rows at once.
                rows: list[tuple[Any, ...]] = []
                while chunk := await cur.fetchmany(_ASYNC_SLICE):
                    rows.extend(chunk)
                    if len(chunk) == _ASYNC_SLICE:
                        await asyncio.sleep(0)
                return rows
        except BaseException:
            # A cancelled read is psycopg's to clean up: it cancels the query on the server
            # and leaves the connection idle, still shared by the loop's other readers
            # (closing it here failed every read in flight on it). Only a connection that
            # ended up closed or broken is forgotten; the next read opens a fresh one.
            if conn.closed or conn.broken:
                self._drop_async(asyncio.get_running_loop(), conn)
            raise

    async def _async_connection(self) -> Any:
        import psycopg

        loop = asyncio.get_running_loop()
        with self._async_guard:
            # Connections of loops that have closed (asyncio.run returned) are dead weight.
            for key, (other, conn, _) in list(self._async.items()):
                if other.is_closed():
                    del self._async[key]
                    if conn is not None:
                        _finish(conn)
            entry = self._async.get(id(loop))
            if entry is None or entry[0] is not loop:
                entry = (loop, None, asyncio.Lock())
                self._async[id(loop)] = entry
        if entry[1] is not None and not entry[1].closed:
            return entry[1]
        async with entry[2]:
            current = self._async.get(id(loop))
            if current is not None and current[1] is not None and not current[1].closed:
                return current[1]
            with _translated("connect", self.where):
                # Autocommit: every read sees the latest commits, and no transaction is left
                # open between reads.
                conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            with self._async_guard:
                self._async[id(loop)] = (loop, conn, entry[2])
            return conn

    def _drop_async(self, loop: asyncio.AbstractEventLoop, conn: Any) -> None:
        with self._async_guard:
            entry = self._async.get(id(loop))
            if entry is not None and entry[1] is conn:
                self._async[id(loop)] = (loop, None, entry[2])
        _finish(conn)

    def close(self) -> None:
        with self._async_guard:
            readers = [conn for _, conn, _ in self._async.values() if conn is not None]
            self._async.clear()
        for conn in readers:
            _finish(conn)
        with self._lock, _translated("close", self.where):
            self._conn.close()


def _finish(conn: Any) -> None:
    """Close a psycopg connection from any thread or loop: libpq's close, no awaiting."""
    with contextlib.suppress(Exception):
        conn.pgconn.finish()


def _set_version(cur: Any, before: int, *, placeholder: str = "?") -> None:
    if before >= SCHEMA_VERSION:
        return
    p = placeholder
    cur.execute("DELETE FROM convo_meta WHERE key = 'schema_version'")
    cur.execute(
        f"INSERT INTO convo_meta (key, value) VALUES ({p}, {p})",
        ("schema_version", str(SCHEMA_VERSION)),
    )

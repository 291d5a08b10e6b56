"""The default store: one SQLite file, shared by every process on the host (WAL mode)."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import platformdirs

from convo.store.base import ConversationStore

__all__ = ["SQLiteStore"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS convo_conversations ("
    " id TEXT PRIMARY KEY, revision INTEGER NOT NULL, state TEXT NOT NULL,"
    " updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS convo_conversation_locks ("
    " id TEXT PRIMARY KEY, token TEXT NOT NULL, expires_at REAL NOT NULL)",
)


class SQLiteStore(ConversationStore):
    """Conversations in a SQLite file; processes on one host share it.

    Each operation opens its own short connection (safe from any thread or process); the
    lease and the compare-and-set are single statements, atomic under SQLite's lock.

    Args:
        path: The database file. Default: ``$CONVO_HOME/conversations.sqlite3``, else the
            user data directory (``platformdirs.user_data_dir("convo")``).
        lock_timeout, lease_s: See :class:`ConversationStore`.

    .. versionadded:: 0.2
    """

    def __init__(
        self, path: str | Path | None = None, *, lock_timeout: float = 30.0, lease_s: float = 120.0
    ) -> None:
        super().__init__(lock_timeout=lock_timeout, lease_s=lease_s)
        if path is None:
            home = os.environ.get("CONVO_HOME") or platformdirs.user_data_dir("convo")
            path = Path(home) / "conversations.sqlite3"
        self.path = Path(path)
        if str(path) == ":memory:":
            raise ValueError("SQLiteStore needs a file (':memory:' is private to one connection)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            for statement in _SCHEMA:
                conn.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit; each statement below is its own transaction.
        return sqlite3.connect(self.path, timeout=30.0, isolation_level=None)

    def _run(self, sql: str, *args: object) -> sqlite3.Cursor:
        conn = self._connect()
        try:
            return conn.execute(sql, args)
        finally:
            conn.close()

    def _try_lock(self, conversation_id: str, token: str, until: float) -> bool:
        cursor = self._run(
            "INSERT INTO convo_conversation_locks (id, token, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET token = excluded.token, "
            "expires_at = excluded.expires_at WHERE convo_conversation_locks.expires_at < ?",
            conversation_id,
            token,
            until,
            time.time(),
        )
        return cursor.rowcount == 1

    def _unlock(self, conversation_id: str, token: str) -> None:
        self._run(
            "DELETE FROM convo_conversation_locks WHERE id = ? AND token = ?",
            conversation_id,
            token,
        )

    def _read(self, conversation_id: str) -> tuple[int, str] | None:
        conn = self._connect()
        try:
            row = conn.execute(
                "SELECT revision, state FROM convo_conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
        finally:
            conn.close()
        return None if row is None else (int(row[0]), str(row[1]))

    def _write(self, conversation_id: str, text: str, expected: int) -> bool:
        if expected == 0:
            cursor = self._run(
                "INSERT INTO convo_conversations (id, revision, state, updated_at) "
                "VALUES (?, 1, ?, ?) ON CONFLICT (id) DO NOTHING",
                conversation_id,
                text,
                time.time(),
            )
        else:
            cursor = self._run(
                "UPDATE convo_conversations SET revision = revision + 1, state = ?, "
                "updated_at = ? WHERE id = ? AND revision = ?",
                text,
                time.time(),
                conversation_id,
                expected,
            )
        return cursor.rowcount == 1

    def _remove(self, conversation_id: str) -> None:
        self._run("DELETE FROM convo_conversations WHERE id = ?", conversation_id)

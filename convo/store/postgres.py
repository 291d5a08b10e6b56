"""Conversations in PostgreSQL, for processes on many hosts."""

from __future__ import annotations

import threading
import time
from typing import Any

from convo.store.base import ConversationStore

__all__ = ["PostgresStore"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS convo_conversations ("
    " id TEXT PRIMARY KEY, revision BIGINT NOT NULL, state TEXT NOT NULL,"
    " updated_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS convo_conversation_locks ("
    " id TEXT PRIMARY KEY, token TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)",
)


class PostgresStore(ConversationStore):
    """Conversations in PostgreSQL (``psycopg``, the ``postgres`` extra).

    One autocommit connection per store object, used under a lock (a store serves one
    conversation per request; the statements are short). The lease and the compare-and-set
    are single statements. Lease expiry is measured on the clients' clocks: keep hosts in
    NTP sync, or set ``lease_s`` well above any skew.

    Args:
        url: A ``postgresql://`` URL (``?options=-csearch_path%3D...`` picks a schema).
        lock_timeout, lease_s: See :class:`ConversationStore`.

    .. versionadded:: 0.2
    """

    def __init__(self, url: str, *, lock_timeout: float = 30.0, lease_s: float = 120.0) -> None:
        super().__init__(lock_timeout=lock_timeout, lease_s=lease_s)
        self.url = url
        self._lock = threading.Lock()
        self._conn: Any = None
        with self._lock:
            for statement in _SCHEMA:
                self._execute(statement)

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=True)
        return self._conn

    def _execute(self, sql: str, *args: object) -> Any:
        try:
            return self._connection().execute(sql, args)
        except Exception:
            # A broken connection is replaced on the next call.
            if self._conn is not None and self._conn.broken:
                self._conn = None
            raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _try_lock(self, conversation_id: str, token: str, until: float) -> bool:
        with self._lock:
            cursor = self._execute(
                "INSERT INTO convo_conversation_locks (id, token, expires_at) "
                "VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE SET token = excluded.token, "
                "expires_at = excluded.expires_at WHERE convo_conversation_locks.expires_at < %s",
                conversation_id,
                token,
                until,
                time.time(),
            )
            return bool(cursor.rowcount == 1)

    def _unlock(self, conversation_id: str, token: str) -> None:
        with self._lock:
            self._execute(
                "DELETE FROM convo_conversation_locks WHERE id = %s AND token = %s",
                conversation_id,
                token,
            )

    def _read(self, conversation_id: str) -> tuple[int, str] | None:
        with self._lock:
            row = self._execute(
                "SELECT revision, state FROM convo_conversations WHERE id = %s", conversation_id
            ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def _write(self, conversation_id: str, text: str, expected: int) -> bool:
        with self._lock:
            if expected == 0:
                cursor = self._execute(
                    "INSERT INTO convo_conversations (id, revision, state, updated_at) "
                    "VALUES (%s, 1, %s, %s) ON CONFLICT (id) DO NOTHING",
                    conversation_id,
                    text,
                    time.time(),
                )
            else:
                cursor = self._execute(
                    "UPDATE convo_conversations SET revision = revision + 1, state = %s, "
                    "updated_at = %s WHERE id = %s AND revision = %s",
                    text,
                    time.time(),
                    conversation_id,
                    expected,
                )
            return bool(cursor.rowcount == 1)

    def _remove(self, conversation_id: str) -> None:
        with self._lock:
            self._execute("DELETE FROM convo_conversations WHERE id = %s", conversation_id)

"""The ledger's tables, and the additive migrations that build them.

Each migration is a list of statements that only add (tables, columns, indexes), so a
ledger written by a newer convo stays readable and writable by an older one, and no
migration ever rewrites or drops a row. The applied version is kept in ``convo_meta``.
Migrations run inside one write transaction under a lock (SQLite ``BEGIN IMMEDIATE``,
a PostgreSQL advisory lock), so processes opening the same ledger at once apply each
step exactly once.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Dialect", "migration_statements"]


@attrs.frozen
class Dialect:
    """What differs between the SQL the two backends speak."""

    name: str
    #: The primary-key column definition of an append-only table.
    pk: str
    real: str
    bigint: str

    def day(self, column: str) -> str:
        """SQL for the UTC calendar day (``YYYY-MM-DD``) of an epoch-seconds *column*."""
        if self.name == "sqlite":
            return f"date({column}, 'unixepoch')"
        return f"to_char(to_timestamp({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


SQLITE = Dialect("sqlite", "INTEGER PRIMARY KEY", "REAL", "INTEGER")
POSTGRES = Dialect(
    "postgresql", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "DOUBLE PRECISION", "BIGINT"
)


def _v1(d: Dialect) -> list[str]:
    """The first schema: one row per API attempt, and its report indexes."""
    i, r = d.bigint, d.real
    return [
        f"""CREATE TABLE IF NOT EXISTS convo_usage (
            id {d.pk},
            ts {r} NOT NULL,
            session_id TEXT,
            conversation_id TEXT,
            task_id TEXT,
            model TEXT NOT NULL,
            prefix_fingerprint TEXT,
            input {i} NOT NULL DEFAULT 0,
            cache_read {i} NOT NULL DEFAULT 0,
            cache_write_5m {i} NOT NULL DEFAULT 0,
            cache_write_1h {i} NOT NULL DEFAULT 0,
            output {i} NOT NULL DEFAULT 0,
            cost_nusd {i},
            saved_nusd {i},
            price_source TEXT,
            rate_limit_tokens {i} NOT NULL DEFAULT 0,
            latency_ms {r},
            attempts {i} NOT NULL DEFAULT 1,
            status TEXT NOT NULL DEFAULT 'ok',
            error_type TEXT,
            http_status {i},
            request_id TEXT,
            cache_outcome TEXT,
            cache_reason TEXT,
            outcome TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS convo_usage_ts ON convo_usage (ts)",
        "CREATE INDEX IF NOT EXISTS convo_usage_model_ts ON convo_usage (model, ts)",
        "CREATE INDEX IF NOT EXISTS convo_usage_session_ts ON convo_usage (session_id, ts)",
    ]


def _v2(d: Dialect) -> list[str]:
    """Outcome marks, the TTL-assumed flag, and opt-in text columns."""
    return [
        f"ALTER TABLE convo_usage ADD COLUMN ttl_split_assumed {d.bigint} NOT NULL DEFAULT 0",
        "ALTER TABLE convo_usage ADD COLUMN prompt_text TEXT",
        "ALTER TABLE convo_usage ADD COLUMN completion_text TEXT",
        f"""CREATE TABLE IF NOT EXISTS convo_outcomes (
            id {d.pk},
            ts {d.real} NOT NULL,
            task_id TEXT NOT NULL,
            outcome TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS convo_outcomes_task ON convo_outcomes (task_id, id)",
    ]


#: Migrations in order; version N is ``MIGRATIONS[N - 1]``. Only ever append to this list.
MIGRATIONS: tuple[Callable[[Dialect], list[str]], ...] = (_v1, _v2)

#: The schema version this code writes.
SCHEMA_VERSION = len(MIGRATIONS)

META_TABLE = "CREATE TABLE IF NOT EXISTS convo_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def migration_statements(dialect: Dialect, current: int, target: int = SCHEMA_VERSION) -> list[str]:
    """Return the statements that bring a ledger from version *current* to *target*."""
    statements: list[str] = []
    for version in range(current + 1, target + 1):
        statements.extend(MIGRATIONS[version - 1](dialect))
    return statements

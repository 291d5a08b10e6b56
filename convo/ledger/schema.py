"""The ledger's tables, and the additive migrations that build them.

Each migration is a list of statements that only add (tables, columns, indexes), so a
ledger written by a newer convo stays readable and writable by an older one, and no
migration ever rewrites or drops a row. The applied version is kept in ``convo_meta``.
Migrations run inside one write transaction under a lock (SQLite ``BEGIN IMMEDIATE``,
a PostgreSQL advisory lock), so processes opening the same ledger at once apply each
step exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs

__all__ = ["MIGRATIONS", "ROLLUP_SUMS", "SCHEMA_VERSION", "Dialect", "migration_statements"]

#: Seconds in a roll-up bucket: one UTC day.
DAY = 86400


@attrs.frozen
class Dialect:
    """What differs between the SQL the two backends speak."""

    name: str
    #: The primary-key column definition of an append-only table.
    pk: str
    real: str
    bigint: str
    #: How to turn an integer expression into the JSON text of an array of values.
    json_array: str
    #: Whether a trigger keeps the roll-up (PostgreSQL); else the writer folds it (SQLite).
    rollup_by_trigger: bool

    def floor(self, column: str) -> str:
        """SQL for the whole seconds at or before an epoch-seconds *column*, exactly."""
        if self.name == "sqlite":
            # CAST truncates toward zero; step back one for a negative fraction.
            return f"(CAST({column} AS INTEGER) - ({column} < CAST({column} AS INTEGER)))"
        return f"CAST(floor({column}) AS BIGINT)"

    def day_start(self, column: str) -> str:
        """SQL for the epoch seconds of the UTC midnight at or before *column*.

        Integer arithmetic on the floored second, so a row a microsecond before midnight
        lands in the right day (SQLite's ``date()`` rounds to the millisecond first), and
        both backends and Python's :func:`day_start` agree to the row.
        """
        f = self.floor(column)
        if self.name == "sqlite":
            return f"({f} - ((({f}) % {DAY}) + {DAY}) % {DAY})"
        # mod(), not %: psycopg reads a bare % as a placeholder.
        return f"({f} - mod(mod({f}, {DAY}) + {DAY}, {DAY}))"

    def day_text(self, day_start: str) -> str:
        """SQL for ``YYYY-MM-DD`` of an integer epoch-seconds *day_start*."""
        if self.name == "sqlite":
            return f"date({day_start}, 'unixepoch')"
        return f"to_char(to_timestamp({day_start}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    def day(self, column: str) -> str:
        """SQL for the UTC calendar day (``YYYY-MM-DD``) of an epoch-seconds *column*."""
        return self.day_text(self.day_start(column))


def day_start(ts: float) -> int:
    """The epoch seconds of the UTC midnight at or before *ts* (as :meth:`Dialect.day_start`)."""
    f = math.floor(ts)
    return f - f % DAY


SQLITE = Dialect("sqlite", "INTEGER PRIMARY KEY", "REAL", "INTEGER", "json_array", False)
POSTGRES = Dialect(
    "postgresql",
    "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    "DOUBLE PRECISION",
    "BIGINT",
    "json_build_array",
    True,
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


#: The roll-up's dimensions, in key order.
ROLLUP_KEYS = ("model", "session_id", "prefix_fingerprint", "cache_reason")

#: The roll-up's sums, and the per-row SQL each one adds up.
ROLLUP_SUMS: tuple[tuple[str, str], ...] = (
    ("requests", "1"),
    ("errors", "CASE WHEN status <> 'ok' THEN 1 ELSE 0 END"),
    ("input", "input"),
    ("cache_read", "cache_read"),
    ("cache_write_5m", "cache_write_5m"),
    ("cache_write_1h", "cache_write_1h"),
    ("output", "output"),
    ("cost_nusd", "COALESCE(cost_nusd, 0)"),
    ("unpriced", "CASE WHEN cost_nusd IS NULL THEN 1 ELSE 0 END"),
    ("saved_nusd", "COALESCE(saved_nusd, 0)"),
    ("rate_limit_tokens", "rate_limit_tokens"),
    ("hit_requests", "CASE WHEN cache_read > 0 AND status = 'ok' THEN 1 ELSE 0 END"),
    # Version 4. A roll-up built before version 4 holds no such rows, so its zeros are exact.
    ("cancelled", "CASE WHEN status = 'cancelled' THEN 1 ELSE 0 END"),
    ("estimated", "usage_estimated"),
)

#: The sums version 3 created the roll-up with; later versions add columns for the rest.
_ROLLUP_SUMS_V3 = ROLLUP_SUMS[:12]


def rollup_fold(
    d: Dialect,
    source: str,
    where: str = "",
    sums_: tuple[tuple[str, str], ...] = ROLLUP_SUMS,
) -> str:
    """SQL that adds the rows of *source* (matching *where*) into ``convo_rollup``.

    One statement: group the new rows by day and the key columns, then add each group's
    sums to its roll-up row, creating it if new. On PostgreSQL the ``ORDER BY`` makes
    concurrent writers lock roll-up rows in the same order, so they cannot deadlock;
    SQLite writers hold the whole-file lock, so there it would be a sort for nothing.
    """
    keys = ", ".join(ROLLUP_KEYS)
    day = d.day_start("ts")
    sums = ", ".join(f"SUM({expr})" for _, expr in sums_)
    names = ", ".join(name for name, _ in sums_)
    update = ", ".join(f"{name} = convo_rollup.{name} + excluded.{name}" for name, _ in sums_)
    return (
        f"INSERT INTO convo_rollup (k, day, {keys}, {names}) "
        f"SELECT CAST({d.json_array}(g.day, {', '.join('g.' + k for k in ROLLUP_KEYS)}) AS TEXT), "
        f"g.* FROM (SELECT {day} AS day, {keys}, {sums} FROM {source}{where} "
        # WHERE true: SQLite's parser needs one before an upsert's ON CONFLICT.
        f"GROUP BY 1, 2, 3, 4, 5) AS g WHERE true{' ORDER BY 1' if d.rollup_by_trigger else ''} "
        f"ON CONFLICT (k) DO UPDATE SET {update}"
    )


def _v3(d: Dialect) -> list[str]:
    """The daily roll-up: sums per UTC day, model, session, prefix and cache reason.

    Reports over whole days read it instead of the raw rows. SQLite's writer folds each
    batch into it in the batch's own transaction and advances ``convo_rollup_mark``; rows
    past the mark (written by an older convo, which knows nothing of the roll-up) are
    folded by the next writer and read raw until then. PostgreSQL ids are not in commit
    order, so a statement trigger folds there instead, whoever writes.
    """
    i = d.bigint
    sums = ",\n            ".join(f"{name} {i} NOT NULL" for name, _ in _ROLLUP_SUMS_V3)
    statements = [
        f"""CREATE TABLE IF NOT EXISTS convo_rollup (
            k TEXT PRIMARY KEY,
            day {i} NOT NULL,
            model TEXT NOT NULL,
            session_id TEXT,
            prefix_fingerprint TEXT,
            cache_reason TEXT,
            {sums}
        ){" WITHOUT ROWID" if d.name == "sqlite" else ""}""",
    ]
    # Outcomes set at append are rare; this finds their tasks without a scan (task_cost).
    statements.append(
        "CREATE INDEX IF NOT EXISTS convo_usage_outcome ON convo_usage (task_id) "
        "WHERE outcome IS NOT NULL"
    )
    if d.rollup_by_trigger:
        statements += [
            _fold_function(d, _ROLLUP_SUMS_V3),
            "DROP TRIGGER IF EXISTS convo_usage_rollup ON convo_usage",
            """CREATE TRIGGER convo_usage_rollup AFTER INSERT ON convo_usage
            REFERENCING NEW TABLE AS convo_new FOR EACH STATEMENT
            EXECUTE PROCEDURE convo_rollup_fold()""",
            # Rows written before the roll-up existed.
            rollup_fold(d, "convo_usage", "", _ROLLUP_SUMS_V3),
        ]
    else:
        statements += [
            f"""CREATE TABLE IF NOT EXISTS convo_rollup_mark (
                one {i} PRIMARY KEY CHECK (one = 1),
                last_id {i} NOT NULL
            )""",
            "INSERT OR IGNORE INTO convo_rollup_mark VALUES (1, 0)",
            # Rows written before the roll-up existed; the mark moves with them.
            *rollup_catch_up(d, _ROLLUP_SUMS_V3),
        ]
    return statements


def _fold_function(d: Dialect, sums_: tuple[tuple[str, str], ...]) -> str:
    """PostgreSQL: the trigger function that folds each insert into the roll-up."""
    return f"""CREATE OR REPLACE FUNCTION convo_rollup_fold() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                {rollup_fold(d, "convo_new", "", sums_)};
                RETURN NULL;
            END $$"""


def _v4(d: Dialect) -> list[str]:
    """Cancelled attempts, estimated usage and each row's purpose (issue 8).

    ``usage_estimated`` marks output estimated from the text a cut stream delivered;
    ``purpose`` says whether a row was a turn, a pre-warm or a keep-alive (NULL on rows
    written before version 4: not recorded). The roll-up gains counts of cancelled and
    estimated rows; on PostgreSQL the trigger function is replaced to fold them.
    """
    statements = [
        f"ALTER TABLE convo_usage ADD COLUMN usage_estimated {d.bigint} NOT NULL DEFAULT 0",
        "ALTER TABLE convo_usage ADD COLUMN purpose TEXT",
        f"ALTER TABLE convo_rollup ADD COLUMN cancelled {d.bigint} NOT NULL DEFAULT 0",
        f"ALTER TABLE convo_rollup ADD COLUMN estimated {d.bigint} NOT NULL DEFAULT 0",
    ]
    if d.rollup_by_trigger:
        statements.append(_fold_function(d, ROLLUP_SUMS))
    return statements


def _v5(d: Dialect) -> list[str]:
    """The expected saving of each warm and keep-alive request (issue 11), in nano-dollars
    like the cost; NULL on other rows and on rows written before version 5."""
    return [f"ALTER TABLE convo_usage ADD COLUMN expected_saving_nusd {d.bigint}"]


def _v6(d: Dialect) -> list[str]:
    """Cache-aware routing (issue 14): the route a turn took (``"small>large"``: the tier it
    needed, the tier that answered) and the router's reason; NULL on unrouted rows."""
    return [
        "ALTER TABLE convo_usage ADD COLUMN route TEXT",
        "ALTER TABLE convo_usage ADD COLUMN route_reason TEXT",
    ]


def rollup_catch_up(d: Dialect, sums_: tuple[tuple[str, str], ...] = ROLLUP_SUMS) -> list[str]:
    """SQLite: fold every row past ``convo_rollup_mark``, and move the mark to the last."""
    return [
        rollup_fold(d, "convo_usage", " WHERE id > (SELECT last_id FROM convo_rollup_mark)", sums_),
        "UPDATE convo_rollup_mark SET last_id = "
        "(SELECT COALESCE(MAX(id), 0) FROM convo_usage) WHERE one = 1",
    ]


#: Migrations in order; version N is ``MIGRATIONS[N - 1]``. Only ever append to this list.
MIGRATIONS: tuple[Callable[[Dialect], list[str]], ...] = (_v1, _v2, _v3, _v4, _v5, _v6)

#: The schema version this code writes.
SCHEMA_VERSION = len(MIGRATIONS)

META_TABLE = "CREATE TABLE IF NOT EXISTS convo_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def migration_statements(dialect: Dialect, current: int, target: int = SCHEMA_VERSION) -> list[str]:
    """Return the statements that bring a ledger from version *current* to *target*."""
    statements: list[str] = []
    for version in range(current + 1, target + 1):
        statements.extend(MIGRATIONS[version - 1](dialect))
    return statements

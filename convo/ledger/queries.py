"""Read side of the ledger: totals, hit rates, busts, cost per successful task.

Every figure is one SQL statement, so a report over a million rows is never a million
Python objects. Totals and busts read the daily roll-up (``convo_rollup``) for the whole
UTC days a query covers and the raw rows only for the partial days at its ``since`` /
``until`` edges (and, on SQLite, for rows not folded yet); both halves are one
``UNION ALL`` in one statement, so they see one snapshot and every sum is exact. Money
comes back in nano-dollars and leaves as ``Decimal`` USD.

Each query is built as a :class:`Query`: its SQL, its parameters, and how to read the
rows. Building does no I/O, so the sync and the async paths of
:class:`~convo.ledger.Ledger` run the same statement and read it the same way; only who
executes it differs (a blocking call, or an awaited one).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar

import attrs

from convo.ledger.record import COLUMNS, LedgerRow
from convo.ledger.schema import DAY, ROLLUP_SUMS, Dialect, day_start
from convo.usage import Usage

__all__ = ["BustCount", "Filters", "GroupBy", "Query", "TaskCost", "TaskGroup", "Totals"]

T = TypeVar("T")


@attrs.frozen
class Query(Generic[T]):
    """One read: SQL with ``?`` placeholders, its parameters, and how to read its rows."""

    sql: str
    params: Sequence[Any]
    read: Callable[[list[tuple[Any, ...]]], T]


#: What :meth:`~convo.ledger.Ledger.totals` can group by.
GroupBy = Literal["model", "session", "day", "prefix", "conversation"]

_GROUP_COLUMNS = {
    "model": "model",
    "session": "session_id",
    "prefix": "prefix_fingerprint",
    "conversation": "conversation_id",
}

# Multipliers of base input price: input-token equivalents of what the input side costs.
_BILLED_WEIGHTS = {"input": 1, "cache_read": 0.1, "cache_write_5m": 1.25, "cache_write_1h": 2}


def _ts(value: dt.datetime | None, name: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware; use datetime(..., tzinfo=timezone.utc)")
    return value.timestamp()


@attrs.frozen
class Filters:
    """Which rows a query covers; every filter given must match.

    Attributes:
        since: Rows at or after this time (timezone-aware).
        until: Rows before this time.
        model: Only this model id.
        session: Only this session id.
        prefix: Only this prefix fingerprint.
    """

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    model: str | None = None
    session: str | None = None
    prefix: str | None = None

    def where(self, *extra: str, times: bool = True) -> tuple[str, list[Any]]:
        """Return a ``WHERE`` clause (or ``""``) and its parameters.

        Args:
            *extra: More clauses, ANDed in, without parameters.
            times: Include ``since`` / ``until``; off when the caller bounds time itself.
        """
        clauses, params = list(extra), []
        for clause, value in (
            ("ts >= ?", _ts(self.since, "since") if times else None),
            ("ts < ?", _ts(self.until, "until") if times else None),
            ("model = ?", self.model),
            ("session_id = ?", self.session),
            ("prefix_fingerprint = ?", self.prefix),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


@attrs.frozen
class Totals:
    """Sums over a set of ledger rows.

    Attributes:
        key: The group (model id, session id, ``YYYY-MM-DD``, fingerprint), or ``None``.
        requests: Rows (API attempts).
        errors: Rows whose status was not ``ok`` (failed or cancelled).
        input, cache_read, cache_write_5m, cache_write_1h, output: Token sums.
        cost_usd: Cost of the priced rows.
        unpriced: Rows with no price; ``cost_usd`` leaves them out.
        saved_usd: Saving from caching over the priced rows (may be negative).
        rate_limit_tokens: ITPM weight.
        hit_requests: Successful rows that read anything from cache.
        cancelled: Rows of sends cancelled in flight (counted in ``errors`` too).
        estimated: Rows whose output is an estimate (a cut stream's delivered text).

    .. versionchanged:: 0.2
       ``cancelled`` and ``estimated``.
    """

    key: str | None
    requests: int
    errors: int
    input: int
    cache_read: int
    cache_write_5m: int
    cache_write_1h: int
    output: int
    cost_usd: Decimal
    unpriced: int
    saved_usd: Decimal
    rate_limit_tokens: int
    hit_requests: int
    cancelled: int = 0
    estimated: int = 0

    @property
    def usage(self) -> Usage:
        """The token sums as a :class:`~convo.Usage`."""
        return Usage(
            self.input, self.cache_read, self.cache_write_5m, self.cache_write_1h, self.output
        )

    @property
    def total_input(self) -> int:
        """All input tokens: input + cache reads + cache writes."""
        return self.usage.total_input

    @property
    def token_hit_rate(self) -> float | None:
        """``cache_read / total_input``; ``None`` with no input."""
        return self.cache_read / self.total_input if self.total_input else None

    @property
    def request_hit_rate(self) -> float | None:
        """Share of successful requests that read from cache; ``None`` with none."""
        ok = self.requests - self.errors
        return self.hit_requests / ok if ok else None

    @property
    def billed_equivalent_tokens(self) -> float:
        """Input priced in base-input tokens (reads 0.1×, 5m writes 1.25×, 1h writes 2×)."""
        return float(sum(getattr(self, kind) * w for kind, w in _BILLED_WEIGHTS.items()))


@attrs.frozen
class BustCount:
    """How often one cache-bust reason occurred, and what it cost."""

    reason: str
    requests: int
    cache_write: int
    input: int
    cost_usd: Decimal


#: What :meth:`~convo.ledger.Ledger.task_costs` can group by (``"all"``: one group, the
#: whole, as :meth:`~convo.ledger.Ledger.task_cost` gives it).
TaskGroup = Literal["all", "model", "route", "day"]

_TASK_GROUP_COLUMNS = {"model": "model", "route": "route"}


@attrs.frozen
class TaskCost:
    """Cost per successful task: all spend on marked tasks over the successful ones.

    Failed tasks' spend counts against the successes, because that is what a success
    cost. Tasks never marked are left out of both sides.

    In a group (:meth:`~convo.ledger.Ledger.task_costs`) a task counts once in every group
    it has rows in (each model, route or day it used), with only the cost of those rows:
    the groups' costs add up to the whole, their task counts may add up to more.

    Attributes:
        successful, failed: Marked tasks (in the group).
        cost_usd: Their spend (the group's share of it).
        unpriced: Marked tasks with an unpriced row (in the group): ``cost_usd`` is then a
            lower bound.
        key: The group (a model id, a route such as ``"small>large"``, ``YYYY-MM-DD``);
            ``None`` for the whole, or for rows without the key (unrouted rows).

    .. versionchanged:: 0.4
       ``key``.
    """

    successful: int
    failed: int
    cost_usd: Decimal
    unpriced: int = 0
    key: str | None = None

    @property
    def per_success(self) -> Decimal | None:
        """``cost_usd / successful``; ``None`` when nothing succeeded."""
        return self.cost_usd / self.successful if self.successful else None


# The raw rows' sums, in the order of ROLLUP_SUMS, so the two halves of a query line up.
# SUM(1) rather than COUNT(*): over no rows it is NULL like the rest, and reads as 0.
_RAW_SUMS = ", ".join(f"SUM({expr}) AS s{i}" for i, (_, expr) in enumerate(ROLLUP_SUMS))
_ROLLUP_SUMS = ", ".join(f"SUM({name}) AS s{i}" for i, (name, _) in enumerate(ROLLUP_SUMS))
_OUTER_SUMS = ", ".join(f"SUM(s{i})" for i in range(len(ROLLUP_SUMS)))


def _union(
    dialect: Dialect, filters: Filters, raw_key: str, rollup_key: str, *extra: str
) -> tuple[str, list[Any]]:
    """A subquery ``(key, s0..s13)`` of sums per key over the rows *filters* select.

    Whole UTC days inside ``[since, until)`` come from the roll-up; the partial days at
    the edges from the raw rows (through the ``ts`` index); on SQLite, also any raw rows
    past the roll-up's mark (appended by a convo that predates the roll-up, not folded
    yet). The parts cover disjoint rows, so adding them gives exactly the raw-row answer.
    """
    since, until = _ts(filters.since, "since"), _ts(filters.until, "until")
    # The whole days, [lo, hi); None is unbounded on that side.
    lo = None if since is None else day_start(since) + (0 if since == day_start(since) else DAY)
    hi = None if until is None else day_start(until)
    other, params = filters.where(*extra, times=False)
    all_params: list[Any] = []
    parts: list[str] = []

    def part(table: str, key: str, sums: str, *clauses: tuple[str, Any], tail: str = "") -> None:
        # A None bound is no bound.
        bounds = [(sql, value) for sql, value in clauses if value is not None]
        more = [sql for sql, _ in bounds] + ([tail] if tail else [])
        where = other + ((" AND " if other else " WHERE ") + " AND ".join(more) if more else "")
        # No key, no GROUP BY: grouping 150,000 roll-up rows on a constant still sorts.
        group = "" if key == "NULL" else " GROUP BY 1"
        parts.append(f"SELECT {key} AS key, {sums} FROM {table}{where}{group}")
        all_params.extend(params)
        all_params.extend(value for _, value in bounds)

    raw, rollup = ("convo_usage", raw_key, _RAW_SUMS), ("convo_rollup", rollup_key, _ROLLUP_SUMS)
    if lo is not None and hi is not None and lo >= hi:
        # Less than one whole day: the raw rows only.
        part(*raw, ("ts >= ?", since), ("ts < ?", until))
    else:
        part(*rollup, ("day >= ?", lo), ("day < ?", hi))
        if since is not None and lo is not None and since < lo:
            part(*raw, ("ts >= ?", since), ("ts < ?", lo))
        if until is not None and hi is not None and hi < until:
            part(*raw, ("ts >= ?", hi), ("ts < ?", until))
        if not dialect.rollup_by_trigger:
            # NOT INDEXED keeps SQLite on the rowid: the rows past the mark are a short
            # rowid range (none at all unless an older convo wrote), while the planner
            # would otherwise walk a whole index to save the GROUP BY a sort.
            tail = "id > (SELECT last_id FROM convo_rollup_mark)"
            unindexed = ("convo_usage NOT INDEXED", raw_key, _RAW_SUMS)
            part(*unindexed, ("ts >= ?", lo), ("ts < ?", hi), tail=tail)
    return "(" + " UNION ALL ".join(parts) + ")", all_params


def totals(dialect: Dialect, filters: Filters, by: GroupBy | None) -> Query[list[Totals]]:
    """One :class:`Totals` per group (or one overall when *by* is ``None``)."""
    if by == "conversation":
        # Not a roll-up dimension: one pass over the raw rows.
        where, params = filters.where()
        sql = f"SELECT conversation_id, {_RAW_SUMS} FROM convo_usage{where} GROUP BY 1 ORDER BY 1"
    else:
        if by is None:
            raw_key = rollup_key = "NULL"
        elif by == "day":
            raw_key = dialect.day("ts")
            rollup_key = dialect.day_text("day")
        elif by in _GROUP_COLUMNS:
            raw_key = rollup_key = _GROUP_COLUMNS[by]
        else:
            raise ValueError(
                f"by must be one of model, session, day, prefix, conversation; got {by!r}"
            )
        source, params = _union(dialect, filters, raw_key, rollup_key)
        sql = f"SELECT {'NULL' if by is None else 'key'}, {_OUTER_SUMS} FROM {source} AS u"
        if by is not None:
            sql += " GROUP BY key ORDER BY key"
    return Query(sql, params, lambda rows: _read_totals(rows, by))


def _read_totals(rows: list[tuple[Any, ...]], by: GroupBy | None) -> list[Totals]:
    result = []
    for row in rows:
        if by is None and not row[1]:
            return [_empty()]
        n = [0, *(int(v or 0) for v in row[1:])]
        result.append(
            Totals(
                key=None if row[0] is None else str(row[0]),
                requests=n[1],
                errors=n[2],
                input=n[3],
                cache_read=n[4],
                cache_write_5m=n[5],
                cache_write_1h=n[6],
                output=n[7],
                cost_usd=_usd(row[8]),
                unpriced=n[9],
                saved_usd=_usd(row[10]),
                rate_limit_tokens=n[11],
                hit_requests=n[12],
                cancelled=n[13],
                estimated=n[14],
            )
        )
    return result or ([_empty()] if by is None else [])


def top_busts(dialect: Dialect, filters: Filters, limit: int) -> Query[list[BustCount]]:
    """The most frequent non-hit cache reasons, most frequent first."""
    source, params = _union(
        dialect,
        filters,
        "cache_reason",
        "cache_reason",
        "cache_reason IS NOT NULL",
        "cache_reason <> 'hit'",
    )
    # s0 requests, s2 input, s4 + s5 the two cache writes, s7 cost: see ROLLUP_SUMS.
    sql = (
        "SELECT key, SUM(s0), SUM(s4) + SUM(s5), SUM(s2), SUM(s7) "
        f"FROM {source} AS u GROUP BY key ORDER BY SUM(s0) DESC, key LIMIT ?"
    )
    return Query(
        sql,
        [*params, limit],
        lambda rows: [
            BustCount(r[0], int(r[1]), int(r[2] or 0), int(r[3] or 0), _usd(r[4])) for r in rows
        ],
    )


def _marked(filters: Filters) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause of the rows of marked tasks (and its parameters)."""
    # Only marked tasks count, so only their rows are grouped: a task marked through
    # convo_outcomes, or one with an outcome on any of its rows (found through the small
    # partial index convo_usage_outcome). Sorting a third of a million rows instead of
    # all of them is most of this query's time.
    return filters.where(
        "task_id IS NOT NULL",
        "task_id IN (SELECT task_id FROM convo_outcomes"
        " UNION SELECT task_id FROM convo_usage WHERE outcome IS NOT NULL)",
    )


# The latest mark of each task: the one that wins.
_LATEST_MARK = """m AS (
            SELECT o.task_id, o.outcome FROM convo_outcomes o
            JOIN (SELECT task_id, MAX(id) AS id FROM convo_outcomes GROUP BY task_id) last
            ON o.id = last.id
        )"""


def task_cost(dialect: Dialect, filters: Filters) -> Query[TaskCost]:
    """The spend on marked tasks and how many succeeded and failed."""
    where, params = _marked(filters)
    sql = f"""
        WITH t AS (
            SELECT task_id, SUM(COALESCE(cost_nusd, 0)) AS c, MAX(outcome) AS o,
                MAX(CASE WHEN cost_nusd IS NULL THEN 1 ELSE 0 END) AS u
            FROM convo_usage{where} GROUP BY task_id
        ), {_LATEST_MARK}
        SELECT COALESCE(m.outcome, t.o) AS verdict, COUNT(*), SUM(t.c), SUM(t.u)
        FROM t LEFT JOIN m ON m.task_id = t.task_id
        GROUP BY COALESCE(m.outcome, t.o)"""
    return Query(sql, params, _read_task_cost)


def task_costs(
    dialect: Dialect, filters: Filters, by: Sequence[TaskGroup]
) -> Query[dict[TaskGroup, list[TaskCost]]]:
    """Cost per successful task in each group of every dimension in *by*, in one statement.

    A task counts once in each group it has rows in, with those rows' cost (see
    :class:`TaskCost`). The rows of marked tasks are grouped once, by task and every
    dimension; each dimension is then a small aggregate over that (the CTE is read more
    than once, so both databases build it once). ``"all"`` is the whole, one
    :class:`TaskCost` (zeros when no task is marked): what :func:`task_cost` gives, here
    without a second pass over the rows.
    """
    dimensions = list(dict.fromkeys(by))
    if not dimensions or any(d not in ("all", "model", "route", "day") for d in dimensions):
        raise ValueError(f"by must name one or more of all, model, route, day; got {by!r}")
    keyed = [d for d in dimensions if d != "all"]
    where, params = _marked(filters)
    # Of the task's rows (under the same filters), the ones with an outcome: a seek in the
    # partial index convo_usage_outcome (a window over the task's groups cost more).
    outcome_where, outcome_params = filters.where("outcome IS NOT NULL", "task_id = g.task_id")
    # Days as integer day starts while grouping rows; as text only per group at the end.
    keys = {"day": dialect.day_start("ts"), **_TASK_GROUP_COLUMNS}
    shown = {"day": dialect.day_text("k_day")}
    columns = ", ".join(str(i + 1) for i in range(len(keyed) + 1))  # task and each key
    selected = "".join(f" {keys[d]} AS k_{d}," for d in keyed)
    # A task's verdict: its latest mark (one seek in the (task_id, id) index per group; a
    # join to the latest marks, as task_cost does, ran as a nested scan here and took
    # minutes at a million rows), else an outcome on any of its rows.
    sql = f"""
        WITH g AS (
            SELECT task_id,{selected} SUM(COALESCE(cost_nusd, 0)) AS c,
                MAX(CASE WHEN cost_nusd IS NULL THEN 1 ELSE 0 END) AS u
            FROM convo_usage{where} GROUP BY {columns}
        ), v AS (
            SELECT g.*, COALESCE(
                (SELECT x.outcome FROM convo_outcomes x WHERE x.task_id = g.task_id
                 ORDER BY x.id DESC LIMIT 1),
                (SELECT MAX(outcome) FROM convo_usage{outcome_where})) AS verdict
            FROM g
        )
        """ + " UNION ALL ".join(
        f"SELECT '{d}', {'NULL' if d == 'all' else shown.get(d, f'k_{d}')}, verdict,"
        " COUNT(DISTINCT task_id), SUM(c), COUNT(DISTINCT CASE WHEN u = 1 THEN task_id END)"
        f" FROM v GROUP BY {'' if d == 'all' else f'k_{d}, '}verdict"
        for d in dimensions
    )
    return Query(sql, [*params, *outcome_params], lambda rows: _read_task_costs(rows, dimensions))


def _read_task_costs(
    rows: list[tuple[Any, ...]], dimensions: Sequence[TaskGroup]
) -> dict[TaskGroup, list[TaskCost]]:
    found: dict[str, dict[str | None, list[Any]]] = {d: {} for d in dimensions}
    if "all" in found:
        found["all"][None] = [0, 0, 0, 0]  # the whole is one group, even with no task
    for dimension, key, verdict, n, nanos, unpriced in rows:
        if verdict not in ("success", "failure"):
            continue
        group = found[dimension].setdefault(None if key is None else str(key), [0, 0, 0, 0])
        group[0 if verdict == "success" else 1] += int(n)
        group[2] += int(nanos or 0)
        group[3] += int(unpriced or 0)
    # Sorted here, not in SQL: the two databases put NULL at opposite ends.
    return {
        d: [
            TaskCost(ok, failed, _usd(nanos), unpriced, key)
            for key, (ok, failed, nanos, unpriced) in sorted(
                found[d].items(), key=lambda item: (item[0] is None, item[0] or "")
            )
        ]
        for d in dimensions
    }


def _read_task_cost(rows: list[tuple[Any, ...]]) -> TaskCost:
    counts = {"success": 0, "failure": 0}
    cost = Decimal(0)
    unpriced = 0
    for verdict, n, nanos, unpriced_tasks in rows:
        if verdict in counts:
            counts[verdict] += int(n)
            cost += _usd(nanos)
            unpriced += int(unpriced_tasks or 0)
    return TaskCost(counts["success"], counts["failure"], cost, unpriced)


def rows(dialect: Dialect, filters: Filters, limit: int | None) -> Query[list[LedgerRow]]:
    """The rows matching *filters*, oldest first."""
    where, params = filters.where()
    sql = f"SELECT {', '.join(COLUMNS)} FROM convo_usage{where} ORDER BY ts, id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return Query(sql, params, lambda found: [LedgerRow.from_db(tuple(r)) for r in found])


def _usd(nanos: Any) -> Decimal:
    # Zero is Decimal(0) however it was reached (no priced rows, or priced at nothing), so
    # the roll-up's 0 and the raw rows' NULL read the same.
    return Decimal(int(nanos)).scaleb(-9) if nanos else Decimal(0)


def _empty() -> Totals:
    zero = Decimal(0)
    return Totals(None, 0, 0, 0, 0, 0, 0, 0, zero, 0, zero, 0, 0)

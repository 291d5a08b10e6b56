"""The :class:`Ledger`: append-only usage records, written in the background."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as dt
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import attrs
import platformdirs

from convo.budget import Spend
from convo.errors import LedgerError
from convo.ledger import queries
from convo.ledger.backends import Backend, PostgresBackend, SQLiteBackend
from convo.ledger.queries import (
    BustCount,
    Filters,
    GroupBy,
    Query,
    TaskCost,
    TaskGroup,
    Totals,
)
from convo.ledger.record import OUTCOMES, LedgerRow, Outcome
from convo.ledger.writer import BatchWriter

__all__ = ["Ledger"]

T = TypeVar("T")

# Rows an async query reads into objects on the event loop itself (a few hundred µs);
# more go to a worker thread.
_READ_ON_LOOP = 1_000

#: The default ledger file's name inside ``$CONVO_HOME`` or the user data dir.
DEFAULT_FILE = "ledger.sqlite3"

# Strong references on purpose: a ledger dropped without close() must still be flushed at
# exit, so it stays reachable until closed (close() removes it).
_OPEN: set[Ledger] = set()
_OPEN_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    # A clean interpreter exit writes what is queued: the writer threads are daemons, and
    # atexit runs while they still live.
    with _OPEN_LOCK:
        ledgers = list(_OPEN)
    for ledger in ledgers:
        # Nothing is left to report a failure to at exit; the rows stay queued in vain.
        with contextlib.suppress(LedgerError):
            ledger.close()


class Ledger:
    """An append-only record of every API attempt, with totals and reports.

    Rows are enqueued by :meth:`append` (never blocks, safe from any thread or task) and
    committed in batches by a background thread. Use :meth:`open` or :meth:`default`
    rather than the constructor.

    Every query has an ``_async`` twin (:meth:`totals_async`, :meth:`total_async`,
    :meth:`spend_async`, ...) that never blocks the event loop: PostgreSQL through
    psycopg's ``AsyncConnection``, SQLite in a worker thread.

    Example::

        with convo.Ledger.open("sqlite:///usage.db") as ledger:
            ledger.append(convo.LedgerRow.build(usage, cost, model="claude-sonnet-4-6"))
            print(ledger.totals(by="model"))

    Args:
        backend: The store.
        store_text: Keep ``prompt_text``/``completion_text``; off by default, so no prompt
            or completion is written unless asked for.
        batch_size: The most rows committed in one transaction.

    .. versionadded:: 0.1
    """

    def __init__(
        self, backend: Backend, *, store_text: bool = False, batch_size: int = 50_000
    ) -> None:
        self._backend = backend
        self.store_text = store_text
        self.schema_version_found = backend.migrate()
        self._writer = BatchWriter(backend, batch_size=batch_size)
        self._closed = False
        self._close_lock = threading.Lock()
        with _OPEN_LOCK:
            _OPEN.add(self)

    @classmethod
    def open(
        cls, url: str | os.PathLike[str], *, store_text: bool = False, batch_size: int = 50_000
    ) -> Ledger:
        """Open (creating if needed) the ledger at *url*.

        Args:
            url: ``sqlite:///relative.db``, ``sqlite:////abs/path.db``, a plain path,
                ``:memory:``, or ``postgresql://user@host/db`` (needs ``convo[postgres]``).
            store_text: See :class:`Ledger`.
            batch_size: See :class:`Ledger`.

        Raises:
            ValueError: for a URL scheme convo does not support.
            LedgerError: when the store cannot be opened or migrated.
        """
        text = os.fspath(url)
        if text.startswith(("postgresql://", "postgres://")):
            backend: Backend = PostgresBackend(text)
        elif text == ":memory:" or text == "sqlite://" or text == "sqlite:///:memory:":
            backend = SQLiteBackend(":memory:")
        else:
            if text.startswith("sqlite:///"):
                text = text.removeprefix("sqlite:///")
            elif "://" in text:
                raise ValueError(
                    f"unsupported ledger URL {text.split('://')[0]!r}://; use a path, "
                    "sqlite:///path, :memory: or postgresql://..."
                )
            Path(text).expanduser().parent.mkdir(parents=True, exist_ok=True)
            backend = SQLiteBackend(str(Path(text).expanduser()))
        return cls(backend, store_text=store_text, batch_size=batch_size)

    @classmethod
    def default(cls, *, store_text: bool = False) -> Ledger:
        """Open the default SQLite ledger: ``$CONVO_HOME/ledger.sqlite3``, else the user
        data directory (``platformdirs.user_data_dir("convo")``)."""
        home = os.environ.get("CONVO_HOME") or platformdirs.user_data_dir("convo")
        return cls.open(Path(home) / DEFAULT_FILE, store_text=store_text)

    @property
    def where(self) -> str:
        """Where the ledger lives (any password redacted)."""
        return self._backend.where

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def append(self, row: LedgerRow) -> None:
        """Enqueue *row* for writing; returns at once, does no I/O.

        Raises:
            TypeError: when *row* is not a :class:`LedgerRow`.
            LedgerError: when the ledger is closed.
        """
        if not isinstance(row, LedgerRow):
            raise TypeError(f"append() takes a convo.LedgerRow, got {type(row).__name__}")
        if self._closed:
            raise LedgerError(f"ledger {self.where} is closed; open a new one to append")
        if not self.store_text and (row.prompt_text is not None or row.completion_text is not None):
            row = attrs.evolve(row, prompt_text=None, completion_text=None)
        self._writer.put(row)

    def mark_outcome(self, task_id: str, outcome: Outcome) -> None:
        """Record that task *task_id* ended in *outcome*; the latest mark wins.

        Raises:
            ValueError: for an outcome other than ``"success"`` or ``"failure"``.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be 'success' or 'failure', got {outcome!r}")
        if self._closed:
            raise LedgerError(f"ledger {self.where} is closed; open a new one to mark outcomes")
        now = dt.datetime.now(dt.timezone.utc).timestamp()
        self._writer.put((now, str(task_id), outcome))

    def flush(self, timeout: float | None = None) -> None:
        """Block until every row appended so far is committed.

        Raises:
            LedgerError: when the store failed (the rows are kept and retried) or timed out.
        """
        self._writer.flush(timeout)

    async def aflush(self) -> None:
        """:meth:`flush`, awaited: the writer thread wakes the task when the rows are
        committed, so the event loop keeps running and no worker thread waits."""
        await self._writer.flush_async()

    def close(self) -> None:
        """Write everything queued, stop the writer, close the store. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._writer.stop()
        try:
            self._writer.flush()
        finally:
            self._backend.close()
            with _OPEN_LOCK:
                _OPEN.discard(self)

    async def aclose(self) -> None:
        """:meth:`close` in a worker thread."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # Queries. Each flushes first, so a caller sees its own appends. The SQL is built once
    # (convo.ledger.queries); _run executes it blocking, _run_async awaited.

    def _filters(
        self,
        since: dt.datetime | None,
        until: dt.datetime | None,
        model: str | None,
        session: str | None,
        prefix: str | None,
    ) -> Filters:
        if not self._closed:
            self.flush()
        return Filters(since=since, until=until, model=model, session=session, prefix=prefix)

    async def _filters_async(
        self,
        since: dt.datetime | None,
        until: dt.datetime | None,
        model: str | None,
        session: str | None,
        prefix: str | None,
    ) -> Filters:
        # Built before awaiting, so a bad filter is a ValueError with nothing queued.
        filters = Filters(since=since, until=until, model=model, session=session, prefix=prefix)
        filters.where()
        if not self._closed:
            await self.aflush()
        return filters

    def _run(self, query: Query[T]) -> T:
        return query.read(self._backend.query(query.sql, query.params))

    async def _run_async(self, query: Query[T]) -> T:
        found = await self._backend.query_async(query.sql, query.params)
        if len(found) > _READ_ON_LOOP:
            # Turning many rows into objects is Python work too: off the loop with it.
            return await asyncio.to_thread(query.read, found)
        return query.read(found)

    def totals(
        self,
        *,
        by: GroupBy | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        model: str | None = None,
        session: str | None = None,
        prefix: str | None = None,
    ) -> list[Totals]:
        """Sums of tokens, cost, weight and hits, grouped *by* model, session, day
        (UTC), prefix or conversation; one overall :class:`Totals` when *by* is ``None``."""
        f = self._filters(since, until, model, session, prefix)
        return self._run(queries.totals(self._backend.dialect, f, by))

    async def totals_async(
        self,
        *,
        by: GroupBy | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        model: str | None = None,
        session: str | None = None,
        prefix: str | None = None,
    ) -> list[Totals]:
        """:meth:`totals`, awaited without blocking the event loop.

        .. versionadded:: 0.2
        """
        f = await self._filters_async(since, until, model, session, prefix)
        return await self._run_async(queries.totals(self._backend.dialect, f, by))

    def total(self, **filters: object) -> Totals:
        """The one overall :class:`Totals` under *filters* (see :meth:`totals`)."""
        return self.totals(by=None, **filters)[0]  # type: ignore[arg-type]

    async def total_async(self, **filters: object) -> Totals:
        """:meth:`total`, awaited without blocking the event loop.

        .. versionadded:: 0.2
        """
        return (await self.totals_async(by=None, **filters))[0]  # type: ignore[arg-type]

    def spend(self, *, since: dt.datetime | None = None) -> Spend:
        """Everything recorded since *since* as a :class:`~convo.budget.Spend`: what a
        ``scope="ledger"`` :class:`~convo.Budget` reads (``Budget.reserve(ledger_spent=)``).

        The cost is ``None`` when any row in the window is unpriced (a cost limit then
        cannot be enforced, and the budget says so).

        .. versionadded:: 0.2
        """
        return _spend(self.total(since=since))

    async def spend_async(self, *, since: dt.datetime | None = None) -> Spend:
        """:meth:`spend`, awaited without blocking the event loop.

        .. versionadded:: 0.2
        """
        return _spend(await self.total_async(since=since))

    def top_busts(
        self,
        *,
        limit: int = 10,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        model: str | None = None,
        session: str | None = None,
        prefix: str | None = None,
    ) -> list[BustCount]:
        """The most frequent cache-miss reasons (every reason but ``"hit"``)."""
        f = self._filters(since, until, model, session, prefix)
        return self._run(queries.top_busts(self._backend.dialect, f, limit))

    async def top_busts_async(
        self,
        *,
        limit: int = 10,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        model: str | None = None,
        session: str | None = None,
        prefix: str | None = None,
    ) -> list[BustCount]:
        """:meth:`top_busts`, awaited without blocking the event loop.

        .. versionadded:: 0.2
        """
        f = await self._filters_async(since, until, model, session, prefix)
        return await self._run_async(queries.top_busts(self._backend.dialect, f, limit))

    def task_cost(
        self,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        model: str | None = None,
        session: str | None = None,
        prefix: str | None = None,
    ) -> TaskCost:
        """Cost per successful task over tasks marked success or failure."""
        f = self._filters(since, until, model, session, prefix)
        return self._run(queries.task_cost(self._backend.dialect, f))

    async def task_cost_async(
        self,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        model: str | None = None,
        session: str | None = None,
        prefix: str | None = None,
    ) -> TaskCost:
        """:meth:`task_cost`, awaited without blocking the event loop.

        .. versionadded:: 0.2
        """
        f = await self._filters_async(since, until, model, session, prefix)
        return await self._run_async(queries.task_cost(self._backend.dialect, f))

    def task_costs(
        self,
        *,
        by: Sequence[TaskGroup] = ("model", "route", "day"),
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        model: str | None = None,
        session: str | None = None,
        prefix: str | None = None,
    ) -> dict[TaskGroup, list[TaskCost]]:
        """Cost per successful task by model, by route and by UTC day (each dimension in
        *by*), in one statement: a :class:`TaskCost` per group, sorted by key, ``None``
        (rows without the key) last. ``"all"`` in *by* adds the whole (one
        :class:`TaskCost`, equal to :meth:`task_cost`'s) without another pass.

        A task counts once in every group it has rows in, with those rows' share of its
        cost; the groups' costs add up to :meth:`task_cost`'s, their task counts may add up
        to more (a task that used two models counts under both).

        .. versionadded:: 0.4
        """
        f = self._filters(since, until, model, session, prefix)
        return self._run(queries.task_costs(self._backend.dialect, f, by))

    async def task_costs_async(
        self,
        *,
        by: Sequence[TaskGroup] = ("model", "route", "day"),
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        model: str | None = None,
        session: str | None = None,
        prefix: str | None = None,
    ) -> dict[TaskGroup, list[TaskCost]]:
        """:meth:`task_costs`, awaited without blocking the event loop.

        .. versionadded:: 0.4
        """
        f = await self._filters_async(since, until, model, session, prefix)
        return await self._run_async(queries.task_costs(self._backend.dialect, f, by))

    def rows(
        self,
        *,
        limit: int | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        model: str | None = None,
        session: str | None = None,
        prefix: str | None = None,
    ) -> list[LedgerRow]:
        """The rows themselves, oldest first (for export)."""
        f = self._filters(since, until, model, session, prefix)
        return self._run(queries.rows(self._backend.dialect, f, limit))

    async def rows_async(
        self,
        *,
        limit: int | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        model: str | None = None,
        session: str | None = None,
        prefix: str | None = None,
    ) -> list[LedgerRow]:
        """:meth:`rows`, awaited without blocking the event loop.

        .. versionadded:: 0.2
        """
        f = await self._filters_async(since, until, model, session, prefix)
        return await self._run_async(queries.rows(self._backend.dialect, f, limit))


def _spend(totals: Totals) -> Spend:
    return Spend(totals.total_input, totals.output, None if totals.unpriced else totals.cost_usd)

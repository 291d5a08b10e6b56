"""The background writer: callers enqueue, one thread writes batches.

Invariants:

* :meth:`BatchWriter.put` never blocks and never does I/O, so it is safe on an event loop.
* Items are written in the order they were put; a flush token is answered only after
  every item put before it was committed (or failed).
* A batch that fails to commit is kept and retried with backoff; it is never dropped. Its
  failure is reported to every flush waiting on it.
* A row waits at most about ``linger`` seconds (plus the commit in progress) before its
  batch commits; a flush or a stop cuts the wait short, so :meth:`BatchWriter.flush` and
  :meth:`BatchWriter.stop` never wait out a linger.

Batching: while one batch commits, new rows pile up in the queue, and the next cycle takes
up to ``batch_size`` of them at once. Rows that arrive spread out (one per turn of a few
busy sessions) would each be a transaction of their own, and a commit costs several times
what a row does (the roll-up's catch-up runs per commit); so after a row wakes the writer
it lingers (100 ms by default) for the rows behind it, and commits them together. While
rows keep coming it polls every ``linger`` instead of waiting on the queue, so a put wakes
no thread; after about a second without rows it waits on the queue again. Speed over latency
here: a row reaches the store up to ``linger`` later, and a reader of the store sees it
then (convo's own queries flush first, so they never miss it). The linger was 20 ms; at
100 ms a busy process commits a fifth as often, and each commit's fixed cost (the
transaction, the roll-up's catch-up, a writer woken with cold caches: about 250 µs) falls
on five times the rows: 200 concurrent sessions on one event loop ran 5-6% faster
(``benchmarks/overhead.py`` part c, docs/wire.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from convo.errors import LedgerError
from convo.ledger.backends import Backend
from convo.ledger.record import LedgerRow

__all__ = ["BatchWriter"]

_STOP = object()
#: Empty polls (each a linger long) before the writer blocks on its queue again.
_IDLE_POLLS = 10


class _FlushToken:
    def __init__(self, notify: Callable[[], None] | None = None) -> None:
        self.done = threading.Event()
        self.error: LedgerError | None = None
        # Called from the writer thread once done is set (wakes an awaiting task).
        self.notify = notify


class BatchWriter:
    """A daemon thread that commits queued rows to a :class:`Backend` in batches.

    Args:
        backend: Where rows go.
        batch_size: The most rows committed in one transaction.
        retry_delay: Seconds before retrying a failed batch (doubles up to 5 s).
        linger: Seconds the writer waits, once a row has woken it, for more rows to commit
            in the same transaction, and between polls while rows keep coming (``0``:
            commit what is queued at once, and wait on the queue).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        batch_size: int = 50_000,
        retry_delay: float = 0.05,
        linger: float = 0.1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if linger < 0:
            raise ValueError(f"linger must be >= 0, got {linger}")
        self._backend = backend
        self._batch_size = batch_size
        self._retry_delay = retry_delay
        self._linger = linger
        # Set by flush() and stop() after queueing their token: cuts a linger short.
        self._hurry = threading.Event()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending_rows: list[tuple[Any, ...]] = []
        self._pending_outcomes: list[tuple[Any, ...]] = []
        self._stopped = threading.Event()
        self.written = 0
        self._thread = threading.Thread(
            target=self._run, name=f"convo-ledger-writer({backend.where})", daemon=True
        )
        self._thread.start()

    def put(self, item: LedgerRow | tuple[Any, ...]) -> None:
        """Enqueue a row, or an outcome mark ``(ts, task_id, outcome)``; never blocks."""
        self._queue.put(item)

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything put so far is committed.

        Raises:
            LedgerError: when the writer could not commit (the rows are kept and retried),
                it has stopped, or *timeout* passed first.
        """
        if self._stopped.is_set():
            if self._pending_rows or self._pending_outcomes:
                raise LedgerError(
                    f"ledger {self._backend.where}: writer stopped with "
                    f"{len(self._pending_rows)} rows not committed"
                )
            return
        token = _FlushToken()
        self._queue.put(token)
        self._hurry.set()
        if not token.done.wait(timeout):
            raise LedgerError(f"ledger {self._backend.where}: flush timed out after {timeout} s")
        if token.error is not None:
            raise token.error

    async def flush_async(self) -> None:
        """:meth:`flush`, awaited: the writer thread wakes the task, no thread waits.

        Raises:
            LedgerError: as :meth:`flush`.
        """
        if self._stopped.is_set():
            self.flush()  # answers at once: nothing to wait for
            return
        loop = asyncio.get_running_loop()
        woken = loop.create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        def notify() -> None:
            # The loop may have closed meanwhile (the waiter gave up); nobody is left to wake.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake)

        token = _FlushToken(notify)
        self._queue.put(token)
        self._hurry.set()
        await woken
        if token.error is not None:
            raise token.error

    def stop(self, timeout: float | None = None) -> None:
        """Write what is queued, then end the thread."""
        if not self._thread.is_alive():
            return
        self._queue.put(_STOP)
        self._hurry.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        delay = self._retry_delay
        stop = False
        # Polling: while rows keep coming, the writer sleeps a linger and takes what came,
        # instead of blocking on the queue, so a put wakes no thread (a wake-up costs the
        # putting thread a context switch, on an event loop a stall). After _IDLE_POLLS
        # empty polls it blocks on the queue again, and an idle ledger costs nothing.
        # A poll comes a linger after the one before, the commit in between included: a
        # commit that took a linger or more finds rows enough queued behind it and takes
        # them at once (under sustained load the writer never sleeps between batches).
        idle = _IDLE_POLLS
        polled = time.monotonic()
        while not stop:
            waiting = bool(self._pending_rows or self._pending_outcomes)
            polling = idle < _IDLE_POLLS and not waiting
            try:
                if polling:
                    # A flush or a stop sets _hurry after queueing its token: found below.
                    self._hurry.wait(max(0.0, polled + self._linger - time.monotonic()))
                    self._hurry.clear()
                    polled = time.monotonic()
                    first = self._queue.get_nowait()
                else:
                    # With a failed batch pending, wake up to retry it even if nothing new
                    # comes.
                    first = self._queue.get(timeout=delay if waiting else None)
            except queue.Empty:
                first = None
            tokens: list[_FlushToken] = []
            stop = self._take(first, tokens)
            if not (stop or tokens or waiting or polling) and self._linger and first is not None:
                # A row woke us: let the rows behind it join its transaction.
                self._hurry.wait(self._linger)
                self._hurry.clear()
                polled = time.monotonic()
            if self._linger:
                idle = 0 if first is not None else idle + 1
            while not stop and len(self._pending_rows) < self._batch_size:
                try:
                    stop = self._take(self._queue.get_nowait(), tokens)
                except queue.Empty:
                    break
            error = self._commit()
            delay = self._retry_delay if error is None else min(delay * 2, 5.0)
            for token in tokens:
                token.error = error
                token.done.set()
                if token.notify is not None:
                    token.notify()
            if stop and error is not None:
                # Closing with a failing store: one last try so nothing is lost silently.
                self._commit()
        self._stopped.set()
        # A flush that raced close() and queued its token after the stop must not wait
        # forever: answer it with what is known.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _FlushToken):
                if self._pending_rows or self._pending_outcomes:
                    item.error = LedgerError(
                        f"ledger {self._backend.where}: writer stopped with "
                        f"{len(self._pending_rows)} rows not committed"
                    )
                item.done.set()
                if item.notify is not None:
                    item.notify()

    def _take(self, item: Any, tokens: list[_FlushToken]) -> bool:
        if type(item) is LedgerRow:  # nearly every item: tested first, without isinstance
            self._pending_rows.append(item.to_db())
            return False
        if item is None:
            return False
        if item is _STOP:
            return True
        if isinstance(item, _FlushToken):
            tokens.append(item)
        elif isinstance(item, LedgerRow):
            self._pending_rows.append(item.to_db())
        else:
            self._pending_outcomes.append(item)
        return False

    def _commit(self) -> LedgerError | None:
        if not (self._pending_rows or self._pending_outcomes):
            return None
        try:
            self._backend.insert(self._pending_rows, self._pending_outcomes)
        except LedgerError as exc:
            return exc
        except Exception as exc:  # a bug or driver surprise must not kill the thread
            error = LedgerError(f"ledger {self._backend.where}: write failed: {exc!r}")
            error.__cause__ = exc
            return error
        self.written += len(self._pending_rows)
        self._pending_rows = []
        self._pending_outcomes = []
        return None

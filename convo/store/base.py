"""The store's contract, its errors, and what every backend shares: leases, revisions, and
building a session from a stored conversation and saving it back.

Two guarantees, kept by every backend:

- **One request at a time per conversation.** :meth:`ConversationStore.session` takes a
  lease on the conversation id (held by a random token, with an expiry so a crashed process
  cannot hold it for ever); a second request waits for it up to ``lock_timeout`` seconds,
  then gets :class:`ConversationBusy`.
- **Nothing lost or interleaved.** Every save is a compare-and-set on the revision that was
  loaded: if another writer saved in between (a lease that outlived its expiry), the save
  is refused with :class:`ConversationConflict` instead of overwriting that turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic

from convo.errors import ConvoError
from convo.layout import Prefix
from convo.session import AsyncSession, Session
from convo.store.state import ConversationState, capture, restore

__all__ = [
    "ConversationBusy",
    "ConversationConflict",
    "ConversationStore",
    "StoreError",
    "Stored",
]


class StoreError(ConvoError):
    """The conversation store could not load or save (its backend failed).

    Attributes:
        conversation_id: The conversation concerned.
    """

    def __init__(self, message: str, *, conversation_id: str) -> None:
        super().__init__(message)
        self.conversation_id = conversation_id


class ConversationBusy(StoreError):
    """Another request holds this conversation and did not let go within the timeout.

    Attributes:
        conversation_id: The conversation concerned.
        waited_s: How long this request waited.
    """

    def __init__(self, message: str, *, conversation_id: str, waited_s: float) -> None:
        super().__init__(message, conversation_id=conversation_id)
        self.waited_s = waited_s


class ConversationConflict(StoreError):
    """Another writer saved this conversation since it was loaded; this save was refused.

    Attributes:
        conversation_id: The conversation concerned.
        expected: The revision this request loaded.
    """

    def __init__(self, message: str, *, conversation_id: str, expected: int) -> None:
        super().__init__(message, conversation_id=conversation_id)
        self.expected = expected


class Stored:
    """A conversation loaded under a lease: its revision and state (``None`` when new)."""

    def __init__(self, conversation_id: str, token: str, revision: int, state: Any) -> None:
        self.conversation_id = conversation_id
        self.token = token
        self.revision = revision
        self.state: ConversationState | None = state


class ConversationStore:
    """Saves and restores conversations by id. Backends implement the five primitives.

    Args:
        lock_timeout: Seconds a request waits for another request on the same
            conversation before :class:`ConversationBusy`.
        lease_s: Seconds a lease lasts if never released (a crashed process); a request
            that takes longer is still safe: its save is a compare-and-set.

    .. versionadded:: 0.2
    """

    def __init__(self, *, lock_timeout: float = 30.0, lease_s: float = 120.0) -> None:
        if lock_timeout < 0 or lease_s <= 0:
            raise ValueError(
                f"lock_timeout must be >= 0 and lease_s > 0; got {lock_timeout}, {lease_s}"
            )
        self.lock_timeout = lock_timeout
        self.lease_s = lease_s

    # -- the primitives a backend implements ------------------------------------------------

    def _try_lock(self, conversation_id: str, token: str, until: float) -> bool:
        raise NotImplementedError

    def _unlock(self, conversation_id: str, token: str) -> None:
        raise NotImplementedError

    def _read(self, conversation_id: str) -> tuple[int, str] | None:
        raise NotImplementedError

    def _write(self, conversation_id: str, text: str, expected: int) -> bool:
        """Store *text* if the stored revision is *expected* (0: none stored yet)."""
        raise NotImplementedError

    def _remove(self, conversation_id: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the backend's connections."""

    def __enter__(self) -> ConversationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plain access -----------------------------------------------------------------------

    def load(self, conversation_id: str) -> ConversationState | None:
        """The stored state of *conversation_id*, or ``None`` (no lease taken)."""
        found = self._guard(conversation_id, self._read, conversation_id)
        return None if found is None else ConversationState.from_json(found[1])

    def revision(self, conversation_id: str) -> int:
        """How many times *conversation_id* was saved (0: never)."""
        found = self._guard(conversation_id, self._read, conversation_id)
        return 0 if found is None else found[0]

    def delete(self, conversation_id: str) -> None:
        """Forget *conversation_id*."""
        self._guard(conversation_id, self._remove, conversation_id)

    def _guard(self, conversation_id: str, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except ConvoError:
            raise
        except Exception as error:
            raise StoreError(
                f"conversation store {type(self).__name__} failed on {conversation_id!r}: "
                f"{type(error).__name__}",
                conversation_id=conversation_id,
            ) from error

    # -- leases -----------------------------------------------------------------------------

    def acquire(self, conversation_id: str, *, timeout: float | None = None) -> Stored:
        """Take the conversation's lease (waiting up to *timeout*, default ``lock_timeout``)
        and load it.

        Raises:
            ConversationBusy: another request held it for the whole timeout.
        """
        _check_id(conversation_id)
        token = secrets.token_hex(16)
        backoff = _Backoff(conversation_id, self.lock_timeout if timeout is None else timeout)
        while not self._lock_once(conversation_id, token):
            time.sleep(backoff.next())
        return self._load_locked(conversation_id, token)

    async def acquire_async(self, conversation_id: str, *, timeout: float | None = None) -> Stored:
        """:meth:`acquire` without blocking the event loop: each lock attempt and the load
        run on a worker thread, the waits between them on the loop (a request waiting for a
        busy conversation holds no thread). Cancelled at any point, it leaves no lease."""
        _check_id(conversation_id)
        token = secrets.token_hex(16)
        backoff = _Backoff(conversation_id, self.lock_timeout if timeout is None else timeout)
        # Polling, not an event: the lease is held in a database that other processes and
        # hosts write, so nothing in this process could be woken when it is given back.
        while not await self._in_thread_keeping(conversation_id, token, self._lock_once):  # noqa: ASYNC110
            await asyncio.sleep(backoff.next())
        try:
            return await asyncio.to_thread(self._load_locked, conversation_id, token)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(self.release, conversation_id, token))
            raise

    async def _in_thread_keeping(
        self, conversation_id: str, token: str, attempt: Callable[[str, str], bool]
    ) -> bool:
        """Run one lock attempt on a thread; if the caller is cancelled meanwhile, wait for
        it and give back a lease it took."""
        running = asyncio.ensure_future(asyncio.to_thread(attempt, conversation_id, token))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                if await running:
                    await asyncio.to_thread(self.release, conversation_id, token)
            raise

    def _lock_once(self, conversation_id: str, token: str) -> bool:
        result: bool = self._guard(
            conversation_id, self._try_lock, conversation_id, token, time.time() + self.lease_s
        )
        return result

    def _load_locked(self, conversation_id: str, token: str) -> Stored:
        try:
            found = self._guard(conversation_id, self._read, conversation_id)
            state = None if found is None else ConversationState.from_json(found[1])
        except BaseException:
            self.release(conversation_id, token)
            raise
        return Stored(conversation_id, token, 0 if found is None else found[0], state)

    def release(self, conversation_id: str, token: str) -> None:
        """Give the lease back (a no-op if it expired and someone else holds it)."""
        self._guard(conversation_id, self._unlock, conversation_id, token)

    def save(self, stored: Stored, session: Session | AsyncSession) -> None:
        """Save *session*'s state as the next revision of *stored*.

        Raises:
            ConversationConflict: someone saved since *stored* was loaded.
        """
        state = capture(session)
        if state.conversation_id != stored.conversation_id:
            raise ValueError(
                f"session is conversation {state.conversation_id!r}, not {stored.conversation_id!r}"
            )
        cid = stored.conversation_id
        if not self._guard(cid, self._write, cid, state.to_json(), stored.revision):
            raise ConversationConflict(
                f"conversation {cid!r} was saved by another writer since revision "
                f"{stored.revision} was loaded; this request's turn was not saved",
                conversation_id=cid,
                expected=stored.revision,
            )
        stored.revision += 1
        stored.state = state

    # -- sessions ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def session(
        self,
        conversation_id: str,
        prefix: Prefix,
        *,
        client: anthropic.Anthropic | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Iterator[Session]:
        """A :class:`~convo.Session` on the stored conversation, saved back at the end.

        The conversation's lease is held for the whole block, so concurrent requests on
        one id run one after the other. The state is saved when the block ends, also when
        it ends with an exception (a failed turn is already undone; what the tracker learnt
        from it is kept). *options* are :class:`~convo.Session`'s keyword arguments; give
        ``messages=`` only if your application keeps the history itself (default: the
        stored history).

        Usage::

            with store.session(conversation_id, PREFIX, client=client) as session:
                reply = session.send(text)

        Raises:
            ConversationBusy: another request held the conversation too long.
            ConversationConflict: the save found someone else's turn in between.
        """
        stored = self.acquire(conversation_id, timeout=timeout)
        try:
            session = Session(prefix, client=client, **_build_options(stored, options))
            if stored.state is not None:
                restore(session, stored.state)
            try:
                yield session
            finally:
                self.save(stored, session)
        finally:
            self.release(conversation_id, stored.token)

    @contextlib.asynccontextmanager
    async def async_session(
        self,
        conversation_id: str,
        prefix: Prefix,
        *,
        client: anthropic.AsyncAnthropic | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> AsyncIterator[AsyncSession]:
        """:meth:`session` for an :class:`~convo.AsyncSession`; the store's I/O runs on a
        worker thread, so it never blocks the event loop."""
        stored = await self.acquire_async(conversation_id, timeout=timeout)
        try:
            session = AsyncSession(prefix, client=client, **_build_options(stored, options))
            if stored.state is not None:
                restore(session, stored.state)
            try:
                yield session
            finally:
                await asyncio.to_thread(self.save, stored, session)
        finally:
            await asyncio.to_thread(self.release, conversation_id, stored.token)


class _Backoff:
    """Waits between lock attempts: 5 ms doubling to 100 ms, until *limit* seconds."""

    def __init__(self, conversation_id: str, limit: float) -> None:
        self._conversation_id = conversation_id
        self._limit = limit
        self._start = time.monotonic()
        self._pause = 0.005

    def next(self) -> float:
        """The next wait; raises :class:`ConversationBusy` once the limit is reached."""
        waited = time.monotonic() - self._start
        if waited >= self._limit:
            raise ConversationBusy(
                f"conversation {self._conversation_id!r} is in use by another request "
                f"(waited {waited:.1f} s; lock_timeout={self._limit})",
                conversation_id=self._conversation_id,
                waited_s=waited,
            )
        pause = min(self._pause, self._limit - waited)
        self._pause = min(self._pause * 2, 0.1)
        return pause


def _check_id(conversation_id: str) -> None:
    if not isinstance(conversation_id, str) or not conversation_id:
        raise ValueError(f"conversation_id must be a non-empty str, got {conversation_id!r}")
    if len(conversation_id) > 200:
        raise ValueError("conversation_id must be at most 200 characters")


def _build_options(stored: Stored, options: dict[str, Any]) -> dict[str, Any]:
    if "conversation_id" in options:
        raise TypeError("conversation_id= comes from the store; do not pass it")
    built = dict(options)
    built["conversation_id"] = stored.conversation_id
    if stored.state is not None:
        # An application that keeps the history itself passes messages=; the stored
        # tracker then names what it changed (messages_changed, with the index).
        built.setdefault("messages", stored.state.messages)
        built.setdefault("session_id", stored.state.session_id)
    return built

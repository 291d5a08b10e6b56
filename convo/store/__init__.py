"""Conversations that survive stateless requests: save and restore a conversation by id.

A web backend that builds a fresh :class:`~convo.Session` for each request restores the
conversation's state first (history, what the tracker believes is cached, the previous
request's fingerprint, the last message id, the TTL observations) and saves it back after
the turn, so it predicts and names busts exactly as one long-lived session would. See
``docs/store.md``.

Usage::

    store = convo.store.open_store()            # SQLite by default
    with store.session(conversation_id, PREFIX, client=client) as session:
        reply = session.send(text)
"""

from convo.store.base import (
    ConversationBusy,
    ConversationConflict,
    ConversationStore,
    Stored,
    StoreError,
)
from convo.store.open import open_store
from convo.store.postgres import PostgresStore
from convo.store.redis_store import RedisStore
from convo.store.sqlite import SQLiteStore
from convo.store.state import ConversationState, capture, restore

__all__ = [
    "ConversationBusy",
    "ConversationConflict",
    "ConversationState",
    "ConversationStore",
    "PostgresStore",
    "RedisStore",
    "SQLiteStore",
    "StoreError",
    "Stored",
    "capture",
    "open_store",
    "restore",
]

"""Opening a store from a URL."""

from __future__ import annotations

from pathlib import Path

from convo.store.base import ConversationStore
from convo.store.postgres import PostgresStore
from convo.store.redis_store import RedisStore
from convo.store.sqlite import SQLiteStore

__all__ = ["open_store"]


def open_store(url: str | Path | None = None, **options: object) -> ConversationStore:
    """Open a store from a URL: ``None`` (the default SQLite file), a path or
    ``sqlite:///path``, ``redis://...`` / ``rediss://...``, or ``postgresql://...``.

    *options* go to the backend's constructor (``lock_timeout=``, ``lease_s=``, ...).
    """
    if url is None or isinstance(url, Path):
        return SQLiteStore(url, **options)  # type: ignore[arg-type]
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url, **options)  # type: ignore[arg-type]
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, **options)  # type: ignore[arg-type]
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///") :], **options)  # type: ignore[arg-type]
    if "://" in url:
        raise ValueError(
            f"unknown store URL {url!r}: use a path, sqlite:///, redis:// or postgresql://"
        )
    return SQLiteStore(url, **options)  # type: ignore[arg-type]

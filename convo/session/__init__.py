"""Sessions: a conversation on a frozen prefix, with caching, retries, limits and a ledger."""

from convo.session.aio import AsyncSession
from convo.session.reply import Reply, Stats
from convo.session.streaming import AsyncReplyStream, ReplyStream
from convo.session.sync import Session
from convo.session.turn import KeepAlive

__all__ = [
    "AsyncReplyStream",
    "AsyncSession",
    "KeepAlive",
    "Reply",
    "ReplyStream",
    "Session",
    "Stats",
]

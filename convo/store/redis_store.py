"""Conversations in Redis, for processes on many hosts."""

from __future__ import annotations

from typing import Any

from convo.store.base import ConversationStore

__all__ = ["RedisStore"]

# Compare-and-set of (revision, state): refuses when the stored revision is not ARGV[1].
_SAVE = """
local rev = tonumber(redis.call('HGET', KEYS[1], 'rev') or '0')
if rev ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], 'rev', rev + 1, 'state', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return rev + 1
"""

# Release only a lease this token holds.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore(ConversationStore):
    """Conversations in Redis (``redis-py``, the ``redis`` extra).

    A conversation is a hash ``{key_prefix}{id}`` (revision and state), its lease a key
    ``{key_prefix}{id}:lease`` set with ``NX`` and an expiry; the save and the release are
    Lua scripts (atomic). Redis trouble is not degraded around: a conversation that cannot
    be loaded or saved raises :class:`~convo.store.StoreError`.

    Args:
        url: A ``redis://`` URL, or pass *client*.
        client: A ``redis.Redis`` to use instead of building one.
        key_prefix: What every key starts with.
        expire_s: Forget a conversation this many seconds after its last save (``None``:
            keep it until :meth:`delete`).
        lock_timeout, lease_s: See :class:`ConversationStore`.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        key_prefix: str = "convo:conversation:",
        expire_s: float | None = None,
        lock_timeout: float = 30.0,
        lease_s: float = 120.0,
    ) -> None:
        super().__init__(lock_timeout=lock_timeout, lease_s=lease_s)
        if (url is None) == (client is None):
            raise ValueError("give RedisStore a url or a client (one of them)")
        if url is not None:
            import redis

            client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
            self._owned = True
        else:
            self._owned = False
        self._redis = client
        self.key_prefix = key_prefix
        self.expire_s = expire_s
        self._save_script = client.register_script(_SAVE)
        self._unlock_script = client.register_script(_UNLOCK)

    def _key(self, conversation_id: str) -> str:
        return f"{self.key_prefix}{conversation_id}"

    def close(self) -> None:
        if self._owned:
            self._redis.close()

    def _try_lock(self, conversation_id: str, token: str, until: float) -> bool:
        lease_ms = max(1, int(self.lease_s * 1000))
        return bool(
            self._redis.set(self._key(conversation_id) + ":lease", token, nx=True, px=lease_ms)
        )

    def _unlock(self, conversation_id: str, token: str) -> None:
        self._unlock_script(keys=[self._key(conversation_id) + ":lease"], args=[token])

    def _read(self, conversation_id: str) -> tuple[int, str] | None:
        rev, state = self._redis.hmget(self._key(conversation_id), ["rev", "state"])
        if rev is None or state is None:
            return None
        text = state.decode() if isinstance(state, bytes) else str(state)
        return int(rev), text

    def _write(self, conversation_id: str, text: str, expected: int) -> bool:
        expire_ms = int(self.expire_s * 1000) if self.expire_s else 0
        result = self._save_script(
            keys=[self._key(conversation_id)], args=[expected, text, expire_ms]
        )
        return int(result) == expected + 1

    def _remove(self, conversation_id: str) -> None:
        self._redis.delete(self._key(conversation_id))

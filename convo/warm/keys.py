"""The values the warm registries deal in: keys, warm state and flights.

A warm key names one cacheable prefix the way the server scopes its cache: per workspace
(here, per API key), per model, per exact prefix bytes (the fingerprint). The API key
itself is never kept: only a hash of it, so nothing stored in memory, in Redis or in a
``repr`` can leak a secret.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import xxhash

from convo.errors import ConvoError

__all__ = ["Flight", "Role", "WarmKey", "WarmState", "WarmWaitTimeout", "workspace_id"]

#: What a request is to the prefix it sends: the one that writes it, or one that reads it.
Role = Literal["writer", "reader"]


def workspace_id(api_key: str) -> str:
    """Return the stable, non-secret name convo uses for the workspace behind an API key.

    It is the xxh3-64 hex digest of the key: the same on every host (so processes sharing a
    Redis agree on it) and 64 bits, far too few to hold a key of a hundred characters, so
    the key cannot be read back from it.

    Args:
        api_key: The Anthropic API key the requests are sent with.

    Returns:
        16 lowercase hex digits.

    .. versionadded:: 0.1
    """
    return xxhash.xxh3_64_hexdigest(api_key.encode())


@attrs.frozen
class WarmKey:
    """Names one cached prefix: per workspace, per model, per exact bytes.

    Attributes:
        workspace: A hash of the API key (:func:`workspace_id`), never the key itself.
        model: The model id the prefix is sent to; caches are per model.
        fingerprint: The static prefix's fingerprint (hex), e.g. ``Prefix.fingerprint``.

    .. versionadded:: 0.1
    """

    workspace: str
    model: str
    fingerprint: str

    @classmethod
    def for_api_key(cls, api_key: str, model: str, fingerprint: str) -> WarmKey:
        """Build the key for a prefix sent with ``api_key``, keeping only a hash of the key.

        Args:
            api_key: The API key the requests are sent with; it is hashed, not kept.
            model: The model id.
            fingerprint: The prefix's fingerprint (hex).

        Returns:
            The key.
        """
        return cls(workspace=workspace_id(api_key), model=model, fingerprint=fingerprint)


@attrs.frozen
class WarmState:
    """What a registry knows about one prefix at one moment.

    Times are wall-clock seconds (``time.time()`` unless a registry was given another
    clock). The server counts an entry's lifetime from the *start* of the request that
    wrote or last read it, so these are request start times, not response end times.

    Attributes:
        last_write_start: Start of the last request that wrote the prefix, if any.
        last_read_start: Start of the last request that read it, if any.
        ttl_seconds: The lifetime of the latest touch (300 for ``5m``, 3600 for ``1h``).
        expires_at: Start of the latest write or read plus its TTL; ``-inf`` if the prefix
            was never written or read (only a write is in flight).
        writing: A write is in flight whose response has not begun yet.

    .. versionadded:: 0.1
    """

    last_write_start: float | None
    last_read_start: float | None
    ttl_seconds: float
    expires_at: float
    writing: bool

    def live(self, now: float) -> bool:
        """Return whether the cached prefix can still be read at ``now``."""
        return self.expires_at > now

    def remaining(self, now: float) -> float:
        """Return the seconds the cached prefix has left at ``now`` (0 once expired)."""
        return max(0.0, self.expires_at - now) if math.isfinite(self.expires_at) else 0.0


@attrs.frozen
class Flight:
    """A request's permission to send a prefix, from ``acquire``.

    Attributes:
        key: The prefix.
        role: ``"writer"``: this request writes the cold or expired prefix, and must call
            ``began`` once its response begins (or ``abandon`` if it fails before then);
            ``"reader"``: the prefix is warm, or the write it waited for has begun.
        token: Identifies the writer (the owner of the lock in Redis); empty for a reader.
        waited: Seconds spent waiting for another request's write to begin.
        acquired_at: The registry clock when the role was given: a lower bound of the
            request's start, used by ``began`` to date a write before ``record`` has the
            exact start.
        ttl_seconds: The TTL the request asked for.
        state: The prefix's state as of the claim, read in the same step (so a caller needs
            no separate ``state()`` round trip): for a reader, including the read that
            ``acquire(refresh_at=...)`` recorded; for a writer, ``writing`` is true (its own
            claim). ``None`` only on a flight built by hand; registries always set it.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 ``state``.
    """

    key: WarmKey
    role: Role
    token: str
    waited: float
    acquired_at: float = attrs.field(default=0.0, kw_only=True)
    ttl_seconds: float = attrs.field(default=300.0, kw_only=True)
    state: WarmState | None = attrs.field(default=None, kw_only=True)


class WarmWaitTimeout(ConvoError, TimeoutError):
    """``acquire`` waited its whole ``timeout`` for another request's write to begin.

    Nothing was sent. Sending anyway is safe; it costs a second cache write.

    Attributes:
        key: The prefix waited for.
        waited: Seconds waited.

    .. versionadded:: 0.1
    """

    def __init__(self, key: WarmKey, waited: float) -> None:
        super().__init__(
            f"waited {waited:.3f} s for another request's cache write of {key.model} prefix "
            f"{key.fingerprint[:12]} to begin"
        )
        self.key = key
        self.waited = waited


def check_refresh_at(refresh_at: float | None) -> None:
    """Raise ``TypeError`` unless ``refresh_at`` is ``None`` or a finite clock time."""
    if refresh_at is None:
        return
    if not (isinstance(refresh_at, (int, float)) and math.isfinite(refresh_at)):
        raise TypeError(
            f"refresh_at must be a finite clock time (the request's start), got {refresh_at!r}"
        )


def check_ttl(ttl_seconds: float) -> None:
    """Raise ``ValueError`` unless ``ttl_seconds`` is a positive finite number."""
    if not (isinstance(ttl_seconds, (int, float)) and math.isfinite(ttl_seconds)):
        raise TypeError(f"ttl_seconds must be a finite number of seconds, got {ttl_seconds!r}")
    if ttl_seconds <= 0:
        raise ValueError(
            f"ttl_seconds must be positive (300 for 5m, 3600 for 1h), got {ttl_seconds}"
        )


def needs_warming(state: WarmState | None, now: float, margin: float) -> bool:
    """The shared rule: cold, expired or expiring within ``margin``, and no write in flight."""
    if state is None:
        return True
    if state.writing:
        return False
    return state.expires_at - now <= margin

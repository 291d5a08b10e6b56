"""Warm state of cached prefixes: single-flight cache writes and the TTL clock.

The server makes a cache entry readable only once the response that writes it has begun,
so N requests sent at once on a cold prefix pay N writes. The documented fix is to wait
for the first response to start before sending the others; a *warm registry* does that
waiting for every session sharing it, and keeps each prefix's TTL clock (counted from
request starts) so sessions know when to pre-warm.

- :class:`WarmRegistry`: in one process (``WarmRegistry.default()`` is shared by all).
- :class:`RedisWarmRegistry`: across processes and hosts, through Redis.
- :class:`WarmBackend`: the protocol both satisfy, for sessions and for fakes.
- :func:`choose_ttl` / :func:`ttl_costs`: when a 1h TTL pays over 5m.

See ``docs/warm.md``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from convo.warm.keys import Flight, Role, WarmKey, WarmState, WarmWaitTimeout, workspace_id
from convo.warm.memory import WarmRegistry
from convo.warm.redis_registry import RedisWarmRegistry
from convo.warm.ttl import TtlCosts, choose_ttl, ttl_costs

__all__ = [
    "Flight",
    "RedisWarmRegistry",
    "Role",
    "TtlCosts",
    "WarmBackend",
    "WarmKey",
    "WarmRegistry",
    "WarmState",
    "WarmWaitTimeout",
    "choose_ttl",
    "ttl_costs",
    "workspace_id",
]


@runtime_checkable
class WarmBackend(Protocol):
    """What a session needs from a warm registry; both registries provide it.

    A request's life: ``acquire`` (maybe waiting for another writer) → send → ``began``
    when its response begins (a writer's entry is then readable) → ``record`` with what
    the usage says was written or read. A writer that fails before its response begins
    calls ``abandon`` instead of ``began``.

    ``acquire`` hands back the prefix's state as of the claim (``Flight.state``), and with
    ``refresh_at`` also records a reader's read, so a warm request needs one call (one
    Redis round trip) before it is sent. Waiters are woken, not polled. No method lets a
    ``redis`` exception escape: ``RedisWarmRegistry`` falls back to an in-process registry.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 ``refresh_at`` and ``Flight.state``.
    """

    def acquire(
        self,
        key: WarmKey,
        *,
        ttl_seconds: float,
        timeout: float | None = None,
        refresh_at: float | None = None,
    ) -> Flight: ...

    async def acquire_async(
        self,
        key: WarmKey,
        *,
        ttl_seconds: float,
        timeout: float | None = None,
        refresh_at: float | None = None,
    ) -> Flight: ...

    def began(self, flight: Flight) -> None: ...

    async def began_async(self, flight: Flight) -> None: ...

    def abandon(self, flight: Flight) -> None: ...

    async def abandon_async(self, flight: Flight) -> None: ...

    def record(
        self, key: WarmKey, *, started_at: float, ttl_seconds: float, wrote: bool, read: bool
    ) -> None: ...

    async def record_async(
        self, key: WarmKey, *, started_at: float, ttl_seconds: float, wrote: bool, read: bool
    ) -> None: ...

    def state(self, key: WarmKey) -> WarmState | None: ...

    async def state_async(self, key: WarmKey) -> WarmState | None: ...

    def needs_warming(self, key: WarmKey, *, margin: float = 0.0) -> bool: ...

    async def needs_warming_async(self, key: WarmKey, *, margin: float = 0.0) -> bool: ...

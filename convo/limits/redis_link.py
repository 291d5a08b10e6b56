"""One Lua script in Redis, reached sync or async, and whether Redis is answering.

:class:`RedisLink` owns the connections of a :class:`~convo.limits.RedisRateLimiter`: a
sync client, one asyncio client per event loop (a ``redis.asyncio`` client belongs to the
loop it was made in), bounded *blocking* pools when it builds them, and the health state
that turns Redis trouble into a ``None`` result (the caller's cue to use its local
fallback) instead of an exception: one warning per outage on the ``convo`` logger, a probe
at most every ``probe_interval`` seconds, an ``INFO`` record on rejoining. Nothing here
knows about buckets.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

__all__ = ["DEFAULT_MAX_CONNECTIONS", "RedisLink", "import_redis"]

_LOG = logging.getLogger("convo")
_T = TypeVar("_T")

#: Connections per pool (one sync, one asyncio per event loop) when built here. Each
#: operation holds a connection for one round trip, so a few dozen serve thousands of
#: concurrent callers; the pool is a *blocking* one, so more callers wait their turn
#: instead of failing (redis-py 8's asyncio pool raises MaxConnectionsError past 100).
DEFAULT_MAX_CONNECTIONS = 64

#: Seconds a caller may wait for a free pooled connection before that counts as Redis
#: trouble (and the local fallback takes over).
_POOL_TIMEOUT = 30.0

#: Socket timeouts for pools built here, unless the URL sets its own: an unreachable host
#: must turn into the fallback within seconds, not the operating system's minutes.
_SOCKET_CONNECT_TIMEOUT = 2.0
_SOCKET_TIMEOUT = 5.0

#: Connection settings copied from a sync client to the asyncio one built from it.
_PORTABLE = (
    "host",
    "port",
    "db",
    "username",
    "password",
    "socket_timeout",
    "socket_connect_timeout",
    "client_name",
)


def import_redis() -> Any:
    """Return the ``redis`` module, or say which extra to install."""
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - the test environment has redis
        raise ImportError(
            "RedisRateLimiter needs the redis package: pip install 'convo[redis]'"
        ) from exc
    return redis


def _no_retry(*, asynchronous: bool) -> Any:
    """A Retry that does not retry: a failure goes to the fallback at once.

    redis-py 6+ retries a failed command 10 times with backoff by default, which would
    stall a caller for seconds on every probe of a Redis that is down; and retrying the
    reservation script after a dropped reply could take the same reservation twice. A
    pooled connection that went stale (the server restarted) is reconnected when it is
    checked out, so no retry is needed for that.
    """
    from redis.backoff import NoBackoff

    if asynchronous:
        from redis.asyncio.retry import Retry as AsyncRetry

        return AsyncRetry(NoBackoff(), 0)
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


def _pool_options(max_connections: int, *, asynchronous: bool) -> dict[str, Any]:
    return {
        "max_connections": max_connections,
        "timeout": _POOL_TIMEOUT,
        "socket_connect_timeout": _SOCKET_CONNECT_TIMEOUT,
        "socket_timeout": _SOCKET_TIMEOUT,
        "retry": _no_retry(asynchronous=asynchronous),
    }


def _decode(raw: Sequence[Any]) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in raw]


class RedisLink:
    """Runs one script on *keys*, sync or async; ``None`` instead of any Redis failure.

    Args:
        redis: A ``redis.Redis`` client (used as it is, with its own retry settings) or a
            URL (then a ``BlockingConnectionPool`` of *max_connections* is built).
        script: The Lua source.
        keys: The script's KEYS.
        owner: Who to name in log records.
        async_redis: A ``redis.asyncio.Redis`` to use instead of building one per loop.
        max_connections: Size of each pool built here.
        probe_clock: Seconds, for the probe interval (the limiter's clock in tests).
        probe_interval: Seconds between tries while Redis is unreachable.
    """

    def __init__(
        self,
        redis: Any,
        *,
        script: str,
        keys: Sequence[str],
        owner: object,
        async_redis: Any,
        max_connections: int,
        probe_clock: Callable[[], float],
        probe_interval: float,
    ) -> None:
        module = import_redis()
        self._module = module
        self._source = script
        self._keys = list(keys)
        self._owner = owner
        self._max_connections = max_connections
        self._errors: tuple[type[BaseException], ...] = (module.RedisError, OSError)
        self._url = redis if isinstance(redis, str) else None
        if isinstance(redis, str):
            options = _pool_options(max_connections, asynchronous=False)
            pool = module.BlockingConnectionPool.from_url(redis, **options)
            self.redis: Any = module.Redis(connection_pool=pool)
        else:
            self.redis = redis
        self.script: Callable[..., Any] = self.redis.register_script(script)
        self._given_async = async_redis
        self._async: tuple[asyncio.AbstractEventLoop, Any, Any] | None = None
        # Shielded calls and undo steps that outlive a cancelled caller; held here so the
        # event loop's weak references do not let them be collected half-way.
        self._background: set[asyncio.Future[Any]] = set()
        self._probe_clock = probe_clock
        self._probe_interval = probe_interval
        self._health = threading.Lock()
        self._down = False
        self._next_probe = 0.0
        # Counts the changes between up and down. A call notes it when it starts, and its
        # outcome changes the state only if no change came in between: a reply sent before
        # an outage (or a failure from before a rejoin) arriving late is old news, and
        # must not flip the state back (one warning per outage, not one per straggler).
        self._changes = 0

    @property
    def degraded(self) -> bool:
        """Whether Redis failed at the last try (the caller is on its fallback)."""
        return self._down

    # -- health -------------------------------------------------------------------------------

    def try_redis(self) -> bool:
        """Whether this call should go to Redis: always when up; when down, one probe per
        interval (the caller that claims it tries; the others use the fallback)."""
        with self._health:
            if not self._down:
                return True
            now = self._probe_clock()
            if now < self._next_probe:
                return False
            self._next_probe = now + self._probe_interval
            return True

    def _failed(self, error: BaseException, started: int) -> None:
        with self._health:
            if started != self._changes:
                return
            self._next_probe = self._probe_clock() + self._probe_interval
            if self._down:
                return
            self._down = True
            self._changes += 1
        _LOG.warning(
            "%r: Redis is unreachable (%s: %s); rate limiting in this process only, with "
            "the same limits, until it answers again (tried every %g s)",
            self._owner,
            type(error).__name__,
            error,
            self._probe_interval,
        )

    def _answered(self, started: int) -> None:
        with self._health:
            if not self._down or started != self._changes:
                return
            self._down = False
            self._changes += 1
        _LOG.info("%r: Redis answers again; back on the shared budget", self._owner)

    # -- calls --------------------------------------------------------------------------------

    def call(self, argv: Sequence[str]) -> list[str] | None:
        """Run the script; ``None`` when Redis is down or just failed."""
        if not self.try_redis():
            return None
        started = self._changes
        try:
            raw = self.script(keys=self._keys, args=list(argv))
        except self._errors as error:
            self._failed(error, started)
            return None
        self._answered(started)
        return _decode(raw)

    def _async_script(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            client = self._given_async
            if client is None:
                aio = self._module.asyncio
                options = _pool_options(self._max_connections, asynchronous=True)
                if self._url is not None:
                    pool = aio.BlockingConnectionPool.from_url(self._url, **options)
                else:
                    # Only the settings both clients understand; the sync pool also holds
                    # sync-only objects that redis.asyncio refuses.
                    given = self.redis.connection_pool.connection_kwargs
                    options |= {k: given[k] for k in _PORTABLE if k in given}
                    if "path" in given:
                        options["connection_class"] = aio.UnixDomainSocketConnection
                        options["path"] = given["path"]
                    pool = aio.BlockingConnectionPool(**options)
                client = aio.Redis.from_pool(pool)
            self._async = (loop, client, client.register_script(self._source))
        return self._async[2]

    async def send(self, argv: Sequence[str]) -> list[str] | None:
        """Run the script through redis.asyncio (unshielded: see :meth:`acall`)."""
        started = self._changes
        try:
            raw = await self._async_script()(keys=self._keys, args=list(argv))
        except self._errors as error:
            self._failed(error, started)
            return None
        self._answered(started)
        return _decode(raw)

    def spawn(self, coroutine: Coroutine[Any, Any, _T]) -> asyncio.Future[_T]:
        """Run *coroutine* as a task this link keeps until it is done."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def acall(self, argv: Sequence[str]) -> list[str] | None:
        """:meth:`call` through redis.asyncio, shielded from the caller's cancellation.

        A command cancelled half-way leaves its effect unknown (and with redis-py 8.1 such
        a cancellation was seen lost now and then: the task ran on). Shielded, it completes, in the
        background if its caller is gone, so its effect is known and its connection goes
        back to the pool; the caller still gets its ``CancelledError`` at once.
        """
        if not self.try_redis():
            return None
        return await asyncio.shield(self.spawn(self.send(argv)))

    def delete(self) -> None:
        """Delete the keys (errors count as Redis trouble, and are not raised)."""
        started = self._changes
        try:
            self.redis.delete(*self._keys)
        except self._errors as error:
            self._failed(error, started)

    async def aclose(self) -> None:
        """Let this loop's background calls finish, then close the asyncio client built
        here (not one that was given)."""
        loop = asyncio.get_running_loop()
        mine = [t for t in self._background if t.get_loop() is loop]
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)
        if self._async is not None and self._async[0] is loop and self._given_async is None:
            await self._async[1].aclose()
        self._async = None

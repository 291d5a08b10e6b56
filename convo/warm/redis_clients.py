"""Building the Redis clients of :class:`~convo.warm.RedisWarmRegistry`, and knowing when
Redis is in trouble.

The clients convo builds from a URL use bounded *blocking* pools and short socket timeouts;
:class:`Health` decides, call by call, whether to go to Redis, to probe it again, or to stay
with the in-process fallback, and logs the outage once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "POOL_TIMEOUT",
    "Health",
    "Route",
    "client_options",
    "import_redis",
    "trouble_types",
    "where",
]

logger = logging.getLogger("convo")

#: Connections per pool convo builds (the sync one, and one per event loop): enough that
#: 1,000 coroutines of one process queue for a few milliseconds at most (a script takes
#: well under one), few enough that a fleet of processes stays far below Redis's
#: ``maxclients`` (10,000 by default).
DEFAULT_MAX_CONNECTIONS = 50

#: Seconds a caller waits for a free pooled connection before that counts as trouble.
POOL_TIMEOUT = 10.0

# Socket settings of the clients convo builds: a dead or unreachable Redis is noticed in
# about a second (then the registry degrades), and a command is sent again at most once,
# at once (enough to get past a pooled connection that a Redis restart left dead; the
# scripts are idempotent for exactly that reason). redis-py's own default retries three
# times with backoff, seconds that every call would wait while Redis is down.
_CONNECT_TIMEOUT = 1.0
_SOCKET_TIMEOUT = 2.0

Route = Literal["redis", "probe", "local"]


def import_redis() -> Any:
    try:
        import redis
        import redis.asyncio
        import redis.asyncio.retry
        import redis.backoff
        import redis.retry
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            'RedisWarmRegistry needs the redis package: pip install "convo[redis]"'
        ) from exc
    return redis


def trouble_types(module: Any) -> tuple[type[BaseException], ...]:
    """What counts as Redis trouble: every redis error and every socket-level failure."""
    return (module.exceptions.RedisError, OSError, asyncio.TimeoutError)


def client_options(module: Any, *, asyncio_flavour: bool) -> dict[str, Any]:
    backoff = module.backoff.NoBackoff()
    retry_class = module.asyncio.retry.Retry if asyncio_flavour else module.retry.Retry
    return {
        "socket_connect_timeout": _CONNECT_TIMEOUT,
        "socket_timeout": _SOCKET_TIMEOUT,
        "retry": retry_class(backoff, 1),
    }


def where(url: str | None, kwargs: dict[str, Any]) -> str:
    """A Redis address fit for a log line: no user name or password."""
    if url is not None:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"
    host, port = kwargs.get("host", "?"), kwargs.get("port", "?")
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


class Health:
    """Whether Redis is answering, and when to try it again. Thread-safe.

    Invariant: ``down`` is true from the first failure until a *probe* (a call let through
    while down, at most one per ``interval`` of the injected clock) succeeds. Only probes
    rejoin: a call that started before an outage and happened to succeed must not flip the
    state back and forth, which would log the outage twice.
    """

    def __init__(self, clock: Callable[[], float], interval: float, where: str) -> None:
        self._clock = clock
        self._interval = interval
        self._where = where
        self._lock = threading.Lock()
        self.down = False
        self._next_probe = -math.inf

    def route(self) -> Route:
        with self._lock:
            if not self.down:
                return "redis"
            now = self._clock()
            if now >= self._next_probe:
                self._next_probe = now + self._interval
                return "probe"
            return "local"

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self._next_probe = self._clock() + self._interval
            if self.down:
                return
            self.down = True
        logger.warning(
            "Redis at %s is not answering (%s: %s); warm state is kept in this process only "
            "(single flight per process) until it answers again; trying every %g s",
            self._where,
            type(error).__name__,
            error,
            self._interval,
        )

    def answered(self, route: Route) -> None:
        if route != "probe":
            return
        with self._lock:
            if not self.down:
                return
            self.down = False
        logger.info("Redis at %s answers again; warm state is shared again", self._where)

"""The warm registry shared through Redis: single-flight writes across processes and hosts.

Layout, per prefix (``<p>`` is the registry's prefix, ``convo:warm:`` by default)::

    <p><workspace>:<model>:<fingerprint>:state    hash  w, r, exp, ttl  (floats, as %.17g)
    <p><workspace>:<model>:<fingerprint>:writer   string: the writer's token, SET NX PX

``w``/``r`` are the starts of the last write/read, ``exp`` their latest start plus TTL and
``ttl`` that touch's TTL. The state hash expires a day after ``exp``; the writer key after
``write_timeout`` (Redis's own clock), which is what frees the claim of a crashed writer.
``workspace`` is a hash of the API key; no secret is ever written.

Every change is one Lua script, so no client sees a half-made change: ``acquire`` reads the
state and claims the writer key in one step (a writer elected just after another's write
began would pay a second write), and ``began`` marks the state live and deletes the claim
in one step (a waiter polling in between must not find neither).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from convo.warm.keys import Flight, Role, WarmKey, WarmState, WarmWaitTimeout, check_ttl
from convo.warm.keys import needs_warming as _needs_warming
from convo.warm.memory import RETENTION_SECONDS

if TYPE_CHECKING:
    import redis as redis_sync
    import redis.asyncio as redis_async

__all__ = ["RedisWarmRegistry"]

# Shared by began and record: keep maxima (records arrive out of order), then let the hash
# expire RETENTION after the entry does. KEYS[1] = state; ARGV: started, ttl, wrote, read,
# now, retention_ms (first ARGV index in BASE).
_TOUCH = """
local function fmt(x) return string.format('%.17g', x) end
local started, ttl = tonumber(ARGV[BASE]), tonumber(ARGV[BASE + 1])
local wrote, read = ARGV[BASE + 2] == '1', ARGV[BASE + 3] == '1'
local now, retention = tonumber(ARGV[BASE + 4]), tonumber(ARGV[BASE + 5])
local cur = redis.call('HMGET', KEYS[1], 'w', 'r', 'exp')
if wrote and (not cur[1] or started > tonumber(cur[1])) then
  redis.call('HSET', KEYS[1], 'w', fmt(started))
end
if read and (not cur[2] or started > tonumber(cur[2])) then
  redis.call('HSET', KEYS[1], 'r', fmt(started))
end
local exp = tonumber(cur[3])
if not exp or started + ttl > exp then
  exp = started + ttl
  redis.call('HSET', KEYS[1], 'exp', fmt(exp), 'ttl', fmt(ttl))
end
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((exp - now) * 1000) + retention))
"""

# KEYS: state, writer. ARGV: now, token, write_timeout_ms. Returns 1 reader, 2 writer,
# 0 wait (someone else holds the claim).
_ACQUIRE = """
local exp = tonumber(redis.call('HGET', KEYS[1], 'exp'))
if exp and exp > tonumber(ARGV[1]) then return 1 end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return 2 end
return 0
"""

# KEYS: state, writer. ARGV: token, then the touch arguments. Only the owner may begin.
_BEGAN = (
    """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local BASE = 2
"""
    + _TOUCH
    + """
redis.call('DEL', KEYS[2])
return 1
"""
)

# KEYS: state. ARGV: the touch arguments.
_RECORD = "local BASE = 1\n" + _TOUCH + "return 1\n"

# KEYS: writer. ARGV: token. Release only if still the owner (a lapsed claim may be another's).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _import_redis() -> Any:
    try:
        import redis
        import redis.asyncio
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            'RedisWarmRegistry needs the redis package: pip install "convo[redis]"'
        ) from exc
    return redis


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


class RedisWarmRegistry:
    """Warm state shared through Redis, with the guarantees of :class:`WarmRegistry`.

    Every process (on any host) that builds a ``RedisWarmRegistry`` on the same Redis and
    ``prefix`` shares one single-flight claim and one TTL clock per prefix. Waiters poll
    every ``poll_interval`` seconds. A writer that crashes holds its claim until Redis
    expires it, ``write_timeout`` seconds after it was taken.

    Hosts must keep their clocks in step (NTP): TTL times are the hosts' wall clocks, and a
    skew of *s* seconds moves the live window by *s*.

    Args:
        redis: A ``redis.Redis`` client or a URL (``redis://127.0.0.1:6379/0``).
        async_redis: The ``redis.asyncio.Redis`` client for the ``*_async`` methods. Given a
            URL, one is built per event loop; given a sync client and no async one, one is
            built per loop from the sync client's host, port, database and credentials.
        prefix: Prepended to every key convo writes.
        clock: Wall-clock seconds; injectable for tests.
        write_timeout: Seconds (on Redis's clock) before a silent writer's claim lapses.
        poll_interval: Seconds between a waiter's checks.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        redis: redis_sync.Redis | str,
        *,
        async_redis: redis_async.Redis | None = None,
        prefix: str = "convo:warm:",
        clock: Callable[[], float] = time.time,
        write_timeout: float = 60.0,
        poll_interval: float = 0.02,
    ) -> None:
        module = _import_redis()
        if write_timeout <= 0 or poll_interval <= 0:
            raise ValueError("write_timeout and poll_interval must be positive seconds")
        if isinstance(redis, str):
            self._url: str | None = redis
            self._redis: redis_sync.Redis = module.Redis.from_url(redis)
        elif isinstance(redis, module.Redis):
            self._url = None
            self._redis = redis
        else:
            raise TypeError(
                f"redis must be a redis.Redis client or a URL string, not {type(redis).__name__}"
            )
        self._given_async = async_redis
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis_async.Redis]
        self._async = weakref.WeakKeyDictionary()
        self._prefix = prefix
        self._clock = clock
        self._write_timeout_ms = max(1, math.ceil(write_timeout * 1000))
        self._poll_interval = float(poll_interval)
        self._retention_ms = int(RETENTION_SECONDS * 1000)
        self._sync_scripts = self._scripts(self._redis)

    # -- clients and scripts ---------------------------------------------------------------

    @staticmethod
    def _scripts(client: Any) -> dict[str, Any]:
        return {
            name: client.register_script(text)
            for name, text in (
                ("acquire", _ACQUIRE),
                ("began", _BEGAN),
                ("record", _RECORD),
                ("release", _RELEASE),
            )
        }

    def _async_client(self) -> tuple[Any, dict[str, Any]]:
        """The async client (and its scripts) for the running loop, built on first use."""
        loop = asyncio.get_running_loop()
        client: Any = self._given_async
        if client is None:
            client = self._async.get(loop)
            if client is None:
                module = _import_redis()
                if self._url is not None:
                    client = module.asyncio.Redis.from_url(self._url)
                else:
                    kwargs = self._redis.connection_pool.connection_kwargs
                    if "host" not in kwargs:
                        raise TypeError(
                            "cannot derive an async client from this redis.Redis; "
                            "pass async_redis= (a redis.asyncio.Redis) or a URL"
                        )
                    client = module.asyncio.Redis(
                        **{
                            k: kwargs[k]
                            for k in ("host", "port", "db", "username", "password")
                            if k in kwargs
                        }
                    )
                self._async[loop] = client
        scripts: dict[str, Any] | None = getattr(client, "_convo_warm_scripts", None)
        if scripts is None:
            scripts = self._scripts(client)
            client._convo_warm_scripts = scripts
        return client, scripts

    def close(self) -> None:
        """Close the sync client if this registry built it (from a URL)."""
        if self._url is not None:
            self._redis.close()

    async def aclose(self) -> None:
        """Close the async client this registry built for the running loop, if any."""
        client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    # -- keys ------------------------------------------------------------------------------

    def _keys(self, key: WarmKey) -> list[str]:
        # A hash tag ({...}) puts both keys of one prefix in one Redis Cluster slot, as the
        # Lua scripts that touch them together require.
        base = f"{self._prefix}{{{key.workspace}:{key.model}:{key.fingerprint}}}"
        return [f"{base}:state", f"{base}:writer"]

    def _touch_args(
        self, started_at: float, ttl_seconds: float, *, wrote: bool, read: bool
    ) -> list[str]:
        return [
            repr(float(started_at)),
            repr(float(ttl_seconds)),
            "1" if wrote else "0",
            "1" if read else "0",
            repr(float(self._clock())),
            str(self._retention_ms),
        ]

    # -- acquiring -------------------------------------------------------------------------

    def _outcome(
        self, key: WarmKey, code: int, token: str, ttl: float, start: float, now: float
    ) -> Flight | None:
        if code == 0:
            return None
        role: Role = "writer" if code == 2 else "reader"
        return Flight(
            key=key,
            role=role,
            token=token if role == "writer" else "",
            waited=now - start,
            acquired_at=now,
            ttl_seconds=ttl,
        )

    def _delay(self, key: WarmKey, start: float, now: float, timeout: float | None) -> float:
        if timeout is None:
            return self._poll_interval
        if now - start >= timeout:
            raise WarmWaitTimeout(key, now - start)
        return max(0.0, min(self._poll_interval, start + timeout - now))

    def acquire(self, key: WarmKey, *, ttl_seconds: float, timeout: float | None = None) -> Flight:
        """Get a role for a request about to send ``key``'s prefix (see ``WarmRegistry.acquire``).

        Raises:
            WarmWaitTimeout: ``timeout`` passed while another request was writing.
        """
        check_ttl(ttl_seconds)
        script = self._sync_scripts["acquire"]
        keys = self._keys(key)
        token = uuid.uuid4().hex
        start = now = self._clock()
        while True:
            code = int(script(keys=keys, args=[repr(now), token, self._write_timeout_ms]))
            flight = self._outcome(key, code, token, ttl_seconds, start, now)
            if flight is not None:
                return flight
            time.sleep(self._delay(key, start, now, timeout))
            now = self._clock()

    async def acquire_async(
        self, key: WarmKey, *, ttl_seconds: float, timeout: float | None = None
    ) -> Flight:
        """Like :meth:`acquire`, awaiting instead of blocking the thread."""
        check_ttl(ttl_seconds)
        _, scripts = self._async_client()
        keys = self._keys(key)
        token = uuid.uuid4().hex
        start = now = self._clock()
        while True:
            code = int(
                await scripts["acquire"](keys=keys, args=[repr(now), token, self._write_timeout_ms])
            )
            flight = self._outcome(key, code, token, ttl_seconds, start, now)
            if flight is not None:
                return flight
            await asyncio.sleep(self._delay(key, start, now, timeout))
            now = self._clock()

    # -- reporting back --------------------------------------------------------------------

    def began(self, flight: Flight) -> None:
        """Report that ``flight``'s response has begun: a writer's entry is now readable."""
        if flight.role != "writer":
            return
        args = [
            flight.token,
            *self._touch_args(flight.acquired_at, flight.ttl_seconds, wrote=True, read=False),
        ]
        self._sync_scripts["began"](keys=self._keys(flight.key), args=args)

    async def began_async(self, flight: Flight) -> None:
        """Like :meth:`began`, without blocking the event loop."""
        if flight.role != "writer":
            return
        _, scripts = self._async_client()
        args = [
            flight.token,
            *self._touch_args(flight.acquired_at, flight.ttl_seconds, wrote=True, read=False),
        ]
        await scripts["began"](keys=self._keys(flight.key), args=args)

    def abandon(self, flight: Flight) -> None:
        """Report that a writer failed before its response began; one waiter takes over."""
        if flight.role == "writer":
            self._sync_scripts["release"](keys=self._keys(flight.key)[1:], args=[flight.token])

    async def abandon_async(self, flight: Flight) -> None:
        """Like :meth:`abandon`, without blocking the event loop."""
        if flight.role == "writer":
            _, scripts = self._async_client()
            await scripts["release"](keys=self._keys(flight.key)[1:], args=[flight.token])

    def record(
        self, key: WarmKey, *, started_at: float, ttl_seconds: float, wrote: bool, read: bool
    ) -> None:
        """Touch the TTL clock after a response (see ``WarmRegistry.record``)."""
        check_ttl(ttl_seconds)
        if wrote or read:
            args = self._touch_args(started_at, ttl_seconds, wrote=wrote, read=read)
            self._sync_scripts["record"](keys=self._keys(key)[:1], args=args)

    async def record_async(
        self, key: WarmKey, *, started_at: float, ttl_seconds: float, wrote: bool, read: bool
    ) -> None:
        """Like :meth:`record`, without blocking the event loop."""
        check_ttl(ttl_seconds)
        if wrote or read:
            _, scripts = self._async_client()
            args = self._touch_args(started_at, ttl_seconds, wrote=wrote, read=read)
            await scripts["record"](keys=self._keys(key)[:1], args=args)

    # -- inspecting ------------------------------------------------------------------------

    @staticmethod
    def _state(fields: list[Any], writing: bool) -> WarmState | None:
        last_write, last_read, expires, ttl = (_float(v) for v in fields)
        if expires is None and not writing:
            return None
        return WarmState(
            last_write_start=last_write,
            last_read_start=last_read,
            ttl_seconds=ttl or 0.0,
            expires_at=-math.inf if expires is None else expires,
            writing=writing,
        )

    def state(self, key: WarmKey) -> WarmState | None:
        """Return what Redis knows about ``key``'s prefix, or ``None`` if nothing."""
        state_key, writer_key = self._keys(key)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hmget(state_key, ["w", "r", "exp", "ttl"])
        pipe.exists(writer_key)
        fields, writing = pipe.execute()
        return self._state(fields, bool(writing))

    async def state_async(self, key: WarmKey) -> WarmState | None:
        """Like :meth:`state`, without blocking the event loop."""
        client, _ = self._async_client()
        state_key, writer_key = self._keys(key)
        async with client.pipeline(transaction=True) as pipe:
            pipe.hmget(state_key, ["w", "r", "exp", "ttl"])
            pipe.exists(writer_key)
            fields, writing = await pipe.execute()
        return self._state(fields, bool(writing))

    def needs_warming(self, key: WarmKey, *, margin: float = 0.0) -> bool:
        """Return whether a pre-warm should be sent now (see ``WarmRegistry.needs_warming``)."""
        return _needs_warming(self.state(key), self._clock(), margin)

    async def needs_warming_async(self, key: WarmKey, *, margin: float = 0.0) -> bool:
        """Like :meth:`needs_warming`, without blocking the event loop."""
        return _needs_warming(await self.state_async(key), self._clock(), margin)

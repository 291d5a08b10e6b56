"""One rate budget shared by many processes and hosts, kept in Redis.

Every operation is one atomic Lua script (:data:`SCRIPT`) that mirrors
:class:`convo.limits.core.Buckets` line for line: refill, take (into debt), wait, settle,
header sync and the 429 hold. Time is Redis's own ``TIME`` by default, so processes on
hosts whose clocks disagree still share one timeline; tests inject a clock instead, and then
every caller of a key must use that same clock. Keys carry a prefix and a hash tag (both
keys of a budget land on one Redis Cluster slot) and expire once the buckets would be full
again plus ``idle_ttl``: an expired budget is a full one, which is what it would be by then.

``redis`` is an optional dependency (``pip install 'convo[redis]'``), imported only when a
:class:`RedisRateLimiter` is built, so ``import convo`` works without it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from convo.limits.core import (
    DEFAULT_PENALTY_S,
    KINDS,
    Reservation,
    check_amount,
    check_limit,
    parse_headers,
    server_level,
    sleep_out,
    sleep_out_async,
)

if TYPE_CHECKING:
    import redis as redis_module
    import redis.asyncio as redis_asyncio

__all__ = ["SCRIPT", "RedisRateLimiter"]

#: The Lua script behind every operation. KEYS: the state hash, the pending sorted set.
#: ARGV: op, now ("" = Redis TIME), configured rpm/itpm/otpm ("" = none), idle TTL,
#: latency, then the op's own arguments.
SCRIPT = """
local h, z = KEYS[1], KEYS[2]
local op = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local K = {'r', 'i', 'o'}
local conf = {tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}
local idle = tonumber(ARGV[6])
local latency = tonumber(ARGV[7])
local raw = redis.call('HGETALL', h)
local st = {}
for n = 1, #raw, 2 do st[raw[n]] = raw[n + 1] end
local function fmt(x) return string.format('%.17g', x) end
local function capacity(n)
  local c, a = conf[n], tonumber(st['c_' .. K[n]])
  if c and a then return math.min(c, a) end
  return c or a
end
-- Refill (Buckets.refill). A limited kind with no stored level is full: new or expired.
local level = {}
local updated = tonumber(st['upd']) or now
local elapsed = math.max(0, now - updated)
for n = 1, 3 do
  local c = capacity(n)
  if c then
    local l = tonumber(st['l_' .. K[n]]) or c
    level[n] = math.min(c, l + elapsed * c / 60)
  end
end
updated = math.max(updated, now)
local blocked = tonumber(st['blk'])
local function unsent()
  redis.call('ZREMRANGEBYSCORE', z, '-inf', fmt(now))
  local sums = {0, 0, 0}
  for _, m in ipairs(redis.call('ZRANGE', z, 0, -1)) do
    local n = 0
    for part in string.gmatch(m, '[^:]+') do
      if n > 0 then sums[n] = sums[n] + tonumber(part) end
      n = n + 1
    end
  end
  return sums
end
local result = {'0', fmt(now)}
if op == 'reserve' then
  local amt = {tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])}
  local wait = 0
  if blocked then wait = math.max(0, blocked - now) end
  for n = 1, 3 do
    if level[n] then
      local c = capacity(n)
      wait = math.max(wait, (math.min(amt[n], c) - level[n]) * 60 / c)
    end
  end
  -- The refill a full server bucket misses while the request is in flight (Buckets.reserve).
  for n = 1, 3 do
    if level[n] then
      local c = capacity(n)
      local at_release = math.min(c, level[n] + c / 60 * wait)
      local in_flight = math.max(0, c / 60 * latency - (c - at_release))
      level[n] = level[n] - amt[n] - in_flight
    end
  end
  if wait > 0 then
    local seq = redis.call('HINCRBY', h, 'seq', 1)
    local member = seq .. ':' .. ARGV[8] .. ':' .. ARGV[9] .. ':' .. ARGV[10]
    redis.call('ZADD', z, fmt(now + wait), member)
  end
  result = {fmt(wait), fmt(now)}
elseif op == 'settle' then
  local delta = {0, tonumber(ARGV[8]), tonumber(ARGV[9])}
  for n = 2, 3 do
    if level[n] then level[n] = math.min(capacity(n), level[n] - delta[n]) end
  end
elseif op == 'sync' then
  -- Buckets.sync; per kind three args: limit, estimate, upper ("" = not sent).
  local pend = unsent()
  for n = 1, 3 do
    local limit = tonumber(ARGV[5 + 3 * n])
    local estimate = tonumber(ARGV[6 + 3 * n])
    local upper = tonumber(ARGV[7 + 3 * n])
    local learned = false
    if limit and limit > 0 then
      local before = capacity(n)
      st['c_' .. K[n]] = tostring(limit)
      redis.call('HSET', h, 'c_' .. K[n], limit)
      local c = capacity(n)
      if before == nil then
        learned = true
        level[n] = c
      else
        level[n] = math.min(level[n], c)
      end
    end
    local c = capacity(n)
    if c and estimate then
      -- Our level plus what we have not sent is our view of the server's; above its
      -- upper bound, someone else spent from the budget.
      if learned or level[n] + pend[n] > upper then
        level[n] = math.min(c, estimate) - pend[n]
      end
    end
  end
elseif op == 'hold' then
  local until_ = now + tonumber(ARGV[8])
  if blocked == nil or until_ > blocked then blocked = until_ end
elseif op == 'peek' then
  result = {fmt(blocked or -1e300), fmt(now)}
elseif op == 'levels' then
  result = {}
  for n = 1, 3 do
    if level[n] then result[n] = fmt(level[n]) else result[n] = '' end
  end
end
-- Save and expire once every bucket would be full again, plus the idle time.
local ttl = idle
if blocked then
  redis.call('HSET', h, 'blk', fmt(blocked))
  ttl = ttl + math.max(0, blocked - now)
end
local full = 0
for n = 1, 3 do
  if level[n] then
    local c = capacity(n)
    redis.call('HSET', h, 'l_' .. K[n], fmt(level[n]))
    full = math.max(full, (c - level[n]) * 60 / c)
  end
end
redis.call('HSET', h, 'upd', fmt(updated))
local ms = math.ceil((ttl + full) * 1000)
redis.call('PEXPIRE', h, ms)
if redis.call('EXISTS', z) == 1 then redis.call('PEXPIRE', z, ms) end
return result
"""


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


def _import_redis() -> Any:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - the test environment has redis
        raise ImportError(
            "RedisRateLimiter needs the redis package: pip install 'convo[redis]'"
        ) from exc
    return redis


def _arg(value: float | None) -> str:
    return "" if value is None else repr(value)


class RedisRateLimiter:
    """A :class:`~convo.limits.RateLimiter` whose budget lives in Redis, shared by processes.

    Same methods and semantics as ``RateLimiter``; each call is one atomic Lua script, so
    reservations from every process on one *key* queue behind each other's debt, FIFO by
    arrival at Redis.

    Args:
        redis: A ``redis.Redis`` client or a URL (``redis://127.0.0.1:6379/0``).
        key: The budget's name, e.g. ``"org-123:sonnet"``; every process sharing a rate
            limit uses the same key and the same limits.
        rpm: Requests per minute, or ``None`` (learned from headers).
        itpm: Input tokens per minute, or ``None``.
        otpm: Output tokens per minute, or ``None``.
        prefix: Prepended to every Redis key.
        idle_ttl: Seconds a budget's keys outlive the moment its buckets are full again.
        clock: Seconds, passed to the script instead of Redis ``TIME`` (tests); ``None``
            (the default) uses Redis's clock, the one every host agrees on.
        wall_clock: Seconds since the epoch, to read the RFC 3339 ``reset`` headers.
        async_redis: A ``redis.asyncio.Redis`` for :meth:`acquire_async`; by default one is
            built from the URL or the sync client's connection settings, lazily, inside
            the running loop.
        latency: Seconds allowed from a release to the server's admission (see
            :class:`~convo.limits.RateLimiter`).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        redis: redis_module.Redis | str,
        *,
        key: str,
        rpm: int | None = None,
        itpm: int | None = None,
        otpm: int | None = None,
        prefix: str = "convo:limits:",
        idle_ttl: float = 60.0,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
        async_redis: redis_asyncio.Redis | None = None,
        latency: float = 1.0,
    ) -> None:
        module = _import_redis()
        if not key:
            raise ValueError("RedisRateLimiter needs a non-empty key naming the shared budget")
        if idle_ttl <= 0:
            raise ValueError(f"idle_ttl={idle_ttl}: pass a positive number of seconds")
        self._limits = (
            check_limit("rpm", rpm),
            check_limit("itpm", itpm),
            check_limit("otpm", otpm),
        )
        self._url = redis if isinstance(redis, str) else None
        self._redis = module.Redis.from_url(redis) if isinstance(redis, str) else redis
        self._script = self._redis.register_script(SCRIPT)
        self._keys = [f"{prefix}{{{key}}}:buckets", f"{prefix}{{{key}}}:pending"]
        self._idle_ttl = idle_ttl
        if latency < 0:
            raise ValueError(f"latency={latency}: pass the seconds a request takes to arrive, ≥ 0")
        self._latency = latency
        self._clock = clock
        self._wall_clock = wall_clock
        self._given_async = async_redis
        # Built lazily inside the running loop: a redis.asyncio client belongs to one loop.
        self._async: tuple[asyncio.AbstractEventLoop, Any, Any] | None = None

    def __repr__(self) -> str:
        rpm, itpm, otpm = self._limits
        return f"RedisRateLimiter(key={self._keys[0]!r}, rpm={rpm}, itpm={itpm}, otpm={otpm})"

    @property
    def keys(self) -> tuple[str, str]:
        """The two Redis keys of this budget (state hash, pending set)."""
        return self._keys[0], self._keys[1]

    def _argv(self, op: str, args: Sequence[float | None]) -> list[str]:
        now = None if self._clock is None else self._clock()
        head = [op, _arg(now), *(_arg(v) for v in self._limits), repr(self._idle_ttl)]
        head.append(repr(self._latency))
        return head + [_arg(a) for a in args]

    def _call(self, op: str, *args: float | None) -> list[str]:
        raw = self._script(keys=self._keys, args=self._argv(op, args))
        return [x.decode() if isinstance(x, bytes) else str(x) for x in raw]

    async def _acall(self, op: str, *args: float | None) -> list[str]:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            client = self._given_async
            if client is None:
                aio = _import_redis().asyncio
                if self._url is not None:
                    client = aio.Redis.from_url(self._url)
                else:
                    # Only the settings both clients understand; the sync pool also holds
                    # sync-only objects that redis.asyncio refuses.
                    given = self._redis.connection_pool.connection_kwargs
                    kwargs = {k: given[k] for k in _PORTABLE if k in given}
                    if "path" in given:
                        kwargs["unix_socket_path"] = given["path"]
                    client = aio.Redis(**kwargs)
            self._async = (loop, client, client.register_script(SCRIPT))
        raw = await self._async[2](keys=self._keys, args=self._argv(op, args))
        return [x.decode() if isinstance(x, bytes) else str(x) for x in raw]

    def levels(self) -> dict[str, float]:
        """What each limited bucket holds now (negative: debt), for inspection and tests."""
        found = self._call("levels")
        return {kind: float(v) for kind, v in zip(KINDS, found, strict=True) if v}

    @staticmethod
    def _amounts(input_tokens: int, output_tokens: int) -> tuple[int, int, int]:
        return (
            1,
            check_amount("input_tokens", input_tokens),
            check_amount("output_tokens", output_tokens),
        )

    def reserve(self, *, input_tokens: int, output_tokens: int = 0) -> Reservation:
        """Take one request and the tokens from the shared buckets now; never blocks.

        See :meth:`convo.limits.RateLimiter.reserve`; ``at`` is on the script's clock.
        """
        amounts = self._amounts(input_tokens, output_tokens)
        wait, at = self._call("reserve", *amounts)
        return Reservation(amounts[1], amounts[2], float(wait), float(at))

    async def reserve_async(self, *, input_tokens: int, output_tokens: int = 0) -> Reservation:
        """:meth:`reserve` through the asyncio Redis client."""
        amounts = self._amounts(input_tokens, output_tokens)
        wait, at = await self._acall("reserve", *amounts)
        return Reservation(amounts[1], amounts[2], float(wait), float(at))

    def acquire(
        self,
        *,
        input_tokens: int,
        output_tokens: int = 0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Reservation:
        """Reserve, then sleep until the request may be sent (a 429 meanwhile extends it)."""
        grant = self.reserve(input_tokens=input_tokens, output_tokens=output_tokens)
        return sleep_out(grant, lambda: float(self._call("peek")[0]), sleep)

    async def acquire_async(
        self,
        *,
        input_tokens: int,
        output_tokens: int = 0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> Reservation:
        """Like :meth:`acquire`, awaiting Redis and *sleep* instead of blocking."""
        grant = await self.reserve_async(input_tokens=input_tokens, output_tokens=output_tokens)

        async def hold_until() -> float:
            return float((await self._acall("peek"))[0])

        return await sleep_out_async(grant, hold_until, sleep)

    def settle(self, reservation: Reservation, *, input_tokens: int, output_tokens: int) -> None:
        """Correct a reservation with the actual usage: refund or charge the difference."""
        self._call(
            "settle",
            check_amount("input_tokens", input_tokens) - reservation.input_tokens,
            check_amount("output_tokens", output_tokens) - reservation.output_tokens,
        )

    def _sync_args(self, headers: Mapping[str, str]) -> list[float | None] | None:
        readings = parse_headers(headers, wall_now=self._wall_clock())
        if not readings:
            return None
        args: list[float | None] = []
        for kind, configured in zip(KINDS, self._limits, strict=True):
            reading = readings.get(kind)
            if reading is None:
                args += [None, None, None]
                continue
            # Bounds are computed against the capacity the server announced (or ours when
            # it sent none); the script applies the same adoption rule as Buckets.sync.
            capacity = reading.limit or configured
            bounds = None if capacity is None else server_level(kind, reading, capacity)
            args += [reading.limit, *(bounds or (None, None))]
        return args

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Correct the shared buckets from a response's ``anthropic-ratelimit-*`` headers."""
        args = self._sync_args(headers)
        if args is not None:
            self._call("sync", *args)

    async def observe_headers_async(self, headers: Mapping[str, str]) -> None:
        """:meth:`observe_headers` through the asyncio Redis client."""
        args = self._sync_args(headers)
        if args is not None:
            await self._acall("sync", *args)

    def observe_rate_limited(self, retry_after: float | None) -> None:
        """Record a 429: no process releases anything until ``retry_after`` from now."""
        if retry_after is None:
            retry_after = DEFAULT_PENALTY_S
        if retry_after < 0:
            raise ValueError(f"retry_after={retry_after}: pass seconds ≥ 0, or None")
        self._call("hold", retry_after)

    def clear(self) -> None:
        """Delete this budget's keys: every bucket starts full again."""
        self._redis.delete(*self._keys)

    async def aclose(self) -> None:
        """Close the asyncio client this limiter built (not one it was given)."""
        if self._async is not None and self._given_async is None:
            await self._async[1].aclose()
        self._async = None

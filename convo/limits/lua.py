"""The Lua copy of :class:`convo.limits.core.Buckets`, run atomically inside Redis.

Each block below names the ``Buckets`` method (or core function) it mirrors; the two are
kept equal operation for operation, in the same order, so both give the same doubles. A
change to one must be made to the other: ``tests/test_limits_redis.py`` drives random
sequences of every operation through a :class:`~convo.limits.RateLimiter` and a
:class:`~convo.limits.RedisRateLimiter` side by side, with limits configured, learned and
partly both, and fails on the first level, limit or wait that differs.

State: a hash (``l_<k>`` levels, ``c_<k>`` announced limits, ``upd`` last refill, ``blk``
the 429 hold) and a sorted set of reservations not yet released (member
``ticket:requests:input:output``, score = release time).
"""

from __future__ import annotations

__all__ = ["SCRIPT"]

#: KEYS: the state hash, the pending sorted set. ARGV: op, now ("" = Redis TIME), configured
#: rpm/itpm/otpm ("" = none), idle TTL, latency, then the op's own arguments:
#:
#: * ``reserve`` ticket, requests, input, output -> wait, now, in-flight debit × 3
#: * ``release`` ticket, requests, input, output, in-flight debit × 3
#: * ``settle`` input delta, output delta, then (optionally) the nine ``sync`` arguments
#: * ``sync`` per kind: limit, remaining, seconds until reset ("" = not sent)
#: * ``hold`` seconds; ``peek`` -> hold end, now; ``levels`` -> level × 3, capacity × 3
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
-- Buckets.capacity: the lower of the configured and the announced limit.
local function capacity(n)
  local c, a = conf[n], tonumber(st['c_' .. K[n]])
  if c and a then return math.min(c, a) end
  return c or a
end
-- Buckets.refill. A limited kind with no stored level is full: new or expired.
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
-- Buckets.unsent: prune what has been released, sum what has not.
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
-- Buckets.settle.
local function settle(d_in, d_out)
  local delta = {0, d_in, d_out}
  for n = 2, 3 do
    if level[n] then level[n] = math.min(capacity(n), level[n] - delta[n]) end
  end
end
-- server_level, reading_scale and Buckets.sync; per kind three args from index `at`.
local function sync(at)
  local pend = unsent()
  for n = 1, 3 do
    local limit = tonumber(ARGV[at + 3 * n - 3])
    local remaining = tonumber(ARGV[at + 3 * n - 2])
    local reset_in = tonumber(ARGV[at + 3 * n - 1])
    if limit or remaining then
      if limit and limit > 0 then
        local before = capacity(n)
        st['c_' .. K[n]] = tostring(limit)
        redis.call('HSET', h, 'c_' .. K[n], limit)
        local c = capacity(n)
        if before == nil then
          level[n] = math.huge  -- learned now: start from what the server says is left
        else
          level[n] = math.min(level[n], c)
        end
      end
      local c = capacity(n)
      if c then
        if remaining == nil then
          if level[n] == math.huge then level[n] = c end
        else
          local scale = c
          if limit and limit > 0 then scale = limit end
          local rem = math.max(0, remaining)
          local step = 1000
          if n == 1 or remaining % 1000 ~= 0 then step = 1 end
          local upper = rem + step
          local estimate = rem
          if reset_in then
            local from_reset = scale - scale / 60 * reset_in
            estimate = math.min(math.max(from_reset, rem), upper)
          end
          -- Our level plus what we have not sent is our view of the server's; above its
          -- upper bound, someone else spent from the budget.
          if level[n] + pend[n] > upper then
            level[n] = math.min(c, estimate) - pend[n]
          end
        end
      end
    end
  end
end
local result = {'0', fmt(now)}
if op == 'reserve' then
  -- Buckets.reserve.
  local amt = {tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])}
  local wait = 0
  if blocked then wait = math.max(0, blocked - now) end
  for n = 1, 3 do
    if level[n] then
      local c = capacity(n)
      wait = math.max(wait, (math.min(amt[n], c) - level[n]) * 60 / c)
    end
  end
  -- The refill a full server bucket misses while the request is in flight.
  local debit = {0, 0, 0}
  for n = 1, 3 do
    if level[n] then
      local c = capacity(n)
      local at_release = math.min(c, level[n] + c / 60 * wait)
      debit[n] = math.max(0, c / 60 * latency - (c - at_release))
      level[n] = level[n] - (amt[n] + debit[n])
    end
  end
  if wait > 0 then
    local member = ARGV[8] .. ':' .. ARGV[9] .. ':' .. ARGV[10] .. ':' .. ARGV[11]
    redis.call('ZADD', z, fmt(now + wait), member)
  end
  result = {fmt(wait), fmt(now), fmt(debit[1]), fmt(debit[2]), fmt(debit[3])}
elseif op == 'release' then
  -- Buckets.release.
  for n = 1, 3 do
    if level[n] then
      local refund = tonumber(ARGV[8 + n]) + tonumber(ARGV[11 + n])
      level[n] = math.min(capacity(n), level[n] + refund)
    end
  end
  local member = ARGV[8] .. ':' .. ARGV[9] .. ':' .. ARGV[10] .. ':' .. ARGV[11]
  redis.call('ZREM', z, member)
elseif op == 'settle' then
  settle(tonumber(ARGV[8]), tonumber(ARGV[9]))
  if #ARGV > 9 then sync(10) end
elseif op == 'sync' then
  sync(8)
elseif op == 'hold' then
  -- Buckets.hold.
  local until_ = now + tonumber(ARGV[8])
  if blocked == nil or until_ > blocked then blocked = until_ end
elseif op == 'peek' then
  result = {fmt(blocked or -1e300), fmt(now)}
elseif op == 'levels' then
  result = {}
  for n = 1, 3 do
    if level[n] then result[n] = fmt(level[n]) else result[n] = '' end
    local c = capacity(n)
    if c then result[n + 3] = fmt(c) else result[n + 3] = '' end
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

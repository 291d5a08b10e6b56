"""The Lua scripts of :class:`~convo.warm.RedisWarmRegistry` and what their replies mean.

Every change to one prefix is one script, so no client ever sees a half-made change, and
every call the registry makes is one round trip (an ``EVALSHA``). Layout, per prefix
(``<p>`` is the registry's prefix, ``convo:warm:`` by default)::

    <p>{<workspace>:<model>:<fingerprint>}:state    hash  w, r, exp, ttl  (floats, %.17g)
    <p>{<workspace>:<model>:<fingerprint>}:writer   string: the writer's token, SET PX
    <p>wake                                          pub/sub channel: ``*:`` or ``1:``
                                                     and the base of a key whose write
                                                     began or entry changed (wake all)
                                                     or whose claim was released (one)

``w``/``r`` are the starts of the last write/read, ``exp`` their latest start plus TTL and
``ttl`` that touch's TTL. The state hash expires a day after ``exp``; the writer key after
``write_timeout`` (Redis's own clock), which is what frees the claim of a crashed writer.
Both keys of a prefix share a hash tag, so they live in one Redis Cluster slot.

Scripts that answer with the state (``acquire``, ``state``) reply
``[code, w, r, exp, ttl, claim_pttl]``: the code, the hash's fields (nil when absent) and
the writer key's ``PTTL`` in milliseconds (``-2`` when nobody holds a claim).
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from convo.warm.keys import WarmState

__all__ = ["SCRIPTS", "Reply", "parse_reply"]

# Shared by every script that changes the state: keep maxima (records arrive out of
# order), then let the hash expire RETENTION after the entry does.
_PRELUDE = """
local function fmt(x) return string.format('%.17g', x) end
local function touch(state, started, ttl, wrote, read, now, retention)
  local cur = redis.call('HMGET', state, 'w', 'r', 'exp')
  if wrote and (not cur[1] or started > tonumber(cur[1])) then
    redis.call('HSET', state, 'w', fmt(started))
  end
  if read and (not cur[2] or started > tonumber(cur[2])) then
    redis.call('HSET', state, 'r', fmt(started))
  end
  local exp = tonumber(cur[3])
  if not exp or started + ttl > exp then
    exp = started + ttl
    redis.call('HSET', state, 'exp', fmt(exp), 'ttl', fmt(ttl))
  end
  redis.call('PEXPIRE', state, math.max(1, math.ceil((exp - now) * 1000) + retention))
end
local function report(code)
  local cur = redis.call('HMGET', KEYS[1], 'w', 'r', 'exp', 'ttl')
  return {code, cur[1], cur[2], cur[3], cur[4], redis.call('PTTL', KEYS[2])}
end
"""

# KEYS: state, writer. ARGV: now, token, write_timeout_ms, refresh_at ('' for none), ttl,
# retention_ms. Code 1 reader (a live entry; its read recorded from refresh_at if given),
# 2 writer (the claim is the caller's: taken now, or already its own when a lost reply
# made the client send the script again), 0 wait (another holds the claim).
_ACQUIRE = """
local now = tonumber(ARGV[1])
local exp = tonumber(redis.call('HGET', KEYS[1], 'exp'))
if exp and exp > now then
  if ARGV[4] ~= '' then
    touch(KEYS[1], tonumber(ARGV[4]), tonumber(ARGV[5]), false, true, now, tonumber(ARGV[6]))
  end
  return report(1)
end
local holder = redis.call('GET', KEYS[2])
if holder == ARGV[2] then return report(2) end
if not holder then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return report(2)
end
return report(0)
"""

# KEYS: state, writer. ARGV: token, channel, member, started, ttl, now, retention_ms.
# Only the claim's owner may begin: the state turns live and the claim goes in one step
# (a waiter checking in between must not find neither), and the waiters are woken.
_BEGAN = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
touch(KEYS[1], tonumber(ARGV[4]), tonumber(ARGV[5]), true, false, tonumber(ARGV[6]),
      tonumber(ARGV[7]))
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

# KEYS: state, writer. ARGV: channel, member, started, ttl, wrote, read, now, retention_ms.
# Waiters exist only while a claim is held, so only then is anyone woken.
_RECORD = """
touch(KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] == '1', ARGV[6] == '1',
      tonumber(ARGV[7]), tonumber(ARGV[8]))
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return 1
"""

# KEYS: state, writer. ARGV: token, channel, member. Release only the caller's own claim (a
# lapsed claim may be another's), and wake the waiters so one of them takes over.
_RELEASE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

# KEYS: state, writer.
_STATE = "return report(0)\n"

#: Script name to its full text.
SCRIPTS: dict[str, str] = {
    name: _PRELUDE + body
    for name, body in (
        ("acquire", _ACQUIRE),
        ("began", _BEGAN),
        ("record", _RECORD),
        ("release", _RELEASE),
        ("state", _STATE),
    )
}


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@attrs.frozen
class Reply:
    """A parsed ``[code, w, r, exp, ttl, claim_pttl]`` reply.

    Attributes:
        code: 0 wait, 1 reader, 2 writer (``acquire``); 0 for ``state``.
        state: The prefix's state, ``None`` when Redis knows nothing of it.
        claim_seconds: Seconds until the current claim lapses on Redis's clock, ``None``
            when nobody holds one (``inf`` for a claim without expiry, which convo never
            makes).
    """

    code: int
    state: WarmState | None
    claim_seconds: float | None


def parse_reply(reply: list[Any]) -> Reply:
    """Turn a script's ``[code, w, r, exp, ttl, claim_pttl]`` into a :class:`Reply`."""
    code, *fields, pttl = reply
    last_write, last_read, expires, ttl = (_float(v) for v in fields)
    pttl = int(pttl)
    claim = None if pttl == -2 else (math.inf if pttl == -1 else pttl / 1000)
    writing = claim is not None
    state = (
        None
        if expires is None and not writing
        else WarmState(
            last_write_start=last_write,
            last_read_start=last_read,
            ttl_seconds=ttl or 0.0,
            expires_at=-math.inf if expires is None else expires,
            writing=writing,
        )
    )
    return Reply(code=int(code), state=state, claim_seconds=claim)

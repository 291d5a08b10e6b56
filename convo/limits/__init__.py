"""Client-side rate limiting: RPM, ITPM and OTPM token buckets, in-process or in Redis.

Modules: :mod:`~convo.limits.core` (the pure bucket arithmetic and header parsing),
:mod:`~convo.limits.local` (:class:`RateLimiter`, one process),
:mod:`~convo.limits.redis_limiter` (:class:`RedisRateLimiter`, many processes; needs the
``redis`` extra, imported only when one is built), :mod:`~convo.limits.lua` (the Lua copy
of the core's arithmetic) and :mod:`~convo.limits.redis_link` (connections, pools, and
degrading to the local limiter while Redis is unreachable).
"""

from convo.limits.core import HeaderReading, Reservation, parse_headers
from convo.limits.local import RateLimiter
from convo.limits.redis_limiter import RedisRateLimiter

__all__ = ["HeaderReading", "RateLimiter", "RedisRateLimiter", "Reservation", "parse_headers"]

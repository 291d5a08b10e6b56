"""The pure core of client-side rate limiting: bucket arithmetic, headers, validation.

Nothing here sleeps, locks or reads a clock; every function takes ``now``. The in-process
:class:`~convo.limits.RateLimiter` wraps :class:`Buckets` in a lock, and the Redis Lua
script in :mod:`convo.limits.lua` mirrors the same arithmetic operation for operation (a
change here must be made there too; the tests run both against the same scenarios).

The model, per kind (requests, input tokens, output tokens):

* A bucket of ``capacity`` = one minute's allowance refills continuously at
  ``capacity / 60`` per second and never holds more than ``capacity``.
* A reservation takes its amount *at once*, so the level may go negative (debt). The caller
  must wait until the level *before* its take has refilled to ``min(amount, capacity)``.
  That is the server's admission rule (a bucket admits a request when it holds the request's
  weight; a request bigger than a minute's allowance goes on a full bucket), shifted so that
  every earlier reservation's debt is paid first: FIFO by construction, as in GCRA.

Invariant (why pacing never draws a 429 from a server in step with us): our level is never
above the server's level minus what we have reserved but not yet sent. Both refill at the
same rate; we take at reservation, the server later, at admission. The cap is where this
could break: a server bucket that is full when we release a request stops refilling until
the request arrives, while ours, already debited, refills on. So each take also debits the
refill the server may miss in ``latency`` seconds of flight, ``rate × latency`` less the
room the bucket still had at release (nothing when it was far from full).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

import attrs

__all__ = [
    "DEFAULT_PENALTY_S",
    "KINDS",
    "Buckets",
    "HeaderReading",
    "Reservation",
    "Triple",
    "check_amount",
    "check_limit",
    "parse_headers",
    "parse_rfc3339",
    "reading_scale",
    "server_level",
    "sleep_out",
    "sleep_out_async",
]

#: One amount per bucket, in the order of :data:`KINDS`.
Triple = tuple[float, float, float]

#: The three buckets, in a fixed order, named as in ``anthropic-ratelimit-<kind>-*``.
KINDS: tuple[str, str, str] = ("requests", "input-tokens", "output-tokens")
_TOKEN_KINDS = KINDS[1:]

#: How long to hold everything back after a 429 that carried no ``retry-after``.
DEFAULT_PENALTY_S = 5.0


@attrs.frozen
class Reservation:
    """What one :meth:`~convo.limits.RateLimiter.reserve` took, and how long to wait.

    Attributes:
        input_tokens: ITPM weight reserved (input plus cache writes, plus cache reads only
            for models whose reads count; the caller computes it).
        output_tokens: OTPM reserved: an estimate, corrected later by ``settle``.
        wait: Seconds the caller had to wait before sending (0 if none).
        at: Clock time the reservation was made (the limiter's clock; server time for Redis).
        ticket: Names the reservation to the limiter that made it, so that
            :meth:`~convo.limits.RateLimiter.release` can take it back out of the queue
            of reservations not yet sent. Opaque; ``""`` for none.
        in_flight: The extra debit per bucket (requests, input, output) taken for the
            refill a full server bucket misses while the request is in flight; given back
            with the amounts by ``release``.

    .. versionchanged:: 0.2
       ``ticket`` and ``in_flight``, for ``release``.
    """

    input_tokens: int
    output_tokens: int
    wait: float
    at: float
    ticket: str = ""
    in_flight: Triple = (0.0, 0.0, 0.0)


@attrs.frozen
class HeaderReading:
    """One bucket's ``anthropic-ratelimit-<kind>-{limit,remaining,reset}`` headers.

    Attributes:
        limit: The bucket's capacity (one minute's allowance), if sent.
        remaining: What the server had left when it answered, if sent.
        reset_in: Seconds from now until the server's bucket is full again, if sent.
    """

    limit: int | None
    remaining: int | None
    reset_in: float | None


def check_limit(name: str, value: int | None) -> int | None:
    """Return *value* if it is a usable per-minute limit (a positive int or ``None``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int (per minute) or None, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(
            f"{name}={value}: a limit must be a positive number per minute; "
            f"pass {name}=None for no limit on this bucket"
        )
    return value


def check_amount(name: str, value: int) -> int:
    """Return *value* if it is a usable token amount (an int ≥ 0)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name}={value}: token amounts cannot be negative; pass 0 for none")
    return value


def parse_rfc3339(text: str) -> float | None:
    """Return the epoch seconds of an RFC 3339 time, or ``None`` if it is not one."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        # datetime.fromisoformat accepts "Z" only from Python 3.11.
        value = value[:-1] + "+00:00"
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None


# Every response carries the same nine names, each parse_headers call read them all through
# f-strings; they are built once here: (kind, limit, remaining, reset) per kind.
_HEADER_NAMES: tuple[tuple[str, str, str, str], ...] = tuple(
    (
        kind,
        f"anthropic-ratelimit-{kind}-limit",
        f"anthropic-ratelimit-{kind}-remaining",
        f"anthropic-ratelimit-{kind}-reset",
    )
    for kind in KINDS
)
_WANTED = frozenset(name for _, *names in _HEADER_NAMES for name in names)


# The reset times repeat: each response gives one per kind, mostly the same second, and
# concurrent responses within a second give the same again. A parse is pure (the text alone
# decides it), so it is kept; 64 entries are several seconds of distinct values.
@functools.lru_cache(maxsize=64)
def _reset_at(text: str) -> float | None:
    return parse_rfc3339(text)


def _lower_case_names(headers: Mapping[str, str]) -> bool:
    """Whether *headers* is a plain dict whose names are all strings in lower case."""
    if type(headers) is not dict:
        return False
    try:
        return "".join(headers).islower()
    except TypeError:  # a name that is not a string
        return False


def parse_headers(headers: Mapping[str, str], *, wall_now: float) -> dict[str, HeaderReading]:
    """Read the ``anthropic-ratelimit-*`` headers of one response, by kind.

    Header names are matched case-insensitively; a malformed value is ignored rather than
    raised, because a response that arrived must never fail on its bookkeeping.

    Args:
        headers: The response headers (an ``httpx.Headers`` or any mapping).
        wall_now: Seconds since the epoch, to turn the RFC 3339 ``reset`` into a duration.
    """
    # Only the nine names read below are kept (the last of any that differ only in case
    # wins, as in a lowered copy of the whole mapping); the other headers are not copied.
    found: dict[str, str] = {}
    if _lower_case_names(headers):
        # A dict of an httpx response's items: look the nine names up instead of lowering
        # the thirty or so a response carries.
        for name in _WANTED:
            value = headers.get(name)
            if value is not None:
                found[name] = str(value)
    else:
        for key, value in headers.items():
            name = str(key).lower()
            if name in _WANTED:
                found[name] = str(value)
    readings: dict[str, HeaderReading] = {}
    for kind, limit_name, remaining_name, reset_name in _HEADER_NAMES:
        limit = _int_header(found, limit_name)
        remaining = _int_header(found, remaining_name)
        reset = found.get(reset_name)
        reset_at = None if reset is None else _reset_at(reset)
        reset_in = None if reset_at is None else max(0.0, reset_at - wall_now)
        if limit is not None or remaining is not None:
            readings[kind] = HeaderReading(limit, remaining, reset_in)
    return readings


def server_level(kind: str, reading: HeaderReading, capacity: int) -> tuple[float, float] | None:
    """Return (best estimate, upper bound) of the server's level from one reading.

    Token ``remaining`` values are rounded down to thousands and ``requests`` ones to whole
    requests, so the true level lies in ``[remaining, remaining + step)``. The RFC 3339
    ``reset`` (rounded up to a whole second) narrows that: ``capacity - rate * reset_in`` is
    a lower bound on the level. It is clamped into the interval so a skewed wall clock can
    cost at most one rounding step. *capacity* is the server's bucket size: the limit the
    reading announced, else the bucket's effective capacity (see :func:`reading_scale`).
    The Lua script in :mod:`convo.limits.redis_limiter` computes the same, line for line.
    """
    if reading.remaining is None:
        return None
    remaining = float(max(0, reading.remaining))
    step = 1.0 if kind == "requests" or reading.remaining % 1000 else 1000.0
    upper = remaining + step
    estimate = remaining
    if reading.reset_in is not None:
        from_reset = capacity - capacity / 60.0 * reading.reset_in
        estimate = min(max(from_reset, remaining), upper)
    return estimate, upper


def reading_scale(reading: HeaderReading, capacity: int) -> int:
    """The capacity a reading's ``reset`` is read against: its own positive limit, else ours."""
    if reading.limit is not None and reading.limit > 0:
        return reading.limit
    return capacity


class Buckets:
    """The three buckets and the 429 hold, as plain state; callers hold a lock around it.

    A kind's capacity is the lower of the configured limit and the one the server
    announced; ``None`` for both means unlimited (nothing to wait for). Levels are kept for
    limited kinds only. ``pending`` holds reservations whose release time is still ahead:
    the server has not seen them, so header sync adds them back before comparing.
    """

    def __init__(self, limits: Mapping[str, int | None], now: float, latency: float) -> None:
        self.latency = latency
        self.configured: dict[str, int | None] = {k: limits.get(k) for k in KINDS}
        self.announced: dict[str, int | None] = dict.fromkeys(KINDS)
        self.level: dict[str, float] = {}
        for kind in KINDS:
            capacity = self.capacity(kind)
            if capacity is not None:
                self.level[kind] = float(capacity)  # a fresh bucket is full
        self.updated = now
        self.blocked_until = -math.inf
        # (release time, ticket, requests, input, output); release times are not strictly
        # sorted (a 429 hold or a smaller amount can release earlier), so pruning scans
        # them all.
        self.pending: deque[tuple[float, str, int, int, int]] = deque()

    def capacity(self, kind: str) -> int | None:
        """Return the effective capacity of *kind* (``None``: unlimited)."""
        # Called for every bucket in every operation: no list, no min() over one value.
        configured, announced = self.configured[kind], self.announced[kind]
        if configured is None:
            return announced
        if announced is None:
            return configured
        return min(configured, announced)

    def refill(self, now: float) -> None:
        """Bring every level up to *now* (a clock that steps back is treated as standing still)."""
        elapsed = max(0.0, now - self.updated)
        level = self.level
        for kind, value in level.items():
            capacity = self.capacity(kind)
            assert capacity is not None  # levels exist for limited kinds only
            level[kind] = min(float(capacity), value + elapsed * capacity / 60.0)
        self.updated = max(self.updated, now)

    def reserve(
        self, now: float, amounts: tuple[int, int, int], ticket: str = ""
    ) -> tuple[float, Triple]:
        """Take *amounts* (requests, input, output) now.

        Returns the seconds to wait and the in-flight debit taken per bucket on top of the
        amounts (what :meth:`release` gives back with them).
        """
        self.refill(now)
        level = self.level
        wait = max(0.0, self.blocked_until - now)
        # (index, kind, amount, capacity) of each limited bucket, for the take below.
        limited: list[tuple[int, str, int, int]] = []
        for n, (kind, amount) in enumerate(zip(KINDS, amounts, strict=True)):
            if kind not in level:
                continue
            capacity = self.capacity(kind)
            assert capacity is not None
            need = min(amount, capacity)
            wait = max(wait, (need - level[kind]) * 60.0 / capacity)
            limited.append((n, kind, amount, capacity))
        debits = [0.0, 0.0, 0.0]
        for n, kind, amount, capacity in limited:
            rate = capacity / 60.0
            at_release = min(float(capacity), level[kind] + rate * wait)
            in_flight = max(0.0, rate * self.latency - (capacity - at_release))
            level[kind] -= amount + in_flight
            debits[n] = in_flight
        if wait > 0:
            self.pending.append((now + wait, ticket, *amounts))
        return wait, (debits[0], debits[1], debits[2])

    def release(
        self, now: float, amounts: tuple[int, int, int], in_flight: Triple, ticket: str = ""
    ) -> None:
        """Give back everything a reservation took (it was never sent).

        The refund is capped at capacity like a refill, so releasing a reservation leaves
        each level where it would be had the reservation never been made (as long as no
        other reservation was made meanwhile: those already waited behind its debt).
        """
        self.refill(now)
        level = self.level
        for n, kind in enumerate(KINDS):
            if kind in level:
                capacity = self.capacity(kind)
                assert capacity is not None
                refund = amounts[n] + in_flight[n]
                level[kind] = min(float(capacity), level[kind] + refund)
        if ticket and self.pending:
            self.pending = deque(p for p in self.pending if p[1] != ticket)

    def settle(self, now: float, deltas: tuple[int, int]) -> None:
        """Charge (positive) or refund (negative) input and output tokens."""
        self.refill(now)
        level = self.level
        for kind, delta in zip(_TOKEN_KINDS, deltas, strict=True):
            if kind in level:
                capacity = self.capacity(kind)
                assert capacity is not None
                level[kind] = min(float(capacity), level[kind] - delta)

    def unsent(self, now: float) -> tuple[int, int, int]:
        """Return the amounts reserved but not yet released (the server has not seen them)."""
        if not self.pending:
            return (0, 0, 0)  # the common case: nothing to prune or add up
        kept: deque[tuple[float, str, int, int, int]] = deque()
        requests = inputs = outputs = 0
        for p in self.pending:
            if p[0] > now:
                kept.append(p)
                requests += p[2]
                inputs += p[3]
                outputs += p[4]
        self.pending = kept
        return (requests, inputs, outputs)

    def sync(self, now: float, readings: Mapping[str, HeaderReading]) -> None:
        """Adopt what the server's headers say where it knows better than we do."""
        self.refill(now)
        unsent = dict(zip(KINDS, self.unsent(now), strict=True))
        level = self.level
        for kind, reading in readings.items():
            if reading.limit is not None and reading.limit > 0:
                before = self.capacity(kind)
                self.announced[kind] = reading.limit
                capacity = self.capacity(kind)
                assert capacity is not None
                if before is None:
                    # Learned now: start from what the server says is left (below).
                    level[kind] = math.inf
                else:
                    level[kind] = min(level[kind], float(capacity))
            else:
                capacity = self.capacity(kind)
                if capacity is None:
                    continue
            # The reset time describes the server's bucket, so it is read at its capacity.
            bounds = server_level(kind, reading, reading_scale(reading, capacity))
            if bounds is None:
                if math.isinf(level[kind]):
                    level[kind] = float(capacity)
                continue
            estimate, upper = bounds
            # Our level plus what we have not sent yet is our view of the server's level.
            # Above the server's upper bound means someone else spent from this budget.
            if level[kind] + unsent[kind] > upper:
                level[kind] = min(float(capacity), estimate) - unsent[kind]

    def hold(self, now: float, seconds: float) -> None:
        """Release nothing more until ``now + seconds`` (a 429 was seen)."""
        self.blocked_until = max(self.blocked_until, now + seconds)


def sleep_out(
    grant: Reservation, hold_until: Callable[[], float], sleep: Callable[[float], None]
) -> Reservation:
    """Sleep a reservation's wait, then on while a 429 hold seen meanwhile lasts.

    *hold_until* reads the current hold (clock time; -inf for none). Each extra round runs
    only if the hold moved past the previous deadline, so the loop ends. Returns the
    reservation with ``wait`` = the total slept.
    """
    waited, deadline = grant.wait, grant.at + grant.wait
    if waited <= 0:
        # The reservation already waited out any hold known when it was made, and without
        # a sleep no other caller's 429 can have come in between: no second look needed.
        return grant
    sleep(waited)
    while (extra := hold_until() - deadline) > 0:
        sleep(extra)
        waited += extra
        deadline += extra
    return attrs.evolve(grant, wait=waited)


async def sleep_out_async(
    grant: Reservation,
    hold_until: Callable[[], Awaitable[float]],
    sleep: Callable[[float], Awaitable[None]],
) -> Reservation:
    """:func:`sleep_out`, awaiting *hold_until* and *sleep*."""
    waited, deadline = grant.wait, grant.at + grant.wait
    if waited <= 0:
        return grant  # as in sleep_out: one round trip fewer for the Redis limiter
    await sleep(waited)
    while (extra := await hold_until() - deadline) > 0:
        await sleep(extra)
        waited += extra
        deadline += extra
    return attrs.evolve(grant, wait=waited)

"""Choosing a TTL: when the 1h write (2x base) pays for itself over the 5m one (1.25x).

Costs are in units of *the prefix's tokens at the base input price*. Take the gaps between
the starts of consecutive uses of one prefix. A gap up to 5 minutes is a read (0.1) under
either TTL, so it never decides anything. Count

- ``k``: gaps longer than 5 minutes but at most an hour (a 5m entry is gone, a 1h one is not),
- ``w``: gaps longer than an hour (both are gone).

Then the first use and every gap over an hour are writes under both TTLs, and::

    cost_5m = 1.25 (1 + w) + 1.25 k + 0.1 r
    cost_1h = 2.00 (1 + w) + 0.10 k + 0.1 r       (r: gaps up to 5 minutes)
    cost_5m - cost_1h = 1.15 k - 0.75 (1 + w)

so the 1h TTL pays exactly when ``k > (15/23)(1 + w)``, i.e. ``k / (1 + w) > 0.652``: on
average more than about two re-uses after a 5-to-60-minute gap for every three cold starts.
One such re-use per cold start is already enough. ``docs/warm.md`` has a worked example.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import attrs

__all__ = ["TtlCosts", "choose_ttl", "ttl_costs"]

#: Cache write and read prices as multiples of the base input price (every current model).
WRITE_5M = 1.25
WRITE_1H = 2.0
READ = 0.1


@attrs.frozen
class TtlCosts:
    """What a run of uses of one prefix costs under each TTL, in prefix-tokens x base price.

    Attributes:
        five_minute: The cost with ``ttl="5m"``.
        one_hour: The cost with ``ttl="1h"``.

    .. versionadded:: 0.1
    """

    five_minute: float
    one_hour: float

    @property
    def best(self) -> Literal["5m", "1h"]:
        """The cheaper TTL; ``"5m"`` on a tie (the 1h TTL must strictly pay)."""
        return "1h" if self.one_hour < self.five_minute else "5m"


def ttl_costs(
    gaps: Iterable[float],
    *,
    write_5m: float = WRITE_5M,
    write_1h: float = WRITE_1H,
    read: float = READ,
) -> TtlCosts:
    """Price a run of uses under both TTLs.

    Args:
        gaps: Seconds between the starts of consecutive uses (one fewer than the uses).
        write_5m: Price of a 5m write as a multiple of base input.
        write_1h: Price of a 1h write as a multiple of base input.
        read: Price of a read as a multiple of base input.

    Returns:
        The two costs, counting the first use's write.
    """
    five, hour = write_5m, write_1h  # the first use writes under either TTL
    for gap in gaps:
        if gap < 0:
            raise ValueError(f"a gap between uses cannot be negative: {gap}")
        # An entry lives until start + TTL, exclusive: a gap of exactly the TTL misses.
        five += read if gap < 300 else write_5m
        hour += read if gap < 3600 else write_1h
    return TtlCosts(five_minute=five, one_hour=hour)


def choose_ttl(gaps: Iterable[float]) -> Literal["5m", "1h"]:
    """Return the TTL that would have cost less for these gaps between uses.

    Args:
        gaps: Observed seconds between the starts of consecutive uses of a prefix.

    Returns:
        ``"1h"`` when gaps of 5 to 60 minutes are frequent enough for the 2x write to pay
        (more than 15/23 of them per cold start), else ``"5m"``.
    """
    return ttl_costs(gaps).best

"""``convo demo``: convo's main job, end to end, on the embedded emulator.

Part one is a conversation through :class:`convo.Session`: per turn, the cache outcome
predicted before the call and observed after it, the reason, the cost, and the prefix's TTL
state. Knowing nothing of the gaps yet, the policy writes the prefix for an hour and a
turn's own message for 5 minutes, so a 6-minute idle gap shows an ``expired`` miss of the
last message's entry while everything before it is read. Part two is a
burst of concurrent :class:`convo.AsyncSession` on a cold prefix: single flight makes one
request write it and the rest read. Everything goes through the real ``anthropic`` SDK on
loopback; every attempt lands in the demo's own ledger (``demo.sqlite3`` in convo's data
directory, replaced on each run and never the user's ledger), with the real time of each
request: the idle gaps pass on the emulator's virtual clock, not in the ledger.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import attrs
import click
from rich.console import Console

from convo.cli.common import data_path, output_console
from convo.cli.tables import Column, print_fitted
from convo.ledger import Ledger, LedgerRow

__all__ = ["demo"]

_MODEL = "claude-sonnet-4-6"

# A static system prompt long enough to pass Sonnet 4.6's 1,024-token cache minimum.
_HANDBOOK = " ".join(
    f"Rule {n}: answer the customer plainly, cite the handbook section, and never invent "
    f"a policy that section {n} does not state."
    for n in range(1, 90)
)

_QUESTIONS = (
    "How do refunds work?",
    "And for an annual plan?",
    "Can I pause instead?",
    "Summarise what you told me.",
)

# (turn index, idle seconds before it): a 6-minute gap outlives a 5-minute entry.
_GAPS = {2: 60.0, 3: 360.0}


def _usd(value: Decimal | None) -> str:
    return "unpriced" if value is None else f"${value:.5f}"


class _RealTimeLedger(Ledger):
    """A ledger that stores each row at the real time of its request.

    The demo's sessions run on the emulator's clock, which jumps ahead over the idle gaps;
    rows stamped with it would sit minutes in the future. ``skew()`` is how far the
    emulator's clock is ahead of the real one, taken off every row's time.
    """

    skew: Callable[[], float] = staticmethod(lambda: 0.0)

    def append(self, row: LedgerRow) -> None:
        """Enqueue *row*, moved back to real time."""
        shifted = row.time - dt.timedelta(seconds=self.skew())
        super().append(attrs.evolve(row, time=shifted))


@click.command(short_help="Run convo's main job on the embedded emulator.")
@click.option("--turns", default=len(_QUESTIONS), show_default=True, type=click.IntRange(1, 20))
@click.option(
    "--burst",
    default=20,
    show_default=True,
    type=click.IntRange(2, 100),
    help="Concurrent sessions in the single-flight burst.",
)
@click.option(
    "--ledger",
    "ledger_url",
    default=None,
    help="Ledger path or URL. Default: demo.sqlite3 in convo's data directory, replaced on "
    "each run (never your own ledger).",
)
def demo(turns: int, burst: int, ledger_url: str | None) -> None:
    """Run a cached conversation and a concurrent burst on the embedded emulator."""
    import anthropic

    import convo
    from convo.emulator import serve

    console = output_console(piped_width=100)
    if ledger_url:
        ledger = _RealTimeLedger.open(ledger_url)
    else:
        path = data_path("demo.sqlite3")
        for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)
        ledger = _RealTimeLedger.open(path)
    assert isinstance(ledger, _RealTimeLedger)
    with serve() as emu, ledger:
        import time

        clock = emu.emulator.clock.now
        ledger.skew = lambda: clock() - time.time()
        registry = convo.WarmRegistry(clock=clock)
        prefix = convo.Prefix(model=_MODEL, system=[_HANDBOOK], ttl="5m")
        with anthropic.Anthropic(base_url=emu.base_url, api_key="sk-ant-demo") as client:
            session = convo.Session(
                prefix,
                client=client,
                suffix="Customer: Ada, plan: pro",
                suffix_placement="message",
                registry=registry,
                limiter=convo.RateLimiter(),
                ledger=ledger,
                clock=clock,
                max_tokens=256,
            )
            _conversation(console, emu, session, registry, turns)
        _burst(console, emu, registry, ledger, burst)
        ledger.flush()
        totals = ledger.total(session=session.session_id)
        where = ledger.where
        console.print(
            f"3. The demo's own ledger holds {totals.requests} rows for the conversation "
            f"({_usd(totals.cost_usd)}) and the burst's, at real times. See them with:",
            highlight=False,
        )
        console.print(f"   convo report --ledger {where}", highlight=False, soft_wrap=True)


def _ttl_before(registry: Any, session: Any, now: float) -> str:
    state = registry.state(session.warm_key)
    if state is None:
        return "cold"
    left = state.expires_at - now
    return f"{left:.0f} s" if left > 0 else "expired"


_DEMO_COLUMNS = [
    Column("turn", "turn"),
    Column("idle", "idle"),
    Column("ttl", "TTL"),
    Column("reason", "reason", text=True, min_width=14),
    Column("read", "read"),
    Column("write", "write"),
    Column("in", "in"),
    Column("out", "out"),
    Column("cost", "cost"),
    Column("pred", "pred", drop=1),
]


def _conversation(console: Console, emu: Any, session: Any, registry: Any, turns: int) -> None:
    rows: list[dict[str, str]] = []
    misses: list[str] = []
    for turn in range(turns):
        idle = _GAPS.get(turn, 0.0)
        if idle:
            emu.advance(idle)
        ttl = _ttl_before(registry, session, emu.emulator.clock.now())
        reply = session.send(_QUESTIONS[turn % len(_QUESTIONS)])
        cache, usage = reply.cache, reply.usage
        p = cache.predicted
        colour = "green" if reply.reason == "hit" else "yellow"
        if not cache.exact:
            misses.append(
                f"turn {reply.turn} was predicted to read {p.cache_read:,}, write "
                f"{p.cache_write:,}, in {p.input:,}"
            )
        rows.append(
            {
                "turn": str(reply.turn),
                "idle": f"{idle:.0f} s" if idle else "",
                "ttl": ttl,
                "reason": f"[{colour}]{reply.reason}[/]",
                "read": f"{usage.cache_read:,}",
                "write": f"{usage.cache_write:,}",
                "in": f"{usage.input:,}",
                "out": f"{usage.output:,}",
                "cost": _usd(reply.cost.usd),
                "pred": "exact" if cache.exact else "off",
            }
        )
    # Widths count the markup too; the reason column is text, so it may wrap, never cut.
    print_fitted(
        console,
        _DEMO_COLUMNS,
        rows,
        title=f"1. A conversation on {_MODEL}, on the emulator",
        legend=(
            "idle: seconds before the turn, on the emulator's virtual clock (no real wait)\n"
            "TTL: what was left of the cached prefix's lifetime as the turn began (written "
            "for an hour: nothing was known about the gaps yet)\n"
            "reason: expired after 6 idle minutes: the last message's 5-minute entry "
            "lapsed; the prefix and the history before it were read\n"
            "read/write: tokens read from / written to the cache; in: uncached input; "
            "out: output\n"
            "pred: convo's prediction of read, write and in, made before the call, "
            "against what the response said"
        ),
        elsewhere="",
    )
    for line in misses:
        console.print(line, highlight=False)
    stats = session.stats
    console.print(
        f"token hit rate {stats.token_hit_rate:.0%}, request hit rate "
        f"{stats.request_hit_rate:.0%}; {_usd(stats.cost_usd)} spent, "
        f"{_usd(stats.saved_usd)} saved by caching; ITPM weight {stats.rate_limit_tokens:,}",
        highlight=False,
    )


def _burst(console: Console, emu: Any, registry: Any, ledger: Any, burst: int) -> None:
    import anthropic

    import convo

    # Latency makes the requests overlap, as they would on the real API.
    emu.configure(
        {
            "time_scale": 1.0,
            "latency": {
                "base_s": 0.3,
                "prefill_uncached_s": 0.0,
                "prefill_cached_s": 0.0,
                "decode_s": 0.0,
            },
        }
    )
    before = emu.stats()["cache"]["writes"]
    prefix = convo.Prefix(model=_MODEL, system=["Burst edition. " + _HANDBOOK])

    async def run() -> list[Any]:
        async with anthropic.AsyncAnthropic(base_url=emu.base_url, api_key="sk-ant-demo") as client:
            sessions = [
                convo.AsyncSession(
                    prefix,
                    client=client,
                    history="none",
                    registry=registry,
                    limiter=convo.RateLimiter(),
                    ledger=ledger,
                    clock=emu.emulator.clock.now,
                    max_tokens=64,
                )
                for _ in range(burst)
            ]
            return await asyncio.gather(*(s.send(f"Question {i}") for i, s in enumerate(sessions)))

    replies = asyncio.run(run())
    writes = emu.stats()["cache"]["writes"] - before
    readers = sum(r.usage.cache_read > 0 for r in replies)
    console.print(
        f"2. A burst of {burst} concurrent sessions on a cold {prefix.tokens:,}-token prefix: "
        f"[bold]{writes} cache write[/], {readers} reads (single flight: the others waited "
        "for the writer's response to begin)."
    )

"""``convo demo``: convo's main job, end to end, on the embedded emulator.

Part one is a conversation through :class:`convo.Session`: per turn, the cache outcome
predicted before the call and observed after it, the reason, the cost, and the prefix's TTL
state; an idle gap longer than the 5-minute TTL shows an ``expired`` miss. Part two is a
burst of concurrent :class:`convo.AsyncSession` on a cold prefix: single flight makes one
request write it and the rest read. Everything goes through the real ``anthropic`` SDK on
loopback; every attempt lands in the ledger (``convo report`` reads it afterwards).
"""

from __future__ import annotations

import asyncio
import sys
from decimal import Decimal
from typing import Any

import click
from rich.console import Console
from rich.table import Table

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

# (turn index, idle seconds before it): a 6-minute gap outlives the 5-minute TTL.
_GAPS = {2: 60.0, 3: 360.0}


def _usd(value: Decimal | None) -> str:
    return "unpriced" if value is None else f"${value:.5f}"


@click.command()
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
    help="Ledger path or URL (default: convo's default SQLite ledger).",
)
def demo(turns: int, burst: int, ledger_url: str | None) -> None:
    """Run a cached conversation and a concurrent burst on the embedded emulator."""
    import anthropic

    import convo
    from convo.emulator import serve

    # Wide enough for the table when the output is not a terminal (a pipe, a CI log).
    console = Console() if sys.stdout.isatty() else Console(width=100)
    ledger = convo.Ledger.open(ledger_url) if ledger_url else convo.Ledger.default()
    with serve() as emu, ledger:
        clock = emu.emulator.clock.now
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
        console.print(
            f"3. Ledger {ledger.where}: {totals.requests} rows for the conversation, "
            f"{_usd(totals.cost_usd)}. Run `convo report` to see everything recorded."
        )


def _ttl_before(registry: Any, session: Any, now: float) -> str:
    state = registry.state(session.warm_key)
    if state is None:
        return "cold"
    left = state.expires_at - now
    return f"{left:.0f} s" if left > 0 else f"gone {-left:.0f} s"


def _conversation(console: Console, emu: Any, session: Any, registry: Any, turns: int) -> None:
    table = Table(title=f"1. A conversation on {_MODEL}: cache predicted/observed per turn")
    for column in ("turn", "idle", "TTL left", "reason", "read", "write", "in", "out", "cost"):
        table.add_column(column, justify="right")
    for turn in range(turns):
        idle = _GAPS.get(turn, 0.0)
        if idle:
            emu.advance(idle)
        ttl = _ttl_before(registry, session, emu.emulator.clock.now())
        reply = session.send(_QUESTIONS[turn % len(_QUESTIONS)])
        cache, usage = reply.cache, reply.usage
        colour = "green" if reply.reason == "hit" else "yellow"
        table.add_row(
            str(reply.turn),
            f"{idle:.0f} s" if idle else "",
            ttl,
            f"[{colour}]{reply.reason}[/]",
            f"{cache.predicted.cache_read:,}/{usage.cache_read:,}",
            f"{cache.predicted.cache_write:,}/{usage.cache_write:,}",
            f"{usage.input:,}",
            f"{usage.output:,}",
            _usd(reply.cost.usd),
        )
    console.print(table)
    stats = session.stats
    console.print(
        f"token hit rate {stats.token_hit_rate:.0%}, request hit rate "
        f"{stats.request_hit_rate:.0%}; {_usd(stats.cost_usd)} spent, "
        f"{_usd(stats.saved_usd)} saved by caching; ITPM weight {stats.rate_limit_tokens:,}"
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

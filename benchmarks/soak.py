"""Fault soak: many AsyncSessions under injected faults; the ledger must match the bill.

Usage::

    python benchmarks/soak.py                       # 64 sessions, 2,048 turns, SQLite
    python benchmarks/soak.py --ledger postgresql://postgres@127.0.0.1:5432/test
    python benchmarks/soak.py --sessions 16 --turns 8 --fault-rate 0.2 --seed 7

An in-process emulator injects every fault it knows (529, 500, 429 with and without
``retry-after``, the spend cap, dropped connections, ``error`` events and drops mid-stream
before and after text), each kind at ``--fault-rate`` / (number of kinds). Stream-only
kinds fall on streams only, so about 0.8 × ``--fault-rate`` of all attempts fault (the
default 0.26 faults about 21%). ``--sessions`` AsyncSessions share one
prefix, registry and ledger and each sends ``--turns`` turns, mixing ``send`` and
``stream``. Waits (retries, rate limits) move the emulator's clock instead of sleeping.

Checked at the end, and printed as JSON:

* no exception outside convo's documented ``ConvoError`` tree, and no hang;
* ledger rows = attempts the emulator answered;
* the ledger's totals equal the emulator's billed tokens in every kind, token for token.

``tests/test_soak.py`` runs a reduced soak on SQLite and PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anthropic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import convo
from convo.emulator import FAULT_KINDS, EmulatorConfig, RunningEmulator, serve

KINDS = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output")

# A prefix comfortably above every model's cache minimum.
SYSTEM = " ".join(
    f"Rule {i}: answer the traveller plainly and name the source." for i in range(220)
)


def fault_rates(total: float) -> dict[str, float]:
    """*total* spread evenly over every fault kind the emulator injects."""
    kinds = sorted(FAULT_KINDS)
    return {kind: total / len(kinds) for kind in kinds}


async def _one_session(
    index: int,
    *,
    client: anthropic.AsyncAnthropic,
    prefix: convo.Prefix,
    registry: convo.WarmRegistry,
    ledger: convo.Ledger,
    emulator: RunningEmulator,
    turns: int,
    rng: random.Random,
    outcomes: Counter[str],
) -> None:
    async def sleep(seconds: float) -> None:
        emulator.advance(seconds)  # waits happen on the emulator's clock
        await asyncio.sleep(0)

    session = convo.AsyncSession(
        prefix,
        client=client,
        registry=registry,
        limiter=convo.RateLimiter(),
        ledger=ledger,
        clock=emulator.emulator.clock.now,
        sleep=sleep,
        suffix=f"Traveller {index}",
        max_tokens=rng.choice((64, 256)),
    )
    for turn in range(turns):
        text = f"Question {turn} from traveller {index}: which gate?"
        try:
            if rng.random() < 0.5:
                async with session.stream(text) as replying:
                    async for _ in replying.text_stream:
                        pass
            else:
                await session.send(text)
            outcomes["ok"] += 1
        except convo.ConvoError as error:
            outcomes[type(error).__name__] += 1


async def run_soak(
    *,
    sessions: int = 64,
    turns: int = 32,
    fault_rate: float = 0.26,
    seed: int = 1,
    ledger_url: str | None = None,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Run the soak; return what it measured (see the module docstring)."""
    rng = random.Random(seed)
    config = EmulatorConfig.from_dict({"seed": seed, "faults": {"rates": fault_rates(fault_rate)}})
    outcomes: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as folder, serve(config) as emulator:
        url = ledger_url or str(Path(folder) / "soak.sqlite")
        ledger = convo.Ledger.open(url)
        prefix = convo.Prefix(model="claude-sonnet-4-6", system=[SYSTEM])
        registry = convo.WarmRegistry(clock=emulator.emulator.clock.now)
        started = time.perf_counter()
        # Every client timeout as long as the whole soak: a connection the machine's load
        # slows past the SDK's 5 s connect timeout fails on the client before the emulator
        # sees it (seen with eight soaks at once on two cores): a real attempt, recorded as
        # one, but not a fault of the emulator's, and the bill would have no line for it.
        async with anthropic.AsyncAnthropic(
            base_url=emulator.base_url, api_key="sk-ant-soak", max_retries=0, timeout=timeout_s
        ) as client:
            work = [
                _one_session(
                    i,
                    client=client,
                    prefix=prefix,
                    registry=registry,
                    ledger=ledger,
                    emulator=emulator,
                    turns=turns,
                    rng=random.Random(rng.random()),
                    outcomes=outcomes,
                )
                for i in range(sessions)
            ]
            await asyncio.wait_for(asyncio.gather(*work), timeout=timeout_s)
        elapsed = time.perf_counter() - started
        await ledger.aflush()
        totals = ledger.total()
        billed = emulator.stats()
        ledger.close()
    recorded = {kind: getattr(totals, kind) for kind in KINDS}
    return {
        "sessions": sessions,
        "turns": sessions * turns,
        "fault_rate": fault_rate,
        "seed": seed,
        "ledger": "postgresql" if ledger_url else "sqlite",
        "elapsed_s": round(elapsed, 2),
        "outcomes": dict(outcomes),
        "attempts_answered": billed["requests"]["total"],
        "ledger_rows": totals.requests,
        "faults": billed["faults"],
        "billed": billed["tokens"],
        "recorded": recorded,
        "fault_share": round(sum(billed["faults"].values()) / billed["requests"]["total"], 3),
        "match": recorded == billed["tokens"] and totals.requests == billed["requests"]["total"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--turns", type=int, default=32)
    parser.add_argument("--fault-rate", type=float, default=0.26)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ledger", default=None, help="a ledger URL (default: a temp SQLite)")
    args = parser.parse_args()
    result = asyncio.run(
        run_soak(
            sessions=args.sessions,
            turns=args.turns,
            fault_rate=args.fault_rate,
            seed=args.seed,
            ledger_url=args.ledger,
        )
    )
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["match"] else 1)


if __name__ == "__main__":
    main()

"""An agent's tool loop whose cache survives wide parallel fan-outs.

The agent calls a ``fan_out`` tool; the app answers it by forking 30 sub-agents at once
(``AsyncSession.fork``: same prefix, the conversation so far, a copy of what is cached),
each researching one sub-question, and hands their 30 findings back in one user turn (the
tool result, then a block per finding). Two things keep the cache through that:

- the forks read the conversation's cached history instead of each writing it again (each
  writes only its own short question), however many run at once;
- the parent's next turn, 31 blocks further on, still reads its own cached history: the
  layout places its history breakpoints so the 20-block lookback is never outrun.

    python examples/agent_tools.py            # against an emulator in this process
    python examples/agent_tools.py --real     # the real API (ANTHROPIC_API_KEY)

The emulator calls a tool only when ``tool_choice`` forces one, so against it the loop
forces ``{"type": "any"}`` on every turn (a constant setting: changing ``tool_choice``
mid-conversation would re-key the messages) and stops after ``--rounds`` rounds; against
the real API it uses ``auto`` and stops when the model does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from decimal import Decimal
from typing import Any

import anthropic

import convo

# The emulator accepts any key; a key in the environment is used as it would be for real
# (and never printed).
EMULATOR_KEY = os.environ.get("ANTHROPIC_API_KEY") or "sk-ant-example"

TOOLS = [
    {
        "name": "fan_out",
        "description": "Research several sub-questions in parallel; returns one finding each.",
        "input_schema": {
            "type": "object",
            "properties": {"questions": {"type": "array", "items": {"type": "string"}}},
        },
    }
]
PREFIX = convo.Prefix(
    model="claude-sonnet-4-6",
    system=["You are a research agent. Split questions up, research, then conclude. " * 120],
    tools=TOOLS,
)
WIDTH = 30


async def fan_out(
    session: convo.AsyncSession, width: int, params: dict[str, Any]
) -> list[convo.Reply]:
    """Fork *width* sub-agents from the conversation so far and run them at once."""
    forks = [session.fork() for _ in range(width)]
    return list(
        await asyncio.gather(
            *(
                f.send(f"Sub-question {i}: find one fact.", params=params)
                for i, f in enumerate(forks)
            )
        )
    )


async def run_agent(
    client: anthropic.AsyncAnthropic, *, rounds: int, width: int, forced: bool
) -> tuple[list[convo.Reply], list[convo.Reply]]:
    """The tool loop; returns the parent's replies and every fork's."""
    params: dict[str, Any] = {"tool_choice": {"type": "any" if forced else "auto"}}
    session = convo.AsyncSession(
        PREFIX, client=client, ledger=False, registry=convo.WarmRegistry(), max_tokens=256
    )
    parent = [await session.send("How do bookshops price second-hand books?", params=params)]
    subs: list[convo.Reply] = []
    while parent[-1].message.stop_reason == "tool_use" and len(parent) <= rounds:
        call = next(b for b in parent[-1].message.content if b.type == "tool_use")
        findings = await fan_out(session, width, params)
        subs += findings
        content: list[dict[str, Any]] = [
            {"type": "tool_result", "tool_use_id": call.id, "content": f"{width} findings follow"}
        ]
        content += [
            {"type": "text", "text": f"Finding {i}: {f.text or '(none)'}"}
            for i, f in enumerate(findings)
        ]
        reply = await session.send(content, params=params)
        parent.append(reply)
        hits = sum(1 for f in findings if f.reason == "hit")
        print(
            f"round {len(parent) - 1}: {width} forks ({hits} hits, read "
            f"{sum(f.usage.cache_read for f in findings)}, wrote "
            f"{sum(f.usage.cache_write for f in findings)}); then the agent: {reply.reason}, "
            f"read {reply.usage.cache_read}, wrote {reply.usage.cache_write}"
        )
    return parent, subs


def summary(replies: list[convo.Reply]) -> str:
    read = sum(r.usage.cache_read for r in replies)
    total = sum(r.usage.total_input for r in replies)
    cost = sum((r.cost.usd or Decimal(0) for r in replies), Decimal(0))
    saved = sum((r.cost.saved_usd or Decimal(0) for r in replies), Decimal(0))
    reasons: dict[str, int] = {}
    for r in replies:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    return (
        f"requests: {len(replies)} ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))})\n"
        f"cache writes: {sum(r.usage.cache_write for r in replies)} tokens, "
        f"reads: {read} tokens\n"
        f"hit rate: {read / total:.1%} of input tokens\n"
        f"cost: ${cost:.4f} (caching saved ${saved:.4f})"
    )


async def main_async(base_url: str | None, rounds: int, width: int) -> None:
    client = (
        anthropic.AsyncAnthropic(base_url=base_url, api_key=EMULATOR_KEY)
        if base_url
        else anthropic.AsyncAnthropic()
    )
    async with client:
        parent, subs = await run_agent(client, rounds=rounds, width=width, forced=bool(base_url))
    print(summary(parent + subs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="use the real API")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--width", type=int, default=WIDTH)
    args = parser.parse_args()
    if args.real:
        asyncio.run(main_async(None, args.rounds, args.width))
        return
    with convo.emulator.serve() as running:
        asyncio.run(main_async(running.base_url, args.rounds, args.width))


if __name__ == "__main__":
    main()

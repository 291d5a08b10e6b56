"""``convo demo``: a short cached conversation on the embedded emulator, shown turn by turn."""

from __future__ import annotations

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


@click.command()
@click.option("--turns", default=len(_QUESTIONS), show_default=True, type=click.IntRange(1, 20))
def demo(turns: int) -> None:
    """Run a short conversation through the real SDK on the embedded emulator."""
    import anthropic

    from convo.emulator import serve

    console = Console()
    table = Table(title=f"convo demo: {turns} turns on the emulator ({_MODEL})")
    for column in ("turn", "input", "cache read", "cache write", "output", "total input", "hit"):
        table.add_column(column, justify="right")

    with (
        serve() as emu,
        anthropic.Anthropic(base_url=emu.base_url, api_key="sk-ant-demo", max_retries=0) as client,
    ):
        system: Any = [{"type": "text", "text": _HANDBOOK, "cache_control": {"type": "ephemeral"}}]
        history: list[dict[str, Any]] = []
        for turn in range(turns):
            history.append({"role": "user", "content": _QUESTIONS[turn % len(_QUESTIONS)]})
            # Breakpoint on the newest turn so the next request reads the whole history.
            messages: Any = [
                *history[:-1],
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": history[-1]["content"],
                            "cache_control": {"type": "ephemeral"},
                        }
                    ],
                },
            ]
            reply = client.messages.create(
                model=_MODEL, max_tokens=256, system=system, messages=messages
            )
            history.append({"role": "assistant", "content": reply.content})
            u = reply.usage
            read, write = u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0
            total = u.input_tokens + read + write
            table.add_row(
                str(turn + 1),
                f"{u.input_tokens:,}",
                f"{read:,}",
                f"{write:,}",
                f"{u.output_tokens:,}",
                f"{total:,}",
                f"{read / total:.0%}" if total else "-",
            )
        stats = emu.stats()
    console.print(table)
    tokens = stats["tokens"]
    console.print(
        f"emulator billed: {stats['requests']['total']} requests, "
        f"{tokens['input']:,} input, {tokens['cache_read']:,} cache read, "
        f"{tokens['cache_write_5m']:,} 5m writes, {tokens['output']:,} output tokens"
    )

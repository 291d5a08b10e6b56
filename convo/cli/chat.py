"""``convo chat``: talk to Claude through a Session, with the cache outcome of every turn."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console

__all__ = ["chat"]

_DEFAULT_SYSTEM = "You are a helpful assistant. Answer briefly and plainly."


@contextlib.contextmanager
def _client(emulator: bool) -> Iterator[tuple[Any, Any]]:
    """Yield (client, clock): the real API from the environment, or the embedded emulator."""
    import time

    import anthropic

    if not emulator:
        with anthropic.Anthropic() as client:  # ANTHROPIC_API_KEY from the environment
            yield client, time.time
        return
    from convo.emulator import serve

    with serve() as emu, anthropic.Anthropic(base_url=emu.base_url, api_key="sk-chat") as client:
        yield client, emu.emulator.clock.now


def _lines() -> Iterator[str]:
    """The user's messages, until an empty line or the end of input."""
    while True:
        try:
            line = input("you> ") if sys.stdin.isatty() else sys.stdin.readline()
        except EOFError:
            return
        if not line.strip():
            return
        yield line.strip()


@click.command()
@click.option("--model", default="claude-sonnet-4-6", show_default=True)
@click.option(
    "--system",
    "system_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file holding the static system prompt (cached).",
)
@click.option("--ttl", type=click.Choice(["5m", "1h"]), default="5m", show_default=True)
@click.option("--max-tokens", default=1024, show_default=True, type=click.IntRange(1))
@click.option(
    "--emulator/--api",
    default=False,
    help="Talk to the embedded emulator instead of the real API (no key needed).",
)
@click.option("--ledger", "ledger_url", default=None, help="Ledger path or URL (default: convo's).")
def chat(
    model: str,
    system_file: Path | None,
    ttl: str,
    max_tokens: int,
    emulator: bool,
    ledger_url: str | None,
) -> None:
    """Chat on the terminal; each reply is followed by its cache outcome and cost.

    Type a message and press Enter; an empty line or end of input (Ctrl-D) ends the chat.
    """
    import convo

    console = Console(stderr=True)
    system = system_file.read_text(encoding="utf-8") if system_file else _DEFAULT_SYSTEM
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", convo.PrefixTooShortWarning)
            prefix = convo.Prefix(model=model, system=[system], ttl=ttl)  # type: ignore[arg-type]
    except (convo.LayoutError, TypeError) as error:
        raise click.BadParameter(str(error), param_hint="--model/--system") from error
    for warning in caught:  # said once, plainly, rather than as a Python warning
        console.print(f"[dim]note: {warning.message}[/]")
    ledger = convo.Ledger.open(ledger_url) if ledger_url else convo.Ledger.default()
    with ledger, _client(emulator) as (client, clock):
        session = convo.Session(
            prefix,
            client=client,
            ledger=ledger,
            clock=clock,
            max_tokens=max_tokens,
            registry=convo.WarmRegistry(clock=clock),
        )
        for text in _lines():
            with session.stream(text) as stream:
                for piece in stream.text_stream:
                    click.echo(piece, nl=False)
            click.echo()
            reply, usage = stream.reply, stream.reply.usage
            cost = "unpriced" if reply.cost.usd is None else f"${reply.cost.usd:.5f}"
            console.print(
                f"[dim]{reply.reason}: read {usage.cache_read:,}, wrote {usage.cache_write:,}, "
                f"input {usage.input:,}, output {usage.output:,}; {cost}[/]"
            )
        stats = session.stats
        if stats.requests:
            spent = "unpriced" if stats.cost_usd is None else f"${stats.cost_usd:.5f}"
            rate = f"{stats.token_hit_rate:.0%}" if stats.token_hit_rate is not None else "-"
            console.print(f"[dim]{stats.requests} turns, token hit rate {rate}, {spent}[/]")

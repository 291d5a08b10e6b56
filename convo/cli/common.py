"""Small pieces the subcommands share: where their own ledgers live, and how figures print."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import platformdirs
from rich.console import Console

__all__ = ["data_path", "mmss", "output_console", "usd"]


def data_path(name: str) -> Path:
    """A file in convo's data directory (``$CONVO_HOME``, else the user data directory),
    next to the default ledger."""
    return Path(os.environ.get("CONVO_HOME") or platformdirs.user_data_dir("convo")) / name


def usd(value: Decimal | None, places: int = 5) -> str:
    """A cost as ``$0.00123``; ``unpriced`` for a model with no known price (never ``$0``)."""
    if value is None:
        return "unpriced"
    sign = "-" if value < 0 else ""  # a saving can be negative: -$0.00100, not $-0.00100
    return f"{sign}${abs(value):,.{places}f}"


def mmss(seconds: float) -> str:
    """Seconds as ``m:ss`` (``h:mm:ss`` past an hour), for TTL countdowns."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def output_console(piped_width: int = 160) -> Console:
    """A console for a command's output: the terminal's width on a terminal; piped into
    ``less`` or ``tail`` on a terminal (stderr still is one), that terminal's width; with no
    terminal at all (a file, a CI log), *piped_width* unless ``COLUMNS`` says otherwise."""
    console = Console()
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    try:
        return Console(width=os.get_terminal_size(2).columns)
    except OSError:
        return Console(width=piped_width)

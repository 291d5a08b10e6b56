"""Tables that fit the terminal: lesser columns are dropped, never a number cut.

Rich shrinks a table wider than the console by cutting cells (``6…``, ``$0.011…``). Here
each column has a priority; while the table's natural width exceeds the console's, the
least important column goes (and is named under the table), and text columns may wrap.
Numbers are never wrapped or cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["Column", "fitted", "print_fitted"]


@attrs.frozen
class Column:
    """One column of a fitted table.

    Attributes:
        key: The row key it shows.
        heading: Its (short) heading.
        drop: Drop order when the table is too wide: higher goes first; 0 is never dropped.
        text: A text column, which may wrap (to at least ``min_width``); numbers never do.
        min_width: The narrowest a text column is squeezed to.
    """

    key: str
    heading: str
    drop: int = 0
    text: bool = False
    min_width: int = 12


def _cells(text: str) -> int:
    return Text.from_markup(text).cell_len


def _natural(column: Column, rows: Sequence[Mapping[str, str]]) -> int:
    widest = max([_cells(column.heading), *(_cells(r[column.key]) for r in rows)])
    return min(widest, column.min_width) if column.text else widest


def fitted(
    columns: Sequence[Column],
    rows: Sequence[Mapping[str, str]],
    *,
    width: int,
    title: str | None = None,
) -> tuple[Table, list[Column]]:
    """Build a table of *rows* no wider than *width*; return it and the columns dropped."""
    kept = list(columns)
    dropped: list[Column] = []
    while True:
        # Each column: its cells, a space of padding either side, a (blank) rule between.
        need = sum(_natural(c, rows) + 2 for c in kept) + len(kept) - 1
        droppable = [c for c in kept if c.drop]
        if need <= width or not droppable:
            break
        worst = max(droppable, key=lambda c: c.drop)
        kept.remove(worst)
        dropped.append(worst)
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False, expand=False)
    for c in kept:
        table.add_column(
            c.heading,
            justify="left" if c.text else "right",
            no_wrap=not c.text,
            overflow="fold",
        )
    for r in rows:
        table.add_row(*(r[c.key] for c in kept))
    return table, dropped


def print_fitted(
    console: Console,
    columns: Sequence[Column],
    rows: Sequence[Mapping[str, str]],
    *,
    title: str | None = None,
    legend: str | Mapping[str, str] = "",
    elsewhere: str = "--format csv or json has every column",
) -> None:
    """Print a fitted table, then its legend and which columns did not fit (if any).

    A legend given as ``{heading: meaning}`` explains only the columns shown.
    """
    table, dropped = fitted(columns, rows, width=console.width, title=title)
    console.print(table)
    if isinstance(legend, Mapping):
        gone = {c.heading for c in dropped}
        legend = "; ".join(f"{h}: {m}" for h, m in legend.items() if h not in gone)
    notes = [legend] if legend else []
    if dropped:
        notes.append(
            "not shown at this width: "
            + ", ".join(c.heading for c in dropped)
            + (f" ({elsewhere})" if elsewhere else "")
        )
    for note in notes:
        console.print(f"[dim]{note}[/]", highlight=False)

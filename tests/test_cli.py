"""The command line: the emulator served from another process, and the demo."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path

import anthropic
import pytest
from click.testing import CliRunner
from rich.console import Console

from convo.cli import main
from convo.cli.chat import _Wrap
from convo.cli.common import mmss, usd
from convo.cli.report import _series
from convo.cli.tables import Column, fitted
from convo.emulator import serve_process
from convo.ledger import Ledger, LedgerRow
from convo.pricing import price
from convo.usage import Usage

from .conftest import API_KEY


class TestEmulatorServe:
    """`convo emulator serve` answers the real SDK from another process."""

    def test_serves_the_sdk_from_a_subprocess(self) -> None:
        """A cold then warm request through the SDK shows a write, then a read."""
        with serve_process() as server:
            system = [
                {"type": "text", "text": "word " * 1100, "cache_control": {"type": "ephemeral"}}
            ]
            with anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0) as c:
                ask = {
                    "model": "claude-sonnet-4-6",
                    "max_tokens": 8,
                    "system": system,
                    "messages": [{"role": "user", "content": "hi"}],
                }
                cold = c.messages.create(**ask)  # type: ignore[arg-type]
                warm = c.messages.create(**ask)  # type: ignore[arg-type]
            assert cold.usage.cache_creation_input_tokens == 1100
            assert warm.usage.cache_read_input_tokens == 1100

    def test_bad_config_file_is_a_usage_error(self, tmp_path: Path) -> None:
        """A config with an unknown key exits 2 naming the key, before serving."""
        path = tmp_path / "bad.json"
        path.write_text('{"limitz": {}}')
        result = CliRunner().invoke(main, ["emulator", "serve", "--config", str(path)])
        assert result.exit_code == 2
        assert "limitz" in result.output


class TestDemo:
    """`convo demo` runs convo's main job on the embedded emulator."""

    def test_demo_shows_outcomes_expiry_and_one_write_burst(self, tmp_path: Path) -> None:
        """Per-turn reasons (cold, hit, expired), a one-write burst, and ledger rows."""
        ledger = tmp_path / "demo.sqlite3"
        result = CliRunner().invoke(main, ["demo", "--burst", "8", "--ledger", str(ledger)])
        assert result.exit_code == 0, result.output
        table = result.output.split("2. A burst")[0]
        assert [w for w in ("cold", "hit", "expired") if w in table] == ["cold", "hit", "expired"]
        text = " ".join(result.output.split())  # the console wraps long lines
        assert "8 concurrent sessions" in text
        assert "1 cache write, 7 reads" in text
        assert "4 rows for the conversation" in text
        assert "virtual clock" in text
        assert ledger.exists()


class TestChat:
    """`convo chat` streams replies and shows each turn's cache outcome."""

    def test_chat_from_a_pipe(self, tmp_path: Path) -> None:
        """Piped messages on a cacheable prompt: the second turn is a hit; blank lines are
        skipped; the end of input ends the chat with a summary."""
        system = tmp_path / "system.txt"
        system.write_text("You answer questions about the plan. " * 300)
        result = CliRunner().invoke(
            main,
            ["chat", "--emulator", "--system", str(system), "--ledger", str(tmp_path / "l.db")],
            input="Hello\n\nAnd again\n/stats\n",
        )
        assert result.exit_code == 0, result.output
        assert re.search(r"cold\s+read 0/0\s+write", result.output)
        assert re.search(r"hit\s+read ([\d,]+)/\1\s+write", result.output)
        assert "token hit rate (read / all input)" in result.output
        assert "2 requests, token hit rate" in " ".join(result.output.split())


class TestFigures:
    """How figures print."""

    def test_money(self) -> None:
        """Costs keep five places, a negative saving puts its sign first, unknown is said."""
        assert usd(Decimal("0.0012345")) == "$0.00123"
        assert usd(Decimal("-0.001")) == "-$0.00100"
        assert usd(None) == "unpriced"

    def test_countdown(self) -> None:
        """TTLs print as m:ss, past an hour as h:mm:ss, never negative."""
        assert [mmss(s) for s in (299.7, 3600, -5)] == ["4:59", "1:00:00", "0:00"]


class TestWrap:
    """Streamed replies are word-wrapped as they arrive."""

    def test_words_are_never_split(self) -> None:
        """Pieces that split words still wrap between words, at the width."""
        wrap = _Wrap(20)
        text = "the quick brown fox jumps over the lazy dog and keeps on running far away"
        pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
        out = "".join(wrap.feed(p) for p in pieces) + wrap.end()
        assert out.split() == text.split()
        assert all(len(line) <= 20 for line in out.split("\n"))
        assert len(out.split("\n")) > 3


class TestFittedTables:
    """Tables drop lesser columns rather than cut a number."""

    def test_drops_by_priority_and_says_so(self) -> None:
        """At 25 columns the droppable columns go, highest drop first; numbers stay whole."""
        columns = [
            Column("name", "name", text=True, min_width=6),
            Column("a", "alpha"),
            Column("b", "beta", drop=1),
            Column("c", "gamma", drop=2),
        ]
        rows = [{"name": "row", "a": "1,234,567", "b": "7,654,321", "c": "$0.12345"}]
        table, dropped = fitted(columns, rows, width=25)
        assert [c.heading for c in dropped] == ["gamma", "beta"]
        console = Console(width=25, record=True, color_system=None)
        console.print(table)
        assert "1,234,567" in console.export_text()
        _, none = fitted(columns, rows, width=80)
        assert none == []


@pytest.fixture
def spread(tmp_path: Path) -> Ledger:
    """A ledger with rows over a few hours of one day and over ten days (two files)."""
    return Ledger.open(tmp_path / "x.db")


def _rows(ledger: Ledger, times: list[dt.datetime]) -> None:
    usage = Usage(input=10, cache_read=900, cache_write_5m=0, output=20)
    for when in times:
        ledger.append(
            LedgerRow.build(
                usage, price(usage, "claude-sonnet-4-6"), model="claude-sonnet-4-6", time=when
            )
        )
    ledger.flush()


class TestReportSpans:
    """The plot's bins suit the data's span; a filter that matches nothing says why."""

    def test_one_day_is_binned_by_hour(self, spread: Ledger) -> None:
        """Four rows 50 minutes apart (9:15 to 11:45) make three hourly bins."""
        start = dt.datetime(2026, 11, 2, 9, 15, tzinfo=dt.timezone.utc)
        _rows(spread, [start + dt.timedelta(minutes=50 * i) for i in range(4)])
        unit, series = _series(spread, dict.fromkeys(("since", "until", "model", "session")))
        assert unit == "hour"
        assert [b["start"].hour for b in series] == [9, 10, 11]

    def test_weeks_are_binned_by_day(self, spread: Ledger) -> None:
        """Rows over ten days make daily bins."""
        start = dt.datetime(2026, 11, 2, 9, 15, tzinfo=dt.timezone.utc)
        _rows(spread, [start + dt.timedelta(days=i) for i in range(10)])
        unit, series = _series(spread, dict.fromkeys(("since", "until", "model", "session")))
        assert unit == "day"
        assert len(series) == 10

    def test_an_unknown_model_gets_a_hint(self, spread: Ledger, tmp_path: Path) -> None:
        """--model with a typo says which models the ledger holds."""
        _rows(spread, [dt.datetime.now(dt.timezone.utc)])
        spread.close()
        result = CliRunner().invoke(
            main, ["report", "--ledger", str(tmp_path / "x.db"), "--model", "claude-sonet-4-6"]
        )
        assert result.exit_code == 0
        assert (
            "no rows match: no rows with --model claude-sonet-4-6; this ledger has: "
            "claude-sonnet-4-6" in result.output
        )

    def test_plot_of_one_day(self, spread: Ledger, tmp_path: Path) -> None:
        """A day's data plots per hour (a PNG is written)."""
        start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=5)
        _rows(spread, [start + dt.timedelta(minutes=40 * i) for i in range(8)])
        spread.close()
        png = tmp_path / "day.png"
        result = CliRunner().invoke(
            main, ["report", "--ledger", str(tmp_path / "x.db"), "--plot", str(png)]
        )
        assert result.exit_code == 0, result.output
        assert png.read_bytes().startswith(b"\x89PNG")

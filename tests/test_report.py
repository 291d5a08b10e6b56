"""convo report: tables, json/csv/md output, filters and the PNG plot."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sys
from decimal import Decimal
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from convo.cli.report import parse_since, report
from convo.ledger import Ledger, LedgerRow
from convo.pricing import price
from convo.usage import Usage

NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture
def ledger_path(tmp_path: Path) -> str:
    """A SQLite ledger with 40 rows over two models, two sessions and ten days."""
    path = tmp_path / "r.db"
    with Ledger.open(path) as led:
        for i in range(40):
            model = "claude-sonnet-4-6" if i % 2 else "claude-haiku-4-5"
            hit = i % 4 != 0
            usage = Usage(
                input=10 + i,
                cache_read=5000 if hit else 0,
                cache_write_5m=0 if hit else 5000,
                output=100,
            )
            when = NOW - dt.timedelta(days=i // 4, minutes=1)
            led.append(
                LedgerRow.build(
                    usage,
                    price(usage, model, at=when),
                    model=model,
                    time=when,
                    session_id=f"s{i % 2}",
                    conversation_id=f"c{i % 5}",
                    cache_reason="hit" if hit else ("cold" if i % 8 == 0 else "expired"),
                )
            )
        led.mark_outcome("c0", "success")
        led.mark_outcome("c1", "failure")
    return str(path)


def _run(*args: str) -> str:
    result = CliRunner().invoke(report, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


class TestFormats:
    def test_json_matches_ledger(self, ledger_path: str) -> None:
        """JSON output carries the ledger's exact totals, money as strings."""
        data = json.loads(_run("--ledger", ledger_path, "--format", "json"))
        with Ledger.open(ledger_path) as led:
            total = led.total()
            tasks = led.task_cost()
        assert data["summary"]["requests"] == 40
        assert Decimal(data["summary"]["cost_usd"]) == total.cost_usd
        assert data["summary"]["rate_limit_tokens"] == total.rate_limit_tokens
        assert data["summary"]["token_hit_rate"] == total.token_hit_rate
        assert [g["key"] for g in data["groups"]] == ["claude-haiku-4-5", "claude-sonnet-4-6"]
        assert {b["reason"]: b["requests"] for b in data["busts"]} == {"cold": 5, "expired": 5}
        assert Decimal(data["tasks"]["cost_per_success_usd"]) == tasks.per_success

    def test_table(self, ledger_path: str) -> None:
        """The table format shows the summary, the breakdown and the busts."""
        out = _run("--ledger", ledger_path)
        for text in ("Summary", "token hit rate", "ITPM weight", "claude-haiku-4-5", "expired"):
            assert text in out

    def test_csv(self, ledger_path: str) -> None:
        """CSV has a header, one row per group, an (all) row, then the busts (and the
        cost-per-task rows, tested below)."""
        every = list(csv.DictReader(io.StringIO(_run("--ledger", ledger_path, "--format", "csv"))))
        rows = [r for r in every if r["table"] in ("group", "summary")]
        assert [r["key"] for r in rows] == ["claude-haiku-4-5", "claude-sonnet-4-6", "(all)"]
        assert rows[-1]["table"] == "summary"
        assert sum(int(r["requests"]) for r in rows[:-1]) == int(rows[-1]["requests"]) == 40
        busts = {r["key"]: r for r in every if r["table"] == "bust"}
        assert set(busts) == {"cold", "expired"}
        assert all(int(b["cache_write"]) > 0 and b["cost_usd"] for b in busts.values())

    def test_markdown(self, ledger_path: str) -> None:
        """Markdown output has the three sections as pipe tables."""
        out = _run("--ledger", ledger_path, "--format", "md", "--by", "session")
        assert "## Summary" in out
        assert "## By session" in out
        assert "## Top cache busts" in out
        assert "| s0 |" in out


class TestFilters:
    def test_model(self, ledger_path: str) -> None:
        """--model keeps one model's rows."""
        data = json.loads(
            _run("--ledger", ledger_path, "--format", "json", "--model", "claude-haiku-4-5")
        )
        assert data["summary"]["requests"] == 20

    def test_since_relative(self, ledger_path: str) -> None:
        """--since 2d keeps the last two days' rows."""
        data = json.loads(_run("--ledger", ledger_path, "--format", "json", "--since", "2d"))
        assert data["summary"]["requests"] == 8

    def test_session_and_env(self, ledger_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """--session filters, and CONVO_LEDGER names the ledger."""
        monkeypatch.setenv("CONVO_LEDGER", ledger_path)
        data = json.loads(_run("--format", "json", "--session", "s1"))
        assert data["summary"]["requests"] == 20

    def test_bad_since(self, ledger_path: str) -> None:
        """An unreadable --since is a usage error naming the accepted forms."""
        result = CliRunner().invoke(report, ["--ledger", ledger_path, "--since", "yesterday"])
        assert result.exit_code == 2
        assert "7d" in result.output


class TestParseSince:
    @pytest.mark.parametrize(
        ("text", "delta"),
        [
            ("30m", dt.timedelta(minutes=30)),
            ("24h", dt.timedelta(hours=24)),
            ("7d", dt.timedelta(days=7)),
            ("2w", dt.timedelta(weeks=2)),
        ],
    )
    def test_relative(self, text: str, delta: dt.timedelta) -> None:
        """Relative forms count back from now."""
        assert parse_since(text, now=NOW) == NOW - delta

    def test_iso_naive_is_utc(self) -> None:
        """A naive ISO date is taken as UTC."""
        assert parse_since("2026-11-01") == dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)

    def test_garbage(self) -> None:
        """Anything else is a BadParameter."""
        with pytest.raises(click.BadParameter):
            parse_since("soon")


class TestPlot:
    def test_missing_matplotlib_clear_error(
        self, ledger_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without matplotlib, --plot fails saying pip install "convo[plot]"."""
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        result = CliRunner().invoke(
            report, ["--ledger", ledger_path, "--plot", str(tmp_path / "x.png")]
        )
        assert result.exit_code == 1
        assert 'pip install "convo[plot]"' in result.output
        assert not (tmp_path / "x.png").exists()

    def test_png_written(self, ledger_path: str, tmp_path: Path) -> None:
        """With matplotlib, --plot writes a PNG."""
        out = tmp_path / "plot.png"
        _run("--ledger", ledger_path, "--format", "json", "--plot", str(out))
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class TestRegistered:
    def test_subcommand_of_convo(self, ledger_path: str) -> None:
        """`convo report` is registered on the main command group."""
        from convo.cli import main

        result = CliRunner().invoke(main, ["report", "--ledger", ledger_path, "--format", "json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["summary"]["requests"] == 40


@pytest.fixture
def odd_ledger(tmp_path: Path) -> str:
    """Rows without a session, an unpriced model, and a session id with a '|' in it."""
    path = tmp_path / "odd.db"
    usage = Usage(input=100, cache_read=1000, output=10)
    with Ledger.open(path) as led:
        led.append(
            LedgerRow.build(
                usage,
                price(usage, "claude-sonnet-4-6"),
                model="claude-sonnet-4-6",
                session_id=None,
                conversation_id="t1",
            )
        )
        led.append(
            LedgerRow.build(
                usage,
                price(usage, "claude-sonnet-4-6"),
                model="claude-sonnet-4-6",
                session_id="a|b",
                conversation_id="t2",
            )
        )
        led.append(
            LedgerRow.build(
                usage,
                price(usage, "acme-model-1"),
                model="acme-model-1",
                session_id="s",
                conversation_id="t3",
            )
        )
        for task in ("t1", "t3"):
            led.mark_outcome(task, "success")
    return str(path)


class TestHonestGroups:
    """What a report must not blur: missing keys, unknown prices, odd characters, typos."""

    def test_rows_without_a_key_are_none_not_all(self, odd_ledger: str) -> None:
        """A group of rows with no session is '(none)' (null in JSON); '(all)' is the summary."""
        data = json.loads(_run("--ledger", odd_ledger, "--by", "session", "--format", "json"))
        assert None in [g["key"] for g in data["groups"]]
        assert data["summary"]["key"] == "(all)"
        rows = list(
            csv.reader(
                io.StringIO(_run("--ledger", odd_ledger, "--by", "session", "--format", "csv"))
            )
        )
        assert [r[0] for r in rows[1:]].count("(all)") == 1

    def test_an_unpriced_group_has_no_cost(self, odd_ledger: str) -> None:
        """A model with no known price shows no cost (null), never $0."""
        data = json.loads(_run("--ledger", odd_ledger, "--format", "json"))
        acme = next(g for g in data["groups"] if g["key"] == "acme-model-1")
        assert acme["cost_usd"] is None
        assert acme["unpriced"] == 1
        assert data["tasks"]["unpriced_tasks"] == 1

    def test_markdown_escapes_pipes(self, odd_ledger: str) -> None:
        """A '|' inside a key is escaped, so every row keeps its column count."""
        output = _run("--ledger", odd_ledger, "--by", "session", "--format", "md")
        table = output.split("## By session")[1].split("##")[0]
        lines = [line for line in table.splitlines() if line.startswith("|")]
        assert "a\\|b" in table
        counts = {line.replace("\\|", "").count("|") for line in lines}
        assert len(counts) == 1

    def test_missing_ledger_path_is_an_error_and_creates_nothing(self, tmp_path: Path) -> None:
        """A mistyped --ledger path fails with a message; no file or folder appears."""
        missing = tmp_path / "typo" / "ledgr.db"
        result = CliRunner().invoke(report, ["--ledger", str(missing)])
        assert result.exit_code == 1
        assert "no ledger at" in result.output
        assert not missing.parent.exists()

    def test_unreachable_database_is_a_message_with_the_password_masked(self) -> None:
        """A PostgreSQL URL that cannot connect: a one-line error, password hidden."""
        url = "postgresql://postgres@127.0.0.1:1/test?password=hunter2&connect_timeout=2"
        result = CliRunner().invoke(report, ["--ledger", url])
        assert result.exit_code == 1
        assert "hunter2" not in result.output
        assert "password=***" in result.output
        assert "Traceback" not in result.output


@pytest.fixture
def routed_ledger(tmp_path: Path) -> str:
    """Three routed conversations: one all on haiku (success), one that moved up to opus
    (success), one on opus (failure); plus an unmarked one."""
    path = tmp_path / "routed.db"
    small, large = "claude-haiku-4-5", "claude-opus-4-6"
    usage = Usage(input=100, cache_read=10_000, output=300)
    plan = {
        "easy": [(small, "small>small"), (small, "small>small")],
        "mixed": [(small, "small>small"), (large, "large>large"), (large, "small>large")],
        "hard": [(large, "large>large")],
        "unmarked": [(small, "small>small")],
    }
    with Ledger.open(path) as led:
        for conversation, turns in plan.items():
            for model, route in turns:
                led.append(
                    LedgerRow.build(
                        usage,
                        price(usage, model),
                        model=model,
                        time=NOW - dt.timedelta(minutes=5),
                        conversation_id=conversation,
                        route=route,
                    )
                )
        for task, outcome in (("easy", "success"), ("mixed", "success"), ("hard", "failure")):
            led.mark_outcome(task, outcome)  # type: ignore[arg-type]
    return str(path)


class TestCostPerTaskByGroup:
    """The report shows cost per successful task by model, by route and by day."""

    def test_json_matches_the_ledger(self, routed_ledger: str) -> None:
        """task_groups carries task_costs() exactly, money as strings; by day too when
        the report is by day."""
        data = json.loads(_run("--ledger", routed_ledger, "--format", "json", "--by", "day"))
        with Ledger.open(routed_ledger) as led:
            expected = led.task_costs()
            assert Decimal(data["tasks"]["cost_usd"]) == led.task_cost().cost_usd
        assert set(data["task_groups"]) == {"model", "route", "day"}
        for dimension, groups in expected.items():
            got = data["task_groups"][dimension]
            assert [g["key"] for g in got] == [t.key for t in groups]
            assert [(g["successful"], g["failed"]) for g in got] == [
                (t.successful, t.failed) for t in groups
            ]
            assert [Decimal(g["cost_usd"]) for g in got] == [t.cost_usd for t in groups]
        opus = next(g for g in data["task_groups"]["model"] if g["key"] == "claude-opus-4-6")
        # mixed (success) and hard (failure) used opus: opus's share over one success.
        assert (opus["successful"], opus["failed"]) == (1, 1)
        assert Decimal(opus["cost_per_success_usd"]) == Decimal(opus["cost_usd"])

    def test_table(self, routed_ledger: str) -> None:
        """The terminal report has the table, with each route and the counting rule; by
        model and route only, unless the report is by day (grouping by day costs more)."""
        plain = json.loads(_run("--ledger", routed_ledger, "--format", "json"))
        assert set(plain["task_groups"]) == {"model", "route"}
        out = _run("--ledger", routed_ledger)
        assert "Cost per successful task" in out
        for text in ("small>small", "large>large", "small>large", "$ / success", "share"):
            assert text in out

    def test_markdown_and_csv(self, routed_ledger: str) -> None:
        """md has the section; csv has one task_<by> row per group, sums matching."""
        assert "## Cost per successful task" in _run("--ledger", routed_ledger, "--format", "md")
        every = list(
            csv.DictReader(io.StringIO(_run("--ledger", routed_ledger, "--format", "csv")))
        )
        routes = {r["key"]: r for r in every if r["table"] == "task_route"}
        assert set(routes) == {"small>small", "large>large", "small>large"}
        assert routes["small>large"]["successful"] == "1"
        models = [r for r in every if r["table"] == "task_model"]
        with Ledger.open(routed_ledger) as led:
            whole = led.task_cost().cost_usd
        assert sum(Decimal(r["cost_usd"]) for r in models) == whole

    def test_unrouted_rows(self, ledger_path: str) -> None:
        """A ledger without routing: its marked tasks' rows are the '(no route)' group."""
        out = _run("--ledger", ledger_path, "--format", "md")
        assert "| route | (no route) |" in out

"""The command line as a person meets it: a pseudo-terminal 80 columns wide.

Each test runs ``python -m convo`` under pexpect (a real pty, so ``isatty()`` is true and
Ctrl-C / Ctrl-D are the terminal's), with no API key and a private ``CONVO_HOME``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 80
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROMPT = re.compile(r"you \[[^\]]*\]> ")
NUMBER = re.compile(r"\$?\d[\d,]*(\.\d+)?%?")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A private convo data directory (where the demo and emulator chats keep ledgers)."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update(
        PYTHONPATH=str(ROOT),
        CONVO_HOME=str(home),
        TERM="dumb",  # no colours: the text is what a person reads
        NO_COLOR="1",
        COLUMNS=str(WIDTH),
        LINES="40",
    )
    env.update(extra)
    return env


def spawn(home: Path, *args: str, timeout: float = 30, **env: str) -> pexpect.spawn:
    """``python -m convo ARGS`` in an 80x40 pseudo-terminal."""
    return pexpect.spawn(
        sys.executable,
        ["-m", "convo", *args],
        env=_env(home, **env),
        cwd=str(home),
        dimensions=(40, WIDTH),
        encoding="utf-8",
        timeout=timeout,
    )


def run(home: Path, *args: str, timeout: float = 60, **env: str) -> tuple[int, str]:
    """Run to the end in the pseudo-terminal; the exit status and the text, ANSI removed."""
    child = spawn(home, *args, timeout=timeout, **env)
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, ANSI.sub("", child.before).replace("\r\n", "\n")


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in ANSI.sub("", text).replace("\r\n", "\n").split("\n")]


def assert_fits(text: str) -> None:
    """Every line fits 80 columns and no cell was cut with an ellipsis (a command to copy,
    which holds a long path, is printed whole on a line of its own)."""
    too_wide = [
        line
        for line in lines(text)
        if len(line) > WIDTH and not line.startswith("   convo report --ledger ")
    ]
    assert too_wide == []
    assert "…" not in text


@pytest.fixture
def chat(home: Path) -> Iterator[pexpect.spawn]:
    """``convo chat`` with no key, at its first prompt."""
    child = spawn(home, "chat")
    child.expect("no ANTHROPIC_API_KEY: chatting with convo's embedded emulator")
    child.expect(PROMPT)
    yield child
    child.close(force=True)


def say(child: pexpect.spawn, text: str) -> str:
    """Type *text* and Enter; return what appeared up to the next prompt."""
    child.sendline(text)
    child.expect(PROMPT)
    return ANSI.sub("", child.before)


class TestChat:
    """`convo chat` in a terminal, with no API key."""

    def test_starts_the_emulator_and_hits_by_turn_two(self, chat: pexpect.spawn) -> None:
        """Turn 1 writes the default system prompt (cold), turn 2 reads it (hit); each
        status line shows predicted/observed reads and writes, cost and the TTL, in 80
        columns."""
        first = say(chat, "Hello")
        assert re.search(r"cold\s+read 0/0\s+write 1,3\d\d/1,3\d\d", first), first
        second = say(chat, "And again")
        hit = re.search(r"hit\s+read (1,3\d\d)/(1,3\d\d)\s+write", second)
        assert hit, second
        assert hit[1] == hit[2]  # predicted = observed
        assert re.search(r"\$0\.\d{5}\s+TTL 59:5\d", second)
        assert_fits(first + second)

    def test_slash_commands(self, chat: pexpect.spawn, home: Path) -> None:
        """/warm writes the prompt before any turn; /help, /stats, /report answer without
        sending anything; /system shows the bust before applying it; /quit ends."""
        warmed = say(chat, "/warm")
        assert re.search(r"warmed: wrote 1,3\d\d tokens for \$0\.\d{5}; TTL 59:5\d", warmed)
        hit = say(chat, "Hello")
        assert re.search(r"hit\s+read 1,3\d\d/1,3\d\d", hit), hit  # the warm paid the write
        helped = say(chat, "/help")
        assert "/system FILE" in helped
        assert "/quit" in helped
        stats = say(chat, "/stats")
        assert re.search(r"requests \(turns and warms\)\s+2", stats), stats
        assert re.search(r"reasons\s+hit 1, warm|reasons\s+cold 1, hit 1", stats), stats
        report = say(chat, "/report")
        assert "This chat in" in report
        assert re.search(r"requests \(errors, of them cancelled\)\s+2 \(0, 0\)", report), report
        unknown = say(chat, "/frobnicate")
        assert "unknown command /frobnicate; /help lists them" in unknown
        new_prompt = home / "prompt.txt"
        new_prompt.write_text("You answer questions about gardening. " * 200)
        chat.sendline("/system prompt.txt")  # relative to the chat's folder: a short line
        chat.expect(r"apply it\? \[y/N\]: ")
        chat.sendintr()  # Ctrl-C at the question is a no
        chat.expect("kept the current system prompt")
        chat.expect(PROMPT)
        chat.sendline("/system prompt.txt")  # relative to the chat's folder: a short line
        chat.expect(r"apply it\? \[y/N\]: ")
        shown = ANSI.sub("", chat.before)
        assert "busts the cache: system_changed" in shown
        assert re.search(r"predicted: read 0, write [\d,]+, in \d+", " ".join(shown.split()))
        assert "system prompt replaced" in say(chat, "y")
        after = say(chat, "Tell me about roses")
        assert re.search(r"system_changed \(static\)\s+read 0/0", after), after
        assert_fits(warmed + hit + helped + stats + report + shown + after)
        chat.sendline("/quit")
        chat.expect(r"\n(\d+) requests, token hit rate \d+%")
        chat.expect(pexpect.EOF)
        chat.close()
        assert chat.exitstatus == 0

    def test_ctrl_c_mid_stream_then_ctrl_d(self, home: Path) -> None:
        """Ctrl-C while a reply streams stops it and the chat goes on; Ctrl-D ends the chat
        with its summary on a line of its own."""
        config = home / "slow.json"
        config.write_text(
            json.dumps(
                {
                    "time_scale": 1.0,
                    "reply_tokens": 2000,
                    "latency": {"base_s": 0.0, "decode_s": 0.015},
                }
            )
        )
        child = spawn(home, "chat", "--emulator-config", str(config), "--max-tokens", "200")
        child.expect(PROMPT)
        child.sendline("Tell me everything")
        child.expect(r"\w+ \w+ \w+ \w+")  # text is arriving
        child.sendintr()
        child.expect(r"stopped after ([\d,]+) characters")
        assert int(child.match[1].replace(",", "")) > 0
        child.expect(PROMPT)  # still chatting
        child.sendline("Shorter, please")
        child.expect(r"out 200\s")  # the next reply runs to its end (max_tokens)
        child.expect(PROMPT)
        child.sendeof()
        child.expect(pexpect.EOF)
        tail = lines(child.before)
        summary = [line for line in tail if "token hit rate" in line]
        assert summary, tail
        assert summary[0].startswith("2 requests (1 stopped), token hit rate")  # cut counts
        child.close()
        assert child.exitstatus == 0


def _one_line_error(status: int, text: str) -> str:
    assert status != 0
    assert "Traceback" not in text
    errors = [line for line in lines(text) if line.startswith("Error:")]
    assert len(errors) == 1, text
    rest = lines(text)[lines(text).index(errors[0]) + 1 :]
    assert [line for line in rest if line.strip()] == []  # nothing after it
    return errors[0]


class TestErrors:
    """Every failure is one line that says what to do."""

    def test_chat_api_without_a_key(self, home: Path) -> None:
        """--api with no key says to export it or use the emulator."""
        status, text = run(home, "chat", "--api")
        assert "ANTHROPIC_API_KEY" in _one_line_error(status, text)

    def test_chat_with_a_key_but_no_network(self, home: Path) -> None:
        """An unreachable API is one line naming it and the way out (--emulator)."""
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
        dead.close()  # nothing listens there now
        child = spawn(
            home,
            "chat",
            ANTHROPIC_API_KEY="sk-ant-test",
            ANTHROPIC_BASE_URL=f"http://127.0.0.1:{port}",
        )
        child.expect(PROMPT)
        child.sendline("Hello")
        child.expect(pexpect.EOF)
        child.close()
        line = _one_line_error(child.exitstatus, child.before)
        assert f"could not reach the API at http://127.0.0.1:{port}" in line
        assert "--emulator" in line

    @pytest.mark.parametrize(
        ("command", "kind"),
        [
            ("demo", "corrupt"),
            ("chat", "directory"),
            ("report", "corrupt"),
            ("report", "directory"),
        ],
    )
    def test_bad_ledger(self, home: Path, command: str, kind: str) -> None:
        """A ledger that is not a database, or is a directory, is one line naming it."""
        target = home / "bad.sqlite3"
        if kind == "corrupt":
            target.write_text("this is not a database\n" * 20)
        else:
            target.mkdir()
        status, text = run(home, command, "--ledger", str(target))
        line = _one_line_error(status, text)
        assert "bad.sqlite3" in line
        assert "--ledger" in line

    def test_a_bad_option_value(self, home: Path) -> None:
        """A usage error is one line too, naming the option and where help is."""
        status, text = run(home, "report", "--since", "yesterday")
        line = _one_line_error(status, text)
        assert "Invalid value for --since: 'yesterday'" in line
        assert "30m, 24h, 7d" in line
        assert "convo report -h lists the options" in line  # python -m convo here

    def test_debug_shows_the_traceback(self, home: Path) -> None:
        """convo --debug lets the traceback through."""
        target = home / "bad.sqlite3"
        target.write_text("not a database\n")
        status, text = run(home, "--debug", "demo", "--ledger", str(target))
        assert status != 0
        assert "Traceback" in text
        assert "LedgerError" in text

    def test_emulator_serve_on_a_busy_port(self, home: Path) -> None:
        """A busy port is one line, and no URL is printed before it."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            status, text = run(home, "emulator", "serve", "--port", str(port))
        line = _one_line_error(status, text)
        assert f"cannot listen on 127.0.0.1:{port}" in line
        assert "http://" not in text


class TestEightyColumns:
    """The demo and the report, read in an 80-column terminal."""

    def test_demo_then_report(self, home: Path) -> None:
        """The demo's table and the report's tables fit, with every number whole; the demo
        explains its clock and columns, and writes its own ledger at real times."""
        status, demo = run(home, "demo", "--burst", "4")
        assert status == 0, demo
        assert_fits(demo)
        rows = [line.split() for line in lines(demo) if re.match(r"\s+[1-4]\s", line)]
        assert [r[0] for r in rows] == ["1", "2", "3", "4"]
        for row in rows:
            assert all(NUMBER.fullmatch(cell) for cell in row[-6:-1]), row  # read .. cost
        assert "virtual clock" in demo
        assert "read/write: tokens read from / written to the cache" in demo
        ledger = home / "demo.sqlite3"
        assert f"convo report --ledger {ledger}" in demo
        assert not (home / "ledger.sqlite3").exists()  # the user's ledger is untouched

        status, report = run(home, "report", "--ledger", str(ledger))
        assert status == 0, report
        assert_fits(report)
        model = next(line for line in lines(report) if line.startswith(" claude-sonnet-4-6"))
        cells = model.split()
        assert len(cells) >= 8
        assert all(NUMBER.fullmatch(cell) for cell in cells[1:]), cells
        assert "not shown at this width" in report  # said, not silently dropped

        status, recent = run(home, "report", "--ledger", str(ledger), "--since", "5m")
        assert status == 0
        assert re.search(r"requests \(errors, of them cancelled\)\s+\d+ \(0, 0\)", recent)

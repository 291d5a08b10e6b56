"""The command line: the emulator served from another process, and the demo."""

from __future__ import annotations

from pathlib import Path

import anthropic
from click.testing import CliRunner

from convo.cli import main
from convo.emulator import serve_process

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
        assert ledger.exists()


class TestChat:
    """`convo chat` streams replies and shows each turn's cache outcome."""

    def test_chat_on_the_emulator(self, tmp_path: Path) -> None:
        """Two messages on a cacheable prompt: the second turn is a hit; end at an empty line."""
        system = tmp_path / "system.txt"
        system.write_text("You answer questions about the plan. " * 300)
        result = CliRunner().invoke(
            main,
            ["chat", "--emulator", "--system", str(system), "--ledger", str(tmp_path / "l.db")],
            input="Hello\nAnd again\n\nnot sent\n",
        )
        assert result.exit_code == 0, result.output
        assert "cold: read 0" in result.output
        assert "hit: read" in result.output
        assert "2 turns" in result.output

"""The command line: the emulator served from another process, and the demo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import anthropic
from click.testing import CliRunner

from convo.cli import main

from .conftest import API_KEY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestEmulatorServe:
    """`convo emulator serve` answers the real SDK from another process."""

    def test_serves_the_sdk_from_a_subprocess(self) -> None:
        """A cold then warm request through the SDK shows a write, then a read."""
        port = free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "convo",
                "emulator",
                "serve",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    assert process.poll() is None, process.stderr.read() if process.stderr else ""
                    assert time.monotonic() < deadline, "the emulator did not start within 20 s"
                    time.sleep(0.05)
            system = [
                {"type": "text", "text": "word " * 1100, "cache_control": {"type": "ephemeral"}}
            ]
            with anthropic.Anthropic(
                base_url=f"http://127.0.0.1:{port}", api_key=API_KEY, max_retries=0
            ) as c:
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
        finally:
            process.terminate()
            process.wait(timeout=10)
            if process.stderr:
                process.stderr.close()

    def test_bad_config_file_is_a_usage_error(self, tmp_path: object) -> None:
        """A config with an unknown key exits 2 naming the key, before serving."""
        from pathlib import Path

        path = Path(str(tmp_path)) / "bad.json"
        path.write_text('{"limitz": {}}')
        result = CliRunner().invoke(main, ["emulator", "serve", "--config", str(path)])
        assert result.exit_code == 2
        assert "limitz" in result.output


class TestDemo:
    """`convo demo` runs a cached conversation on the embedded emulator."""

    def test_demo_shows_reads_after_the_first_turn(self) -> None:
        """The demo's table shows a write on turn 1 and reads afterwards."""
        result = CliRunner().invoke(main, ["demo", "--turns", "3"])
        assert result.exit_code == 0, result.output
        assert "convo demo" in result.output
        assert "3 requests" in result.output

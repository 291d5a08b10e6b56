"""Importing convo: no web server stack, no global logging changes; the emulator loads on use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> str:
    """Run *code* in a fresh interpreter on this checkout and return what it printed."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


class TestImportConvo:
    """``import convo`` stays light and leaves the process's logging alone."""

    def test_no_server_stack(self) -> None:
        """Starlette and uvicorn are not imported by ``import convo``."""
        code = "import convo, sys; print('starlette' in sys.modules, 'uvicorn' in sys.modules)"
        assert _python(code) == "False False"

    def test_uvicorn_logger_untouched(self) -> None:
        """No filter is installed on ``uvicorn.error`` (the logger is not even created)."""
        code = (
            "import logging, convo; "
            "created = 'uvicorn.error' in logging.root.manager.loggerDict; "
            "print(created, logging.getLogger('uvicorn.error').filters)"
        )
        assert _python(code) == "False []"


class TestLazyEmulator:
    """``convo.emulator``'s names load their submodule on first use."""

    @pytest.mark.parametrize("name", ["serve", "serve_process", "run", "create_app"])
    def test_server_names_resolve(self, name: str) -> None:
        """The server parts are reachable as attributes and by ``from ... import``."""
        code = (
            "import sys, convo.emulator as e; "
            f"from convo.emulator import {name}; "
            f"print(callable({name}), getattr(e, {name!r}) is {name}, 'starlette' in sys.modules)"
        )
        assert _python(code) == "True True True"

    def test_every_public_name_resolves(self) -> None:
        """Each name in ``__all__`` is defined where ``__all__`` says it is exported."""
        import convo.emulator as emulator

        for name in emulator.__all__:
            assert getattr(emulator, name) is not None, name
        assert set(emulator.__all__) <= set(dir(emulator))

    def test_unknown_name(self) -> None:
        """An unknown attribute raises AttributeError, so ``hasattr`` works."""
        import convo.emulator as emulator

        assert not hasattr(emulator, "no_such_name")

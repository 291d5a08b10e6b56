"""The code base stays lint-clean, formatted and type-checked (mypy strict on convo/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


@pytest.mark.slow
class TestCodeQuality:
    """ruff and mypy, as configured in pyproject.toml."""

    def test_ruff_lint(self) -> None:
        """ruff check finds nothing in convo/, tests/ and benchmarks/."""
        result = run("ruff", "check", "convo", "tests", "benchmarks")
        assert result.returncode == 0, result.stdout + result.stderr

    def test_ruff_format(self) -> None:
        """Every file is as ruff format would write it."""
        result = run("ruff", "format", "--check", "convo", "tests", "benchmarks")
        assert result.returncode == 0, result.stdout + result.stderr

    def test_mypy_strict(self) -> None:
        """mypy --strict passes on the package."""
        result = run("mypy")
        assert result.returncode == 0, result.stdout + result.stderr

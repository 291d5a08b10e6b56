"""The docs match the code: every public name is in the API reference, and every runnable
example (a Python block that starts its own emulator) runs as pasted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import convo

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def runnable_examples() -> list[tuple[str, str]]:
    examples = []
    for page in sorted(DOCS.glob("*.md")):
        for i, code in enumerate(BLOCK.findall(page.read_text(encoding="utf-8"))):
            if "from convo.emulator import serve" in code:
                examples.append((f"{page.name}#{i + 1}", code))
    return examples


class TestDocs:
    """What the docs promise."""

    def test_every_public_name_is_in_the_api_reference(self) -> None:
        """docs/api.md names every entry of convo.__all__."""
        reference = (DOCS / "api.md").read_text(encoding="utf-8")
        missing = [name for name in convo.__all__ if f"`convo.{name}`" not in reference]
        assert missing == []

    def test_there_are_runnable_examples(self) -> None:
        """The concept pages carry emulator-backed examples (so the next test checks something)."""
        assert len(runnable_examples()) >= 4

    @pytest.mark.parametrize(
        ("where", "code"), runnable_examples(), ids=[where for where, _ in runnable_examples()]
    )
    def test_example_runs_as_pasted(self, where: str, code: str, tmp_path: Path) -> None:
        """The example exits 0 in a fresh interpreter."""
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{where}:\n{result.stderr[-3000:]}"

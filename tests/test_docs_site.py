"""The docs site: it builds with warnings as errors, its quick start runs, every Python
block is either run by the suite or marked as a fragment, and no link leaves the project
except for a public web page."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
LINK = re.compile(r"\]\(([^)\s]+)\)")
RUNNABLE = "from convo.emulator import serve"  # what tests/test_docs.py runs
FRAGMENT = "# fragment:"


def pages() -> list[Path]:
    return [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]


def _nav_files(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [f for item in node for f in _nav_files(item)]
    if isinstance(node, dict):
        return [f for value in node.values() for f in _nav_files(value)]
    return []


class TestSite:
    """`mkdocs build --strict` and what it is built from."""

    @pytest.mark.slow
    def test_builds_with_warnings_as_errors(self, tmp_path: Path) -> None:
        """The site builds in strict mode (broken links, bad anchors and docstring
        warnings fail it) and has the API reference generated from the docstrings."""
        result = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        reference = (tmp_path / "site" / "reference" / "index.html").read_text(encoding="utf-8")
        assert 'id="convo.Session"' in reference
        assert "One conversation on a frozen static prefix" in reference  # its docstring
        assert (tmp_path / "site" / "comparison" / "index.html").exists()

    def test_nav_lists_every_page(self) -> None:
        """Every page in docs/ is in mkdocs.yml's nav, and every nav entry exists."""
        config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
        listed = set(_nav_files(config["nav"]))
        present = {p.name for p in DOCS.glob("*.md")}
        assert present - listed == set()
        assert listed - present == set()


class TestCodeBlocks:
    """Every Python block works when pasted, or says it is a fragment."""

    @pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
    def test_run_or_marked(self, page: Path) -> None:
        """Each ```python block starts the emulator itself (so tests/test_docs.py runs
        it) or opens with a '# fragment: ...' line saying what it assumes."""
        unmarked = [
            code.splitlines()[0]
            for code in PYTHON_BLOCK.findall(page.read_text(encoding="utf-8"))
            if RUNNABLE not in code and not code.startswith(FRAGMENT)
        ]
        assert unmarked == []

    @pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
    def test_python_is_tagged(self, page: Path) -> None:
        """A block with no language is output, a diagram or a formula, never Python code
        dodging the rule above (it would assign with '=' and call a dotted name)."""
        untagged = re.findall(r"```\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)
        python_like = re.compile(r"^\w+ = [\w.]+\(", re.MULTILINE)
        assert [b.splitlines()[0] for b in untagged if python_like.search(b)] == []

    def test_quick_start_runs(self, tmp_path: Path) -> None:
        """The quick start on the home page runs as pasted: turn 1 cold, turn 2 a hit."""
        blocks = PYTHON_BLOCK.findall((DOCS / "index.md").read_text(encoding="utf-8"))
        quick = [b for b in blocks if RUNNABLE in b]
        assert len(quick) == 1
        result = subprocess.run(
            [sys.executable, "-c", quick[0]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        lines = result.stdout.splitlines()
        assert lines[0].startswith("1 cold 0 ")
        assert lines[1].startswith("2 hit ")


class TestLinks:
    """Links stay in the project, or go to a public web page."""

    @pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
    def test_links_resolve(self, page: Path) -> None:
        """A relative link names a file that exists; any other link is https://."""
        bad = []
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if target.startswith("#"):
                continue
            if "://" in target:
                if not target.startswith("https://") or "localhost" in target:
                    bad.append(target)
                continue
            if not (page.parent / target.split("#")[0]).exists():
                bad.append(target)
        assert bad == []

    def test_no_page_cites_files_outside_the_project(self) -> None:
        """No page points at notes that are not in the repository (shared/, design.md)."""
        for page in pages():
            text = page.read_text(encoding="utf-8")
            assert "shared/" not in text, page.name
            assert "docs/design.md" not in text, page.name

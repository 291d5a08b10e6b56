"""Every example in examples/ runs against the emulator and shows what it says it shows."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import anthropic
import httpx
import pytest

import convo
from convo.emulator import RunningEmulator
from convo.store import SQLiteStore
from tests.conftest import service_missing

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PLANTED = "sk-ant-api03-PLANTED" + uuid.uuid4().hex


def run_example(name: str, *args: str, stdin: str = "", timeout: float = 240) -> str:
    """Run ``examples/<name>`` as a user would, with a planted API key in the environment;
    return its output, which must not contain the key."""
    env = {
        **os.environ,
        "ANTHROPIC_API_KEY": PLANTED,
        "PYTHONPATH": str(ROOT),
        "CONVO_HOME": os.environ["CONVO_HOME"],
    }
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert PLANTED not in output
    assert PLANTED[-16:] not in output
    return done.stdout


def load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def redis_up() -> None:
    import redis

    try:
        redis.Redis.from_url("redis://127.0.0.1:6379/0").ping()
    except redis.RedisError:
        service_missing("no Redis server at 127.0.0.1:6379")


class TestChatbot:
    """examples/chatbot.py"""

    def test_scripted_chat(self) -> None:
        """Three lines in: three replies, each with its cache outcome; hits after the first."""
        out = run_example("chatbot.py", stdin="hi\nwhat is a list?\nand a dict?\n")
        outcomes = [line.strip() for line in out.splitlines() if line.startswith("  [")]
        assert [o.split(":")[0] for o in outcomes] == ["[cold", "[hit", "[hit"]
        assert "turns: 3, cache writes: 3, cache reads: 2" in out
        assert "hit rate:" in out
        assert "cost: $" in out

    def test_restored_per_turn(self, tmp_path: Path) -> None:
        """With --store every turn restores the conversation; it still reads the cache."""
        out = run_example(
            "chatbot.py", "--store", str(tmp_path / "c.db"), stdin="hi\nmore\nagain\n"
        )
        outcomes = [line.strip() for line in out.splitlines() if line.startswith("  [")]
        assert [o.split(":")[0] for o in outcomes] == ["[cold", "[hit", "[hit"]
        assert SQLiteStore(tmp_path / "c.db").revision("terminal") == 3


class TestWorkerPool:
    """examples/worker_pool.py"""

    def test_one_write(self) -> None:
        """50 tasks on one prefix: one cache write, 49 reads."""
        out = run_example("worker_pool.py")
        assert "requests: 50" in out
        assert "cache writes: 1 (" in out
        assert "cache reads: 49 (" in out


class TestAgentTools:
    """examples/agent_tools.py"""

    def test_fan_outs_keep_the_cache(self) -> None:
        """Three rounds of 30 parallel forks: every request after the first reads the cache."""
        out = run_example("agent_tools.py")
        assert "requests: 94 (cold 1, hit 93)" in out
        assert out.count("30 forks (30 hits") == 3


class TestJobQueue:
    """examples/job_queue.py"""

    @pytest.mark.slow
    def test_one_write_for_100_jobs(self) -> None:
        """100 queued jobs on a cold prefix, two worker processes: one cache write."""
        redis_up()
        out = run_example("job_queue.py", "--jobs", "100", "--workers", "2")
        assert "jobs: 100 on 2 worker processes" in out
        assert "cache writes: 1 (" in out
        assert "cache reads: 99 (" in out


class TestWebChatbot:
    """examples/web_chatbot.py: fresh Sessions per request, in separate server processes."""

    @pytest.fixture
    def web(self) -> ModuleType:
        return load("web_chatbot")

    def reference(self, web: ModuleType, client: anthropic.Anthropic, prompts: Path) -> list[Any]:
        """One long-lived conversation in this process: the tracker lives on, and a new
        deploy of the prompt takes it over in a new Session."""
        session: convo.Session | None = None
        found = []
        for deploy, text in web.SCRIPT:
            web.write_prompts(prompts, **deploy)
            prefix = web.load_prefix(prompts)
            if session is None or session.prefix.fingerprint != prefix.fingerprint:
                session = convo.Session(
                    prefix,
                    client=client,
                    ledger=False,
                    registry=convo.WarmRegistry(),
                    messages=session.history if session else (),
                    _tracker=session.tracker if session else None,
                )
            reply = session.send(text)
            p = reply.cache.predicted
            found.append(
                (
                    reply.reason,
                    p.reason,
                    p.cache_read,
                    p.cache_write,
                    p.input,
                    reply.usage.cache_read,
                )
            )
        return found

    @pytest.mark.slow
    def test_same_as_one_session(
        self,
        web: ModuleType,
        tmp_path: Path,
        client: anthropic.Anthropic,
        emulator: RunningEmulator,
    ) -> None:
        """The conversation served turn by turn by two server processes, each request
        restoring it, predicts and names every bust exactly as one long-lived session does:
        system_changed after the system prompt was edited, tools_changed after the tools
        were reordered."""
        expected = self.reference(web, client, tmp_path)
        emulator.reset()
        env = {
            "ANTHROPIC_BASE_URL": emulator.base_url,
            "ANTHROPIC_API_KEY": PLANTED,
            "CONVO_PROMPTS": str(tmp_path),
            "CONVO_STORE": str(tmp_path / "conversations.sqlite3"),
        }
        web.write_prompts(tmp_path)
        with web.backends(2, env) as urls:
            results = web.drive(urls, tmp_path)
            got = [
                (
                    r["reason"],
                    r["predicted"]["reason"],
                    r["predicted"]["cache_read"],
                    r["predicted"]["cache_write"],
                    r["predicted"]["input"],
                    r["usage"]["cache_read"],
                )
                for r in results
            ]
            assert got == expected
            assert [g[0] for g in got] == [
                "cold",
                "hit",
                "system_changed",
                "hit",
                "tools_changed",
                "hit",
            ]
            assert len({r["pid"] for r in results}) == 2
            assert PLANTED not in json.dumps(results)

            # Two requests on one conversation at once, one per process: both are served,
            # one after the other, and both turns are kept.
            def post(url: str, text: str, out: list[int]) -> None:
                out.append(
                    httpx.post(f"{url}/chat/pair", json={"text": text}, timeout=60).status_code
                )

            statuses: list[int] = []
            threads = [
                threading.Thread(target=post, args=(url, f"at once {i}", statuses))
                for i, url in enumerate(urls)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert statuses == [200, 200]
        state = SQLiteStore(tmp_path / "conversations.sqlite3").load("pair")
        assert state is not None
        texts = sorted(m["content"][0]["text"] for m in state.messages if m["role"] == "user")
        assert texts == ["at once 0", "at once 1"]

    @pytest.mark.slow
    def test_demo(self) -> None:
        """The demo, run as a script, prints each turn's reason and the totals."""
        out = run_example("web_chatbot.py")
        assert "system_changed  predicted system_changed" in out
        assert "tools_changed   predicted tools_changed" in out
        assert "hit rate:" in out

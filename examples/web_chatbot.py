"""A stateless web chatbot: every request restores its conversation from a store.

``POST /chat/{conversation_id}`` with ``{"text": "..."}`` builds a fresh ``AsyncSession``
from the stored conversation (``convo.store``), sends the turn, saves the conversation back
and answers with the reply, its cache reason (predicted before the call) and its cost. Any
number of server processes can serve one conversation: what each needs to name a bust
(``system_changed`` after the system prompt file was edited, ``tools_changed`` after the
tool list was reordered) travels with the conversation. Two requests on one conversation
at once are served one after the other (the store's lease); one that waits too long gets
409.

The system prompt and tools are read from ``$CONVO_PROMPTS/system.txt`` and ``tools.json``
on every request, the way a deploy changes them. The store is ``$CONVO_STORE`` (a path or a
``redis://`` / ``postgresql://`` URL; default: convo's SQLite file). The API is the SDK's
usual ``ANTHROPIC_API_KEY`` / ``ANTHROPIC_BASE_URL``.

    uvicorn web_chatbot:app --port 8000       # serve it (from this folder)
    python examples/web_chatbot.py            # demo: an emulator, two server processes,
                                              # a conversation driven over HTTP
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import convo
from convo.store import ConversationBusy, open_store

# The emulator accepts any key; a key in the environment is used as it would be for real
# (and never printed).
EMULATOR_KEY = os.environ.get("ANTHROPIC_API_KEY") or "sk-ant-example"

MODEL = "claude-sonnet-4-6"


def load_prefix(directory: Path) -> convo.Prefix:
    """The static prefix as deployed now: ``system.txt`` and (if present) ``tools.json``."""
    tools_file = directory / "tools.json"
    tools = json.loads(tools_file.read_text()) if tools_file.exists() else []
    return convo.Prefix(model=MODEL, system=[(directory / "system.txt").read_text()], tools=tools)


def _result(reply: convo.Reply) -> dict[str, Any]:
    p = reply.cache.predicted
    return {
        "text": reply.text,
        "reason": reply.reason,
        "predicted": {
            "reason": p.reason,
            "cache_read": p.cache_read,
            "cache_write": p.cache_write,
            "input": p.input,
        },
        "usage": {
            "cache_read": reply.usage.cache_read,
            "cache_write": reply.usage.cache_write,
            "input": reply.usage.input,
            "output": reply.usage.output,
        },
        "cost_usd": None if reply.cost.usd is None else str(reply.cost.usd),
        "pid": os.getpid(),
    }


async def chat(request: Request) -> JSONResponse:
    conversation_id = request.path_params["conversation_id"]
    body = await request.json()
    state = request.app.state
    try:
        async with state.store.async_session(
            conversation_id,
            load_prefix(state.prompts),
            client=state.client,
            ledger=False,
            timeout=state.lock_timeout,
        ) as session:
            reply = await session.send(str(body["text"]))
    except ConversationBusy:
        return JSONResponse({"error": "conversation busy, retry"}, status_code=409)
    return JSONResponse(_result(reply))


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.prompts = Path(os.environ.get("CONVO_PROMPTS", "prompts"))
    app.state.store = open_store(os.environ.get("CONVO_STORE") or None)
    app.state.lock_timeout = float(os.environ.get("CONVO_LOCK_TIMEOUT", "30"))
    async with anthropic.AsyncAnthropic() as client:
        app.state.client = client
        yield
    app.state.store.close()


app = Starlette(
    routes=[Route("/chat/{conversation_id}", chat, methods=["POST"])], lifespan=lifespan
)


# -- the demo ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def backends(count: int, env: dict[str, str]) -> Iterator[list[str]]:
    """*count* server processes of this app (uvicorn), each on its own port; yields their
    base URLs once every one answers."""
    here = Path(__file__).resolve().parent
    root = str(here.parent)
    full = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([root, str(here)])}
    ports = [_free_port() for _ in range(count)]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "web_chatbot:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=here,
            env=full,
        )
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        deadline = time.monotonic() + 60
        for url in urls:
            while True:
                try:
                    httpx.post(f"{url}/chat/", timeout=1)  # any answer: the server is up
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{url} did not start") from None
                    time.sleep(0.1)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)


SYSTEM = "You are the support assistant of a small bookshop. Be brief and kind. " * 150
TOOLS = [
    {
        "name": "find_book",
        "description": "Find a book by title.",
        "input_schema": {"type": "object", "properties": {"title": {"type": "string"}}},
    },
    {
        "name": "order_status",
        "description": "Look an order up.",
        "input_schema": {"type": "object", "properties": {"order": {"type": "string"}}},
    },
]


def write_prompts(directory: Path, *, edited: bool = False, reordered: bool = False) -> None:
    """Deploy a prompt: the system text (with a date line when *edited*) and the tools."""
    system = SYSTEM + (" Today is 2026-11-30." if edited else "")
    (directory / "system.txt").write_text(system)
    (directory / "tools.json").write_text(json.dumps(TOOLS[::-1] if reordered else TOOLS))


#: The demo conversation: (deploy before the turn, user text).
SCRIPT = [
    ({}, "Do you have Middlemarch?"),
    ({}, "In paperback?"),
    ({"edited": True}, "And my order 1234?"),
    ({"edited": True}, "Thanks. When will it ship?"),
    ({"edited": True, "reordered": True}, "Can I change the address?"),
    ({"edited": True, "reordered": True}, "Great, bye."),
]


def drive(urls: list[str], prompts: Path, conversation_id: str = "demo") -> list[dict[str, Any]]:
    """Play :data:`SCRIPT` over HTTP, alternating between the servers."""
    results = []
    with httpx.Client(timeout=60) as http:
        for i, (deploy, text) in enumerate(SCRIPT):
            write_prompts(prompts, **deploy)
            response = http.post(
                f"{urls[i % len(urls)]}/chat/{conversation_id}", json={"text": text}
            )
            response.raise_for_status()
            results.append(response.json())
    return results


def summary(results: list[dict[str, Any]]) -> str:
    lines = [
        f"turn {i + 1} (pid {r['pid']}): {r['reason']:<15} predicted {r['predicted']['reason']:<15}"
        f" read {r['usage']['cache_read']:>5}  wrote {r['usage']['cache_write']:>5}"
        for i, r in enumerate(results)
    ]
    read = sum(r["usage"]["cache_read"] for r in results)
    total = sum(
        r["usage"]["cache_read"] + r["usage"]["cache_write"] + r["usage"]["input"] for r in results
    )
    cost = sum((Decimal(r["cost_usd"] or 0) for r in results), Decimal(0))
    writes = sum(1 for r in results if r["usage"]["cache_write"])
    reads = sum(1 for r in results if r["usage"]["cache_read"])
    lines.append(
        f"cache writes: {writes}, cache reads: {reads}, hit rate: {read / total:.1%}"
        f" of input tokens, cost: ${cost:.4f}"
    )
    return "\n".join(lines)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, convo.emulator.serve() as running:
        prompts = Path(tmp)
        write_prompts(prompts)
        env = {
            "ANTHROPIC_BASE_URL": running.base_url,
            "ANTHROPIC_API_KEY": EMULATOR_KEY,
            "CONVO_PROMPTS": str(prompts),
            "CONVO_STORE": str(prompts / "conversations.sqlite3"),
        }
        with backends(2, env) as urls:
            print(summary(drive(urls, prompts)))


if __name__ == "__main__":
    main()

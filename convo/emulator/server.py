"""Running the emulator: in-process on a background thread, or as a foreground server."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import uvicorn

from convo.emulator.app import DroppedStream, create_app
from convo.emulator.clock import Clock
from convo.emulator.config import EmulatorConfig
from convo.emulator.core import Emulator

__all__ = ["EmulatorProcess", "RunningEmulator", "run", "serve", "serve_process"]


class _QuietDroppedResponses(logging.Filter):
    """Hide uvicorn's complaints about the responses the ``drop`` and ``stream_drop`` faults
    leave unfinished on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], DroppedStream):
            return False
        return "without completing response" not in record.getMessage()


logging.getLogger("uvicorn.error").addFilter(_QuietDroppedResponses())


class RunningEmulator:
    """An emulator being served; what :func:`serve` yields.

    Attributes:
        base_url: Where to point ``anthropic.Anthropic(base_url=...)``.
        emulator: The emulator's state, for direct inspection in tests.
    """

    def __init__(self, base_url: str, emulator: Emulator) -> None:
        self.base_url = base_url
        self.emulator = emulator

    def stats(self) -> dict[str, Any]:
        """Return ``GET /_emulator/stats``, read over HTTP as any client would."""
        with urllib.request.urlopen(f"{self.base_url}/_emulator/stats", timeout=10) as response:
            result: dict[str, Any] = json.load(response)
            return result

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock forward by *seconds*."""
        self.emulator.advance(seconds)

    def configure(self, config: EmulatorConfig | dict[str, Any]) -> None:
        """Replace the config (a value, or its JSON shape)."""
        if not isinstance(config, EmulatorConfig):
            config = EmulatorConfig.from_dict(config)
        self.emulator.configure(config)

    def reset(self, *, config: bool = False) -> None:
        """Forget cache, counters, buckets and clock advances; with ``config``, the config too."""
        self.emulator.reset(config=config)


def _server(emulator: Emulator, sock: socket.socket) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(emulator),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
    )
    # uvicorn installs no signal handlers off the main thread, so a background server is safe.
    return uvicorn.Server(config)


@contextlib.contextmanager
def serve(
    config: EmulatorConfig | None = None,
    *,
    clock: Clock | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[RunningEmulator]:
    """Serve an emulator on a background thread for the duration of a ``with`` block.

    Port 0 (the default) picks a free ephemeral port on loopback.

    Example::

        with convo.emulator.serve() as emu:
            client = anthropic.Anthropic(base_url=emu.base_url, api_key="test")
    """
    emulator = Emulator(config, clock=clock)
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only when
    # the listening socket says so, and without it every response waits ~40 ms on Nagle.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    bound_port = sock.getsockname()[1]
    server = _server(emulator, sock)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="convo-emulator", daemon=True
    )
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the emulator server stopped before it started")
            threading.Event().wait(0.01)
        shown = f"[{host}]" if ":" in host else host
        yield RunningEmulator(f"http://{shown}:{bound_port}", emulator)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class EmulatorProcess:
    """An emulator served by another process; what :func:`serve_process` yields.

    Attributes:
        base_url: Where to point ``anthropic.Anthropic(base_url=...)``.
        process: The ``convo emulator serve`` process (its ``pid`` for CPU accounting).
    """

    def __init__(self, base_url: str, process: subprocess.Popen[bytes]) -> None:
        self.base_url = base_url
        self.process = process


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serve_process(
    *args: str, host: str = "127.0.0.1", port: int | None = None, start_timeout: float = 30.0
) -> Iterator[EmulatorProcess]:
    """Run ``convo emulator serve`` in a child process until the ``with`` block ends.

    Measuring throughput needs the server off the caller's interpreter; so does a test of
    the command itself. *args* are extra ``serve`` options (``"--config", "f.toml"``).

    Raises:
        RuntimeError: if the server exits, or does not answer within *start_timeout* seconds,
            with what it wrote to stderr.
    """
    port = port or _free_port(host)
    command = [
        sys.executable,
        "-m",
        "convo",
        "emulator",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        "warning",
        *args,
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                socket.create_connection((host, port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    stderr = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"convo emulator serve did not start: {stderr}") from None
                time.sleep(0.05)
        yield EmulatorProcess(f"http://{host}:{port}", process)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()


def run(
    config: EmulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    log_level: str = "info",
) -> None:
    """Serve an emulator in the foreground until interrupted (``convo emulator serve``)."""
    uvicorn.run(
        create_app(Emulator(config)),
        host=host,
        port=port,
        log_level=log_level,
        access_log=log_level == "debug",
        lifespan="off",
    )

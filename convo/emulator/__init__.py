"""An emulator of Anthropic's Messages API that the real ``anthropic`` SDK talks to.

It reproduces prompt caching (breakpoints, the 20-position lookback, minimums, TTLs,
the 5m/1h usage split, cache diagnostics), rate limits with their headers, and injected
faults, so cache behaviour, retries and limits can be tested offline. See
``docs/emulator.md``.

The names below are loaded on first use (PEP 562): ``import convo`` must not pay for
Starlette and uvicorn (seconds on a cold start), nor have the server module install its
log filter on ``uvicorn.error`` in applications that never serve an emulator.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from convo.emulator.app import create_app
    from convo.emulator.cache import LOOKBACK
    from convo.emulator.clock import Clock, OffsetClock, VirtualClock
    from convo.emulator.config import (
        FAULT_KINDS,
        EmulatorConfig,
        Fault,
        FaultConfig,
        LatencyModel,
        Limits,
        load_config,
    )
    from convo.emulator.core import DIAGNOSTICS_BETA, Emulator
    from convo.emulator.prompt import MAX_BREAKPOINTS
    from convo.emulator.server import (
        EmulatorProcess,
        RunningEmulator,
        run,
        serve,
        serve_process,
    )

# Public name -> the submodule that defines it.
_HOMES = {
    "DIAGNOSTICS_BETA": "core",
    "FAULT_KINDS": "config",
    "LOOKBACK": "cache",
    "MAX_BREAKPOINTS": "prompt",
    "Clock": "clock",
    "Emulator": "core",
    "EmulatorConfig": "config",
    "EmulatorProcess": "server",
    "Fault": "config",
    "FaultConfig": "config",
    "LatencyModel": "config",
    "Limits": "config",
    "OffsetClock": "clock",
    "RunningEmulator": "server",
    "VirtualClock": "clock",
    "create_app": "app",
    "load_config": "config",
    "run": "server",
    "serve": "server",
    "serve_process": "server",
}

__all__ = [
    "DIAGNOSTICS_BETA",
    "FAULT_KINDS",
    "LOOKBACK",
    "MAX_BREAKPOINTS",
    "Clock",
    "Emulator",
    "EmulatorConfig",
    "EmulatorProcess",
    "Fault",
    "FaultConfig",
    "LatencyModel",
    "Limits",
    "OffsetClock",
    "RunningEmulator",
    "VirtualClock",
    "create_app",
    "load_config",
    "run",
    "serve",
    "serve_process",
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines *name* on first use, and keep the name here."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

"""An emulator of Anthropic's Messages API that the real ``anthropic`` SDK talks to.

It reproduces prompt caching (breakpoints, the 20-position lookback, minimums, TTLs,
the 5m/1h usage split, cache diagnostics), rate limits with their headers, and injected
faults, so cache behaviour, retries and limits can be tested offline. See
``docs/emulator.md``.
"""

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
from convo.emulator.server import EmulatorProcess, RunningEmulator, run, serve, serve_process

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

"""Shared fixtures: one in-process emulator per test session, reset before every test."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import NoReturn

import anthropic
import pytest

from convo import wire
from convo.emulator import RunningEmulator, serve

API_KEY = "sk-ant-test-key"

# Anything that falls back to convo's default ledger writes to a throwaway folder, never to
# the user's data directory.
os.environ["CONVO_HOME"] = tempfile.mkdtemp(prefix="convo-tests-")
# Every request a session sends is checked against the body the SDK itself would build
# (convo.wire's debug check; see docs/wire.md).
os.environ.setdefault("CONVO_CHECK_WIRE", "1")
wire.set_check(os.environ["CONVO_CHECK_WIRE"] not in ("", "0"))


def service_missing(reason: str) -> NoReturn:
    """Skip a test whose local service is absent on a developer's machine, but fail it in CI
    (where .ci/run provides Redis and the machine provides PostgreSQL): a skip there would
    hide a gap."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must provide it")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def _emulator_server() -> Iterator[RunningEmulator]:
    with serve() as running:
        yield running


@pytest.fixture
def emulator(_emulator_server: RunningEmulator) -> RunningEmulator:
    """The in-process emulator, with its cache, counters, buckets, clock and config reset."""
    _emulator_server.reset(config=True)
    return _emulator_server


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[anthropic.Anthropic]:
    """The real sync SDK client on the emulator, with the SDK's own retries off."""
    with anthropic.Anthropic(base_url=emulator.base_url, api_key=API_KEY, max_retries=0) as c:
        yield c


@pytest.fixture
async def async_client(emulator: RunningEmulator) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The real async SDK client on the emulator, with the SDK's own retries off."""
    async with anthropic.AsyncAnthropic(
        base_url=emulator.base_url, api_key=API_KEY, max_retries=0
    ) as c:
        yield c

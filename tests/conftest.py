"""Shared fixtures: one in-process emulator per test session, reset before every test."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import NoReturn

import anthropic
import pytest

from convo import wire
from convo.emulator import RunningEmulator

#: The key convo.testing's fixtures send (convo.testing.TEST_API_KEY; not imported here, so
#: pytest can still rewrite the plugin's asserts when it loads it).
API_KEY = "sk-ant-convo-testing"

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


# The emulator and SDK clients come from convo.testing, the fixtures users get too; the
# suite knows them by shorter names.
pytest_plugins = ["convo.testing"]


@pytest.fixture
def emulator(convo_emulator: RunningEmulator) -> RunningEmulator:
    """The in-process emulator, with its cache, counters, buckets, clock and config reset."""
    return convo_emulator


@pytest.fixture
def client(convo_client: anthropic.Anthropic) -> anthropic.Anthropic:
    """The real sync SDK client on the emulator, with the SDK's own retries off."""
    return convo_client


@pytest.fixture
def async_client(convo_async_client: anthropic.AsyncAnthropic) -> anthropic.AsyncAnthropic:
    """The real async SDK client on the emulator, with the SDK's own retries off."""
    return convo_async_client


PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL on a fresh schema of its own, dropped after the test."""
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=2).close()
    except Exception:
        service_missing("no PostgreSQL server at 127.0.0.1:5432")
    schema = f"convo_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

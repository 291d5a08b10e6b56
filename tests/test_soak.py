"""A reduced fault soak (the full one is benchmarks/soak.py): the ledger matches the bill."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from convo.emulator import FAULT_KINDS


def _soak_module() -> Any:
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("convo_soak", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestSoak:
    """64 AsyncSessions under ~20% faults of every kind the emulator injects."""

    @pytest.mark.slow
    @pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
    async def test_the_ledger_equals_the_bill_token_for_token(
        self, backend: str, request: pytest.FixtureRequest
    ) -> None:
        """No exception outside ConvoError, no hang, rows = attempts, every kind equal."""
        url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
        result = await _soak_module().run_soak(
            sessions=64, turns=8, fault_rate=0.26, seed=11, ledger_url=url, timeout_s=120
        )
        assert result["ledger_rows"] == result["attempts_answered"]
        assert result["recorded"] == result["billed"]
        assert result["fault_share"] >= 0.15
        assert set(result["faults"]) == set(FAULT_KINDS)
        assert set(result["outcomes"]) <= {
            "ok",
            "RetriesExhausted",
            "SpendCapReached",
            "StreamInterrupted",
        }

"""Bad input gets a clear error before anything is sent (and nothing reaches the server)."""

from __future__ import annotations

import anthropic
import pytest

import convo
from convo.emulator import RunningEmulator

SYSTEM = "You answer questions about the travel plan, briefly and exactly. " * 120


def prefix(model: str = "claude-sonnet-4-6", **options: object) -> convo.Prefix:
    return convo.Prefix(model=model, system=[SYSTEM], **options)  # type: ignore[arg-type]


class TestConstruction:
    """Misuse fails when the session is built, saying what to pass instead."""

    def test_a_model_name_instead_of_a_prefix(self, client: anthropic.Anthropic) -> None:
        """``Session("model-name")`` says to build a Prefix."""
        with pytest.raises(TypeError, match=r"convo\.Prefix\(model="):
            convo.Session("claude-sonnet-4-6", client=client)  # type: ignore[arg-type]

    def test_a_number_as_budget(self, client: anthropic.Anthropic) -> None:
        """``Session(budget=1.0)`` says to pass a Budget."""
        with pytest.raises(TypeError, match=r"convo\.Budget\(max_cost_usd="):
            convo.Session(prefix(), client=client, budget=1.0, ledger=False)  # type: ignore[arg-type]

    @pytest.mark.parametrize("value", ["-1", "nan", "inf", "lots"])
    def test_a_keep_alive_cap_that_is_no_amount(self, value: str) -> None:
        """A negative, non-finite or non-numeric keep-alive cap is refused."""
        with pytest.raises(ValueError, match="finite, non-negative"):
            convo.KeepAlive(max_cost_usd=value)

    def test_a_model_added_through_overrides_builds_a_session(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """A model the user added with ``models.with_overrides`` works end to end."""
        table = convo.models.with_overrides(
            {
                "claude-sonnet-4-6-custom": {
                    "display_name": "Custom",
                    "min_cacheable_tokens": 1024,
                    "rate_limit_class": "sonnet-4",
                }
            }
        )
        custom = convo.Prefix(model="claude-sonnet-4-6-custom", system=[SYSTEM], models=table)
        session = convo.Session(custom, client=client, ledger=False)
        assert session.prefix.model == "claude-sonnet-4-6-custom"


class TestRequestsRefusedBeforeSending:
    """What the API would refuse is refused by the session, and the server sees nothing."""

    @pytest.mark.parametrize(
        ("content", "max_tokens", "match"),
        [
            pytest.param("x " * 17_000_000, None, "32 MB", id="body-over-32MB"),
            pytest.param("word " * 1_100_000, None, "prompt is too long", id="over-context"),
            pytest.param([{"type": "bogus"}], None, "bogus", id="unknown-block-type"),
            pytest.param("hi", 200_000, "maximum allowed number of output", id="max-tokens"),
        ],
    )
    def test_refused_with_nothing_sent(
        self,
        emulator: RunningEmulator,
        client: anthropic.Anthropic,
        content: object,
        max_tokens: int | None,
        match: str,
    ) -> None:
        """A clear error (a ValueError), no request, and the history as before."""
        session = convo.Session(prefix(), client=client, ledger=False)
        with pytest.raises(convo.RequestRejected, match=match):
            session.send(content, max_tokens=max_tokens)  # type: ignore[arg-type]
        assert emulator.stats()["requests"]["total"] == 0
        assert session.history == []

    def test_a_large_valid_max_tokens_is_streamed_internally(
        self, emulator: RunningEmulator, client: anthropic.Anthropic
    ) -> None:
        """32,000 on Sonnet 4.6 is allowed; the SDK refuses it without streaming, so
        ``send`` streams it and returns the reply as usual."""
        session = convo.Session(prefix(), client=client, ledger=False)
        reply = session.send("Plan the trip", max_tokens=32_000)
        assert reply.text
        assert reply.usage.output > 0
        assert len(session.history) == 2

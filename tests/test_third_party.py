"""A third-party client on the emulator: langchain-anthropic's usage equals the emulator's.

langchain-anthropic documents its convention (``_create_usage_metadata``, and LangChain's
``UsageMetadata``): ``input_tokens`` is the *total* input, Anthropic's ``input_tokens`` plus
cache reads plus cache writes; ``input_token_details`` carries ``cache_read`` and the
writes (``ephemeral_5m_input_tokens`` / ``ephemeral_1h_input_tokens`` when the split is
known, else ``cache_creation``); ``output_tokens`` is the output. Streamed chunks are
added together, so a stream must carry one ``message_delta`` (as the API sends) for the
sum to be right.
"""

from __future__ import annotations

from typing import Any

import pytest

from convo import tokens
from convo.emulator import RunningEmulator

langchain_anthropic = pytest.importorskip("langchain_anthropic")
messages_module = pytest.importorskip("langchain_core.messages")

MODEL = "claude-sonnet-4-6"
KINDS = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output")


def words(n: int) -> str:
    text = " ".join(f"w{'abcd'[i % 4]}" for i in range(n))
    assert tokens.estimate(text) == n
    return text


def billed(emulator: RunningEmulator) -> dict[str, int]:
    counted = emulator.stats()["tokens"]
    return {kind: int(counted[kind]) for kind in KINDS}


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {kind: after[kind] - before[kind] for kind in KINDS}


def langchain_view(usage: dict[str, Any]) -> dict[str, int]:
    """The emulator's five kinds, read from LangChain usage by its documented convention."""
    details = usage.get("input_token_details", {})
    writes_5m = details.get("ephemeral_5m_input_tokens")
    writes_1h = details.get("ephemeral_1h_input_tokens") or 0
    if writes_5m is None:  # no TTL split (streamed message_delta): writes are all 5m here
        writes_5m = details.get("cache_creation", 0)
    read = details.get("cache_read", 0)
    return {
        "input": usage["input_tokens"] - read - writes_5m - writes_1h,
        "cache_read": read,
        "cache_write_5m": writes_5m,
        "cache_write_1h": writes_1h,
        "output": usage["output_tokens"],
    }


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streaming"])
def test_three_turns_match_the_emulator(emulator: RunningEmulator, streaming: bool) -> None:
    """Three turns over a cached 1,500-token system prompt: each turn's LangChain usage
    equals what the emulator billed for it, kind by kind (turn 1 writes 1,500, turns 2 and
    3 read it), and total input is inclusive."""
    model = langchain_anthropic.ChatAnthropic(
        model=MODEL,
        anthropic_api_url=emulator.base_url,
        anthropic_api_key="sk-ant-test-key",
        max_retries=0,
        max_tokens=64,
        streaming=streaming,
        stream_usage=True,
    )
    system = messages_module.SystemMessage(
        content=[{"type": "text", "text": words(1500), "cache_control": {"type": "ephemeral"}}]
    )
    history: list[Any] = [system]
    seen = []
    for question in ("first question", "second question", "third question"):
        history.append(messages_module.HumanMessage(content=question))
        before = billed(emulator)
        if streaming:
            reply = None
            for chunk in model.stream(history):
                reply = chunk if reply is None else reply + chunk
        else:
            reply = model.invoke(history)
        assert reply is not None
        server = difference(billed(emulator), before)
        usage = dict(reply.usage_metadata)
        assert langchain_view(usage) == server
        assert usage["input_tokens"] == sum(server[k] for k in KINDS[:4])
        assert usage["total_tokens"] == usage["input_tokens"] + server["output"]
        seen.append(server)
        history.append(messages_module.AIMessage(content=reply.content))
    assert [s["cache_write_5m"] for s in seen] == [1500, 0, 0]
    assert [s["cache_read"] for s in seen] == [0, 1500, 1500]
    assert all(s["output"] == 24 for s in seen)

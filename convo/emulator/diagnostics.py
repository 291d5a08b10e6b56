"""Cache diagnostics: why a request's prefix diverged from an earlier response's.

With the beta header and ``diagnostics: {"previous_message_id": ...}`` the emulator
compares the request with what it remembers of that earlier request and answers
``diagnostics.cache_miss_reason``. The earliest divergence wins: the model, then the tools,
then the system (server tools included), then other settings (``unavailable``), then the
messages. ``cache_missed_input_tokens`` is what the earlier request had cached beyond the
prefix the two still share.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import attrs

from convo.emulator.cache import CacheDecision
from convo.emulator.errors import invalid
from convo.emulator.prompt import Prompt

__all__ = ["DIAGNOSTICS_BETA", "NOT_ASKED", "Diagnostics"]

#: The beta header value that turns on cache diagnostics.
DIAGNOSTICS_BETA = "cache-diagnosis-2026-04-07"

#: What :meth:`Diagnostics.requested` returns when the request did not ask.
NOT_ASKED: Any = ...

_LEVEL_ORDER = {"tools": 0, "server_tools": 1, "system": 1, "messages": 2}
_REMEMBERED = 10_000  # answered requests kept for comparison (oldest forgotten first)


@attrs.frozen
class _Summary:
    """What diagnostics needs to remember about an answered request."""

    workspace: str
    model: str
    keys: tuple[bytes, ...]
    levels: tuple[str, ...]
    cumulative_tokens: tuple[int, ...]
    settings_key: bytes
    reach: int


def _miss(kind: str, missed: int) -> dict[str, Any]:
    return {"cache_miss_reason": {"type": kind, "cache_missed_input_tokens": missed}}


class Diagnostics:
    """Remembers answered requests and explains divergences from them (caller holds the lock)."""

    def __init__(self) -> None:
        self._summaries: OrderedDict[str, _Summary] = OrderedDict()

    def clear(self) -> None:
        """Forget every answered request."""
        self._summaries.clear()

    @staticmethod
    def requested(headers: Mapping[str, str], body: Mapping[str, Any]) -> Any:
        """Return the previous message id asked about, ``None``, or :data:`NOT_ASKED`.

        Raises:
            APIError: 400 without the beta header, or with a malformed ``diagnostics``.
        """
        if "diagnostics" not in body or body["diagnostics"] is None:
            return NOT_ASKED
        betas = {b.strip() for b in headers.get("anthropic-beta", "").split(",")}
        if DIAGNOSTICS_BETA not in betas:
            raise invalid(f"diagnostics: requires the anthropic-beta header {DIAGNOSTICS_BETA}")
        diagnostics = body["diagnostics"]
        if not isinstance(diagnostics, Mapping) or "previous_message_id" not in diagnostics:
            raise invalid("diagnostics.previous_message_id: Field required (a message id or null)")
        previous = diagnostics["previous_message_id"]
        if previous is not None and not isinstance(previous, str):
            raise invalid("diagnostics.previous_message_id: Input should be a string or null")
        return previous

    def remember(
        self, message_id: str, workspace: str, prompt: Prompt, decision: CacheDecision
    ) -> None:
        """Keep what a later request may be compared with."""
        self._summaries[message_id] = _Summary(
            workspace=workspace,
            model=prompt.model.id,
            keys=prompt.keys,
            levels=prompt.levels,
            cumulative_tokens=prompt.cumulative_tokens,
            settings_key=prompt.settings_key,
            reach=decision.reach,
        )
        while len(self._summaries) > _REMEMBERED:
            self._summaries.popitem(last=False)

    def diagnose(
        self, workspace: str, prompt: Prompt, previous_id: str | None
    ) -> dict[str, Any] | None:
        """Return the response's ``diagnostics`` value for *prompt* against *previous_id*."""
        if previous_id is None:
            return None  # the first turn of a conversation: nothing to compare with
        previous = self._summaries.get(previous_id)
        if previous is None or previous.workspace != workspace:
            return {"cache_miss_reason": {"type": "previous_message_not_found"}}
        if previous.model != prompt.model.id:
            return _miss("model_changed", previous.reach)
        common = 0
        for old, new in zip(previous.keys, prompt.keys, strict=False):
            if old != new:
                break
            common += 1
        if common == len(previous.keys):
            return None  # only appended to: no divergence
        level = previous.levels[common]
        if common < len(prompt.levels):
            level = min(level, prompt.levels[common], key=_LEVEL_ORDER.__getitem__)
        missed = max(0, previous.reach - (previous.cumulative_tokens[common - 1] if common else 0))
        if level == "tools":
            return _miss("tools_changed", missed)
        if level in ("server_tools", "system"):
            return _miss("system_changed", missed)
        if previous.settings_key != prompt.settings_key:
            return {"cache_miss_reason": {"type": "unavailable"}}
        return _miss("messages_changed", missed)

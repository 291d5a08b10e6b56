"""What a conversation is between two requests, and how it leaves and re-enters a session.

A :class:`ConversationState` holds everything a fresh :class:`~convo.Session` needs to
predict and name busts exactly as one long-lived session would:

- the history, verbatim (what was sent and answered);
- the tracker's beliefs: every cache entry, the previous request's outcome (its
  fingerprint is what names ``system_changed`` or ``tools_changed`` on the next turn),
  the calibration of its token estimate, and whatever else the tracker keeps;
- the last message id (for the server's ``diagnostics.previous_message_id``);
- the TTL observations (the gaps between turns, which drive ``adaptive_ttl``), the turn
  count, the last use (keep-alive), and the session's running :class:`~convo.Stats`.

It is JSON: history as the plain message dicts, the tracker's values in a small tagged
encoding (bytes as hex, attrs classes by name from an allow-list, never pickle), so a
stored conversation can be read by any process of any version that knows these names.

No API key is in it: the session's workspace (where the key lives) is never captured.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import attrs

from convo.fingerprint import Fingerprint, Segments
from convo.routing import RouteState
from convo.session import routed
from convo.session.reply import Stats
from convo.tracker import CacheEntry, CacheOutcome, CacheTracker, Prediction
from convo.tracker.values import Point
from convo.usage import ServerToolUse, Usage

__all__ = ["FORMAT", "ConversationState", "capture", "restore"]

#: The version of the stored form; a reader refuses a newer one.
FORMAT = 1

# The attrs classes the tracker's state may hold, by name. Decoding only ever builds these.
_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        CacheEntry,
        CacheOutcome,
        Prediction,
        Point,
        Fingerprint,
        Segments,
        Stats,
        Usage,
        ServerToolUse,
    )
}

# The tracker's attributes that make up its beliefs. Read through getattr so that a
# tracker without one of them (an older or newer CacheTracker) still round-trips the rest.
# Reaching into private state is the trade-off of shipping before CacheTracker has a public
# snapshot()/restore() pair; this list is the one place to change when it does.
_TRACKER_FIELDS = ("_entries", "_seen_models", "_calibration", "_last", "_reads", "_positions")


def _enc(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$f": repr(value)}
    if isinstance(value, bytes):
        return {"$b": value.hex()}
    if isinstance(value, Decimal):
        return {"$d": str(value)}
    if attrs.has(type(value)):
        kind: Any = type(value)
        name = kind.__name__
        fields: Any = attrs.fields(kind)
        if _TYPES.get(name) is not kind:
            raise TypeError(f"cannot store a {name} in a conversation state")
        return {
            "$t": name,
            "v": {f.alias: _enc(getattr(value, f.name)) for f in fields if f.init},
        }
    if isinstance(value, Mapping):
        return {"$m": [[_enc(k), _enc(v)] for k, v in value.items()]}
    if isinstance(value, set | frozenset):
        return {"$s": [_enc(v) for v in value]}
    if isinstance(value, Sequence):
        return [_enc(v) for v in value]
    raise TypeError(f"cannot store a {type(value).__name__} in a conversation state")


def _dec(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_dec(v) for v in value)
    if not isinstance(value, dict):
        return value
    if "$b" in value:
        return bytes.fromhex(value["$b"])
    if "$f" in value:
        return float(value["$f"])
    if "$d" in value:
        return Decimal(value["$d"])
    if "$m" in value:
        return {_dec(k): _dec(v) for k, v in value["$m"]}
    if "$s" in value:
        return {_dec(v) for v in value["$s"]}
    if "$t" in value:
        cls = _TYPES.get(value["$t"])
        if cls is None:
            raise ValueError(f"unknown type {value['$t']!r} in a stored conversation")
        return cls(**{k: _dec(v) for k, v in value["v"].items()})
    raise ValueError(f"unreadable value in a stored conversation: {value!r:.80}")


@attrs.frozen
class ConversationState:
    """One conversation's state between requests (see the module doc).

    Attributes:
        conversation_id: The conversation's id.
        session_id: The session id its ledger rows carry (kept across requests).
        messages: The history, oldest first, as sent and answered.
        last_message_id: The id of the newest answer (for server diagnostics).
        gaps: Seconds between the starts of recent turns (the TTL policy's observations).
        last_turn_start: When the newest turn started, on the session's clock.
        turns: Turns answered so far.
        last_used: When the conversation was last used (keep-alive reads it).
        prefix_ttl: The prefix TTL in force (``adaptive_ttl`` may have switched it).
        prefix_fingerprint: The static prefix's fingerprint when saved (for diagnosis).
        tracker: The tracker's beliefs, encoded.
        extra: The rest of the session's running state, encoded (stats, keep-alive spend).

    .. versionadded:: 0.2
    """

    conversation_id: str
    session_id: str
    messages: tuple[dict[str, Any], ...]
    last_message_id: str | None
    gaps: tuple[float, ...]
    last_turn_start: float | None
    turns: int
    last_used: float | None
    prefix_ttl: str
    prefix_fingerprint: str
    tracker: dict[str, Any]
    extra: dict[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> str:
        """The stored form (JSON text)."""
        data = attrs.asdict(self, recurse=False)
        data["messages"] = list(self.messages)
        data["gaps"] = list(self.gaps)
        return json.dumps({"format": FORMAT, **data}, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ConversationState:
        """Read the stored form back.

        Raises:
            ValueError: the text is not a stored conversation, or of a newer format.
        """
        data = json.loads(text)
        version = data.pop("format", None)
        if version != FORMAT:
            raise ValueError(
                f"stored conversation has format {version!r}; this convo reads {FORMAT}"
            )
        data["messages"] = tuple(data["messages"])
        data["gaps"] = tuple(data["gaps"])
        return cls(**data)


_ROUTE_FIELDS = {a.name for a in attrs.fields(RouteState)}


def _encode_tracker(tracker: CacheTracker) -> dict[str, Any]:
    return {
        name: _enc(getattr(tracker, name)) for name in _TRACKER_FIELDS if hasattr(tracker, name)
    }


def _decode_tracker(tracker: CacheTracker, data: Mapping[str, Any]) -> None:
    for name, raw in data.items():
        if name not in _TRACKER_FIELDS or not hasattr(tracker, name):
            continue  # a field this tracker does not keep: nothing to restore it into
        value = _dec(raw)
        current = getattr(tracker, name)
        if name == "_entries":
            value = {(e.model, e.key): e for e in value.values()}
        elif isinstance(current, list):
            value = list(value)
        elif isinstance(current, set):
            value = set(value)
        setattr(tracker, name, value)


def capture(session: Any) -> ConversationState:
    """The state of *session* (a :class:`~convo.Session` or :class:`~convo.AsyncSession`)."""
    # The session core's running state is private to convo.session; reading it here (and
    # writing it in restore) is the trade-off of not changing the session to save it.
    core = session._core
    return ConversationState(
        conversation_id=core.conversation_id,
        session_id=core.session_id,
        messages=tuple(core.history.stored),
        last_message_id=core._last_message_id,
        gaps=tuple(core._gaps),
        last_turn_start=core._last_turn_start,
        turns=core.turns,
        last_used=core.last_used,
        prefix_ttl=core.prefix.ttl,
        prefix_fingerprint=core.prefix.fingerprint,
        tracker=_encode_tracker(core.tracker),
        extra={
            "stats": _enc(core.stats),
            "keep_alive_spent": str(core.keep_alive_spent),
            "prefix_known_until": _enc(core._prefix_known_until),
            # A routed conversation (convo.Router) goes on from the model it is on, with
            # what its turns have shown the router.
            "model": core.prefix.model,
            "route_state": attrs.asdict(core.route_state),
        },
    )


def restore(session: Any, state: ConversationState) -> None:
    """Put *state* into a *session* just built with ``messages=state.messages`` (or the
    history as the application keeps it, which may differ: the tracker then names how).

    The history itself is given to the constructor (it validates and hashes it); this
    restores the rest: the tracker's beliefs and the running state.
    """
    core = session._core
    _decode_tracker(core.tracker, state.tracker)
    core._last_message_id = state.last_message_id
    core._gaps = list(state.gaps)
    core._last_turn_start = state.last_turn_start
    core.turns = state.turns
    core.last_used = state.last_used
    extra = state.extra
    if "stats" in extra:
        stats = _dec(extra["stats"])
        core.stats = attrs.evolve(stats, reasons=dict(stats.reasons))
    if "keep_alive_spent" in extra:
        core.keep_alive_spent = Decimal(extra["keep_alive_spent"])
    if "prefix_known_until" in extra:
        core._prefix_known_until = _dec(extra["prefix_known_until"])
    if core.adaptive_ttl and state.prefix_ttl != core.prefix.ttl:
        core._use_prefix(attrs.evolve(core.prefix, ttl=state.prefix_ttl), core._workspace)
    router = core.router
    if router is not None:
        model = extra.get("model")
        if isinstance(model, str) and router.rank_of_model(model) is not None:
            routed.use_model(core, model)
        if isinstance(extra.get("route_state"), Mapping):
            core.route_state = RouteState(
                **{k: list(v) for k, v in extra["route_state"].items() if k in _ROUTE_FIELDS}
            )

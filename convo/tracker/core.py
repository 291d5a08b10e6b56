"""What this process believes the server's cache holds, and why a request reads what it reads.

:class:`CacheTracker` mirrors the server's caching rules on an injected clock:

- an entry is written only at a breakpoint whose prefix reaches the model's minimum, and
  only above the position the request read from;
- reads look back at most 20 positions per breakpoint (the breakpoint itself first) for an
  entry an earlier request wrote that is still live and readable; the highest hit wins; a
  run of consecutive ``tool_use`` (or ``tool_result``) blocks is one position;
- a hit refreshes the entry's lifetime from the start of the reading request; under
  ``refresh="path"`` (the default, as the emulator's) it also refreshes every entry on the
  same path before it, under ``"entry"`` only the entry read;
- usage follows the documented A/B/C rule (read A, 1h writes up to B, 5m writes up to C).

:meth:`CacheTracker.predict` says before a call what will be read and written and why;
:meth:`CacheTracker.observe` compares that with the usage the server reported, names the
reason for any shortfall, updates the tracker's beliefs and calibrates its token estimate.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from convo.fingerprint import Fingerprint, fingerprint_body
from convo.layout.prefix import TTLS, check_cache_control
from convo.layout.render import RenderedRequest
from convo.models import MODELS, ModelInfo, is_server_tool, lookup
from convo.tracker.values import (
    SERVER_DIVERGENCES,
    CacheEntry,
    CacheOutcome,
    Point,
    Prediction,
    Reason,
    UsageLike,
)

__all__ = ["REFRESH_RULES", "CacheTracker", "Refresh"]

Refresh = Literal["path", "entry"]
#: What a cache read refreshes; the API does not document it (see ``docs/emulator.md``).
REFRESH_RULES: tuple[Refresh, ...] = ("path", "entry")

_LONGEST_TTL = max(TTLS.values())


def _body_points(body: Mapping[str, Any], fp: Fingerprint) -> tuple[Point, ...]:
    """Breakpoints of a raw body: every ``cache_control`` block, plus automatic caching."""
    # Tools in the order the server keys them: custom tools, then server tools.
    blocks: list[Any] = sorted(body.get("tools") or (), key=is_server_tool)
    system = body.get("system")
    if isinstance(system, list | tuple):
        blocks += list(system)
    elif system:
        blocks.append({})
    for message in body.get("messages", ()):
        content = message.get("content")
        blocks += [{}] if isinstance(content, str) else list(content)
    points = {
        i: check_cache_control(b["cache_control"], f"block {i}")
        for i, b in enumerate(blocks)
        if isinstance(b, Mapping) and "cache_control" in b
    }
    if body.get("cache_control") is not None and len(fp):
        points.setdefault(len(fp) - 1, check_cache_control(body["cache_control"], "request"))
    return tuple(Point(p, t) for p, t in sorted(points.items()))


class CacheTracker:
    """The cache entries this process believes exist, and predictions built on them.

    Args:
        clock: Seconds since the epoch, now (injected so tests never sleep); it must be
            the same clock the server's lifetimes are measured on, up to an offset.
        models: The model table (minimum cacheable lengths).
        forget_after: Seconds an expired entry is remembered (to say ``expired`` rather
            than ``cold``) before it is dropped.
        refresh: What a read refreshes, the same rule the server (or the emulator's
            ``refresh`` config) follows: ``"path"`` (default) every entry on the request's
            path up to the entry read, ``"entry"`` only the entry read.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 ``refresh``; lookback counts tool runs as one position.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        models: Mapping[str, ModelInfo] = MODELS,
        forget_after: float = 3600.0,
        refresh: Refresh = "path",
    ) -> None:
        if refresh not in REFRESH_RULES:
            raise ValueError(f'refresh must be "path" or "entry", got {refresh!r}')
        self._clock = clock
        self._models = models
        self._forget_after = forget_after
        self.refresh: Refresh = refresh
        # Reads under "path", by start: (start, model, keys of the reading request, position
        # read). An entry on such a path, at or before the position, was refreshed at the
        # start if still live. Kept lazily instead of rewriting every entry on the path each
        # turn (that would make a turn cost O(history)); only the longest TTL's worth is
        # kept. _refreshed memoises each entry's expiry with the reads applied so far, so a
        # lookup looks only at reads that start after that expiry's own start.
        self._reads: list[tuple[float, str, Sequence[bytes], int]] = []
        self._read_starts: list[float] = []  # the reads' starts, for a C-speed bisect
        self._refreshed: dict[tuple[str, bytes], float] = {}
        # Block position of each entry (same position on every path through it).
        self._positions: dict[tuple[str, bytes], int] = {}
        self._entries: dict[tuple[str, bytes], CacheEntry] = {}
        self._seen_models: set[str] = set()
        self._calibration: dict[str, tuple[float, float]] = {}
        self._last: CacheOutcome | None = None
        self._pruned_at = clock()

    # -- state ------------------------------------------------------------------------

    def entries(self) -> tuple[CacheEntry, ...]:
        """A snapshot of every remembered entry (live or recently expired)."""
        return tuple(self._entries.values())

    def add_entry(self, entry: CacheEntry) -> None:
        """Record an entry learnt elsewhere (a shared registry, another process)."""
        self._entries[(entry.model, entry.key)] = entry
        self._refreshed.pop((entry.model, entry.key), None)
        self._seen_models.add(entry.model)

    def factor(self, model: str) -> float:
        """The calibration factor for *model*: observed total input over the estimate."""
        observed, estimated = self._calibration.get(model, (0.0, 0.0))
        return observed / estimated if estimated else 1.0

    @property
    def last(self) -> CacheOutcome | None:
        """The most recent outcome (the default ``previous`` for :meth:`predict`)."""
        return self._last

    # -- prediction -------------------------------------------------------------------

    def predict(
        self,
        request: RenderedRequest | Mapping[str, Any],
        *,
        previous: CacheOutcome | Literal["last"] | None = "last",
    ) -> Prediction:
        """Predict what *request* will read and write if sent now; changes no state.

        Args:
            request: A :class:`~convo.layout.RenderedRequest`, or any request body.
            previous: The outcome of this conversation's previous request, to name what
                changed; ``"last"`` (default) uses the tracker's most recent outcome, which
                is right when one tracker serves one conversation.
        """
        if isinstance(request, RenderedRequest):
            fp, minimum = request.fingerprint, request.minimum
            points = tuple(Point(b.position, b.ttl) for b in request.breakpoints)
        else:
            fp = fingerprint_body(request, models=self._models)
            minimum = lookup(fp.model, self._models).min_cacheable_tokens
            points = _body_points(request, fp)
        now, model = self._clock(), fp.model
        tokens = fp.tokens
        hit = self._find_hit(fp, points, now)
        writes = self._writes(points, tokens, hit, minimum)
        factor = self.factor(model)
        read_raw = tokens[hit] if hit >= 0 else 0
        one_hour = [tokens[p] for p, ttl in writes if ttl == "1h"]
        b_raw = max(one_hour) if one_hour else read_raw
        c_raw = tokens[writes[-1][0]] if writes else max(read_raw, b_raw)
        a, b, c, total = (round(x * factor) for x in (read_raw, b_raw, c_raw, fp.total_tokens))
        prior = self._last if previous == "last" else previous
        reason, detail, index = self._reason(fp, points, tokens, minimum, hit, prior, now)
        return Prediction(
            model=model,
            at=now,
            cache_read=a,
            cache_write_5m=c - b,
            cache_write_1h=b - a,
            input=total - max(a, c),
            reason=reason,
            detail=detail,
            message_index=index,
            hit=hit,
            writes=writes,
            factor=factor,
            fingerprint=fp,
            breakpoints=points,
            minimum=minimum,
        )

    def _entry(self, model: str, key: bytes) -> CacheEntry | None:
        return self._entries.get((model, key))

    def expires_at(self, entry: CacheEntry) -> float:
        """When *entry* expires, counting refreshes by reads deeper on its path ("path").

        A read through the entry refreshes it only if the entry is still live when the read
        starts (an expired entry is gone on the server, whatever is read after it).
        """
        expires = entry.expires_at
        if self.refresh != "path":
            return expires
        slot = (entry.model, entry.key)
        position = self._positions.get(slot)
        if position is None:
            return expires
        expires = max(expires, self._refreshed.get(slot, expires))
        ttl = TTLS[entry.ttl]
        reads = self._reads
        # Oldest first, from the first read that could extend the expiry; stop at the first
        # read that finds the entry expired. Each step only moves the expiry later.
        for i in range(bisect.bisect_right(self._read_starts, expires - ttl), len(reads)):
            start, model, keys, read = reads[i]
            if start >= expires:
                break
            if read >= position and model == entry.model and keys[position] == entry.key:
                expires = start + ttl
        self._refreshed[slot] = expires
        return expires

    def _live(self, entry: CacheEntry, now: float) -> bool:
        return entry.readable_from <= now < self.expires_at(entry)

    def _find_hit(self, fp: Fingerprint, points: Sequence[Point], now: float) -> int:
        model, keys = fp.model, fp.keys
        hit = -1
        for point in points:
            for position in range(point.position, fp.lookback_floor(point.position) - 1, -1):
                if position <= hit:
                    break
                entry = self._entries.get((model, keys[position]))
                if entry is not None and self._live(entry, now):
                    hit = position
                    break
        return hit

    @staticmethod
    def _writes(
        points: Sequence[Point], tokens: Sequence[int], hit: int, minimum: int
    ) -> tuple[tuple[int, str], ...]:
        return tuple(
            (p.position, p.ttl)
            for p in points
            if p.position > hit and tokens[p.position] >= minimum
        )

    def _reason(
        self,
        fp: Fingerprint,
        points: Sequence[Point],
        tokens: Sequence[int],
        minimum: int,
        hit: int,
        prior: CacheOutcome | None,
        now: float,
    ) -> tuple[Reason, str, int | None]:
        if not points:
            if fp.total_tokens < minimum:
                # The layout left out breakpoints that could never write: say why.
                return "below_minimum", "", None
            return "cold", "no breakpoints", None
        if all(tokens[p.position] < minimum for p in points):
            return "below_minimum", "", None
        before = prior.predicted.fingerprint if prior is not None else None
        if prior is None or before is None or prior.deepest < 0:
            return ("hit", "", None) if hit >= 0 else self._explain(fp, points, hit, now)
        if before.model != fp.model:
            return "model_changed", "", None
        deepest = prior.deepest
        if deepest < fp.common_prefix(before):
            # The previous request's deepest entry is part of this request.
            if hit >= deepest:
                return "hit", "", None
            return self._why_unread(fp.model, fp.keys[deepest], now)
        return _what_changed(before, fp)

    def _why_unread(self, model: str, key: bytes, now: float) -> tuple[Reason, str, int | None]:
        entry = self._entry(model, key)
        if entry is None:
            return "cold", "never written", None
        if now >= self.expires_at(entry):
            return "expired", entry.ttl, None
        if now < entry.readable_from:
            return "cold", "write still in flight", None
        return "lookback_exceeded", "", None

    def _explain(
        self, fp: Fingerprint, points: Sequence[Point], hit: int, now: float
    ) -> tuple[Reason, str, int | None]:
        """Without a previous request: look for a known entry this request could not read."""
        top = max(p.position for p in points)
        for position in range(top, hit, -1):
            key = fp.keys[position]
            if self._entry(fp.model, key) is not None:
                return self._why_unread(fp.model, key, now)
            for other in self._seen_models - {fp.model}:
                entry = self._entry(other, key)
                if entry is not None and self._live(entry, now):
                    return "model_changed", other, None
        return ("hit", "", None) if hit >= 0 else ("cold", "", None)

    # -- observation ------------------------------------------------------------------

    def observe(
        self, prediction: Prediction, usage: UsageLike, diagnostics: Any = None
    ) -> CacheOutcome:
        """Compare *prediction* with observed *usage*, update beliefs, name the reason.

        Args:
            prediction: What :meth:`predict` said before the call.
            usage: The observed usage (``convo.Usage`` or anything with its fields).
            diagnostics: The response's ``diagnostics`` (SDK object or dict), if cache
                diagnostics was requested; its ``cache_miss_reason`` is recorded beside
                the local reason.
        """
        fp = prediction.fingerprint
        if fp is None:
            raise ValueError("observe needs a Prediction made by CacheTracker.predict")
        model, keys, tokens = prediction.model, fp.keys, fp.tokens
        read, w5, w1 = usage.cache_read, usage.cache_write_5m, usage.cache_write_1h
        self._calibrate(model, fp.total_tokens, usage.input + read + w5 + w1)
        now = self._clock()
        factor = prediction.factor

        hit = prediction.hit
        if read != prediction.cache_read:
            hit = self._position_for(read, fp, prediction.breakpoints, factor)
        if hit < prediction.hit:
            # The server did not have what we believed: forget it.
            self._entries.pop((model, keys[prediction.hit]), None)
        deepest = -1
        if hit >= 0:
            old = self._entry(model, keys[hit])
            ttl = old.ttl if old else _ttl_covering(prediction.breakpoints, hit)
            self._store(model, keys[hit], tokens[hit], ttl, prediction.at, now, old)
            self._positions[(model, keys[hit])] = hit
            if self.refresh == "path":
                at = bisect.bisect_right(self._read_starts, prediction.at)
                self._read_starts.insert(at, prediction.at)
                self._reads.insert(at, (prediction.at, model, keys, hit))
            deepest = hit
        if w5 + w1 > 0:
            for position, ttl in self._writes(
                prediction.breakpoints, tokens, hit, prediction.minimum
            ):
                old = self._entry(model, keys[position])
                self._store(model, keys[position], tokens[position], ttl, prediction.at, now, old)
                self._positions[(model, keys[position])] = position
                deepest = max(deepest, position)
        self._seen_models.add(model)

        reason, detail, index = prediction.reason, prediction.detail, prediction.message_index
        if read < prediction.cache_read:
            reason, detail, index = "evicted_or_unknown", "", None
        elif read > prediction.cache_read:
            reason, detail, index = "hit", "an entry this tracker did not know of", None
        server, missed = _server_reason(diagnostics)
        agrees: bool | None = None
        if server in SERVER_DIVERGENCES:
            # A divergence that cost no cached tokens (a suffix folded into the previous
            # turn and dropped since) is consistent with a local "hit".
            agrees = server == reason or (reason == "hit" and missed == 0)
        outcome = CacheOutcome(
            predicted=prediction,
            cache_read=read,
            cache_write_5m=w5,
            cache_write_1h=w1,
            input=usage.input,
            reason=reason,
            detail=detail,
            message_index=index,
            server_reason=server,
            server_missed_tokens=missed,
            agrees=agrees,
            hit=hit,
            deepest=deepest,
        )
        self._last = outcome
        self._prune(now)
        return outcome

    def _store(
        self,
        model: str,
        key: bytes,
        tokens: int,
        ttl: str,
        start: float,
        now: float,
        old: CacheEntry | None,
    ) -> None:
        readable = min(old.readable_from, now) if old is not None else now
        self._refreshed.pop((model, key), None)
        self._entries[(model, key)] = CacheEntry(
            model=model,
            key=key,
            tokens=tokens,
            ttl=ttl,
            expires_at=start + TTLS[ttl],
            readable_from=readable,
        )

    def _calibrate(self, model: str, estimated: int, observed: int) -> None:
        if estimated <= 0 or observed <= 0:
            return
        # Decayed sums rather than a running mean of ratios: identical inputs keep the
        # factor at exactly 1.0, so predictions against the emulator stay exact.
        old_observed, old_estimated = self._calibration.get(model, (0.0, 0.0))
        self._calibration[model] = (
            old_observed * 0.9 + observed,
            old_estimated * 0.9 + estimated,
        )

    @staticmethod
    def _position_for(read: int, fp: Fingerprint, points: Sequence[Point], factor: float) -> int:
        """The block position whose prefix is *read* tokens (nearest, within reach)."""
        if read <= 0:
            return -1
        tokens = fp.tokens
        best, best_gap = -1, float("inf")
        for point in points:
            for position in range(point.position, fp.lookback_floor(point.position) - 1, -1):
                gap = abs(round(tokens[position] * factor) - read)
                if gap < best_gap:
                    best, best_gap = position, gap
        return best

    def _prune(self, now: float) -> None:
        if now - self._pruned_at < 60:
            return
        self._pruned_at = now
        stale = bisect.bisect_left(self._read_starts, now - _LONGEST_TTL)
        if stale:
            # Reads older than the longest TTL are dropped: fold them into each entry's
            # memoised expiry first (a minute's reads per entry, once a minute).
            for entry in self._entries.values():
                self.expires_at(entry)
            del self._reads[:stale]
            del self._read_starts[:stale]
        horizon = now - self._forget_after
        dead = [
            k
            for k, e in self._entries.items()
            if e.expires_at < horizon and self.expires_at(e) < horizon
        ]
        for key in dead:
            del self._entries[key]
            self._positions.pop(key, None)
            self._refreshed.pop(key, None)


def _ttl_covering(points: Sequence[Point], position: int) -> str:
    above = [p.ttl for p in points if p.position >= position]
    return above[0] if above else "5m"


def _what_changed(before: Fingerprint, after: Fingerprint) -> tuple[Reason, str, int | None]:
    old, new = before.segments, after.segments
    if old.tools != new.tools or before.tools_end != after.tools_end:
        return "tools_changed", "", None
    if old.system != new.system:
        return "system_changed", "static", None
    if old.system_settings != new.system_settings:
        # Speed or citations: they re-key system and messages, not the tools.
        return "system_changed", "settings", None
    in_system = before.suffix_end > before.system_end or after.suffix_end > after.system_end
    if old.suffix != new.suffix and in_system:
        # A system suffix stands in front of every message, so changing it re-keys them.
        return "system_changed", "suffix", None
    if old.settings != new.settings:
        return "messages_changed", "settings", 0
    for index, (a, b) in enumerate(zip(old.messages, new.messages, strict=False)):
        if a != b:
            return "messages_changed", "", index
    kind, where = after.segment_of(after.common_prefix(before))
    if kind == "suffix":
        return "system_changed", "suffix", None
    return "messages_changed", "", where


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _server_reason(diagnostics: Any) -> tuple[str | None, int | None]:
    if diagnostics is None:
        return None, None
    reason = _field(diagnostics, "cache_miss_reason")
    if reason is None:
        return None, None
    kind = _field(reason, "type")
    missed = _field(reason, "cache_missed_input_tokens")
    return (str(kind) if kind is not None else None), (int(missed) if missed is not None else None)

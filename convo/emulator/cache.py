"""The emulated prompt cache: entries written at breakpoints, found by a 20-position lookback.

This is the rule set of the prompt-caching docs, as code:

- a request writes one entry per breakpoint, keyed by the prefix ending at that block,
  unless the prefix is shorter than the model's minimum (then nothing, and no error);
- to read, each breakpoint looks back at most :data:`LOOKBACK` positions, itself first,
  for an entry an *earlier* request wrote; the highest hit over all breakpoints wins. A
  run of consecutive ``tool_use`` blocks is one position, and so is a run of
  ``tool_result`` blocks (:meth:`Prompt.lookback_floor`);
- an entry lives for its TTL from the start of the request that wrote or last read it.
  Which entries a read refreshes is not documented: under ``refresh="path"`` (default) a
  read at position N refreshes every live entry on the same path at or before N, under
  ``"entry"`` only the entry read;
- an entry becomes readable only once the response that writes it has begun, so parallel
  cold requests each pay for a write.

Usage follows the docs' A/B/C rule: A is the tokens through the highest hit, B through
the last 1h breakpoint written beyond A, C through the last breakpoint written. Reads are
A, 1h writes B - A, 5m writes C - B, and ``input_tokens`` is what lies beyond.

Everything here is pure state on an explicit ``now``; the caller holds the lock.
"""

from __future__ import annotations

import attrs

from convo.emulator.prompt import Breakpoint, Prompt

__all__ = ["LOOKBACK", "REFRESH_RULES", "CacheDecision", "CacheStore", "Entry"]

#: Positions one breakpoint checks, counting itself.
LOOKBACK = 20

#: What a read refreshes: every entry on its path up to the entry read, or that entry only.
REFRESH_RULES = ("path", "entry")


@attrs.define
class Entry:
    """One cache entry (mutable: hits refresh it, the writer's response makes it readable)."""

    tokens: int
    ttl_seconds: float
    expires_at: float
    readable: bool = False
    writers: int = 1  # requests writing it whose responses have not begun

    def live(self, now: float) -> bool:
        """Whether the entry has not yet expired at *now*."""
        return now < self.expires_at


@attrs.frozen
class CacheDecision:
    """What one request reads and writes.

    Attributes:
        hit_position: Highest position read from cache, or -1.
        written: Breakpoints this request writes (those above the hit and the minimum).
        cache_read: Tokens read (A).
        cache_write_1h: Tokens written with a 1h TTL (B - A).
        cache_write_5m: Tokens written with a 5m TTL (C - B).
        input: Tokens neither read nor written.
        below_minimum: Breakpoints skipped because their prefix is under the model minimum.
    """

    hit_position: int
    written: tuple[Breakpoint, ...]
    cache_read: int
    cache_write_1h: int
    cache_write_5m: int
    input: int
    below_minimum: tuple[Breakpoint, ...] = ()

    @property
    def cache_write(self) -> int:
        """All tokens written."""
        return self.cache_write_1h + self.cache_write_5m

    @property
    def reach(self) -> int:
        """Tokens covered by the cache after this request: read plus written."""
        return self.cache_read + self.cache_write


Scope = tuple[str, str]  # (workspace, model id)


class CacheStore:
    """Entries by (workspace, model, key), with lazy expiry."""

    def __init__(self, *, refresh: str = "path") -> None:
        if refresh not in REFRESH_RULES:
            raise ValueError(f"refresh must be one of {REFRESH_RULES}, got {refresh!r}")
        self.refresh = refresh
        self._entries: dict[tuple[str, str, bytes], Entry] = {}
        self._sweep_at = 10_000

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()

    def _find(self, scope: Scope, key: bytes, now: float) -> Entry | None:
        entry = self._entries.get((*scope, key))
        if entry is None or not entry.live(now):
            return None
        return entry

    def _highest_hit(self, scope: Scope, prompt: Prompt, now: float) -> int:
        best = -1
        for bp in prompt.breakpoints:
            floor = prompt.lookback_floor(bp.position, LOOKBACK)
            for position in range(bp.position, floor - 1, -1):
                if position <= best:
                    break  # a higher hit is already known
                entry = self._find(scope, prompt.keys[position], now)
                if entry is not None and entry.readable:
                    best = position
                    break
        return best

    def decide(
        self, workspace: str, prompt: Prompt, now: float, *, commit: bool = True
    ) -> CacheDecision:
        """Look up, refresh and write entries for *prompt* arriving at *now*.

        With ``commit=False`` nothing changes: the decision is what the request *would*
        read and write (the rate limiter needs its weight before admitting it). Written
        entries start unreadable; call :meth:`begin_response` when the response that wrote
        them begins, or :meth:`abandon` if it never does.
        """
        scope = (workspace, prompt.model.id)
        hit = self._highest_hit(scope, prompt, now)
        if hit >= 0 and commit:
            entry = self._find(scope, prompt.keys[hit], now)
            assert entry is not None  # just found by _highest_hit under the same lock
            entry.expires_at = max(entry.expires_at, now + entry.ttl_seconds)
            if self.refresh == "path":
                # The content of every earlier entry on this path was used: refresh them
                # too (O(hit) lookups; the server side can afford it).
                for earlier_key in prompt.keys[:hit]:
                    earlier = self._find(scope, earlier_key, now)
                    if earlier is not None:
                        earlier.expires_at = max(earlier.expires_at, now + earlier.ttl_seconds)

        minimum = prompt.model.min_cacheable_tokens
        written: list[Breakpoint] = []
        below: list[Breakpoint] = []
        for bp in prompt.breakpoints:
            if bp.position <= hit:
                continue
            if prompt.tokens_through(bp.position) < minimum:
                below.append(bp)
                continue
            written.append(bp)
            if not commit:
                continue
            key = (*scope, prompt.keys[bp.position])
            existing = self._entries.get(key)
            if existing is not None and existing.live(now):
                # Another request is writing the same prefix right now: this one pays for a
                # write too, and the entry keeps the longer of the two lifetimes.
                existing.ttl_seconds = max(existing.ttl_seconds, bp.ttl_seconds)
                existing.expires_at = max(existing.expires_at, now + bp.ttl_seconds)
                existing.writers += 1
            else:
                self._entries[key] = Entry(
                    tokens=prompt.tokens_through(bp.position),
                    ttl_seconds=bp.ttl_seconds,
                    expires_at=now + bp.ttl_seconds,
                )

        a = prompt.tokens_through(hit)
        one_hour = [bp for bp in written if bp.ttl == "1h"]
        b = prompt.tokens_through(one_hour[-1].position) if one_hour else a
        c = prompt.tokens_through(written[-1].position) if written else a
        self._maybe_sweep(now)
        return CacheDecision(
            hit_position=hit,
            written=tuple(written),
            cache_read=a,
            cache_write_1h=b - a,
            cache_write_5m=c - b,
            input=prompt.total_tokens - c,
            below_minimum=tuple(below),
        )

    def begin_response(self, workspace: str, prompt: Prompt, decision: CacheDecision) -> None:
        """Make the entries *decision* wrote readable: their response has begun."""
        scope = (workspace, prompt.model.id)
        for bp in decision.written:
            entry = self._entries.get((*scope, prompt.keys[bp.position]))
            if entry is not None:
                entry.readable = True

    def abandon(self, workspace: str, prompt: Prompt, decision: CacheDecision) -> None:
        """Withdraw *decision*'s writes (the request failed before its response began).

        An entry another in-flight request is also writing stays for that request.
        """
        scope = (workspace, prompt.model.id)
        for bp in decision.written:
            key = (*scope, prompt.keys[bp.position])
            entry = self._entries.get(key)
            if entry is None or entry.readable:
                continue
            entry.writers -= 1
            if entry.writers <= 0:
                del self._entries[key]

    def _maybe_sweep(self, now: float) -> None:
        if len(self._entries) < self._sweep_at:
            return
        for key in [k for k, e in self._entries.items() if not e.live(now)]:
            del self._entries[key]
        self._sweep_at = max(10_000, 2 * len(self._entries))

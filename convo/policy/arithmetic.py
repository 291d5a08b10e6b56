"""The break-even arithmetic of the prompt cache, as pure functions (``docs/economics.md``).

Every cost here is in *token-units*: tokens times a multiple of the model's base input
price. The multiples are the same for every current model: a 5-minute write costs 1.25, a
1-hour write 2.0, a read 0.1 and uncached input 1.0. Each decision compares the options it
has with the same baseline and returns the best one with its expected saving over the
baseline, so a caller (and the ledger) can see why it was taken.

Probabilities come from :class:`convo.policy.observe.Outlook`, built from what was observed
before the decision (inter-arrival times per conversation and pooled per prefix); nothing
here reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import attrs

__all__ = [
    "INPUT",
    "READ",
    "TTL_SECONDS",
    "WRITE",
    "Decision",
    "history_ttl",
    "keep_alive",
    "prefix_ttl",
    "prefix_ttl_counts",
]

#: Price multiples of the base input price (every current model).
INPUT = 1.0
READ = 0.1
WRITE: dict[str, float] = {"5m": 1.25, "1h": 2.0}
TTL_SECONDS: dict[str, float] = {"5m": 300.0, "1h": 3600.0}

Ttl = Literal["5m", "1h"]


@attrs.frozen
class Decision:
    """What the policy chose, and what it expects that to save.

    Attributes:
        action: The choice: a TTL (``"5m"``, ``"1h"``), ``"none"`` (no breakpoint), or for
            re-warms ``"send"`` / ``"skip"``.
        expected_saving: Expected token-units saved against the baseline named in
            :attr:`reason` (negative when even the best option loses; then the baseline is
            chosen). Multiply by the base input price per token for money.
        reason: One line saying what was compared.

    .. versionadded:: 0.2
    """

    action: str
    expected_saving: float
    reason: str


def prefix_ttl(gaps: Iterable[float], *, tokens: int = 1) -> Decision:
    """Choose the shared prefix's TTL from the gaps between uses of it (all sessions).

    A prefix entry, once written, is refreshed by every use, so it lives as a *chain* until a
    gap outlasts its TTL. Against ``"5m"``, ``"1h"`` costs 0.75 more per write and saves 1.15
    (a 5m rewrite, 1.25, instead of a read, 0.1) on every gap of 5–60 minutes. Gaps under 5
    minutes are reads under both TTLs and decide nothing; a gap that is not is of 5–60
    minutes with some probability ``p`` (else over an hour, and the chain ends), so a chain
    holds ``p / (1 − p)`` gaps of 5–60 minutes on average. With ``k`` such gaps and ``w``
    over an hour observed, ``p`` is estimated as ``(k + ½) / (k + w + 1)`` (Jeffreys' prior:
    half a gap of each kind), which makes ``p / (1 − p) = (k + ½) / (w + ½)``, so per write::

        saving(1h) = tokens × (1.15 × (k + ½) / (w + ½) − 0.75)

    With nothing observed that is ``0.4 × tokens``: 1h. (The estimate ``k / (1 + w)``, used
    until 2026-12-01, amounted to a prior of one gap over an hour and none of 5–60 minutes:
    it wrote 5m whenever nothing was known, and that first write lapsed in the first lull.)

    Args:
        gaps: Observed seconds between the starts of consecutive uses of the prefix.
        tokens: The prefix's tokens (the saving scales with them).
    """
    k = w = 0
    for gap in gaps:
        if gap < 0:
            raise ValueError(f"a gap between uses cannot be negative: {gap}")
        if gap >= TTL_SECONDS["1h"]:
            w += 1
        elif gap >= TTL_SECONDS["5m"]:
            k += 1
    return prefix_ttl_counts(k, w, tokens=tokens)


def prefix_ttl_counts(k: int, w: int, *, tokens: int = 1) -> Decision:
    """:func:`prefix_ttl` from the counts it decides on: *k* gaps of 5-60 minutes and *w*
    gaps of an hour or more (what :meth:`PrefixPool.prefix_gap_counts` keeps)."""
    per_chain = (k + 0.5) / (w + 0.5)
    saving = tokens * ((WRITE["5m"] - READ) * per_chain - (WRITE["1h"] - WRITE["5m"]))
    reason = f"1h vs 5m: {k} gaps of 5-60 min, {w} over 1h"
    return Decision("1h" if saving > 0 else "5m", saving, reason)


def history_ttl(
    *,
    p_within: Mapping[str, float],
    protected: Mapping[str, float],
    new: float,
    extra_1h: float = 0.0,
) -> Decision:
    """Choose the history breakpoint for this turn: none, 5m or 1h (1h may follow a 1h prefix).

    Baseline: no history breakpoint. Then this turn pays its *new* tokens as input (1.0),
    and the next turn pays the *protected* tokens (what the entry would spare it) as input,
    plus, if yet another turn is to come, the write that turn would then make itself. With
    a breakpoint of TTL ``T``, this turn pays ``WRITE[T]`` for the new tokens, and the next
    turn reads the protected ones (0.1) when it comes within ``T``, which it does with
    probability ``p = p_within[T]``. Without the entry the next turn would write them
    itself for the turn after: at 5m for the chance of a turn within 5 minutes, at 1h only
    for the extra chance of one within the hour::

        then(5m)  = 1.0 + p5 × 0.25
        then(1h)  = 1.0 + p5 × 0.25 + (p1h − p5) × 1.0
        saving(T) = p_T × (then(T) − 0.1) × protected[T] − (WRITE[T] − 1.0) × new − extra

    (with ``p1h = p5``, 1h never beats 5m: the same chance of a read for a dearer write).
    where ``extra`` is what a 1h history costs elsewhere (the API wants every 1h breakpoint
    before every 5m one, so a 1h history needs a 1h prefix: 0.75 × its tokens if this turn
    writes it). The decision is re-taken every turn, so two turns ahead are enough: a read
    refreshes the entry, and the next turn decides again.

    Args:
        p_within: Probability that another turn of this conversation starts within 5
            minutes (``"5m"``) and within an hour (``"1h"``) of this one.
        protected: Per TTL, the tokens the entry spares the next turn (this conversation's
            history, and the shared prefix as often as nobody else would keep it live).
        new: Tokens this turn writes for the first time.
        extra_1h: Token-units a 1h history costs beyond its own write.
    """
    options: dict[str, float] = {"none": 0.0}
    for ttl in ("5m", "1h"):
        p = p_within[ttl]
        gain = p * (_then(p_within, ttl) - READ) * protected[ttl]
        cost = (WRITE[ttl] - INPUT) * new + (extra_1h if ttl == "1h" else 0.0)
        options[ttl] = gain - cost
    best = max(options, key=lambda o: (options[o], o == "none"))
    reason = (
        f"vs no history breakpoint: P(next <5m)={p_within['5m']:.2f}, "
        f"P(next <1h)={p_within['1h']:.2f}, protected={protected['5m']:.0f}/"
        f"{protected['1h']:.0f}, new={new:.0f}"
    )
    return Decision(best, options[best], reason)


def _then(p_within: Mapping[str, float], ttl: str) -> float:
    """What the next turn pays per protected token without this entry: input, plus the
    write it then makes for the turn after (a 5m write covers the chance of a turn within
    5 minutes; only the extra chance of one within the hour needs a 1h write)."""
    five = p_within["5m"]
    if ttl == "5m":
        return INPUT + five * (WRITE["5m"] - INPUT)
    extra = max(0.0, p_within["1h"] - five)
    return INPUT + five * (WRITE["5m"] - INPUT) + extra * (WRITE["1h"] - INPUT)


def keep_alive(
    *,
    p_next: float,
    protected: float,
    read: float,
    rewrite: float = WRITE["5m"],
    tail: float = 0.0,
    shared: float = 0.0,
    p_shared: float = 0.0,
    shared_rewrite: float = WRITE["5m"],
) -> Decision:
    """Whether a re-warm (a ``max_tokens: 0`` request reading what is cached) pays.

    Without it the entry lapses and the next use writes the protected tokens again
    (``rewrite`` each, 1.25 for 5m) instead of reading them (0.1). The re-warm reads every
    token up to its last breakpoint (``read``, the shared prefix included: a prompt is read
    from its start) and writes the ``tail`` not cached yet. The conversation's own tokens
    are needed by its next turn (``p_next``); the ``shared`` prefix, when nobody else keeps
    it live, by the next use of anyone (``p_shared``)::

        saving = p_next × (rewrite − 0.1) × protected
               + p_shared × (shared_rewrite − 0.1) × shared
               − 0.1 × read − WRITE["5m"] × tail

    Args:
        p_next: Probability that the conversation's next turn comes after its entry would
            have lapsed but inside the window the re-warm opens.
        protected: The conversation's tokens that would otherwise be written again.
        read: Tokens the re-warm reads.
        rewrite: Price multiple of writing them again.
        tail: Tokens the re-warm writes.
        shared: Shared-prefix tokens the re-warm keeps live (0 when others keep it).
        p_shared: Probability that anyone uses the shared prefix in that window.
        shared_rewrite: Price multiple of writing the shared prefix again.
    """
    saving = (
        p_next * (rewrite - READ) * protected
        + p_shared * (shared_rewrite - READ) * shared
        - READ * read
        - WRITE["5m"] * tail
    )
    reason = (
        f"re-warm vs lapse: P(next turn in window)={p_next:.2f}, protected={protected:.0f}, "
        f"P(prefix used in window)={p_shared:.2f}, shared={shared:.0f}, read={read:.0f}"
    )
    return Decision("send" if saving > 0 else "skip", saving, reason)

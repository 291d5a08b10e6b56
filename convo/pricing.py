"""True cost and rate-limit weight of a :class:`~convo.usage.Usage`.

Prices come from the maintained ``genai-prices`` table (dated, with the 5-minute / 1-hour
cache-write split), or from the user's own :class:`Rates` for private pricing; convo holds
no price table of its own. A model neither knows gets ``Cost.usd = None`` and a reason:
never a made-up default, because a wrong price that looks right is worse than a blank.

Cost and rate-limit weight are different measures of the same tokens. Cost weighs cache
reads at a tenth of base input; the ITPM rate limit does not count them at all on current
models but counts every cache write in full. ``docs/cost.md`` works an example through.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal

import attrs
import genai_prices
from genai_prices import data_snapshot
from genai_prices.types import ModelPrice, StartDateConstraint

from convo import models
from convo.usage import Usage

__all__ = ["Cost", "Rates", "price", "rate_limit_tokens", "request_hit_rate", "token_hit_rate"]

_MTOK = Decimal(1_000_000)
_BATCH = Decimal("0.5")
_US_GEO = Decimal("1.1")
#: Documented multipliers of base input, used only to fill an override the user left open.
_W5, _W1, _READ = Decimal("1.25"), Decimal(2), Decimal("0.1")
_SOURCE = f"genai-prices {genai_prices.__version__}"


def _money(value: Decimal | int | str | float) -> Decimal:
    if isinstance(value, bool):
        raise TypeError("a price must be a number, not a bool")
    if isinstance(value, float):
        # str() keeps the decimal the user typed (0.3), not the binary fraction behind it.
        value = str(value)
    try:
        result = Decimal(value)
    except Exception as exc:
        raise TypeError(f"a price must be a Decimal, int, str or float; got {value!r}") from exc
    if not result.is_finite() or result < 0:
        raise ValueError(f"a price must be finite and >= 0, got {value!r}")
    return result


def _opt_money(value: Decimal | int | str | float | None) -> Decimal | None:
    return None if value is None else _money(value)


@attrs.frozen
class Rates:
    """Prices in USD per million tokens, one per kind.

    Give at least ``input`` and ``output``; a cache rate left as ``None`` is derived from
    ``input`` by the documented multipliers (5m write 1.25×, 1h write 2×, read 0.1×) and the
    cost records that it was derived.

    .. versionadded:: 0.1
    """

    input: Decimal = attrs.field(converter=_money)
    output: Decimal = attrs.field(converter=_money)
    cache_write_5m: Decimal | None = attrs.field(default=None, converter=_opt_money)
    cache_write_1h: Decimal | None = attrs.field(default=None, converter=_opt_money)
    cache_read: Decimal | None = attrs.field(default=None, converter=_opt_money)

    def filled(self) -> tuple[Rates, tuple[str, ...]]:
        """Return these rates with every cache rate set, and a note per derived one."""
        notes = []
        changes: dict[str, Decimal] = {}
        for name, factor in (
            ("cache_write_5m", _W5),
            ("cache_write_1h", _W1),
            ("cache_read", _READ),
        ):
            if getattr(self, name) is None:
                changes[name] = self.input * factor
                notes.append(f"{name} rate derived as {factor}x base input")
        return attrs.evolve(self, **changes), tuple(notes)

    def scaled(self, factor: Decimal) -> Rates:
        """Return every rate multiplied by *factor* (batch, regional multipliers)."""
        return Rates(
            input=self.input * factor,
            output=self.output * factor,
            cache_write_5m=None if self.cache_write_5m is None else self.cache_write_5m * factor,
            cache_write_1h=None if self.cache_write_1h is None else self.cache_write_1h * factor,
            cache_read=None if self.cache_read is None else self.cache_read * factor,
        )


@attrs.frozen
class Cost:
    """What a usage cost, what caching saved, and what it weighed against ITPM.

    Attributes:
        usd: Total in USD, or ``None`` when the model has no known price.
        reason: Why ``usd`` is ``None``; ``None`` when priced.
        input_usd: Cost of uncached input (after the last breakpoint).
        cache_read_usd: Cost of cache reads.
        cache_write_5m_usd: Cost of 5-minute cache writes.
        cache_write_1h_usd: Cost of 1-hour cache writes.
        output_usd: Cost of output.
        saved_usd: Cost of the same tokens with no caching (all input at base rate) minus
            ``usd``. Negative when write premiums outweighed reads. ``None`` when unpriced.
        rate_limit_tokens: Weight against input tokens per minute: input plus cache writes,
            plus cache reads only for models whose reads count (see :func:`rate_limit_tokens`).
        model: The model id priced.
        source: Where the prices came from, with its version (``genai-prices 0.2.3``).
        rates: The per-million rates applied, after batch and regional multipliers.
        notes: Assumptions made (derived rates, multipliers applied), for the record.

    .. versionadded:: 0.1
    """

    usd: Decimal | None
    rate_limit_tokens: int
    model: str
    reason: str | None = None
    input_usd: Decimal | None = None
    cache_read_usd: Decimal | None = None
    cache_write_5m_usd: Decimal | None = None
    cache_write_1h_usd: Decimal | None = None
    output_usd: Decimal | None = None
    saved_usd: Decimal | None = None
    source: str = _SOURCE
    rates: Rates | None = None
    notes: tuple[str, ...] = ()

    @property
    def breakdown(self) -> dict[str, Decimal | None]:
        """Cost by kind (``input``, ``cache_read``, ``cache_write_5m/1h``, ``output``)."""
        return {
            "input": self.input_usd,
            "cache_read": self.cache_read_usd,
            "cache_write_5m": self.cache_write_5m_usd,
            "cache_write_1h": self.cache_write_1h_usd,
            "output": self.output_usd,
        }


def rate_limit_tokens(usage: Usage, model: str) -> int:
    """Return the ITPM weight of *usage*: input + cache writes (+ cache reads where they count).

    Whether reads count comes from :func:`convo.models.lookup` (Haiku 3.5 is the one model
    where they do). A model missing from that table is assumed to be a current model whose
    reads do not count; that can understate the weight of an unlisted older model.
    """
    try:
        reads_count = models.lookup(model).cache_reads_count_itpm
    except models.UnknownModel:
        reads_count = False
    return usage.input + usage.cache_write + (usage.cache_read if reads_count else 0)


def price(
    usage: Usage,
    model: str,
    *,
    at: dt.datetime | None = None,
    batch: bool = False,
    inference_geo: str | None = None,
    overrides: Rates | Mapping[str, Rates] | None = None,
) -> Cost:
    """Price *usage* on *model*.

    Args:
        usage: The tokens to price.
        model: The model id as sent (dated snapshot ids work).
        at: When the request was made, for dated price changes; default now (UTC). A naive
            datetime is taken as UTC.
        batch: Whether the request went through the Batch API (50% off); also taken from
            ``usage.service_tier == "batch"``.
        inference_geo: Where inference ran; default ``usage.inference_geo``. ``"us"``
            (US-only) costs 1.1× on Claude 4.6 and later models.
        overrides: Private pricing: one :class:`Rates` for this call, or a mapping from
            model id to :class:`Rates`. Used instead of ``genai-prices`` where it applies.

    Returns:
        The cost; ``usd`` is ``None`` with a ``reason`` when no price is known.

    Raises:
        TypeError: when *usage* is not a :class:`~convo.usage.Usage` or *model* not a str.
    """
    if not isinstance(usage, Usage):
        raise TypeError(f"price() needs a convo.Usage, got {type(usage).__name__}")
    if not isinstance(model, str) or not model:
        raise TypeError(f"price() needs a model id string, got {model!r}")
    when = at or dt.datetime.now(dt.timezone.utc)
    weight = rate_limit_tokens(usage, model)
    notes: list[str] = []
    if not batch and usage.service_tier == "batch":
        # The response says it ran through the Batch API: price it so, as with inference_geo.
        batch = True
        notes.append("batch: taken from usage.service_tier")

    rates, source, batch_applied = _resolve(usage, model, when, batch, overrides, notes)
    if rates is None:
        return Cost(usd=None, rate_limit_tokens=weight, model=model, reason=source, source=_SOURCE)
    if batch and not batch_applied:
        rates = rates.scaled(_BATCH)
        notes.append("batch: 50% applied to every rate")
    geo = inference_geo if inference_geo is not None else usage.inference_geo
    if geo is not None and geo.lower() == "us" and _version(model) >= (4, 6):
        rates = rates.scaled(_US_GEO)
        notes.append("inference_geo us: 1.1x applied to every rate")
    return _cost(usage, model, rates, weight, source, tuple(notes))


def token_hit_rate(usage: Usage) -> float | None:
    """Return ``cache_read / total_input``, or ``None`` when there was no input.

    Never ``cache_read / input``: ``input`` excludes cached tokens, so that ratio passes 100%.
    """
    total = usage.total_input
    return None if total == 0 else usage.cache_read / total


def request_hit_rate(usages: Iterable[Usage]) -> float | None:
    """Return the share of requests that read anything from cache, or ``None`` for none."""
    count = hits = 0
    for u in usages:
        count += 1
        hits += u.cache_read > 0
    return None if count == 0 else hits / count


def _resolve(
    usage: Usage,
    model: str,
    when: dt.datetime,
    batch: bool,
    overrides: Rates | Mapping[str, Rates] | None,
    notes: list[str],
) -> tuple[Rates | None, str, bool]:
    """Return (filled rates, source or reason, batch already applied)."""
    override = _override_for(model, overrides)
    if override is not None:
        rates, derived = _filled(override)
        notes.extend(derived)
        return rates, "override", False
    found = _listed(model, when, batch)
    if not found.priced:
        return None, found.source, False
    if found.batch_applied:
        notes.append(f"batch: prices from {_SOURCE} batch variant")
    total = usage.total_input
    # Which cliff tier each price is on depends only on how many tier starts the total passes.
    position = sum(total > start for start in found.starts) if found.starts else 0
    filled = found.filled.get(position)
    if filled is None:
        values = tuple(_tier(value, total) for value in found.values)
        filled = found.filled[position] = _filled(_published(values))
    notes.extend(filled[1])
    return filled[0], found.source, found.batch_applied


#: genai-prices' field for each of Rates' fields, in the order Rates takes them.
_GENAI_KEYS = (
    "input_mtok",
    "output_mtok",
    "cache_write_mtok",
    "cache_write_1h_mtok",
    "cache_read_mtok",
)


@attrs.frozen
class _Listing:
    """What genai-prices lists for one model, day and batch flag, short of the tier choice.

    ``values`` are its five prices (a ``TieredPrices`` where they have cliff tiers),
    ``starts`` every tier start among them; ``filled`` memoises the filled rates and their
    notes per tier position (how many starts the total input passes). ``daily`` is false
    when a price constraint hangs on more than the UTC date: such a listing is not kept.
    """

    priced: bool
    source: str  # "genai-prices x.y.z (id)", or why there is no price
    batch_applied: bool = False
    values: tuple[object, ...] = ()
    starts: tuple[int, ...] = ()
    daily: bool = True
    filled: dict[int, tuple[Rates, tuple[str, ...]]] = attrs.field(factory=dict, eq=False)


# Every turn prices its usage, and finding the model in genai-prices (lookup, dated
# constraints, batch variant, tiers, then a Rates built and filled) costs more than the
# arithmetic. What is found depends only on the price table, the model, the UTC date and the
# batch flag, so it is kept per (model, date, batch) for the table it came from: a new
# table (genai-prices' UpdatePrices, set_custom_snapshot) empties it, a new day is a new
# key, and overrides never reach it (_resolve applies them first). Bounded: emptied when it
# reaches _LISTED_MAX entries (a few per model per day are used).
_LISTED_MAX = 256
_listed_cache: tuple[object, dict[tuple[str, dt.date, bool], _Listing]] = (None, {})


def _listed(model: str, when: dt.datetime, batch: bool) -> _Listing:
    global _listed_cache
    snapshot = data_snapshot.get_snapshot()
    if type(when) is not dt.datetime:
        # Not a plain datetime (a subclass, or a date by mistake): looked up as before.
        return _look_up(snapshot, model, when, batch)
    table, entries = _listed_cache
    if table is not snapshot:
        entries = {}
        _listed_cache = (snapshot, entries)
    # The UTC date as genai-prices' StartDateConstraint reads it (a naive time is UTC).
    utc = when if when.tzinfo is None else when.astimezone(dt.timezone.utc)
    key = (model, utc.date(), batch)
    found = entries.get(key)
    if found is None:
        found = _look_up(snapshot, model, when, batch)
        if found.daily:
            if len(entries) >= _LISTED_MAX:
                entries.clear()
            entries[key] = found
    return found


def _look_up(
    snapshot: data_snapshot.DataSnapshot, model: str, when: dt.datetime, batch: bool
) -> _Listing:
    try:
        _, info = snapshot.find_provider_model(model, None, "anthropic", None)
    except LookupError:
        reason = f"no price for model {model!r} in {_SOURCE}; pass overrides=Rates(...)"
        return _Listing(priced=False, source=reason)
    conditional = [] if isinstance(info.prices, ModelPrice) else info.prices
    constraints = [p.constraint for p in (*conditional, *(info.price_variants or ()))]
    daily = all(c is None or type(c) is StartDateConstraint for c in constraints)
    standard = info.get_prices(when)
    chosen = info.get_prices(when, {"processing": "batch"}) if batch else standard
    values = tuple(getattr(chosen, key, None) for key in _GENAI_KEYS)
    if values[0] is None or values[1] is None:
        reason = f"{_SOURCE} has no token prices for {model!r}"
        return _Listing(priced=False, source=reason, daily=daily)
    starts = sorted({tier.start for value in values for tier in getattr(value, "tiers", ())})
    return _Listing(
        priced=True,
        source=f"{_SOURCE} ({info.id})",
        batch_applied=batch and chosen != standard,
        values=values,
        starts=tuple(starts),
        daily=daily,
    )


def _published(values: tuple[Decimal | None, ...]) -> Rates:
    inp, out, w5, w1, read = values
    # _look_up returns unpriced without these two.
    assert inp is not None
    assert out is not None
    return Rates(input=inp, output=out, cache_write_5m=w5, cache_write_1h=w1, cache_read=read)


# Filling a Rates (ten Decimal conversions, an attrs.evolve) costs more than the arithmetic:
# an override's filled rates are kept on its values (it is passed at every call); a listed
# model's are kept on its _Listing, per tier position.
@functools.lru_cache(maxsize=256)
def _filled(rates: Rates) -> tuple[Rates, tuple[str, ...]]:
    return rates.filled()


def _tier(value: object, total_input: int) -> Decimal | None:
    """Resolve a genai-prices rate, applying its cliff tiers on total input tokens."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    base: Decimal = getattr(value, "base")  # noqa: B009 (TieredPrices is untyped here)
    for tier in sorted(getattr(value, "tiers"), key=lambda t: t.start, reverse=True):  # noqa: B009
        if total_input > tier.start:
            return Decimal(tier.price)
    return base


def _override_for(model: str, overrides: Rates | Mapping[str, Rates] | None) -> Rates | None:
    if overrides is None or isinstance(overrides, Rates):
        return overrides
    if not isinstance(overrides, Mapping):
        raise TypeError("overrides must be a convo.Rates or a mapping of model id to Rates")
    for key in (model, model.removesuffix("-latest"), re.sub(r"-\d{8}$", "", model)):
        if key in overrides:
            rates = overrides[key]
            if not isinstance(rates, Rates):
                raise TypeError(f"overrides[{key!r}] must be a convo.Rates, got {rates!r}")
            return rates
    return None


def _version(model: str) -> tuple[int, int]:
    """Return (major, minor) of a Claude model id; (0, 0) when it has none."""
    parts = [int(p) for p in model.split("-") if p.isdigit() and len(p) <= 2]
    if not parts:
        return (0, 0)
    return (parts[0], parts[1] if len(parts) > 1 else 0)


def _cost(
    usage: Usage, model: str, rates: Rates, weight: int, source: str, notes: tuple[str, ...]
) -> Cost:
    # filled() guarantees every cache rate; the asserts narrow the types for mypy.
    assert rates.cache_read is not None
    assert rates.cache_write_5m is not None
    assert rates.cache_write_1h is not None
    inp = usage.input * rates.input / _MTOK
    read = usage.cache_read * rates.cache_read / _MTOK
    w5 = usage.cache_write_5m * rates.cache_write_5m / _MTOK
    w1 = usage.cache_write_1h * rates.cache_write_1h / _MTOK
    out = usage.output * rates.output / _MTOK
    total = inp + read + w5 + w1 + out
    uncached = (usage.total_input * rates.input + usage.output * rates.output) / _MTOK
    return Cost(
        usd=total,
        rate_limit_tokens=weight,
        model=model,
        input_usd=inp,
        cache_read_usd=read,
        cache_write_5m_usd=w5,
        cache_write_1h_usd=w1,
        output_usd=out,
        saved_usd=uncached - total,
        source=source,
        rates=rates,
        notes=notes,
    )

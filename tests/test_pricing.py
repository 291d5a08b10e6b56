"""Pricing: true cost by kind, savings, rate-limit weight, unknown models, hit rates."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import ClassVar

import genai_prices
import pytest
from genai_prices import data_snapshot
from genai_prices.types import ConditionalPrice, ModelPrice, TimeOfDateConstraint

from convo import pricing
from convo.pricing import Rates, price, rate_limit_tokens, request_hit_rate, token_hit_rate
from convo.usage import Usage

#: Published per-million prices (input, 5m write, 1h write, read, output), typed in here
#: from the pricing page so the test does not share a table with the code under test.
PUBLISHED = {
    "claude-sonnet-4-5": ("3", "3.75", "6", "0.30", "15"),
    "claude-sonnet-4-6": ("3", "3.75", "6", "0.30", "15"),
    "claude-opus-4-5": ("5", "6.25", "10", "0.50", "25"),
    "claude-opus-4-6": ("5", "6.25", "10", "0.50", "25"),
    "claude-opus-4-7": ("5", "6.25", "10", "0.50", "25"),
    "claude-opus-4-8": ("5", "6.25", "10", "0.50", "25"),
    "claude-haiku-4-5": ("1", "1.25", "2", "0.10", "5"),
}
AT = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
_PLUS_2 = dt.timezone(dt.timedelta(hours=2))


def _mission(ttl: str) -> Usage:
    """The mission row: input 3, output 1,021, read 9,390, write 58,869 at *ttl*."""
    w5, w1 = (58869, 0) if ttl == "5m" else (0, 58869)
    return Usage(input=3, cache_read=9390, cache_write_5m=w5, cache_write_1h=w1, output=1021)


def _independent(model: str, ttl: str) -> Decimal:
    inp, w5, w1, read, out = (Decimal(p) for p in PUBLISHED[model])
    write = w5 if ttl == "5m" else w1
    return (3 * inp + 9390 * read + 58869 * write + 1021 * out) / Decimal(1_000_000)


class TestMissionRow:
    @pytest.mark.parametrize("ttl", ["5m", "1h"])
    @pytest.mark.parametrize("model", sorted(PUBLISHED))
    def test_cost_matches_published_prices(self, model: str, ttl: str) -> None:
        """Cost equals an independent computation from the published per-MTok prices."""
        cost = price(_mission(ttl), model, at=AT)
        assert cost.usd == _independent(model, ttl)
        assert cost.reason is None

    def test_sonnet_figures(self) -> None:
        """Sonnet 4.6: $0.23889975 with 5m writes, $0.371355 with 1h writes."""
        assert price(_mission("5m"), "claude-sonnet-4-6", at=AT).usd == Decimal("0.23889975")
        assert price(_mission("1h"), "claude-sonnet-4-6", at=AT).usd == Decimal("0.371355")

    @pytest.mark.parametrize("model", sorted(PUBLISHED))
    def test_rate_limit_weight_excludes_reads(self, model: str) -> None:
        """On current models ITPM weight is input + writes = 58,872; reads are free."""
        assert price(_mission("5m"), model, at=AT).rate_limit_tokens == 3 + 58869

    def test_rate_limit_weight_haiku_35_counts_reads(self) -> None:
        """On Haiku 3.5 cache reads count toward ITPM: weight is the total input."""
        assert rate_limit_tokens(_mission("5m"), "claude-3-5-haiku") == 68262

    def test_breakdown_sums_to_total(self) -> None:
        """The per-kind breakdown adds up to usd exactly."""
        cost = price(_mission("1h"), "claude-opus-4-6", at=AT)
        parts = [v for v in cost.breakdown.values() if v is not None]
        assert len(parts) == 5
        assert sum(parts, Decimal(0)) == cost.usd
        assert cost.cache_write_5m_usd == 0
        assert cost.cache_write_1h_usd == Decimal(58869) * 10 / Decimal(1_000_000)

    def test_agrees_with_genai_prices_total(self) -> None:
        """convo's per-kind total equals genai-prices' own calc_price total."""
        gp = genai_prices.calc_price(
            genai_prices.Usage(
                input_tokens=68262,
                cache_read_tokens=9390,
                cache_write_tokens=58869,
                output_tokens=1021,
            ),
            "claude-sonnet-4-6",
            provider_id="anthropic",
            genai_request_timestamp=AT,
        )
        assert price(_mission("5m"), "claude-sonnet-4-6", at=AT).usd == gp.total_price

    def test_source_names_version(self) -> None:
        """The price source records genai-prices and its version."""
        cost = price(_mission("5m"), "claude-sonnet-4-6", at=AT)
        assert cost.source.startswith(f"genai-prices {genai_prices.__version__}")


class TestSaved:
    def test_saved_is_uncached_minus_actual(self) -> None:
        """saved_usd = all input at base rate + output, minus the actual cost."""
        u = Usage(input=10, cache_read=100_000, output=50)
        cost = price(u, "claude-sonnet-4-6", at=AT)
        uncached = (Decimal(100_010) * 3 + 50 * 15) / Decimal(1_000_000)
        assert cost.saved_usd == uncached - cost.usd  # type: ignore[operator]
        assert cost.saved_usd == Decimal(100_000) * Decimal("2.7") / Decimal(1_000_000)

    def test_saved_negative_on_write_only(self) -> None:
        """A write never read back costs more than no caching: saved is negative."""
        cost = price(_mission("5m"), "claude-sonnet-4-6", at=AT)
        assert cost.saved_usd is not None
        assert cost.saved_usd < 0


class TestUnknownModel:
    def test_usd_none_with_reason(self) -> None:
        """A model with no known price gives usd=None and a reason, never a default."""
        cost = price(_mission("5m"), "claude-imaginary-9", at=AT)
        assert cost.usd is None
        assert cost.saved_usd is None
        assert all(v is None for v in cost.breakdown.values())
        assert cost.reason is not None
        assert "claude-imaginary-9" in cost.reason

    def test_weight_still_known(self) -> None:
        """Rate-limit weight needs no price: reads assumed not to count."""
        assert price(_mission("5m"), "claude-imaginary-9").rate_limit_tokens == 58872

    def test_override_prices_unknown_model(self) -> None:
        """User overrides price a model genai-prices does not know."""
        rates = Rates(input=2, output=8)
        cost = price(_mission("1h"), "private-model", overrides={"private-model": rates})
        expected = (3 * 2 + 9390 * Decimal("0.2") + 58869 * 4 + 1021 * 8) / Decimal(1_000_000)
        assert cost.usd == expected
        assert cost.source == "override"
        assert len(cost.notes) == 3  # each derived cache rate is recorded


class TestMultipliers:
    def test_batch_half(self) -> None:
        """Batch costs half of standard, before and after genai-prices' batch variant date."""
        for at in (AT, dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)):
            std = price(_mission("5m"), "claude-sonnet-4-6", at=at).usd
            bat = price(_mission("5m"), "claude-sonnet-4-6", at=at, batch=True).usd
            assert std is not None
            assert bat == std / 2

    def test_us_geo_on_46(self) -> None:
        """US-only inference_geo is 1.1x on 4.6+ models."""
        std = price(_mission("5m"), "claude-opus-4-6", at=AT).usd
        assert std is not None
        assert price(_mission("5m"), "claude-opus-4-6", at=AT, inference_geo="us").usd == (
            std * Decimal("1.1")
        )

    def test_us_geo_not_on_45(self) -> None:
        """US-only inference_geo does not change prices of 4.5 models."""
        u = Usage(input=1000, inference_geo="us")
        assert price(u, "claude-haiku-4-5", at=AT).usd == Decimal("0.001")

    def test_geo_from_usage(self) -> None:
        """The inference_geo reported in usage is used when none is passed."""
        u = Usage(input=1_000_000, inference_geo="us")
        assert price(u, "claude-sonnet-4-6", at=AT).usd == Decimal("3.3")


class TestMisuse:
    def test_usage_type(self) -> None:
        """price() of a dict is a TypeError."""
        with pytest.raises(TypeError, match=r"convo\.Usage"):
            price({"input_tokens": 1}, "claude-sonnet-4-6")  # type: ignore[arg-type]

    def test_negative_rate(self) -> None:
        """A negative override rate is a ValueError."""
        with pytest.raises(ValueError, match=">= 0"):
            Rates(input=-1, output=1)


class TestHitRates:
    def test_token_hit_rate(self) -> None:
        """Token hit rate is cache_read / total_input, at most 1."""
        rate = token_hit_rate(_mission("5m"))
        assert rate == 9390 / 68262
        assert token_hit_rate(Usage(input=1, cache_read=1000)) == 1000 / 1001

    def test_token_hit_rate_empty(self) -> None:
        """No input gives no rate rather than a division by zero."""
        assert token_hit_rate(Usage()) is None

    def test_request_hit_rate(self) -> None:
        """Request hit rate is the share of requests with any cache read."""
        usages = [Usage(cache_read=5), Usage(input=5), Usage(cache_read=1), Usage(input=1)]
        assert request_hit_rate(usages) == 0.5
        assert request_hit_rate([]) is None


class TestServiceTier:
    """A usage that says it ran through the Batch API is priced as batch."""

    def test_batch_tier_halves_the_price_without_the_flag(self) -> None:
        """service_tier 'batch' prices like batch=True; the note says where it came from."""
        usage = Usage.from_dict(
            {"input_tokens": 1_000_000, "output_tokens": 0, "service_tier": "batch"}
        )
        plain = Usage.from_dict({"input_tokens": 1_000_000, "output_tokens": 0})
        tiered = price(usage, "claude-sonnet-4-6")
        flagged = price(plain, "claude-sonnet-4-6", batch=True)
        assert tiered.usd == flagged.usd == price(plain, "claude-sonnet-4-6").usd / 2  # type: ignore[operator]
        assert "batch: taken from usage.service_tier" in tiered.notes


class TestRatesCache:
    """Resolved rates are reused across calls without ever serving another case's rates."""

    def test_repeat_prices_are_equal(self) -> None:
        """Pricing the same usage again gives an equal Cost."""
        first = price(_mission("5m"), "claude-sonnet-4-6", at=AT)
        again = price(_mission("5m"), "claude-sonnet-4-6", at=AT)
        assert first == again

    def test_tiers_alternate_correctly(self) -> None:
        """A long-context request between two short ones gets its own tier, and the short
        ones the base rate, whatever was priced before."""
        short, long = Usage(input=100_000, output=10), Usage(input=300_000, output=10)
        model = "claude-sonnet-4-5"
        rates = [price(u, model, at=AT).rates for u in (short, long, short)]
        assert [r.input for r in rates if r is not None] == [Decimal(3), Decimal(6), Decimal(3)]

    def test_batch_and_standard_alternate_correctly(self) -> None:
        """Batch and standard prices of one usage interleave without mixing."""
        usage = _mission("1h")
        costs = [
            price(usage, "claude-opus-4-6", at=AT, batch=batch).usd
            for batch in (False, True, False)
        ]
        assert costs[0] == costs[2] == 2 * costs[1]  # type: ignore[operator]


def _table_with(model: str, prices: object) -> data_snapshot.DataSnapshot:
    """A genai-prices table whose only Anthropic model is *model*, at *prices*."""
    provider, info = data_snapshot.get_snapshot().find_provider_model(
        model, None, "anthropic", None
    )
    changed = dataclasses.replace(provider, models=[dataclasses.replace(info, prices=prices)])
    return data_snapshot.DataSnapshot(providers=[changed], from_auto_update=False)


@pytest.fixture
def custom_table() -> Iterator[Callable[[data_snapshot.DataSnapshot], None]]:
    """Install a genai-prices table for the test (as UpdatePrices would); restored after."""
    yield data_snapshot.set_custom_snapshot
    data_snapshot.set_custom_snapshot(None)


class TestListedCache:
    """What genai-prices lists for a model is kept per (model, UTC date, batch) and table,
    and a call answers as it would with nothing kept."""

    CASES: ClassVar[list[tuple[Usage, str, dt.datetime]]] = [
        (Usage(input=300_000, output=10), "claude-sonnet-4-6", dt.datetime(2026, 3, 12, 23, 30)),
        (Usage(input=300_000, output=10), "claude-sonnet-4-6", dt.datetime(2026, 3, 13, 0, 30)),
        (_mission("1h"), "claude-sonnet-4-5", AT),
        (Usage(input=300_000, cache_read=5), "claude-sonnet-4-5", AT),
        (_mission("5m"), "claude-opus-4-6", dt.datetime(2026, 10, 14, 0, 30, tzinfo=_PLUS_2)),
        (_mission("5m"), "claude-opus-4-6", dt.datetime(2026, 10, 14, 2, 30, tzinfo=_PLUS_2)),
        (_mission("5m"), "claude-haiku-4-5", AT),
        (_mission("5m"), "gpt-4o-mini-claude", AT),
    ]

    @pytest.mark.parametrize("batch", [False, True])
    def test_same_answer_as_uncached(self, batch: bool) -> None:
        """Each case, priced with the cache warm from all the others, equals it priced
        with the cache emptied first (dates, tiers, batch and unknown models included)."""
        fresh = []
        for usage, model, at in self.CASES:
            pricing._listed_cache = (None, {})
            fresh.append(price(usage, model, at=at, batch=batch))
        for _ in range(2):
            warm = [price(usage, model, at=at, batch=batch) for usage, model, at in self.CASES]
            assert warm == fresh

    def test_date_changes_the_price(self) -> None:
        """The day the tiers ended (UTC) prices differently from the day before, in any
        order and whatever the offset the time was given in."""
        usage, model = Usage(input=300_000, output=10), "claude-sonnet-4-6"
        before = dt.datetime(2026, 3, 13, 0, 30, tzinfo=_PLUS_2)  # 12 March, 22:30 UTC
        after = dt.datetime(2026, 3, 13, 2, 30, tzinfo=_PLUS_2)  # 13 March, 00:30 UTC
        rates = [price(usage, model, at=at).rates for at in (before, after, before, after)]
        assert [r.input for r in rates if r is not None] == [6, 3, 6, 3]

    def test_override_not_served_from_cache(self) -> None:
        """An override applies with the model's listing kept, and does not replace it."""
        usage, model = _mission("5m"), "claude-haiku-4-5"
        listed = price(usage, model, at=AT)
        own = price(usage, model, at=AT, overrides={model: Rates(input=7, output=9)})
        assert own.source == "override"
        assert own.rates is not None
        assert own.rates.input == 7
        assert price(usage, model, at=AT) == listed

    def test_new_table_empties_it(self, custom_table: Callable[..., None]) -> None:
        """A new genai-prices table (an update) is read, not the kept listing; and the
        bundled one again once it is back."""
        usage, model = _mission("5m"), "claude-haiku-4-5"
        bundled = price(usage, model, at=AT)
        custom_table(_table_with(model, ModelPrice(input_mtok=Decimal(2), output_mtok=Decimal(8))))
        updated = price(usage, model, at=AT)
        assert updated.rates is not None
        assert updated.rates.input == 2
        data_snapshot.set_custom_snapshot(None)
        assert price(usage, model, at=AT) == bundled

    def test_time_of_day_prices_not_kept(self, custom_table: Callable[..., None]) -> None:
        """A price that hangs on the time of day (off-peak) is looked up at each call."""
        model = "claude-haiku-4-5"
        peak = ModelPrice(input_mtok=Decimal(2), output_mtok=Decimal(8))
        off_peak = ModelPrice(input_mtok=Decimal(1), output_mtok=Decimal(4))
        night = TimeOfDateConstraint(start_time=dt.time(22), end_time=dt.time(6))
        custom_table(
            _table_with(
                model, [ConditionalPrice(prices=peak), ConditionalPrice(night, prices=off_peak)]
            )
        )
        day = [dt.datetime(2026, 5, 1, h, tzinfo=dt.timezone.utc) for h in (12, 23, 12, 23)]
        rates = [price(Usage(input=10), model, at=at).rates for at in day]
        assert [r.input for r in rates if r is not None] == [2, 1, 2, 1]

    def test_bounded(self) -> None:
        """Past its bound the cache is emptied rather than grown."""
        start = dt.datetime(2020, 1, 1)
        for day in range(pricing._LISTED_MAX + 10):
            price(Usage(input=10), "claude-haiku-4-5", at=start + dt.timedelta(days=day))
        assert 0 < len(pricing._listed_cache[1]) <= pricing._LISTED_MAX

"""CacheTracker without a server: predictions from the caching rules, outcomes, calibration."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from convo.layout import History, Layout, Prefix
from convo.tracker import CacheTracker, Prediction

MODEL = "claude-sonnet-4-6"
BIG = "rules " * 1200


@attrs.frozen
class FakeUsage:
    input: int
    cache_read: int
    cache_write_5m: int
    cache_write_1h: int


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def as_usage(p: Prediction, scale: float = 1.0) -> FakeUsage:
    """The usage a server would report if the prediction were right (optionally scaled)."""
    return FakeUsage(
        round(p.input * scale),
        round(p.cache_read * scale),
        round(p.cache_write_5m * scale),
        round(p.cache_write_1h * scale),
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tracker(clock: Clock) -> CacheTracker:
    return CacheTracker(clock=clock)


def layout(**kwargs: Any) -> Layout:
    return Layout(Prefix(model=MODEL, system=[BIG], ttl=kwargs.pop("ttl", "5m")), **kwargs)


def turn(history: History, i: int) -> None:
    history.append({"role": "assistant", "content": f"answer {i}"})
    history.append({"role": "user", "content": f"question {i}"})


class TestPredict:
    def test_first_request_is_cold_and_writes_everything_cacheable(
        self, tracker: CacheTracker
    ) -> None:
        """With nothing cached, the prediction writes through the last breakpoint."""
        r = layout().render(History([{"role": "user", "content": "hi"}]))
        p = tracker.predict(r)
        assert p.reason == "cold"
        assert p.cache_read == 0
        assert p.cache_write_5m == r.breakpoints[-1].tokens
        assert p.input == r.tokens - r.breakpoints[-1].tokens

    def test_second_turn_reads_what_the_first_wrote(self, tracker: CacheTracker) -> None:
        """After an observed write, the next turn reads it and writes only the new part."""
        lay, history = layout(), History([{"role": "user", "content": "hi"}])
        first = lay.render(history)
        tracker.observe(p := tracker.predict(first), as_usage(p))
        turn(history, 0)
        second = tracker.predict(lay.render(history))
        assert (second.reason, second.cache_read) == ("hit", first.breakpoints[-1].tokens)
        assert second.cache_write_5m == second.fingerprint.total_tokens - second.cache_read  # type: ignore[union-attr]

    def test_predict_changes_no_state(self, tracker: CacheTracker) -> None:
        """Predicting twice without observing gives the same prediction."""
        r = layout().render(History([{"role": "user", "content": "hi"}]))
        assert tracker.predict(r) == tracker.predict(r)
        assert tracker.entries() == ()

    def test_one_hour_prefix_splits_writes_by_ttl(self, tracker: CacheTracker) -> None:
        """A 1h prefix and 5m history split writes by the A/B/C rule."""
        r = layout(ttl="1h", history_ttl="5m").render(History([{"role": "user", "content": "hi"}]))
        p = tracker.predict(r)
        prefix_bp, newest = r.breakpoints
        assert p.cache_write_1h == prefix_bp.tokens
        assert p.cache_write_5m == newest.tokens - prefix_bp.tokens

    def test_raw_body_predicts_like_rendered_request(self, tracker: CacheTracker) -> None:
        """predict() on the body dict gives the same figures as on the RenderedRequest."""
        r = layout().render(History([{"role": "user", "content": "hi"}]))
        a, b = tracker.predict(r), tracker.predict(r.body)
        assert (a.cache_read, a.cache_write_5m, a.cache_write_1h, a.input) == (
            b.cache_read,
            b.cache_write_5m,
            b.cache_write_1h,
            b.input,
        )


class TestReasons:
    def test_expired_after_ttl(self, tracker: CacheTracker, clock: Clock) -> None:
        """A gap longer than the TTL predicts 'expired'."""
        lay, history = layout(), History([{"role": "user", "content": "hi"}])
        tracker.observe(p := tracker.predict(lay.render(history)), as_usage(p))
        turn(history, 0)
        clock.now += 301
        assert tracker.predict(lay.render(history)).reason == "expired"

    def test_hit_refreshes_lifetime(self, tracker: CacheTracker, clock: Clock) -> None:
        """A read at 4 minutes restarts the 5-minute clock from that request's start."""
        lay, history = layout(), History([{"role": "user", "content": "hi"}])
        tracker.observe(p := tracker.predict(lay.render(history)), as_usage(p))
        clock.now += 240
        tracker.observe(p := tracker.predict(lay.render(history)), as_usage(p))
        assert p.reason == "hit"
        clock.now += 240
        assert tracker.predict(lay.render(history)).reason == "hit"

    def test_below_minimum(self, tracker: CacheTracker) -> None:
        """A request whose breakpoints are all below the minimum says so."""
        r = layout().render(History([{"role": "user", "content": "hi"}]))
        p = tracker.predict(r.body | {"model": "claude-haiku-4-5"})
        assert p.reason == "below_minimum"
        assert (p.cache_read, p.cache_write) == (0, 0)

    def test_evicted_when_server_reads_less(self, tracker: CacheTracker) -> None:
        """Observed reads below the prediction give 'evicted_or_unknown' and drop the entry."""
        lay, history = layout(), History([{"role": "user", "content": "hi"}])
        tracker.observe(p := tracker.predict(lay.render(history)), as_usage(p))
        turn(history, 0)
        p = tracker.predict(lay.render(history))
        cold = FakeUsage(p.input, 0, p.cache_read + p.cache_write_5m, 0)
        outcome = tracker.observe(p, cold)
        assert (outcome.reason, outcome.exact) == ("evicted_or_unknown", False)
        assert outcome.hit == -1

    def test_server_diagnostics_recorded_and_disagreement_flagged(
        self, tracker: CacheTracker
    ) -> None:
        """The server's cache_miss_reason is kept beside the local reason; a mismatch is flagged."""
        r = layout().render(History([{"role": "user", "content": "hi"}]))
        p = tracker.predict(r)
        diagnostics = {
            "cache_miss_reason": {"type": "tools_changed", "cache_missed_input_tokens": 7}
        }
        outcome = tracker.observe(p, as_usage(p), diagnostics)
        assert (outcome.reason, outcome.server_reason, outcome.server_missed_tokens) == (
            "cold",
            "tools_changed",
            7,
        )
        assert outcome.disagrees


class TestCalibration:
    def test_factor_converges_to_observed_ratio(self, tracker: CacheTracker) -> None:
        """When the server counts 1.5x the estimate, predictions scale to match."""
        r = layout().render(History([{"role": "user", "content": "hi"}]))
        for _ in range(3):
            p = tracker.predict(r)
            tracker.observe(p, as_usage(tracker.predict(r), 1.5 / p.factor))
        assert tracker.factor(MODEL) == pytest.approx(1.5, rel=1e-3)
        assert tracker.predict(r).total_input == pytest.approx(1.5 * r.tokens, rel=1e-3)

    def test_exact_estimates_keep_factor_one(self, tracker: CacheTracker) -> None:
        """Observed totals equal to the estimate keep the factor at exactly 1.0."""
        r = layout().render(History([{"role": "user", "content": "hi"}]))
        for _ in range(5):
            tracker.observe(p := tracker.predict(r), as_usage(p))
        assert tracker.factor(MODEL) == 1.0


class TestRefreshRule:
    """A read refreshes its whole path ("path", default) or only the entry read ("entry")."""

    @pytest.mark.parametrize("rule", ["path", "entry"])
    def test_deeper_read_refreshes_the_prefix_only_under_path(
        self, clock: Clock, rule: Any
    ) -> None:
        """A at t=0 writes the prefix and its turn, reads the turn at t=100; at t=350 a new
        conversation on the same prefix reads it under "path", finds it expired under "entry"."""
        tracker = CacheTracker(clock=clock, refresh=rule)
        lay = layout()
        history = History([{"role": "user", "content": "question"}])
        tracker.observe(p := tracker.predict(lay.render(history)), as_usage(p))
        clock.now += 100
        turn(history, 0)
        p = tracker.predict(lay.render(history))
        assert p.cache_read > lay.prefix.tokens
        tracker.observe(p, as_usage(p))
        clock.now += 250
        other = tracker.predict(
            lay.render(History([{"role": "user", "content": "another"}])), previous=None
        )
        if rule == "path":
            assert (other.cache_read, other.reason) == (lay.prefix.tokens, "hit")
        else:
            assert (other.cache_read, other.reason) == (0, "expired")

    def test_unknown_rule_is_refused(self) -> None:
        """refresh must be "path" or "entry"."""
        with pytest.raises(ValueError, match="refresh"):
            CacheTracker(refresh="deep")  # type: ignore[arg-type]

    def test_a_read_does_not_revive_an_expired_entry(self, clock: Clock) -> None:
        """Under "path", a read deeper on the path after the prefix entry expired leaves it
        expired: the 1h history entry is read at t=400, the 5m prefix entry died at 300."""
        tracker = CacheTracker(clock=clock)
        lay = Layout(Prefix(model=MODEL, system=[BIG], ttl="1h"), history_ttl="1h")
        history = History([{"role": "user", "content": "question"}])
        first = tracker.predict(lay.render(history))
        tracker.observe(first, as_usage(first))
        prefix_entry = next(e for e in tracker.entries() if e.tokens == lay.prefix.tokens)
        short = attrs.evolve(prefix_entry, ttl="5m", expires_at=clock.now + 300)
        tracker.add_entry(short)
        clock.now += 400
        turn(history, 0)
        again = tracker.predict(lay.render(history))
        tracker.observe(again, as_usage(again))
        assert tracker.expires_at(short) == short.expires_at

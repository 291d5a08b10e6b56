"""A prefix's pool shared by processes (convo.policy.shared): the pure merge, no Redis."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convo.policy import PrefixPool
from convo.policy.shared import Observation, SharedPrefixPool

TIMES = (300.0, 3600.0)


def exchange(*pools: SharedPrefixPool) -> None:
    """What the Redis exchange does, without Redis: every pool's queue to every other."""
    sent = [pool.take() for pool in pools]
    for pool in pools:
        for observations in sent:
            pool.merge(observations)


def answers(pool: PrefixPool, conversations: Sequence[str], now: float) -> dict[str, object]:
    """What the policy reads from a pool."""
    return {
        "prefix_gaps": pool.prefix_gaps(),
        "counts": pool.prefix_gap_counts(),
        "lapse": pool.prefix_lapse(300.0),
        "last_use": pool.last_use(),
        "growth": pool.typical_growth(),
        "rescue": pool.rescue(now),
        "live": pool.live(now),
        "cdf": [pool.next_turn_cdf(c, now, TIMES) for c in (None, *conversations)],
        "next": [
            pool.next_turn(c, now, after=300.0, before=3600.0) for c in (None, *conversations)
        ],
        "latest": [pool.latest_turn(c) for c in conversations],
    }


class TestSharedPrefixPool:
    """Merged observations give the statistics one process would have had."""

    def test_another_processs_use_splits_the_gap_it_falls_in(self) -> None:
        """A used the prefix at 0 and 600 s, B at 300 s: both see two gaps of 300 s."""
        a, b = SharedPrefixPool("a"), SharedPrefixPool("b")
        a.record_use(1000.0)
        a.record_use(1600.0)
        b.record_use(1300.0)
        assert a.prefix_gaps() == [600.0]
        exchange(a, b)
        assert a.prefix_gaps() == b.prefix_gaps() == [300.0, 300.0]
        assert a.last_use() == b.last_use() == 1600.0

    def test_alone_it_answers_like_a_plain_pool(self) -> None:
        """Recording the same turns, a shared pool and a plain one answer the same."""
        plain, shared = PrefixPool(), SharedPrefixPool("a")
        for pool in (plain, shared):
            for at, conversation in ((0.0, "x"), (200.0, "y"), (700.0, "x"), (4000.0, "y")):
                pool.record_use(at)
                pool.record_turn(conversation, at)
                pool.record_growth(int(at) // 10)
            pool.record_touch(4100.0)
        assert answers(shared, ["x", "y"], 4200.0) == answers(plain, ["x", "y"], 4200.0)

    def test_merging_the_same_observations_again_changes_nothing(self) -> None:
        """Observations merged twice count once."""
        a, b = SharedPrefixPool("a"), SharedPrefixPool("b")
        for at in (0.0, 400.0, 1000.0):
            a.record_use(at)
            a.record_turn("x", at)
        a.record_growth(120)
        sent = a.take()
        assert b.merge(sent) == len(sent) == 7
        before = answers(b, ["x"], 1100.0)
        assert b.merge(sent) == 0
        assert answers(b, ["x"], 1100.0) == before == answers(a, ["x"], 1100.0)

    def test_a_copy_sent_again_after_a_lost_reply_is_merged_once(self) -> None:
        """Given back after a failed send, observations keep their numbers: the copy that
        arrives the second time is skipped, and what was recorded meanwhile is not."""
        a, b = SharedPrefixPool("a"), SharedPrefixPool("b")
        a.record_use(0.0)
        a.record_use(400.0)
        first = a.take()
        a.untake(first)  # the send failed, as far as a knows; it may have landed
        a.record_use(800.0)
        again = a.take()
        assert [o.seq for o in again] == [1, 2, 3]
        assert b.merge(first) == 2
        assert b.merge(again) == 1
        assert b.prefix_gaps() == [400.0, 400.0]

    def test_a_pool_never_merges_its_own_observations(self) -> None:
        """Its own entries, read back from the shared stream, are skipped."""
        a = SharedPrefixPool("a")
        a.record_use(0.0)
        a.record_use(400.0)
        assert a.merge(a.take()) == 0
        assert a.prefix_gaps() == [400.0]

    def test_the_queue_keeps_the_latest_when_it_cannot_send(self) -> None:
        """At most ``keep`` observations wait to be sent; the oldest go first."""
        a = SharedPrefixPool("a", keep=3)
        for at in range(5):
            a.record_use(float(at))
        a.untake(a.take())
        assert [o.at for o in a.take()] == [2.0, 3.0, 4.0]

    def test_a_conversation_is_sent_as_a_digest(self) -> None:
        """A conversation's key (which may hold the caller's suffix) never leaves the
        process; another process pools its turns under the same digest."""
        a, b = SharedPrefixPool("a"), SharedPrefixPool("b")
        key = "d1g3st:User: Ada Lovelace, plan: pro"
        a.record_turn(key, 0.0)
        a.record_turn(key, 500.0)
        sent = a.take()
        assert all("Ada" not in value for o in sent for value in o.fields().values())
        b.merge(sent)
        assert b.latest_turn(key) == 500.0
        b.record_turn(key, 900.0)  # the conversation goes on in b: still one conversation
        one = PrefixPool()
        for at in (0.0, 500.0, 900.0):
            one.record_turn(key, at)
        assert answers(b, [key], 1000.0)["cdf"] == answers(one, [key], 1000.0)["cdf"]

    def test_a_late_use_of_its_own_splits_a_merged_gap(self) -> None:
        """A use recorded after a later one was merged still falls into place."""
        a, b = SharedPrefixPool("a"), SharedPrefixPool("b")
        b.record_use(0.0)
        b.record_use(1000.0)
        a.merge(b.take())
        a.record_use(400.0)
        assert a.prefix_gaps() == [400.0, 600.0]

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.integers(0, 3),  # the conversation (conversations 0-1 in a, 2-3 in b)
                st.floats(1.0, 5000.0),  # the time since the previous turn (anyone's)
                st.integers(0, 900),  # the tokens the turn added
            ),
            max_size=40,
        )
    )
    def test_two_processes_converge_to_the_one_that_saw_everything(
        self, turns: list[tuple[int, float, int]]
    ) -> None:
        """Turns of a fleet split over two processes, each conversation in one of them:
        after one exchange both pools answer as one pool that recorded every turn."""
        one, a, b = PrefixPool(), SharedPrefixPool("a"), SharedPrefixPool("b")
        now = 1000.0
        for conversation, gap, tokens in turns:
            now += gap
            for pool in (one, a if conversation < 2 else b):
                pool.record_use(now)
                pool.record_turn(f"c{conversation}", now)
                pool.record_growth(tokens)
        exchange(a, b)
        conversations = [f"c{c}" for c in range(4)]
        expected = answers(one, conversations, now + 60.0)
        assert answers(a, conversations, now + 60.0) == expected
        assert answers(b, conversations, now + 60.0) == expected


class TestObservation:
    """An observation as a Redis stream entry's fields, and back."""

    def test_fields_round_trip_as_bytes(self) -> None:
        """What redis-py returns (bytes) decodes to the observation sent."""
        sent = Observation("a", 7, "turn", 1234.5, "abc", 0)
        raw = {k.encode(): v.encode() for k, v in sent.fields().items()}
        assert Observation.from_fields(raw) == sent

    @pytest.mark.parametrize(
        "fields",
        [
            {"o": "a", "s": "1", "k": "forecast", "t": "1.0"},
            {"o": "a", "s": "one", "k": "use", "t": "1.0"},
            {"o": "a", "k": "use", "t": "1.0"},
            {"o": "a", "s": "1", "k": "use", "t": "nan"},
        ],
        ids=["unknown-kind", "bad-number", "missing-field", "not-a-time"],
    )
    def test_an_entry_it_cannot_read_is_skipped(self, fields: dict[str, str]) -> None:
        """An entry another version wrote gives None, not an error."""
        assert Observation.from_fields(fields) is None

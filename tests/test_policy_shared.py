"""A prefix's pool shared by processes (convo.policy.shared): the pure merge, no Redis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convo.policy import PrefixPool
from convo.policy.shared import Observation, SharedPrefixPool
from convo.policy.shared import conversation_digest as _digest

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
        "entry_ttl": pool.entry_ttl,
        "cdf": [pool.next_turn_cdf(c, now, TIMES) for c in (None, *conversations)],
        "next": [
            pool.next_turn(c, now, after=300.0, before=3600.0) for c in (None, *conversations)
        ],
        "latest": [pool.latest_turn(c) for c in conversations],
    }


def turn(pool: PrefixPool, conversation: str, at: float, ttl: str = "5m", tokens: int = 0) -> None:
    """What a session's turn records, in its order (convo.session.core: the entry's
    liveness is read before the turn's own use refreshes it)."""
    live = pool.live(at)
    pool.record_use(at)
    pool.record_turn(conversation, at)
    pool.record_write(ttl, live=live, at=at)
    pool.record_growth(tokens)


def rewarm(pool: PrefixPool, at: float, ttl: str = "5m") -> None:
    """What a sent pre-warm records: its send of the prefix, then its refresh."""
    pool.record_write(ttl, live=pool.live(at), at=at)
    pool.record_touch(at)


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
        """Recording the same turns, sends and re-warms, a shared pool and a plain one
        answer the same: the shared pool's judgement of which sends wrote the entry is the
        plain pool's *live* (two sessions at one instant included: the second reads)."""
        plain, shared = PrefixPool(), SharedPrefixPool("a")
        for pool in (plain, shared):
            for at, conversation, ttl in (
                (0.0, "x", "1h"),
                (200.0, "y", "5m"),
                (700.0, "x", "5m"),
                (4400.0, "y", "1h"),  # the entry lapsed at 4300 s: written for an hour
                (4400.0, "z", "5m"),
            ):
                turn(pool, conversation, at, ttl, int(at) // 10)
            rewarm(pool, 4650.0, "5m")
        assert shared.entry_ttl == "1h"
        assert answers(shared, ["x", "y"], 4700.0) == answers(plain, ["x", "y"], 4700.0)

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


Action = tuple[Literal["turn", "record", "send", "rewarm"], int, float, int, str]


class TestConversationsThatMove:
    """A conversation that moves between processes faster than they exchange keeps every
    gap: a turn that arrives after a later one splits the gap it falls in."""

    def test_a_turn_merged_after_a_later_one_splits_its_gap(self) -> None:
        """The user's turns at 0 and 600 s went to A, the one at 300 s to B: after the
        exchange both hold the conversation's two 300 s gaps, as one process would."""
        a, b, one = SharedPrefixPool("a"), SharedPrefixPool("b"), PrefixPool()
        for pool, at in ((a, 1000.0), (b, 1300.0), (a, 1600.0)):
            pool.record_turn("x", at)
        for at in (1000.0, 1300.0, 1600.0):
            one.record_turn("x", at)
        assert a.next_turn_cdf("x", 1700.0, TIMES) != one.next_turn_cdf("x", 1700.0, TIMES)
        exchange(a, b)
        for pool in (a, b):
            assert sorted(pool._turn_gaps) == sorted(pool._own[_digest("x")]) == [300.0, 300.0]
            assert pool.latest_turn("x") == 1600.0
            assert pool.next_turn_cdf("x", 1700.0, TIMES) == one.next_turn_cdf("x", 1700.0, TIMES)

    def test_a_local_turn_recorded_after_a_merged_later_one_falls_into_place(self) -> None:
        """B's turn at 900 s was merged before A recorded its own at 400 s (A's clock is
        behind, or its turn was slow to record): A's turn splits the 900 s gap."""
        a, b = SharedPrefixPool("a"), SharedPrefixPool("b")
        a.record_turn("x", 0.0)
        b.merge(a.take())
        b.record_turn("x", 900.0)
        a.merge(b.take())
        a.record_turn("x", 400.0)
        assert sorted(a._turn_gaps) == [400.0, 500.0]
        b.merge(a.take())
        assert sorted(b._turn_gaps) == [400.0, 500.0]

    def test_a_turn_before_the_conversations_first_adds_one_gap(self) -> None:
        """The conversation's first turn was in B, its second (merged first) in A."""
        a = SharedPrefixPool("a")
        a.record_turn("x", 500.0)
        a.merge([Observation("b", 1, "turn", 200.0, _digest("x"))])
        assert list(a._turn_gaps) == list(a._own[_digest("x")]) == [300.0]
        assert a.latest_turn("x") == 500.0

    def test_a_turn_at_a_time_already_known_adds_nothing(self) -> None:
        """The same turn twice (two sessions that continue one stored conversation at the
        same instant, say) is one turn, as in one process."""
        a = SharedPrefixPool("a")
        for at in (0.0, 300.0, 900.0):
            a.record_turn("x", at)
        a.merge([Observation("b", 1, "turn", 300.0, _digest("x"))])
        assert sorted(a._turn_gaps) == [300.0, 600.0]

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.tuples(
                # "turn": a turn starts, in process a or b (the conversation may move);
                # "record": a process records its oldest turn not yet recorded (a process
                # may record late, after the other's later turns reached it); "send": one
                # process's queue reaches the other; "rewarm": a process re-warms.
                st.sampled_from(["turn", "turn", "turn", "record", "send", "rewarm"]),
                st.integers(0, 7),  # the conversation (and by its parity, the process)
                st.floats(1.0, 5000.0),  # seconds since the previous turn or re-warm
                st.integers(0, 900),  # the tokens the turn added
                st.sampled_from(["5m", "1h"]),  # the TTL it sends the prefix with
            ),
            max_size=50,
        )
    )
    def test_two_processes_converge_whatever_order_turns_arrive_in(
        self, actions: list[Action]
    ) -> None:
        """Conversations move between two processes at any point; each process records
        its turns late or on time, exchanges go one way at any point and both ways at the
        end. Both pools then answer as one pool that recorded every turn and re-warm in
        time order, the entry's TTL included."""
        one, pools = PrefixPool(), (SharedPrefixPool("a"), SharedPrefixPool("b"))
        waiting: tuple[list[tuple[str, float, str, int]], ...] = ([], [])
        now = 1000.0
        for action, n, gap, tokens, ttl in actions:
            side = n % 2
            if action == "turn":
                now += gap
                turn(one, f"c{n // 2}", now, ttl, tokens)
                waiting[side].append((f"c{n // 2}", now, ttl, tokens))
            elif action == "record" and waiting[side]:
                conversation, at, sent, added = waiting[side].pop(0)
                turn(pools[side], conversation, at, sent, added)
            elif action == "send":
                pools[1 - side].merge(pools[side].take())
            elif action == "rewarm" and not any(waiting):
                now += gap
                rewarm(one, now, ttl)
                rewarm(pools[side], now, ttl)
        for side in (0, 1):
            for conversation, at, sent, added in waiting[side]:
                turn(pools[side], conversation, at, sent, added)
        exchange(*pools)
        conversations = [f"c{c}" for c in range(4)]
        expected = answers(one, conversations, now + 60.0)
        for pool in pools:
            assert answers(pool, conversations, now + 60.0) == expected


class TestTheEntrysTTL:
    """``live()`` and ``rescue()`` use the TTL of the fleet's latest write of the entry."""

    def test_a_later_five_minute_rewrite_elsewhere_ends_the_hour(self) -> None:
        """A wrote the entry for an hour; it lapsed; B wrote it again for 5 minutes. A,
        having merged B's turn, knows the entry ends 5 minutes after it, not an hour."""
        a, b = SharedPrefixPool("a"), SharedPrefixPool("b")
        turn(a, "x", 0.0, "1h")
        b.merge(a.take())
        assert b.live(3000.0)
        turn(b, "y", 5000.0, "5m")  # the hour lapsed at 3600 s: B writes it for 5 minutes
        a.merge(b.take())
        assert a.entry_ttl == b.entry_ttl == "5m"
        assert not a.live(5400.0)  # 400 s after the last use: past the 5-minute entry
        assert a.rescue(5400.0) == 0.0

    def test_a_send_that_found_the_fleets_entry_live_wrote_nothing(self) -> None:
        """B, not yet knowing A's use at 100 s, took its send at 350 s for a write of an
        hour; the fleet's entry (5 minutes, used at 100 s) was live and was read. Once
        both have exchanged, both know the entry is A's 5-minute one."""
        a, b = SharedPrefixPool("a"), SharedPrefixPool("b")
        turn(a, "x", 0.0, "5m")
        b.merge(a.take())
        turn(a, "x", 100.0, "5m")
        turn(b, "y", 350.0, "1h")  # B's view: last use at 0 s, so lapsed at 300 s
        assert b.entry_ttl == "1h"
        exchange(a, b)
        assert a.entry_ttl == b.entry_ttl == "5m"
        assert not b.live(700.0)  # 350 s after the last use

    def test_a_use_merged_late_makes_a_later_send_a_read(self) -> None:
        """Judged again when a refresh before it arrives: A's 1h send at 400 s wrote the
        entry as far as A knew, until B's re-warm at 250 s arrived."""
        a, b = SharedPrefixPool("a"), SharedPrefixPool("b")
        turn(a, "x", 0.0, "5m")
        b.merge(a.take())
        rewarm(b, 250.0)
        turn(a, "x", 400.0, "1h")
        assert a.entry_ttl == "1h"
        a.merge(b.take())
        assert a.entry_ttl == "5m"

    def test_a_rewarm_recorded_late_makes_a_merged_later_send_a_read(self) -> None:
        """B's 1h send at 350 s wrote the entry as far as A knew (its last use was at 0 s)
        until A recorded its own re-warm at 200 s: then it was a read of the 5m entry."""
        a, b = SharedPrefixPool("a"), SharedPrefixPool("b")
        turn(b, "x", 0.0, "5m")
        turn(b, "x", 350.0, "1h")
        a.merge(b.take())
        assert a.entry_ttl == "1h"
        a.record_touch(200.0)
        assert a.entry_ttl == "5m"

    def test_without_a_time_a_write_is_this_processs_alone(self) -> None:
        """record_write without *at* judges from *live* and shares nothing."""
        a = SharedPrefixPool("a")
        assert a.record_write("1h", live=False) == "1h"
        assert a.take() == []

    @pytest.mark.parametrize("late", ["turn", "rewarm"])
    def test_an_observation_older_than_the_bounds_leaves_the_entry_as_it_is(
        self, late: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A's entry was written for an hour and has been read every 10 minutes since, past
        the sends and uses a pool keeps. B's turn (or re-warm) at 30 s, a read of that
        entry, reaches A late (B was cut off from Redis). Judged again from the earliest
        kept send, whose use before it was dropped, the entry must stay A's hour: the
        latest use dropped is still the refresh before it."""
        monkeypatch.setattr("convo.policy.shared.USES_KEPT", 8)
        one, a, b = PrefixPool(), SharedPrefixPool("a"), SharedPrefixPool("b")
        for pool in (one, a):
            turn(pool, "x", 0.0, "1h")
            for i in range(1, 20):
                turn(pool, f"c{i % 3}", 600.0 * i, "5m")
        now = 600.0 * 19 + 400.0
        assert a.entry_ttl == one.entry_ttl == "1h"
        if late == "turn":
            turn(b, "y", 30.0, "5m")  # B, knowing nothing, takes it for a write
        else:
            rewarm(b, 30.0, "5m")
        a.merge(b.take())
        assert a.entry_ttl == "1h"
        assert a.live(now)
        assert a.rescue(now) == one.rescue(now)


class TestObservation:
    """An observation as a Redis stream entry's fields, and back."""

    @pytest.mark.parametrize(
        "sent",
        [
            Observation("a", 7, "turn", 1234.5, "abc", 0),
            Observation("a", 8, "write", 9.5, ttl="1h"),
        ],
        ids=["turn", "write"],
    )
    def test_fields_round_trip_as_bytes(self, sent: Observation) -> None:
        """What redis-py returns (bytes) decodes to the observation sent."""
        raw = {k.encode(): v.encode() for k, v in sent.fields().items()}
        assert Observation.from_fields(raw) == sent

    @pytest.mark.parametrize(
        "fields",
        [
            {"o": "a", "s": "1", "k": "forecast", "t": "1.0"},
            {"o": "a", "s": "one", "k": "use", "t": "1.0"},
            {"o": "a", "k": "use", "t": "1.0"},
            {"o": "a", "s": "1", "k": "use", "t": "nan"},
            {"o": "a", "s": "1", "k": "write", "t": "1.0", "l": "1d"},
        ],
        ids=["unknown-kind", "bad-number", "missing-field", "not-a-time", "unknown-ttl"],
    )
    def test_an_entry_it_cannot_read_is_skipped(self, fields: dict[str, str]) -> None:
        """An entry another version wrote gives None, not an error."""
        assert Observation.from_fields(fields) is None

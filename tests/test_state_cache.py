"""The write-behind cache without Faust: what a flush takes, the memory bound, forgetting."""
import orjson
import pytest

from stream_app import state
from stream_app.state_cache import (SIZE_BASE, SIZE_EVENT, SIZE_INPUT, SIZE_KNOWN, SIZE_KNOWN_NONE, SIZE_ROW, Forget,
                                    StateCache, estimated_size)

LIM = state.Limits(horizon_ms=86_400_000, grace_ms=3_600_000, max_events=128)
T0 = 1_700_000_000_000


def event(user: str, i: int, cat: str = "sports") -> dict:
    return {"event_id": f"{user}-{i}", "user_id": user, "type": "click", "ts": T0 + i * 1000,
            "item_id": f"i{i}", "category": cat}


def applied(cache: StateCache, p: int, user: str, i: int, cat: str = "sports", offset: int | None = None) -> dict:
    key = user.encode()
    e = cache.get(key)
    outcome, st = state.apply(e.state if e else None, event(user, i, cat), LIM, now_ms=0)
    assert outcome == "accepted"
    if offset is not None:  # the worker's states record each input topic's offset (one each here)
        for t in ("events.click", "events.browse", "events.search"):
            state.note_input(st, t, p, offset)
    cache.put(p, key, st)
    return st


def test_a_user_changed_many_times_is_written_once_per_flush():
    c = StateCache(10**9)
    for i in range(5):
        applied(c, 0, "a", i)
    applied(c, 0, "b", 0)
    applied(c, 1, "z", 0)
    for n in range(7):
        c.hold(0, f"msg{n}", 100)
    f = c.take(0)
    assert [k for k, _ in f.writes] == [b"a", b"b"]  # once each, in first-changed order
    assert f.deletes == [] and f.messages == [f"msg{n}" for n in range(7)]
    assert orjson.loads(f.writes[0][1])["seq"] == 5  # serialised at take: every change so far
    assert "_ids" not in orjson.loads(f.writes[0][1])
    assert c.take(0).records == 0 and c.take(0).messages == []  # clean now
    assert c.partitions_to_flush() == [1]
    applied(c, 0, "a", 5)  # changed again: written again at the next flush
    assert [k for k, _ in c.take(0).writes] == [b"a"]


def test_forget_is_a_delete_at_the_next_flush_and_leaves_the_indexes():
    c = StateCache(10**9)
    applied(c, 2, "a", 0)
    assert set(c.pending[2]) == {b"a"} and b"a" in c.facts[2]
    c.delete(2, b"a")
    assert c.get(b"a").state is None and not c.pending[2] and b"a" not in c.facts[2]
    f = c.take(2)
    assert f.writes == [] and f.deletes == [b"a"]
    assert b"a" not in c  # gone from memory once written
    c.delete(3, b"never-seen")  # still a delete: the table may hold it
    assert c.take(3).deletes == [b"never-seen"]


def test_pending_follows_the_last_vector():
    c = StateCache(10**9)
    st = applied(c, 0, "a", 0)
    assert set(c.pending[0]) == {b"a"}
    state.record_vector(st, {"interests": {}}, st["seq"])
    c.put(0, b"a", st)
    assert not c.pending[0]
    applied(c, 0, "a", 1)
    assert set(c.pending[0]) == {b"a"}
    assert c.facts[0][b"a"] == (T0 + 1000, 0, True)


def test_scoring_takes_the_longest_waiting_users_first_across_partitions():
    c = StateCache(10**9)
    applied(c, 3, "z", 0)  # waiting first
    applied(c, 0, "m", 0)
    applied(c, 3, "b", 0)
    applied(c, 0, "a", 0)
    applied(c, 3, "z", 1)  # a later event keeps z's place
    applied(c, 5, "y", 0)  # not one of the partitions asked for
    assert c.waiting([0, 3]) == [(3, b"z"), (0, b"m"), (3, b"b"), (0, b"a")]
    st = c.get(b"m").state  # m scored: gone; its next event puts it at the end
    state.record_vector(st, {"interests": {}}, st["seq"])
    c.put(0, b"m", st)
    applied(c, 0, "m", 1)
    assert c.waiting([3, 0]) == [(3, b"z"), (3, b"b"), (0, b"a"), (0, b"m")]


def test_a_pass_finds_the_users_who_started_waiting_after_it_began():
    c = StateCache(10**9)
    applied(c, 0, "a", 0)
    applied(c, 3, "b", 0)
    mark = c.mark()  # a pass begins: it takes a and b
    applied(c, 0, "a", 1)  # a was waiting already: not new
    applied(c, 3, "c", 0)
    applied(c, 0, "d", 0)
    assert c.waiting([0, 3], after=mark) == [(3, b"c"), (0, b"d")]
    again = c.mark()
    assert c.waiting([0, 3], after=again) == []
    applied(c, 0, "e", 0)
    assert c.waiting([0, 3], after=again) == [(0, b"e")]


def test_a_user_whose_events_came_while_it_was_scored_is_taken_again_by_the_same_pass():
    c = StateCache(10**9)
    applied(c, 0, "a", 0)
    applied(c, 0, "b", 0)
    mark = c.mark()  # a pass begins: it takes a and b
    seen = {u: c.get(u.encode()).state["seq"] for u in "ab"}  # the snapshots
    applied(c, 0, "a", 1)  # while the model runs, a new event for a
    for u in "ab":
        st = c.get(u.encode()).state
        state.record_vector(st, {"interests": {}}, seen[u])
        c.scored(0, u.encode(), st)
    assert c.waiting([0], after=mark) == [(0, b"a")]  # the pass takes a again, b is done
    assert c.waiting([0]) == [(0, b"a")]


def test_the_bound_drops_clean_states_least_recently_used_first_never_dirty_ones():
    one = estimated_size(state.apply(None, event("x", 0), LIM, 0)[1])
    assert one == SIZE_BASE + SIZE_ROW + 150  # one row, one profile category
    c = StateCache(max_bytes=4 * one)
    for u in "abcd":
        applied(c, 0, u, 0)
    assert c.bytes == 4 * one and not c.over_bound()
    assert c.shrink() == 0  # everything is dirty: nothing can go before a flush
    c.take(0)
    c.get(b"a")  # a is now the most recently used
    applied(c, 0, "e", 0)
    assert c.over_bound()
    assert c.shrink(target=0.9) == 2  # the two least recently used clean states: b, c
    assert set(c.entries) == {b"d", b"a", b"e"} and c.bytes == 3 * one
    c.hold(0, "m", 50)
    assert c.bytes == 3 * one + SIZE_EVENT + 50  # held messages count against the bound
    f = c.take(0)
    assert c.bytes == 3 * one + SIZE_EVENT + 50  # until the flush under way settles them
    c.settled(f)
    assert c.bytes == 3 * one


def test_states_read_from_the_table_are_clean_and_indexed():
    c = StateCache(10**9)
    _, st = state.apply(None, event("a", 0), LIM, 0)
    c.load(1, b"a", state.load(state.dump(st)))
    assert c.take(1).records == 0 and set(c.pending[1]) == {b"a"}
    c.load(1, b"a", None)  # nothing to cache
    with pytest.raises(ValueError):
        StateCache(0)


def test_dropping_partitions_forgets_their_states_and_held_messages():
    c = StateCache(10**9)
    applied(c, 0, "a", 0)
    applied(c, 1, "b", 0)
    c.hold(0, "m0", 10)
    c.hold(1, "m1", 10)
    c.hold_forget(0, "f0", True)
    c.hold_forget(1, "f1", False)
    c.drop_partitions({0})
    assert list(c.entries) == [b"b"] and c.held == {1: ["m1"]} and c.forgets == {1: [Forget("f1", False)]}
    assert 0 not in c.pending and 0 not in c.facts and c.partitions_to_flush() == [1]
    assert c.bytes == c.entries[b"b"].size + SIZE_EVENT + 10


def test_the_size_estimate_covers_the_memory_states_take():
    """The bound counts estimated_size; for states of 1 to 60 rows over 12 categories, each with
    its last vector and the offsets of three input topics, it stays between 0.85 and 1.25 times
    the memory tracemalloc traces (lower, the cache would outgrow its bound; higher, part of the
    bound would go unused)."""
    import gc
    import tracemalloc

    from stream_app.vectors import build_vector

    cats = [f"category-{j}" for j in range(12)]
    for rows in (1, 20, 60):
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        c = StateCache(10**12)
        for u in range(200):
            user = f"user-{rows}-{u}"
            for i in range(rows):
                st = applied(c, 0, user, i, cats[(u + i * 7) % 12], offset=10**6 + u * 100 + i)
            state.record_vector(st, build_vector(user, [1 / 12] * 12, cats, st["newest"], "v1", rows, None), rows)
        gc.collect()
        traced = (tracemalloc.get_traced_memory()[0] - before) / 200
        tracemalloc.stop()
        estimated = c.state_bytes / 200
        assert 0.85 * traced <= estimated <= 1.25 * traced, (rows, traced, estimated)


class Msg:
    def __init__(self, name: str):
        self.key, self.value = b"k", name.encode()


def test_a_flush_the_changelog_refused_is_written_again_and_its_messages_held_first():
    """Each user the failed flush took is dirty again, with its state as it is now (changed
    since, dropped from the cache, or deleted since); its messages come before those held since."""
    c = StateCache(10**9)
    for user in ("a", "b", "c"):
        applied(c, 0, user, 0)
    c.delete(0, b"d")
    m0, m1, m2 = Msg("m0"), Msg("m1"), Msg("m2")
    c.hold(0, m0, 3)
    c.hold(0, m1, 3)
    f = c.take(0)
    assert [k for k, _ in f.writes] == [b"a", b"b", b"c"] and f.deletes == [b"d"]
    newer = applied(c, 0, "a", 1)  # changed after the take
    c.delete(0, b"b")  # forgotten after the take
    del c.entries[b"c"]  # dropped from the cache (clean) after the take
    c.state_bytes = sum(e.size for e in c.entries.values())
    c.hold(0, m2, 3)
    c.unwritten(f)
    c.settled(f)
    g = c.take(0)
    c.settled(g)
    assert dict(g.writes) == {b"a": state.dump(newer), b"c": f.writes[2][1]}
    assert g.deletes == [b"b", b"d"]
    assert g.messages == [m0, m1, m2]
    assert c.bytes == sum(e.size for e in c.entries.values())  # the held sizes went with the take


def test_a_flush_trims_a_state_over_the_largest_record_and_says_whose():
    c = StateCache(10**9, max_record=1_500)
    st = None
    for i in range(40):  # the newest 4 are rows the model reads, the others compact rows
        st = state.apply(st, event("big", i), state.Limits(86_400_000, 3_600_000, max_events=4), now_ms=0)[1]
    c.put(0, b"big", st)
    applied(c, 0, "small", 0)
    big = len(state.dump(st))
    assert big == 1_905
    f = c.take(0)
    written = dict(f.writes)
    [(key, rows)] = f.trimmed
    # 1,905 less 11 rows (10 of 40 bytes, one of 41, each with a comma), plus ',"dropped":1700000010000' (24):
    # 10 rows would leave 1,519 with the note
    assert key == b"big" and rows == 11 and len(written[b"big"]) == 1_477
    assert state.load(written[b"big"])["seq"] == 40 and len(c.entries[b"big"].state["old"]) + rows + len(
        c.entries[b"big"].state["ev"]) == 40
    assert written[b"small"] == state.dump(c.entries[b"small"].state)  # untouched
    assert c.state_bytes == sum(e.size for e in c.entries.values())


def test_a_flush_knows_the_offsets_it_handles_and_stores_the_input_offsets_capped():
    import asyncio
    from types import SimpleNamespace

    from stream_app.state_cache import Letter

    loop = asyncio.new_event_loop()
    try:
        delivered, sending = loop.create_future(), loop.create_future()
        delivered.set_result(None)
        c = StateCache(10**9)
        st = applied(c, 0, "a", 0)
        state.note_input(st, "clicks", 0, 12)
        for offset in (10, 12):
            c.hold(0, SimpleNamespace(topic="clicks", offset=offset), 10)
        c.hold(0, SimpleNamespace(topic="browses", offset=3), 10)
        c.hold(1, SimpleNamespace(topic="clicks", offset=99), 10)
        c.hold_letter(0, Letter(object(), "clicks", 11, b"a", b"{}", delivered, 10))
        c.hold_letter(0, Letter(object(), "browses", 4, b"a", b"{}", sending, 10))
        c.hold_letter(0, Letter(object(), "browses", 6, b"a", b"{}", sending, 10))
        assert c.handled(0) == ({"clicks": [10, 12, 11], "browses": [3, 4, 6]}, {"browses": 4})
        assert c.handled(2) == ({}, {})
        f = c.take(0, {("clicks", 0): 11})
        assert orjson.loads(f.writes[0][1])["in"] == {"clicks": 11}
        assert st["in"] == {"clicks": 12}
    finally:
        loop.close()


def test_a_flush_makes_the_offsets_it_stored_the_known_ones_and_counts_their_memory_no_more():
    """Until its flush a state keeps the offsets known before its first recorded record (what no
    cap goes below, stream_app.state.cap_input): SIZE_KNOWN bytes in the bound, SIZE_KNOWN_NONE
    while none are known (a user new to the worker). A flush that stores all of its offsets drops
    them; one that stores fewer keeps what it stored."""
    c = StateCache(10**9)
    applied(c, 0, "a", 0, offset=50)
    applied(c, 0, "b", 0, offset=50)
    before = c.state_bytes
    assert before == 2 * (estimated_size(state.apply(None, event("x", 0), LIM, 0)[1]) + 3 * SIZE_INPUT
                          + SIZE_KNOWN_NONE)
    caps = {(t, 0): 50 for t in ("events.click", "events.browse", "events.search")}
    c.take(0, caps | {("events.click", 0): 20})  # clicks read through 20 only
    assert c.state_bytes == before + 2 * (SIZE_KNOWN - SIZE_KNOWN_NONE)
    a = c.get(b"a").state
    assert a["_inb"] == {"events.click": 20, "events.browse": 50, "events.search": 50}
    assert a["in"] == {"events.click": 50, "events.browse": 50, "events.search": 50}
    applied(c, 0, "a", 1)  # a change without a record: a dirty state, its known offsets kept
    c.take(0, caps)
    # a: a row more and no known offsets; b as it was
    assert "_inb" not in a and c.state_bytes == before + 2 * (SIZE_KNOWN - SIZE_KNOWN_NONE) + SIZE_ROW - SIZE_KNOWN


def test_a_hole_caps_the_input_offsets_of_its_partitions_states_in_memory():
    c = StateCache(10**9)
    for user, p in (("a", 0), ("b", 0), ("z", 1)):
        applied(c, p, user, 0)
        state.note_input(c.get(user.encode()).state, "clicks", p, 50)
    c.delete(0, b"gone")
    assert c.cap_inputs(0, "clicks", 9) == 2  # a and b; the delete has no state
    assert [c.get(k).state["in"] for k in (b"a", b"b", b"z")] == [{"clicks": 9}, {"clicks": 9}, {"clicks": 50}]

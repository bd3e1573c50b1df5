"""The per-user window: out of order, late, duplicates, the max_events bound, eviction."""
from stream_app import state
from stream_app.state import Limits

H = 10_000  # horizon 10 s of event time
G = 2_000
LIM = Limits(horizon_ms=H, grace_ms=G, max_events=3)
T0 = 1_000_000_000


def ev(i, ts, type_="click", cat="c"):
    e = {"event_id": f"e{i}", "user_id": "u", "type": type_, "ts": ts}
    if type_ == "search":
        e["query"] = "q"
    else:
        e.update(item_id=f"i{i}", category=cat)
    return e


def run(events, limits=LIM):
    st, outcomes = None, []
    for e in events:
        outcome, new = state.apply(st, e, limits, now_ms=0)
        outcomes.append(outcome)
        if new is not None:
            st = state.load(state.dump(new))  # through the stored form, as in the table
    return st, outcomes


def test_out_of_order_events_land_in_place():
    st, out = run([ev(1, T0 + 300), ev(2, T0 + 100), ev(3, T0 + 200, "search")])
    assert out == ["accepted"] * 3
    assert [e.ts for e in state.window_events(st)] == [T0 + 100, T0 + 200, T0 + 300]
    assert state.summary(st, H) == {
        "events": 3, "newest_ts": T0 + 300,
        "counts": {"click": 2, "browse": 0, "search": 1}, "categories": {"c": 2},
    }


def test_duplicates_change_nothing():
    st, out = run([ev(1, T0), ev(2, T0 + 1), ev(1, T0)])
    assert out == ["accepted", "accepted", "duplicate"]
    assert state.summary(st, H)["events"] == 2
    assert st["seq"] == 2


def test_late_beyond_grace_but_grace_is_accepted():
    newest = T0 + 100_000
    st, out = run([
        ev(1, newest),
        ev(2, newest - H - G),      # exactly window + grace old: late
        ev(3, newest - H - G + 1),  # inside the grace: accepted, outside the window: not counted
        ev(4, newest - H + 1),      # inside the window
    ])
    assert out == ["accepted", "late", "accepted", "accepted"]
    assert state.summary(st, H)["events"] == 2
    # the grace event's id is remembered: its redelivery is a duplicate, not a new event
    _, out2 = run([ev(1, newest), ev(3, newest - H - G + 1), ev(3, newest - H - G + 1)])
    assert out2 == ["accepted", "accepted", "duplicate"]


def test_counts_cover_the_whole_window_the_model_reads_max_events():
    events = [ev(i, T0 + i * 100, cat="a" if i % 2 else "b") for i in range(10)]
    st, _ = run(events)
    s = state.summary(st, H)
    assert s["events"] == 10 and s["categories"] == {"a": 5, "b": 5}
    assert [e.ts for e in state.window_events(st)] == [T0 + 700, T0 + 800, T0 + 900]
    # an old out-of-order event inside the window counts but is not among the newest 3
    st2, out = run(events + [ev(99, T0 + 50, cat="z")])
    assert out[-1] == "accepted"
    assert state.summary(st2, H)["categories"]["z"] == 1
    assert [e.ts for e in state.window_events(st2)] == [T0 + 700, T0 + 800, T0 + 900]


def test_window_slides_with_event_time():
    st, _ = run([ev(1, T0), ev(2, T0 + 5_000), ev(3, T0 + H + 1)])
    # ev1 left the window (ts <= newest - H) but stays for duplicate detection within the grace
    assert state.summary(st, H)["events"] == 2
    _, out = run([ev(1, T0), ev(2, T0 + 5_000), ev(3, T0 + H + 1), ev(1, T0)])
    assert out[-1] == "duplicate"
    st, _ = run([ev(1, T0), ev(2, T0 + H + G + 1)])
    assert st["old"] == [] and state.summary(st, H)["events"] == 1


def test_ids_memory_is_bounded_by_window_plus_grace():
    st, _ = run([ev(i, T0 + i * 1_000) for i in range(1000)])
    # at most (H + G) / 1 s worth of ids are kept
    assert len(st["ev"]) + len(st["old"]) <= (H + G) // 1_000


def test_idle_users_need_event_time_and_wall_clock():
    st, _ = run([ev(1, T0)])
    span = H + G
    assert state.is_idle(st, T0 + span + 1, now_ms=st["seen"] + span + 1, limits=LIM)
    assert not state.is_idle(st, T0 + span + 1, now_ms=st["seen"] + 10, limits=LIM)
    assert not state.is_idle(st, T0 + 10, now_ms=st["seen"] + span + 1, limits=LIM)


def test_state_version_is_checked():
    import orjson
    import pytest

    with pytest.raises(state.StateFormatError, match="version 2"):
        state.load(orjson.dumps({"v": 2}))


def test_events_in_window_matches_the_summary():
    limits = state.Limits(horizon_ms=10_000, grace_ms=5_000, max_events=3)
    st = None
    for i, ts in enumerate([1_000, 2_000, 9_000, 12_000, 13_000, 14_000, 15_500]):
        _, st = state.apply(st, {"event_id": f"e{i}", "type": "click", "ts": ts, "category": "x",
                                 "item_id": "i"}, limits, 0)
    # window (15_500 - 10_000, 15_500]: 9_000 .. 15_500, five events, two of them in "old"
    assert state.events_in_window(st, limits.horizon_ms) == 5 == state.summary(st, limits.horizon_ms)["events"]

"""The one core of the worker and replay, driven without a broker: ingest outcomes, scoring with
drift against the last vector, the split the live worker uses, and replay on top of it."""
from collections import namedtuple

import orjson
import pytest

from interest_core.window import WindowEvent, profiles_in_order, window_slice
from stream_app import core, state
from stream_app.model_runtime import LoadedModel
from stream_app.vectors import js_divergence

LIM = state.Limits(horizon_ms=86_400_000, grace_ms=3_600_000, max_events=128)
T0 = 1_700_000_000_000
NOW = T0 + 10_000_000


def ev(user: str, i: int, ts: int, cat: str = "sports", type_: str = "click") -> dict:
    e = {"event_id": f"{user}-{i}", "user_id": user, "type": type_, "ts": ts}
    if type_ == "search":
        e["query"] = "cheap flights"
    else:
        e.update(item_id=f"i{i}", category=cat)
    return e


def feed(states: dict, events: list[dict]) -> list[str]:
    out = []
    for e in events:
        r = core.ingest(e["type"], e["user_id"].encode(), orjson.dumps(e), states.get, LIM, NOW, 86_400_000)
        if r.state is not None:
            states[e["user_id"].encode()] = r.state
        out.append(r.outcome)
    return out


def test_ingest_outcomes_and_the_state_is_read_only_for_valid_events():
    reads = []
    states: dict = {}

    def lookup(key):
        reads.append(key)
        return states.get(key)

    def one(type_, key, value):
        r = core.ingest(type_, key, value, lookup, LIM, NOW, 86_400_000)
        if r.state is not None:
            states[key] = r.state
        return r

    first = one("click", b"u", orjson.dumps(ev("u", 1, T0 + 90_000_000)))
    assert first.outcome == "accepted" and first.rejected is None and first.state["seq"] == 1
    assert one("click", b"u", orjson.dumps(ev("u", 1, T0 + 90_000_000))).outcome == "duplicate"
    late = one("click", b"u", orjson.dumps(ev("u", 2, T0)))  # older than the window by more than the grace
    assert late.outcome == "late" and late.rejected.reason == "late" and late.state is None
    assert one("click", b"u", b"{nope").rejected.reason == "not_json"
    assert one("search", b"u", orjson.dumps(ev("u", 3, T0 + 90_000_000))).outcome == "topic_mismatch"
    assert reads == [b"u", b"u", b"u"]  # dead letters never touch the state
    assert states[b"u"]["seq"] == 1


Record = namedtuple("Record", "topic partition offset")


def test_an_event_read_again_after_its_id_left_the_state_is_a_duplicate_by_its_input_offset():
    """Three days of one user at offsets 10, 11, 12 of its click partition: the first day's id
    has left the state (older than the window by more than the grace) when it is read again."""
    states: dict = {}

    def one(i, ts, origin, record=True):
        message = Record(*origin) if origin else None  # as Faust's message gives them
        r = core.ingest("click", b"u", orjson.dumps(ev("u", i, ts)), states.get, LIM, NOW, 86_400_000, message,
                        record)
        if r.state is not None:
            states[b"u"] = r.state
        return r

    day = 86_400_000
    t0 = T0 - 3 * day  # the clock (NOW) is after the three days
    for i, offset in enumerate((10, 11, 12)):
        assert one(i, t0 + i * day, ("clicks", 3, offset)).outcome == "accepted"
    assert (states[b"u"]["in"], states[b"u"]["inp"]) == ({"clicks": 12}, 3)
    read_again = one(0, t0, ("clicks", 3, 10))
    assert (read_again.outcome, read_again.state, read_again.rejected) == ("duplicate_offset", None, None)
    assert one(0, t0, ("clicks", 3, 12)).outcome == "duplicate_offset"  # up to the offset recorded
    # past it, another partition, another topic, or not known: the ts alone decides, late
    for origin in (("clicks", 3, 13), ("clicks", 2, 10), ("browses", 3, 10), None):
        late = one(9, t0, origin)
        assert (late.outcome, late.rejected.reason) == ("late", "late"), origin
    assert one(1, t0 + day, ("clicks", 3, 11)).outcome == "duplicate"  # its id is still held
    assert one(5, t0, ("clicks", 3, 10)).outcome == "duplicate_offset"  # a new id: the offset decides
    # an accepted event with no origin leaves the recorded offsets as they were
    assert one(6, t0 + 2 * day + 1, None).outcome == "accepted"
    assert (states[b"u"]["in"], states[b"u"]["inp"]) == ({"clicks": 12}, 3)
    # nor does one whose earlier records may be unread (a hole), but its origin is checked
    assert one(10, t0 + 2 * day + 4, ("clicks", 3, 20), record=False).outcome == "accepted"
    assert (states[b"u"]["in"], states[b"u"]["inp"]) == ({"clicks": 12}, 3)
    assert one(11, t0, ("clicks", 3, 11), record=False).outcome == "duplicate_offset"
    assert one(11, t0, ("clicks", 3, 13), record=False).outcome == "late"
    assert one(7, t0 + 2 * day + 2, ("browses", 3, 4)).outcome == "accepted"
    assert states[b"u"]["in"] == {"clicks": 12, "browses": 4}
    # the topics' partitions changed (a deployment re-created): offsets of the new partition only
    assert one(8, t0 + 2 * day + 3, ("clicks", 5, 2)).outcome == "accepted"
    assert (states[b"u"]["in"], states[b"u"]["inp"]) == ({"clicks": 2}, 5)
    assert one(0, t0, ("clicks", 3, 10)).outcome == "late"
    assert states[b"u"]["seq"] == 7


def expected(model, events):
    wins = [WindowEvent.from_event(e) for e in sorted(events, key=lambda e: e["ts"])]
    prof = None
    for prof in profiles_in_order(wins, LIM.profile_retention_ms):
        pass
    probs = model.predict([window_slice(wins, wins[-1].ts, LIM.horizon_ms, LIM.max_events)], [prof])[0]
    return dict(zip(model.categories, probs / probs.sum()))


def test_scoring_records_each_vector_and_drifts_against_the_last_one(tiny_model_dir):
    model = LoadedModel.load(tiny_model_dir)
    states: dict = {}
    a = [ev("a", i, T0 + i * 60_000, "sports") for i in range(6)]
    b = [ev("b", i, T0 + i * 60_000, "music") for i in range(3)]
    feed(states, a + b)
    (ka, va, sa), (kb, vb, _) = core.score_states([(b"a", states[b"a"]), (b"b", states[b"b"])], model,
                                                    LIM.horizon_ms, batch=4)
    assert (ka, kb) == (b"a", b"b") and va["drift"] == 0.0 and vb["user_id"] == "b"
    for c, p in expected(model, a).items():
        assert va["interests"][c] == pytest.approx(p, abs=1e-6)
    assert va["ts"] == a[-1]["ts"] and va["events"] == 6 and va["model_version"] == model.version
    assert sa["out"] is va and sa["scored"] == 6 and not state.is_pending(sa)
    more = [ev("a", 10 + i, T0 + (10 + i) * 60_000, "travel") for i in range(4)]
    feed(states, more)
    assert state.is_pending(states[b"a"])
    (_, va2, _), = core.score_states([(b"a", states[b"a"])], model, LIM.horizon_ms, batch=4)
    assert va2["drift"] == pytest.approx(js_divergence(va2["interests"], va["interests"]), abs=1e-12)
    assert va2["drift"] > 0 and states[b"a"]["out"] is va2


def test_the_live_split_scores_the_snapshot_even_if_events_arrive_meanwhile(tiny_model_dir):
    model = LoadedModel.load(tiny_model_dir)
    states: dict = {}
    a = [ev("a", i, T0 + i * 60_000) for i in range(4)]
    feed(states, a)
    inputs = [core.snapshot(b"a", states[b"a"], model, LIM.horizon_ms)]
    feed(states, [ev("a", 9, T0 + 9 * 60_000, "travel")])  # arrives while the model runs
    probs = core.infer(model, inputs, batch=2)
    (_, vec, st), = core.publish(inputs, probs, model, states.get)
    assert vec["events"] == 4 and vec["ts"] == a[-1]["ts"]  # what the snapshot saw
    for c, p in expected(model, a).items():
        assert vec["interests"][c] == pytest.approx(p, abs=1e-6)
    assert st["scored"] == 4 and st["seq"] == 5 and state.is_pending(st)  # scored again next pass
    assert core.publish(inputs, probs, model, lambda k: None) == []  # forgotten meanwhile: nothing


def test_a_user_forgotten_and_created_again_while_the_model_runs_gets_no_vector_of_its_old_events(tiny_model_dir):
    """The snapshot saw 4 sports clicks; the user is forgotten and sends 4 travel clicks before the
    model's output is published. Before, the old interests were published after the forget (the
    new state had the same seq, 4, so it was marked scored with them); now the new state gets
    nothing from that batch and is scored at the next pass."""
    model = LoadedModel.load(tiny_model_dir)
    states: dict = {}
    feed(states, [ev("a", i, T0 + i * 60_000) for i in range(4)])
    inputs = [core.snapshot(b"a", states[b"a"], model, LIM.horizon_ms)]
    del states[b"a"]  # forgotten
    feed(states, [ev("a", 10 + i, T0 + (10 + i) * 60_000, "travel") for i in range(4)])
    assert states[b"a"]["seq"] == inputs[0].seq == 4
    assert core.publish(inputs, core.infer(model, inputs, batch=2), model, states.get) == []
    assert states[b"a"]["out"] is None and state.is_pending(states[b"a"])


def test_replay_is_the_same_core_at_event_time_ticks(tiny_model_dir):
    from stream_app.replay import Replayer
    from stream_app.settings import Settings

    model = LoadedModel.load(tiny_model_dir)
    s = Settings.from_env({"INTEREST_SCORE_INTERVAL_S": "600"})
    emitted = []
    r = Replayer(s, model, T0 + 1_200_000, T0 + 3_600_000, lambda k, v: emitted.append((k, v)), batch=8)
    a = [ev("a", i, T0 + i * 300_000) for i in range(10)]  # every 5 minutes; ticks every 10
    for e in a:
        r.add(s.input_topics[e["type"]], e["user_id"].encode(), orjson.dumps(e), e["ts"])
    r.finish()
    assert r.counts["accepted"] == 10
    # ticks every 10 min (T0 + 10, 20, ... min) score the events before them; a vector's ts is its
    # newest event's, and only those in [from, to) = [T0 + 20 min, T0 + 60 min) are published;
    # the last one at `to`
    assert [v["ts"] for _, v in emitted] == [T0 + 1_500_000, T0 + 2_100_000, T0 + 2_700_000]
    last = emitted[-1][1]
    for c, p in expected(model, a).items():
        assert last["interests"][c] == pytest.approx(p, abs=1e-6)
    assert last["drift"] == pytest.approx(js_divergence(last["interests"], emitted[-2][1]["interests"]), abs=1e-12)

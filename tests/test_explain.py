"""Explanations and the evolution, without Kafka: the profile unwound against training's own fold,
and occlusion against a small deterministic model whose answer is known by construction."""
from __future__ import annotations

import copy
import random

import numpy as np
import pytest

from interest_core.encoding import Encoder, train_tokenizer
from interest_core.item_lift import apply, window_lifts
from interest_core.window import (DEFAULT_PROFILE_RETENTION_S, PROFILE_SCALES, WindowEvent, profile_values,
                                  profiles_in_order, seconds_to_ms, stored_profile)
from stream_app import core, explain, state
from stream_app.explain import ProfileUnwinder

RETENTION = seconds_to_ms(DEFAULT_PROFILE_RETENTION_S)
T0 = 978_307_200_000
MIN = 60_000
WINDOW = (86_400_000, 128)  # the horizon and max_events of build_state's limits
CATS = ("books", "music", "sports", "tech", "travel")


def fold(events):
    prof = None
    for prof in profiles_in_order(events, RETENTION):
        pass
    return copy.deepcopy(prof)


def history(seed: int, n: int = 70):
    """Events in ts order with ties, every type, a few categories."""
    rng = random.Random(seed)
    out, ts = [], T0
    for i in range(n):
        ts += rng.choice([0, 0, 5_000, MIN, 40 * MIN, 300 * MIN])  # ties, bursts, pauses
        etype = rng.choice(["click", "click", "browse", "search"])
        out.append(WindowEvent(ts, etype, None if etype == "search" else rng.choice(CATS[:4]), f"i{i}",
                               query="q" if etype == "search" else None))
    return out


def assert_same_profile(got: dict | None, want: dict | None, tol: float) -> None:
    g, w = profile_values(got), profile_values(want)
    assert set(g) <= set(w)
    for c in w:
        assert g.get(c, [0.0] * 3) == pytest.approx(w[c], abs=tol, rel=tol), c
    assert got["t"] == want["t"]


@pytest.mark.parametrize("stored", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_unwound_profile_equals_trainings_fold(seed, stored):
    events = history(seed)
    first_row = 25  # the events before it are not in the rows: only in the profile
    while events[first_row - 1].ts == events[first_row].ts:  # rows hold every event of their first ts
        first_row -= 1
    rows = [(e.ts, e.type, e.category) for e in events[first_row:]]
    full = fold(events)
    if stored:  # the table's form: millionths
        full = stored_profile(full)
    un = ProfileUnwinder(profile_values(full), full["t"], rows)
    tol = 2e-4 if stored else 1e-9  # rounding of millionths, grown by removing up to 44 events
    for x in sorted({r[0] for r in rows}):
        assert_same_profile(un.before(x), fold([e for e in events if e.ts <= x]), tol)
    for j in range(len(rows)):
        assert_same_profile(un.without(j), fold(events[:first_row + j] + events[first_row + j + 1:]), tol)


def test_model_inputs_are_laid_out_as_the_encoder_lays_them_out():
    events = history(4) + [WindowEvent(T0 + 10**9, "click", "unknown-to-the-model", "x")]
    full = fold(events)
    un = ProfileUnwinder(profile_values(full), full["t"], [(e.ts, e.type, e.category) for e in events])
    enc = CountingModel().encoder
    got = un.inputs(un.before_all([full["t"]]), enc)[0]
    assert got.dtype == np.float32 and got.tolist() == pytest.approx(enc.profile_vector(full), abs=1e-6)
    assert got.any()


def test_unwinding_changes_what_it_should():
    """Not vacuous: removing a click of a category lowers that category on every scale."""
    events = history(3)
    rows = [(e.ts, e.type, e.category) for e in events]
    full = fold(events)
    un = ProfileUnwinder(profile_values(full), full["t"], rows)
    j = max(i for i, e in enumerate(events) if e.type == "click")
    before, after = profile_values(full)[events[j].category], profile_values(un.without(j))[events[j].category]
    assert all(a < b for a, b in zip(after, before))


# --- a deterministic model: the distribution is a softmax of recency-weighted category counts ------
class CountingModel:
    """Stands in for :class:`stream_app.model_runtime.LoadedModel`: the real encoder, and as the
    "network" a softmax over ``2 * sum(0.7 ** age_in_events)`` of each category's tokens plus the
    event-scale profile values; its effects are computed here by hand in the tests."""

    version = "counting-1"

    def __init__(self, item_lift: dict | None = None):
        self.encoder = Encoder(categories=CATS, tokenizer_json=train_tokenizer(["a b c", "a b"], 30), max_len=512,
                               item_lift=item_lift)
        self.categories = CATS
        self.k = len(CATS)
        self.calls = 0

    def profile_inputs(self, profiles, n):
        out = np.zeros((n, self.encoder.profile_size), np.float32)
        for i, p in enumerate(profiles or []):
            if p:
                out[i] = self.encoder.profile_vector(p)
        return out

    def item_lifts(self, windows):
        return window_lifts(self.encoder.item_lift, windows)

    def predict_ids(self, seqs, profiles, batch=256, lifts=None):
        self.calls += 1
        runs = self.plan(seqs, profiles, batch)
        return self.gather(runs, self.run(runs), lifts)

    # LoadedModel's three steps of a prediction (the worker's scoring pass takes them one by one)
    def plan(self, seqs, profiles, batch=256):
        return seqs, profiles

    def gather(self, runs, outputs, lifts=None):
        return outputs[0] if lifts is None else apply(outputs[0], lifts)

    def run(self, runs):
        seqs, profiles = runs
        enc, k = self.encoder, self.k
        out = np.empty((len(seqs), k))
        for r, ids in enumerate(seqs):
            cat_pos = [(p, t - enc.category_offset) for p, t in enumerate(ids)
                       if enc.category_offset <= t < enc.category_offset + k]
            score = np.zeros(k)
            for age, (_, c) in enumerate(reversed(cat_pos)):
                score[c] += 2.0 * 0.7 ** age
            score += 0.1 * np.asarray(profiles[r][2 * k:3 * k], dtype=np.float64)
            e = np.exp(score - score.max())
            out[r] = e / e.sum()
        return [out]


def build_state(events: list[dict]) -> dict:
    limits = state.Limits(86_400_000, 3_600_000, 128)
    st = None
    for e in events:
        _, st = state.apply(st, e, limits, 0)
    return st


def ev(i, etype, ts, cat=None, query=None):
    e = {"event_id": f"e{i}", "user_id": "u", "type": etype, "ts": ts}
    if etype == "search":
        e["query"] = query
    else:
        e.update(item_id=f"item{i}", category=cat)
    return e


@pytest.mark.parametrize("gap_h, compact", [(30, False), (30, True), (24.5, False)])
def test_a_window_of_one_event_unwinds_to_the_profile_before_it(gap_h, compact):
    """A tech click, then after ``gap_h`` hours a sports click alone in the window: the tech click
    past the grace (dropped by the sports click, or by idle compaction before it) or still in the
    compact rows (24.5 h: a 1-day window, a 1-hour grace). Without the sports click the profile is
    the tech click's alone, as of its own ts, as training's fold has it; before the state noted the
    dropped rows' ts it stayed as of the sports click, 30 hours decayed."""
    limits = state.Limits(86_400_000, 3_600_000, 128)
    st, sports_ts = build_state([ev(1, "click", T0, "tech")]), T0 + int(gap_h * 3_600_000)
    if compact:
        st = state.compact(st)
    _, st = state.apply(st, ev(2, "click", sports_ts, "sports"), limits, 0)
    assert len(st["ev"]) == 1 and len(st["old"]) == (1 if gap_h < 25 else 0)
    snap = explain.snapshot(st, *WINDOW)
    un = ProfileUnwinder(snap.values, snap.t, [(r[0], r[2], r[3]) for r in snap.tied + snap.rows], snap.before)
    want = stored_profile(fold([WindowEvent(T0, "click", "tech", "item1")]))
    assert_same_profile(un.without(0), want, 2e-6)
    assert un.without(0)["t"] == T0 and profile_values(un.without(0))["tech"][0] == pytest.approx(1.0, abs=1e-6)


def test_after_compaction_the_profile_without_an_event_is_as_of_the_dropped_rows():
    """A tech click, compaction (``dropped`` is its ts), then a travel click alone in the window:
    without the travel click the profile is as of the tech click, the newest folded. A sports click
    30 minutes before the tech click, sent after the compaction, is refused (``dropped``: the worker
    cannot tell it from a repeat), so it can neither count nor date the profile back to its ts.
    Its time scales are the fold's; its event scales are not exact (the tech click is not a row)."""
    limits = state.Limits(86_400_000, 3_600_000, 128)
    st = state.compact(build_state([ev(1, "click", T0, "tech")]))
    assert state.apply(st, ev(2, "click", T0 - 30 * MIN, "sports"), limits, 0) == ("dropped", None)
    _, st = state.apply(st, ev(3, "click", T0 + 23 * 60 * MIN + 36 * MIN, "travel"), limits, 0)
    snap = explain.snapshot(st, *WINDOW)
    un = ProfileUnwinder(snap.values, snap.t, [(r[0], r[2], r[3]) for r in snap.tied + snap.rows], snap.before)
    got = un.without(len(snap.tied) + len(snap.rows) - 1)
    want = stored_profile(fold([WindowEvent(T0, "click", "tech", "i1")]))
    assert got["t"] == want["t"] == T0
    time_scales = [i for i, (kind, _) in enumerate(PROFILE_SCALES) if kind == "time"]
    assert set(profile_values(got)) == {"tech"}
    assert [profile_values(got)["tech"][i] for i in time_scales] == pytest.approx(
        [profile_values(want)["tech"][i] for i in time_scales], abs=2e-6)


def morning_then_travel():
    """A morning of sports and tech, then a burst of travel clicks and a travel search."""
    evs = [ev(i, "click" if i % 3 else "browse", T0 + i * 10 * MIN, "sports" if i % 4 else "tech")
           for i in range(24)]
    t = T0 + 24 * 10 * MIN + 3 * 60 * MIN
    evs += [ev(100 + i, "click", t + i * MIN, "travel") for i in range(5)]
    evs.append(ev(200, "search", t + 6 * MIN, query="secret cheap flights lisbon"))
    return evs


def test_explanation_names_the_decisive_burst_and_hides_search_text():
    model = CountingModel()
    events = morning_then_travel()
    st = build_state(events)
    inp = core.snapshot(b"u", st, model, 86_400_000)
    out = explain.explain(model, inp, explain.snapshot(st, *WINDOW), evolution=True)
    assert model.calls == 1  # every variant in one batched call

    # the model's answer on the window as it is, computed independently of the explanation
    seqs = [model.encoder.encode(inp.window)]
    now = model.predict_ids(seqs, [inp.profile])[0]
    assert out["interests"] == pytest.approx(dict(zip(CATS, now)))
    assert out["top"][0] == "travel"
    travel = out["categories"][0]
    assert travel["category"] == "travel"
    # the five travel clicks raised travel most, the newest (least decayed) first
    assert [e["event_id"] for e in travel["raised"]] == ["e104", "e103", "e102", "e101", "e100"]
    assert all(e["category"] == "travel" and e["type"] == "click" for e in travel["raised"])
    # removing a sports click leaves more room for travel: those lowered it
    assert travel["lowered"] and all(e["category"] in ("sports", "tech") for e in travel["lowered"])
    # the effects are the leave-one-out differences, checked for one event by hand
    j = [r[1] for r in st["ev"]].index("e104")
    full = copy.deepcopy(st)
    without = build_state([e for e in events if e["event_id"] != "e104"])
    p_without = model.predict_ids([model.encoder.encode(state.window_events(without))],
                                  model.profile_inputs([state.profile(without)], 1))[0]
    p_now = model.predict_ids([model.encoder.encode(state.window_events(full))],
                              model.profile_inputs([state.profile(full)], 1))[0]
    assert travel["raised"][0]["effect"] == pytest.approx(p_now[CATS.index("travel")] - p_without[CATS.index("travel")],
                                                           abs=1e-6)
    assert j == len(st["ev"]) - 2

    # a search appears as a search, without its text (nor its category or item)
    text = repr(out)
    assert "secret" not in text and "lisbon" not in text
    searches = [e for c in out["categories"] for e in c["raised"] + c["lowered"] if e["type"] == "search"]
    assert all(set(e) == {"event_id", "type", "ts", "age_ms", "effect"} for e in searches)
    newest = events[-1]["ts"]
    assert all(e["age_ms"] == newest - e["ts"] for c in out["categories"] for e in c["raised"])

    # the profile: the window re-scored with zeros instead of the profile
    bare = model.predict_ids(seqs, np.zeros((1, model.encoder.profile_size), np.float32))[0]
    for c in out["top"]:
        i = CATS.index(c)
        assert out["profile"]["effect"][c] == pytest.approx(now[i] - bare[i])
    assert out["profile"]["divergence"] > 0

    # the evolution: one point per distinct ts, the last one the vector now, the first after one event
    evo = out["evolution"]
    assert evo["ts"] == sorted({e["ts"] for e in events})
    assert [evo["series"][c][-1] for c in CATS] == pytest.approx(list(now))
    first = model.predict_ids([model.encoder.encode(state.window_events(build_state(events[:1])))],
                              model.profile_inputs([state.profile(build_state(events[:1]))], 1))[0]
    assert [evo["series"][c][0] for c in CATS] == pytest.approx(list(first), abs=1e-6)
    # travel grows through the burst
    n_before = len(events) - 6
    assert evo["series"]["travel"][n_before - 1] < 0.2 < evo["series"]["travel"][-1]
    assert evo["events"][-1] == {"event_id": "e200", "type": "search", "ts": newest, "age_ms": 0}


@pytest.mark.parametrize("max_events, events", [
    (128, [ev(0, "click", T0, "books"), ev(1, "click", T0 + 20 * 60 * MIN, "sports"),
           ev(2, "click", T0 + 24 * 60 * MIN + 30 * MIN, "travel")]),  # e2 moves the day past e0
    (5, [ev(i, "click", T0 + i * 10 * MIN, c)
         for i, c in enumerate(["books", "books", "sports", "travel", "music", "tech", "sports"])]),
])
def test_each_effect_is_the_state_without_the_event_even_when_older_events_come_back(max_events, events):
    """Without the newest event the window ends earlier, and without any event of a full window the
    next older one comes in. The explanation scored the remaining full rows alone, so a books click
    pushed out of the day (or beyond the newest 5) stayed out, and effects were off by up to 0.13.
    Each listed effect is checked against the state built without that event, and each moment of
    the evolution against the state of the events up to it."""
    limits = state.Limits(86_400_000, 3_600_000, max_events)

    def build(evs):
        st = None
        for e in evs:
            _, st = state.apply(st, e, limits, 0)
        return st

    def score(st):
        return model.predict_ids([model.encoder.encode(state.window_events(st))],
                                 model.profile_inputs([state.profile(st)], 1))[0]

    model = CountingModel()
    st = build(events)
    assert st["old"]  # the older events are compact rows only
    out = explain.explain(model, core.snapshot(b"u", st, model, 86_400_000),
                          explain.snapshot(st, 86_400_000, max_events), evolution=True)
    now = score(st)
    effects = {(c["category"], e["event_id"]): e["effect"]
               for c in out["categories"] for e in c["raised"] + c["lowered"]}
    assert len(effects) >= 3
    for (c, eid), effect in effects.items():
        without = score(build([e for e in events if e["event_id"] != eid]))
        assert effect == pytest.approx(now[CATS.index(c)] - without[CATS.index(c)], abs=1e-6), (c, eid)
    # and each moment of the evolution is the state of the events up to it (the compact rows came
    # in through the profile only)
    evo = out["evolution"]
    for i, x in enumerate(evo["ts"]):
        then = score(build([e for e in events if e["ts"] <= x]))
        assert [evo["series"][c][i] for c in CATS] == pytest.approx(list(then), abs=1e-6), x


def test_explanation_of_an_empty_window():
    """An idle user whose rows were dropped: the profile alone, no events to occlude."""
    model = CountingModel()
    st = state.compact(build_state(morning_then_travel()))
    inp = core.snapshot(b"u", st, model, 86_400_000)
    out = explain.explain(model, inp, explain.snapshot(st, *WINDOW), evolution=True)
    assert out["events"] == 0 and len(out["top"]) == 3
    assert all(not c["raised"] and not c["lowered"] for c in out["categories"])
    assert out["evolution"]["ts"] == [] and out["evolution"]["events"] == []


def test_explanation_adds_the_items_lift_to_every_variant():
    """A model whose encoding lifts travel for one item: the explanation's interests and each
    event's leave-one-out effect are those of the model with the lift of each variant's window."""
    lift = {"slots": 20, "items": {"item104": [0.0, 0.0, 0.0, 0.0, 1.5]}}  # travel, the newest click's item
    model, plain = CountingModel(lift), CountingModel()
    events = morning_then_travel()
    st = build_state(events)
    inp = core.snapshot(b"u", st, model, 86_400_000)
    np.testing.assert_allclose(inp.lift, [0, 0, 0, 0, 1.5 / 1])  # the window's one known item of the table
    out = explain.explain(model, inp, explain.snapshot(st, *WINDOW))
    base = explain.explain(plain, core.snapshot(b"u", st, plain, 86_400_000), explain.snapshot(st, *WINDOW))
    seqs = [model.encoder.encode(inp.window)]
    # the answer with the lift: the counting "network", then + 1.5 on travel's logit
    now = apply(plain.predict_ids(seqs, [inp.profile]), np.array([[0, 0, 0, 0, 1.5]]))[0]
    assert out["interests"] == pytest.approx(dict(zip(CATS, now)))
    assert out["interests"]["travel"] > base["interests"]["travel"]
    np.testing.assert_allclose(core.infer(model, [inp], 8)[0], now)  # live scoring adds it too
    # without e104 the window holds no lifted item: its effect is the lift's too
    without = build_state([e for e in events if e["event_id"] != "e104"])
    p_without = model.predict_ids([model.encoder.encode(state.window_events(without))],
                                  model.profile_inputs([state.profile(without)], 1),
                                  lifts=model.item_lifts([state.window_events(without)]))[0]
    travel = out["categories"][0]
    e104 = [e for e in travel["raised"] if e["event_id"] == "e104"][0]
    assert e104["effect"] == pytest.approx(now[CATS.index("travel")] - p_without[CATS.index("travel")], abs=1e-6)
    base_e104 = [e for e in base["categories"][0]["raised"] if e["event_id"] == "e104"][0]
    assert e104["effect"] > base_e104["effect"] + 0.01


def test_an_idle_users_explanation_is_of_the_vector_it_is_served():
    """Once the rows are dropped, GET /users/{id} and re-ranking serve the latest published vector,
    but the explanation re-scored the empty window with the profile (an input no training sample
    has): other top interests under the page's "Top interests now". It now gives that vector."""
    st = state.compact(build_state(morning_then_travel()))
    snap = explain.snapshot(st, *WINDOW)
    assert explain.is_idle(snap) and not explain.is_idle(explain.snapshot(build_state(morning_then_travel()), *WINDOW))
    vector = {"ts": 5_000, "model_version": "v7", "top": ["sports", "travel", "tech"], "drift": 0.2, "events": 3,
              "interests": {"books": 0.1, "sports": 0.5, "tech": 0.15, "travel": 0.25}}
    out = explain.idle(vector, snap, True, evolution=True)
    assert out == {
        "model_version": "v7", "newest_ts": snap.newest, "events": 0,
        "interests": {"books": 0.1, "sports": 0.5, "tech": 0.15, "travel": 0.25},
        "top": ["sports", "travel", "tech"],
        "categories": [{"category": "sports", "p": 0.5, "raised": [], "lowered": []},
                       {"category": "travel", "p": 0.25, "raised": [], "lowered": []},
                       {"category": "tech", "p": 0.15, "raised": [], "lowered": []}],
        "profile": {"used": True, "effect": {}, "without_profile": {}, "divergence": None},
        "idle": {"newest_ts": snap.newest, "vector_ts": 5_000},
        "evolution": {"ts": [], "series": {"books": [], "sports": [], "tech": [], "travel": []}, "events": []},
    }
    assert "evolution" not in explain.idle(vector, snap, True)

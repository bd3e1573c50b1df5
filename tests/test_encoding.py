"""The one encoding: train-time and serve-time token ids are identical, layout by hand."""
from __future__ import annotations

import json
import subprocess
import sys

from interest_core.encoding import Encoder, fit_encoder, train_tokenizer
from models.simulate import simulate_user
from interest_core.window import WindowEvent, window_slice


def _user_events(seed=5, days=3):
    for index in range(50):  # the first user active enough to give many windows
        events, _ = simulate_user(index, seed, days)
        if len(events) >= 60:
            return [WindowEvent.from_event(e) for e in events]
    raise AssertionError("no active simulated user")


def test_train_and_serve_encodings_identical():
    evs = _user_events()
    enc = fit_encoder(evs[: len(evs) // 2], min_category_count=1, bpe_vocab_size=200, max_len=64)
    served = Encoder.from_spec(json.loads(json.dumps(enc.to_spec())))  # as the worker reads it
    assert served.vocab_size == enc.vocab_size and served.categories == enc.categories
    checked = 0
    for cut in range(1, len(evs), 3):
        win = window_slice(evs[:cut], evs[cut - 1].ts, 86_400_000, 128)
        # the worker's state holds rows; rebuild the window from them as it would
        rows = [WindowEvent.from_row(json.loads(json.dumps(e.to_row()))) for e in win]
        a, b = enc.encode(win), served.encode(rows)
        assert a == b
        assert len(a) <= 64 and a[0] == enc.bos_id and a[-1] == enc.end_id
        assert all(0 <= t < enc.vocab_size for t in a)
        # never an event cut in half: after [BOS] comes a gap token, which starts an event
        if len(a) > 2:
            assert enc.gap_offset <= a[1] < enc.dwell_offset
        checked += 1
    assert checked > 5


def test_layout_by_hand():
    enc = Encoder(categories=["a", "b"], tokenizer_json=train_tokenizer(["red shoes", "red hat"] * 3, 50),
                  max_len=32)
    # 4 specials, 3 types (click, browse, search), 2 categories, gap: first + 9 buckets, dwell: 5,
    # 24 hours of day
    assert (enc.type_offset, enc.category_offset, enc.gap_offset, enc.dwell_offset) == (4, 7, 9, 19)
    assert (enc.hour_offset, enc.query_offset) == (24, 48)
    events = [
        WindowEvent(ts=1_000, type="click", category="b", item="x"),
        WindowEvent(ts=31_000, type="browse", category="zzz", item="y", dwell_ms=5_000),
    ]
    # click: gap first (9), click (4), b (8); browse after 30 s: gap bucket [10 s, 60 s) is the 3rd
    # (9 + 1 + 2 = 12), browse (5), unknown category (3), dwell 5 s in [2 s, 10 s) (19 + 1 = 20);
    # then the hour of the newest event (00:00:31 UTC -> hour 0 -> 24) and [END]
    assert enc.encode(events) == [1, 9, 4, 8, 12, 5, 3, 20, 24, 2]
    late = [WindowEvent(ts=13 * 3_600_000 + 5, type="click", category="a", item="x")]
    assert enc.encode(late) == [1, 9, 4, 7, 24 + 13, 2]
    # a search: gap, type, query subwords (offset by query_offset), no category
    ids = enc.encode([WindowEvent(ts=0, type="search", query="red shoes")])
    assert ids[:3] == [1, 9, 6] and ids[-2:] == [24, 2]
    assert all(t >= enc.query_offset for t in ids[3:-2]) and len(ids) > 5


def test_keeps_most_recent_whole_events():
    enc = Encoder(categories=["a"], tokenizer_json=train_tokenizer([], 50), max_len=16)
    events = [WindowEvent(ts=i * 1000, type="click", category="a", item=str(i)) for i in range(10)]
    ids = enc.encode(events)
    # 16 - [BOS] - hour - [END] = 13 tokens of budget, 3 per click: the last 4 clicks, whole
    assert len(ids) == 15
    assert ids[1:-2].count(enc.type_offset) == 4
    # the oldest kept event still has its real gap (1 s, bucket 0 -> gap_offset + 1)
    assert ids[1] == enc.gap_offset + 1


def test_encoding_imports_without_torch():
    code = ("import sys, interest_core.encoding, interest_core.window, models.cli;"
            "bad=[m for m in ('torch','transformers') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version_1_spec_still_loads():
    enc = Encoder(categories=["a"], tokenizer_json=train_tokenizer([], 50), max_len=16, hour_token=False)
    spec = enc.to_spec()
    assert spec["version"] == 1
    again = Encoder.from_spec(spec)
    ev = [WindowEvent(ts=0, type="click", category="a", item="x")]
    assert again.encode(ev) == enc.encode(ev) == [1, 8, 4, 7, 2]  # one category: gaps start at 8


def test_training_samples_equal_what_the_worker_state_gives(tmp_path):
    """The model's two inputs (tokens and profile) at every training cut equal what the worker
    computes from its stored state after ingesting the same events (stream_app.state.apply, through
    the stored bytes, then the runtime's encoding and profile read), including an idle gap longer
    than the profile retention that restarts the profile."""
    import numpy as np
    import orjson

    from models.data import DataConfig, prepare, sample_profiles, sample_windows
    from stream_app import state

    log, per_user = tmp_path / "log.jsonl", {}
    with open(log, "wb") as f:
        for u in range(6):
            events, _ = simulate_user(u, 11, 3)
            if u == 0:  # a 10-day pause in the middle: longer than the retention below
                half = len(events) // 2
                for e in events[half:]:
                    e["ts"] += 10 * 86_400_000
            per_user[f"u{u}"] = events
            for e in events:
                f.write(orjson.dumps(e) + b"\n")
    cfg = DataConfig(target="next_k", target_k=3, profile_retention_s=5 * 86_400, max_len=96,
                     min_category_count=1)
    ds, enc, _ = prepare(log, cfg)
    served = Encoder.from_spec(json.loads(json.dumps(enc.to_spec())))
    limits = state.Limits(cfg.horizon_s * 1000, 3_600_000, cfg.max_events, cfg.profile_retention_s * 1000)
    checked = 0
    for name in ("train", "val", "test"):
        samples = ds.splits[name]
        windows, profiles = sample_windows(ds, samples, cfg), sample_profiles(ds, samples, cfg, enc)
        for r, (ui, cut) in enumerate(zip(samples.user, samples.cut)):
            user = ds.user_ids[ui]
            events = sorted(per_user[user], key=lambda e: e["ts"])[:cut]
            st = stored = None
            for e in events:  # the worker's ingest in memory, and through the stored form at every event
                outcome, st = state.apply(st, e, limits, now_ms=0)
                assert outcome == "accepted"
                outcome, new = state.apply(stored, e, limits, now_ms=0)
                stored = state.load(state.dump(new))
            assert served.encode(state.window_events(st)) == enc.encode(windows[r])
            assert served.encode(state.window_events(stored)) == enc.encode(windows[r])
            worker = np.asarray(served.profile_vector(state.profile(st)), np.float32)
            assert np.array_equal(worker, profiles[r]), (user, cut)
            # storing rounds to millionths; decay bounds the sum of those errors (about 15 steps)
            restored = np.asarray(served.profile_vector(state.profile(stored)), np.float32)
            assert np.abs(restored - profiles[r]).max() < 1e-5, (user, cut)
            checked += 1
    assert checked > 100
    gap_user = ds.user_ids.index("u0")
    assert any(ds.splits["test"].user == gap_user) or any(ds.splits["val"].user == gap_user)


def test_profiles_of_older_specs_and_states_still_read():
    """A spec from before the year and 100-event scales reads the first three scales of a profile;
    a profile stored before them is extended (the year from 30 days, 100 events from 10)."""
    from interest_core.window import PROFILE_SCALES, profile_update, profile_values, stored_profile

    enc = Encoder(categories=["a", "b"], tokenizer_json=train_tokenizer(["x y"] * 3, 50), max_len=32)
    assert len(enc.profile_scales) == len(PROFILE_SCALES) == 5
    old_spec = enc.to_spec()
    old_spec["profile"]["scales"] = old_spec["profile"]["scales"][:3]
    old = Encoder.from_spec(old_spec)
    assert old.profile_size == 6 and old.to_spec() == old_spec
    stored = {"t": 1000, "c": {"b": [100, 200, 300]}}  # millionths, written by a 3-scale worker
    assert profile_values(stored) == {"b": [1e-4, 2e-4, 3e-4, 2e-4, 3e-4]}
    assert old.profile_vector(stored) == [0, 1e-4, 0, 2e-4, 0, 3e-4]
    assert enc.profile_vector(stored)[6:] == [0, 2e-4, 0, 3e-4]
    # folding in an event of the same ts (no newer rows given: the stored one is older by one event)
    prof = stored_profile(profile_update(stored, WindowEvent(ts=1000, type="click", category="a", item="i"), 10**9, ()))
    assert prof["c"]["b"][3:] == [200, round(300 * 0.5 ** (1 / 100))] and len(prof["c"]["a"]) == 5
    bad = dict(old_spec, profile=dict(old_spec["profile"], scales=[["time", 86400], ["events", 10]]))
    try:
        Encoder.from_spec(bad)
        raise AssertionError("a spec whose scales are not a prefix must be refused")
    except ValueError as exc:
        assert "is not the one this code keeps" in str(exc)

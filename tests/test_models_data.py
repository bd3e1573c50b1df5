"""Metrics by hand, the split and samples, loaders on small slices, simulator determinism."""
from __future__ import annotations

import json
import math

import numpy as np
import orjson
import pytest

from interest_core.window import WindowEvent
from models.data import (DataConfig, LogShape, Samples, UserSeq, build_dataset, choose_target, invalid_summary,
                         log_shape, prepare, read_log, sample_windows, split_times)
from models.evaluate import (hindsight_counts, jackknife_kl, kl_per_sample, metrics, mse_per_sample, ndcg3_per_sample,
                             paired_bootstrap)
from models.loaders import load_movielens, load_rees46
from models.simulate import CATEGORIES, iter_live_events, simulate_to_files

# --- metrics, expected values worked out by hand -------------------------------------------


def test_metrics_by_hand():
    t = np.array([[0.5, 0.5, 0.0]])
    p = np.array([[0.5, 0.25, 0.25]])
    m = metrics(t, p)
    assert m["kl"] == pytest.approx(0.5 * math.log(2))  # 0.5*ln(0.5/0.5) + 0.5*ln(0.5/0.25)
    assert m["mse"] == pytest.approx((0 + 0.0625 + 0.0625) / 3)
    assert m["top1"] == 1.0  # both argmax at index 0 (first on ties)
    # ranking by prediction: 0, then 1 and 2 tied -> 1, 2; gains 0.5, 0.5, 0 = the ideal order
    assert m["ndcg@3"] == pytest.approx(1.0)


def test_ndcg_and_top1_by_hand():
    t = np.array([[0.2, 0.0, 0.8]])
    p = np.array([[0.6, 0.3, 0.1]])
    # predicted order 0, 1, 2: DCG = 0.2/1 + 0/log2(3) + 0.8/2 = 0.6
    # ideal order 2, 0, 1: IDCG = 0.8/1 + 0.2/log2(3) + 0 = 0.8 + 0.126186 = 0.926186
    assert ndcg3_per_sample(t, p)[0] == pytest.approx(0.6 / (0.8 + 0.2 / math.log2(3)))
    assert metrics(t, p)["top1"] == 0.0


def test_kl_floor_and_renormalisation_by_hand():
    t = np.array([[1.0, 0.0, 0.0]])
    p = np.array([[0.0, 1.0, 0.0]])
    # floored to [1e-4, 1, 1e-4], renormalised by 1.0002: KL = ln(1.0002 / 1e-4)
    assert kl_per_sample(t, p)[0] == pytest.approx(math.log(10_000) + math.log(1.0002))
    assert mse_per_sample(t, p)[0] == pytest.approx(2 / 3)


def test_jackknife_kl_by_hand_and_its_bias():
    """Two draws: twice the KL of their mean less the mean KL of each alone (leaving one out of two
    leaves the other). Over many samples of four noisy draws around a known prediction, the plain
    KL of their mean is 0.015 above the prediction's own KL, and the jackknife within 0.003 of it."""
    y = np.array([[1.0, 0.0]])
    got = jackknife_kl(y, [np.array([[0.8, 0.2], [0.4, 0.6]])])[0]
    assert got == pytest.approx(-2 * math.log(0.6) + (math.log(0.4) + math.log(0.8)) / 2)
    assert jackknife_kl(y, [np.array([[0.8, 0.2]])])[0] == pytest.approx(-math.log(0.8))

    p, y = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.5, 0.3])
    draws = list(np.random.default_rng(0).dirichlet(20 * p, size=(10_000, 4)))
    t = np.tile(y, (len(draws), 1))
    exact = kl_per_sample(y[None], p[None])[0]
    plain = kl_per_sample(t, np.array([d.mean(0) for d in draws])).mean() - exact
    assert plain > 0.01 and abs(jackknife_kl(t, draws).mean() - exact) < 0.003


def test_paired_bootstrap_constant_and_sign():
    users = np.repeat(np.arange(20), 3)
    assert paired_bootstrap(np.full(60, 0.1), users) == pytest.approx([0.1, 0.1])
    lo, hi = paired_bootstrap(np.linspace(0.5, 1.5, 60), users)
    assert 0.5 < lo < 1.0 < hi < 1.5


# --- simulator ---------------------------------------------------------------------------


def test_simulator_deterministic_by_seed(tmp_path):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    simulate_to_files(15, 2, 7, a)
    simulate_to_files(15, 2, 7, b)
    simulate_to_files(15, 2, 8, c)
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a.jsonl.truth.jsonl").read_bytes() == (tmp_path / "b.jsonl.truth.jsonl").read_bytes()
    assert a.read_bytes() != c.read_bytes()
    rows = [json.loads(x) for x in a.read_text().splitlines()]
    assert rows == sorted(rows, key=lambda e: e["ts"])
    for e in rows:  # contract schema
        assert 1 <= len(e["event_id"]) <= 128 and 1 <= len(e["user_id"]) <= 128
        assert type(e["ts"]) is int and e["type"] in ("click", "browse", "search")
        if e["type"] == "search":
            assert 1 <= len(e["query"]) <= 512
        else:
            assert e["category"] in CATEGORIES and e["item_id"]
            assert "dwell_ms" not in e or (type(e["dwell_ms"]) is int and e["dwell_ms"] >= 0)
    truth = [json.loads(x) for x in (tmp_path / "a.jsonl.truth.jsonl").read_text().splitlines()]
    assert all(abs(sum(r["interests"].values()) - 1) < 1e-3 for r in truth)


def test_live_events_in_ts_order_and_deterministic():
    import itertools

    a = list(itertools.islice(iter_live_events(20, 3, 100.0, 1_700_000_000_000), 300))
    b = list(itertools.islice(iter_live_events(20, 3, 100.0, 1_700_000_000_000), 300))
    assert a == b
    assert [e["ts"] for e in a] == sorted(e["ts"] for e in a)
    assert a[0]["ts"] >= 1_700_000_000_000
    # sped up 100x: 300 events of 20 users span minutes, not days
    assert a[-1]["ts"] - a[0]["ts"] < 3 * 3_600_000


def test_live_events_flow_at_the_largest_speedup_and_refuse_a_larger_one():
    """At MAX_SPEEDUP (a simulated day per second) events keep coming, each user's at least a second
    apart. Faster, the shift schedule rounded to 0 ms and the generator looped on it: at 1e12 it
    never yielded an event."""
    import itertools
    import threading

    from interest_core.cli_types import MAX_SPEEDUP

    got = []
    gen = threading.Thread(target=lambda: got.extend(
        itertools.islice(iter_live_events(20, 3, MAX_SPEEDUP, 1_700_000_000_000), 2000)), daemon=True)
    gen.start()
    gen.join(60)
    assert len(got) == 2000
    by_user = {}
    for e in got:
        by_user.setdefault(e["user_id"], []).append(e["ts"])
    assert min(b - a for ts in by_user.values() for a, b in zip(ts, ts[1:])) >= 1000
    with pytest.raises(ValueError, match=r"^speedup must be between 0.001 and 86400, got 86401.0$"):
        next(iter_live_events(2, 3, MAX_SPEEDUP + 1, 1_700_000_000_000))


# --- samples and split ---------------------------------------------------------------------


def _log(tmp_path, events):
    p = tmp_path / "log.jsonl"
    p.write_text("".join(json.dumps(e) + "\n" for e in events))
    return p


def test_split_by_time_no_leak_and_empty_targets_counted(tmp_path):
    H = 3_600_000
    events = []
    for u in range(4):
        for i in range(40):
            kind = "search" if i % 5 == 4 else "click"
            e = {"event_id": f"{u}-{i}", "user_id": f"u{u}", "type": kind, "ts": i * H + u}
            if kind == "search":
                e["query"] = "q"
            else:
                e["category"] = "ab"[(i // 3) % 2]
                e["item_id"] = "x"
            events.append(e)
    events.append(dict(events[0]))  # a duplicate counts once
    users, stats = read_log(_log(tmp_path, events))
    assert stats["duplicates"] == 1 and stats["events"] == 160
    cfg = DataConfig(target="next_k", target_k=1)
    t1, t2 = split_times(users, cfg)
    ds = build_dataset(users, ["a", "b"], cfg, t1, t2)
    # next_k=1: a cut right before a search has an empty target: 7 such per user and split region
    assert ds.counts["empty_target"] > 0
    tr, va, te = ds.splits["train"], ds.splits["val"], ds.splits["test"]
    assert len(tr) and len(va) and len(te)
    for s, lo, hi in ((tr, None, t1), (va, t1, t2), (te, t2, None)):
        for ui, i, cut_ts in zip(s.user, s.cut, s.cut_ts):
            end = ds.seqs[ui].ts[i]  # the one target event
            assert (lo is None or cut_ts >= lo) and (hi is None or end < hi)
    # targets: one-hot of the next click's category
    ui, i = tr.user[0], tr.cut[0]
    assert tr.targets[0][ds.seqs[ui].cat[i]] == 1.0
    # inputs end at the cut
    w = sample_windows(ds, tr.take(slice(0, 5)), cfg)
    for win, cut_ts in zip(w, tr.cut_ts[:5]):
        assert win[-1].ts == cut_ts


def test_joined_dataset_trains_on_the_validation_period(tmp_path):
    """A refit's samples (models.data.joined_dataset): training holds every sample whose target ends
    before the test period (the training and validation samples, and those that straddled t1);
    validation is empty; the test split and its targets are unchanged. The baselines refit on them
    take their prior from them."""
    from models.baselines import Baselines
    from models.data import joined_dataset

    H = 3_600_000
    events = [{"event_id": f"{u}-{i}", "user_id": f"u{u}", "type": "click", "ts": i * H + u * 1000,
               "category": "abc"[(i * (u + 1)) % 3 if i % 4 else 0], "item_id": "x"}
              for u in range(5) for i in range(60)]
    users, _ = read_log(_log(tmp_path, events))
    cfg = DataConfig(target="next_k", target_k=3)
    t1, t2 = split_times(users, cfg)
    ds = build_dataset(users, ["a", "b", "c"], cfg, t1, t2)
    joined = joined_dataset(ds, ["a", "b", "c"], cfg)
    pairs = lambda s: set(zip(s.user.tolist(), s.cut.tolist()))  # noqa: E731
    tr, va, jt = ds.splits["train"], ds.splits["val"], joined.splits["train"]
    assert pairs(tr) | pairs(va) < pairs(jt)  # and more: the cuts whose target straddled t1
    straddled_t1 = ds.counts["straddling_split"] - joined.counts["straddling_split"]
    assert straddled_t1 > 0 and len(jt) == len(tr) + len(va) + straddled_t1
    for ui, i in zip(jt.user, jt.cut):
        assert ds.seqs[ui].ts[i + 2] < t2  # the third target event ends before the test period
    assert len(joined.splits["val"]) == 0 and (joined.t1, joined.t2) == (t2, t2)
    te, jte = ds.splits["test"], joined.splits["test"]
    assert pairs(te) == pairs(jte) and np.array_equal(te.targets, jte.targets)
    base = Baselines(ds, 3)
    base.fit(va, kl_per_sample)
    per_length = base.params["mixture"]["per_length"]
    base.refit(jt)
    np.testing.assert_allclose(base.prior, jt.targets.mean(0) / jt.targets.mean(0).sum())
    mx = base.params["mixture"]
    assert mx["refit"] and mx["fit_samples"] == len(jt) and mx["per_length"] == per_length


@pytest.mark.parametrize("target, ts_h, cats, weights, cut, expected", [
    # next_k = 2: the target is events 2-3; after it, events 4-5, then 6-7, then nothing
    ("next_k", [1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 0, 0, 1, 1, 0, 1], [1] * 8, 2,
     {1: [0, 2], 2: [1, 3], 3: [1, 3]}),
    # next_baskets = 1 (lines of a basket share a timestamp): the target is the basket at 20 h;
    # after it, the basket at 30 h (three lines, one a browse: 0.5, one a search: 0), then 40 h
    ("next_baskets", [10, 10, 20, 30, 30, 30, 40], [0, 0, 1, 0, 1, -1, 1], [1, 1, 1, 1, 0.5, 0, 1], 2,
     {1: [1, 0.5], 2: [1, 1.5], 3: [1, 1.5]}),
    # time, 6 h windows: the cut after the event at 0 h; the target (0, 6 h] holds 1 h and 5 h;
    # after it (6, 12 h] holds 7 h and 8 h, (12, 18 h] 13 h, (18, 24 h] 20 h
    ("time", [0, 1, 5, 7, 8, 13, 20], [0, 0, 0, 1, 1, 0, 1], [1] * 7, 1,
     {1: [0, 2], 2: [1, 2], 3: [1, 3]}),
])
def test_hindsight_counts_are_the_spans_after_the_target_by_hand(target, ts_h, cats, weights, cut, expected):
    H = 3_600_000
    ts = np.array(ts_h, np.int64) * H
    seq = UserSeq([], ts, np.array(cats), np.array(weights, float))
    ds = type("DS", (), {"seqs": [seq]})()
    cfg = DataConfig(target=target, target_k=2 if target == "next_k" else 1, target_window_s=6 * 3600)
    one = Samples(np.array([0]), np.array([cut]), np.array([ts[cut - 1]]), np.zeros((1, 2), np.float32))
    for spans, want in expected.items():
        assert hindsight_counts(ds, one, cfg, 2, spans).tolist() == [want], (target, spans)


# --- the target chosen from the log (train's default, target="auto") ------------------------

DAY_S = 86_400


@pytest.mark.parametrize("shared, span_days, median, target, k, why", [
    # lines of baskets share their timestamp: the next 4 baskets, whatever else holds
    (0.98, 365, 3, "next_baskets", 4,
     "98% of the events share their user's timestamp with others (baskets, at least 50%)"),
    (0.50, 365, 3, "next_baskets", 4, "50% of the events share"),
    (0.50, 0.1, 41, "next_baskets", 4, "(baskets, at least 50%)"),
    # under 10 windows of 6 h (2.5 days): time targets would not fit validation and test
    (0.49, 2.49, 3, "next_k", 5, "the log spans 59.8 h, under 10 windows of 6 h"),
    (0.00, 0.11, 41, "next_k", 5, "the log spans 2.6 h, under 10 windows of 6 h"),
    # sittings: a 6 h window holds the rest of one
    (0.23, 8213, 41, "next_k", 10, "a 6 h window holds a median of 41 events (sittings, at least 20)"),
    (0.00, 2.5, 20, "next_k", 10, "a 6 h window holds a median of 20 events (sittings, at least 20)"),
    # a steady stream: the next 6 hours
    (0.00, 2.5, 19.5, "time", 0, "a 6 h window holds a median of 19.5 events, over 2.5 days without baskets"),
    (0.00, 7, 8, "time", 0, "a 6 h window holds a median of 8 events, over 7.0 days without baskets"),
])
def test_choose_target_from_the_log_shape(shared, span_days, median, target, k, why):
    shape = LogShape(events=1000, span_s=span_days * DAY_S, shared_ts_share=shared, median_window_events=median)
    got = choose_target(shape, 6 * 3600)
    assert got[:2] == (target, k) and why in got[2], got


def test_a_log_is_read_through_the_workers_check_of_an_event(tmp_path):
    """Training keeps the events the worker keeps, with the fields it keeps, and counts the rest
    by the reason of their dead letter. Before, it trained on clicks without an item, fields over
    the contract's lengths, empty ids and negative times, all of which the worker refuses, it kept
    a search's category and item, which the worker drops, and it said nothing of skipped lines."""
    click = {"event_id": "e1", "user_id": "u", "type": "click", "ts": 1000, "item_id": "i", "category": "a",
             "price": 3}
    lines = [json.dumps(line) if isinstance(line, dict) else line for line in [
        click,
        {k: v for k, v in click.items() if k != "item_id"},
        dict(click, event_id="e3", category="c" * 129),
        dict(click, event_id="e4", type="browse", user_id=""),
        dict(click, event_id="e5", ts=-5),
        {"event_id": "e6", "user_id": "u", "type": "search", "ts": 2000, "query": "q", "category": "b", "item_id": "j"},
        "[1]",
        {"event_id": "e8", "user_id": "v", "type": "browse", "ts": 3000, "category": "a"},
        "",
    ]]
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(lines) + "\n")
    users, stats = read_log(log)
    assert users == {"u": [WindowEvent(1000, "click", "a", "i"), WindowEvent(2000, "search", query="q")]}
    assert stats == {
        "lines": 8, "events": 2, "duplicates": 0, "invalid": 6, "users": 1,
        "invalid_reasons": {"missing_field": 2, "too_long": 1, "bad_type": 2, "not_object": 1},
        "first_invalid": {"missing_field": "line 2: item_id is missing (required for click)",
                          "too_long": "line 3: category has 129 characters, limit 128",
                          "bad_type": "line 4: user_id must be a non-empty string, got an empty string",
                          "not_object": "line 7: value is a JSON list, not an object"},
    }
    assert invalid_summary(stats) == (
        "skipped 6 of 8 lines the worker would refuse: bad_type 2 (first: line 4: user_id must be a non-empty "
        "string, got an empty string), missing_field 2 (first: line 2: item_id is missing (required for click)), "
        "not_object 1 (first: line 7: value is a JSON list, not an object), too_long 1 (first: line 3: category "
        "has 129 characters, limit 128)")
    assert invalid_summary(read_log(_log(tmp_path, [click]))[1]) == ""


def test_a_time_past_what_a_kafka_record_holds_is_refused_as_the_worker_refuses_it(tmp_path):
    """orjson reads integers up to 2**64-1: a ts past 2**63-1 passed the check, the worker refused it
    as future_ts (past any clock), and training read it, then stopped with an OverflowError (numpy's
    int64 split times) instead of counting the line."""
    from interest_core.event_check import check_event

    click = {"event_id": "e", "user_id": "u", "type": "click", "ts": 2**63 - 1, "item_id": "i", "category": "a"}
    assert check_event(json.dumps(click).encode())["ts"] == 2**63 - 1
    for ts in (2**63, 2**64 - 1):
        refused = check_event(json.dumps(dict(click, ts=ts)).encode())
        assert (refused.reason, refused.detail) == (
            "future_ts", f"ts {ts} is past 9223372036854775807, the latest epoch ms a Kafka record timestamp holds")
    log = tmp_path / "log.jsonl"  # and training counts the line, then splits the rest
    log.write_text("".join(json.dumps(dict(click, event_id=f"e{i}", ts=ts)) + "\n"
                           for i, ts in enumerate((1000, 2000, 2**64 - 1))))
    users, stats = read_log(log)
    assert (stats["events"], stats["invalid_reasons"]) == (2, {"future_ts": 1})
    split_times(users, DataConfig())


def test_log_shape_by_hand(tmp_path):
    H = 3_600_000
    # u0: clicks at 0, 0, 1 h, 10 h, and a search at 2 h (not a target event); u1: browses at 5 h, 30 h
    events = [{"event_id": f"e{i}", "user_id": u, "type": t, "ts": h * H, **({"query": "q"} if t == "search" else
                                                                              {"category": "a", "item_id": "x"})}
              for i, (u, t, h) in enumerate([("u0", "click", 0), ("u0", "click", 0), ("u0", "click", 1),
                                             ("u0", "search", 2), ("u0", "click", 10), ("u1", "browse", 5),
                                             ("u1", "browse", 30)])]
    users, _ = read_log(_log(tmp_path, events))
    shape = log_shape(users, 6 * 3600)
    assert shape.events == 6 and shape.span_s == 30 * 3600
    assert shape.shared_ts_share == pytest.approx(2 / 6)  # the two clicks at 0 h
    # events in the next 6 h after each distinct time: 0 h -> 1 (1 h); 1 h -> 0; 10 h -> 0; 5 h -> 0; 30 h -> 0
    assert shape.median_window_events == 1.0


def test_prepare_chooses_the_target_and_records_why(tmp_path):
    H = 3_600_000
    events = []
    for u in range(3):  # weekly baskets of three lines for 30 weeks
        for b in range(30):
            for line in range(3):
                events.append({"event_id": f"{u}-{b}-{line}", "user_id": f"u{u}", "type": "click",
                               "ts": b * 168 * H + u * H, "category": "abc"[(b + line) % 3],
                               "item_id": f"p{line}"})
    ds, _, info = prepare(_log(tmp_path, events), DataConfig(target="auto"))
    cfg, choice = info["split"]["data_config"], info["split"]["target_choice"]
    assert (cfg["target"], cfg["target_k"]) == ("next_baskets", 4)
    assert choice["target"] == "next_baskets" and choice["target_k"] == 4 and choice["shape"]["shared_ts_share"] == 1.0
    assert len(ds.splits["train"]) and len(ds.splits["test"])
    assert ds.counts["target_past_log_end"] == 3 * 3  # the last 3 baskets of each user have no 4 after them
    # a given target is used as it is, and nothing is recorded as chosen
    _, _, info = prepare(_log(tmp_path, events), DataConfig(target="next_k", target_k=2))
    assert info["split"]["data_config"]["target"] == "next_k" and "target_choice" not in info["split"]


# --- loaders on small slices -----------------------------------------------------------------


def test_movielens_loader(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "movies.csv").write_text('movieId,title,genres\r\n1,Toy Story (1995),Adventure|Animation\r\n'
                                  '2,"Odd, Film (2000)",(no genres listed)\r\n')
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\r\n1,1,4.0,964982703\r\n"
                                   "1,2,3.5,964982700\r\n2,1,5.0,964982800\r\n")
    (d / "tags.csv").write_text('userId,movieId,tag,timestamp\r\n'
                                '2,1,"funny, really",964982900\r\n2,1,pixar,964982901\r\n')
    out = tmp_path / "ml.jsonl"
    stats = load_movielens(d, out)
    assert stats["ratings"] == 3 and stats["tags"] == 2
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["event_id"] for r in rows] == ["r-1-2", "r-1-1", "r-2-1", "t-2-1-1", "t-2-1-2"]
    assert rows[1] == {"event_id": "r-1-1", "user_id": "1", "type": "click", "ts": 964982703000,
                       "item_id": "1", "category": "Adventure", "genres": ["Adventure", "Animation"],
                       "rating": 4.0}
    assert rows[0]["category"] == "(no genres listed)"
    assert rows[3]["type"] == "search" and rows[3]["query"] == "funny, really" and "category" not in rows[3]


def test_rees46_loader(tmp_path):
    src = tmp_path / "r.csv"
    src.write_text(
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,s1\n"
        "2019-10-01 00:00:01 UTC,cart,3900821,2053013552326770905,appliances.environment.water_heater,"
        "aqua,33.20,554748717,s2\n"
        "2019-10-01 00:00:01 UTC,cart,3900821,2053013552326770905,appliances.environment.water_heater,"
        "aqua,33.20,554748717,s2\n"
        "2019-10-01 00:00:02 UTC,remove_from_cart,1,2,x,,1.0,3,s3\n"
    )
    out = tmp_path / "r.jsonl"
    stats = load_rees46(src, out)
    assert stats == {"events": 3, "rows": 4, "skipped_type": 1, "no_category_code": 1, "repeated_rows": 1}
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["type"] == "browse" and rows[0]["category"] == "category_id:2103807459595387724"
    assert rows[0]["ts"] == 1569888000000 and rows[0]["user_id"] == "541312140"
    assert rows[1]["type"] == "click" and rows[1]["category"] == "appliances.environment.water_heater"
    assert rows[1]["event_id"] == rows[2]["event_id"]  # the exact duplicate row is the same event


def _cj_dir(tmp_path, name, lines, gz=True):
    """A Complete Journey folder with the given transaction lines and four products."""
    import gzip

    d = tmp_path / name
    d.mkdir()
    prods = ("product_id,department,product_category,product_type\n1,GROCERY,SOFT DRINKS,COLA\n"
             "2,GROCERY,CHEESE,CHEDDAR\n3,PRODUCE,TROPICAL FRUIT,BANANAS\n4,DRUG GM,,\n")
    tx = "household_id,basket_id,product_id,quantity,sales_value,transaction_timestamp\n" + "".join(lines)
    if gz:
        (d / "products.csv.gz").write_bytes(gzip.compress(prods.encode()))
        (d / "transactions.csv.gz").write_bytes(gzip.compress(tx.encode()))
    else:
        (d / "products.csv").write_text(prods)
        (d / "transactions.csv").write_text(tx)
    return d


CJ_LINES = [  # household 7: basket 10 (3 lines) then basket 11; household 8: basket 12 (unknown product 9)
    "7,10,1,1,2.0,2017-01-02 10:00:05\n", "7,10,2,2,3.0,2017-01-02 10:00:05\n", "7,10,3,1,0.5,2017-01-02 10:00:05\n",
    "7,11,1,1,2.0,2017-01-05 18:30:00\n", "8,12,4,1,1.0,2017-01-03 09:00:00\n", "8,12,9,1,1.0,2017-01-03 09:00:00\n",
    "8,13,1,1,2.0,2017-01-04 09:00:00\n",
]


def test_completejourney_loader(tmp_path):
    from models.loaders import load_completejourney

    out = tmp_path / "cj.jsonl"
    stats = load_completejourney(_cj_dir(tmp_path, "a", CJ_LINES), out, top=2)
    # SOFT DRINKS: 3 lines, CHEESE and TROPICAL FRUIT 1 each: top 2 keeps SOFT DRINKS and CHEESE
    # (tie broken by name: CHEESE < TROPICAL FRUIT)
    assert stats == {"events": 7, "lines": 7, "households": 2, "baskets": 4, "categories_kept": 2,
                     "category_list": "top 2 of the file", "lines_in_kept_categories": 4, "products_missing": 1,
                     "repeated_lines": 0}
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["ts"] for r in rows] == sorted(r["ts"] for r in rows)
    first = rows[0]  # 2017-01-02 10:00:05 UTC, basket 10, sorted by event_id within the basket
    assert first == {"event_id": "cj-10-1", "user_id": "7", "type": "click", "ts": 1483351205000, "item_id": "1",
                     "category": "SOFT DRINKS", "basket_id": "10", "department": "GROCERY",
                     "product_category": "SOFT DRINKS", "quantity": 1}
    cats = {r["event_id"]: r["category"] for r in rows}
    assert cats == {"cj-10-1": "SOFT DRINKS", "cj-10-2": "CHEESE", "cj-10-3": "OTHER PRODUCE",
                    "cj-11-1": "SOFT DRINKS", "cj-12-4": "OTHER DRUG GM", "cj-12-9": "OTHER",
                    "cj-13-1": "SOFT DRINKS"}
    # the order of lines within a basket does not matter: reversed baskets, plain CSV, same bytes
    out2 = tmp_path / "cj2.jsonl"
    load_completejourney(_cj_dir(tmp_path, "b", [*reversed(CJ_LINES[:3]), *CJ_LINES[3:4],
                                                 *reversed(CJ_LINES[4:6]), CJ_LINES[6]], gz=False), out2, top=2)
    assert out2.read_bytes() == out.read_bytes()
    # a repeated product line gets its own event_id
    load_completejourney(_cj_dir(tmp_path, "c", CJ_LINES + [CJ_LINES[0]]), tmp_path / "cj3.jsonl", top=2)
    ids = [json.loads(x)["event_id"] for x in (tmp_path / "cj3.jsonl").read_text().splitlines()]
    assert len(set(ids)) == 8 and "cj-10-1-2" in ids
    # by default the fixed list of the shared half: SOFT DRINKS, CHEESE and TROPICAL FRUIT are on it
    stats = load_completejourney(_cj_dir(tmp_path, "d", CJ_LINES), tmp_path / "cj4.jsonl")
    assert stats["categories_kept"] == 30 and stats["lines_in_kept_categories"] == 5


def test_completejourney_loader_bad_input(tmp_path):
    from click.testing import CliRunner

    from models import cli

    r = CliRunner().invoke(cli.load, ["completejourney", str(tmp_path), "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 1 and "no products.csv.gz or products.csv" in r.output and "Traceback" not in r.output
    d = _cj_dir(tmp_path, "bad", ["7,10,1,1,2.0,02/01/2017 10:00\n"])
    r = CliRunner().invoke(cli.load, ["completejourney", str(d), "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 1 and r.output == (f"Error: {d / 'transactions.csv.gz'}:2: transaction_timestamp "
                                             "'02/01/2017 10:00' is not YYYY-MM-DD hh:mm:ss\n")


# --- the simulator's mechanisms ------------------------------------------------------------------


@pytest.mark.parametrize("cut_at", [100, 500])  # in the log (422 events), in its truth (135 rows)
def test_a_simulation_stopped_while_writing_leaves_the_earlier_files_whole(tmp_path, monkeypatch, cut_at):
    """The log and its truth were written in place: a Ctrl-C (or a full disk) while writing left a
    half log, which training reads as a whole one, in place of the earlier log."""
    import orjson

    out, truth = tmp_path / "s.jsonl", tmp_path / "s.jsonl.truth.jsonl"
    simulate_to_files(15, 2, 7, out)
    before = out.read_bytes(), truth.read_bytes()
    calls, dumps = [0], orjson.dumps

    def stopped(obj):
        calls[0] += 1
        if calls[0] == cut_at:
            raise KeyboardInterrupt
        return dumps(obj)

    monkeypatch.setattr(orjson, "dumps", stopped)
    with pytest.raises(KeyboardInterrupt):
        simulate_to_files(15, 2, 8, out)
    assert (out.read_bytes(), truth.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl", "s.jsonl.truth.jsonl"]


def test_simulator_without_mechanisms_is_the_simulator_before_them(tmp_path):
    """Both mechanisms off: the same bytes as the simulator before they existed (sha256 of its
    output for this population, recorded from that code)."""
    import hashlib

    out = tmp_path / "s.jsonl"
    simulate_to_files(30, 3, 5, out, intent=False, transitions=False)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == \
        "b61ddad69a16ce73843735206319a8493918fc5ba7f8c205bf1e27231e2f1880"
    assert hashlib.sha256((tmp_path / "s.jsonl.truth.jsonl").read_bytes()).hexdigest() == \
        "8ffccd6e2649f7e18d1b3a8d8e5b778a707d1a72600f8d9469bfd9e10c9af870"


def test_intent_searches_come_before_the_shift():
    """In the hours before a scheduled shift the user searches for the coming dominant category
    (queries from its vocabulary); away from shifts, searches keep their usual share."""
    from models.simulate import DAY_MS, HOUR_MS, INTENT_LEAD_H, TYPE_P, VOCAB, SimUser

    near, far = [0, 0, 0], [0, 0]  # near: events, searches, searches for the coming category
    for i in range(40):
        u = SimUser(i, 3, 0)
        t = u.next_event_time(0, 1.0)
        while t < 20 * DAY_MS:
            u._advance(t, 1.0)
            lead_h = (u.next_shift - t) / HOUR_MS
            coming = CATEGORIES[int(np.argmax(u.next_base))]
            e = u.make_event(t, 3, 1.0)
            if lead_h < INTENT_LEAD_H / 2:  # the second half of the lead: intent above half strength
                near[0] += 1
                if e["type"] == "search":
                    near[1] += 1
                    near[2] += all(w in VOCAB[coming] for w in e["query"].split())
            elif lead_h > 2 * INTENT_LEAD_H:
                far[0] += 1
                far[1] += e["type"] == "search"
            t = u.next_event_time(t, 1.0)
    assert near[0] > 200 and far[0] > 2000
    assert abs(far[1] / far[0] - TYPE_P[2]) < 0.03
    assert near[1] / near[0] > 0.4  # 0.15 + (1 - 0.15) * (0.6 * >0.5)
    assert near[2] / near[1] > 0.8


def test_transitions_follow_the_population_table():
    from models.simulate import TRANSITION_P, TRANSITIONS, SimUser

    for on, lo, hi in ((True, TRANSITION_P - 0.05, 1.0), (False, 0.0, 0.35)):
        u = SimUser(0, 1, 0, intent=False, transitions=on)
        hits = 0
        for _ in range(2000):
            old = u._new_base(None)
            new = u._new_base(old)
            hits += CATEGORIES[int(np.argmax(new))] in TRANSITIONS[CATEGORIES[int(np.argmax(old))]]
        assert lo < hits / 2000 < hi, on


def test_expected_target_of_a_session_by_hand(monkeypatch):
    """Two events left in the session (category 0 so far), interests that do not move, no new
    session for days: each event is ``STICKY`` the previous one's category plus ``1 - STICKY`` of
    the interests, its weight is that of its type (click 0.40: 1, browse 0.45: 0.5, search 0.15:
    0), and the expectation is over the type pairs with any weight (probability 0.9775)."""
    from models import simulate
    from models.simulate import K, SimUser, expected_target

    monkeypatch.setattr(simulate, "DRIFT_NOISE", 0.0)
    monkeypatch.setattr(simulate, "SHIFT_EVERY_DAYS", 1e12)
    p = np.array([0.45, 0.1] + [0.045] * (K - 2))
    u = SimUser(0, 1, 0, intent=False, transitions=False)
    u.base = u.logits = np.log(p)
    u.habit_strength, u.rate_per_day = 0.0, 1e-9
    u.session_left, u.session_cat = 2, 0
    # m1 = 0.55 e0 + 0.45 p: 0.7525 for category 0; m2 = 0.55 m1 + 0.45 p: 0.616375
    # sum over (w1, w2) of P * (w1 m1 + w2 m2) / (w1 + w2) = 0.669015, / 0.9775
    got = expected_target(u, 6 * simulate.HOUR_MS, {"click": 1.0, "browse": 0.5}, 4000, 0)
    assert abs(got[0] - 0.669015 / 0.9775) < 0.005
    assert abs(got.sum() - 1.0) < 1e-9
    u.session_left = 0  # nothing in the window: no target, no prediction
    assert expected_target(u, 6 * simulate.HOUR_MS, {"click": 1.0, "browse": 0.5}, 10, 0) is None
    u.rate_per_day = 20.0  # new sessions in the window: each starts from the interests, so every
    # event's category is p, whatever the session before the cut was on
    got = expected_target(u, 6 * simulate.HOUR_MS, {"click": 1.0, "browse": 0.5}, 2000, 0)
    assert abs(got[0] - 0.45) < 0.01


def test_user_steps_leave_the_user_in_the_state_after_each_event():
    """The state :func:`models.simulate.user_steps` yields after an event is that event's: its
    time, and the session's category is the event's unless it was a search (which has none in
    the log, but keeps the one it was drawn from)."""
    from models.simulate import user_steps

    events = 0
    for kind, row, user in user_steps(3, 9, 2):
        if kind == "event":
            events += 1
            assert user.t == row["ts"]
            if row["type"] != "search":
                assert CATEGORIES[user.session_cat] == row["category"]
    assert events > 5


def test_query_likelihood_by_hand():
    """1 to 3 words (a third each), each uniform over the category's list of 9."""
    from models.sim_filter import query_likelihood

    lq = query_likelihood("review series")  # books has both; gaming and movies too; cars only review
    i = CATEGORIES.index
    assert lq[i("books")] == pytest.approx(1 / 3 * 1 / 9 * 1 / 9)
    assert lq[i("movies")] == pytest.approx(1 / 3 * 1 / 9 * 1 / 9)
    assert lq[i("cars")] == 0.0 and lq[i("travel")] == 0.0
    assert query_likelihood("a b c d").sum() == 0.0


def test_new_session_density_is_a_density():
    """The time to the next session start integrates to one over the following days, and its
    intensity follows the day: at the user's 20:00 it is 1 / 0.15 times that at 08:00."""
    from models.sim_filter import new_session_density
    from models.simulate import HOUR_MS

    rate, tz = 12.0, 0.0
    ts = (np.arange(24 * 60 * 20) + 0.5) * 60_000  # 20 days by the minute, at each minute's middle
    dens = new_session_density(0, ts, rate, tz)
    assert dens.sum() / 60 == pytest.approx(1.0, abs=1e-4)  # per hour, summed by the minute
    assert new_session_density(20 * HOUR_MS, 20 * HOUR_MS + 60_000, rate, tz) / \
        new_session_density(8 * HOUR_MS, 8 * HOUR_MS + 60_000, rate, tz) == pytest.approx(1 / 0.15, rel=0.01)


def test_particle_filter_follows_the_events_away_from_its_start(monkeypatch):
    """From a state whose interests are all on books, two days of clicks on travel: the filter's
    particles that jumped to a base point on travel carry the weight, so it predicts mostly travel,
    while the state it started from (simulated forward as it was) still predicts books first."""
    from models import simulate
    from models.sim_filter import ParticleFilter
    from models.simulate import DAY_MS, HOUR_MS, SimUser, expected_target

    u = SimUser(0, 1, 0, intent=False, transitions=False)
    u.base = u.logits = np.log(np.where(np.arange(simulate.K) == CATEGORIES.index("books"), 0.9, 0.1 / 11))
    u.habit_strength, u.rate_per_day, u.session_left, u.session_cat = 0.0, 12.0, 0, -1
    weights = {"click": 1.0, "browse": 0.5}
    pf = ParticleFilter(u, 2000, 0)
    for m in range(24):  # a session of two clicks every four hours
        for s in (0, 60_000):
            pf.observe({"type": "click", "ts": DAY_MS + m * 2 * HOUR_MS + s, "category": "travel", "item_id": "x"})
    pred = pf.predict(6 * HOUR_MS, weights, 16, 2, 0)
    before = expected_target(u, 6 * HOUR_MS, weights, 32, 0)
    assert np.argmax(pred) == CATEGORIES.index("travel") and pred.max() > 0.4
    assert np.argmax(before) == CATEGORIES.index("books") and before.max() > 0.6


def _user_after_first_event(index, intent):
    """A simulated user's state right after its first event, and its events of the next 3 days."""
    import copy

    from models.simulate import DAY_MS, user_steps

    start, events = None, []
    for kind, ev, user in user_steps(index, 5, 4.0, intent=intent, transitions=intent):
        if kind != "event":
            continue
        if start is None:
            start = copy.deepcopy(user)
        elif ev["ts"] - start.t < 3 * DAY_MS:
            events.append(ev)
    return start, events


def test_particle_filter_paths_replay_its_logits_and_likelihood():
    """One particle, so never resampled: its recorded path gives back its logits after every
    event, shifts included, and the path's likelihood is the filter's own weight without the
    factors that do not depend on the interests (the time since the previous event and the
    event's type; a search's query, which this user's clicks and browses do not have)."""
    from models import simulate
    from models.sim_filter import ParticleFilter, in_session_density, new_session_density

    u, events = _user_after_first_event(3, intent=True)
    u.next_shift = u.t + simulate.DAY_MS  # a shift within the events, which resets the logits
    pf = ParticleFilter(u, 1, 0, record=True)
    logits = []
    for ev in events:
        pf.observe(ev)
        logits.append(pf.logits[0].copy())
    pa = pf.paths()
    assert pa["reset"].sum() == 1 and pa["xi"].shape == (1, len(events), simulate.K)
    z = pf.path_logits(pa, pa["xi"], pa["xr"])
    np.testing.assert_allclose(z[0], np.array(logits), atol=1e-12)

    u, events = _user_after_first_event(4, intent=False)
    events = [e for e in events if e["type"] != "search"]
    assert {e["type"] for e in events} == {"click", "browse"} and len(events) > 30
    # the user's constants, and constants the particle drew (another habit and time zone)
    drawn = ParticleFilter.from_prior(u, 1, 4, record=True, constants="prior")
    assert drawn.habit[0] != u.habit and abs(drawn.tz[0] - u.tz_shift_h) > 0.5
    for pf in (ParticleFilter(u, 1, 0, record=True), drawn):
        rest, step = [], []  # per event: the log of the factors that do not depend on the interests; the weight's step
        for ev in events:
            gap, w = ev["ts"] - pf.last, pf.logw[0]
            new = new_session_density(pf.last, ev["ts"], pf.rate[0], pf.tz[0])
            rest.append(math.log(simulate.TYPE_P[("click", "browse").index(ev["type"])]) + math.log(max(
                in_session_density(gap) if pf.session_left[0] > 0 else float(new), 1e-300)))
            pf.observe(ev)
            step.append(pf.logw[0] - w)
        pa = pf.paths()
        z = pf.path_logits(pa, pa["xi"], pa["xr"])
        fine = [i for i in range(len(events)) if rest[i] > -600]  # the filter floors a vanishing weight
        assert len(fine) > 30
        for i in fine:
            one = {k: v[i:i + 1] if np.ndim(v) == 1 else v[:, i:i + 1] for k, v in pa.items()
                   if k not in ("z0", "first")}
            assert step[i] == pytest.approx(rest[i] + pf.path_loglik(one, z[:, i:i + 1])[0], abs=1e-9)


def test_particle_filter_moves_part_copied_particles():
    """After two days of a user's events, resampling has left few distinct particles; the move
    makes every particle's interests its own again, keeps the paths consistent with the new
    logits, and accepts some of its proposals at every step."""
    from models.sim_filter import ParticleFilter

    u, events = _user_after_first_event(6, intent=True)
    pf = ParticleFilter(u, 300, 1, record=True)
    for ev in events[:120]:
        pf.observe(ev)
    w = np.exp(pf.logw - pf.logw.max())
    pf._resample(w / w.sum())
    pf._resample(np.full(pf.n, 1.0 / pf.n))  # twice: the records' order composes
    np.testing.assert_allclose(pf.paths()["z"][:, -1], pf.logits, atol=1e-12)
    before = len(np.unique(pf.logits.round(9), axis=0))
    pf.move(8)
    after = len(np.unique(pf.logits.round(9), axis=0))
    assert before < 0.7 * pf.n and after == pf.n
    assert all(0.0 < a < 1.0 for a in pf.move_stats[0]["acceptance"])
    # each step owns its moved records: a view would keep the move's whole (n, steps, K) arrays alive
    assert all(st[k].base is None for st in pf.steps for k in ("xi", "xr", "z", "base"))
    pa = pf.paths()
    np.testing.assert_allclose(pf.path_logits(pa, pa["xi"], pa["xr"])[:, -1], pf.logits, atol=1e-12)

    # moved over the last 16 events only, the event before them resampled: the paths still hold
    pf = ParticleFilter(u, 300, 1, record=True)
    for ev in events[:120]:
        pf.observe(ev)
    j = next(j for j in range(len(pf.steps) - 17, len(pf.steps)) if pf.steps[j]["parent"] is not None)
    for ev in events[120:120 + j + 17 - len(pf.steps)]:
        pf.observe(ev)
    assert pf.steps[-17]["parent"] is not None
    pf._resample(np.full(pf.n, 1.0 / pf.n))
    before = pf.logits.copy()
    pf.move(1, beta=1e-9, last=16, resample=False)  # proposals next to each path: logits stay
    np.testing.assert_allclose(pf.logits, before, atol=1e-6)
    pf.move(4, last=16)
    pa = pf.paths()
    np.testing.assert_allclose(pf.path_logits(pa, pa["xi"], pa["xr"]), pa["z"], atol=1e-10)
    np.testing.assert_allclose(pa["z"][:, -1], pf.logits, atol=1e-12)

    # moved at every resampling, over the last 16 events: the whole paths still give every logit
    pf = ParticleFilter(u, 300, 1, block=16, block_moves=2)
    for ev in events[:120]:
        pf.observe(ev)
    assert len(pf.move_stats) > 10 and max(m["steps"] for m in pf.move_stats) == 16
    pa = pf.paths()
    np.testing.assert_allclose(pf.path_logits(pa, pa["xi"], pa["xr"]), pa["z"], atol=1e-10)
    np.testing.assert_allclose(pa["z"][:, -1], pf.logits, atol=1e-12)
    assert len(np.unique(pf.logits.round(9), axis=0)) > 0.9 * pf.n


def test_path_moves_take_the_proposal_when_accepted_and_nothing_else():
    """One compiled Crank-Nicolson step (models.sim_paths.pcn_step): a particle whose uniform
    draw accepts takes ``c xi + beta noise`` as its drift draws, and at its shifts' steps the next
    rows of the shift noise, in the order of the particles and steps; its logits become the
    replay of those draws and its log-likelihood theirs. A particle that refuses keeps its path."""
    from models import simulate
    from models.sim_filter import ParticleFilter
    from models.sim_paths import pcn_step

    u, events = _user_after_first_event(3, intent=True)
    u.next_shift = u.t + simulate.DAY_MS
    pf = ParticleFilter(u, 3, 0, record=True)
    for ev in events:
        pf.observe(ev)
    pa = pf.paths()
    pa["reset"][1] = False  # particle 1 has no shift, so particle 2's take the next rows
    xi, xr, z = (pa[k].copy() for k in ("xi", "xr", "z"))
    assert pa["reset"][0].sum() == 1 and pa["reset"][2].sum() == 1
    ll = pf.path_loglik(pa, z)
    r = np.random.default_rng(5)
    nxi, nxr = r.normal(size=xi.shape), r.normal(size=(2, simulate.K))
    c, beta = 0.8, 0.6
    path = pf.kernel_path(pa)
    accepted = pcn_step(*path, xi, xr, z, ll, c, beta, nxi, nxr, np.array([-np.inf, np.inf, -np.inf]))
    assert accepted == 2
    want_xi = c * pa["xi"] + beta * nxi
    want_xr = pa["xr"].copy()
    for p, row in ((0, 0), (2, 1)):
        i = int(np.flatnonzero(pa["reset"][p])[0])
        want_xr[p, i] = c * pa["xr"][p, i] + beta * nxr[row]
    for p in (0, 2):
        np.testing.assert_allclose(xi[p], want_xi[p], atol=1e-12)
        np.testing.assert_allclose(xr[p], want_xr[p], atol=1e-12)
    np.testing.assert_array_equal(xi[1], pa["xi"][1])
    np.testing.assert_array_equal(z[1], pa["z"][1])
    want_z = pf.path_logits(pa, want_xi, want_xr)
    np.testing.assert_allclose(z[[0, 2]], want_z[[0, 2]], atol=1e-12)
    np.testing.assert_allclose(ll, pf.path_loglik(pa, z), atol=1e-9)
    assert abs(ll[0] - pf.path_loglik(pa, pa["z"])[0]) > 1.0  # the proposal moved it


def test_particle_filter_base_moves_keep_the_gamma_prior():
    """With events that say nothing (all taken for intent searches, whose likelihood does not
    depend on the interests), moving the base points drawn on the path keeps their Gamma draws'
    prior: started from it, after 40 steps their mean log and mean are still the prior's
    (digamma(0.35) = -2.9711, and 0.35), and most proposals are accepted."""
    from models import simulate
    from models.sim_filter import ParticleFilter

    u, events = _user_after_first_event(4, intent=False)
    pf = ParticleFilter(u, 2000, 2, record=True)
    for ev in events[:10]:
        pf.observe(ev)
    pf._resample(np.full(pf.n, 1.0 / pf.n))
    pa = pf.paths()
    for st in pf.steps:
        st["intent"][:] = True
    pf.steps[3]["newbase"][:] = True
    g = pf.rng.standard_gamma(simulate.BASE_CONCENTRATION, size=(pf.n, simulate.K))
    pf.base_g, pf.base_to = g.copy(), np.full(pf.n, -1)
    pf.base = pf._base_from(g, pf.base_to)
    pf.move(40, resample=False)
    assert pf.move_stats[0]["base_moved"] == pf.n and np.mean(pf.move_stats[0]["base_acceptance"]) > 0.1
    assert np.log(pf.base_g).mean() == pytest.approx(-2.9711, abs=0.08)
    assert pf.base_g.mean() == pytest.approx(0.35, abs=0.02)
    assert np.abs(pf.base_g - g).mean() > 0.1  # they moved
    np.testing.assert_allclose(pf.base, pf._base_from(pf.base_g, pf.base_to))
    np.testing.assert_allclose(pf.paths()["base"][:, -1], pf.base)
    assert pa["z"].shape[1] == 10


def test_particle_filter_from_the_prior_draws_as_the_simulator_and_learns_the_events():
    """Started before a user's first event, the particles draw the state as the simulator does:
    the base point's Gamma draws (mean 0.35, mean log digamma(0.35) = -2.9711), the interests 0.6
    around it, the first shift about 4 days ahead. Fed the user's 3 days of events, the filter's
    interests are far nearer the user's true ones than the prior's are."""
    from models import simulate
    from models.sim_filter import ParticleFilter
    from models.simulate import DAY_MS, SimUser, user_steps

    for intent in (True, False):
        u0 = SimUser(6, 5, simulate.DEFAULT_START_MS, intent, intent)
        pf = ParticleFilter.from_prior(u0, 4000, 0)
        assert pf.base_g.mean() == pytest.approx(0.35, abs=0.02)
        assert np.log(pf.base_g).mean() == pytest.approx(-2.9711, abs=0.08)
        assert (pf.logits - pf.base).std() == pytest.approx(0.6, abs=0.02)
        assert (pf.rate == u0.rate_per_day).all() and (pf.habit == u0.habit).all()
        if intent:
            assert (pf.next_shift - u0.t).mean() / DAY_MS == pytest.approx(4.0, abs=0.25)
        prior = pf.interests(u0.t).mean(0)
        user = None
        for kind, ev, user in user_steps(6, 5, 3.0, intent=intent, transitions=intent):
            if kind == "event":
                pf.observe(ev)
        w = np.exp(pf.logw - pf.logw.max())
        est = (w[:, None] * pf.interests(pf.t)).sum(0) / w.sum()
        true = user.interests(pf.t)
        assert kl_per_sample(true[None], est[None])[0] < 0.4 * kl_per_sample(true[None], prior[None])[0]


def test_particle_filter_from_the_prior_records_its_first_draw_and_forgets_old_steps():
    """One particle from the prior, so never resampled: its first event's step is a reset that
    carries the first draw of its interests (so a move can change it), and the recorded path gives
    back its logits after every event; keeping the last 40 steps only, it gives back the last 40."""
    from models import simulate
    from models.sim_filter import ParticleFilter
    from models.simulate import SimUser, user_steps

    for intent in (True, False):
        events = [ev for kind, ev, _ in user_steps(6, 5, 3.0, intent=intent, transitions=intent) if kind == "event"]
        assert len(events) > 100
        for keep in (0, 40):
            pf = ParticleFilter.from_prior(SimUser(6, 5, simulate.DEFAULT_START_MS, intent, intent), 1, 0,
                                           record=True, keep=keep)
            first = (pf.logits - pf.base) / simulate.DRIFT_NOISE
            logits = []
            for ev in events:
                pf.observe(ev)
                logits.append(pf.logits[0].copy())
            pa = pf.paths()
            assert pa["xi"].shape[1] == (keep or len(events))
            z = pf.path_logits(pa, pa["xi"], pa["xr"])
            np.testing.assert_allclose(z[0], np.array(logits[-z.shape[1]:]), atol=1e-12)
            if not keep:
                assert pa["reset"][0, 0] and pa["newbase"][0, 0]
                np.testing.assert_allclose(pa["xr"][0, 0], first[0])


def test_simulator_constants_prior_is_the_users_own_law():
    """models.simulate.constants_prior draws what SimUser draws, in its order: from a user's own
    generator it gives that user's activity, habit, habit strength and time zone."""
    from models.simulate import SimUser, activity_rate, constants_prior

    for i in range(40):
        u = SimUser(i, 3, 0)
        x, habit, strength, tz = constants_prior(np.random.default_rng([3, i]), 1)
        assert activity_rate(x)[0] == pytest.approx(u.rate_per_day, rel=1e-12)
        assert (habit[0], strength[0], tz[0]) == (u.habit, u.habit_strength, u.tz_shift_h)


def test_path_likelihood_under_every_habit_in_one_pass():
    """models.sim_paths.loglik_by_habit gives, for every category, the path's likelihood had the
    habit been on it: loglik_all with that habit, to rounding."""
    from models import simulate
    from models.sim_filter import ParticleFilter, _c
    from models.sim_paths import loglik_all, loglik_by_habit
    from models.simulate import SimUser, user_steps

    pf = ParticleFilter.from_prior(SimUser(7, 2, simulate.DEFAULT_START_MS), 50, 0, constants="prior")
    for kind, ev, _ in user_steps(7, 2, 1.0):
        if kind == "event":
            pf.observe(ev)
    pa = pf.paths()
    z, boost = _c(pa["z"])[0], pf.habit_boost(pa["t"])
    rest = _c(pa["cat"], pa["sc"], pa["intent"], pa["dwell"])
    by = loglik_by_habit(z, boost, *rest)
    assert by.shape == (50, simulate.K) and boost.max() > 0.5
    for h in range(simulate.K):
        np.testing.assert_allclose(by[:, h], loglik_all(z, np.full(50, h), boost, *rest), atol=1e-9)
    assert np.ptp(by, axis=1).min() > 0.1  # the habit matters to every path


def test_particle_filter_from_the_prior_learns_the_constants_it_drew():
    """With constants="prior" every particle draws the user's activity, habit and time zone from
    the population's law, and the events weigh them. Resampling alone leaves one activity, drawn
    before the events could say (here about half the user's 120 events a day); moved after every
    16 events, the particles keep many and their activity is the user's, within 10 %."""
    from models import simulate
    from models.sim_filter import ParticleFilter
    from models.simulate import SimUser, user_steps

    u0 = SimUser(7, 2, simulate.DEFAULT_START_MS)
    events = [ev for kind, ev, _ in user_steps(7, 2, 1.0) if kind == "event"]
    assert u0.rate_per_day == 120.0 and len(events) > 100
    found = {}
    for block in (0, 16):
        pf = ParticleFilter.from_prior(u0, 500, 0, constants="prior", block=block, block_moves=2)
        assert pf.rate.std() > 5 and len(np.unique(pf.habit)) == simulate.K
        for ev in events:
            pf.observe(ev)
        w = np.exp(pf.logw - pf.logw.max())
        found[block] = (float(np.exp((w * np.log(pf.rate)).sum() / w.sum())), len(np.unique(pf.rate)))
    assert found[0][1] == 1 and not 0.9 * 120 < found[0][0] < 1.1 * 120
    assert found[16][1] > 10 and found[16][0] == pytest.approx(120, rel=0.1)
    assert any("constants" in m for m in pf.move_stats)
    with pytest.raises(ValueError, match="constants must be 'known' or 'prior'"):
        ParticleFilter.from_prior(u0, 5, 0, constants="learned")
    with pytest.raises(ValueError, match="move_constants needs a filter whose constants were drawn"):
        ParticleFilter.from_prior(u0, 5, 0).move_constants(1)


def test_particle_filter_constant_moves_keep_their_prior():
    """With events that say nothing of the constants (every event taken for an intent search and
    none for a session's start), moving them keeps their prior: the activity's normal draw stays
    standard normal, the time zone uniform over ±3 h, the habit's strength uniform over [0, 1.5]
    and the habit uniform over the categories."""
    from models import simulate
    from models.sim_filter import ParticleFilter
    from models.simulate import SimUser, user_steps

    pf = ParticleFilter.from_prior(SimUser(4, 5, simulate.DEFAULT_START_MS, False, False), 3000, 1,
                                   constants="prior")
    for kind, ev, _ in user_steps(4, 5, 1.0, intent=False, transitions=False):
        if kind == "event":
            pf.observe(ev)
    pf._resample(np.full(pf.n, 1.0 / pf.n))
    for st in pf.steps:
        st["intent"][:], st["new"][:] = True, False
    x0 = pf.rate_x.copy()
    pf.move_constants(30)
    assert np.abs(pf.rate_x - x0).mean() > 0.3  # they moved
    assert pf.rate_x.mean() == pytest.approx(0.0, abs=0.08) and pf.rate_x.std() == pytest.approx(1.0, abs=0.06)
    assert pf.tz.mean() == pytest.approx(0.0, abs=0.12) and pf.tz.std() == pytest.approx(math.sqrt(3), abs=0.08)
    assert pf.habit_strength.mean() == pytest.approx(0.75, abs=0.04)
    assert pf.habit_strength.min() >= 0 and pf.habit_strength.max() <= simulate.HABIT_BOOST
    assert np.bincount(pf.habit, minlength=simulate.K).min() > 3000 / simulate.K * 0.7
    np.testing.assert_allclose(pf.rate, simulate.activity_rate(pf.rate_x))


def test_particle_filter_draws_new_base_points_as_the_simulator():
    """The filter's new base points follow the population's transitions as often as the
    simulator's do (:func:`test_transitions_follow_the_population_table`)."""
    from models.sim_filter import ParticleFilter
    from models.simulate import TRANSITION_P, TRANSITIONS, SimUser

    pf = ParticleFilter(SimUser(0, 1, 0), 4000, 0)
    old = pf.base.copy()
    new, _, _ = pf._new_base(old)
    hits = np.mean([CATEGORIES[int(np.argmax(b))] in TRANSITIONS[CATEGORIES[int(np.argmax(a))]]
                    for a, b in zip(old, new)])
    assert TRANSITION_P - 0.05 < hits < TRANSITION_P + 0.25 * 2 / 12 + 0.05


def test_dense_readouts_targets_profiles_and_position_weights(tmp_path):
    """Every readout of a training sequence is a training cut of the same user with that cut's own
    target and profile; its weight is the share of the cut's serving window (counted here from the
    encoder's own output) that the sequence holds before it; the sequence's own cut weighs 1."""
    from interest_core.encoding import fit_encoder
    from interest_core.window import window_slice
    from models.data import dense_readouts, sample_profiles

    H = 3_600_000
    events = []
    for u in range(3):
        for i in range(60):  # 20 minutes apart: a 1-day window holds up to 72, the 40-token budget ~12
            events.append({"event_id": f"{u}-{i}", "user_id": f"u{u}", "type": "click", "ts": i * H // 3 + u,
                           "category": "abc"[(i // 4 + u) % 3], "item_id": "x"})
    users, _ = read_log(_log(tmp_path, events))
    cfg = DataConfig(target="next_k", target_k=3, max_len=40)
    enc = fit_encoder((e for evs in users.values() for e in evs), min_category_count=1, bpe_vocab_size=30, max_len=40)
    t1, t2 = split_times(users, cfg)
    ds = build_dataset(users, list(enc.categories), cfg, t1, t2)
    tr, allc = ds.splits["train"], ds.splits["train_all"]
    seqs, dense = dense_readouts(ds, tr, cfg, enc)
    assert len(seqs) == len(tr) and dense.readouts_per_sequence > 5
    profiles = sample_profiles(ds, allc, cfg, enc)
    gap_ids = range(enc.gap_offset, enc.dwell_offset)
    checked = 0
    for q in range(0, len(tr), 7):
        rows = range(dense.offsets[q], dense.offsets[q + 1])
        assert sum(dense.is_last[r] for r in rows) == 1
        ids = list(seqs[q])
        for r in rows:
            c, ui = int(allc.cut[dense.cut_row[r]]), int(allc.user[dense.cut_row[r]])
            assert ui == tr.user[q]
            np.testing.assert_array_equal(dense.targets[dense.cut_row[r]], allc.targets[dense.cut_row[r]])
            np.testing.assert_array_equal(dense.profiles[dense.cut_row[r]], profiles[dense.cut_row[r]])
            evs = ds.seqs[ui].events
            served = enc.encode(window_slice(evs[:c], evs[c - 1].ts, 86_400_000, 128))
            n_served = sum(t in gap_ids for t in served)  # one gap token per event
            n_context = sum(t in gap_ids for t in ids[: dense.pos[r] + 1])
            want = 1.0 if dense.is_last[r] else n_context / n_served
            assert dense.weight[r] == pytest.approx(want), (q, c)
            assert ids[dense.pos[r]] == enc.category_offset + enc.category_index(evs[c - 1].category)
            checked += 1
    assert checked > 50 and 0 < dense.weight.min() < 0.5  # early readouts see little of their window


def test_with_intent_the_interests_jump_at_the_shift():
    """At a scheduled shift the interests move to the coming base point at once: the coming
    category's share rises sharply across the shift (drifting there would take ~48 h; measured
    without the jump: +0.003 on average, and the coming category on top 7 % of the time)."""
    from models.simulate import HOUR_MS, SimUser

    rise, top = [], []
    for i in range(60):
        u = SimUser(i, 5, 0, transitions=False)
        for _ in range(3):
            coming, at = int(np.argmax(u.next_base)), u.next_shift
            u._advance(at - HOUR_MS, 1.0)
            before = u.interests(at - HOUR_MS)
            u._advance(at + 1, 1.0)
            after = u.interests(at + 1)
            rise.append(after[coming] - before[coming])
            top.append(int(np.argmax(after)) == coming)
    assert np.mean(rise) > 0.15 and np.mean(top) > 0.4, (np.mean(rise), np.mean(top))


def test_scaled_targets_span_a_multiple_of_the_target_and_stay_in_training_by_hand(tmp_path):
    """The auxiliary target of a cut is the target over ``times`` target spans (here the next 2 x 2
    events, or 0.5 x 2, type-weighted like the target), and none where that span would run past the
    log or into the validation period (a training target must end before ``t1``)."""
    from dataclasses import replace

    from models.data import scaled_targets

    cats = "aabbcacbaa"  # one user, events 1 hour apart, the 7th a browse (weight 0.5)
    events = [{"event_id": str(i), "user_id": "u", "type": "browse" if i == 6 else "click", "ts": i * 3_600_000,
               "category": c, "item_id": "x"} for i, c in enumerate(cats)]
    users, _ = read_log(_log(tmp_path, events))
    cfg = DataConfig(target="next_k", target_k=2)
    ds = build_dataset(users, ["a", "b", "c"], cfg, t1=7 * 3_600_000, t2=8 * 3_600_000)
    samples = Samples(np.zeros(3, np.int32), np.array([1, 2, 4], np.int32),
                      np.array([0, 3_600_000, 3 * 3_600_000], np.int64), np.zeros((3, 3), np.float32))
    t, ok = scaled_targets(ds, samples, cfg, 2)
    # cut 1: events 1..4 = a b b c; cut 2: events 2..5 = b b c a; cut 4: events 4..7 end at 7 h, not before t1
    np.testing.assert_allclose(t[0], [0.25, 0.5, 0.25])
    np.testing.assert_allclose(t[1], [0.25, 0.5, 0.25])
    assert ok.tolist() == [True, True, False] and not t[2].any()
    # in the joined dataset of a refit (t1 = t2 = 8 h) cut 4 is kept: c a c(0.5) b
    t, ok = scaled_targets(replace(ds, t1=8 * 3_600_000), samples, cfg, 2)
    assert ok.tolist() == [True, True, True]
    np.testing.assert_allclose(t[2], np.array([1, 1, 1.5]) / 3.5)
    # half a span: the next event alone (a, b, then c at cut 4, before t1)
    t, ok = scaled_targets(ds, samples, cfg, 0.5)
    assert ok.tolist() == [True, True, True]
    np.testing.assert_allclose(t, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])


def _orjson_says(raw: bytes) -> str:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return str(exc)
    raise AssertionError(f"{raw!r} is JSON")


# orjson's own words, which change between its releases ("invalid literal" in 3.9, then with
# "expected 'null'"): the test is of the file and line around them
ORJSON_ON_NOT_JSON = _orjson_says(b"not json")


@pytest.mark.parametrize("lines, error", [
    (['{"user_id": "u0", "ts": 1, "interests": {"books": 1}}', '{"user_id": "u1", "ts": 1, "interests": {"cars": 1}}'],
     "2: interests must give a number for each of the categories of its first line (books)"),
    (['{"user_id": "u0", "ts": 1, "interests": {"books": "1"}}'],
     "1: interests must give a number for each of the categories of its first line (books)"),
    (["[1, 2]"], "1: a truth row is an object with user_id (text), ts (an integer) and interests (category -> share)"),
    (['{"user_id": "u0", "ts": 1.5, "interests": {}}'],
     "1: a truth row is an object with user_id (text), ts (an integer) and interests (category -> share)"),
    (['{"user_id": "u0", "ts": 1, "interests": {"books": 1}}', "not json"],
     f"2: not JSON ({ORJSON_ON_NOT_JSON})"),
])
def test_a_truth_file_that_is_not_one_says_which_line(tmp_path, lines, error):
    """evaluate reads FILE.truth.jsonl beside a simulated log: a malformed one was a KeyError or a
    TypeError traceback, or orjson's message naming neither the file nor the line."""
    from models.simulate import read_truth

    path = tmp_path / "s.jsonl.truth.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as err:
        read_truth(path)
    assert str(err.value) == f"{path}:{error}"

"""evaluate-rerank: the candidate lists and popularity of a hand-made log, the batched ranking equal
to interest_core.rerank's own, and the command end to end on a crafted log with a tiny model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from models import cli
from models.data import DataConfig, prepare
from models.rerank_eval import (BlendGrid, CandidateLists, build_candidates, metrics_at, popularity_metrics,
                                served_metrics, target_end, training_popularity)

T0 = 1_700_000_000_000
H = 3_600_000
TINY_SETS = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "eval_every=10",
             "--set", "batch_size=16", "--set", "max_len=48", "--set", "threads=1"]


def write_log(path, rows):
    """rows: (user, type, ts, item, category) -> a JSONL event log."""
    with open(path, "w") as f:
        for n, (u, kind, ts, item, cat) in enumerate(rows):
            f.write(json.dumps({"event_id": f"e{n}", "user_id": u, "type": kind, "ts": ts,
                                "item_id": item, "category": cat}) + "\n")
    return path


CAT = {"x": "cA", "y": "cA", "z": "cB", "w": "cB", "a": "cB", "v": "cC", "q": "cC"}


def hand_log(tmp_path):
    rows = []
    for u, kind, hours, item in [("b1", "click", (0, 1, 2), "x"), ("b2", "click", (0, 1), "x"),
                                 ("b3", "click", (0, 1, 2), "y"), ("b3", "browse", (3, 4), "y"),
                                 ("b4", "click", (0, 1, 2, 3), "z"), ("b5", "click", (0,), "w"),
                                 ("b5", "browse", (1,), "v"),
                                 # u: z in training, a in the test period, then the target: y and q
                                 ("u", "click", (1,), "z"), ("u", "click", (20,), "a"),
                                 ("u", "click", (22,), "y"), ("u", "click", (23,), "q")]:
        rows += [(u, kind, T0 + h * H, item, CAT[item]) for h in hours]
    return write_log(tmp_path / "hand.jsonl", rows)


def test_popularity_and_candidates_by_hand(tmp_path):
    cfg = DataConfig(target="next_k", target_k=2, min_category_count=1)
    ds, _, _ = prepare(hand_log(tmp_path), cfg, split={"t1": T0 + 10 * H, "t2": T0 + 15 * H})
    test = ds.splits["test"]
    assert len(test) == 1  # u cut after a (h20); target y, q
    pop, category = training_popularity(ds, ds.t1, cfg.click_weight, cfg.browse_weight)
    # before h10: x 3 + 2 clicks; y 3 clicks + 2 browses at .5; z 4 + u's 1; w 1; v one browse
    assert pop == {"x": 5.0, "y": 4.0, "z": 5.0, "w": 1.0, "v": 0.5}
    assert category == CAT
    c = build_candidates(ds, test, cfg, pop, category, negatives=2)
    # popular order x, z, y, w, v: z was clicked by u, y is a positive -> negatives x, w;
    # q (a positive never seen in training) scores 0 and comes last
    assert c.items == [["x", "y", "w", "q"]]
    assert c.scores == [[5.0, 4.0, 1.0, 0.0]] and c.categories == [["cA", "cA", "cB", "cC"]]
    assert c.relevant[0].tolist() == [False, True, False, True]
    assert build_candidates(ds, test, cfg, pop, category, negatives=3).items == [["x", "y", "w", "v", "q"]]
    ndcg, hr = popularity_metrics(c)
    # positives at ranks 2 and 4: (1/log2 3 + 1/log2 5) / (1 + 1/log2 3)
    assert ndcg[0] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert hr[0] == 1.0


def test_target_spans():
    class Seq:
        ts = np.array([0, 0, 1, 2, 2, 3, 7, 7, 7]) * H  # baskets of 2, 1, 2, 1, 3 lines

    baskets = DataConfig(target="next_baskets", target_k=2)
    assert target_end(Seq, 2, 0, baskets) == 5  # after basket 1: baskets 2 and 3
    assert target_end(Seq, 3, H, baskets) == 6  # after basket 2: baskets 3 and 4
    assert target_end(Seq, 5, 2 * H, baskets) == 9  # after basket 3: 4 and 5, the end of the log
    assert target_end(Seq, 2, 0, DataConfig(target="next_k", target_k=4)) == 6
    assert target_end(Seq, 2, 0, DataConfig(target="time", target_window_s=7200)) == 5  # ts <= 2 h


def test_metrics_by_hand():
    rel = np.array([True] * 12 + [False] * 3)
    assert metrics_at(np.arange(15), rel) == (1.0, 1.0)  # 10 hits in the first 10: ideal is 10 hits, not 12
    assert metrics_at(np.arange(15)[::-1], rel) == (pytest.approx(
        sum(1 / math.log2(r + 2) for r in range(3, 10)) / sum(1 / math.log2(r + 2) for r in range(10))), 1.0)
    assert metrics_at(np.array([1, 0]), np.array([True, False])) == (pytest.approx(1 / math.log2(3)), 1.0)
    assert metrics_at(np.arange(12), np.array([False] * 10 + [True] * 2)) == (0.0, 0.0)


def crafted_rows():
    """48 users who only click the 3 popular items of their category (4 categories), hourly for
    60 h, cycling, so any 3 consecutive clicks are those 3 items; 30 users click 10 filler items
    per category, the m-th one 3 * (10 - m) times in all, in the first hour."""
    rows = []
    for n in range(48):
        f = n % 4
        rows += [(f"u{n}", "click", T0 + t * H, f"p{f}-{t % 3}", f"c{f}") for t in range(60)]
    for j in range(30):
        for c in range(4):
            rows += [(f"z{j}", "click", T0 + (c * 10 + m) * 60_000 + j, f"f{c}-{m}", f"c{c}")
                     for m in range(j % 10 + 1)]
    return rows


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    d = tmp_path_factory.mktemp("rerank")
    return write_log(d / "crafted.jsonl", crafted_rows())


def test_batched_ranking_is_reranks(crafted):
    """BlendGrid (validation weight search) ranks exactly as interest_core.rerank.rerank does."""
    cfg = DataConfig(target="next_k", target_k=3)
    ds, enc, _ = prepare(crafted, cfg)
    test = ds.splits["test"]
    pop, category = training_popularity(ds, ds.t1, 1.0, 0.5)
    c = build_candidates(ds, test, cfg, pop, category, 20)
    rng = np.random.default_rng(0)
    interests = rng.dirichlet(np.full(enc.k, 0.3), len(test))
    prior = dict(zip(enc.categories, rng.dirichlet(np.ones(enc.k)).tolist()))
    grid = BlendGrid(c, interests, list(enc.categories), prior)
    for w in (0.0, 0.3, 0.5, 1.0):
        batched, served = grid.metrics(w), served_metrics(c, interests, list(enc.categories), prior, w)
        assert np.array_equal(batched[0], served[0]) and np.array_equal(batched[1], served[1])
    assert np.array_equal(grid.metrics(0.0)[0], popularity_metrics(c)[0])  # weight 0: the popularity order
    # lists not in score order (the ties rule: score, then position)
    perm = [rng.permutation(len(x)) for x in c.items]
    shuffled = CandidateLists(*[[[lst[i] for i in p] for lst, p in zip(field, perm)]
                                for field in (c.items, c.categories, c.scores)],
                              [r[p] for r, p in zip(c.relevant, perm)])
    grid = BlendGrid(shuffled, interests, list(enc.categories), prior)
    for w in (0.0, 0.5, 1.0):
        batched, served = grid.metrics(w), served_metrics(shuffled, interests, list(enc.categories), prior, w)
        assert np.array_equal(batched[0], served[0]) and np.array_equal(batched[1], served[1])


@pytest.fixture(scope="module")
def tiny_ckpt(crafted, tmp_path_factory):
    pytest.importorskip("torch")
    ck = tmp_path_factory.mktemp("rerank-ck") / "ck"
    res = CliRunner().invoke(cli.train, ["--data", str(crafted), "--out", str(ck), "--max-steps", "20",
                                         "--target", "next_k", "--target-k", "3", "--quiet", *TINY_SETS])
    assert res.exit_code == 0, res.output
    return ck


@pytest.mark.slow
def test_evaluate_rerank_cli(crafted, tiny_ckpt, tmp_path):
    def run(*extra):
        out = tmp_path / f"ev{len(extra)}{extra[-1] if extra else ''}"
        r = CliRunner().invoke(cli.evaluate_rerank, [str(tiny_ckpt), "--data", str(crafted), "--out", str(out),
                                                     "--negatives", "20", *extra])
        assert r.exit_code == 0, r.output
        assert "is not the log the checkpoint was trained on" not in r.output
        return json.loads((out / "rerank_metrics.json").read_text())
    m = run()
    # train refits by default; the baselines are refit on the samples the model was
    refit = json.loads((tiny_ckpt / "model_card.json").read_text())["metrics"]["selection"]["refit"]
    assert m["data"]["baselines_refit_on"] == refit["samples"] > m["data"]["sample_counts"]["train"]
    # 708 events before hour 1, then 48 an hour: the 85% quantile (event 3008 of 3540) is hour 48, so
    # every user's cuts after hours 48..56 are test samples (3 clicks ahead)
    assert m["samples"] == 48 * 9
    # positives: the 3 items of the user's category; negatives: 9 other categories' popular items,
    # then the fillers (pop 30: 4, 27: 4, 24: 3)
    assert m["positives_mean"] == 3 and m["candidates_mean"] == 23
    assert (m["negatives"], m["negatives_mean"], m["negatives_requested"]) == (20, 20, 20)
    # more negatives than the training period has items (52, all clicked before hour 48): every list
    # holds the 49 that are not the user's 3, and the metrics say so (they said "negatives": 10**8)
    big = run("--negatives", str(10**8))
    assert (big["negatives"], big["negatives_mean"], big["negatives_requested"]) == (49, 49, 10**8)
    assert big["candidates_mean"] == 52
    k = m["rankings"]
    for name in ("popularity", "model", "baseline"):
        assert k["oracle"]["ndcg@10"] >= k[name]["ndcg@10"] and k["oracle"]["hr@10"] >= k[name]["hr@10"]
    assert k["model"]["ndcg@10"] > k["popularity"]["ndcg@10"]  # the window says the category
    assert set(m["weights"]) == {"model", "baseline", "oracle"}
    for d in m["diff"].values():
        for v in d.values():
            assert v["ci95"][0] <= v["mean"] <= v["ci95"][1]
    # interest alone: the oracle puts the 3 positives (their category, most popular) first
    one = run("--weight", "1")
    assert one["rankings"]["oracle"] == {"ndcg@10": 1.0, "hr@10": 1.0}
    # weight 0: every re-ranking is the popularity order
    zero = run("--weight", "0")
    assert all(zero["rankings"][s] == zero["rankings"]["popularity"] for s in ("model", "baseline", "oracle"))
    assert zero["diff"]["model-popularity"]["ndcg@10"]["ci95"] == [0.0, 0.0]


def test_bad_input_is_one_line(crafted, tiny_ckpt, tmp_path):
    def run(ck, data):
        r = CliRunner().invoke(cli.evaluate_rerank, [str(ck), "--data", str(data), "--out", str(tmp_path / "o")])
        assert r.exit_code == 1 and r.output.startswith("Error: ") and len(r.output.strip().splitlines()) == 1, r.output
        return r.output

    assert "not a checkpoint directory" in run(tmp_path, crafted)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "model.safetensors", "encoding.json", "model_card.json"):
        (broken / name).write_text("{}")
    assert "not a readable checkpoint" in run(broken, crafted)
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\x00\xff not json\n")
    assert "no valid events" in run(tiny_ckpt, garbage)


def test_category_prior_travels_to_model_json(crafted, tiny_ckpt, tmp_path):
    """train writes the population prior of the lift into the card (the mean training target: by
    construction of the crafted log, a quarter per category), export copies it into model.json."""
    from export.onnx_export import export_checkpoint

    card = json.loads((tiny_ckpt / "model_card.json").read_text())
    prior = card["category_prior"]
    assert list(prior) == card["categories"] and sum(prior.values()) == pytest.approx(1.0)
    assert all(prior[f"c{c}"] == pytest.approx(0.25, abs=0.02) for c in range(4))
    meta = export_checkpoint(tiny_ckpt, tmp_path / "pair", log=lambda m: None)
    assert meta["category_prior"] == prior
    assert json.loads((tmp_path / "pair" / "model.json").read_text())["category_prior"] == prior

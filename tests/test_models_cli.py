"""The training-side CLI end to end on a tiny population: simulate -> train -> evaluate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from models import cli
from stream_app.cli import simulate  # the verb streams through stream_app, so it lives there

TINY_SETS = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "eval_every=10",
             "--set", "batch_size=16", "--set", "max_len=48", "--set", "max_eval_samples=150", "--set", "threads=1",
             "--set", "plain_steps=20"]


@pytest.fixture(scope="module")
def sim_log(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    res = CliRunner().invoke(simulate, ["--users", "40", "--days", "3", "--seed", "2", "--out", str(d / "s.jsonl")])
    assert res.exit_code == 0, res.output
    return d / "s.jsonl"


@pytest.mark.slow
def test_train_evaluate_cli(sim_log, tmp_path):
    pytest.importorskip("torch")
    import shutil

    # the simulated log, and a click the worker would refuse (it has no item): skipped, and said
    log = tmp_path / "s.jsonl"
    refused = {"event_id": "x", "user_id": "u0", "type": "click", "ts": 5, "category": "a"}
    log.write_bytes(sim_log.read_bytes() + json.dumps(refused).encode() + b"\n")
    shutil.copy(f"{sim_log}.truth.jsonl", f"{log}.truth.jsonl")
    lines = len(log.read_bytes().splitlines())
    skipped = (f"data: skipped 1 of {lines} lines the worker would refuse: missing_field 1 (first: line {lines}: "
               "item_id is missing (required for click))\n")
    ck = tmp_path / "ck"
    res = CliRunner().invoke(cli.train, ["--data", str(log), "--out", str(ck), "--max-steps", "20",
                                         "--max-train-samples", "400", "--quiet", *TINY_SETS])
    assert res.exit_code == 0, res.output
    card = json.loads((ck / "model_card.json").read_text())
    assert card["split"]["by"] == "time" and card["split"]["t1"] < card["split"]["t2"]
    # no --target: chosen from the log; a simulated stream with no baskets or sittings gets the next 6 h
    assert card["split"]["data_config"]["target"] == "time"
    assert card["split"]["target_choice"]["target"] == "time"
    assert "target: time, chosen from the log: a 6 h window holds a median of" in res.output
    assert skipped in res.output and card["data"]["invalid"] == 1
    assert card["data"]["sha256"] and card["model_version"] and card["history"]
    # the simulated log has searches: validation chose whether the per-category network reads them
    # through the query map, and the checkpoint is what it chose
    from interest_core.encoding import Encoder

    enc = Encoder.load(ck / "encoding.json")
    qm = card["metrics"]["selection"]["query_map"]
    assert qm["kept"] == (qm["val_kl_diff_ci95"][1] < 0) and enc.query_offset > 0
    assert json.loads((ck / "config.json").read_text())["model"]["query_offset"] == \
        (enc.query_offset if qm["kept"] else -1)
    assert card["window"] == {"horizon_s": 86400, "max_events": 128, "profile_retention_s": 365 * 86400}
    # the item lift (stage 6): kept only when it earns 0.1 % of the validation KL, and then carried by the encoding
    il = card["metrics"]["selection"]["item_lift"]
    assert il["kept"] == (il["lambda"] > 0 and il["val_kl_with"] < 0.999 * il["val_kl_without"])
    assert (enc.item_lift is not None) == il["kept"] and il["slots"] in (1, 5, 20)
    assert f"item lift: validation KL {il['val_kl_with']:.4f} with the window's items" in res.output
    # every possible cut (between two events of a user: events - users) is counted exactly once,
    # as a candidate of a split or under the reason it was skipped
    c = card["samples"]
    reasons = ("empty_target", "straddling_split", "target_past_log_end", "same_ts_cut")
    assert sum(c[f"{s}_candidates"] for s in ("train", "val", "test")) + sum(c[r] for r in reasons) == \
        card["data"]["events"] - card["data"]["users"]
    assert c["empty_target"] > 0  # 6 h targets of 40 light users: some hold no click or browse
    sel = card["metrics"]["selection"]
    assert sel["exported"] in ("none", "full") and sel["plain_val_kl"] > 0
    # each correction's strength came from the grid (20 steps leave them too weak: above 1), and the
    # checkpoint holds the model scaled by them: its validation KL is below the unscaled one
    from models.train import CORRECTION_SCALES

    scales = sel["correction_scales"]
    assert list(scales) == ["features", "transformer"] and set(scales.values()) <= set(CORRECTION_SCALES)
    assert max(scales.values()) > 1.0
    assert (f"the corrections (full) at {scales['features']:g} (features) and {scales['transformer']:g} "
            f"(transformer) x their trained strength") in res.output
    assert sel["corrected_val_kl"] < sel["unscaled_val_kl"] - 1e-4
    # the corrected model is kept, and the card's validation metrics are its own
    assert sel["exported"] == "full" and card["metrics"]["validation"]["kl"] == sel["corrected_val_kl"]
    out = tmp_path / "ev"
    res = CliRunner().invoke(cli.evaluate, [str(ck), "--data", str(log), "--out", str(out)])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "test" and m["samples"] > 0
    assert res.output.startswith(skipped) and m["log"]["invalid_reasons"] == {"missing_field": 1}
    assert set(m["models"]) == {"gpt2", "prior", "last_window", "ema", "user_mean", "ema_prior", "mixture"}
    for v in m["models"].values():
        assert set(v) == {"mse", "kl", "top1", "ndcg@3", "top3", "ece"}  # the contract's four, and two more
    assert set(m["buckets"]) == {"rule", "light", "medium", "heavy"}
    assert sum(m["buckets"][b]["samples"] for b in ("light", "medium", "heavy")) == m["samples"]
    assert m["gain_ci95"]["kl"]["ci95"] == m["kl_gain_ci95"]
    assert m["best_baseline"] in m["models"] and m["best_baseline"] != "gpt2"
    # the best baseline given an items' lift as the model is: chosen on validation, then the same test
    lifted = m["best_with_item_lift"]
    assert lifted["baseline"] == m["best_baseline"] and set(lifted["item_lift"]) >= {"slots", "m", "lambda", "kept"}
    assert lifted["kl_ratio"] == pytest.approx(m["models"]["gpt2"]["kl"] / lifted["kl"], rel=1e-12)
    if lifted["item_lift"]["kept"]:
        assert lifted["kl"] != m["models"][m["best_baseline"]]["kl"] and "given the items' lift too" in res.output
    else:
        assert lifted["kl"] == pytest.approx(m["models"][m["best_baseline"]]["kl"], rel=1e-12)
    lo, hi = m["kl_gain_ci95"]
    assert lo <= hi
    assert "truth" in m  # simulated: error against the latent interests
    for png in ("training_curves", "users", "calibration", "buckets"):
        assert (out / f"{png}.png").stat().st_size > 0
    # evaluate twice gives the same numbers (the split is reproduced from the card)
    res = CliRunner().invoke(cli.evaluate, [str(ck), "--data", str(log), "--out", str(tmp_path / "ev2"),
                                            "--no-plots"])
    assert json.loads((tmp_path / "ev2" / "metrics.json").read_text())["models"] == m["models"]
    # evaluate scores what the worker serves: the graph's answer plus the encoding's item lift
    from interest_core.item_lift import ItemLift, apply
    from models.evaluate import held_out_predictions

    enc = Encoder.load(ck / "encoding.json")
    ck0, ck2 = (Path(shutil.copytree(ck, tmp_path / name)) for name in ("ck0", "ck2"))
    enc.with_item_lift(None).save(ck0 / "encoding.json")  # the graph alone
    graph = held_out_predictions(ck0, log)
    windows = graph.base["test_windows"]
    items = sorted({e.item for w in windows for e in w if e.item is not None})
    v = np.zeros(enc.k)
    v[0] = 2.0  # every item lifts the first category: a window with any item gets v
    enc.with_item_lift(ItemLift(enc.categories, 20, {x: v for x in items})).save(ck2 / "encoding.json")
    lifted = held_out_predictions(ck2, log)
    has = np.array([any(e.item is not None and e.type != "search" and e.category in enc.categories for e in w)
                    for w in windows])
    assert has.sum() > 10
    want = np.where(has[:, None], apply(graph.pred, np.tile(v, (len(windows), 1))), graph.pred)
    np.testing.assert_allclose(lifted.pred, want, atol=1e-9)
    assert np.abs(lifted.pred - graph.pred).max() > 1e-3
    # another split than the card's (bench/sim_scale.py scores several checkpoints on one): a test
    # period that starts halfway through validation holds more samples, all of them after its start
    split = json.loads((ck / "model_card.json").read_text())["split"]
    t2 = (split["t1"] + split["t2"]) // 2
    earlier = held_out_predictions(ck0, log, split={**split, "t2": t2})
    assert len(earlier.ds.splits["test"]) > len(graph.ds.splits["test"])
    assert earlier.ds.splits["test"].cut_ts.min() >= t2
    assert earlier.pred.shape == (len(earlier.ds.splits["test"]), enc.k)


@pytest.mark.slow
def test_train_with_no_correction_to_scale(sim_log, tmp_path):
    """A per-category correction without its network (``cat_hidden=0``) has nothing to scale:
    training ends, and the card records no strengths."""
    pytest.importorskip("torch")
    ck = tmp_path / "ck"
    res = CliRunner().invoke(cli.train, ["--data", str(sim_log), "--out", str(ck), "--max-steps", "5",
                                         "--max-train-samples", "200", "--quiet", *TINY_SETS,
                                         "--set", "correction=features", "--set", "cat_hidden=0", "--set", "refit=0"])
    assert res.exit_code == 0, res.output
    sel = json.loads((ck / "model_card.json").read_text())["metrics"]["selection"]
    assert sel["correction_scales"] == {} and sel["correction"] == "features"
    # and no network to read the searches through the query map: nothing to choose
    assert sel["query_map"] == {"kept": False, "rule": "no per-category network to read them"}
    assert "query map:" not in res.output
    assert "refit" not in sel and "refit on the" not in res.output  # refit=0: the selection run's weights


@pytest.mark.slow
def test_query_map_chosen_on_validation(sim_log, tmp_path, monkeypatch):
    """With searches in training, ``train`` (``queries=auto``) trains the per-category network alone
    with and without the query map and keeps the map if it lowers the validation KL beyond doubt (the
    interval of the difference below zero); the checkpoint is then, to the byte, the one ``--set
    queries=on`` or ``off`` trains, refit included."""
    pytest.importorskip("torch")
    from models import train as train_module

    def run(name, *extra):
        ck = tmp_path / name
        res = CliRunner().invoke(cli.train, ["--data", str(sim_log), "--out", str(ck), "--max-steps", "30",
                                             "--max-train-samples", "300", "--quiet", *TINY_SETS, *extra])
        assert res.exit_code == 0, res.output
        card = json.loads((ck / "model_card.json").read_text())
        return res.output, card["metrics"]["selection"]["query_map"], (ck / "model.safetensors").read_bytes()

    out, qm, auto = run("auto", "--set", "refit=0")
    assert set(qm) == {"rule", "val_kl_with", "val_kl_without", "val_kl_diff_ci95", "kept", "train_seconds"}
    lo, hi = qm["val_kl_diff_ci95"]
    assert lo <= qm["val_kl_with"] - qm["val_kl_without"] <= hi  # (the mean difference inside its interval)
    assert qm["kept"] == (hi < 0)
    verdict = "kept" if qm["kept"] else "left out"
    assert (f"query map: the per-category network alone reached validation KL {qm['val_kl_with']:.4f} reading the "
            f"searches through it and {qm['val_kl_without']:.4f} without (difference {lo:+.4f} to {hi:+.4f}); "
            f"{verdict}") in out
    _, on_record, on = run("on", "--set", "refit=0", "--set", "queries=on")
    _, off_record, off = run("off", "--set", "refit=0", "--set", "queries=off")
    assert on_record == {"kept": True, "rule": "queries=on"} and off_record == {"kept": False, "rule": "queries=off"}
    assert on != off and auto == (on if qm["kept"] else off)
    # the other verdict (the choice flipped), without the refit and with it: the checkpoint follows it
    real = train_module.choose_query_map
    monkeypatch.setattr(train_module, "choose_query_map",
                        lambda *a, **k: {**(r := real(*a, **k)), "kept": not r["kept"]})
    other = "off" if qm["kept"] else "on"
    for refit in ("0", "1"):
        out, qm_flipped, flipped = run(f"flipped{refit}", "--set", f"refit={refit}")
        assert qm_flipped["kept"] != qm["kept"] and ("left out" if qm["kept"] else "kept") in out
        _, _, forced = run(f"forced{refit}", "--set", f"refit={refit}", "--set", f"queries={other}")
        assert flipped == forced, refit


@pytest.mark.slow
def test_query_map_off_by_setting_or_without_searches(sim_log, tmp_path):
    """``--set queries=off`` (or 0) trains without the query map, and so does a log with no search in it."""
    pytest.importorskip("torch")
    lines = sim_log.read_text().splitlines()
    no_search = tmp_path / "no_search.jsonl"
    no_search.write_text("\n".join(x for x in lines if json.loads(x)["type"] != "search") + "\n")
    assert len(no_search.read_text().splitlines()) < len(lines)
    runs = ((sim_log, ["--set", "queries=0"], "queries=off"), (sim_log, ["--set", "queries=off"], "queries=off"),
            (no_search, [], "no search in training"))
    for i, (log, extra, rule) in enumerate(runs):
        ck = tmp_path / f"ck{i}"
        res = CliRunner().invoke(cli.train, ["--data", str(log), "--out", str(ck), "--max-steps", "5",
                                             "--max-train-samples", "200", "--quiet", *TINY_SETS, "--set", "refit=0",
                                             *extra])
        assert res.exit_code == 0, res.output
        assert json.loads((ck / "config.json").read_text())["model"]["query_offset"] == -1, log
        card = json.loads((ck / "model_card.json").read_text())
        assert card["metrics"]["selection"]["query_map"] == {"kept": False, "rule": rule}
        assert "query map:" not in res.output
    res = CliRunner().invoke(cli.train, ["--data", str(sim_log), "--out", str(tmp_path / "x"), "--set", "queries=2"])
    assert res.exit_code == 2 and "queries must be auto (chosen on validation), on or off, got '2'" in res.output
    res = CliRunner().invoke(cli.train, ["--data", str(sim_log), "--out", str(tmp_path / "x"),
                                         "--set", "query_offset=-1"])
    assert res.exit_code == 2 and "unknown key 'query_offset'" in res.output


@pytest.mark.slow
def test_train_refit_cli(sim_log, tmp_path):
    """By default (``refit=1``) the model validation chose is trained again on the training and
    validation periods, for each stage's best step, at the chosen strengths; ``evaluate`` refits the
    baselines on the same samples."""
    pytest.importorskip("torch")
    ck = tmp_path / "ck"
    # a large step: the corrections' validation KL is best at step 20 of 60
    res = CliRunner().invoke(cli.train, ["--data", str(sim_log), "--out", str(ck), "--max-steps", "60",
                                         "--quiet", *TINY_SETS, "--set", "lr=0.02"])
    assert res.exit_code == 0, res.output
    card = json.loads((ck / "model_card.json").read_text())
    sel, hist = card["metrics"]["selection"], card["history"]
    best = {st: min((h for h in hist if h["stage"] == st), key=lambda h: h["val_loss"])["step"]
            for st in ("plain", "corrected")}
    refit = sel["refit"]
    assert refit["plain_steps"] == best["plain"]
    assert sel["exported"] == "full" and refit["steps"] == best["corrected"] < card["training"]["steps"]
    assert card["samples"]["train"] < refit["samples"]  # the training and validation periods
    assert (f"refit on the training and validation periods ({refit['samples']} samples, "
            f"{refit['plain_steps']} + {refit['steps']} steps)") in res.output
    # the card's prior is the refit samples' mean target, not the selection run's
    from models.data import DataConfig, joined_dataset, prepare
    from models.model import load_checkpoint

    _, encoder, _ = load_checkpoint(ck)
    ds, _, _ = prepare(sim_log, DataConfig.from_dict(card["split"]["data_config"]), encoder=encoder,
                       split=card["split"])
    jt = joined_dataset(ds, encoder.categories, DataConfig.from_dict(card["split"]["data_config"])).splits["train"]
    assert len(jt) == refit["samples"] >= card["samples"]["train"] + card["samples"]["val"]
    prior = jt.targets.astype("float64").mean(0)
    assert list(card["category_prior"].values()) == pytest.approx((prior / prior.sum()).tolist(), abs=1e-9)
    res = CliRunner().invoke(cli.evaluate, [str(ck), "--data", str(sim_log), "--out", str(tmp_path / "ev"),
                                            "--no-plots"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["baseline_params"]["mixture"]["refit"] and m["baseline_params"]["mixture"]["fit_samples"] == len(jt)


def test_help_and_bad_arguments(sim_log, tmp_path):
    r = CliRunner()
    for cmd in (simulate, cli.train, cli.evaluate, cli.load):
        res = r.invoke(cmd, ["--help"])
        assert res.exit_code == 0 and "Usage" in res.output
    for sub in ("movielens", "rees46", "completejourney"):
        assert r.invoke(cli.load, [sub, "--help"]).exit_code == 0
    res = r.invoke(cli.train, ["--data", str(sim_log), "--out", str(tmp_path / "x"), "--set", "nope=1"])
    assert res.exit_code == 2 and "unknown key" in res.output and res.exception.__class__ is SystemExit
    known = res.output.split("known keys: ")[1].split()
    assert known.count("seed,") == 1 and "batch_size," in known  # each key once, though seed is in two configs
    res = r.invoke(cli.train, ["--data", str(sim_log), "--out", str(tmp_path / "x"), "--set", "ema_decay=1"])
    assert res.exit_code == 2 and "ema_decay must be at least 0 and below 1 (0: off), got 1.0" in res.output
    res = r.invoke(cli.train, ["--data", str(sim_log), "--out", str(tmp_path / "x"), "--set", "scale_corrections=2"])
    assert res.exit_code == 2 and "scale_corrections must be 0 (off) or 1 (on), got 2" in res.output
    res = r.invoke(cli.train, ["--data", str(sim_log), "--out", str(tmp_path / "x"), "--set", "refit=yes"])
    assert res.exit_code == 2 and "refit" in res.output and "Traceback" not in res.output
    res = r.invoke(cli.train, ["--data", str(sim_log), "--out", str(tmp_path / "x"), "--set", "refit=2"])
    assert res.exit_code == 2 and "refit must be 0 (off) or 1 (on), got 2" in res.output
    res = r.invoke(cli.train, ["--data", str(sim_log), "--out", str(tmp_path / "x"), "--set", "length_buckets=1,x"])
    assert res.exit_code == 2 and "length_buckets: bad value '1,x'" in res.output
    res = r.invoke(cli.train, ["--data", str(sim_log), "--out", str(tmp_path / "x"), "--set", "length_buckets=4,2"])
    assert res.exit_code == 2 and "length_buckets must be increasing history lengths >= 1, got [4, 2]" in res.output
    res = r.invoke(cli.train, ["--data", str(sim_log), "--out", str(tmp_path / "x"), "--loss", "hinge"])
    assert res.exit_code == 2
    for args in (["--target-k", "4"], ["--set", "target_k=4"], ["--target", "auto", "--target-k", "4"]):
        res = r.invoke(cli.train, ["--data", str(sim_log), "--out", str(tmp_path / "x"), *args])
        assert res.exit_code == 2 and "--target-k needs --target next_k or next_baskets" in res.output, args
    res = r.invoke(simulate, ["--users", "3"])  # no --out and no --rate
    assert res.exit_code == 2 and "--out" in res.output
    res = r.invoke(cli.evaluate, [str(tmp_path), "--data", str(sim_log), "--out", str(tmp_path / "e")])
    assert res.exit_code == 1 and "not a checkpoint directory" in res.output
    res = r.invoke(cli.load, ["movielens", str(tmp_path), "--out", str(tmp_path / "m.jsonl")])
    assert res.exit_code == 1 and "ratings.csv" in res.output
    (tmp_path / "empty").mkdir()
    res = r.invoke(cli.train, ["--data", str(sim_log), "--out", str(tmp_path / "x"),
                               "--init-from", str(tmp_path / "empty"), "--max-steps", "1", "--quiet", *TINY_SETS])
    assert res.exit_code == 1 and "neither an `interest-stream pretrain` directory nor a GPT-2 directory" in res.output
    assert res.exception.__class__ is SystemExit  # a one-line error, not a traceback
    assert r.invoke(cli.pretrain, ["--help"]).exit_code == 0
    res = r.invoke(cli.pretrain, ["--data", str(sim_log), "--out", str(tmp_path / "p"), "--set", "n_embed=3"])
    assert res.exit_code == 2 and "unknown key 'n_embed'" in res.output
    (tmp_path / "bad.jsonl").write_text("not json\n")
    res = r.invoke(cli.pretrain, ["--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "p")])
    assert res.exit_code == 1 and "no valid events" in res.output
    # a number out of range is a usage error before the log is read (this log has no valid event)
    res = r.invoke(cli.pretrain, ["--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "p"),
                                  "--set", "dropout=1"])
    assert res.exit_code == 2 and "dropout must be < 1.0, got 1.0" in res.output
    for key_value, message in [("batch_size=0", "batch_size must be >= 1, got 0"),
                               ("lr=nan", "lr must be a finite number, got nan"),
                               ("target_window_s=0", "target_window_s must be >= 1, got 0"),
                               ("n_head=5", "n_embd (48) must be a multiple of n_head (5)")]:
        res = r.invoke(cli.train, ["--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "x"),
                                   "--set", key_value])
        assert res.exit_code == 2 and message in res.output, (key_value, res.output)
    res = r.invoke(simulate, ["--users", "3", "--out", str(tmp_path / "missing" / "s.jsonl")])
    assert res.exit_code == 2 and f"{tmp_path / 'missing'} is not a directory" in res.output


@pytest.mark.slow
def test_train_says_when_its_log_leaves_evaluate_nothing_to_score(sim_log, tmp_path):
    """One user of the simulated log: a checkpoint is trained and written, but no test target fits
    before the log ends. `evaluate` then said only "no validation/test samples"; `train` says why."""
    pytest.importorskip("torch")
    one = tmp_path / "one.jsonl"
    one.write_text("".join(line for line in sim_log.read_text().splitlines(keepends=True) if '"user_id":"u3"' in line))
    res = CliRunner().invoke(cli.train, ["--data", str(one), "--out", str(tmp_path / "ck"), "--max-steps", "2",
                                         "--quiet", *TINY_SETS])
    assert res.exit_code == 0, res.output
    assert " test 0;" in res.output
    assert ("warning: the test split is empty (the log ends before a test target fits), so `evaluate` will have "
            "nothing to score on this log") in res.output

"""A model trained for one target, scored on another target's test cuts of the same log (not a test).

    .venv/bin/python bench/cross_target.py --dataset movielens|cj [--trained-with KEY=VALUE ...]
        [--scored-with KEY=VALUE ...] [--mix] [--reuse] [--workdir DIR]

Why ``train``'s default target matters: a team that runs ``train`` without ``--target`` and asks
the model about the next ratings or baskets gets the model of that default. Two runs of
``bench/model_eval.py`` on the whole log:

* ``trained``: the default variant with the dataset's data config overridden by ``--trained-with``
  (default: ``train``'s old default, the next 6 hours, with ``train``'s validation share);
* ``scored``: the default variant with the dataset's own target (:data:`model_eval.DATASETS`), or
  with the data config overridden by ``--scored-with`` (another horizon, e.g. ``target_k=1``).

The ``trained`` checkpoint then predicts the ``scored`` run's test cuts (its own encoding and
profile of the same windows; the categories matched by name) and is compared there with the
baselines fit for that target and with the ``scored`` model: KL, its ratio to ``mixture`` and to
``ema_prior`` with the paired bootstrap interval over users, and the top-3 hit rate. Stdout: one
JSON with the machine, the commit, both runs' summaries and the comparison.
"""
from __future__ import annotations

import glob
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OLD_DEFAULT = ("target=time", "val_frac=0.15")  # train without --target before it chose from the log


def run_model_eval(dataset: str, workdir: Path, data_sets, reuse: bool = False) -> dict:
    from bench.model_eval import command

    cmd = command(dataset, workdir, *(("--reuse",) if reuse else ()), data_sets=data_sets)
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "err.log", "w") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    if done.returncode != 0:
        raise click.ClickException(f"{' '.join(cmd)} failed:\n{(workdir / 'err.log').read_text()[-2000:]}")
    return json.loads(done.stdout)


@click.command()
@click.option("--dataset", type=click.Choice(["movielens", "cj"]), required=True)
@click.option("--trained-with", "trained_with", multiple=True, metavar="KEY=VALUE", default=OLD_DEFAULT,
              show_default=True, help="data config of the trained model (bench/model_eval.py --data-set)")
@click.option("--scored-with", "scored_with", multiple=True, metavar="KEY=VALUE",
              help="data config of the test cuts, over the dataset's (bench/model_eval.py --data-set)")
@click.option("--mix", is_flag=True,
              help="also mix the trained model into the scored one, the weight chosen on validation (module doc)")
@click.option("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-cross-target"), show_default=True,
              type=click.Path(file_okay=False))
@click.option("--reuse", is_flag=True, help="score the checkpoints of an earlier run in --workdir instead of "
              "training them again (bench/model_eval.py --reuse)")
def main(dataset, trained_with, scored_with, mix, reuse, workdir):
    import torch

    from bench.common import commit, machine
    from models.data import sample_windows
    from models.evaluate import kl_per_sample, paired_bootstrap, top3_per_sample

    torch.set_num_threads(2)
    t0 = time.time()
    wd = Path(workdir) / dataset
    trained = run_model_eval(dataset, wd / "trained", trained_with, reuse)
    scored = run_model_eval(dataset, wd / "scored", scored_with, reuse)
    with open(sorted(glob.glob(str(wd / "scored" / dataset / "prepared-*.pkl")))[0], "rb") as f:
        td, base, _, _ = pickle.load(f)
    test = td.ds.splits["test"]
    parts = [(test, base["test_windows"])]  # and with --mix the validation split's
    if mix:
        val = td.ds.splits["val"]
        parts.append((val, sample_windows(td.ds, val, td.data_cfg)))
    pred, *trained_val = predictions(wd / "trained" / dataset / "default", td, parts)
    kl = kl_per_sample(test.targets, pred)
    out = {"machine": machine(), "commit": commit(), "dataset": dataset, "trained_with": list(trained_with),
           "scored_with": list(scored_with),
           "scored_on": scored["data_config"], "test_samples": int(len(test)),
           "test_users": int(len(np.unique(test.user))),
           "trained": trained["variants"][0], "scored": scored["variants"][0],
           "kl": {"trained_model": round(float(kl.mean()), 4), "scored_model": scored["variants"][0]["kl"],
                  **{n: round(float(kl_per_sample(test.targets, base["test"][n]).mean()), 4)
                     for n in ("mixture", "ema_prior")}},
           "top3": {"trained_model": round(float(top3_per_sample(test.targets, pred).mean()), 4),
                    "scored_model": scored["variants"][0]["top3"],
                    **{n: round(float(top3_per_sample(test.targets, base["test"][n]).mean()), 4)
                       for n in ("mixture", "ema_prior")}}}
    for name in ("mixture", "ema_prior"):
        ref = kl_per_sample(test.targets, base["test"][name])
        lo, hi = paired_bootstrap(ref - kl, test.user)
        out[f"trained_model_vs_{name}"] = {"kl_ratio": round(float(kl.mean() / ref.mean()), 4),
                                           "kl_gain_ci95": [round(lo, 4), round(hi, 4)]}
    if mix:
        scored_test, scored_val = predictions(wd / "scored" / dataset / "default", td, parts)
        p = {"val": scored_val, "test": scored_test}
        q = {"val": trained_val[0], "test": pred}
        curve = [{"space": space, "weight": float(a),
                  "val_kl": round(float(kl_per_sample(val.targets, mixed(p["val"], q["val"], a, space)).mean()), 5),
                  "test_kl": round(float(kl_per_sample(test.targets, mixed(p["test"], q["test"], a, space)).mean()), 5)}
                 for space in ("probabilities", "logits") for a in MIX_WEIGHTS]
        best = min(curve, key=lambda c: c["val_kl"])
        alone = kl_per_sample(test.targets, p["test"])
        diff = kl_per_sample(test.targets, mixed(p["test"], q["test"], best["weight"], best["space"])) - alone
        lo, hi = paired_bootstrap(diff, test.user)
        ref = kl_per_sample(test.targets, base["test"]["mixture"]).mean()
        out["mix"] = {"chosen": best, "scored_model_test_kl": round(float(alone.mean()), 5),
                      "chosen_test_ratio_to_mixture": round(float((alone + diff).mean() / ref), 4),
                      "kl_minus_scored_model": round(float(diff.mean()), 5),
                      "kl_minus_scored_model_ci95": [round(lo, 5), round(hi, 5)], "curve": curve}
    out["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))


MIX_WEIGHTS = np.round(np.arange(0.0, 1.0001, 0.05), 2)


def predictions(ckpt_dir: Path, td, parts) -> list[np.ndarray]:
    """For each (split, windows) of ``parts``, (N, k) the checkpoint's predictions for the split's
    samples (their windows), with its item lift, over ``td``'s categories (matched by name); the
    checkpoint is loaded once."""
    from models.data import sample_profiles
    from models.item_lift import served
    from models.model import load_checkpoint, predict

    model, enc, _ = load_checkpoint(ckpt_dir)
    if sorted(enc.categories) != sorted(td.encoder.categories):
        raise click.ClickException(f"the two runs' categories differ: {enc.categories} / {td.encoder.categories}")
    cols = [enc.categories.index(c) for c in td.encoder.categories]
    out = []
    for split, windows in parts:
        seqs = [enc.encode(w) for w in windows]
        prof = sample_profiles(td.ds, split, td.data_cfg, enc)
        out.append(served(enc, predict(model, seqs, prof, enc.pad_id).astype(np.float64), windows)[:, cols])
    return out


def mixed(p: np.ndarray, q: np.ndarray, a: float, space: str) -> np.ndarray:
    """``p`` and ``q`` (N, k) mixed with the weight ``a`` on ``q``: in probabilities or in logits."""
    if space == "probabilities":
        return (1.0 - a) * p + a * q
    z = (1.0 - a) * np.log(p) + a * np.log(q)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


if __name__ == "__main__":
    main()

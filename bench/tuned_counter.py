"""The model against a counter tuned on the test data itself, offline (not a test; run by `make bench`
after ``bench/live_eval.py``, on the checkpoints it trained).

The issue's check compares the model with a decayed counter shrunk toward the prior "tuned
independently". The most a check can tune one is on its own test data:
:func:`models.baselines.counter_tuned_on_samples`, ``ema_prior`` with its half-life, beta and prior (the
training prior, or the mean of these samples' own targets) chosen on the samples it predicts, in
sample (optimistic) and cross-validated over users (each fold of users predicted by what the other
folds chose). ``bench/live_eval.py`` scores the live vectors against it on each user's first test
cut; this script scores the checkpoint's offline predictions (the same to 1.4e-7) on those cuts and
on the whole test split, with paired bootstrap intervals over users, and says where the tuned
counter's lead comes from:

* the prior alone, the training one against the mean of these samples' targets (their L1 distance,
  and each one's KL as the whole prediction);
* what the population was doing before each cut, as the prior: the category mix of every user's
  events, decayed by 6 hours to 90 days (``bench/hindsight.py``'s ``population_mix``), mixed with
  the training prior at 0.5 or 1, the best of these chosen on the same samples. A worker could
  hold it; the samples' own mean it cannot.

    .venv/bin/python bench/tuned_counter.py [--dataset cj,movielens] [--workdir DIR]

``--workdir`` is ``bench/live_eval.py``'s: its ``<dataset>/ckpt`` and log are read. Prints JSON.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from common import commit, dumps, machine

POPULATION_HALF_LIVES_H = (6, 24, 72, 7 * 24, 30 * 24, 90 * 24)
POPULATION_WEIGHTS = (0.5, 1.0)  # of the population's mix against the training prior


def one_set(run, rows: np.ndarray) -> dict:
    from hindsight import population_mix

    from models.baselines import counter_tuned_on_samples
    from models.evaluate import kl_per_sample, paired_bootstrap

    ds, k = run.ds, run.encoder.k
    s = ds.splits["test"].take(rows)
    prior = run.base["test"]["prior"][0]
    t0 = time.perf_counter()
    tuned = counter_tuned_on_samples(ds, s, k, prior, kl_per_sample)
    kl = {"model": kl_per_sample(s.targets, run.pred[rows]), "best_baseline": kl_per_sample(
        s.targets, run.base["test"][run.base["best"]][rows]),
        "counter_tuned_on_these_samples": kl_per_sample(s.targets, tuned["in_sample"]),
        "counter_tuned_on_other_users": kl_per_sample(s.targets, tuned["cross_validated"])}
    own = s.targets.mean(0).astype(np.float64)
    own /= own.sum()
    whole = lambda p: float(kl_per_sample(s.targets, np.repeat(p[None, :], len(s), 0)).mean())  # noqa: E731
    mix = population_mix(ds, s, k, POPULATION_HALF_LIVES_H)  # (N, L, k)
    population = []
    for j, hl in enumerate(POPULATION_HALF_LIVES_H):
        for a in POPULATION_WEIGHTS:
            p = np.where(mix[:, j].sum(1, keepdims=True) > 0, a * mix[:, j] + (1 - a) * prior[None, :], prior[None, :])
            population.append({"half_life_h": hl, "weight": a,
                               "kl": round(float(kl_per_sample(s.targets, p).mean()), 4)})
    return {
        "samples": int(len(rows)), "users": int(len(np.unique(s.user))),
        "kl": {n: round(float(v.mean()), 4) for n, v in kl.items()},
        "best_baseline": run.base["best"],
        "tuned": tuned["params"],
        **{f"ratio_model_to_{n}": round(float(kl["model"].mean() / kl[n].mean()), 4)
           for n in kl if n != "model"},
        **{f"kl_gain_vs_{n}_ci95": [round(x, 4) for x in paired_bootstrap(kl[n] - kl["model"], s.user)]
           for n in kl if n != "model"},
        "prior": {"l1_training_vs_these_samples": round(float(np.abs(prior - own).sum()), 4),
                  "kl_training_prior_alone": round(whole(prior), 4),
                  "kl_these_samples_mean_alone": round(whole(own), 4),
                  "kl_population_mix_best": min(population, key=lambda r: r["kl"])},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run(dataset: str, workdir: Path) -> dict:
    from model_eval import first_cuts, make_log

    from models.evaluate import held_out_predictions

    ckpt = workdir / dataset / "ckpt"
    if not (ckpt / "model_card.json").exists():
        raise SystemExit(f"{ckpt}: no checkpoint; run bench/live_eval.py --dataset {dataset} --workdir {workdir} first")
    log = make_log(dataset, workdir, 0, 0, 0, "off")
    evaluated = held_out_predictions(ckpt, log)
    test = evaluated.ds.splits["test"]
    return {"dataset": dataset, "checkpoint": str(ckpt),
            "first_test_cuts": one_set(evaluated, first_cuts(test)),
            "all_test_samples": one_set(evaluated, np.arange(len(test)))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="cj,movielens", help="comma-separated: cj, movielens, rees46")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-live-eval"),
                    help="bench/live_eval.py's --workdir, whose checkpoints are scored")
    args = ap.parse_args()
    out = {"benchmark": "tuned_counter", "machine": machine(), "commit": commit(),
           "datasets": [run(d, Path(args.workdir)) for d in args.dataset.split(",")]}
    print(dumps(out))


if __name__ == "__main__":
    main()

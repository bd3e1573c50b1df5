"""How much knowing more would be worth to a counter: the user's future (the hindsight counter), and
the whole population's recent behaviour, on every log.

    .venv/bin/python bench/hindsight.py [--only cj|movielens|rees46|sim] [--workdir DIR]

On the logs, splits and targets of ``bench/train_eval.py`` (the three real logs and the simulated
populations of :data:`SIM_RUNS`), the test split's KL of
* the best baseline (fit on training, tuned on validation, as ``evaluate`` does);
* **the control**: the multi-scale mixture of decayed counters (``models.baselines``, weights per
  history length) fit on the validation split instead of training, which is how the next one is
  fit;
* **the hindsight counter**: the control with two more inputs, what the user did in the target
  span right after each sample's target, and in the four spans after it
  (:func:`models.evaluate.hindsight_counts`: the next 4 baskets after the target's 4, and the next
  16; the next 10 ratings after the target's 10, and 40; the next 6 hours, and 24);
* on the simulator, **the truth**: its latent interests averaged over each sample's target window
  (:func:`models.evaluate.truth_targets`), what a model would predict if it knew the user's
  interests at every moment of the target window, future drift and jumps included. It is not a
  strict bound either (a session's first events make its category more likely for a few minutes,
  which a model could read and the latent interests do not say: ``bench/sim_bound.py``'s
  prediction from the simulator's whole state, which no model of the past beats, is below it).
  The hindsight counter is measured against it: both see the future, and only the simulator has
  a truth. Beside it, each prediction's KL with the truth as
  the target (``bench/model_eval.py``'s "against the truth").

* **the population's counter**: the control with the category mix of every user's events before
  the sample's cut (:func:`population_mix`, decayed by a day, a week and a month): what a counter
  gains from what everyone has been doing lately (a season, a release, a sale), which the
  per-user counters and the fixed prior do not see. Unlike the hindsight inputs it is known at the
  cut, so a worker could hold it. ``population_gain_ci95`` is the control's test KL minus its own,
  paired bootstrap over users (positive: the population helps).

No model is trained. The hindsight counter is not a strict bound (a model may read what a counter
cannot), but it knows what no model of the past can: where its ratio to the best baseline is near
1, the user's past and future behaviour together leave little to gain over a tuned counter on that
target. Prints JSON with the machine and the commit.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import commit, machine  # noqa: E402
from model_eval import DATASETS, make_log  # noqa: E402
from train_eval import SIM_RUNS  # noqa: E402

SPANS = (1, 4)  # the hindsight inputs: the one target span after the target, and the four after it
POPULATION_HALF_LIVES_H = (24, 7 * 24, 30 * 24)  # the population's counter: a day, a week, a month
HOUR_MS = 3_600_000


def population_mix(ds, samples, k: int, half_lives_h=POPULATION_HALF_LIVES_H) -> np.ndarray:
    """(N, len(half_lives_h), k): the type-weighted category mix of every user's events in the hours
    before the hour of each sample's cut, each event's weight decayed by ``0.5 ** (age / half_life)``
    in whole hours, as shares (all zero when no event came before). Hourly bins: the cut's own hour
    is left out, so nothing at or after the cut is counted."""
    ts = np.concatenate([s.ts[s.weight > 0] for s in ds.seqs])
    cat = np.concatenate([s.cat[s.weight > 0] for s in ds.seqs])
    w = np.concatenate([s.weight[s.weight > 0] for s in ds.seqs]).astype(np.float64)
    first = int(ts.min()) // HOUR_MS
    hours = int(ts.max()) // HOUR_MS - first + 1
    bins = np.zeros((hours, k))
    np.add.at(bins, (ts // HOUR_MS - first, cat), w)
    decay = 0.5 ** (1.0 / np.asarray(half_lives_h, np.float64))[:, None]  # (L, 1) per hour
    state = np.zeros((hours + 1, len(half_lives_h), k))  # state[h]: the hours before hour h
    for h in range(hours):
        state[h + 1] = state[h] * decay + bins[h]
    at = np.clip(samples.cut_ts // HOUR_MS - first, 0, hours)
    mix = state[at]
    tot = mix.sum(-1, keepdims=True)
    return np.where(tot > 0, mix / np.maximum(tot, 1e-12), 0.0)


def counters(ds, cfg, k: int) -> dict[str, np.ndarray]:
    """The mixture fit on validation without (``control``) and with the hindsight inputs
    (``hindsight``) or the population's mix (``population``): their test predictions. The decayed
    counts are computed once for all three."""
    from models.baselines import (LENGTH_BUCKETS, Baselines, fit_mixture, history_lengths, mixture_features,
                                  mixture_predict)
    from models.evaluate import hindsight_counts

    prior = Baselines(ds, k).prior
    feats, extra, buckets = {}, {"control": {}, "hindsight": {}, "population": {}}, {}
    for name in ("val", "test"):
        s = ds.splits[name]
        feats[name] = mixture_features(ds, s, k)
        extra["control"][name] = np.zeros((len(s), 0, k))
        extra["hindsight"][name] = np.stack([hindsight_counts(ds, s, cfg, k, n) for n in SPANS], axis=1)
        extra["population"][name] = population_mix(ds, s, k)
        buckets[name] = np.searchsorted(LENGTH_BUCKETS, history_lengths(ds, s), side="right")
    out = {}
    for variant, more in extra.items():
        f = {n: np.concatenate([feats[n], more[n]], axis=1) for n in feats}
        logw = fit_mixture(f["val"], buckets["val"], ds.splits["val"].targets, prior, len(LENGTH_BUCKETS) + 1)
        out[variant] = mixture_predict(f["test"], buckets["test"], logw, prior)
    return out


def one_log(name: str, log: Path, cfg_over: dict, truth_path: Path | None) -> dict:
    from models.data import DataConfig, prepare
    from models.evaluate import baseline_predictions, kl_per_sample, paired_bootstrap, truth_targets

    cfg = DataConfig(**cfg_over)
    ds, encoder, _ = prepare(log, cfg)
    k = encoder.k
    base = baseline_predictions(ds, cfg, k)
    test = ds.splits["test"]
    best = base["best"]
    preds = {best: base["test"][best], "ema_prior": base["test"]["ema_prior"]}
    preds.update(counters(ds, cfg, k))
    ok = np.ones(len(test), bool)
    if truth_path is not None:
        from models.simulate import read_truth

        preds["truth"], ok = truth_targets(read_truth(truth_path), ds, test, encoder.categories, cfg)
    kl = {n: float(kl_per_sample(test.targets[ok], p[ok]).mean()) for n, p in preds.items()}
    out = {"log": name, "data_config": cfg_over, "test_samples": int(ok.sum()), "of": int(len(test)),
           "test_users": int(len(set(test.user.tolist()))), "best_baseline": best,
           "kl": {n: round(v, 4) for n, v in kl.items()},
           "ratio_to_best_baseline": {n: round(v / kl[best], 4) for n, v in kl.items() if n != best}}
    gain = (kl_per_sample(test.targets[ok], preds["control"][ok])
            - kl_per_sample(test.targets[ok], preds["population"][ok]))
    out["population_gain_ci95"] = [round(x, 5) for x in paired_bootstrap(gain, test.user[ok])]
    if truth_path is not None:  # the truth as the target (bench/model_eval.py's "against the truth")
        out["kl_against_truth"] = {n: round(float(kl_per_sample(preds["truth"][ok], p[ok]).mean()), 4)
                                   for n, p in preds.items() if n != "truth"}
    return out


@click.command()
@click.option("--only", type=click.Choice(["cj", "movielens", "rees46", "sim"]), default=None)
@click.option("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-bench"), show_default=True,
              type=click.Path(file_okay=False))
def main(only, workdir):
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": "a tuned counter that also sees the user's future, or the population's recent mix",
           "machine": machine(), "commit": commit(), "spans": list(SPANS),
           "population_half_lives_h": list(POPULATION_HALF_LIVES_H), "runs": []}
    t0 = time.time()
    runs = [(d, (0, 0, 0, "")) for d in ("cj", "movielens", "rees46")] + [("sim", r) for r in SIM_RUNS]
    for dataset, (users, days, seed, mechanisms) in runs:
        if only and dataset != only:
            continue
        t = time.time()
        log = make_log(dataset, wd, users, days, seed, mechanisms)
        name = dataset if dataset != "sim" else f"sim {users} x {days} days, seed {seed}, mechanisms {mechanisms}"
        truth = Path(f"{log}.truth.jsonl") if dataset == "sim" else None
        run = one_log(name, log, DATASETS[dataset]["data"], truth)
        run["seconds"] = round(time.time() - t, 1)
        out["runs"].append(run)
        print(json.dumps(run), file=sys.stderr)
    out["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

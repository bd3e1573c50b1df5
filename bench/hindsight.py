"""How much knowing the future would be worth to a counter: the hindsight counter on every log.

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


def counters(ds, cfg, k: int) -> dict[str, np.ndarray]:
    """The mixture fit on validation without (``control``) and with (``hindsight``) the hindsight
    inputs: their test predictions. The decayed counts are computed once for both."""
    from models.baselines import (LENGTH_BUCKETS, Baselines, fit_mixture, history_lengths, mixture_features,
                                  mixture_predict)
    from models.evaluate import hindsight_counts

    prior = Baselines(ds, k).prior
    feats, extra, buckets = {}, {}, {}
    for name in ("val", "test"):
        s = ds.splits[name]
        feats[name] = mixture_features(ds, s, k)
        extra[name] = np.stack([hindsight_counts(ds, s, cfg, k, n) for n in SPANS], axis=1)
        buckets[name] = np.searchsorted(LENGTH_BUCKETS, history_lengths(ds, s), side="right")
    out = {}
    for variant, with_hindsight in (("control", False), ("hindsight", True)):
        f = {n: np.concatenate([feats[n], extra[n]], axis=1) if with_hindsight else feats[n] for n in feats}
        logw = fit_mixture(f["val"], buckets["val"], ds.splits["val"].targets, prior, len(LENGTH_BUCKETS) + 1)
        out[variant] = mixture_predict(f["test"], buckets["test"], logw, prior)
    return out


def one_log(name: str, log: Path, cfg_over: dict, truth_path: Path | None) -> dict:
    from models.data import DataConfig, prepare
    from models.evaluate import baseline_predictions, kl_per_sample, truth_targets

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
    out = {"benchmark": "the hindsight counter: a tuned counter that also sees the user's future", "machine": machine(),
           "commit": commit(), "spans": list(SPANS), "runs": []}
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

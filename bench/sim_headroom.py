"""How much any model could gain on the simulator: its true interests used as the prediction.

    .venv/bin/python bench/sim_headroom.py [--workdir DIR]

For each simulated population of ``bench/train_eval.py`` (:data:`SIM_RUNS`, the same logs, split
and targets as ``bench/model_eval.py --dataset sim``), the test split's KL of
* every baseline (fit on training, tuned on validation, as ``evaluate`` does);
* **the truth**: the simulator's latent interests averaged over each sample's target window
  (``models.evaluate.truth_targets``), what a model would predict if it knew the user's interests
  at every moment of the next 6 hours, future drift and jumps included.

No model is trained. The truth is not a strict bound (a session's first events make its category
more likely for a few minutes, which a model could read and the latent interests do not say), but
it is a stronger predictor than any model of the past can be: its ratio to the best baseline
shows how far a goal on these logs can be reached. Prints JSON with the machine and the commit.
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


@click.command()
@click.option("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-bench"), show_default=True,
              type=click.Path(file_okay=False))
def main(workdir):
    from models.data import DataConfig, prepare
    from models.evaluate import baseline_predictions, kl_per_sample, truth_targets
    from models.simulate import read_truth

    out = {"benchmark": "simulator headroom: the true interests as the prediction", "machine": machine(),
           "commit": commit(), "runs": []}
    t0 = time.time()
    for users, days, seed, mechanisms in SIM_RUNS:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        log = make_log("sim", Path(workdir), users, days, seed, mechanisms)
        cfg = DataConfig(**DATASETS["sim"]["data"])
        ds, encoder, _ = prepare(log, cfg)
        base = baseline_predictions(ds, cfg, encoder.k)
        test = ds.splits["test"]
        truth, ok = truth_targets(read_truth(Path(f"{log}.truth.jsonl")), ds, test, encoder.categories, cfg)
        targets = test.targets[ok]
        kl = {n: float(kl_per_sample(targets, p[ok]).mean()) for n, p in base["test"].items()}
        kl["truth"] = float(kl_per_sample(targets, truth[ok]).mean())
        best = base["best"]
        run = {"users": users, "days": days, "seed": seed, "mechanisms": mechanisms,
               "test_samples": int(ok.sum()), "of": int(len(test)), "best_baseline": best,
               "kl": {n: round(v, 4) for n, v in kl.items()},
               "truth_vs_best_baseline": round(kl["truth"] / kl[best], 3),
               "truth_vs_ema_prior": round(kl["truth"] / kl["ema_prior"], 3)}
        out["runs"].append(run)
        print(json.dumps(run), file=sys.stderr)
    out["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

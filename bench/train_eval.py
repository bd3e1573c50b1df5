"""Benchmark of the interest model (not a test): simulate 5,000 users -> train -> evaluate, and
MovieLens load -> train -> evaluate. Prints a JSON summary: training times, test KL of the model and
of every baseline, the KL gain over the best baseline with its bootstrap 95% interval.

    .venv/bin/python bench/train_eval.py [--workdir DIR] [--only sim|movielens] [--loss mse|kl]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MOVIELENS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "movielens-latest-small"

# The settings of the measured runs (see the report). Both use the worker's default window (1 day,
# 128 events) and profile (interest_core.window), so the models evaluated are the ones the worker serves.
# Simulated: all defaults. MovieLens: the target is the next 10 ratings (bursty sittings); KL loss,
# dropout and weight decay against over-fitting to ~500 training users; validation 10% of the time
# span (training reaches closer to the test period, which is the same last 15% as by default).
SIM = {"data": {}, "train": {}, "model": {}}
MOVIELENS_RUN = {
    "data": {"target": "next_k", "target_k": 10, "val_frac": 0.10},
    "train": {"weight_decay": 0.1, "eval_every": 150},
    "model": {"loss": "kl", "dropout": 0.1},
}


def _summary(name, card, metrics, wall):
    return {
        "dataset": name,
        "train_seconds": card["training"]["train_seconds"],
        "train_total_seconds": card["training"]["total_seconds"],
        "wall_seconds": round(wall, 1),
        "steps": card["training"]["steps"],
        "stop_reason": card["training"]["stop_reason"],
        "loss": card["training"]["loss"],
        "window": card["window"],
        "target": {k: card["split"]["data_config"][k] for k in ("target", "target_window_s", "target_k")},
        "test_samples": metrics["samples"],
        "test_users": metrics["users"],
        "test_kl": {m: round(v["kl"], 5) for m, v in metrics["models"].items()},
        "best_baseline": metrics["best_baseline"],
        "kl_gain": round(metrics["kl_gain"], 5),
        "kl_gain_ci95": [round(x, 5) for x in metrics["kl_gain_ci95"]],
        "wins": metrics["kl_gain_ci95"][0] > 0,
        "truth_kl": {m: round(v["kl"], 5) for m, v in metrics.get("truth", {}).get("models", {}).items()},
    }


@click.command()
@click.option("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-bench"), show_default=True,
              type=click.Path(file_okay=False), help="Logs, checkpoints and metrics (reused logs are not re-made).")
@click.option("--only", type=click.Choice(["sim", "movielens"]), default=None)
@click.option("--users", default=5000, show_default=True)
@click.option("--days", default=7.0, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--loss", type=click.Choice(["mse", "kl"]), default=None, help="Override the runs' training loss.")
@click.option("--movielens-dir", default=str(MOVIELENS), show_default=True)
def main(workdir, only, users, days, seed, loss, movielens_dir):
    from models.data import DataConfig
    from models.evaluate import run_evaluation
    from models.loaders import load_movielens
    from models.model import TrainConfig
    from models.simulate import simulate_to_files
    from models.train import run_training

    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    extra = {"loss": loss} if loss else {}
    out = []
    if only in (None, "sim"):
        log = wd / f"sim-{users}-{seed}.jsonl"
        if not log.exists():
            simulate_to_files(users, days, seed, log)
        t = time.time()
        card = run_training(log, wd / "sim-ckpt", DataConfig(**SIM["data"]), TrainConfig(**SIM["train"]),
                            {**SIM["model"], **extra}, progress=False,
                            log=lambda m: print(m, file=sys.stderr))
        metrics = run_evaluation(wd / "sim-ckpt", log, wd / "sim-eval")
        out.append(_summary(f"simulated {users} users x {days} days, seed {seed}", card, metrics, time.time() - t))
    if only in (None, "movielens"):
        log = wd / "movielens.jsonl"
        load_movielens(movielens_dir, log)
        t = time.time()
        # MovieLens is bursty (hundreds of ratings in a sitting, then months of nothing): the
        # target is the next 10 ratings, not a time window.
        run = MOVIELENS_RUN
        card = run_training(log, wd / "ml-ckpt", DataConfig(**run["data"]), TrainConfig(**run["train"]),
                            {**run["model"], **extra}, progress=False, log=lambda m: print(m, file=sys.stderr))
        metrics = run_evaluation(wd / "ml-ckpt", log, wd / "ml-eval")
        out.append(_summary("movielens ml-latest-small", card, metrics, time.time() - t))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Which way ``train`` chooses the query map on each log (not a test): stages 1 and 2a of
:func:`models.train.fit` alone, at ``train``'s defaults.

    .venv/bin/python bench/query_choice.py [--runs RUN,RUN,...] [--threads 2] [--workdir DIR]

A run is ``movielens`` (``train``'s target and its 15 % for validation), ``movielens@F`` (the log
before its event-time quantile F, as ``bench/backtest.py``'s folds cut it) or
``sim:MECHANISMS:USERS:DAYS:SEED[:TRAINING_SEED]`` (a simulated population of ``bench/model_eval.py``).
For each: the plain path (stage 1), then :func:`models.train.choose_query_map`, the per-category
network alone with and without the map; stdout gets one JSON with the machine, the commit and each
run's two validation KLs and verdict. The verdict is the whole effect of the choice: with it,
``train`` goes on to train exactly what ``--set queries=on`` or ``off`` trains (a test checks it), so
a population whose verdict is "kept" gets the model of the map's runs (``bench/README.md``, "Searches
through the query map"), and one whose verdict is "left out" the model of their ``no_queries``.
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
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the simulated populations of make bench's lines with the map (bench/README.md), and MovieLens'
# four backtest periods (bench/backtest.py's fold ends at test_frac 0.15)
DEFAULT_RUNS = ("movielens,movielens@0.85,movielens@0.7225,movielens@0.6141,"
                "sim:on:1000:14:2,sim:on:2000:7:1,sim:off:2000:7:1,sim:off:3000:5:4,sim:off:1000:14:2,"
                "sim:off:1000:14:2:1,sim:off:1000:14:2:2,sim:off:4000:4:3,sim:off:4000:4:3:1,sim:off:4000:4:3:2")


def parse_run(run: str) -> dict:
    if run == "movielens" or run.startswith("movielens@"):
        _, _, end = run.partition("@")
        return {"dataset": "movielens", "end_frac": float(end or 1.0), "data": {"target": "auto", "val_frac": 0.15}}
    parts = run.split(":")
    if parts[0] != "sim" or len(parts) not in (5, 6) or parts[1] not in ("on", "off"):
        raise click.BadParameter(f"{run!r}: expected movielens[@F] or sim:on|off:USERS:DAYS:SEED[:TRAINING_SEED]",
                                 param_hint="--runs")
    users, days, seed = int(parts[2]), float(parts[3]), int(parts[4])
    return {"dataset": "sim", "mechanisms": parts[1], "users": users, "days": days, "seed": seed,
            "training_seed": int(parts[5]) if len(parts) == 6 else None, "end_frac": 1.0, "data": {}}


@click.command()
@click.option("--runs", default=DEFAULT_RUNS, show_default=True, help="comma-separated (module doc)")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-query-choice"),
              show_default=True, type=click.Path(file_okay=False))
def main(runs, threads, workdir):
    from bench.common import commit, machine
    from bench.model_eval import make_log, truncate_log
    from models.data import DataConfig
    from models.model import TrainConfig
    from models.train import choose_query_map, prepare_training, query_targets, train_plain_path

    specs = [(r, parse_run(r.strip())) for r in runs.split(",") if r.strip()]
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    out = {"machine": machine(), "commit": commit(), "threads": threads, "runs": []}
    for name, spec in specs:
        t0 = time.time()
        log = truncate_log(make_log(spec["dataset"], wd, spec.get("users", 0), spec.get("days", 0.0),
                                    spec.get("seed", 0), spec.get("mechanisms", "on")), spec["end_frac"])
        cfg = TrainConfig(threads=threads, **({"seed": spec["training_seed"]} if spec.get("training_seed") else {}))
        td = prepare_training(log, DataConfig(**spec["data"]), cfg, log=lambda m: None)
        qt = query_targets(td)
        row = {"run": name, "search_subwords_in_training": int(qt[1].sum()), "training_seed": cfg.seed}
        if qt[1].any():
            plain, _ = train_plain_path(td, {}, cfg)
            row.update(choose_query_map(td, plain, {}, qt, cfg))
            row.pop("rule")
        row["wall_seconds"] = round(time.time() - t0, 1)
        print(json.dumps(row), file=sys.stderr)
        out["runs"].append(row)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

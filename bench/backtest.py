"""The model against the best baseline on several test periods of one log, pooled (not a test).

    .venv/bin/python bench/backtest.py --dataset movielens|cj [--folds 4] [--parallel 2]
        [--variants default,features,...] [--workdir DIR] [--set KEY=VALUE ...] [--data-set KEY=VALUE ...]
        [--skip N]

One test split of a small log decides little: MovieLens' last 15 % of events hold 86 users, and
the gain interval of the model against ``mixture`` spans the ratios 0.943 to 0.981. A backtest
moves the split back in time. Fold 0 is the whole log; fold ``i`` is the log before the event-time
quantile ``(1 - test_frac)^i``, so its test period is the one just before fold ``i - 1``'s and no
two test periods overlap. ``--skip N`` runs the folds from ``N`` on: ``--folds 6 --skip 4`` scores
the two periods before the four that ``train``'s defaults were chosen on. Each fold is trained and
scored by ``bench/model_eval.py --end-frac`` (the project's own ``fit`` and ``report``, the
dataset's target unless ``--data-set`` overrides it, ``train``'s defaults), with one thread,
``--parallel`` folds at a time.

The pooled figures weigh every test sample of every fold alike: the ratio of the model's mean KL
to each fold's best baseline's (chosen on that fold's validation split), and the paired bootstrap
interval of the KL gain over (fold, user) pairs, with the ratios it implies.

With ``--variants`` (``bench/model_eval.py``'s ablations, trained on the same folds), each variant
is pooled the same way, and each is compared with the first on the very same test samples: the
mean of (variant's KL − the first's) with its paired bootstrap interval over (fold, user) pairs,
much tighter than either ratio's interval. ``first_test_cuts`` pools (and compares) each fold's
first test cut of each user alone: the cuts ``bench/live_eval.py`` streams each user up to.
``pooled_vs_best_with_item_lift`` and ``first_test_cuts_vs_best_with_item_lift`` pool the same
against each fold's best baseline given an items' lift (``evaluate``'s ``best_with_item_lift``:
the lift ``train`` gives the model, chosen on that baseline's validation predictions), and
``first_test_cuts_vs_counter_tuned_on_them`` against ``ema_prior`` tuned on each fold's first test
cuts themselves, in sample and cross-validated over users (``bench/live_eval.py``'s yardstick,
:func:`models.baselines.counter_tuned_on_samples`). Stdout:
one JSON with the machine, the commit, each fold's summary and the pooled figures.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.model_eval import command as model_eval_command  # noqa: E402
from bench.model_eval import data_overrides, make_log  # noqa: E402


def fold_ends(folds: int, test_frac: float) -> list[float]:
    """Each fold's end as an event-time quantile of the whole log: 1, (1 - t), (1 - t)^2, …"""
    return [round((1.0 - test_frac) ** i, 4) for i in range(folds)]


def fold_users(runs: list[dict]) -> np.ndarray:
    """One id per (fold, user) pair, for every test sample of every fold in order."""
    return np.concatenate([i * 10_000_000 + np.unique(r["user"], return_inverse=True)[1] for i, r in enumerate(runs)])


def pool(runs: list[dict], against: str = "best") -> dict:
    """Every fold's test samples together: the model's and the best baselines' mean KL (``against``
    "lifted": the best baselines given an items' lift), their ratio, and the paired bootstrap
    interval of the gain over (fold, user) pairs."""
    from models.evaluate import paired_bootstrap

    model = np.concatenate([r["model"] for r in runs])
    best = np.concatenate([r[against] for r in runs])
    users = fold_users(runs)
    gain = best - model  # positive favours the model
    lo, hi = paired_bootstrap(gain, users)
    return {"samples": int(len(model)), "fold_users": int(len(np.unique(users))),
            "kl": round(float(model.mean()), 4), "best_baseline_kl": round(float(best.mean()), 4),
            "kl_ratio": round(float(model.mean() / best.mean()), 4),
            "kl_gain_ci95": [round(lo, 4), round(hi, 4)],
            "kl_ratio_ci95": [round(1 - hi / float(best.mean()), 4), round(1 - lo / float(best.mean()), 4)]}


@click.command()
@click.option("--dataset", type=click.Choice(["movielens", "cj"]), required=True)
@click.option("--folds", type=click.IntRange(min=2), default=4, show_default=True)
@click.option("--parallel", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-backtest"), show_default=True,
              type=click.Path(file_okay=False))
@click.option("--variants", default="default", show_default=True,
              help="bench/model_eval.py's variants, comma-separated; the first is the reference")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="train/model config for every fold")
@click.option("--data-set", "data_sets", multiple=True, metavar="KEY=VALUE",
              help="the dataset's data config overridden for every fold (bench/model_eval.py --data-set)")
@click.option("--skip", type=click.IntRange(min=0), default=0, show_default=True,
              help="leave out the first N folds (the newest test periods)")
def main(dataset, folds, parallel, workdir, variants, sets, data_sets, skip):
    from bench.common import commit, machine
    from models.data import DataConfig

    if skip >= folds:
        raise click.BadParameter(f"{skip} leaves none of the {folds} folds", param_hint="--skip")
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    log = make_log(dataset, wd, 0, 0.0, 0, "on")
    test_frac = DataConfig(**data_overrides(dataset, data_sets)).test_frac
    ends = fold_ends(folds, test_frac)
    t0 = time.time()
    procs, outs = {}, {}
    for i, end in list(enumerate(ends))[skip:]:
        fd = wd / f"{dataset}-fold{i}"
        fd.mkdir(exist_ok=True)
        if not (fd / log.name).exists():
            os.link(log, fd / log.name)  # model_eval finds the log there and truncates it beside it
        while len(procs) >= parallel:
            _wait_one(procs, outs)
        cmd = model_eval_command(dataset, fd, "--threads", "1", "--end-frac", str(end), "--variants", variants,
                                 sets=sets, data_sets=data_sets)
        with open(fd / "out.json", "w") as so, open(fd / "err.log", "w") as se:
            procs[i] = (subprocess.Popen(cmd, stdout=so, stderr=se), fd)
    while procs:
        _wait_one(procs, outs)
    names = [v.strip() for v in variants.split(",") if v.strip()]
    runs, summaries = {n: [] for n in names}, []
    for i in range(skip, len(ends)):
        out, fd = outs[i]
        for name, v in zip(names, out["variants"]):
            ps = np.load(fd / dataset / name / "per_sample.npz")
            runs[name].append({"user": ps["user"], "model": ps["model"], "best": ps[str(ps["best_baseline"])],
                               "lifted": ps["best_with_item_lift"], "first": ps["first_test_cut"],
                               **{k: ps[k] for k in ("tuned_in_sample", "tuned_cross_validated")}})
            summaries.append({"fold": i, "variant": name, "end_frac": ends[i], "events": out["events"],
                              "test_users": out["test_users"], "test_samples": out["samples"]["test"],
                              **{k: v[k] for k in (
                                  "kl", "best_baseline", "best_baseline_kl", "kl_ratio", "kl_gain_ci95",
                                  "kl_ratio_vs_ema_prior", "kl_ratio_vs_best_with_item_lift",
                                  "best_baseline_item_lift", "correction_scales", "exported", "train_seconds")},
                              "query_map": v.get("query_map")})
    result = {"machine": machine(), "commit": commit(), "dataset": dataset, "variants": names, "folds": summaries,
              "pooled": {n: pool(runs[n]) for n in names},
              "against_the_first": {n: compare(runs[n], runs[names[0]]) for n in names[1:]},
              # each user's first test cut only, in every fold (bench/live_eval.py's cuts)
              "first_test_cuts": {n: pool(first_cuts_only(runs[n])) for n in names},
              "first_test_cuts_against_the_first": {
                  n: compare(first_cuts_only(runs[n]), first_cuts_only(runs[names[0]])) for n in names[1:]},
              # the same against the best baseline given an items' lift, as train gives the model one
              "pooled_vs_best_with_item_lift": {n: pool(runs[n], "lifted") for n in names},
              "first_test_cuts_vs_best_with_item_lift": {n: pool(first_cuts_only(runs[n]), "lifted") for n in names},
              # and against ema_prior tuned on each fold's first test cuts themselves (bench/live_eval.py's)
              "first_test_cuts_vs_counter_tuned_on_them": {n: {
                  how: pool(first_cuts_only(runs[n]), f"tuned_{how}") for how in ("in_sample", "cross_validated")}
                  for n in names},
              "sets": list(sets), "data_sets": list(data_sets), "wall_seconds": round(time.time() - t0, 1)}
    print(json.dumps(result, indent=1))


def first_cuts_only(runs: list[dict]) -> list[dict]:
    """Each fold's samples restricted to each user's first test cut (the cut bench/live_eval.py
    streams each user up to: :func:`bench.model_eval.first_cuts`)."""
    return [{k: v[r["first"]] for k, v in r.items()} for r in runs]


def compare(runs: list[dict], reference: list[dict]) -> dict:
    """A variant against the reference on the same samples: mean KL difference (positive: the
    variant is worse) and its paired bootstrap interval over (fold, user) pairs."""
    from models.evaluate import paired_bootstrap

    diff = np.concatenate([r["model"] for r in runs]) - np.concatenate([r["model"] for r in reference])
    lo, hi = paired_bootstrap(diff, fold_users(runs))
    return {"kl_minus_reference": round(float(diff.mean()), 4), "ci95": [round(lo, 4), round(hi, 4)]}


def _wait_one(procs: dict, outs: dict) -> None:
    """Wait for any running fold; keep its JSON, or stop with its stderr's tail."""
    while True:
        for i, (p, fd) in list(procs.items()):
            if p.poll() is not None:
                del procs[i]
                if p.returncode != 0:
                    tail = (fd / "err.log").read_text()[-2000:]
                    raise click.ClickException(f"fold {i} failed (exit {p.returncode}):\n{tail}")
                outs[i] = (json.loads((fd / "out.json").read_text()), fd)
                return
        time.sleep(1.0)


if __name__ == "__main__":
    main()

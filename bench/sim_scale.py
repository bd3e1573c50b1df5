"""Does the model gain from more users of the same simulator? A learning curve (not a test).

    .venv/bin/python bench/sim_scale.py --workdir DIR [--users 500,2000,8000] [--reference 2000]
        [--days 7] [--seed 1] [--mechanisms on|off] [--threads 1] [--reuse]

The simulator gives as many users as one asks for, and seeds each by its index, so a smaller
population is the first users of a larger one. For each population size N,
``bench/model_eval.py --dataset sim --users N`` trains ``train``'s default model and scores it on
its own test split, with two settings changed so that the extra users reach the model:
* ``max_train_samples`` at least ``SAMPLES_PER_USER`` × N (the data config's cap of 120,000
  would otherwise keep a larger population's training set at the size of a smaller one's);
* ``max_steps`` at least N / 2 and ``MIN_STEPS`` (early stopping, not the cap, ends training);
and the refit off (``refit=0``: it doubles the training time and is not what is measured).
Then every checkpoint is scored on the reference population's test split (its log, its split
and its baselines), paired with the reference's own model: the KL difference with a bootstrap
interval over users, and each KL against the simulator's truth. Stdout: one JSON with the
machine, the commit and both sets of figures. ``--reuse`` scores the checkpoints an earlier run
left in the workdir (``bench/model_eval.py --reuse``).
"""
from __future__ import annotations

import json
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

# the data config's cap of 120,000 at 2,000 users x 7 days (80 % of their 149,631 training cuts), per user:
# a larger population keeps about the same share of its cuts
SAMPLES_PER_USER = 60
MIN_STEPS = 5000


def population_settings(users: int) -> tuple[list[str], list[str]]:
    """``--set`` and ``--data-set`` items of the population of ``users`` (module doc)."""
    return ([f"max_steps={max(MIN_STEPS, users // 2)}", "refit=0"],
            [f"max_train_samples={max(120_000, SAMPLES_PER_USER * users)}"])


def on_reference(log: Path, checkpoints: dict[int, Path], reference: int) -> dict:
    """Every checkpoint's test KL on the split of ``log`` that the ``reference`` population's card
    holds (scored as ``evaluate`` scores it, :func:`models.evaluate.held_out_predictions`), paired
    with the reference's own model."""
    from models.evaluate import held_out_predictions, kl_per_sample, paired_bootstrap, truth_targets
    from models.simulate import read_truth

    split = json.loads((checkpoints[reference] / "model_card.json").read_text())["split"]
    runs = {n: held_out_predictions(ck, log, split=split) for n, ck in checkpoints.items()}
    ref = runs[reference]
    test = ref.ds.splits["test"]
    tt, ok = truth_targets(read_truth(Path(f"{log}.truth.jsonl")), ref.ds, test, ref.encoder.categories, ref.dcfg)
    mixture = kl_per_sample(test.targets, ref.base["test"]["mixture"])
    out = {"samples": int(len(test)), "test_users": int(len(set(test.user.tolist()))),
           "mixture_kl": round(float(mixture.mean()), 4),
           "truth_kl": {n: round(float(kl_per_sample(tt[ok], ref.base["test"][n][ok]).mean()), 4)
                        for n in ("mixture", "ema_prior")}, "models": {}}
    for n, run in runs.items():
        if not np.array_equal(run.ds.splits["test"].targets, test.targets):
            raise RuntimeError(f"{checkpoints[n]}: the reference's split gave other test samples")
    kls = {n: kl_per_sample(test.targets, run.pred) for n, run in runs.items()}
    for n, run in runs.items():
        out["models"][str(n)] = {"kl": round(float(kls[n].mean()), 4),
                                 "kl_ratio": round(float(kls[n].mean() / mixture.mean()), 4),
                                 "truth_kl": round(float(kl_per_sample(tt[ok], run.pred[ok]).mean()), 4)}
        if n != reference:
            diff = kls[n] - kls[reference]
            out["models"][str(n)]["kl_minus_reference"] = round(float(diff.mean()), 5)
            out["models"][str(n)]["kl_minus_reference_ci95"] = [
                round(x, 5) for x in paired_bootstrap(diff, np.asarray(test.user))]
    return out


@click.command()
@click.option("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-bench-scale"), show_default=True,
              type=click.Path(file_okay=False))
@click.option("--users", default="500,2000,8000", show_default=True, help="Comma-separated population sizes.")
@click.option("--reference", default=2000, show_default=True, help="The population whose test split all are scored on.")
@click.option("--days", default=7.0, show_default=True)
@click.option("--seed", default=1, show_default=True, help="The simulator's seed.")
@click.option("--mechanisms", type=click.Choice(["on", "off"]), default="on", show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--reuse", is_flag=True, help="Score the checkpoints an earlier run left in the workdir.")
def main(workdir, users, reference, days, seed, mechanisms, threads, reuse):
    from bench.common import commit, machine

    try:
        sizes = sorted({int(u) for u in users.split(",") if u.strip()})
    except ValueError:
        raise click.BadParameter(f"not a list of integers: {users!r}", param_hint="--users") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"population sizes must be positive, got {users!r}", param_hint="--users")
    if reference not in sizes:
        raise click.BadParameter(f"{reference} must be one of the population sizes {sizes}", param_hint="--reference")
    wd = Path(workdir)
    out = {"benchmark": "more users of the same simulator: the model on its own and on one shared test split",
           "machine": machine(), "commit": commit(), "days": days, "seed": seed, "mechanisms": mechanisms,
           "populations": []}
    t0 = time.time()
    checkpoints, logs = {}, {}
    for n in sizes:
        pd = wd / f"users-{n}"
        pd.mkdir(parents=True, exist_ok=True)
        sets, data_sets = population_settings(n)
        cmd = model_eval_command("sim", pd, "--users", str(n), "--days", f"{days:g}", "--seed", str(seed),
                                 "--mechanisms", mechanisms, "--threads", str(threads), *(["--reuse"] if reuse else []),
                                 sets=sets, data_sets=data_sets)
        with open(pd / "model_eval.err", "w") as err:
            run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        if run.returncode != 0:
            raise click.ClickException(f"bench/model_eval.py failed for {n} users (exit {run.returncode}); "
                                       f"see {pd / 'model_eval.err'}")
        res = json.loads(run.stdout)
        v = res["variants"][0]
        out["populations"].append({"users": n, "sets": sets, "data_sets": data_sets, "samples": res["samples"],
                                   **{k: v[k] for k in ("kl", "best_baseline", "best_baseline_kl", "kl_ratio",
                                                        "kl_gain_ci95", "truth_kl", "steps", "stop_reason",
                                                        "train_seconds", "wall_seconds")}})
        print(json.dumps(out["populations"][-1]), file=sys.stderr)
        checkpoints[n], logs[n] = pd / "sim" / "default", Path(res["log"])
    out["on_reference"] = {"population": reference, **on_reference(logs[reference], checkpoints, reference)}
    out["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""The best any model of the past can do on a simulated log: the prediction from the user's whole state.

    .venv/bin/python bench/sim_bound.py [--run I] [--runs N] [--max-cuts M] [--workdir DIR]

On the simulated populations of ``bench/train_eval.py`` (:data:`SIM_RUNS`; ``--run I`` takes one),
with the split, the test samples and the baselines of ``bench/model_eval.py`` (the same
:func:`models.data.prepare`, so the model's test KL there is comparable), the test split's KL of
* the best baseline and ``ema_prior``;
* **the state's prediction**: each test user is simulated again from its seed
  (:func:`models.simulate.user_steps`), and at each test cut the expected target given the
  simulator's whole state at that moment (latent interests, base point, habit, the session and
  its category, the scheduled shift and where it goes) is computed by simulating the target window
  forward ``--runs`` times (:func:`models.simulate.expected_target`);
* the truth (the latent interests averaged over the target window, ``bench/hindsight.py``).

Why it bounds every model. The target window depends on the past only through the state at the
cut (the simulator is a Markov process in that state; the future draws are new), so the state
says at least as much about the target as the events before the cut do. Among predictions from
some information, the expected target given it has the lowest expected KL (the KL is the
target's cross-entropy minus its entropy, and the cross-entropy is lowest at the mean). So no
model that reads the events, the profile or anything else from the past has a lower expected KL
than the state's prediction; on a finite test split, up to sampling. A Monte Carlo mean of
``--runs`` forward simulations is a little worse than the exact expectation (the
``runs_check`` figure, the same cuts at four times the runs, shows by how much), which errs on the
safe side: the bound is at most this much lower.

The truth is not such a bound: it knows the drift and the jumps inside the target window, which
the state does not. Prints JSON with the machine and the commit. No model is trained.
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
from model_eval import DATASETS, SESSION_GAP_MS, make_log  # noqa: E402
from train_eval import SIM_RUNS  # noqa: E402


def state_predictions(ds, samples, cfg, categories, sim: tuple, runs: int, seed: int) -> np.ndarray:
    """(N, k) the state's prediction of each sample (module doc), over ``categories``."""
    from interest_core.window import seconds_to_ms
    from models.simulate import CATEGORIES, user_steps

    users, days, sim_seed, mechanisms = sim
    on = mechanisms == "on"
    col = [CATEGORIES.index(c) for c in categories]
    weights = {"click": cfg.click_weight, "browse": cfg.browse_weight}
    window_ms = seconds_to_ms(cfg.target_window_s)
    cuts: dict[int, dict[int, int]] = {}  # user index -> cut -> row
    for r, (u, c) in enumerate(zip(samples.user, samples.cut)):
        cuts.setdefault(int(u), {})[int(c)] = r
    out = np.full((len(samples), len(categories)), np.nan)
    for u, rows in cuts.items():
        uid = ds.user_ids[u]
        index = int(uid[1:])  # the simulator's ids are u<index>
        seq_ts = ds.seqs[u].ts
        n, last = 0, max(rows)
        for kind, ev, user in user_steps(index, sim_seed, days, intent=on, transitions=on):
            if kind != "event":
                continue
            n += 1
            if int(ev["ts"]) != int(seq_ts[n - 1]):
                raise RuntimeError(f"user {uid}: event {n} of the simulator is not the log's (another seed?)")
            r = rows.get(n)
            if r is not None:
                p = expected(user, window_ms, weights, runs, (seed, index, n))
                out[r] = p[col] / p[col].sum()
            if n >= last:
                break
    return out


def expected(user, window_ms, weights, runs, seed):
    from models.simulate import expected_target

    p = expected_target(user, window_ms, weights, runs, seed)
    if p is None:  # no run had a weighted event: the interests now (a handful of cuts at most)
        p = user.interests(user.t)
    return p


def one_run(sim: tuple, wd: Path, runs: int, max_cuts: int, seed: int) -> dict:
    from models.data import DataConfig, prepare
    from models.evaluate import BUCKETS, activity_buckets, baseline_predictions, kl_per_sample, truth_targets
    from models.simulate import read_truth

    users, days, sim_seed, mechanisms = sim
    log = make_log("sim", wd, users, days, sim_seed, mechanisms)
    cfg = DataConfig(**DATASETS["sim"]["data"])
    ds, encoder, _ = prepare(log, cfg)
    base = baseline_predictions(ds, cfg, encoder.k)
    test = ds.splits["test"]
    best = base["best"]
    truth, ok = truth_targets(read_truth(Path(f"{log}.truth.jsonl")), ds, test, encoder.categories, cfg)
    preds = {best: base["test"][best], "ema_prior": base["test"]["ema_prior"], "truth": truth}
    t = time.time()
    preds["state"] = state_predictions(ds, test, cfg, encoder.categories, sim, runs, seed)
    state_s = time.time() - t

    def kls(mask, ps, target):
        return {n: round(float(kl_per_sample(target[mask], p[mask]).mean()), 4) for n, p in ps.items()}

    def ratios(mask):
        k = kls(mask, preds, test.targets)
        return {n: round(v / k[best], 4) for n, v in k.items() if n != best}

    kl = kls(ok, preds, test.targets)
    out = {"log": f"sim {users} x {days} days, seed {sim_seed}, mechanisms {mechanisms}", "runs": runs,
           "test_samples": int(ok.sum()), "of": int(len(test)), "test_users": int(len(set(test.user.tolist()))),
           "best_baseline": best, "kl": kl,
           "ratio_to_best_baseline": {n: round(v / kl[best], 4) for n, v in kl.items() if n != best},
           "kl_against_truth": kls(ok, {n: p for n, p in preds.items() if n != "truth"}, truth),
           "state_seconds": round(state_s, 1)}
    # where the state's lead comes from: per user-activity bucket (evaluate's thirds) and by whether the
    # user's next event is inside the session (bench/model_eval.py's truth_kl_by_next_event)
    bucket, rule = activity_buckets(ds, test)
    out["by_activity"] = {"rule": rule, **{
        name: {"samples": int((ok & (bucket == b)).sum()),
               "ratio_to_best_baseline": ratios(ok & (bucket == b))} for b, name in enumerate(BUCKETS)}}
    gap = np.array([ds.seqs[u].ts[c] - t for u, c, t in zip(test.user, test.cut, test.cut_ts)])
    out["by_next_event"] = {
        name: {"samples": int(m.sum()), "ratio_to_best_baseline": ratios(m)}
        for name, m in (("within_10_min", ok & (gap < SESSION_GAP_MS)), ("later", ok & (gap >= SESSION_GAP_MS)))}
    # the same first cuts at four times the runs: how much the Monte Carlo mean costs the bound
    sub = np.flatnonzero(ok)[:max_cuts]
    few = test.take(sub)
    more = state_predictions(ds, few, cfg, encoder.categories, sim, 4 * runs, seed + 1)
    target = test.targets[sub]
    out["runs_check"] = {"cuts": int(len(sub)), "runs": 4 * runs,
                         "kl": round(float(kl_per_sample(target, more).mean()), 4),
                         f"kl_at_{runs}": round(float(kl_per_sample(target, preds["state"][sub]).mean()), 4)}
    return out


@click.command()
@click.option("--run", "run_index", type=click.IntRange(0, len(SIM_RUNS) - 1), default=None,
              help="one of SIM_RUNS by index (default: all)")
@click.option("--runs", default=32, show_default=True, type=click.IntRange(1), help="forward simulations per cut")
@click.option("--max-cuts", default=2000, show_default=True, type=click.IntRange(1),
              help="cuts of the runs check (at four times --runs)")
@click.option("--seed", default=0, show_default=True)
@click.option("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-bench"), show_default=True,
              type=click.Path(file_okay=False))
def main(run_index, runs, max_cuts, seed, workdir):
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": "the prediction from the simulator's whole state: no model of the past does better",
           "machine": machine(), "commit": commit(), "runs": []}
    t0 = time.time()
    for i, sim in enumerate(SIM_RUNS):
        if run_index is not None and i != run_index:
            continue
        t = time.time()
        r = one_run(sim, wd, runs, max_cuts, seed)
        r["seconds"] = round(time.time() - t, 1)
        out["runs"].append(r)
        print(json.dumps(r), file=sys.stderr)
    out["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

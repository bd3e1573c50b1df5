"""What no model of the past can beat on a simulated log: predictions from the simulator's hidden state.

    .venv/bin/python bench/sim_bound.py [--run I [--model DIR]] [--runs N] [--lags 1[,2,4]]
        [--from-start [--unknown-constants]] [--particles P] [--block W --block-moves M]
        [--moves F [--moves-last L]] [--max-users U] [--cut-every N] [--max-cuts M] [--workdir DIR]

On the simulated populations of ``bench/train_eval.py`` (:data:`SIM_RUNS`; ``--run I`` takes one),
with the split, the test samples and the baselines of ``bench/model_eval.py`` (the same
:func:`models.data.prepare`, so the model's test KL there is comparable; ``--max-users`` keeps a
seeded subset of the test users, every cut of theirs, and ``--cut-every N`` every Nth cut of
each), the test split's KL of
* the best baseline and ``ema_prior``;
* **the state's prediction**: each test user is simulated again from its seed
  (:func:`models.simulate.user_steps`), and at each test cut the expected target given the
  simulator's whole state at that moment (latent interests, base point, habit, the session and
  its category, the scheduled shift and where it goes) is computed by simulating the target window
  forward ``--runs`` times (:func:`models.simulate.expected_target`);
* **the lagged state's prediction**, for each lag in ``--lags`` (days): the expected target given
  the state at the user's last event at least that long before the cut and every event since,
  by a particle filter with the simulator's own dynamics (:mod:`models.sim_filter`);
* with ``--from-start``, **the events' prediction**: the same filter started from the simulator's
  prior before the user's first event, knowing the user's constants (activity, habit, time zone)
  and its events, nothing of its state; a model of the past knows the events, so only a filter
  that has not converged scores above it; with ``--unknown-constants`` each particle draws the
  constants from their prior too, and the filter knows what a model knows, the events alone;
* the truth (the latent interests averaged over the target window, ``bench/hindsight.py``);
* with ``--model DIR``, a checkpoint trained on that log: its test predictions, on the same cuts.

Each figure is also given per user-activity bucket, by whether the user's next event is inside the
session, and, with the mechanisms on, by where their information is (``by_mechanism``): cuts whose
target window holds the user's scheduled shift, cuts with an intent search in the hours before,
and the rest. With ``--model``, ``model_with_the_state_on_their_cuts`` is the model's ratio had it
predicted as the state does on the first two kinds of cut, where nothing predicts better: what
the rest of the cuts leave to reach.

Why they bound every model. The target window depends on the past only through the state at the
cut (the simulator is a Markov process in that state; the future draws are new), so the state
says at least as much about the target as the events before the cut do; so do an earlier state
and the events since it. Among predictions from some information, the expected target given it
has the lowest expected KL (the KL is the target's cross-entropy minus its entropy, and the
cross-entropy is lowest at the mean). So no model that reads the events, the profile or anything
else from the past has a lower expected KL than any of these predictions, on a finite test split
up to sampling, and the longer the lag the tighter the bound. They are computed by Monte Carlo
(forward runs, particles), whose error makes a figure a little higher than the exact bound:
``precision_check`` repeats the first ``--max-cuts`` cuts at four times the runs and particles, and
every such figure comes with its jackknife (``NAME (jackknife)``,
:func:`models.evaluate.jackknife_kl`), which removes the first-order bias of averaging a finite
number of forward runs. What it cannot remove is a filter's error from too few particles, which
only the check at four times as many shows.

The truth is not such a bound: it knows the drift and the jumps inside the target window, which
the state does not, and not the session the next events stick to, which the state does. Prints
JSON with the machine and the commit. No model is trained.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import commit, machine  # noqa: E402
from model_eval import DATASETS, make_log, next_event_groups  # noqa: E402
from train_eval import SIM_RUNS  # noqa: E402


def state_predictions(ds, samples, cfg, categories, sim: tuple, runs: int, seed: int, lags=(),
                      particles: int = 0, flags: dict | None = None, moves: int = 0,
                      block: tuple[int, int] = (0, 0), from_start: bool = False, moves_last: int = 0,
                      draws: dict | None = None, constants: str = "known") -> dict[str, np.ndarray]:
    """(N, k) predictions of each sample over ``categories``: ``"state"`` from the state at the cut
    (module doc), and for each lag in ``lags`` (days) ``"lag L d"``, the particle filter's
    (:mod:`models.sim_filter`) from the state at the user's last event at least ``L`` days before
    the cut (its first event if none is that old) and the events since: ``runs`` of ``particles`` drawn by
    weight, one forward simulation from each (as many as the state's; distinct draws say more about
    the filter's posterior than runs repeated from fewer). With ``moves``, the particles first take
    that many Metropolis steps on their paths (:meth:`models.sim_filter.ParticleFilter.move`);
    with ``block`` (W, M), M steps on the paths' last W events after every resampling; with
    ``moves_last``, the steps before predicting cover the last that many events, not the whole path.

    With ``from_start``, ``"from start"``: the filter started from the simulator's prior before the
    user's first event (:meth:`models.sim_filter.ParticleFilter.from_prior`), knowing the user's
    constants and its events, and nothing of its state; one filter per user, fed each event once
    and read at each of its cuts (it records the last ``max(block, moves_last)`` events' paths).
    With ``constants="prior"`` it draws the constants from their prior as well, the events alone,
    and moves them (:meth:`models.sim_filter.ParticleFilter.move_constants`) after every ``block``
    events and, ``block``'s number of moves, at each cut; it then records every event's path.

    ``draws``, when given a dict, receives for each name a list (N) of the (R, k) predictions whose
    mean is the sample's (one per forward run, or per particle drawn), for
    :func:`models.evaluate.jackknife_kl`.

    ``flags``, when given a dict, receives (N,) booleans from the simulator at each cut (mechanisms
    on): ``"shift_in_target"``, the user's scheduled shift (in its state) falls inside the target
    window, and ``"intent_search_before"``, one of the user's intent searches (for the coming
    category; which searches were is hidden from a model) is among its events of the
    :data:`models.simulate.INTENT_LEAD_H` hours before the cut."""
    import copy

    from interest_core.window import seconds_to_ms
    from models.sim_filter import ParticleFilter
    from models.simulate import CATEGORIES, DAY_MS, DEFAULT_START_MS, HOUR_MS, INTENT_LEAD_H, SimUser, user_steps

    users, days, sim_seed, mechanisms = sim
    on = mechanisms == "on"
    col = [CATEGORIES.index(c) for c in categories]
    weights = {"click": cfg.click_weight, "browse": cfg.browse_weight}
    window_ms = seconds_to_ms(cfg.target_window_s)
    cuts: dict[int, dict[int, int]] = {}  # user index -> cut -> row
    for r, (u, c) in enumerate(zip(samples.user, samples.cut)):
        cuts.setdefault(int(u), {})[int(c)] = r
    names = ["state"] + [f"lag {lag:g} d" for lag in lags]
    out = {name: np.full((len(samples), len(categories)), np.nan) for name in names + ["from start"] * from_start}
    if draws is not None:
        draws.update({name: [None] * len(samples) for name in out})
    if flags is not None:
        flags.update(shift_in_target=np.zeros(len(samples), bool), intent_search_before=np.zeros(len(samples), bool))
    for u, rows in cuts.items():
        uid = ds.user_ids[u]
        index = int(uid[1:])  # the simulator's ids are u<index>
        seq_ts = ds.seqs[u].ts
        n, last = 0, max(rows)
        events, states = [], []  # the user's events, and its state after each (for the lags)
        last_intent = None  # ts of the user's latest intent search
        if from_start:
            pf0 = ParticleFilter.from_prior(SimUser(index, sim_seed, DEFAULT_START_MS, on, on), particles,
                                            (seed, index, 1 << 30), record=moves > 0, block=block[0],
                                            block_moves=block[1], keep=moves_last, constants=constants)
        for kind, ev, user in user_steps(index, sim_seed, days, intent=on, transitions=on):
            if kind != "event":
                continue
            n += 1
            if on and user.last_intent:
                last_intent = int(ev["ts"])
            if int(ev["ts"]) != int(seq_ts[n - 1]):
                raise RuntimeError(f"user {uid}: event {n} of the simulator is not the log's (another seed?)")
            if lags:
                events.append(ev)
                states.append(copy.deepcopy(user))
            if from_start:
                pf0.observe(ev)
            r = rows.get(n)
            if r is not None and flags is not None and on:
                flags["shift_in_target"][r] = user.next_shift - int(ev["ts"]) <= window_ms
                flags["intent_search_before"][r] = last_intent is not None and \
                    int(ev["ts"]) - last_intent <= INTENT_LEAD_H * HOUR_MS
            if r is not None:
                preds = {"state": expected(user, window_ms, weights, runs, (seed, index, n))}
                if from_start:
                    if moves:
                        pf0.move(moves, last=moves_last or None)
                    if constants == "prior":  # and its constants, over the whole path
                        pf0.move_constants(max(1, block[1]))
                    preds["from start"] = filtered(pf0, window_ms, weights, runs, (seed, index, n))
                for lag, name in zip(lags, names[1:]):
                    j = max(0, int(np.searchsorted(seq_ts[:n], ev["ts"] - lag * DAY_MS, side="right")) - 1)
                    pf = ParticleFilter(states[j], particles, (seed, index, n, j), record=moves > 0, block=block[0],
                                        block_moves=block[1])
                    for e in events[j + 1:n]:
                        pf.observe(e)
                    if moves:
                        pf.move(moves, last=moves_last or None)
                    preds[name] = filtered(pf, window_ms, weights, runs, (seed, index, n))
                for name, q in preds.items():
                    q = q[:, col]
                    m = q.mean(0)
                    out[name][r] = m / m.sum()
                    if draws is not None:
                        draws[name][r] = q
            if n >= last:
                break
    return out


def every_nth_cut(users: np.ndarray, cuts: np.ndarray, n: int) -> np.ndarray:
    """The sorted indices of every ``n``th of each user's cuts in time order (its first, its
    ``n + 1``st, ...)."""
    order = np.lexsort((cuts, users))
    u = users[order]
    start = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])  # each user's first, in order
    rank = np.arange(len(u)) - np.repeat(start, np.diff(np.r_[start, len(u)]))
    return np.sort(order[rank % n == 0])


def expected(user, window_ms, weights, runs, seed) -> np.ndarray:
    """(R, K) the state's expected target, one row per forward run with a weighted event."""
    from models.simulate import expected_target

    p = expected_target(user, window_ms, weights, runs, seed, draws=True)
    if p is None:  # no run had a weighted event: the interests now (a handful of cuts at most)
        p = user.interests(user.t)[None]
    return p


def filtered(pf, window_ms, weights, runs, seed) -> np.ndarray:
    """(R, K) the filter's expected target: one forward run from each of ``runs`` particles drawn."""
    q = pf.predict(window_ms, weights, runs, 1, seed, draws=True)
    return pf.interests(pf.t).mean(0)[None] if q is None else q  # (no run had a weighted event)


def one_run(sim: tuple, wd: Path, runs: int, max_cuts: int, seed: int, lags=(), particles: int = 0, moves: int = 0,
            block: tuple[int, int] = (0, 0), max_users: int = 0, model_dir=None, from_start: bool = False,
            moves_last: int = 0, cut_every: int = 1, constants: str = "known") -> dict:
    from models.data import DataConfig, prepare
    from models.evaluate import (BUCKETS, activity_buckets, baseline_predictions, held_out_predictions, jackknife_kl,
                                 kl_per_sample, truth_targets)
    from models.simulate import read_truth

    users, days, sim_seed, mechanisms = sim
    log = make_log("sim", wd, users, days, sim_seed, mechanisms)
    cfg = DataConfig(**DATASETS["sim"]["data"])
    if model_dir:  # the model's own split (its card's), and its test predictions
        run = held_out_predictions(model_dir, log)
        if asdict(run.dcfg) != asdict(cfg):
            raise click.UsageError(f"{model_dir} was trained with another data config than bench/model_eval.py's sim")
        ds, encoder, base, model_pred = run.ds, run.encoder, run.base, run.pred
    else:
        ds, encoder, _ = prepare(log, cfg)
        base, model_pred = baseline_predictions(ds, cfg, encoder.k), None
    test = ds.splits["test"]
    best = base["best"]
    keep = np.arange(len(test))
    if max_users:  # a seeded subset of the test users, every cut of theirs
        chosen = np.random.default_rng(seed).permutation(np.unique(test.user))[:max_users]
        keep = np.flatnonzero(np.isin(test.user, chosen))
        test = test.take(keep)
    if cut_every > 1:  # every Nth cut of each user's: the filter still reads every event
        nth = every_nth_cut(test.user, test.cut, cut_every)
        keep, test = keep[nth], test.take(nth)
    truth, ok = truth_targets(read_truth(Path(f"{log}.truth.jsonl")), ds, test, encoder.categories, cfg)
    preds = {best: base["test"][best][keep], "ema_prior": base["test"]["ema_prior"][keep], "truth": truth}
    if model_pred is not None:
        preds["model"] = model_pred[keep]
    t = time.time()
    flags, draws = {}, {}
    preds.update(state_predictions(ds, test, cfg, encoder.categories, sim, runs, seed, lags, particles, flags, moves,
                                   block, from_start, moves_last, draws, constants))
    state_s = time.time() - t
    # each sample's KL, and for the Monte Carlo predictions their jackknifed KL beside it ("NAME (jackknife)")
    per = {n: kl_per_sample(test.targets, p) for n, p in preds.items()}
    per.update({f"{n} (jackknife)": jackknife_kl(test.targets, d) for n, d in draws.items()})

    def kls(mask, ps, target):
        return {n: round(float(kl_per_sample(target[mask], p[mask]).mean()), 4) for n, p in ps.items()}

    def ratios(mask):
        k = {n: round(float(v[mask].mean()), 4) for n, v in per.items()}
        return {n: round(v / k[best], 4) for n, v in k.items() if n != best}

    kl = {n: round(float(v[ok].mean()), 4) for n, v in per.items()}
    out = {"log": f"sim {users} x {days} days, seed {sim_seed}, mechanisms {mechanisms}", "runs": runs,
           "lags_days": list(lags), "from_start": from_start, "constants": constants, "particles": particles,
           "moves": moves, "moves_last": moves_last, "block": {"events": block[0], "moves": block[1]},
           "max_users": max_users, "cut_every": cut_every,
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
    out["by_next_event"] = {name: {"samples": int(m.sum()), "ratio_to_best_baseline": ratios(m)}
                            for name, m in next_event_groups(ds, test, ok).items()}
    if mechanisms == "on":  # where the mechanisms' information is, and how much of it each prediction takes
        shift, intent = flags["shift_in_target"], flags["intent_search_before"]
        out["by_mechanism"] = {}
        for name, m in (("shift_in_target", shift), ("intent_search_before", intent), ("neither", ~shift & ~intent)):
            g = ok & m
            out["by_mechanism"][name] = {
                "samples": int(g.sum()),
                "best_baseline_kl_sum": round(float(kl_per_sample(test.targets[g], preds[best][g]).sum()), 1),
                "ratio_to_best_baseline": ratios(g) if g.any() else None}
        if "model" in preds:  # the model, with the state's prediction on the mechanisms' cuts
            mixed = np.where((shift | intent)[:, None], preds["state"], preds["model"])
            out["by_mechanism"]["model_with_the_state_on_their_cuts"] = round(
                float(kl_per_sample(test.targets[ok], mixed[ok]).mean()) / kl[best], 4)
    print(json.dumps(out), file=sys.stderr, flush=True)  # the figures, before the check can fail them (memory)
    # the same first cuts at four times the runs and particles: how much the Monte Carlo costs the bounds
    sub = np.flatnonzero(ok)[:max_cuts]
    few = test.take(sub)
    more_draws = {}
    more = state_predictions(ds, few, cfg, encoder.categories, sim, 4 * runs, seed + 1, lags, 4 * particles,
                             moves=moves, block=block, from_start=from_start, moves_last=moves_last,
                             draws=more_draws, constants=constants)
    out["precision_check"] = {"cuts": int(len(sub)), "runs": 4 * runs, "particles": 4 * particles, "kl": {
        name: {"at_4x": round(float(kl_per_sample(test.targets[sub], q).mean()), 4),
               "as_above": round(float(per[name][sub].mean()), 4),
               "at_4x_jackknife": round(float(jackknife_kl(test.targets[sub], more_draws[name]).mean()), 4),
               "as_above_jackknife": round(float(per[f"{name} (jackknife)"][sub].mean()), 4)}
        for name, q in more.items()}}
    return out


@click.command()
@click.option("--run", "run_index", type=click.IntRange(0, len(SIM_RUNS) - 1), default=None,
              help="one of SIM_RUNS by index (default: all)")
@click.option("--runs", default=32, show_default=True, type=click.IntRange(1), help="forward simulations per cut")
@click.option("--max-cuts", default=300, show_default=True, type=click.IntRange(1),
              help="cuts of the precision check (four times the runs and particles)")
@click.option("--lags", default="1", show_default=True,
              help="days: for each, the particle filter from the state that long before the cut ('': none)")
@click.option("--block", default=0, show_default=True, type=click.IntRange(0),
              help="after every resampling, Metropolis steps on the particles' paths over this many last events "
                   "(the resample-move filter; 0: none)")
@click.option("--block-moves", default=2, show_default=True, type=click.IntRange(1),
              help="Metropolis steps after each resampling, with --block")
@click.option("--moves", default=0, show_default=True, type=click.IntRange(0),
              help="Metropolis steps on the particles' paths before predicting (whole paths, or --moves-last)")
@click.option("--moves-last", default=0, show_default=True, type=click.IntRange(0),
              help="the steps before predicting move the paths' last this many events (0: the whole paths)")
@click.option("--from-start", is_flag=True,
              help="also the particle filter from the simulator's prior before each user's first event: "
                   "the events alone, and the user's constants (needs --moves-last with --moves)")
@click.option("--unknown-constants", is_flag=True,
              help="with --from-start, each particle draws the user's constants from their prior too: the events "
                   "alone, as a model knows them")
@click.option("--particles", default=2000, show_default=True, type=click.IntRange(1),
              help="particles of the filter")
@click.option("--max-users", default=0, show_default=True, type=click.IntRange(0),
              help="a seeded subset of this many test users (0: all)")
@click.option("--cut-every", default=1, show_default=True, type=click.IntRange(1),
              help="every Nth of each user's test cuts (its first, N+1st, ...): the sample's predictions at "
                   "fewer cuts")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="a checkpoint trained on the --run population's log (bench/model_eval.py's sim config): "
                   "its test predictions beside the others, on its own split")
@click.option("--seed", default=0, show_default=True)
@click.option("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-bench"), show_default=True,
              type=click.Path(file_okay=False))
def main(run_index, runs, max_cuts, lags, block, block_moves, moves, moves_last, from_start, unknown_constants,
         particles, max_users, cut_every, model_dir, seed, workdir):
    try:
        lags = tuple(float(x) for x in lags.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{lags!r} is not a comma-separated list of days", param_hint="--lags") from None
    if from_start and moves and not moves_last:
        raise click.UsageError("--from-start with --moves needs --moves-last: a path from the first event is too long "
                               "to move whole at every cut")
    if unknown_constants and not from_start:
        raise click.UsageError("--unknown-constants needs --from-start: a filter from a state knows its constants")
    if model_dir and run_index is None:
        raise click.UsageError("--model needs --run: a checkpoint belongs to one population")
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": "predictions from the simulator's hidden state, which no model of the past beats",
           "machine": machine(), "commit": commit(), "runs": []}
    t0 = time.time()
    for i, sim in enumerate(SIM_RUNS):
        if run_index is not None and i != run_index:
            continue
        t = time.time()
        r = one_run(sim, wd, runs, max_cuts, seed, lags, particles, moves, (block, block_moves if block else 0),
                    max_users, model_dir, from_start, moves_last, cut_every,
                    "prior" if unknown_constants else "known")
        r["seconds"] = round(time.time() - t, 1)
        out["runs"].append(r)
        print(json.dumps(r), file=sys.stderr)
    out["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

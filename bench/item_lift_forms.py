"""Other forms of the item lift against the one ``train`` fits (not a test; nothing is trained).

    .venv/bin/python bench/item_lift_forms.py --workdir DIR [--dataset movielens|cj]

On the folds that ``bench/backtest.py --workdir DIR`` left, as ``bench/item_lift.py`` reads them
(each fold's prepared data, baselines and ``default`` checkpoint; the model is the checkpoint's
graph without the lift its encoding carries), each form below is fit on the training period's
cuts, its settings chosen on validation on top of the graph's validation predictions, its table
fit again on training + validation for test when the checkpoint was refit, and scored on test:

* ``mean_5``: the mean lift of the window's newest 5 items, one strength (what ``train`` fits:
  :mod:`models.item_lift`; its validation chose 5 items in all four MovieLens periods);
* ``recency``: the newest 20 items, the newest weighted most (``d ** rank``, rank 0 the newest,
  in the table's credit too; ``d`` 0.6 or 0.8 chosen on validation);
* ``two_tables``: the newest item's own table beside ``mean_5``'s, each with its own strength
  (0 to 4 by 0.2 on a grid);
* ``per_length``: ``mean_5`` with one strength per number of the window's items the table holds
  (1, 2-3, 4-5), each chosen on validation;
* ``per_category``: ``mean_5`` with one strength per category (coordinate descent from the one
  strength, two sweeps);
* ``residual``: ``mean_5``'s table credited against the graph's own predictions of the training
  cuts instead of the prior, ``log((S + m*prior) / (P + m*prior))`` (``P``: the credited
  predictions): what the items say beyond what the graph already predicts.

The shrinkage ``m`` is chosen on validation from :data:`models.item_lift.SHRINK` for every form.
Reported pooled over folds (every test sample alike, as ``bench/backtest.py`` pools): each form's
ratio to the fold's best baseline, and its KL difference to ``mean_5`` with the paired bootstrap
interval over (fold, user) pairs; again on each user's first test cut. Prints JSON with the machine
and the commit.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backtest import fold_users  # noqa: E402
from common import commit, machine  # noqa: E402
from item_lift import fold_inputs  # noqa: E402
from model_eval import first_cut_mask  # noqa: E402
from models.item_lift import LiftTable, pruned, table_lifts  # noqa: E402

DECAYS = (0.6, 0.8)
GRID = tuple(round(0.2 * i, 1) for i in range(21))  # two_tables' strengths
LENGTHS = ((1, 1), (2, 3), (4, 5))  # per_length's groups of found items


def weighted_keys(keys: list, n: int, d: float) -> list:
    """Per cut, ``[(item, weight)]`` of its newest ``n`` keys (``keys`` oldest first), weights
    ``d ** rank`` (rank 0 the newest) summing to 1."""
    out = []
    for ks in keys:
        ks = ks[-n:][::-1]
        w = d ** np.arange(len(ks))
        out.append(list(zip(ks, w / w.sum())))
    return out


def fit(wkeys: list, targets: np.ndarray) -> LiftTable:
    """:func:`models.item_lift.fit_table` with each cut's target shared by the keys' weights (not
    equally): per item its credited targets (k,) and credit."""
    S, N = {}, {}
    for kw, t in zip(wkeys, targets):
        for x, w in kw:
            if x in S:
                S[x] += w * t
                N[x] += w
            else:
                S[x], N[x] = w * np.asarray(t, np.float64), w
    return LiftTable(S, N)


def lifts(table: LiftTable, prior: np.ndarray, m: float, predicted: LiftTable | None = None) -> dict:
    """Per item credited with one target at least: its lift against the prior
    (:func:`models.item_lift.table_lifts`) or, with ``predicted`` (the same cuts credited with the
    graph's predictions), against those, shrunk by ``m`` pseudo-cuts of the prior."""
    table = pruned(table)
    if predicted is None:
        return table_lifts(table, prior, m)
    return {x: np.log((table.sums[x] + m * prior) / (predicted.sums[x] + m * prior)) for x in table.sums}


def cut_lifts(wkeys: list, table: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lift (N, k), found (N,))``: per cut the weighted mean lift of its items in ``table``
    (weights renormalised over those found) and how many were found."""
    out, found = np.zeros((len(wkeys), k)), np.zeros(len(wkeys), int)
    for i, kw in enumerate(wkeys):
        f = [(table[x], w) for x, w in kw if x in table]
        if f:
            w = np.array([w for _, w in f])
            out[i] = (w[:, None] * np.stack([v for v, _ in f])).sum(0) / w.sum()
            found[i] = len(f)
    return out, found


def one_fold(fold_dir: Path, dataset: str) -> tuple:
    from models.data import encode_samples, sample_profiles
    from models.evaluate import kl_per_sample
    from models.item_lift import LAMBDAS, SHRINK, apply, choose, window_keys
    from models.model import predict

    f = fold_inputs(fold_dir, dataset, "default")
    va, te, k = f.va, f.te, f.enc.k
    pv, pt = f.graph_val.astype(np.float64), f.graph_test.astype(np.float64)
    keys = {n: [window_keys(w, f.index, 20) for w in ws] for n, ws in f.windows.items()}
    # the graph's own predictions of the cuts the tables are fit on (residual)
    own = {n: predict(f.model, encode_samples(d, s, f.dcfg, f.enc), sample_profiles(d, s, f.dcfg, f.enc),
                      f.enc.pad_id).astype(np.float64)
           for n, d, s in (("train", f.ds, f.tr), ("joined", f.jd, f.jtr))}
    prior = {"val": f.base["prior"], "test": f.test_base["prior"]}
    fit_on = {"val": ("train", f.tr.targets), "test": ("joined", f.jtr.targets)}

    def kl(t, p):
        return float(kl_per_sample(t, p).mean())

    def cut_lifts_of(n: int, d: float, m: float, residual: bool = False) -> dict:
        """{"val"|"test": (lift, found)} of the form with newest ``n``, decay ``d``, shrinkage ``m``."""
        out = {}
        for part in ("val", "test"):
            name, targets = fit_on[part]
            wk = weighted_keys(keys[name], n, d)
            table = lifts(fit(wk, targets), prior[part], m, fit(wk, own[name]) if residual else None)
            out[part] = cut_lifts(weighted_keys(keys[part], n, d), table, k)
        return out

    def best_m(n: int, d: float, residual: bool = False) -> tuple:
        """``(m, lam, val KL, lifts)`` of the form with the lowest validation KL over ``m`` and lam
        (:func:`models.item_lift.choose`, as ``train`` chooses)."""
        cl = {m: cut_lifts_of(n, d, m, residual) for m in SHRINK}
        m, lam, v = choose(pv, va.targets, {m: c["val"][0] for m, c in cl.items()}, kl_per_sample)
        return m, lam, v, cl[m]

    kls = {"model": kl_per_sample(te.targets, pt),
           "best": kl_per_sample(te.targets, f.test_base["test"][f.base["best"]])}
    chosen = {}
    m5, lam5, v5, cl5 = best_m(5, 1.0)
    kls["mean_5"] = kl_per_sample(te.targets, apply(pt, lam5 * cl5["test"][0]))
    chosen["mean_5"] = {"m": m5, "lambda": lam5, "val_kl": round(v5, 5)}

    rec = min((best_m(20, d, False) + (d,) for d in DECAYS), key=lambda r: r[2])
    kls["recency"] = kl_per_sample(te.targets, apply(pt, rec[1] * rec[3]["test"][0]))
    chosen["recency"] = {"d": rec[4], "m": rec[0], "lambda": rec[1], "val_kl": round(rec[2], 5)}

    m1, _, _, cl1 = best_m(1, 1.0)
    a, b = min(((a, b) for a in GRID for b in GRID),
               key=lambda ab: kl(va.targets, apply(pv, ab[0] * cl1["val"][0] + ab[1] * cl5["val"][0])))
    kls["two_tables"] = kl_per_sample(te.targets, apply(pt, a * cl1["test"][0] + b * cl5["test"][0]))
    chosen["two_tables"] = {"m_newest": m1, "lambda_newest": a, "m_5": m5, "lambda_5": b}

    lam_test, lams = np.zeros(len(pt)), []
    for lo, hi in LENGTHS:  # each group's strength on its own validation cuts
        in_group = (cl5["val"][1] >= lo) & (cl5["val"][1] <= hi)
        lams.append(choose(pv[in_group], va.targets[in_group], {m5: cl5["val"][0][in_group]}, kl_per_sample)[1]
                    if in_group.any() else 0.0)
        lam_test[(cl5["test"][1] >= lo) & (cl5["test"][1] <= hi)] = lams[-1]
    kls["per_length"] = kl_per_sample(te.targets, apply(pt, lam_test[:, None] * cl5["test"][0]))
    chosen["per_length"] = {"m": m5, "lambda_by_found": dict(zip(["1", "2-3", "4-5"], lams))}

    lamc = np.full(k, lam5)
    for _ in range(2):
        for c in range(k):
            trial = []
            for lam in LAMBDAS:
                lamc[c] = lam
                trial.append((lam, kl(va.targets, apply(pv, lamc * cl5["val"][0]))))
            lamc[c] = min(trial, key=lambda r: r[1])[0]
    kls["per_category"] = kl_per_sample(te.targets, apply(pt, lamc * cl5["test"][0]))
    chosen["per_category"] = {"m": m5, "lambda": dict(zip(f.enc.categories, lamc.tolist()))}

    mr, lamr, vr, clr = best_m(5, 1.0, residual=True)
    kls["residual"] = kl_per_sample(te.targets, apply(pt, lamr * clr["test"][0]))
    chosen["residual"] = {"m": mr, "lambda": lamr, "val_kl": round(vr, 5)}

    out = {"fold": fold_dir.name, "best_baseline": f.base["best"], "test_samples": len(te), "chosen": chosen,
           "ratio_to_best_baseline": {n: round(float(v.mean() / kls["best"].mean()), 4) for n, v in kls.items()
                                      if n != "best"}}
    return out, kls, te.user, first_cut_mask(te)


def pool(kls: dict, users: np.ndarray, reference: str = "mean_5") -> dict:
    """Pooled test samples: each prediction's ratio to the best baseline, and its KL difference to
    ``reference``'s with the paired bootstrap interval over ``users`` (``kl_minus_<reference>``)."""
    from models.evaluate import paired_bootstrap

    diffs = {}
    for n, v in kls.items():
        if n not in ("best", reference):
            d = v - kls[reference]
            diffs[n] = [round(float(d.mean()), 5), [round(x, 5) for x in paired_bootstrap(d, users)]]
    return {"test_samples": int(len(users)),
            "ratio_to_best_baseline": {n: round(float(v.mean() / kls["best"].mean()), 4) for n, v in kls.items()
                                       if n != "best"}, f"kl_minus_{reference}": diffs}


@click.command()
@click.option("--workdir", required=True, type=click.Path(exists=True, file_okay=False),
              help="bench/backtest.py's --workdir")
@click.option("--dataset", type=click.Choice(["movielens", "cj"]), default="movielens", show_default=True)
def main(workdir, dataset):
    folds = sorted(Path(workdir).glob(f"{dataset}-fold*"))
    if not folds:
        raise click.UsageError(f"{workdir}: no {dataset}-fold* directories; run bench/backtest.py first")
    runs = []
    for f in folds:
        runs.append(one_fold(f, dataset))
        print(json.dumps(runs[-1][0]), file=sys.stderr, flush=True)
    kls = {n: np.concatenate([r[1][n] for r in runs]) for n in runs[0][1]}
    users = fold_users([{"user": r[2]} for r in runs])
    first = np.concatenate([r[3] for r in runs])
    out = {"benchmark": "forms of the item lift against train's", "machine": machine(), "commit": commit(),
           "workdir": str(workdir), "folds": [r[0] for r in runs],
           "pooled": {"all": pool(kls, users), "first_test_cuts": pool({n: v[first] for n, v in kls.items()},
                                                                       users[first])}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

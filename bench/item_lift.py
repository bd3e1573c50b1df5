"""What the items of a window add to the trained model: an item-to-interest lift (not a test).

    .venv/bin/python bench/item_lift.py --workdir DIR [--dataset movielens|cj] [--variant default]
        [--slots 20]

The model reads each event's category, never its item. Whether the item carries more is measured
here, on the folds that ``bench/backtest.py --workdir DIR`` left (each fold's prepared data, its
baselines and its ``default`` checkpoint); nothing is trained. The model is the checkpoint's graph,
without the item lift its encoding may carry (``train``'s stage 6 fits one from ``1715a08``).

**The item lift** (:mod:`models.item_lift`): each item among the last ``--slots`` clicks and
browses of a cut's input window (the window the worker holds, :func:`models.data.sample_windows`)
is credited with the cut's target, over a training period's every cut; an item's lift is how far
that average next distribution sits from the prior, in logits, shrunk by ``m`` pseudo-cuts of the
prior; a prediction ``p`` with it is ``softmax(log p + lambda * mean lift of the window's items)``.
The **category lift** is the same with each event's category in place of its item: the control
that says whether it is the item, not the category sequence the model already reads, that adds.

**Fitting.** The table for validation is built on the training period's cuts; ``m`` (1, 10, 100)
and ``lambda`` (0 to 4 by 0.1) are chosen on validation as ``train`` chooses them
(:func:`models.item_lift.choose`), on top of the model's validation predictions; ``--slots`` is
fixed (``train`` chooses it too). The table for test is built again on the training and validation periods when the
checkpoint was refit on them (:func:`models.data.joined_dataset`), as the refit model was. The
refit model has seen the validation period, so its validation predictions are better than a fair
model's, and the lambda chosen is if anything too small.

Reported per fold and pooled over folds (every test sample alike, as ``bench/backtest.py``
pools): the ratio to each fold's best baseline of the model, the model with the item lift, the
model with the category lift and the best baseline with the item lift; and the pooled paired
bootstrap interval, over (fold, user) pairs, of the item lift's KL gain on the model; pooled again
over each fold's first test cut of each user alone (``first_test_cuts``, the cuts
``bench/live_eval.py`` streams each user up to). Prints JSON with the machine and the commit.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backtest import fold_users  # noqa: E402
from common import commit, machine  # noqa: E402
from first_cuts import read_fold  # noqa: E402
from model_eval import first_cut_mask  # noqa: E402


def fold_inputs(fold_dir: Path, dataset: str, variant: str) -> SimpleNamespace:
    """What a lift is fit and scored on in one fold: its data, the baselines fit on training
    (``base``, with validation predictions) and as they are refit for test (``test_base``), the
    checkpoint's graph on validation and test (``graph_val``, ``graph_test``), the training cuts of
    the tables (``tr`` of ``ds``; ``jtr`` of ``jd``, training + validation when the model was refit)
    and the input windows of every part (``windows``: train, joined, val, test)."""
    from models.data import joined_dataset, sample_windows
    from models.evaluate import baseline_predictions, refit_samples
    from models.model import predict

    (td, _, test_seqs, test_prof), (model, enc, card) = read_fold(fold_dir, dataset, variant)
    ds, dcfg = td.ds, td.data_cfg
    va, te = ds.splits["val"], ds.splits["test"]
    base = baseline_predictions(ds, dcfg, enc.k, with_val=True)  # validation predictions: fit on training
    refit_on = refit_samples(card, ds, enc.categories, dcfg)
    test_base = baseline_predictions(ds, dcfg, enc.k, refit_on) if refit_on is not None else base
    # the tables: the training period's cuts for validation; for test, what the model last saw
    tr = ds.splits["train_all"]
    jd = joined_dataset(ds, enc.categories, dcfg) if refit_on is not None else ds
    jtr = jd.splits["train_all"]
    windows = {"train": sample_windows(ds, tr, dcfg), "joined": sample_windows(jd, jtr, dcfg),
               "val": sample_windows(ds, va, dcfg), "test": sample_windows(ds, te, dcfg)}
    return SimpleNamespace(ds=ds, dcfg=dcfg, va=va, te=te, enc=enc, model=model, refit=refit_on is not None,
                           base=base, test_base=test_base, tr=tr, jd=jd, jtr=jtr, windows=windows,
                           graph_val=predict(model, td.val_seqs, td.val_prof, enc.pad_id),
                           graph_test=predict(model, test_seqs, test_prof, enc.pad_id),
                           index={c: i for i, c in enumerate(enc.categories)})


def one_fold(fold_dir: Path, dataset: str, variant: str, slots: int) -> dict:
    from models.evaluate import kl_per_sample
    from models.item_lift import SHRINK, choose, cut_lifts, fit_table, window_keys, with_lift

    f = fold_inputs(fold_dir, dataset, variant)
    va, te, tr, jtr, win, index, fit, test_base = f.va, f.te, f.tr, f.jtr, f.windows, f.index, f.base, f.test_base
    best = fit["best"]
    preds_val = {"model": f.graph_val, best: fit["val"][best]}
    preds_test = {"model": f.graph_test, best: test_base["test"][best]}
    out = {"fold": fold_dir.name, "best_baseline": best, "test_samples": len(te), "refit": f.refit}
    kl = {"best": kl_per_sample(te.targets, preds_test[best]), "model": kl_per_sample(te.targets, preds_test["model"])}
    for level in ("item", "category"):
        keys = {n: [window_keys(w, index, slots, level) for w in ws] for n, ws in win.items()}
        t_val, t_test = fit_table(keys["train"], tr.targets), fit_table(keys["joined"], jtr.targets)
        lifts_val = {m: cut_lifts(keys["val"], t_val, fit["prior"], m) for m in SHRINK}
        sources = ("model", best) if level == "item" else ("model",)
        for src in sources:
            m, lam, _ = choose(preds_val[src], va.targets, lifts_val, kl_per_sample)
            lift_test = cut_lifts(keys["test"], t_test, test_base["prior"], m)
            name = f"{'model' if src == 'model' else 'best_baseline'}+{level}"
            kl[name] = kl_per_sample(te.targets, with_lift(preds_test[src], lift_test, lam))
            out.setdefault("chosen", {})[name] = {"m": m, "lambda": lam}
        out.setdefault("table_keys", {})[level] = len(t_test)
    out["ratio_to_best_baseline"] = {n: round(float(v.mean() / kl["best"].mean()), 4) for n, v in kl.items()
                                     if n != "best"}
    return out, kl, te.user, first_cut_mask(te)


def pool(kl: dict, users: np.ndarray) -> dict:
    """Pooled test samples: each prediction's ratio to the best baseline, and the item lift's KL
    gain on the model with its paired bootstrap interval over (fold, user) pairs."""
    from models.evaluate import paired_bootstrap

    gain = kl["model"] - kl["model+item"]
    lo, hi = paired_bootstrap(gain, users)
    return {"test_samples": int(len(users)),
            "ratio_to_best_baseline": {n: round(float(v.mean() / kl["best"].mean()), 4) for n, v in kl.items()
                                       if n != "best"},
            "item_lift_gain_on_model": round(float(gain.mean()), 4),
            "item_lift_gain_on_model_ci95": [round(lo, 4), round(hi, 4)]}


@click.command()
@click.option("--workdir", required=True, type=click.Path(exists=True, file_okay=False),
              help="bench/backtest.py's --workdir")
@click.option("--dataset", type=click.Choice(["movielens", "cj"]), default="movielens", show_default=True)
@click.option("--variant", default="default", show_default=True, help="the checkpoint of this variant")
@click.option("--slots", default=20, show_default=True, type=click.IntRange(1, 128),
              help="the window's last N clicks and browses whose items (or categories) count")
def main(workdir, dataset, variant, slots):
    folds = sorted(Path(workdir).glob(f"{dataset}-fold*"))
    if not folds:
        raise click.UsageError(f"{workdir}: no {dataset}-fold* directories; run bench/backtest.py first")
    runs = []
    for f in folds:
        runs.append(one_fold(f, dataset, variant, slots))
        print(json.dumps(runs[-1][0]), file=sys.stderr, flush=True)
    kl = {n: np.concatenate([r[1][n] for r in runs]) for n in runs[0][1]}
    users = fold_users([{"user": r[2]} for r in runs])
    first = np.concatenate([r[3] for r in runs])
    pooled = {"all": pool(kl, users), "first_test_cuts": pool({n: v[first] for n, v in kl.items()}, users[first])}
    out = {"benchmark": "the items of a window: an item-to-interest lift on the trained model", "machine": machine(),
           "commit": commit(), "workdir": str(workdir), "variant": variant, "slots": slots,
           "folds": [r[0] for r in runs], "pooled": pooled}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

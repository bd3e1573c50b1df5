"""Where the model loses on a new user's first event: its parts against the counters (not a test).

    .venv/bin/python bench/first_cuts.py --workdir DIR [--dataset movielens] [--variant default]

Reads what ``bench/backtest.py --workdir DIR`` left, nothing is trained: each fold's prepared data
and baselines (``bench/model_eval.py``'s cache) and its ``default`` checkpoint. On each fold's test
samples whose window holds only the user's first event (a new user: ``by_sitting``'s
``first_event``) and on the rest, the mean KL of
* the model as ``train`` exported it (its item lift included, when it has one);
* its plain path alone, and the plain path with one correction (each correction's last layer
  scaled to 0 or kept, :meth:`models.model.InterestModel.scale_corrections`);
* ``mixture``, ``ema_prior`` and ``prior``, fit as ``evaluate`` fits them (their prior and
  ``mixture``'s weights refit on what a refit model saw, as ``bench/model_eval.py`` scores it).
So it says which part of the model is behind a fold's ratio on new users. Prints JSON with the
machine and the commit.
"""
from __future__ import annotations

import copy
import json
import pickle
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import commit, machine  # noqa: E402
from model_eval import sitting_groups  # noqa: E402

BASELINES = ("mixture", "ema_prior", "prior")


def read_fold(fold_dir: Path, dataset: str, variant: str) -> tuple:
    """What ``bench/backtest.py`` left of one fold: ``(td, base, test_seqs, test_prof)`` as
    ``bench/model_eval.py`` cached them, and the variant's ``(model, encoder, card)``."""
    from models.model import load_checkpoint

    wd = fold_dir / dataset
    cached = sorted(wd.glob("prepared-*.pkl"))
    if not cached or not (wd / variant).is_dir():
        raise click.UsageError(f"{wd}: no prepared data or no {variant!r} checkpoint; run bench/backtest.py first")
    with open(cached[-1], "rb") as f:
        prepared = pickle.load(f)
    return prepared, load_checkpoint(wd / variant)


def one_fold(fold_dir: Path, dataset: str, variant: str) -> dict:
    from models.evaluate import baseline_predictions, kl_per_sample, refit_samples
    from models.item_lift import served
    from models.model import predict

    (td, base, test_seqs, test_prof), (model, enc, card) = read_fold(fold_dir, dataset, variant)
    test = td.ds.splits["test"]
    new = sitting_groups(td.ds, test)["first_event"]  # the window holds the user's first event only
    refit_on = refit_samples(card, td.ds, enc.categories, td.data_cfg)
    if refit_on is not None:  # the baselines see what the model saw
        base = baseline_predictions(td.ds, td.data_cfg, enc.k, refit_on)
    graph = predict(model, test_seqs, test_prof, enc.pad_id)
    preds = {"model": served(enc, graph.astype("float64"), base["test_windows"])}  # with its item lift, if any
    names = list(model.correction_outputs())
    for keep in [[]] + [[n] for n in names]:
        part = copy.deepcopy(model)
        part.scale_corrections([1.0 if n in keep else 0.0 for n in names])
        preds["plain" + "".join(f"+{n}" for n in keep)] = predict(part, test_seqs, test_prof, enc.pad_id)
    preds.update({n: base["test"][n] for n in BASELINES})

    def mean_kl(p, mask):
        return round(float(kl_per_sample(test.targets[mask], p[mask]).mean()), 4) if mask.any() else None

    return {"fold": fold_dir.name, "best_baseline": base["best"], "new_users": int(new.sum()),
            "other_samples": int((~new).sum()),
            "kl_new_users": {n: mean_kl(p, new) for n, p in preds.items()},
            "kl_other": {n: mean_kl(p, ~new) for n, p in preds.items()}}


@click.command()
@click.option("--workdir", required=True, type=click.Path(exists=True, file_okay=False),
              help="bench/backtest.py's --workdir")
@click.option("--dataset", type=click.Choice(["movielens", "cj"]), default="movielens", show_default=True)
@click.option("--variant", default="default", show_default=True, help="the checkpoint of this variant")
def main(workdir, dataset, variant):
    folds = sorted(Path(workdir).glob(f"{dataset}-fold*"))
    if not folds:
        raise click.UsageError(f"{workdir}: no {dataset}-fold* directories; run bench/backtest.py first")
    out = {"benchmark": "a new user's first event: the model's parts against the counters", "machine": machine(),
           "commit": commit(), "workdir": str(workdir), "variant": variant,
           "folds": [one_fold(f, dataset, variant) for f in folds]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""``interest-stream evaluate-rerank``: what re-ranking candidates with the interest vectors is
worth, offline, on the checkpoint's own test split (:mod:`models.data`).

For every test sample (a user and a cut) of the checkpoint's split:

* **Candidates**: the positives are the distinct items of the click and browse events in the
  sample's target span (the user's actual next items: the next ``target_k`` events or baskets, or
  the next ``target_window_s``; also items whose category the model does not know, which then get the
  prior), plus ``negatives`` (default 100) negatives: the most popular items of the training
  period (events before ``t1``, type-weighted like the targets: click 1, browse 0.5) that the
  user has not clicked or browsed before the cut and that are not positives (all of them when
  there are fewer: rerank_metrics.json's ``negatives`` is the most a test list got,
  ``negatives_requested`` the option). Each candidate's
  score is that popularity (0 for an item unseen in training); the list is in popularity order,
  ties by item id, so nothing in it depends on which items are positives.
* **Four rankings** of that list: ``popularity`` (the list as is); ``model``, ``baseline`` and
  ``oracle``: the list re-ranked by :func:`interest_core.rerank.rerank` (the blend the worker
  serves) with the interests of, in turn, the model's vector for the sample, the best baseline's
  distribution (the baseline of :mod:`models.baselines` with the lowest validation KL, as in
  ``evaluate``), and the sample's actual target distribution (the future, an upper bound for
  category-level re-ranking). Only the interest source differs. The lift's prior is the
  population's category distribution (the mean training target, the card's ``category_prior``),
  the same for all three.
* **Blend weight**: per interest source, the weight of :data:`WEIGHTS` with the best mean NDCG@10
  on the validation split (ties: the smaller weight), then applied to the test split. A checkpoint
  refit on the training and validation periods (``TrainConfig.refit``, ``train``'s default) has
  seen the validation split, so its baselines are refit on the same samples, as in ``evaluate``
  (:func:`models.evaluate.refit_samples`): the model's and the baseline's weights are then both
  chosen on samples they were fit on.
* **Metrics** per sample: ``hr@10`` (a positive among the first 10) and ``ndcg@10`` (binary gains,
  discount ``1 / log2(rank + 1)``, divided by the ideal DCG of min(10, positives) hits), averaged
  over samples; paired bootstrap 95% intervals over users (:func:`models.evaluate.paired_bootstrap`)
  of model minus popularity, model minus baseline, oracle minus model.

Writes ``rerank_metrics.json`` into the output directory and returns its content.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interest_core.rerank import Item, blend_parts, rerank

CUTOFF = 10
DEFAULT_NEGATIVES = 100
WEIGHTS = tuple(round(i / 20, 2) for i in range(21))  # 0, 0.05, ..., 1
SOURCES = ("model", "baseline", "oracle")
RANKINGS = ("popularity", *SOURCES)


@dataclass
class CandidateLists:
    """Per sample, the candidate list in popularity order (ties by item id)."""

    items: list[list[str]]
    categories: list[list[str]]
    scores: list[list[float]]  # training-period popularity
    relevant: list[np.ndarray]  # bool per candidate: a positive

    def __len__(self) -> int:
        return len(self.items)


def training_popularity(ds, t1: int, click_weight: float, browse_weight: float):
    """(item -> type-weighted count of its events before ``t1``, item -> category). An item's
    category is that of its latest event in the log."""
    pop: dict[str, float] = {}
    category: dict[str, str] = {}
    w = {"click": click_weight, "browse": browse_weight}
    for s in ds.seqs:
        for e in s.events:
            if e.type == "search" or e.item is None:
                continue
            category[e.item] = e.category
            if e.ts < t1:
                pop[e.item] = pop.get(e.item, 0.0) + w[e.type]
    return pop, category


def target_end(seq, i: int, cut_ts: int, dcfg) -> int:
    """The end (exclusive) of a sample's target span, by the rules of :func:`models.data.build_dataset`
    (:func:`build_candidates` checks that the span gives the sample's target)."""
    if dcfg.target == "next_k":
        return i + dcfg.target_k
    if dcfg.target == "next_baskets":  # the events of the next target_k distinct timestamps
        starts = np.flatnonzero(np.r_[True, seq.ts[1:] != seq.ts[:-1]])
        g = int(np.searchsorted(starts, i, side="right")) - 1 + dcfg.target_k
        return int(starts[g]) if g < len(starts) else len(seq.ts)
    return int(np.searchsorted(seq.ts, cut_ts + dcfg.target_window_s * 1000, side="right"))


def build_candidates(ds, samples, dcfg, pop: dict, category: dict, negatives: int) -> CandidateLists:
    """The candidate list of every sample (module doc); checks that each sample's positives carry
    exactly the sample's target distribution."""
    ranked = sorted(pop, key=lambda it: (-pop[it], it))  # training items, most popular first
    out = CandidateLists([], [], [], [])
    for r in range(len(samples)):
        s = ds.seqs[samples.user[r]]
        i = int(samples.cut[r])
        j = target_end(s, i, int(samples.cut_ts[r]), dcfg)
        span = [e for e in s.events[i:j] if e.type != "search" and e.item is not None]
        check = np.zeros(samples.targets.shape[1])
        np.add.at(check, s.cat[i:j], s.weight[i:j])  # weight 0 for searches and unknown categories
        if not np.allclose(check / check.sum(), samples.targets[r], atol=1e-5):
            raise AssertionError(f"sample {r}: target span does not reproduce the sample's target")
        positives = {e.item for e in span}
        seen = {e.item for e in s.events[:i] if e.type != "search"}
        negs: list[str] = []
        for it in ranked:
            if len(negs) == negatives:
                break
            if it not in seen and it not in positives:
                negs.append(it)
        cands = sorted(positives | set(negs), key=lambda it: (-pop.get(it, 0.0), it))
        out.items.append(cands)
        out.categories.append([category[it] for it in cands])
        out.scores.append([pop.get(it, 0.0) for it in cands])
        out.relevant.append(np.array([it in positives for it in cands]))
    return out


def negatives_used(c: CandidateLists) -> tuple[int, float]:
    """(most, mean) negatives of the lists: fewer than asked for when the training period has
    fewer items that the user has not clicked or browsed and that are not positives."""
    n = [len(items) - int(rel.sum()) for items, rel in zip(c.items, c.relevant)]
    return (max(n), float(np.mean(n))) if n else (0, 0.0)


def metrics_at(order: np.ndarray, relevant: np.ndarray) -> tuple[float, float]:
    """(ndcg@10, hr@10) of one ranking: ``order`` = candidate indices best first."""
    top = relevant[order[:CUTOFF]]
    disc = 1.0 / np.log2(np.arange(2, CUTOFF + 2))
    ideal = disc[: min(CUTOFF, int(relevant.sum()))].sum()
    return float((top * disc[: len(top)]).sum() / ideal), float(top.any())


class BlendGrid:
    """The blend's two parts for every candidate of every sample, padded to one (S, M) array, so a
    whole split is ranked at any weight at once. The parts come from
    :func:`interest_core.rerank.blend_parts`; the order rule (blended desc, score desc, position)
    is :func:`interest_core.rerank.rerank`'s, which :func:`served_metrics` runs itself."""

    def __init__(self, cands: CandidateLists, interests: np.ndarray, categories, prior: dict):
        S, M = len(cands), max(len(c) for c in cands.items)
        self.r, self.lift = np.zeros((S, M)), np.zeros((S, M))
        self.score = np.full((S, M), -np.inf)
        self.rel = np.zeros((S, M), bool)
        self.valid = np.zeros((S, M), bool)
        for s in range(S):
            n = len(cands.items[s])
            r, lift, _, _ = blend_parts(dict(zip(categories, interests[s].tolist())), cands.categories[s],
                                        cands.scores[s], prior)
            self.r[s, :n], self.lift[s, :n], self.score[s, :n] = r, lift, cands.scores[s]
            self.rel[s, :n], self.valid[s, :n] = cands.relevant[s], True
        self.ideal = np.array([(1.0 / np.log2(np.arange(2, min(CUTOFF, k) + 2))).sum()
                               for k in self.rel.sum(1)])

    def metrics(self, weight: float) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample (ndcg@10, hr@10) at ``weight``."""
        blended = np.where(self.valid, (1.0 - weight) * self.r + weight * self.lift, -np.inf)
        pos = np.broadcast_to(np.arange(self.r.shape[1]), self.r.shape)
        order = np.lexsort((pos, -self.score, -blended), axis=-1)[:, :CUTOFF]  # last key first
        top = np.take_along_axis(self.rel, order, 1)
        disc = 1.0 / np.log2(np.arange(2, order.shape[1] + 2))
        return (top * disc).sum(1) / self.ideal, top.any(1).astype(np.float64)


def served_metrics(cands: CandidateLists, interests: np.ndarray, categories, prior: dict, weight: float):
    """Per-sample (ndcg@10, hr@10) with the ranking of :func:`interest_core.rerank.rerank` itself."""
    nd, hr = np.zeros(len(cands)), np.zeros(len(cands))
    for s in range(len(cands)):
        items = [Item(i, c, sc) for i, c, sc in zip(cands.items[s], cands.categories[s], cands.scores[s])]
        ranked = rerank(dict(zip(categories, interests[s].tolist())), items, weight, prior=prior)
        index = {it: k for k, it in enumerate(cands.items[s])}
        order = np.array([index[x.item_id] for x in ranked.items])
        nd[s], hr[s] = metrics_at(order, cands.relevant[s])
    return nd, hr


def popularity_metrics(cands: CandidateLists):
    nd, hr = np.zeros(len(cands)), np.zeros(len(cands))
    for s in range(len(cands)):
        nd[s], hr[s] = metrics_at(np.arange(len(cands.items[s])), cands.relevant[s])
    return nd, hr


def choose_weight(grid: BlendGrid) -> tuple[float, dict]:
    """The weight with the best mean validation NDCG@10 (ties: the smaller), and the whole curve."""
    curve = {w: float(grid.metrics(w)[0].mean()) for w in WEIGHTS}
    best = max(WEIGHTS, key=lambda w: (curve[w], -w))
    return best, curve


@dataclass
class RerankInputs:
    """What the four rankings need, for the validation and the test split of a checkpoint."""

    categories: list[str]  # the model's, in output order
    prior: dict[str, float]  # population prior: the mean training target
    interests: dict[str, dict[str, np.ndarray]]  # split -> source -> (S, k)
    candidates: dict[str, CandidateLists]  # split -> lists
    users: dict[str, np.ndarray]  # split -> (S,) user index, for the bootstrap
    best_baseline: str
    validation_kl: dict[str, float]
    model_version: str | None
    sample_counts: dict
    predict_seconds: float  # reading the log, the samples, the baselines (fit on validation) and the model
    baselines_refit_on: int | None = None  # a refit checkpoint's baselines: the samples they were refit on


def rerank_inputs(ckpt_dir, data_path, negatives: int = DEFAULT_NEGATIVES, log=lambda m: None) -> RerankInputs:
    """Load the checkpoint, rebuild its samples from ``data_path``, predict the model's and the
    best baseline's distributions and build the candidate lists (module doc)."""
    import torch

    from models.data import another_log, encode_windows, invalid_summary, prepare, sample_profiles, sample_windows
    from models.item_lift import served
    from models.evaluate import another_log_note, baseline_predictions, check_test_users, refit_samples, time_split
    from models.model import load_checkpoint, predict

    t0 = time.time()
    try:
        model, encoder, card = load_checkpoint(ckpt_dir)
    except FileNotFoundError:
        raise
    except Exception as exc:  # a directory with the right names but not what `train` wrote
        raise ValueError(f"{ckpt_dir}: not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from exc
    torch.set_num_threads(min(2, card.get("training", {}).get("threads", 2)))
    split, dcfg = time_split(card, ckpt_dir)
    ds, _, info = prepare(data_path, dcfg, encoder=encoder, split=split)
    if info["log"]["invalid"]:
        log(f"data: {invalid_summary(info['log'])}")
    val, test = ds.splits["val"], ds.splits["test"]
    if len(test) == 0 or len(val) == 0:
        raise ValueError(f"{data_path}: no validation/test samples under the checkpoint's split")
    check_test_users(test.user, data_path)
    if another_log(card, data_path):
        log(another_log_note(data_path))
    cats = list(encoder.categories)

    # as evaluate does: a refit model's baselines are refit on what it saw
    refit = refit_samples(card, ds, cats, dcfg)
    base = baseline_predictions(ds, dcfg, encoder.k, refit, with_val=True)
    best = base["best"]
    interests = {}
    for name, smp in (("val", val), ("test", test)):
        windows = sample_windows(ds, smp, dcfg)
        seqs = encode_windows(windows, encoder)
        pred = predict(model, seqs, sample_profiles(ds, smp, dcfg, encoder), encoder.pad_id).astype(np.float64)
        interests[name] = {
            "model": served(encoder, pred, windows),
            "baseline": base[name][best],
            "oracle": smp.targets.astype(np.float64),
        }
    t_pred = time.time() - t0
    pop, category = training_popularity(ds, ds.t1, dcfg.click_weight, dcfg.browse_weight)
    cands = {name: build_candidates(ds, smp, dcfg, pop, category, negatives)
             for name, smp in (("val", val), ("test", test))}
    got = negatives_used(cands["test"])
    log(f"candidates: {len(val)} validation and {len(test)} test lists, the positives + up to {got[0]} negatives "
        f"each (--negatives {negatives}; the training period has {len(pop)} items)")
    # the baselines' prior: the same numbers as the card's (float32 apart), the training (or refit) targets' mean
    prior = card.get("category_prior") or dict(zip(cats, base["prior"].tolist()))
    return RerankInputs(cats, prior, interests, cands,
                        {"val": val.user, "test": test.user}, best, base["val_kl"], card.get("model_version"),
                        info["samples"], t_pred,
                        len(refit) if base["params"]["mixture"].get("refit") else None)


def run_rerank_evaluation(ckpt_dir, data_path, out_dir, negatives: int = DEFAULT_NEGATIVES,
                          weight: float | None = None, log=lambda m: None, inputs: RerankInputs | None = None) -> dict:
    """Everything ``interest-stream evaluate-rerank`` does; returns the rerank_metrics.json content.
    ``weight`` fixes the blend weight of every source instead of choosing it on validation;
    ``inputs``: :func:`rerank_inputs` of the same arguments, already computed."""
    from models.data import hashed_log_error
    from models.evaluate import paired_bootstrap

    if error := hashed_log_error(data_path, "evaluate-rerank"):
        raise ValueError(error)
    t0 = time.time()
    inp = inputs if inputs is not None else rerank_inputs(ckpt_dir, data_path, negatives, log)
    cands, cats, prior = inp.candidates, inp.categories, inp.prior
    most, mean = negatives_used(cands["test"])  # the negatives the lists got (rerank_inputs logs them too)
    weights, curves = {}, {}
    for src in SOURCES:
        if weight is None:
            grid = BlendGrid(cands["val"], inp.interests["val"][src], cats, prior)
            weights[src], curves[src] = choose_weight(grid)
        else:
            weights[src] = float(weight)
    per = {"popularity": popularity_metrics(cands["test"])}
    for src in SOURCES:
        per[src] = served_metrics(cands["test"], inp.interests["test"][src], cats, prior, weights[src])

    def ci(a: str, b: str) -> dict:
        out = {}
        for m, idx in (("ndcg@10", 0), ("hr@10", 1)):
            diff = per[a][idx] - per[b][idx]
            out[m] = {"mean": float(diff.mean()), "ci95": paired_bootstrap(diff, inp.users["test"])}
        return out

    result = {
        "split": "test",
        "samples": len(cands["test"]),
        "users": int(len(np.unique(inp.users["test"]))),
        # the negatives the lists got, not the option: asked for more than the training period has,
        # they hold what there is
        "negatives": most,
        "negatives_mean": mean,
        "negatives_requested": negatives,
        "candidates_mean": float(np.mean([len(c) for c in cands["test"].items])),
        "positives_mean": float(np.mean([r.sum() for r in cands["test"].relevant])),
        "rankings": {k: {"ndcg@10": float(per[k][0].mean()), "hr@10": float(per[k][1].mean())} for k in RANKINGS},
        "weights": weights,
        "weight_chosen_on": "validation ndcg@10" if weight is None else "fixed (--weight)",
        "validation_ndcg@10_by_weight": {s: {str(w): round(v, 5) for w, v in c.items()} for s, c in curves.items()},
        "best_baseline": inp.best_baseline,
        "validation_kl": inp.validation_kl,
        "diff": {"model-popularity": ci("model", "popularity"), "model-baseline": ci("model", "baseline"),
                 "oracle-model": ci("oracle", "model")},
        "blend": "blended = (1 - w) * r + w * ln(max(p, 1e-4) / max(q, 1e-4)): r = the score min-max scaled "
                 "over the candidates, p = the interest source's probability of the item's category, q = "
                 "its population prior (interest_core.rerank)",
        "model_version": inp.model_version,
        "data": {"path": str(data_path), "validation_samples": len(cands["val"]), "sample_counts": inp.sample_counts,
                 "baselines_refit_on": inp.baselines_refit_on},
        "seconds": {"data_baselines_and_model": round(inp.predict_seconds, 1), "total": round(time.time() - t0, 1)},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rerank_metrics.json").write_text(json.dumps(result, indent=1))
    return result

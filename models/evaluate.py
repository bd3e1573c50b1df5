"""Evaluation: the model and the six baselines on the held-out test split (CONTRACT.md).

Metrics, per sample then averaged over samples:
* ``kl``: KL(target || prediction) in nats; the prediction is floored at 1e-4 and then
  renormalised to sum to 1 (the floor alone would let a prediction exceed total mass 1);
  terms with target 0 contribute 0;
* ``mse``: mean over the k categories of (prediction - target)^2 (the raw prediction);
* ``top1``: argmax of the prediction equals argmax of the target (first index on ties);
* ``ndcg@3``: the 3 categories ranked highest by the prediction, gains = target probabilities,
  discount 1/log2(rank+1), divided by the same sum for the target's own best 3.
* ``top3``: the target's largest category (the next window's most-clicked one; first index on
  ties) is among the prediction's 3 largest (what a recommender showing 3 interests gets right);
* ``ece``: the calibration error: every (sample, category) pair binned by predicted probability
  (10 equal bins), ``sum_b n_b / N * |mean prediction_b - mean target share_b|``; the curve itself
  is ``calibration`` in metrics.json and ``calibration.png``.
``kl_gain_ci95``: paired bootstrap (2,000 resamples of users with replacement, seed 0) of
mean(best baseline KL - model KL) over the resampled users' samples; the best baseline is the
one with the lowest validation KL. ``gain_ci95`` does the same for every metric (signed so that
positive favours the model), and ``buckets`` repeats everything per user-activity bucket: test
users split into thirds (light, medium, heavy) by their number of events before the test period.
``best_with_item_lift``: the best baseline given an items' lift chosen on its validation
predictions as ``train`` chooses the model's (:func:`baseline_predictions`), its test KL, the
model's ratio to it and the bootstrap interval of the KL gain over it. On simulated logs with
``FILE.truth.jsonl`` beside them, also each model's KL and MSE against the true latent interests
averaged over the target window.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

KL_FLOOR = 1e-4
BOOTSTRAP = 2000


def kl_per_sample(targets: np.ndarray, preds: np.ndarray) -> np.ndarray:
    p = np.maximum(preds, KL_FLOOR)
    p = p / p.sum(1, keepdims=True)
    t = np.asarray(targets, np.float64)
    safe_t = np.where(t > 0, t, 1.0)
    return np.where(t > 0, t * (np.log(safe_t) - np.log(p)), 0.0).sum(1)


def jackknife_kl(targets: np.ndarray, draws: list) -> np.ndarray:
    """(N,) each sample's KL from ``targets`` (N, k) to the mean of its Monte Carlo draws, with the
    bias of a finite average removed to first order. The KL is convex in the prediction, so the
    mean of R noisy draws scores higher, in expectation, than their exact expectation, by about
    c / R; the jackknife ``R KL(all) - (R - 1) mean KL(all but one)`` cancels that term
    (Quenouille 1956). ``draws[i]`` is sample i's (R, k) draws; with one draw, its plain KL."""
    out = np.empty(len(draws))
    for i, q in enumerate(draws):
        m = q.mean(0)
        out[i] = kl_per_sample(targets[i][None], m[None])[0]
        r = len(q)
        if r > 1:
            loo = (r * m - q) / (r - 1)  # (R, k) the mean of all draws but one
            out[i] = r * out[i] - (r - 1) * kl_per_sample(np.broadcast_to(targets[i], q.shape), loo).mean()
    return out


def mse_per_sample(targets, preds) -> np.ndarray:
    return ((np.asarray(preds, np.float64) - targets) ** 2).mean(1)


def top1_per_sample(targets, preds) -> np.ndarray:
    return (np.argmax(preds, 1) == np.argmax(targets, 1)).astype(np.float64)


def ndcg3_per_sample(targets, preds) -> np.ndarray:
    k = min(3, targets.shape[1])
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    rank_p = np.argsort(-np.asarray(preds), axis=1, kind="stable")[:, :k]
    rank_t = -np.sort(-np.asarray(targets), axis=1)[:, :k]
    dcg = (np.take_along_axis(targets, rank_p, 1) * disc).sum(1)
    idcg = (rank_t * disc).sum(1)
    return np.where(idcg > 0, dcg / np.maximum(idcg, 1e-12), 0.0)


def top3_per_sample(targets, preds) -> np.ndarray:
    best = np.argmax(targets, 1)
    top = np.argsort(-np.asarray(preds), axis=1, kind="stable")[:, :3]
    return (top == best[:, None]).any(1).astype(np.float64)


PER_SAMPLE = {"mse": mse_per_sample, "kl": kl_per_sample, "top1": top1_per_sample, "ndcg@3": ndcg3_per_sample,
              "top3": top3_per_sample}
LOWER_IS_BETTER = ("mse", "kl")
CALIBRATION_BINS = 10


def calibration(targets, preds, bins: int = CALIBRATION_BINS) -> dict:
    """Reliability of the predicted probabilities: per equal-width bin of prediction, the mean
    prediction, the mean target share and the count; ``ece`` their count-weighted gap."""
    p, t = np.asarray(preds, np.float64).ravel(), np.asarray(targets, np.float64).ravel()
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    n = np.bincount(idx, minlength=bins).astype(np.float64)
    mp = np.bincount(idx, p, minlength=bins) / np.maximum(n, 1)
    mt = np.bincount(idx, t, minlength=bins) / np.maximum(n, 1)
    return {"ece": float((n / max(n.sum(), 1) * np.abs(mp - mt)).sum()), "count": n.astype(int).tolist(),
            "mean_prediction": mp.round(6).tolist(), "mean_target": mt.round(6).tolist()}


def metrics(targets, preds) -> dict:
    out = {name: float(fn(targets, preds).mean()) for name, fn in PER_SAMPLE.items()}
    out["ece"] = calibration(targets, preds)["ece"]
    return out


def gains(targets, preds, reference, users) -> dict:
    """Per metric: mean of (model - reference), signed so that positive favours the model, with its
    paired bootstrap interval over users."""
    out = {}
    for name, fn in PER_SAMPLE.items():
        d = fn(targets, preds) - fn(targets, reference)
        if name in LOWER_IS_BETTER:
            d = -d
        out[name] = {"mean": float(d.mean()), "ci95": paired_bootstrap(d, users)}
    return out


def activity_buckets(ds, samples) -> tuple[np.ndarray, dict]:
    """(N,) bucket index 0/1/2 (light/medium/heavy) of each sample's user, by the user's events
    before the test period (``ds.t2``), the thirds taken over the users; and the thresholds."""
    users = np.unique(samples.user)
    act = {int(u): int(np.searchsorted(ds.seqs[u].ts, ds.t2, side="left")) for u in users}
    vals = np.array([act[int(u)] for u in users])
    lo, hi = (np.quantile(vals, [1 / 3, 2 / 3]) if len(vals) else (0, 0))
    b = np.array([0 if act[int(u)] <= lo else 1 if act[int(u)] <= hi else 2 for u in samples.user], np.int64)
    return b, {"events_before_test": "light <= %g < medium <= %g < heavy" % (lo, hi)}


BUCKETS = ("light", "medium", "heavy")


def another_log_note(data_path) -> str:
    """The line ``evaluate`` and ``evaluate-rerank`` print when ``data_path`` is not the log the
    checkpoint was trained on (households it never saw, say: a use, not a mistake, so a note)."""
    return (f"note: {data_path} is not the log the checkpoint was trained on (its sha256 differs from the "
            "model card's): its samples are cut at the card's split times")


def check_test_users(users: np.ndarray, data_path) -> None:
    """``evaluate`` and ``evaluate-rerank`` need two test users at least: their intervals resample
    users, and one user's "interval" was a point (``gain CI95 [0.1416, 0.1416]``), printed as one."""
    n = len(np.unique(users))
    if n < 2:
        raise ValueError(f"{data_path}: the test split holds {n} user(s) under the checkpoint's split; the "
                         "intervals resample users, so an evaluation needs two at least")


def paired_bootstrap(diff: np.ndarray, users: np.ndarray, reps: int = BOOTSTRAP, seed: int = 0):
    """95% interval of the mean of ``diff`` when users (with all their samples) are resampled."""
    uniq, inv = np.unique(users, return_inverse=True)
    sums = np.bincount(inv, weights=diff, minlength=len(uniq))
    cnts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    rng = np.random.default_rng(seed)
    stats = np.empty(reps)
    for b in range(reps):
        w = np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq))
        stats[b] = (w * sums).sum() / max((w * cnts).sum(), 1.0)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return [float(lo), float(hi)]


def truth_targets(truth, ds, samples, categories, data_cfg) -> tuple[np.ndarray, np.ndarray]:
    """Mean true interest over each sample's target window (time targets) or at the first truth
    point after the cut; (N, k) aligned to ``categories`` and a mask of samples that have one."""
    out = np.zeros((len(samples), len(categories)))
    ok = np.zeros(len(samples), bool)
    for r in range(len(samples)):
        u = ds.user_ids[samples.user[r]]
        if u not in truth:
            continue
        ts, cats, vals = truth[u]
        col = [cats.index(c) if c in cats else -1 for c in categories]
        if min(col) < 0:
            continue
        t0 = samples.cut_ts[r]
        t_end = t0 + data_cfg.target_window_s * 1000 if data_cfg.target == "time" else t0
        a, b = np.searchsorted(ts, t0, "right"), np.searchsorted(ts, t_end, "right")
        if b <= a:
            b = min(a + 1, len(ts))
        if a >= len(ts):
            continue
        v = vals[a:b][:, col].mean(0)
        out[r], ok[r] = v / v.sum(), True
    return out, ok


def hindsight_counts(ds, samples, cfg, k: int, spans: int) -> np.ndarray:
    """(N, k) type-weighted category counts of what each sample's user did in the ``spans``
    targets right AFTER the sample's own (:func:`models.data.target_span` again from its end: the
    next ``target_k`` events or baskets, or the next target window, ``spans`` times). Hindsight
    that no model of the past has: ``bench/hindsight.py`` adds it to a counter to show how much
    knowing the user's future would be worth. A span cut off by the end of the log counts what
    the log holds; none past it."""
    from models.data import basket_index, target_span

    out = np.zeros((len(samples), k))
    never = np.iinfo(np.int64).max // 2  # no end of the log: a time span past it counts what is there
    baskets_of: dict[int, tuple] = {}  # user -> basket_index, once per user
    for r in range(len(samples)):
        u = int(samples.user[r])
        s = ds.seqs[u]
        n = len(s.ts)
        if cfg.target == "next_baskets" and u not in baskets_of:
            baskets_of[u] = basket_index(s.ts)
        baskets = baskets_of.get(u)
        a, end = target_span(s.ts, int(samples.cut[r]), int(samples.cut_ts[r]), cfg, never, baskets)
        for _ in range(spans):
            if a >= n:
                break
            span = target_span(s.ts, a, end, cfg, never, baskets)
            b, end = span if span is not None else (n, end)
            w, c = s.weight[a:b], s.cat[a:b]
            np.add.at(out[r], c[w > 0], w[w > 0])
            a = b
    return out


class TestRun(NamedTuple):
    """A checkpoint's test split as ``evaluate`` scores it."""

    ds: object  # models.data.Dataset rebuilt from the card's split
    dcfg: object  # its models.data.DataConfig
    info: dict  # what models.data.prepare reported
    base: dict  # baseline_predictions
    pred: np.ndarray  # (N, k) the model's test predictions
    model: object
    encoder: object
    card: dict


def time_split(card: dict, ckpt_dir) -> tuple[dict, object]:
    """``(split, DataConfig)`` of the card's time split, which evaluate and evaluate-rerank rebuild
    their samples from; ValueError when the card has none or it is not what ``train`` writes."""
    from models.data import DataConfig

    split = card.get("split")
    if not isinstance(split, dict) or split.get("by") != "time":
        raise ValueError(f"{ckpt_dir}: the checkpoint's card has no time split (not written by `train`)")
    bad = f"{ckpt_dir}: model_card.json: split must be the time split `train` records (by, t1, t2, data_config)"
    if not isinstance(split.get("data_config"), dict) or not all(
            isinstance(split.get(t), int) and not isinstance(split.get(t), bool) for t in ("t1", "t2")):
        raise ValueError(f"{bad}, got {json.dumps(split)[:60]}")
    try:
        return split, DataConfig.from_dict(split["data_config"])
    except TypeError as exc:  # a string for a number: it compares with nothing
        raise ValueError(f"{bad}: {exc}") from None


def held_out_predictions(ckpt_dir, data_path, split: dict | None = None) -> TestRun:
    """The checkpoint's split rebuilt from its card (or ``split``, another card's, so that several
    checkpoints score the very same samples: bench/sim_scale.py), the baselines fit on it (and refit
    on the training and validation periods when the model was, ``TrainConfig.refit``), and the
    model's predictions for the test samples (``evaluate``, and bench/live_eval.py against the
    worker)."""
    import torch

    from models.data import encode_windows, prepare, sample_profiles
    from models.item_lift import served
    from models.model import load_checkpoint, predict

    try:
        model, encoder, card = load_checkpoint(ckpt_dir)
    except FileNotFoundError:
        raise
    except Exception as exc:  # a directory with the right names but not what `train` wrote (as rerank_eval says)
        raise ValueError(f"{ckpt_dir}: not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from exc
    torch.set_num_threads(card.get("training", {}).get("threads", 2))
    split, dcfg = time_split(card if split is None else {"split": split}, ckpt_dir)
    ds, _, info = prepare(data_path, dcfg, encoder=encoder, split=split)
    refit = refit_dataset(card, ds, encoder.categories, dcfg)
    base = baseline_predictions(ds, dcfg, encoder.k, None if refit is None else refit.splits["train"],
                                categories=encoder.categories, refit_ds=refit)
    test = ds.splits["test"]
    test_seqs = encode_windows(base["test_windows"], encoder)
    test_prof = sample_profiles(ds, test, dcfg, encoder)
    pred = predict(model, test_seqs, test_prof, encoder.pad_id).astype(np.float64)
    pred = served(encoder, pred, base["test_windows"])  # the items' lift, as the worker adds it
    return TestRun(ds, dcfg, info, base, pred, model, encoder, card)


def run_evaluation(ckpt_dir, data_path, out_dir, plots: bool = True, progress: bool = True) -> dict:
    """Everything ``interest-stream evaluate`` does; returns the metrics.json content."""
    from models.data import another_log, hashed_log_error

    if error := hashed_log_error(data_path, "evaluate"):
        raise ValueError(error)
    ds, dcfg, info, base, pred, model, encoder, card = held_out_predictions(ckpt_dir, data_path)
    test = ds.splits["test"]
    check_test_users(test.user, data_path)
    result = report(ds, base, pred, info, {"correction": model.config.correction, "readout": model.config.readout,
                                           "selection": card.get("metrics", {}).get("selection")})
    result["another_log"] = another_log(card, data_path)  # --data is not the log it was trained on
    truth_path = Path(f"{data_path}.truth.jsonl")
    if truth_path.exists():
        from models.simulate import read_truth

        preds = {**base["test"], "gpt2": pred}
        tt, ok = truth_targets(read_truth(truth_path), ds, test, encoder.categories, dcfg)
        if ok.any():
            result["truth"] = {"samples": int(ok.sum()), "models": {
                n: {"kl": float(kl_per_sample(tt[ok], preds[n][ok]).mean()),
                    "mse": float(mse_per_sample(tt[ok], preds[n][ok]).mean())} for n in result["models"]}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    if plots:
        best = result["best_baseline"]
        plot_training(card.get("history", []), out / "training_curves.png")
        plot_users(ds, test, {**base["test"], "gpt2": pred}, encoder.categories, best, out / "users.png")
        plot_calibration(result["calibration"], out / "calibration.png")
        plot_buckets(result, best, out / "buckets.png")
    return result


def refit_samples(card: dict, ds, categories, dcfg):
    """The training samples of a checkpoint that was refit on the training and validation periods
    (``TrainConfig.refit``; the card's ``metrics.selection.refit``), so that the baselines it is
    compared with can be refit on them too; None for a checkpoint that was not."""
    joined = refit_dataset(card, ds, categories, dcfg)
    return None if joined is None else joined.splits["train"]


def refit_dataset(card: dict, ds, categories, dcfg):
    """The dataset a refit checkpoint was trained on (:func:`models.data.joined_dataset`), None for one that was not."""
    if not (card.get("metrics", {}).get("selection") or {}).get("refit"):
        return None
    from models.data import joined_dataset

    return joined_dataset(ds, categories, dcfg)


def baseline_predictions(ds, dcfg, k: int, refit_on=None, with_val: bool = False, categories=None,
                         refit_ds=None) -> dict:
    """The baselines fit (training, validation) and their test predictions: ``{"test": {name:
    (N, k)}, "val_kl", "best" (lowest validation KL), "params", "prior", "test_windows"}``, and with
    ``with_val`` their validation predictions (``"val"``, as they are returned). With ``refit_on``
    (a refit model's training samples, :func:`refit_samples`) their prior and mixture are then refit
    on them (:meth:`models.baselines.Baselines.refit`); validation figures and the best are the fit's.

    With ``categories``, the best baseline is also given an items' lift as ``train`` gives the
    model one (:func:`models.train.item_lift_choice` on the best's validation predictions, fit on
    training; its table fit again on ``refit_ds``, the refit's dataset, when there is one):
    ``"item_lift"`` (the choice) and ``"test_with_item_lift"`` (the best's test predictions with
    it, or without when validation left it out). A model's lift is a counter of what follows each
    item, which a counter can have too."""
    from models.baselines import NAMES, Baselines
    from models.data import sample_windows

    val, test = ds.splits["val"], ds.splits["test"]
    if len(test) == 0 or len(val) == 0:
        raise ValueError("no validation/test samples under the checkpoint's split")
    base = Baselines(ds, k)
    params = base.fit(val, kl_per_sample)
    test_windows, val_windows = sample_windows(ds, test, dcfg), sample_windows(ds, val, dcfg)
    val_pred = base.predict(val, val_windows)
    val_kl = {n: float(kl_per_sample(val.targets, p).mean()) for n, p in val_pred.items()}
    best = min(NAMES, key=lambda n: val_kl[n])
    best_val = val_pred[best]  # the fit's, to choose a lift on: a refit has seen that period
    if refit_on is not None:
        params = base.refit(refit_on)
        if with_val:
            val_pred = base.predict(val, val_windows)
    out = {"test": base.predict(test, test_windows), "val_kl": val_kl, "best": best,
           "params": params, "prior": base.prior, "test_windows": test_windows}
    if categories is not None:
        from models.item_lift import apply, window_lifts
        from models.train import item_lift_choice

        record, lift = item_lift_choice(ds, dcfg, categories, best_val, refit_ds)
        out["item_lift"] = record
        out["test_with_item_lift"] = (out["test"][best] if lift is None
                                      else apply(out["test"][best], window_lifts(lift, test_windows)))
    return {**out, "val": val_pred} if with_val else out


def report(ds, base: dict, pred: np.ndarray, info: dict, model_info: dict) -> dict:
    """metrics.json (CONTRACT "Model artifacts", plus the fields of the module doc) for the model's
    test predictions ``pred`` against the baselines of :func:`baseline_predictions`."""
    from models.baselines import NAMES

    test, best = ds.splits["test"], base["best"]
    preds = {"gpt2": pred, **base["test"]}
    order = ["gpt2", *NAMES]
    result = {
        "split": "test",
        "samples": int(len(test)),
        "models": {n: metrics(test.targets, preds[n]) for n in order},
        "best_baseline": best,
    }
    diff = kl_per_sample(test.targets, preds[best]) - kl_per_sample(test.targets, pred)
    result["kl_gain_ci95"] = paired_bootstrap(diff, test.user)
    result["kl_gain"] = float(diff.mean())
    result["kl_ratio"] = result["models"]["gpt2"]["kl"] / result["models"][best]["kl"]
    result["gain_ci95"] = gains(test.targets, pred, preds[best], test.user)
    result["users"] = int(len(np.unique(test.user)))
    result["model"] = model_info
    result["calibration"] = {n: calibration(test.targets, preds[n]) for n in ("gpt2", best)}
    bucket, thresholds = activity_buckets(ds, test)
    result["buckets"] = {"rule": thresholds}
    for b, name in enumerate(BUCKETS):
        m = bucket == b
        if not m.any():
            continue
        t, u = test.targets[m], test.user[m]
        result["buckets"][name] = {
            "users": int(len(np.unique(u))), "samples": int(m.sum()),
            "models": {n: metrics(t, preds[n][m]) for n in order},
            "kl_ratio": float(kl_per_sample(t, pred[m]).mean() / kl_per_sample(t, preds[best][m]).mean()),
            "gain_ci95": gains(t, pred[m], preds[best][m], u),
        }
    if "test_with_item_lift" in base:  # the best baseline given an items' lift, as the model is
        lifted = kl_per_sample(test.targets, base["test_with_item_lift"])
        d = lifted - kl_per_sample(test.targets, pred)
        result["best_with_item_lift"] = {
            "baseline": best, "item_lift": base["item_lift"], "kl": float(lifted.mean()),
            "kl_ratio": result["models"]["gpt2"]["kl"] / float(lifted.mean()), "kl_gain": float(d.mean()),
            "kl_gain_ci95": paired_bootstrap(d, test.user)}
    result["validation_kl"] = base["val_kl"]
    result["baseline_params"] = base["params"]
    result["sample_counts"] = info["samples"]
    result["log"] = info["log"]  # the log's lines, events and users, and what was skipped (models.data.read_log)
    result["split_times"] = {"t1": ds.t1, "t2": ds.t2}
    return result


def plot_calibration(curves: dict, path) -> None:
    """Reliability diagram: mean target share against mean prediction per bin, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for name, c in curves.items():
        keep = [i for i, n in enumerate(c["count"]) if n > 0]
        ax.plot([c["mean_prediction"][i] for i in keep], [c["mean_target"][i] for i in keep], "o-",
                label=f"{name} (ECE {c['ece']:.4f})")
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("target share (bin mean)")
    ax.set_title("calibration, test split")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_buckets(result: dict, best: str, path) -> None:
    """KL and top-3 hit rate per user-activity bucket: the model, the best baseline, ema_prior."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(["gpt2", best, "ema_prior"]))
    present = [b for b in BUCKETS if b in result["buckets"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    x = np.arange(len(present))
    for ax, metric in zip(axes, ("kl", "top3")):
        for j, n in enumerate(names):
            ax.bar(x + (j - 1) * 0.27, [result["buckets"][b]["models"][n][metric] for b in present], 0.27, label=n)
        ax.set_xticks(x, [f"{b}\n({result['buckets'][b]['users']} users)" for b in present])
        ax.set_title({"kl": "KL (lower is better)", "top3": "top-3 hit rate (higher is better)"}[metric])
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training(history: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    if history:
        steps = [h["step"] for h in history]
        ax[0].plot(steps, [h["train_loss"] for h in history], label="train loss")
        ax[0].plot(steps, [h["val_loss"] for h in history], label="validation loss")
        ax[1].plot(steps, [h["val_kl"] for h in history], label="validation KL", color="C2")
    for a in ax:
        a.set_xlabel("step")
        a.legend()
    ax[0].set_title("loss")
    ax[1].set_title("validation KL (nats)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_users(ds, test, preds, categories, best: str, path, n_users: int = 3) -> None:
    """Predicted (model, best baseline) vs actual interest in the user's top categories over
    the test period, for the test users with the most samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    uniq, cnt = np.unique(test.user, return_counts=True)
    users = uniq[np.argsort(-cnt, kind="stable")][:n_users]
    # categories and user ids are free text: "$0 to $9" was read as mathtext, a ParseSyntaxException
    with matplotlib.rc_context({"text.parse_math": False}):
        fig, axes = plt.subplots(len(users), 1, figsize=(10, 3 * max(1, len(users))), squeeze=False)
        for ax, u in zip(axes[:, 0], users):
            rows = np.flatnonzero(test.user == u)
            rows = rows[np.argsort(test.cut_ts[rows], kind="stable")]
            x = np.arange(len(rows))
            top = np.argsort(-test.targets[rows].sum(0))[:3]
            for j, c in enumerate(top):
                ax.plot(x, test.targets[rows, c], "o", ms=3, color=f"C{j}", alpha=0.5, label=f"{categories[c]} actual")
                ax.plot(x, preds["gpt2"][rows, c], "-", color=f"C{j}", label=f"{categories[c]} gpt2")
                ax.plot(x, preds[best][rows, c], ":", color=f"C{j}", label=f"{categories[c]} {best}")
            ax.set_title(f"user {ds.user_ids[u]}: interest over test cuts (time order)")
            ax.set_ylim(0, 1)
            ax.set_xlabel("test sample (cut) in time order")
            ax.legend(fontsize=6, ncol=3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)

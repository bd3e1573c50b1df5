"""Evaluation: the model and the five baselines on the held-out test split (CONTRACT.md).

Metrics, per sample then averaged over samples:
* ``kl``: KL(target || prediction) in nats; the prediction is floored at 1e-4 and then
  renormalised to sum to 1 (the floor alone would let a prediction exceed total mass 1);
  terms with target 0 contribute 0;
* ``mse``: mean over the k categories of (prediction - target)^2 (the raw prediction);
* ``top1``: argmax of the prediction equals argmax of the target (first index on ties);
* ``ndcg@3``: the 3 categories ranked highest by the prediction, gains = target probabilities,
  discount 1/log2(rank+1), divided by the same sum for the target's own best 3.
``kl_gain_ci95``: paired bootstrap (2,000 resamples of users with replacement, seed 0) of
mean(best baseline KL - model KL) over the resampled users' samples; the best baseline is the
one with the lowest validation KL. On simulated logs with ``FILE.truth.jsonl`` beside them, also
each model's KL and MSE against the true latent interests averaged over the target window.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

KL_FLOOR = 1e-4
BOOTSTRAP = 2000


def kl_per_sample(targets: np.ndarray, preds: np.ndarray) -> np.ndarray:
    p = np.maximum(preds, KL_FLOOR)
    p = p / p.sum(1, keepdims=True)
    t = np.asarray(targets, np.float64)
    safe_t = np.where(t > 0, t, 1.0)
    return np.where(t > 0, t * (np.log(safe_t) - np.log(p)), 0.0).sum(1)


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


def metrics(targets, preds) -> dict:
    return {
        "mse": float(mse_per_sample(targets, preds).mean()),
        "kl": float(kl_per_sample(targets, preds).mean()),
        "top1": float(top1_per_sample(targets, preds).mean()),
        "ndcg@3": float(ndcg3_per_sample(targets, preds).mean()),
    }


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


def run_evaluation(ckpt_dir, data_path, out_dir, plots: bool = True, progress: bool = True) -> dict:
    """Everything ``interest-stream evaluate`` does; returns the metrics.json content."""
    import torch

    from models.baselines import NAMES, Baselines
    from models.data import DataConfig, prepare, sample_profiles, sample_windows
    from models.model import load_checkpoint, predict

    model, encoder, card = load_checkpoint(ckpt_dir)
    torch.set_num_threads(card.get("training", {}).get("threads", 2))
    split = card["split"]
    dcfg = DataConfig.from_dict(split["data_config"])
    ds, _, info = prepare(data_path, dcfg, encoder=encoder, split=split)
    val, test = ds.splits["val"], ds.splits["test"]
    if len(test) == 0 or len(val) == 0:
        raise ValueError(f"{data_path}: no validation/test samples under the checkpoint's split")
    base = Baselines(ds, encoder.k)
    params = base.fit(val, kl_per_sample)
    preds = {}
    val_windows, test_windows = sample_windows(ds, val, dcfg), sample_windows(ds, test, dcfg)
    val_base = base.predict(val, val_windows)
    val_kl = {n: float(kl_per_sample(val.targets, p).mean()) for n, p in val_base.items()}
    best = min(NAMES, key=lambda n: val_kl[n])
    preds.update(base.predict(test, test_windows))
    test_seqs = [np.asarray(encoder.encode(w), np.int32) for w in test_windows]
    test_prof = sample_profiles(ds, test, dcfg, encoder)
    preds["gpt2"] = predict(model, test_seqs, test_prof, encoder.pad_id).astype(np.float64)

    order = ["gpt2", *NAMES]
    result = {
        "split": "test",
        "samples": int(len(test)),
        "models": {n: metrics(test.targets, preds[n]) for n in order},
        "best_baseline": best,
    }
    diff = kl_per_sample(test.targets, preds[best]) - kl_per_sample(test.targets, preds["gpt2"])
    result["kl_gain_ci95"] = paired_bootstrap(diff, test.user)
    result["kl_gain"] = float(diff.mean())
    result["users"] = int(len(np.unique(test.user)))
    result["validation_kl"] = val_kl
    result["baseline_params"] = params
    result["sample_counts"] = info["samples"]
    result["split_times"] = {"t1": ds.t1, "t2": ds.t2}

    truth_path = Path(f"{data_path}.truth.jsonl")
    if truth_path.exists():
        from models.simulate import read_truth

        tt, ok = truth_targets(read_truth(truth_path), ds, test, encoder.categories, dcfg)
        if ok.any():
            result["truth"] = {"samples": int(ok.sum()), "models": {
                n: {"kl": float(kl_per_sample(tt[ok], preds[n][ok]).mean()),
                    "mse": float(mse_per_sample(tt[ok], preds[n][ok]).mean())} for n in order}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    if plots:
        plot_training(card.get("history", []), out / "training_curves.png")
        plot_users(ds, test, preds, encoder.categories, best, out / "users.png")
    return result


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

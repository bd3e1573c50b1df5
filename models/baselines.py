"""Six baselines the model must beat, all from the same samples (:mod:`models.data`).

* ``prior``: the population distribution, the mean of the training targets.
* ``last_window``: the category distribution of the input window the model reads (type-weighted
  like the targets); the prior when the window holds no categorised event.
* ``user_mean``: the distribution of the user's WHOLE history before the cut (not only the
  window: the baselines may know more than the worker does); the prior when empty.
* ``ema``: the history with exponentially decaying weights, ``0.5 ** (age / half_life)``, age in
  time or in events (both kinds of half-life on the grid below); the prior when empty.
* ``ema_prior``: the decayed counts shrunk toward the population prior,
  ``(counts + beta * prior) / (sum(counts) + beta)``.
* ``mixture``: a learned multi-scale mixture of decayed counters,
  ``(sum_h w_h(n) * counts_h + beta(n) * prior) / total``, over :data:`MIXTURE_HALF_LIVES` (time
  and event half-lives), whose non-negative weights depend on the user's history length ``n``
  (categorised events before the cut, in :data:`LENGTH_BUCKETS`): a counter that knows that a
  new user should lean on the prior and a long-time one on their long-run counts. The weights are
  fit on training samples by KL (full-batch Adam); whether they depend on the history length is
  chosen on validation.
Every other parameter (half-life, its kind, beta) is chosen on the validation split by KL.

Not a baseline but a yardstick: :func:`counter_tuned_on_samples` is ``ema_prior`` tuned on the very
samples it predicts, what a check finds that tunes such a counter on its own test data
(``bench/live_eval.py``).
"""
from __future__ import annotations

import numpy as np

from models.data import Dataset, Samples, seconds_to_ms

HOUR = 3600
# (kind, half-life): time half-lives in seconds, event half-lives in events; inf = no decay
HALF_LIVES = (
    [("time", s) for s in (600, HOUR, 6 * HOUR, 24 * HOUR, 3 * 24 * HOUR, 7 * 24 * HOUR,
                           30 * 24 * HOUR, 365 * 24 * HOUR)]
    + [("events", n) for n in (2, 5, 10, 20, 50, 100, 300)]
    + [("time", float("inf"))]
)
BETAS = (0.03, 0.1, 0.3, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
NAMES = ("prior", "last_window", "user_mean", "ema", "ema_prior", "mixture")
MIXTURE_HALF_LIVES = ([("time", s) for s in (HOUR, 6 * HOUR, 24 * HOUR, 3 * 24 * HOUR, 7 * 24 * HOUR,
                                               30 * 24 * HOUR, 365 * 24 * HOUR)]
                      + [("events", n) for n in (5, 20, 100)])
LENGTH_BUCKETS = (1, 4, 16, 64, 256)  # history lengths: 0, 1-3, 4-15, 16-63, 64-255, 256+
# counter_tuned_on_samples's grid, finer than validation's: 5 minutes to 2 years, 1 to 500 events
TUNED_HALF_LIVES = ([("time", float(s)) for s in np.geomspace(300, 2 * 365 * 24 * HOUR, 25)]
                    + [("events", n) for n in (1, 1.5, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500)]
                    + [("time", float("inf"))])
TUNED_BETAS = tuple(float(b) for b in np.geomspace(0.01, 512, 48))
TUNED_FOLDS = 5  # counter_tuned_on_samples's cross-validation: folds of users
MIXTURE_FIT_SAMPLES = 30_000  # training samples the mixture is fit on (seeded subset)
MIXTURE_STEPS = 400  # full-batch Adam steps (a dozen weights per bucket converge well before)


def decayed_counts(ds: Dataset, samples: Samples, k: int, kind: str, half_life: float) -> np.ndarray:
    """(N, k) type-weighted category counts of each sample's history before the cut, decayed."""
    out = np.zeros((len(samples), k), np.float64)
    order = np.argsort(samples.user, kind="stable")
    users = samples.user[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    eye = np.eye(k)
    for a, b in zip(starts, ends):
        rows = order[a:b]
        s = ds.seqs[users[a]]
        keep = s.weight > 0
        if not keep.any():
            continue
        onehot = eye[s.cat[keep]] * s.weight[keep, None]  # (n, k)
        ts, idx = s.ts[keep], np.flatnonzero(keep)
        for c0 in range(0, len(rows), 256):
            r = rows[c0 : c0 + 256]
            cut = samples.cut[r]
            before = idx[None, :] < cut[:, None]  # (m, n) history strictly before the cut
            if np.isinf(half_life):
                w = before.astype(np.float64)
            elif kind == "time":
                age = (samples.cut_ts[r][:, None] - ts[None, :]) / seconds_to_ms(half_life)
                w = np.where(before, np.exp2(-np.maximum(age, 0.0)), 0.0)
            else:
                # events between this one and the cut (all event types count as steps)
                age = (cut[:, None] - 1 - idx[None, :]) / half_life
                w = np.where(before, np.exp2(-np.maximum(age, 0.0)), 0.0)
            out[r] = w @ onehot
    return out


def window_counts(ds: Dataset, samples: Samples, k: int, windows) -> np.ndarray:
    """(N, k) type-weighted counts of the input windows (lists of WindowEvent)."""
    out = np.zeros((len(samples), k), np.float64)
    for r, (ui, win) in enumerate(zip(samples.user, windows)):
        s = ds.seqs[ui]
        n = len(win)
        i = samples.cut[r]
        cat, w = s.cat[i - n : i], s.weight[i - n : i]  # the window is the last n events before the cut
        m = w > 0
        np.add.at(out[r], cat[m], w[m])
    return out


def normalise(counts: np.ndarray, prior: np.ndarray) -> np.ndarray:
    tot = counts.sum(1, keepdims=True)
    return np.where(tot > 0, counts / np.maximum(tot, 1e-12), prior[None, :])


def shrink(counts: np.ndarray, prior: np.ndarray, beta: float) -> np.ndarray:
    return (counts + beta * prior[None, :]) / (counts.sum(1, keepdims=True) + beta)


def best_shrink(counts: np.ndarray, targets: np.ndarray, priors: dict[str, np.ndarray], betas, kl_fn):
    """``(mean KL, prior's name, beta)`` of the lowest mean KL of ``shrink(counts, prior, beta)`` to
    ``targets`` over ``priors`` and ``betas``, the first in that order on a tie: ``ema_prior``'s
    search at one half-life (:meth:`Baselines.fit`, :func:`counter_tuned_on_samples`)."""
    best = (np.inf, "", 0.0)
    for name, pr in priors.items():
        for beta in betas:
            kl = float(kl_fn(targets, shrink(counts, pr, beta)).mean())
            if kl < best[0]:
                best = (kl, name, beta)
    return best


def counter_tuned_on_samples(ds: Dataset, samples: Samples, k: int, prior: np.ndarray, kl_fn,
                             folds: int = TUNED_FOLDS, seed: int = 0) -> dict:
    """``ema_prior`` tuned on the test samples themselves, over a finer grid than validation's: the
    half-life (either kind), beta, and prior (``prior``, or the mean of the samples' own targets).

    * ``in_sample``: the (N, k) predictions of the grid point of lowest mean KL on all the samples,
      which it then predicts: an optimistic yardstick (``params`` says what it chose).
    * ``cross_validated``: the users in ``folds`` seeded folds; each fold predicted by the grid
      point, and the targets' mean, of the other folds: what a counter tuned on the test period
      does for users it was not tuned on.
    """
    users = np.unique(samples.user)
    folds = min(folds, len(users))
    if folds < 2:
        raise ValueError(f"counter_tuned_on_samples cross-validates over users: {len(users)} user(s) is not enough")
    counts = [decayed_counts(ds, samples, k, kind, hl) for kind, hl in TUNED_HALF_LIVES]
    fold = (np.random.default_rng(seed).permutation(len(users)) % folds)[np.searchsorted(users, samples.user)]

    def priors(rows: np.ndarray) -> dict[str, np.ndarray]:
        own = samples.targets[rows].mean(0).astype(np.float64)
        return {"given": np.asarray(prior, np.float64), "these samples": own / own.sum()}

    def tune(rows: np.ndarray) -> tuple[float, int, str, float]:
        best, targets, pr = (np.inf, 0, "", 0.0), samples.targets[rows], priors(rows)
        for h, c in enumerate(counts):
            kl, name, beta = best_shrink(c[rows], targets, pr, TUNED_BETAS, kl_fn)
            if kl < best[0]:
                best = (kl, h, name, beta)
        return best

    everyone = np.arange(len(samples))
    kl, h, name, beta = tune(everyone)
    in_sample = shrink(counts[h], priors(everyone)[name], beta)
    cross = np.zeros_like(in_sample)
    for f in range(folds):
        rest, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        _, hf, nf, bf = tune(rest)
        cross[held] = shrink(counts[hf][held], priors(rest)[nf], bf)
    kind, half_life = TUNED_HALF_LIVES[h]
    return {"in_sample": in_sample, "cross_validated": cross,
            "params": {"kind": kind, "half_life": half_life, "beta": round(beta, 4), "prior": name,
                       "kl": round(kl, 4), "folds": folds}}


def history_lengths(ds: Dataset, samples: Samples) -> np.ndarray:
    """(N,) categorised events of each sample's user before its cut."""
    out = np.zeros(len(samples), np.int64)
    for r, (ui, i) in enumerate(zip(samples.user, samples.cut)):
        out[r] = int((ds.seqs[ui].weight[:i] > 0).sum())
    return out


def mixture_features(ds: Dataset, samples: Samples, k: int) -> np.ndarray:
    """(N, H, k) decayed counts at every half-life of :data:`MIXTURE_HALF_LIVES`."""
    return np.stack([decayed_counts(ds, samples, k, kind, hl) for kind, hl in MIXTURE_HALF_LIVES], axis=1)


def fit_mixture(feats: np.ndarray, buckets: np.ndarray, targets: np.ndarray, prior: np.ndarray,
                n_buckets: int, seed: int = 0) -> np.ndarray:
    """Log-weights (n_buckets, H + 1) (the last column is the prior's) minimising mean KL of
    :func:`mixture_predict` on the given samples."""
    import torch

    torch.manual_seed(seed)
    f = torch.as_tensor(feats, dtype=torch.float32)
    b = torch.as_tensor(buckets, dtype=torch.long)
    t = torch.as_tensor(targets, dtype=torch.float32)
    pr = torch.as_tensor(prior, dtype=torch.float32)
    logw = torch.zeros(n_buckets, f.shape[1] + 1, requires_grad=True)
    opt = torch.optim.Adam([logw], lr=0.1)
    tlogt = (t * torch.log(t.clamp_min(1e-12))).sum(-1)
    for _ in range(MIXTURE_STEPS):
        w = torch.exp(logw)[b]  # (N, H + 1)
        mix = (w[:, :-1, None] * f).sum(1) + w[:, -1:] * pr  # (N, k)
        p = mix / mix.sum(-1, keepdim=True)
        loss = (tlogt - (t * torch.log(p.clamp_min(1e-8))).sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return logw.detach().numpy().astype(np.float64)


def mixture_predict(feats: np.ndarray, buckets: np.ndarray, logw: np.ndarray, prior: np.ndarray) -> np.ndarray:
    w = np.exp(logw)[buckets]  # (N, H + 1)
    mix = (w[:, :-1, None] * feats).sum(1) + w[:, -1:] * prior[None, :]
    return mix / mix.sum(1, keepdims=True)


def _fit_subset(samples: Samples) -> Samples:
    """At most :data:`MIXTURE_FIT_SAMPLES` of ``samples`` (seeded), in order."""
    if len(samples) <= MIXTURE_FIT_SAMPLES:
        return samples
    return samples.take(np.sort(np.random.default_rng(0).choice(len(samples), MIXTURE_FIT_SAMPLES, replace=False)))


class Baselines:
    """Fit on train (prior, mixture) and validation (parameters), then predict any split."""

    def __init__(self, ds: Dataset, k: int):
        self.ds, self.k = ds, k
        self.prior = ds.splits["train"].targets.mean(0).astype(np.float64)
        self.prior /= self.prior.sum()
        self.params: dict = {}

    def fit(self, val: Samples, kl_fn) -> dict:
        """Choose ema's half-life and ema_prior's (half-life, beta) by validation KL."""
        best_ema, best_ep = (np.inf, None), (np.inf, None)
        for kind, hl in HALF_LIVES:
            c = decayed_counts(self.ds, val, self.k, kind, hl)
            kl = kl_fn(val.targets, normalise(c, self.prior)).mean()
            if kl < best_ema[0]:
                best_ema = (kl, {"kind": kind, "half_life": hl})
            kl, _, beta = best_shrink(c, val.targets, {"prior": self.prior}, BETAS, kl_fn)
            if kl < best_ep[0]:
                best_ep = (kl, {"kind": kind, "half_life": hl, "beta": beta})
        self.params = {"ema": best_ema[1], "ema_prior": best_ep[1], "mixture": self._fit_mixture(val, kl_fn)}
        return self.params

    def refit(self, samples: Samples) -> dict:
        """After :meth:`fit`: the prior and the mixture's weights again from ``samples`` (the training
        and validation periods, :func:`models.data.joined_dataset`), with every choice made on validation
        kept (half-lives, betas, weights per history length or not): the baselines of a model that
        was refit (``TrainConfig.refit``) see the data it saw."""
        self.prior = samples.targets.mean(0).astype(np.float64)
        self.prior /= self.prior.sum()
        mx = self.params["mixture"]
        tr = _fit_subset(samples)
        nb = len(LENGTH_BUCKETS) + 1 if mx["per_length"] else 1
        b = np.searchsorted(LENGTH_BUCKETS, history_lengths(self.ds, tr), side="right") if mx["per_length"] \
            else np.zeros(len(tr), np.int64)
        logw = fit_mixture(mixture_features(self.ds, tr, self.k), b, tr.targets, self.prior, nb)
        self.params["mixture"] = {**mx, "log_weights": logw.round(4).tolist(), "fit_samples": len(tr), "refit": True}
        return self.params

    def _fit_mixture(self, val: Samples, kl_fn) -> dict:
        tr = _fit_subset(self.ds.splits["train"])
        f_tr, f_va = mixture_features(self.ds, tr, self.k), mixture_features(self.ds, val, self.k)
        b_tr = np.searchsorted(LENGTH_BUCKETS, history_lengths(self.ds, tr), side="right")
        b_va = np.searchsorted(LENGTH_BUCKETS, history_lengths(self.ds, val), side="right")
        best = None
        for per_length in (False, True):  # chosen on validation
            nb = len(LENGTH_BUCKETS) + 1 if per_length else 1
            bt, bv = (b_tr, b_va) if per_length else (np.zeros_like(b_tr), np.zeros_like(b_va))
            logw = fit_mixture(f_tr, bt, tr.targets, self.prior, nb)
            kl = float(kl_fn(val.targets, mixture_predict(f_va, bv, logw, self.prior)).mean())
            if best is None or kl < best["val_kl"]:
                best = {"per_length": per_length, "val_kl": kl, "log_weights": logw.round(4).tolist(),
                        "half_lives": [[kind, hl] for kind, hl in MIXTURE_HALF_LIVES], "fit_samples": len(tr)}
        return best

    def predict(self, samples: Samples, windows) -> dict[str, np.ndarray]:
        n = len(samples)
        ema, ep = self.params["ema"], self.params["ema_prior"]
        c_ema = decayed_counts(self.ds, samples, self.k, ema["kind"], ema["half_life"])
        c_ep = c_ema if (ep["kind"], ep["half_life"]) == (ema["kind"], ema["half_life"]) else \
            decayed_counts(self.ds, samples, self.k, ep["kind"], ep["half_life"])
        mx = self.params["mixture"]
        b = np.searchsorted(LENGTH_BUCKETS, history_lengths(self.ds, samples), side="right") if mx["per_length"] \
            else np.zeros(n, np.int64)
        return {
            "mixture": mixture_predict(mixture_features(self.ds, samples, self.k), b, np.asarray(mx["log_weights"]),
                                       self.prior),
            "prior": np.repeat(self.prior[None, :], n, axis=0),
            "last_window": normalise(window_counts(self.ds, samples, self.k, windows), self.prior),
            "user_mean": normalise(decayed_counts(self.ds, samples, self.k, "time", float("inf")), self.prior),
            "ema": normalise(c_ema, self.prior),
            "ema_prior": shrink(c_ep, self.prior, ep["beta"]),
        }

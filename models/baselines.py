"""Five baselines the model must beat, all from the same samples (:mod:`models.data`).

* ``prior``: the population distribution, the mean of the training targets.
* ``last_window``: the category distribution of the input window the model reads (type-weighted
  like the targets); the prior when the window holds no categorised event.
* ``user_mean``: the distribution of the user's WHOLE history before the cut (not only the
  window: the baselines may know more than the worker does); the prior when empty.
* ``ema``: the history with exponentially decaying weights, ``0.5 ** (age / half_life)``, age in
  time or in events (both kinds of half-life on the grid below); the prior when empty.
* ``ema_prior``: the decayed counts shrunk toward the population prior,
  ``(counts + beta * prior) / (sum(counts) + beta)``.
Every parameter (half-life, its kind, beta) is chosen on the validation split by KL.
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
NAMES = ("prior", "last_window", "user_mean", "ema", "ema_prior")


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


class Baselines:
    """Fit on train (prior) and validation (parameters), then predict any split."""

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
            for beta in BETAS:
                kl = kl_fn(val.targets, shrink(c, self.prior, beta)).mean()
                if kl < best_ep[0]:
                    best_ep = (kl, {"kind": kind, "half_life": hl, "beta": beta})
        self.params = {"ema": best_ema[1], "ema_prior": best_ep[1]}
        return self.params

    def predict(self, samples: Samples, windows) -> dict[str, np.ndarray]:
        n = len(samples)
        ema, ep = self.params["ema"], self.params["ema_prior"]
        c_ema = decayed_counts(self.ds, samples, self.k, ema["kind"], ema["half_life"])
        c_ep = c_ema if (ep["kind"], ep["half_life"]) == (ema["kind"], ema["half_life"]) else \
            decayed_counts(self.ds, samples, self.k, ep["kind"], ep["half_life"])
        return {
            "prior": np.repeat(self.prior[None, :], n, axis=0),
            "last_window": normalise(window_counts(self.ds, samples, self.k, windows), self.prior),
            "user_mean": normalise(decayed_counts(self.ds, samples, self.k, "time", float("inf")), self.prior),
            "ema": normalise(c_ema, self.prior),
            "ema_prior": shrink(c_ep, self.prior, ep["beta"]),
        }

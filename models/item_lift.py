"""The item-to-interest lift: what the items of a window say about the user's next interests.

The model reads each event's category, never its item. An item can say more: on MovieLens a film
says which of its genres the user is after, and what they rate next. This module measures that
with a counter-like table, fit on a training period's cuts:

* a cut's **keys** are the items of the last ``slots`` clicks and browses of its input window whose
  category the model knows (the events its targets are made of), oldest first;
* each key of a cut is credited with the cut's target, ``1 / (keys of the cut)`` of it:
  ``S_x`` (k,) the credited targets, ``N_x`` the credit;
* a key's **lift** is how far its average next distribution sits from the population prior, in
  logits, shrunk by ``m`` pseudo-cuts of the prior::

      lift(x) = log((S_x + m * prior) / (N_x + m)) - log(prior)      (k,)

* a cut's lift is the mean lift of its keys found in the table (0 when none is), and a prediction
  ``p`` with it is ``softmax(log p + lam * lift)``.

``train`` fits it after the model (:func:`models.train.fit`, stage 6): ``slots``, ``m`` and ``lam``
are chosen on validation, on top of the chosen model's validation predictions, and the table that the exported
model carries (:class:`interest_core.item_lift.ItemLift`, :func:`build`) holds ``lam * lift(x)``.
Serving applies it with :mod:`interest_core.item_lift` (keys, mean, ``softmax``), as
:func:`with_lift` does here. ``bench/item_lift.py`` measures it on a backtest's folds. Pure: numpy
and the window's events.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from interest_core.item_lift import ItemLift, apply, mean_lift, window_keys, window_lifts  # noqa: F401 (window_keys: one definition)

SLOTS = (1, 5, 20)  # the window's newest items that count, chosen on validation
SHRINK = (1.0, 10.0, 100.0)  # m, pseudo-cuts of the prior, chosen on validation
LAMBDAS = tuple(round(0.1 * i, 1) for i in range(41))  # lam, 0 .. 4, chosen on validation
MIN_CREDIT = 1.0  # an exported table keeps the items credited with at least one whole target
# train keeps a lift that lowers the validation KL by this share of it at least: the table fills
# model.json (thousands of items); on MovieLens' four periods it earned 1.0-1.4 %, on the Complete
# Journey, whose items are products inside the categories, 0.06 % (bench/README.md, "The items of a
# window")
MIN_GAIN = 0.001
# the least prior share a lift reads (the model's prior starts at no less, InterestModel.init_prior): a
# category absent from the training targets was a log(0), a NaN lift and a NaN in the model card
PRIOR_FLOOR = 1e-6


@dataclass
class LiftTable:
    """Per key: ``sums[x]`` (k,) the credited targets and ``credit[x]`` their weight (module doc)."""

    sums: dict
    credit: dict

    def __len__(self) -> int:
        return len(self.sums)


def fit_table(keys: Sequence[Sequence], targets: np.ndarray) -> LiftTable:
    """The table of cuts whose keys are ``keys`` (one list per cut) and targets ``targets`` (N, k)."""
    if len(keys) != len(targets):
        raise ValueError(f"{len(keys)} key lists for {len(targets)} targets")
    sums, credit = {}, {}
    for ks, t in zip(keys, targets):
        if not ks:
            continue
        w = 1.0 / len(ks)
        for x in ks:
            if x in sums:
                sums[x] += w * t
                credit[x] += w
            else:
                sums[x] = w * np.asarray(t, np.float64)
                credit[x] = w
    return LiftTable(sums, credit)


def key_lift(table: LiftTable, key, prior: np.ndarray, m: float) -> np.ndarray:
    """(k,) the lift of one key of the table, shrunk by ``m`` pseudo-cuts of ``prior``. A category
    no training target holds (prior 0, and so 0 in every key's sums) counts at :data:`PRIOR_FLOOR`:
    its lift is ``log(m / (N_x + m))``, not log(0) - log(0)."""
    prior = np.maximum(prior, PRIOR_FLOOR)
    return np.log((table.sums[key] + m * prior) / (table.credit[key] + m)) - np.log(prior)


def table_lifts(table: LiftTable, prior: np.ndarray, m: float) -> dict:
    """Every key's lift (:func:`key_lift`), shrunk by ``m`` pseudo-cuts of ``prior``."""
    if m <= 0:
        raise ValueError(f"m must be > 0, got {m}")
    prior = np.asarray(prior, np.float64)
    return {x: key_lift(table, x, prior, m) for x in table.sums}


def cut_lifts(keys: Sequence[Sequence], table: LiftTable, prior: np.ndarray, m: float) -> np.ndarray:
    """(N, k): each cut's mean lift over its keys found in ``table``, 0 where none is (the mean the
    served model takes, :func:`interest_core.item_lift.mean_lift`)."""
    lifts = table_lifts(table, prior, m)
    return np.stack([mean_lift(lifts, ks, len(prior)) for ks in keys]) if len(keys) else np.zeros((0, len(prior)))


def with_lift(p: np.ndarray, lift: np.ndarray, lam: float) -> np.ndarray:
    """(N, k): ``softmax(log p + lam * lift)``, row by row."""
    return apply(p, lam * np.asarray(lift, np.float64))


def choose(p_val: np.ndarray, targets: np.ndarray, lifts_val: dict, kl_fn) -> tuple[float, float, float]:
    """``(m, lam, KL)``: of ``lifts_val`` ({m: (N, k) cut lifts}) and :data:`LAMBDAS`, the pair with the
    lowest mean ``kl_fn(targets, with_lift(p_val, lift, lam))`` (the first of equals; lam 0 is the
    prediction without the lift)."""
    best = None
    for m, lift in lifts_val.items():
        for lam in LAMBDAS:
            kl = float(kl_fn(targets, with_lift(p_val, lift, lam)).mean())
            if best is None or kl < best[2]:
                best = (m, lam, kl)
    return best


def pruned(table: LiftTable, min_credit: float = MIN_CREDIT) -> LiftTable:
    """``table`` without the keys credited with less than ``min_credit`` (what an exported model
    carries; the rarer ones sit near the prior after shrinking, and would fill the model card)."""
    keep = [x for x, c in table.credit.items() if c >= min_credit]
    return LiftTable({x: table.sums[x] for x in keep}, {x: table.credit[x] for x in keep})


def build(table: LiftTable, prior: np.ndarray, m: float, lam: float, categories, slots: int) -> ItemLift:
    """The item lift a model carries: ``lam * lift(x)``, shrunk by ``m``, of every key of ``table``."""
    return ItemLift(categories, slots, {x: lam * v for x, v in table_lifts(table, prior, m).items()})


def served(encoder, pred: np.ndarray, windows) -> np.ndarray:
    """The graph's predictions ``pred`` (N, k) of ``windows`` with the encoder's item lift applied,
    as the worker applies it (:class:`interest_core.item_lift.ItemLift`); ``pred`` itself for an
    encoder without one."""
    lifts = window_lifts(encoder.item_lift, windows)
    return pred if lifts is None else apply(pred, lifts)

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

``bench/item_lift.py`` measures it on top of the trained model. Pure: numpy and the window's
events.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from interest_core.window import WindowEvent

LOG_FLOOR = 1e-30  # probabilities are read as at least this before the log


def window_keys(window: Sequence[WindowEvent], categories: Mapping[str, int], slots: int,
                level: str = "item") -> list:
    """The keys of one input window (module doc): the items (``level="item"``; events without an
    item are left out) or the category indices (``"category"``) of its last ``slots`` clicks and
    browses whose category is in ``categories`` (name -> index), oldest first."""
    if level not in ("item", "category"):
        raise ValueError(f"level must be 'item' or 'category', got {level!r}")
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    events = [e for e in window if e.type != "search" and e.category in categories][-slots:]
    if level == "category":
        return [categories[e.category] for e in events]
    return [e.item for e in events if e.item is not None]


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
    """(k,) the lift of one key of the table, shrunk by ``m`` pseudo-cuts of ``prior``."""
    return np.log((table.sums[key] + m * prior) / (table.credit[key] + m)) - np.log(prior)


def cut_lifts(keys: Sequence[Sequence], table: LiftTable, prior: np.ndarray, m: float) -> np.ndarray:
    """(N, k): each cut's mean lift over its keys found in ``table``, 0 where none is."""
    prior = np.asarray(prior, np.float64)
    if m <= 0:
        raise ValueError(f"m must be > 0, got {m}")
    out = np.zeros((len(keys), len(prior)))
    cache: dict = {}
    for r, ks in enumerate(keys):
        found = [x for x in ks if x in table.sums]
        for x in found:
            if x not in cache:
                cache[x] = key_lift(table, x, prior, m)
            out[r] += cache[x]
        if found:
            out[r] /= len(found)
    return out


def with_lift(p: np.ndarray, lift: np.ndarray, lam: float) -> np.ndarray:
    """(N, k): ``softmax(log p + lam * lift)``, row by row."""
    z = np.log(np.maximum(np.asarray(p, np.float64), LOG_FLOOR)) + lam * lift
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)

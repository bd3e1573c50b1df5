"""The item lift as the model applies it: what the items of a window add to its prediction.

The model's graph reads each event's category, never its item. An exported model can carry an
item lift beside it (in its encoding spec, :class:`interest_core.encoding.Encoder`): per item, a
vector of k logit offsets (:mod:`models.item_lift` fits them on training and chooses their
strength on validation). A window's lift is the mean lift of the items among its last ``slots``
clicks and browses of known categories (:func:`window_keys`; items the table does not hold add
nothing), and the prediction is::

    softmax(log p + lift)      p: the graph's probabilities

Training, evaluation, the worker, replay and explanations all go through :meth:`ItemLift.vector`
and :func:`apply`. Pure: numpy and the window's events.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from interest_core.window import WindowEvent

LOG_FLOOR = 1e-30  # probabilities are read as at least this before the log
# The largest logit offset a table may hold: e**-100 is below any probability a vector shows, and
# train's tables lie inside (models.item_lift: at most 4 x log(1 / PRIOR_FLOOR) = 55 above, and
# below -100 only for an item credited 7e10 times; MovieLens' run from -2.52 to 4.80). A
# hand-edited 1e308 on two items of a window overflowed their mean to inf, and the published
# vector to NaN, which the model's self-test (items it has no lift of) missed
MAX_LIFT = 100.0


def window_keys(window: Sequence[WindowEvent], categories: Mapping[str, int], slots: int,
                level: str = "item") -> list:
    """The keys of one window: the items (``level="item"``; events without an item are left out)
    or the category indices (``"category"``) of its last ``slots`` clicks and browses whose
    category is in ``categories`` (name -> index), oldest first."""
    if level not in ("item", "category"):
        raise ValueError(f"level must be 'item' or 'category', got {level!r}")
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    events = []
    for e in reversed(window):  # the newest first: a scored window holds up to 128 events
        if e.type != "search" and e.category in categories:
            events.append(e)
            if len(events) == slots:
                break
    events.reverse()
    if level == "category":
        return [categories[e.category] for e in events]
    return [e.item for e in events if e.item is not None]


def mean_lift(lifts: Mapping, keys: Sequence, k: int) -> np.ndarray:
    """(k,) the mean of ``lifts[x]`` over the ``keys`` that ``lifts`` holds, zeros when none is: a
    window's lift, the same for training's tables and a served :class:`ItemLift`."""
    found = [lifts[x] for x in keys if x in lifts]
    return np.mean(found, axis=0) if found else np.zeros(k)


def apply(probs: np.ndarray, lifts: np.ndarray) -> np.ndarray:
    """(N, k) float64: ``softmax(log probs + lifts)``, row by row."""
    z = np.log(np.maximum(np.asarray(probs, np.float64), LOG_FLOOR)) + lifts
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


class ItemLift:
    """Per item, k logit offsets at the strength chosen (module doc); ``categories`` in output order."""

    def __init__(self, categories: Sequence[str], slots: int, lifts: Mapping[str, Sequence[float]]):
        if slots < 1:
            raise ValueError(f"item lift slots must be >= 1, got {slots}")
        self.k = len(categories)
        self.slots = int(slots)
        self._index = {c: i for i, c in enumerate(categories)}
        self.lifts = {}
        for item, vec in lifts.items():
            v = np.asarray(vec, np.float64)
            if v.shape != (self.k,) or not (np.abs(v) <= MAX_LIFT).all():  # (NaN fails it too)
                raise ValueError(f"item lift of {item!r}: need {self.k} numbers within ±{MAX_LIFT:g}, got "
                                 f"{list(vec)[:5]!r}...")
            self.lifts[str(item)] = v

    def __len__(self) -> int:
        return len(self.lifts)

    def vector(self, window: Sequence[WindowEvent]) -> np.ndarray:
        """(k,) the window's lift: the mean over its keys the table holds, zeros when none."""
        return mean_lift(self.lifts, window_keys(window, self._index, self.slots), self.k)

    def to_spec(self) -> dict:
        return {"slots": self.slots, "items": {x: [round(float(a), 5) for a in v] for x, v in self.lifts.items()}}

    @classmethod
    def from_spec(cls, spec: dict, categories: Sequence[str]) -> "ItemLift":
        if not isinstance(spec, dict) or not isinstance(spec.get("items"), dict) or \
                not isinstance(spec.get("slots"), int) or isinstance(spec["slots"], bool):
            raise ValueError("the spec's item_lift needs an int 'slots' and an 'items' object")
        return cls(categories, spec["slots"], spec["items"])


def window_lifts(item_lift: "ItemLift | None", windows: Sequence[Sequence[WindowEvent]]) -> np.ndarray | None:
    """(n, k) the lifts of ``windows`` (:meth:`ItemLift.vector`), None without an item lift."""
    if item_lift is None:
        return None
    return np.stack([item_lift.vector(w) for w in windows]) if len(windows) else np.zeros((0, item_lift.k))

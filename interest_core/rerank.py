"""Re-ranking candidates with a user's interest vector: the one blend that the worker's
``POST /users/{id}/rerank``, the offline evaluation (``interest-stream evaluate-rerank``) and
downstream services (``stream_app.rerank.rerank``) all run.

The blend of candidate ``i`` (score ``s_i``, category ``c_i``) for weight ``w`` in [0, 1]::

    blended_i = (1 - w) * r_i + w * a(c_i)

    r_i  = mid-rank percentile of s_i among the n candidates
         = (#candidates with a lower score + (#others with an equal score) / 2) / (n - 1)
           in [0, 1]: 1 for the single highest score, 0 for the single lowest; 0.5 when n = 1
    a(c) = p_c / (p_c + q_c)      the user's affinity to category c, in [0, 1]
           p_c = the vector's probability of c, q_c = the prior of c: the population prior when
           one is given, else uniform 1 / k over the vector's k categories.
           a = 0.5 is neutral (p = q, a lift of 1); a -> 1 as p >> q; a = 0 when p = 0.

Why this form (measured by ``interest-stream evaluate-rerank``, see the README section
"Re-ranking"):

* The candidates' scores come from another system on any scale (counts, log-odds, cosine
  similarities). Only their order among the candidates enters, through ``r``, so the same ``w``
  means the same trade-off whatever the scale, and one heavy-tailed score (a popularity count) does
  not squash all the others toward 0 as a min-max scaling would.
* ``a`` is a monotone function of the lift ``p / q`` (``a = lift / (1 + lift)``): what the user
  wants MORE than the prior, not what is common. An item's own score usually already carries its
  category's popularity; multiplying by raw ``p`` would count that twice. The lift also does not
  depend on the number of categories, and mapping it into [0, 1] puts it on ``r``'s scale.
* A category the vector does not have (the model does not know it) gets the prior, ``p = q``,
  so ``a = 0.5``: neither pushed up nor down. The result lists those categories.

Ties (equal blended scores) go to the higher own score, then to the earlier position in the
input, so the order is deterministic. ``w = 0`` orders by score alone (stable), ``w = 1`` by
affinity alone (ties by score). With no vector (an unknown user) the list comes back in its
original order with ``personalized=False`` and no blended scores.

Pure Python, no numpy: it runs per request in the worker and in any service.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

NEUTRAL_AFFINITY = 0.5  # a(c) of a category at its prior (lift 1), and of an unknown category


@dataclass(frozen=True, slots=True)
class Item:
    """One candidate: its id, its interest category and its own score (any scale, higher is better)."""

    item_id: str
    category: str
    score: float


@dataclass(frozen=True, slots=True)
class RankedItem:
    item_id: str
    category: str
    score: float
    blended: float | None  # None when not personalized
    interest: float | None  # p of the item's category used (its prior if the vector lacks it); None: not personalized

    def to_json(self) -> dict:
        return {"item_id": self.item_id, "category": self.category, "score": self.score,
                "blended": self.blended, "interest": self.interest}


@dataclass(frozen=True, slots=True)
class Ranked:
    items: tuple[RankedItem, ...]  # best first (original order when not personalized)
    personalized: bool
    weight: float
    unknown_categories: tuple[str, ...]  # candidates' categories the vector lacks, sorted; they got the prior


def rank_percentiles(scores: Sequence[float]) -> list[float]:
    """``r_i`` of the module formula: mid-rank percentiles in [0, 1], equal scores equal values."""
    n = len(scores)
    if n == 1:
        return [0.5]
    order = sorted(range(n), key=scores.__getitem__)
    out = [0.0] * n
    a = 0
    while a < n:  # a run of equal scores [a, b) gets the mean of its 0-based ranks
        b = a + 1
        while b < n and scores[order[b]] == scores[order[a]]:
            b += 1
        mid = (a + b - 1) / 2 / (n - 1)
        for j in range(a, b):
            out[order[j]] = mid
        a = b
    return out


def affinity(p: float, q: float) -> float:
    """``a = p / (p + q)`` of the module formula; the neutral 0.5 when both are 0."""
    total = p + q
    return p / total if total > 0 else NEUTRAL_AFFINITY


def interests_of(vector: Mapping) -> Mapping[str, float]:
    """The category -> probability mapping of a vector: either that mapping itself, or a whole
    output record of the ``user-interests`` topic (its ``interests``)."""
    inner = vector.get("interests")
    return inner if isinstance(inner, Mapping) else vector


def blend_parts(interests: Mapping[str, float], categories: Sequence[str], scores: Sequence[float],
                prior: Mapping[str, float] | None = None) -> tuple[list[float], list[float], list[float], list[str]]:
    """The two parts of the blend per candidate, before the weight: ``(r, a, p, unknown)`` with
    ``r`` the score percentiles, ``a`` the category affinities, ``p`` the probability used for each
    candidate's category, and the sorted categories the vector lacks. ``rerank`` and the offline
    evaluation both start from here."""
    if not interests:
        raise ValueError("an interest vector needs at least one category")
    uniform = 1.0 / len(interests)
    r = rank_percentiles(scores)
    a, p, unknown = [], [], set()
    cache: dict[str, tuple[float, float]] = {}
    for c in categories:
        hit = cache.get(c)
        if hit is None:
            q = prior.get(c, uniform) if prior is not None else uniform
            pc = interests.get(c)
            if pc is None:
                unknown.add(c)
                hit = (NEUTRAL_AFFINITY, q)
            else:
                hit = (affinity(float(pc), q), float(pc))
            cache[c] = hit
        a.append(hit[0])
        p.append(hit[1])
    return r, a, p, sorted(unknown)


def rerank(interests: Mapping[str, float] | None, items: Sequence[Item], weight: float,
           prior: Mapping[str, float] | None = None) -> Ranked:
    """Re-order ``items`` by the module's blend of their own score and the user's interest in
    their category.

    ``interests``: the vector's category -> probability mapping (or the whole vector record), or
    None for an unknown user (original order, ``personalized=False``). ``weight``: the share of the
    interest, 0 (scores alone) to 1 (interest alone). ``prior``: the population's category
    distribution when known; by default uniform over the vector's categories.
    """
    if not (isinstance(weight, (int, float)) and not isinstance(weight, bool) and 0.0 <= weight <= 1.0):
        raise ValueError(f"weight must be a number in [0, 1], got {weight!r}")
    weight = float(weight)
    if interests is not None:
        interests = interests_of(interests)
    if not interests:  # None, or an empty mapping: nothing known about the user
        return Ranked(tuple(RankedItem(it.item_id, it.category, it.score, None, None) for it in items),
                      False, weight, ())
    if not items:
        return Ranked((), True, weight, ())
    scores = [float(it.score) for it in items]
    if not all(math.isfinite(s) for s in scores):
        raise ValueError("every score must be a finite number")
    r, a, p, unknown = blend_parts(interests, [it.category for it in items], scores, prior)
    blended = [(1.0 - weight) * ri + weight * ai for ri, ai in zip(r, a)]
    order = sorted(range(len(items)), key=lambda i: (-blended[i], -scores[i], i))
    return Ranked(tuple(RankedItem(items[i].item_id, items[i].category, items[i].score, blended[i], p[i])
                        for i in order), True, weight, tuple(unknown))

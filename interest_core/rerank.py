"""Re-ranking candidates with a user's interest vector: the one blend that the worker's
``POST /users/{id}/rerank``, the offline evaluation (``interest-stream evaluate-rerank``) and
downstream services (``stream_app.rerank.rerank``) all run.

The blend of candidate ``i`` (score ``s_i``, category ``c_i``) for weight ``w`` in [0, 1]::

    blended_i = (1 - w) * r_i + w * ln(lift(c_i))

    r_i     = mid-rank percentile of s_i among the n candidates
            = (#candidates with a lower score + (#others with an equal score) / 2) / (n - 1),
              in [0, 1]: 1 for the single highest score, 0 for the single lowest; 0.5 when n = 1
    lift(c) = max(p_c, 1e-4) / max(q_c, 1e-4)
              p_c = the vector's probability of c; q_c = the prior of c: the population's
              category distribution when given (``prior``; model.json ``category_prior``), else
              uniform 1 / k over the vector's k categories. The floors are the evaluation's KL floor.
    A category the vector does not have (the model does not know it) gets the prior, p_c = q_c:
    lift 1, ln 1 = 0, neither pushed up nor down. The result lists those categories.

So at weight ``w`` a category the user wants e times (one nat) more than the population does is
worth ``w / (1 - w)`` of the whole range of the candidates' scores: at 0.5, exactly that range.

Why this form, measured on validation splits with ``evaluate-rerank`` (candidates: the true next
items plus 100 popular unseen ones, scored by training-period popularity; README "Re-ranking"):

* Only the order of the candidates' scores enters, through ``r``: they come from another system on
  any scale (counts, log-odds, similarities), and a heavy-tailed score (popularity) does not squash
  the others toward 0 as a min-max scaling would.
* The interest is a lift over the POPULATION prior, not the raw probability: a candidate's score
  already carries its category's popularity, and boosting by raw ``p`` (or by a lift over the
  uniform) promotes the popular categories the candidates come from anyway. On MovieLens, raw
  ``p`` and the uniform lift gained nothing at any weight (best validation NDCG@10 0.0304 at
  w = 0, popularity itself), against 0.0748 with the population lift (model vector, w = 1).
* The lift enters as its logarithm, unbounded: it is symmetric (twice and half as interesting are
  equally far from neutral), and a category the user is far more (or less) into than people in
  general can outweigh the whole score range. Mapped into [0, 1] instead (``p / (p + q)``, or the
  lift's percentile among the candidates, a weighted Borda count), the interest was nearly powerless
  below w = 0.7: at w = 0.5, validation NDCG@10 0.303 (p / (p + q)) and 0.029 (Borda) against 0.633
  for the log-lift on REES46, 0.030 and 0.030 against 0.041 on MovieLens (model vectors). At w = 1
  all of these give the same order (the lift alone, ties by score).

Ties (equal blended scores) go to the higher own score, then to the earlier position in the
input, so the order is deterministic. ``w = 0`` orders by score alone (stable), ``w = 1`` by lift
alone (ties by score). With no vector (an unknown user) the list comes back in its original order
with ``personalized=False`` and no blended scores.

Pure Python, no numpy: it runs per request in the worker and in any service.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

FLOOR = 1e-4  # probabilities below count as 1e-4 (models.evaluate.KL_FLOOR): a zero is not -infinity


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


def log_lift(p: float, q: float) -> float:
    """``ln(max(p, 1e-4) / max(q, 1e-4))`` of the module formula: 0 at the prior."""
    return math.log(max(p, FLOOR) / max(q, FLOOR))


def interests_of(vector: Mapping) -> Mapping[str, float]:
    """The category -> probability mapping of a vector: either that mapping itself, or a whole
    output record of the ``user-interests`` topic (its ``interests``)."""
    inner = vector.get("interests")
    return inner if isinstance(inner, Mapping) else vector


def blend_parts(interests: Mapping[str, float], categories: Sequence[str], scores: Sequence[float],
                prior: Mapping[str, float] | None = None) -> tuple[list[float], list[float], list[float], list[str]]:
    """The two parts of the blend per candidate, before the weight: ``(r, l, p, unknown)`` with
    ``r`` the score percentiles, ``l`` the log-lifts of the candidates' categories, ``p`` the
    probability used for each candidate's category (the prior for one the vector lacks), and the
    sorted categories the vector lacks. ``rerank`` and the offline evaluation both start here."""
    if not interests:
        raise ValueError("an interest vector needs at least one category")
    uniform = 1.0 / len(interests)
    r = rank_percentiles(scores)
    lifts, p, unknown = [], [], set()
    cache: dict[str, tuple[float, float]] = {}
    for c in categories:
        hit = cache.get(c)
        if hit is None:
            q = prior.get(c, uniform) if prior is not None else uniform
            pc = interests.get(c)
            if pc is None:
                unknown.add(c)
                hit = (0.0, q)
            else:
                hit = (log_lift(float(pc), q), float(pc))
            cache[c] = hit
        lifts.append(hit[0])
        p.append(hit[1])
    return r, lifts, p, sorted(unknown)


def rerank(interests: Mapping[str, float] | None, items: Sequence[Item], weight: float,
           prior: Mapping[str, float] | None = None) -> Ranked:
    """Re-order ``items`` by the module's blend of their own score and the user's interest in
    their category.

    ``interests``: the vector's category -> probability mapping (or the whole vector record), or
    None for an unknown user (original order, ``personalized=False``). ``weight``: the share of the
    interest, 0 (scores alone) to 1 (interest alone). ``prior``: the population's category
    distribution (model.json ``category_prior``); without it, uniform over the vector's
    categories, which measured far weaker (module doc).
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
    r, lift, p, unknown = blend_parts(interests, [it.category for it in items], scores, prior)
    blended = [(1.0 - weight) * ri + weight * li for ri, li in zip(r, lift)]
    order = sorted(range(len(items)), key=lambda i: (-blended[i], -scores[i], i))
    return Ranked(tuple(RankedItem(items[i].item_id, items[i].category, items[i].score, blended[i], p[i])
                        for i in order), True, weight, tuple(unknown))

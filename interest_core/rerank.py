"""Re-ranking candidates with a user's interest vector: the one blend that the worker's
``POST /users/{id}/rerank``, the offline evaluation (``interest-stream evaluate-rerank``) and
downstream services (``stream_app.rerank.rerank``) all run.

The blend of candidate ``i`` (score ``s_i``, category ``c_i``) for weight ``w`` in [0, 1]::

    blended_i = (1 - w) * r_i + w * ln(lift(c_i))

    r_i     = (s_i - min s) / (max s - min s) over the n candidates, in [0, 1]
              (0.5 for every candidate when all scores are equal, or n = 1)
    lift(c) = max(p_c, 1e-4) / max(q_c, 1e-4)
              p_c = the vector's probability of c; q_c = the prior of c: the population's
              category distribution when given (``prior``; model.json ``category_prior``), else
              uniform 1 / k over the vector's k categories (much weaker, below). The floors are the
              evaluation's KL floor: a probability of 0 is a strong push down, not minus infinity.
    A category the vector does not have (the model does not know it) gets the prior, p_c = q_c:
    lift 1, ln 1 = 0, neither pushed up nor down. The result lists those categories.

So at weight ``w`` a category the user wants e times (one nat) more than the population does is
worth ``w / (1 - w)`` of the whole range of the candidates' scores: at 0.5, exactly that range.
``r`` does not change when the scores are shifted or multiplied by a positive number (units,
offsets, temperature), so the same weight means the same trade-off for counts, probabilities or
similarities; a monotone but non-linear change (a logarithm) does change it.

Why this form: validation NDCG@10 of ``evaluate-rerank`` (candidates: the true next items plus 100
popular items the user has not clicked, scored by training-period popularity) with the model's
vectors, at the best weight (in brackets) and at w = 0.5; ``bench/rerank_eval.py`` prints it as
``blend_forms_validation``. Popularity alone (w = 0): 0.030, 0.025, 0.149.

    form                                   MovieLens          REES46             Complete Journey
    min-max score + ln lift (this one)     .0748 (1) / .0479  .6499 (.8) / .6487 .3019 (.65) / .2974
    rank percentile + ln lift              .0748 (1) / .0424  .6499 (.9) / .6427 .2990 (1) / .2190
    min-max + ln lift over the uniform     .0311 (1) / .0275  .6311 (.9) / .6289 .1609 (.2) / .1480
    rank + p                               .0311 (1) / .0252  .6311 (1) / .1580  .1522 (.25) / .1448
    rank + p / (p + q)                     .0748 (1) / .0302  .6499 (1) / .3195  .2990 (1) / .1628
    rank + rank of lift (weighted Borda)   .0748 (1) / .0300  .6499 (1) / .0285  .2990 (1) / .1478

* The interest is a lift over the POPULATION prior, not the raw probability: a candidate's score
  already carries its category's popularity, and boosting by raw ``p`` (or a lift over the uniform,
  the same order) promotes the popular categories the candidates come from anyway. It gained
  little or nothing on MovieLens and the Complete Journey: the worker needs the model's
  ``category_prior`` (written by ``train`` into the card, copied by ``export`` into model.json).
* The lift enters as its logarithm, unbounded and symmetric (twice and half as interesting are
  equally far from neutral), so a category the user is far more (or less) into than people in
  general can outweigh the score range. Squashed into [0, 1] (``p / (p + q)``, or the lift's
  percentile among the candidates) the interest was nearly powerless below w = 0.7.
* Min-max keeps how much better a high score is (a heavy-tailed popularity: the staples of a
  grocery store stay on top), where percentiles spread the candidates evenly; it was as good or
  better on every log, and much better at w = 0.5 on the Complete Journey.

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
PRIOR_SHAPE = "null or an object of finite non-negative numbers (category: share)"


def is_prior(value) -> bool:
    """Whether ``value`` can be a ``category_prior`` (the checkpoint's card, model.json):
    :data:`PRIOR_SHAPE`, as ``train`` writes it (true and false are no numbers)."""
    return value is None or isinstance(value, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for v in value.values())


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


def scaled_scores(scores: Sequence[float]) -> list[float]:
    """``r_i`` of the module formula: min-max scaled into [0, 1]; all 0.5 when the scores are equal."""
    lo, hi = min(scores), max(scores)
    if hi == lo:
        return [0.5] * len(scores)
    span = hi - lo
    if math.isinf(span):  # finite scores whose range overflows (1e308 and -1e308): halve them first
        lo, span = lo / 2, hi / 2 - lo / 2
        return [(s / 2 - lo) / span for s in scores]
    return [(s - lo) / span for s in scores]


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
    ``r`` the scaled scores, ``l`` the log-lifts of the candidates' categories, ``p`` the
    probability used for each candidate's category (the prior for one the vector lacks), and the
    sorted categories the vector lacks. ``rerank`` and the offline evaluation both start here."""
    if not interests:
        raise ValueError("an interest vector needs at least one category")
    uniform = 1.0 / len(interests)
    r = scaled_scores(scores) if scores else []
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

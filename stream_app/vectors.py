"""Model output -> the contract's interest vector (pure; no Kafka, no onnxruntime)."""
from __future__ import annotations

from math import log2
from typing import Mapping, Sequence

SCHEMA = 1
TOP_N = 3


def js_divergence(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Jensen-Shannon divergence, base 2 (0..1), over the union of both category lists
    (a category missing from one side has probability 0 there)."""
    total = 0.0
    same = p.keys() == q.keys()  # one model's categories on both sides: no union to build
    for c in (p if same else set(p) | set(q)):
        a, b = p.get(c, 0.0), q.get(c, 0.0)
        m = (a + b) / 2
        if a > 0:
            total += a * log2(a / m)
        if b > 0:
            total += b * log2(b / m)
    return min(1.0, max(0.0, 0.5 * total))


def top_categories(interests: Mapping[str, float], n: int = TOP_N) -> list[str]:
    """The n largest, ties broken by category name."""
    return [c for c, _ in sorted(interests.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def build_vector(
    user_id: str,
    probs: Sequence[float],
    categories: Sequence[str],
    newest_ts: int,
    model_version: str,
    events: int,
    previous: Mapping | None,
) -> dict:
    """The output record of CONTRACT.md for one user."""
    row = probs.tolist() if hasattr(probs, "tolist") else [float(p) for p in probs]  # numpy row: floats at once
    total = sum(row)
    interests = dict(zip(categories, [p / total for p in row]))
    drift = js_divergence(interests, previous["interests"]) if previous else 0.0
    return {
        "schema": SCHEMA,
        "user_id": user_id,
        "ts": newest_ts,
        "model_version": model_version,
        "interests": interests,
        "top": top_categories(interests),
        "drift": drift,
        "events": events,
    }

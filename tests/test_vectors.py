"""The output vector: normalisation, top ties, Jensen-Shannon drift (values derived by hand)."""
import math

import pytest

from stream_app.vectors import build_vector, js_divergence, top_categories


def test_js_divergence_by_hand():
    assert js_divergence({"a": 1.0}, {"a": 1.0}) == 0.0
    assert js_divergence({"a": 1.0}, {"b": 1.0}) == pytest.approx(1.0)  # disjoint: 1 bit
    # p=(1,0), q=(.5,.5): m=(.75,.25); JS = .5*log2(1/.75) + .5*(.5log2(.5/.75)+.5log2(.5/.25))
    expected = 0.5 * math.log2(1 / 0.75) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(2))
    assert js_divergence({"a": 1.0, "b": 0.0}, {"a": 0.5, "b": 0.5}) == pytest.approx(expected)
    # union of category lists: a category absent on one side counts as 0 there
    assert js_divergence({"a": 0.5, "b": 0.5}, {"a": 0.5, "c": 0.5}) == pytest.approx(0.5)


def test_top_ties_broken_by_name():
    assert top_categories({"m": 0.25, "b": 0.25, "a": 0.25, "z": 0.25}) == ["a", "b", "m"]


def test_build_vector():
    v = build_vector("u1", [2.0, 1.0, 1.0], ["x", "y", "z"], 123, "v1", 7, None)
    assert v == {"schema": 1, "user_id": "u1", "ts": 123, "model_version": "v1",
                 "interests": {"x": 0.5, "y": 0.25, "z": 0.25}, "top": ["x", "y", "z"],
                 "drift": 0.0, "events": 7}
    w = build_vector("u1", [0.0, 0.0, 1.0], ["x", "y", "z"], 124, "v1", 8, v)
    assert w["drift"] == pytest.approx(js_divergence(w["interests"], v["interests"]))
    assert abs(sum(w["interests"].values()) - 1) < 1e-9

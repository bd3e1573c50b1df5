"""models.item_lift: keys, table, lifts and the prediction with them, worked by hand."""
import math

import numpy as np
import pytest

from interest_core.window import WindowEvent
from models.item_lift import cut_lifts, fit_table, key_lift, window_keys, with_lift

CATS = {"a": 0, "b": 1}
PRIOR = np.array([0.75, 0.25])
W1 = [WindowEvent(1, "click", "a", "x"), WindowEvent(2, "search", "b", query="films"),
      WindowEvent(3, "browse", "b", "y"), WindowEvent(4, "click", "unknown", "q")]
W2 = [WindowEvent(5, "click", "a", "x")]
W4 = [WindowEvent(6, "click", "a", None), WindowEvent(7, "click", "b", "y")]


def test_window_keys_are_the_last_clicks_and_browses_of_known_categories():
    assert window_keys(W1, CATS, 20) == ["x", "y"]  # no search, no unknown category
    assert window_keys(W1, CATS, 20, level="category") == [0, 1]
    assert window_keys(W1, CATS, 1) == ["y"]  # the newest only
    assert window_keys([], CATS, 20) == []
    # an event without an item takes its slot and gives no key
    assert window_keys(W4, CATS, 1) == ["y"]
    assert window_keys(W4, CATS, 2) == ["y"]
    assert window_keys(W4, CATS, 2, level="category") == [0, 1]
    assert window_keys(W4[::-1], CATS, 1) == []


@pytest.mark.parametrize("args, message", [
    ((W1, CATS, 0), "slots must be >= 1, got 0"),
    ((W1, CATS, 5, "film"), "level must be 'item' or 'category', got 'film'"),
])
def test_window_keys_refuses_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        window_keys(*args)


def test_table_credits_each_key_its_share_of_the_target():
    keys = [window_keys(w, CATS, 20) for w in (W1, W2, [])]
    table = fit_table(keys, np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]))
    assert len(table) == 2
    # x: half of W1's target, all of W2's; y: half of W1's; the empty window credits nothing
    assert table.credit == {"x": 1.5, "y": 0.5}
    np.testing.assert_allclose(table.sums["x"], [1.0, 0.5])
    np.testing.assert_allclose(table.sums["y"], [0.5, 0.0])
    with pytest.raises(ValueError, match="2 key lists for 3 targets"):
        fit_table(keys[:2], np.zeros((3, 2)))


def test_lifts_shrink_toward_the_prior_and_average_over_the_window():
    table = fit_table([["x", "y"], ["x"]], np.array([[1.0, 0.0], [0.5, 0.5]]))
    # x: ([1, 0.5] + 1 * [0.75, 0.25]) / (1.5 + 1) = [0.7, 0.3]; y: ([0.5, 0] + prior) / 1.5 = [5/6, 1/6]
    x = [math.log(0.7 / 0.75), math.log(0.3 / 0.25)]
    y = [math.log((5 / 6) / 0.75), math.log((1 / 6) / 0.25)]
    np.testing.assert_allclose(key_lift(table, "x", PRIOR, 1.0), x)
    lifts = cut_lifts([["x", "y"], ["x"], [], ["never seen"], ["x", "never seen"]], table, PRIOR, 1.0)
    np.testing.assert_allclose(lifts, [np.add(x, y) / 2, x, [0, 0], [0, 0], x])
    # more pseudo-cuts: closer to the prior (x at m = 100: ([1, 0.5] + [75, 25]) / 101.5)
    np.testing.assert_allclose(cut_lifts([["x"]], table, PRIOR, 100.0)[0],
                               [math.log(76 / 101.5 / 0.75), math.log(25.5 / 101.5 / 0.25)])
    with pytest.raises(ValueError, match="m must be > 0, got 0"):
        cut_lifts([["x"]], table, PRIOR, 0)


def test_with_lift_adds_the_scaled_lift_in_logits():
    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    lift = np.array([[math.log(2.0), 0.0], [0.0, 0.0]])
    # softmax(log 0.5 + log 2, log 0.5) = [1, 0.5] / 1.5; a zero lift changes nothing
    np.testing.assert_allclose(with_lift(p, lift, 1.0), [[2 / 3, 1 / 3], [0.2, 0.8]])
    np.testing.assert_allclose(with_lift(p, lift, 2.0)[0], [0.8, 0.2])  # [2, 0.5] / 2.5
    np.testing.assert_allclose(with_lift(p, lift, 0.0), p)

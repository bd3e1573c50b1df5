"""interest_core.item_lift and the encoding that carries it: a window's lift by hand, the spec's round
trip, and clear errors for a spec that cannot be served."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from interest_core.encoding import Encoder, train_tokenizer
from interest_core.item_lift import ItemLift, apply, window_lifts
from interest_core.window import WindowEvent

CATS = ["a", "b", "c"]
LIFTS = {"x": [1.0, 0.0, -1.0], "y": [0.0, 2.0, 0.0]}
WINDOW = [WindowEvent(1, "click", "a", "x"), WindowEvent(2, "browse", "b", "y"), WindowEvent(3, "search", query="q"),
          WindowEvent(4, "click", "c", "z")]  # z: not in the table


def encoder(**kw) -> Encoder:
    return Encoder(categories=CATS, tokenizer_json=train_tokenizer(["x y"] * 3, 50), max_len=32, **kw)


def test_a_windows_lift_is_the_mean_over_its_items_in_the_table():
    lift = ItemLift(CATS, 20, LIFTS)
    np.testing.assert_allclose(lift.vector(WINDOW), [0.5, 1.0, -0.5])  # (x + y) / 2; z adds nothing
    np.testing.assert_allclose(ItemLift(CATS, 1, LIFTS).vector(WINDOW), [0, 0, 0])  # the newest only: z
    np.testing.assert_allclose(ItemLift(CATS, 2, LIFTS).vector(WINDOW), [0, 2, 0])  # y and z
    np.testing.assert_allclose(lift.vector([]), [0, 0, 0])
    np.testing.assert_allclose(window_lifts(lift, [WINDOW, []]), [[0.5, 1.0, -0.5], [0, 0, 0]])
    assert window_lifts(None, [WINDOW]) is None


def test_apply_adds_the_lift_to_the_logits():
    p = np.array([[0.5, 0.25, 0.25]])
    # log p + [log 2, 0, 0] -> [1, 0.25, 0.25] / 1.5
    np.testing.assert_allclose(apply(p, np.array([[math.log(2), 0, 0]])), [[2 / 3, 1 / 6, 1 / 6]])
    np.testing.assert_allclose(apply(p, np.zeros((1, 3))), p)


def test_the_encoding_carries_the_lift_through_json_as_version_4():
    plain = encoder()
    enc = plain.with_item_lift(ItemLift(CATS, 20, LIFTS))
    spec = json.loads(json.dumps(enc.to_spec()))  # as model.json holds it
    assert spec["version"] == 4 and spec["item_lift"] == {"slots": 20, "items": LIFTS}
    served = Encoder.from_spec(spec)
    np.testing.assert_allclose(served.item_lift.vector(WINDOW), [0.5, 1.0, -0.5])
    assert served.encode(WINDOW) == plain.encode(WINDOW)  # the tokens do not change
    back = enc.with_item_lift(None)
    assert back.item_lift is None and back.to_spec() == plain.to_spec() and plain.to_spec()["version"] == 3


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("item_lift"), "the spec's item_lift needs an int 'slots' and an 'items' object"),
    (lambda s: s["item_lift"].update(slots="20"), "the spec's item_lift needs an int 'slots'"),
    (lambda s: s["item_lift"].update(slots=0), "item lift slots must be >= 1, got 0"),
    (lambda s: s["item_lift"].update(slots=True), "the spec's item_lift needs an int 'slots'"),  # was 1
    (lambda s: s["item_lift"]["items"].update(x=[1.0, 2.0]), r"item lift of 'x': need 3 numbers within ±100"),
    (lambda s: s["item_lift"]["items"].update(y=[0.0, float("nan"), 0.0]), r"item lift of 'y': need 3 numbers"),
    # two items' mean overflowed to inf, and the vector to NaN (JSON null on the output topic)
    (lambda s: s["item_lift"]["items"].update(z=[1e308, 0.0, 0.0]), r"item lift of 'z': need 3 numbers within ±100"),
    (lambda s: s["item_lift"]["items"].update(z=[0.0, -100.001, 0.0]), r"item lift of 'z': need 3 numbers"),
])
def test_a_spec_whose_lift_cannot_be_served_is_refused(change, message):
    spec = encoder().with_item_lift(ItemLift(CATS, 20, LIFTS)).to_spec()
    change(spec)
    with pytest.raises(ValueError, match=message):
        Encoder.from_spec(spec)


def test_an_encoding_without_the_profile_cannot_carry_a_lift():
    with pytest.raises(ValueError, match="an item lift needs an encoding of version 3"):
        encoder(profile=0).with_item_lift(ItemLift(CATS, 20, LIFTS))

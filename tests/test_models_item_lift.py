"""models.item_lift: keys, table, lifts and the prediction with them, worked by hand."""
import math

import numpy as np
import pytest

from interest_core.window import WindowEvent
from models.item_lift import cut_lifts, fit_table, key_lift, pruned, table_lifts, window_keys, with_lift

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
    kept = pruned(table)  # what a model carries: keys credited with at least one target
    assert kept.credit == {"x": 1.5} and list(kept.sums) == ["x"]
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


def test_a_category_no_training_target_holds_has_a_finite_lift():
    """Its prior was 0: log(0) - log(0), a NaN lift, a NaN validation KL in the model card, and a
    model.json the worker refused."""
    table = fit_table([["x"], ["x", "y"]], np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    prior = np.array([0.5, 0.5, 0.0])  # c: in no target
    lifts = table_lifts(table, prior, 1.0)
    # x: credit 1.5, sums [1, 0.5, 0]: c's lift is log(m * floor / (N + m)) - log(floor) = log(1 / 2.5)
    np.testing.assert_allclose(lifts["x"], [math.log(1.5 / 2.5 / 0.5), math.log(1.0 / 2.5 / 0.5),
                                            math.log(1 / 2.5)])
    np.testing.assert_allclose(key_lift(table, "y", prior, 1.0)[2], math.log(1 / 1.5))


def test_with_lift_adds_the_scaled_lift_in_logits():
    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    lift = np.array([[math.log(2.0), 0.0], [0.0, 0.0]])
    # softmax(log 0.5 + log 2, log 0.5) = [1, 0.5] / 1.5; a zero lift changes nothing
    np.testing.assert_allclose(with_lift(p, lift, 1.0), [[2 / 3, 1 / 3], [0.2, 0.8]])
    np.testing.assert_allclose(with_lift(p, lift, 2.0)[0], [0.8, 0.2])  # [2, 0.5] / 2.5
    np.testing.assert_allclose(with_lift(p, lift, 0.0), p)


def _blocks_log(seed: int, users: int = 40, blocks: int = 30, telling: bool = True) -> dict:
    """Users whose film of category a says what comes next: item x is followed by two b's, item w
    by two c's; the categories alone cannot tell the two apart. Not ``telling``: x or w at random."""
    rng = np.random.default_rng(seed)
    out = {}
    for u in range(users):
        evs, ts = [], 1_000_000_000_000 + u * 1000
        for b in range(blocks):
            first, then = ("x", "b") if rng.random() < 0.5 else ("w", "c")
            if not telling:
                first = "x" if rng.random() < 0.5 else "w"
            for cat, item in (("a", first), (then, f"{then}{u}-{b}"), (then, f"{then}{u}-{b}+")):
                ts += 600_000
                evs.append(WindowEvent(ts, "click", cat, item))
        out[f"u{u}"] = evs
    return out


def _by_last_category(ds) -> np.ndarray:
    """Validation predictions of a model that knows the categories, not the items: the mean
    training target of the cuts after an event of the same category."""
    tr, va = ds.splits["train"], ds.splits["val"]

    def last(smp):
        return np.array([ds.seqs[u].cat[i - 1] for u, i in zip(smp.user, smp.cut)])

    lt = last(tr)
    means = {c: tr.targets[lt == c].mean(0) for c in np.unique(lt)}
    return np.stack([means[c] for c in last(va)])


def test_train_keeps_the_item_lift_when_items_tell_what_comes_next():
    from types import SimpleNamespace

    from models.data import DataConfig, build_dataset, split_times
    from models.train import choose_item_lift

    cfg = DataConfig(target="next_k", target_k=2)
    users, cats = _blocks_log(0), ["a", "b", "c"]
    t1, t2 = split_times(users, cfg)
    ds = build_dataset(users, cats, cfg, t1, t2)
    td = SimpleNamespace(data_cfg=cfg, ds=ds, encoder=SimpleNamespace(categories=cats))
    val_pred = _by_last_category(ds)  # a model that reads categories, not items
    record, lift = choose_item_lift(td, val_pred, slots_grid=(1,))  # the newest item alone
    assert record["kept"] and record["lambda"] > 0 and record["val_kl_with"] < record["val_kl_without"] - 0.1
    assert record["slots"] == 1 and record["items"] == len(lift)
    # x lifts b, w lifts c
    assert {"x", "w"} <= set(lift.lifts) and lift.lifts["x"][1] > 0.3 and lift.lifts["w"][2] > 0.3
    assert lift.lifts["x"][2] < 0 and lift.lifts["w"][1] < 0
    # the items a model carries were credited with at least one whole target: with the newest two
    # items, a film of b or c at the end of the training period was a key of one cut, credit 1/2
    from models.data import sample_windows

    tr = ds.splits["train"]
    table = fit_table([window_keys(w, {c: i for i, c in enumerate(cats)}, 2) for w in sample_windows(ds, tr, cfg)],
                      tr.targets)
    _, lift_two = choose_item_lift(td, val_pred, slots_grid=(2,))
    assert set(lift_two.lifts) == {x for x, c in table.credit.items() if c >= 1.0} != set(table.sums)
    # with another period's data (the refit's), the table is fit again with the choices kept
    refit = SimpleNamespace(ds=build_dataset(_blocks_log(1), cats, cfg, t1, t2))
    record2, lift2 = choose_item_lift(td, val_pred, refit, slots_grid=(1,))
    assert (record2["m"], record2["lambda"]) == (record["m"], record["lambda"])
    # the newest items that count are chosen on validation too: here the newest alone says most
    record3, _ = choose_item_lift(td, val_pred, slots_grid=(20, 1, 5))
    assert record3["slots"] == 1 and record3["val_kl_with"] == record["val_kl_with"]
    assert not np.allclose(lift2.lifts["x"], lift.lifts["x"])
    # exactly: lam * the lift of the refit's training table, against the refit's prior
    rtr = refit.ds.splits["train"]
    rtable = pruned(fit_table([window_keys(w, {c: i for i, c in enumerate(cats)}, 1)
                               for w in sample_windows(refit.ds, rtr, cfg)], rtr.targets))
    rprior = rtr.targets.astype(np.float64).mean(0)
    assert set(lift2.lifts) == set(rtable.sums)
    for x in ("x", "w"):
        want = record2["lambda"] * key_lift(rtable, x, rprior / rprior.sum(), record2["m"])
        assert np.allclose(lift2.lifts[x], want, rtol=1e-6, atol=1e-6), (x, lift2.lifts[x], want)


def test_train_leaves_out_an_item_lift_that_does_not_earn_its_share(monkeypatch):
    """Items that say nothing beyond their category: validation still finds a little to gain by
    chance (0.8 % of the KL here, the interval across zero); a lift is kept only above MIN_GAIN."""
    from types import SimpleNamespace

    import models.item_lift
    from models.data import DataConfig, build_dataset, split_times
    from models.train import choose_item_lift

    cfg, cats = DataConfig(target="next_k", target_k=2), ["a", "b", "c"]
    users = _blocks_log(0, telling=False)
    t1, t2 = split_times(users, cfg)
    ds = build_dataset(users, cats, cfg, t1, t2)
    td = SimpleNamespace(data_cfg=cfg, ds=ds, encoder=SimpleNamespace(categories=cats))
    record, lift = choose_item_lift(td, _by_last_category(ds), slots_grid=(1,))
    gain = 1 - record["val_kl_with"] / record["val_kl_without"]
    assert 0.005 < gain < 0.01 and record["kept"] and lift is not None
    lo, hi = record["val_kl_diff_ci95"]
    assert lo < 0 < hi
    monkeypatch.setattr(models.item_lift, "MIN_GAIN", 0.01)
    record, lift = choose_item_lift(td, _by_last_category(ds), slots_grid=(1,))
    assert not record["kept"] and lift is None and record["items"] == 0 and "at least 1.0% lower" in record["rule"]


def test_evaluate_gives_the_best_baseline_an_item_lift_as_train_gives_the_model():
    """The lift is a counter of what follows each item, which a counter can have too: on a log
    where the item tells what comes next, the best baseline with a lift chosen on its validation
    predictions (as train chooses the model's) is far better on test than without it, so
    evaluate reports the model against it as well."""
    from models.data import DataConfig, build_dataset, split_times
    from models.evaluate import baseline_predictions, kl_per_sample

    cfg = DataConfig(target="next_k", target_k=2)
    users, cats = _blocks_log(0), ["a", "b", "c"]
    t1, t2 = split_times(users, cfg)
    ds = build_dataset(users, cats, cfg, t1, t2)
    base = baseline_predictions(ds, cfg, len(cats), categories=cats)
    te, best = ds.splits["test"], base["best"]
    assert base["item_lift"]["kept"] and base["item_lift"]["items"] > 0
    lifted = kl_per_sample(te.targets, base["test_with_item_lift"]).mean()
    assert lifted < kl_per_sample(te.targets, base["test"][best]).mean() - 0.1
    assert "test_with_item_lift" not in baseline_predictions(ds, cfg, len(cats))  # only when asked

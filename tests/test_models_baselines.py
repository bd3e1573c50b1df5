"""models.baselines.counter_tuned_on_samples: the counter tuned on the samples it predicts, in sample
and cross-validated over users, on datasets small enough to work by hand."""
import numpy as np
import pytest

from models.baselines import TUNED_BETAS, counter_tuned_on_samples
from models.data import Dataset, Samples, UserSeq
from models.evaluate import kl_per_sample

H = 3_600_000


def _dataset(histories: list[list[int]], targets: list[list[float]]) -> tuple[Dataset, Samples]:
    """One user per history (categories of clicks an hour apart), one sample each, cut after the
    history, with the given target."""
    seqs = [UserSeq([], np.arange(len(h), dtype=np.int64) * H, np.asarray(h, np.int64), np.ones(len(h), np.float32))
            for h in histories]
    samples = Samples(np.arange(len(histories)), np.array([len(h) for h in histories]),
                      np.array([(len(h) - 1) * H for h in histories]), np.asarray(targets, np.float32))
    return Dataset([f"u{i}" for i in range(len(histories))], seqs, {"test": samples}, {}, 0, 0), samples


def test_one_target_for_everyone_is_the_prior_of_these_samples_at_the_largest_beta():
    """Ten users who all go on to category 2, whatever their history (0 or 1): the best counter
    ignores the history as far as the grid allows: the samples' own targets as prior, the largest
    beta. With one click in the history, 512 / 513 of the prediction is category 2. Every fold's
    other users have the same target, so the cross-validated counter predicts the same."""
    ds, s = _dataset([[i % 2] for i in range(10)], [[0, 0, 1]] * 10)
    got = counter_tuned_on_samples(ds, s, 3, np.array([0.5, 0.25, 0.25]), kl_per_sample)
    beta = TUNED_BETAS[-1]
    assert got["params"]["prior"] == "these samples" and got["params"]["beta"] == round(beta, 4)
    assert got["in_sample"][:, 2] == pytest.approx(beta / (1 + beta))
    assert got["in_sample"][0, 0] == pytest.approx(1 / (1 + beta))  # user 0 clicked category 0
    assert got["params"]["kl"] == pytest.approx(np.log((1 + beta) / beta), abs=2e-4)  # KL's floor on zeros
    np.testing.assert_allclose(got["cross_validated"], got["in_sample"])


def test_the_cross_validated_counter_never_sees_the_targets_it_predicts():
    """Two users with empty histories, one going to category 0, the other to 1, in two folds: in
    sample the prior is their mean, (0.5, 0.5, 0); cross-validated, each user's prior is the other
    user's target, so each is predicted the other's category."""
    ds, s = _dataset([[], []], [[1, 0, 0], [0, 1, 0]])
    got = counter_tuned_on_samples(ds, s, 3, np.array([0.2, 0.2, 0.6]), kl_per_sample, folds=2)
    np.testing.assert_allclose(got["in_sample"], [[0.5, 0.5, 0], [0.5, 0.5, 0]])
    assert got["params"]["prior"] == "these samples"
    assert got["params"]["kl"] == pytest.approx(np.log(2), abs=2e-4)
    np.testing.assert_allclose(got["cross_validated"], [[0, 1, 0], [1, 0, 0]])


def test_the_last_click_when_the_next_category_is_the_last_clicks():
    """Three users whose next category is their last click's, an hour after the one before: the
    counter leans on the history as far as the grid allows, the smallest beta and the shortest
    half-life (5 minutes: the click before weighs 2 ** -12). With one user, cross-validation has no
    other user to tune on."""
    ds, s = _dataset([[0, 1], [2, 0], [1, 2]], [[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    got = counter_tuned_on_samples(ds, s, 3, np.array([1 / 3, 1 / 3, 1 / 3]), kl_per_sample)
    assert got["params"]["beta"] == round(TUNED_BETAS[0], 4)
    assert (got["params"]["kind"], got["params"]["half_life"]) == ("time", 300.0)
    old, beta = 2.0 ** -12, TUNED_BETAS[0]
    assert got["in_sample"][0] == pytest.approx([(old + beta / 3) / (1 + old + beta),
                                                 (1 + beta / 3) / (1 + old + beta), beta / 3 / (1 + old + beta)])
    one, s1 = _dataset([[0]], [[1, 0, 0]])
    with pytest.raises(ValueError, match="1 user"):
        counter_tuned_on_samples(one, s1, 3, np.array([1 / 3, 1 / 3, 1 / 3]), kl_per_sample)

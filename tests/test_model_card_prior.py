"""A model.json whose ``category_prior`` (the re-ranking's population prior) is not null or an
object of finite non-negative numbers: refused with the reason, at start-up as a one-line error and
at a hot swap while the old model keeps serving. The loader checked ``window`` alone, and the
prior is not part of the version hash, so an edited card loaded, swapped in, and then every
POST /users/{id}/rerank answered 500 (AttributeError: 'list' object has no attribute 'get')."""
from __future__ import annotations

import logging
import os
import shutil

import pytest

from conftest import cli
from tiny_model import with_card
from stream_app import metrics
from stream_app.model_runtime import LoadedModel, ModelError
from stream_app.model_swap import ModelHolder

SHAPE = "null or an object of finite non-negative numbers (category: share)"


@pytest.mark.parametrize("prior, shown", [
    ([0.5, 0.5], "[0.5,0.5]"),
    ({"books": -0.25}, '{"books":-0.25}'),
    ({"books": "0.25"}, '{"books":"0.25"}'),
    ({"books": True}, '{"books":true}'),
    ("uniform", '"uniform"'),
])
def test_a_card_prior_of_another_shape_refuses_the_pair(tiny_model_dir, tmp_path, prior, shown):
    bad = with_card(tiny_model_dir, tmp_path / "bad", category_prior=prior)
    with pytest.raises(ModelError) as err:
        LoadedModel.load(bad)
    assert str(err.value) == f"model at {bad}: model.json category_prior must be {SHAPE}, got {shown}"


def test_null_and_an_object_of_shares_load(tiny_model_dir, tmp_path):
    none = with_card(tiny_model_dir, tmp_path / "none", category_prior=None)
    assert LoadedModel.load(none).card["category_prior"] is None
    shares = {"books": 0, "music": 0.75, "news": 1}  # an int is a number; 0 is a share (the lift floors it)
    ok = with_card(tiny_model_dir, tmp_path / "ok", category_prior=shares)
    assert LoadedModel.load(ok).card["category_prior"] == shares


def test_a_hot_swap_to_it_is_refused_and_the_old_model_keeps_serving(tiny_model_dir, tmp_path, caplog):
    """The edited card keeps the pair's version: the refusal is the only sign of the swap."""
    shutil.copytree(tiny_model_dir, tmp_path / "v1")
    with_card(tiny_model_dir, tmp_path / "bad", category_prior=[0.5, 0.5])
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "v1")
    holder = ModelHolder(str(current), threads=1)
    serving = holder.load_initial()
    refused = metrics.MODEL_REFUSED._value.get()
    (tmp_path / "next").symlink_to(tmp_path / "bad")
    os.replace(tmp_path / "next", current)
    with caplog.at_level(logging.INFO, logger="interest_stream.scoring"):
        assert holder.poll() is False
    assert holder.model is serving
    assert metrics.MODEL_REFUSED._value.get() == refused + 1
    assert [r.getMessage() for r in caplog.records] == [
        f"refused the model at {tmp_path / 'bad'} (still serving {serving.version}): model at {current} -> "
        f"{tmp_path / 'bad'}: model.json category_prior must be {SHAPE}, got [0.5,0.5]"]


@pytest.mark.kafka
def test_the_worker_refuses_it_at_start_in_one_line(env, tiny_model_dir, tmp_path):
    cli(env, "topics", "create")
    bad = with_card(tiny_model_dir, tmp_path / "bad", category_prior=[0.5, 0.5])
    proc = cli(dict(env, INTEREST_MODEL_DIR=str(bad)), "worker", check=False, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: INTEREST_MODEL_DIR: model at {bad}: model.json category_prior must be {SHAPE}, "
                           "got [0.5,0.5]\n")

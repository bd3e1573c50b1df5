"""A model.json whose ``window`` (what training kept) is not an object of integers: refused with
the reason, at start-up as a one-line error and during a hot swap while the old model keeps
serving. It was a traceback when the worker compared it with its own window, after the CLI's check
had passed (the window is not part of the version hash, so an edited card still loads)."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from conftest import cli, wait_for
from tiny_model import with_card
from stream_app.model_runtime import LoadedModel, ModelError
from test_worker_ingest import T0, event
from test_worker_scoring import send, vectors_by_user

pytestmark = pytest.mark.kafka

MESSAGE = ("model.json window must be null or an object of integers (horizon_s, max_events, "
           "profile_retention_s), got '3d'")


def test_a_card_window_that_is_not_an_object_refuses_the_pair(tiny_model_dir, tmp_path):
    bad = with_card(tiny_model_dir, tmp_path / "bad", window="3d")
    with pytest.raises(ModelError) as err:
        LoadedModel.load(bad)
    assert str(err.value) == f"model at {bad}: {MESSAGE}"
    with pytest.raises(ModelError):
        LoadedModel.load(with_card(tiny_model_dir, tmp_path / "bad2", window={"horizon_s": "1d"}))
    LoadedModel.load(with_card(tiny_model_dir, tmp_path / "none", window=None))  # older exports write null


def test_the_worker_refuses_it_at_start_and_keeps_serving_the_old_model_at_a_swap(
        env, workers, tiny_model_dir, session_dir, tmp_path):
    from tiny_model import build_tiny_model_dir

    cli(env, "topics", "create")
    bad = with_card(tiny_model_dir, tmp_path / "bad", window="3d")
    proc = cli(dict(env, INTEREST_MODEL_DIR=str(bad)), "worker", check=False, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == f"Error: INTEREST_MODEL_DIR: model at {bad}: {MESSAGE}\n"

    v2_dir = session_dir / "tiny-model-2"  # another version (as test_worker_scoring builds it)
    if not (v2_dir / "model.json").exists():
        build_tiny_model_dir(v2_dir, seed=1)
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(tiny_model_dir, root / "v1")
    with_card(v2_dir, root / "v2", window="3d")
    current = root / "current"
    current.symlink_to("v1")
    w = workers(INTEREST_MODEL_DIR=str(current))
    v1 = LoadedModel.load(root / "v1").version
    send(env, [event(1, "u1", "click", T0)])
    wait_for(lambda: vectors_by_user(env, expect=1).get("u1"), what="a vector of v1")
    tmp = root / "current.tmp"
    tmp.symlink_to("v2")
    os.replace(tmp, current)
    wait_for(lambda: "refused the model" in w.log(200), what="the refusal")
    assert f"{MESSAGE}" in w.log(200)
    send(env, [event(2, "u1", "click", T0 + 60_000)])
    wait_for(lambda: len(vectors_by_user(env, expect=2).get("u1", [])) >= 2, what="a second vector")
    assert {v["model_version"] for v in vectors_by_user(env, expect=2)["u1"]} == {v1}
    assert w.get("/health")[1]["model_version"] == v1
    time.sleep(2)  # two more polls: nothing else happens
    assert "Traceback" not in w.log(400) and w.proc.poll() is None

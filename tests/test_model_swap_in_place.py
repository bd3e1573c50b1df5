"""A new model copied into the served directory file by file, instead of re-pointing a symlink:
refused while the pair is mixed, served once it is whole. The worker used to watch model.json
alone, so when model.onnx came second it never looked again and kept serving the old model
after saying that the (mixed) pair was refused."""
from __future__ import annotations

import shutil
import time

import pytest

from conftest import cli, wait_for
from stream_app.model_runtime import LoadedModel
from test_worker_ingest import T0, event
from test_worker_scoring import send, vectors_by_user

pytestmark = pytest.mark.kafka


def test_a_pair_copied_in_place_json_first_is_served_once_the_graph_follows(env, workers, tiny_model_dir,
                                                                              session_dir, tmp_path):
    from tiny_model import build_tiny_model_dir

    v2_dir = session_dir / "tiny-model-2"  # another version (as test_worker_scoring builds it)
    if not (v2_dir / "model.json").exists():
        build_tiny_model_dir(v2_dir, seed=1)
    v1, v2 = LoadedModel.load(tiny_model_dir).version, LoadedModel.load(v2_dir).version
    served = tmp_path / "model"
    shutil.copytree(tiny_model_dir, served)
    cli(env, "topics", "create")
    w = workers(INTEREST_MODEL_DIR=str(served))
    assert w.get("/health")[1]["model_version"] == v1
    shutil.copy(v2_dir / "model.json", served / "model.json")
    wait_for(lambda: "refused the model" in w.log(200), what="the mixed pair refused")
    assert w.get("/health")[1]["model_version"] == v1
    time.sleep(1.5)  # a poll interval later, the graph follows
    shutil.copy(v2_dir / "model.onnx", served / "model.onnx")
    wait_for(lambda: w.get("/health")[1]["model_version"] == v2, timeout=20, what="the whole new pair served")
    send(env, [event(1, "u1", "click", T0)])
    wait_for(lambda: [v["model_version"] for v in vectors_by_user(env, expect=1, timeout=2).get("u1", [])] == [v2],
             what="a vector of the new model")

"""The warning when a model was trained on another window than the worker keeps, the first
model's load against a deploy that re-points the link meanwhile, and a pair that cannot be read."""
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from stream_app.model_runtime import LoadedModel, ModelError
from stream_app.model_swap import ModelHolder, window_mismatch
from tiny_model import edit_card, with_card


def test_window_mismatch_is_reported_with_both_windows():
    card = {"window": {"horizon_s": 259200, "max_events": 128}}
    assert window_mismatch(card, 259200, 128) is None
    msg = window_mismatch(card, 86400, 128)
    assert msg == ("the model was trained on windows of 259200 s / 128 events, the worker keeps "
                   "86400 s / 128 events (INTEREST_HORIZON_S / INTEREST_MAX_EVENTS): its inputs "
                   "differ from training")
    assert window_mismatch({}, 86400, 128) is None  # cards without a window: nothing to compare


def test_the_first_models_error_names_its_setting(tmp_path):
    """`faust -A stream_app.app worker` stopped with "model at <path>: no such directory", naming no
    setting (`interest-stream worker` says the same, before Faust starts)."""
    with pytest.raises(ModelError) as err:
        ModelHolder(str(tmp_path / "no-model"), threads=1).load_initial()
    assert str(err.value) == f"INTEREST_MODEL_DIR: model at {tmp_path / 'no-model'}: no such directory"


def two_pairs(tmp_path):
    """Two deployed pairs, v1 and v2 (each file holding its version), and the link ``current``
    naming v1."""
    for v in ("v1", "v2"):
        (tmp_path / v).mkdir()
        for name in ("model.json", "model.onnx"):
            (tmp_path / v / name).write_text(v)
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "v1")
    return current


def test_a_pair_deployed_while_the_first_model_loads_is_loaded_at_the_next_poll(tmp_path, monkeypatch):
    """The link is re-pointed (a deploy) while the worker loads the model it starts with. Before,
    the worker noted the new target as seen once the old one was loaded, and served the old model
    until the next deploy."""
    current = two_pairs(tmp_path)

    def load(path, threads=1):
        resolved = os.path.realpath(path)
        if resolved.endswith("v1"):  # the deploy, as the README says: a new link moved over the old
            (tmp_path / "next").symlink_to(tmp_path / "v2")
            os.replace(tmp_path / "next", current)
        return SimpleNamespace(version=os.path.basename(resolved), resolved_dir=resolved, card={})

    monkeypatch.setattr(LoadedModel, "load", staticmethod(load))
    holder = ModelHolder(str(current), threads=1)
    assert holder.load_initial().version == "v1"
    assert holder.poll() is True and holder.version == "v2"


def test_a_pair_that_cannot_be_read_is_refused_and_the_old_model_keeps_serving(tiny_model_dir, tmp_path, monkeypatch,
                                                                               caplog):
    """A deploy re-points the link to a pair whose model.onnx the worker may not read (another
    user's file): refused, as a bad pair is, and loaded once its permissions are fixed. Before,
    the PermissionError left the poll and stopped the worker."""
    from tiny_model import build_tiny_model_dir

    shutil.copytree(tiny_model_dir, tmp_path / "v1")
    build_tiny_model_dir(tmp_path / "v2", seed=1)
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "v1")
    holder = ModelHolder(str(current), threads=1)
    serving = holder.load_initial().version
    read_bytes = Path.read_bytes

    def forbidden(self):
        if self == tmp_path / "v2" / "model.onnx":
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", forbidden)
    (tmp_path / "next").symlink_to(tmp_path / "v2")
    os.replace(tmp_path / "next", current)
    with caplog.at_level(logging.ERROR, logger="interest_stream.scoring"):
        assert holder.poll() is False
    assert holder.version == serving
    assert f"model.onnx cannot be read: [Errno 13] Permission denied: '{tmp_path / 'v2' / 'model.onnx'}'" in caplog.text
    with pytest.raises(ModelError, match="model.onnx cannot be read"):  # worker, replay: a one-line error
        LoadedModel.load(str(current))
    monkeypatch.setattr(Path, "read_bytes", read_bytes)  # the operator fixes the permissions
    os.chmod(tmp_path / "v2" / "model.onnx", 0o644)  # (mtime and size as they were)
    assert holder.poll() is True and holder.version == LoadedModel.load(str(tmp_path / "v2")).version != serving


def test_a_card_corrected_in_place_is_taken_up_with_its_window_warning(tiny_model_dir, tmp_path, caplog,
                                                                        monkeypatch):
    """model.json rewritten with the same graph and encoding (the version stays): before, the
    worker loaded it at the next poll, saw its own version and kept the old card. A poll with
    nothing changed loads nothing (the files' stat alone)."""
    shutil.copytree(tiny_model_dir, tmp_path / "v1")
    kept = (86400, 128, 31536000)  # the worker's window: the tiny model's (tests/tiny_model.py)
    holder = ModelHolder(str(tmp_path / "v1"), threads=1, window=kept)
    version = holder.load_initial().version
    loads = []
    real_load = LoadedModel.load
    monkeypatch.setattr(LoadedModel, "load", lambda path, threads=1: loads.append(path) or real_load(path, threads))
    assert holder.poll() is False and holder.poll() is False and loads == []
    window = {"horizon_s": 3600, "max_events": 64, "profile_retention_s": 31536000}
    edit_card(tmp_path / "v1", window=window)
    with caplog.at_level(logging.INFO, logger="interest_stream.scoring"):
        assert holder.poll() is True
        assert holder.poll() is False
    assert holder.version == version and holder.model.window == window and len(loads) == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"model swapped: {version} -> {version} (same graph and encoding, another model.json)",
        "the model was trained on windows of 3600 s / 64 events, the worker keeps 86400 s / 128 events "
        "(INTEREST_HORIZON_S / INTEREST_MAX_EVENTS): its inputs differ from training"]


def test_the_holder_keeps_the_prior_of_every_model_it_served(tiny_model_dir, tmp_path):
    """Re-ranking blends a vector against its own model's prior (stream_app.rerank.vector_prior),
    also once another model serves; a card corrected in place (same version) replaces its prior."""
    from tiny_model import build_tiny_model_dir

    with_card(tiny_model_dir, tmp_path / "v1", category_prior={"books": 1.0})
    build_tiny_model_dir(tmp_path / "v2", seed=1)
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "v1")
    holder = ModelHolder(str(current), threads=1)
    v1 = holder.load_initial().version
    (tmp_path / "next").symlink_to(tmp_path / "v2")
    os.replace(tmp_path / "next", current)
    assert holder.poll() is True
    v2 = holder.version
    assert holder.priors == {v1: {"books": 1.0}, v2: LoadedModel.load(str(tmp_path / "v2")).card.get("category_prior")}
    edit_card(tmp_path / "v2", category_prior={"tech": 1.0})
    assert holder.poll() is True and holder.priors[v2] == {"tech": 1.0} and holder.priors[v1] == {"books": 1.0}


def test_a_refused_card_put_right_is_served_and_the_serving_pair_again_is_no_swap(tiny_model_dir, tmp_path, caplog):
    """A deploy of the serving pair with a bad card (same version) is refused; undone, nothing is
    swapped or logged; the bad card corrected in place is served. Before, the corrected card was
    never taken up (same version as the one serving)."""
    shutil.copytree(tiny_model_dir, tmp_path / "v1")
    with_card(tiny_model_dir, tmp_path / "v1-fixed", category_prior=[0.5])
    current = tmp_path / "current"
    current.symlink_to("v1")
    holder = ModelHolder(str(current), threads=1)
    serving = holder.load_initial()

    def point(target):
        (tmp_path / "next").symlink_to(target)
        os.replace(tmp_path / "next", current)

    with caplog.at_level(logging.INFO, logger="interest_stream.scoring"):
        point("v1-fixed")
        assert holder.poll() is False and holder.model is serving
        assert "category_prior must be" in caplog.text and "refused the model" in caplog.text
        caplog.clear()
        point("v1")  # the deploy undone: the serving pair again
        assert holder.poll() is False and holder.model is serving
        assert caplog.records == []
        point("v1-fixed")
        assert holder.poll() is False  # still refused
        caplog.clear()
        edit_card(tmp_path / "v1-fixed", category_prior={"a": 1.0})  # put right in place
        assert holder.poll() is True
    assert holder.model.resolved_dir == str(tmp_path / "v1-fixed") and holder.version == serving.version
    assert holder.model.card["category_prior"] == {"a": 1.0}
    assert [r.getMessage() for r in caplog.records] == [
        f"model swapped: {serving.version} -> {serving.version} (same graph and encoding, another model.json)"]


def test_the_model_interest_stream_worker_loaded_is_served_and_a_deploy_meanwhile_loaded_at_the_poll(
        tmp_path, monkeypatch):
    """`interest-stream worker` loads the first model before Faust starts (ModelHolder.load_first)
    and hands it over (``preloaded``), instead of the app's start loading the pair a second time.
    The link re-pointed in between (a deploy) is loaded at the first poll, as for a deploy during
    load_initial's own load; a model the command loaded from another path is not served."""
    current = two_pairs(tmp_path)
    loads = []

    def load(path, threads=1):
        resolved = os.path.realpath(path)
        loads.append(resolved)
        return SimpleNamespace(version=os.path.basename(resolved), resolved_dir=resolved, card={}, path=str(path),
                               threads=threads)

    monkeypatch.setattr(LoadedModel, "load", staticmethod(load))
    first = ModelHolder.load_first(str(current), 1)
    (tmp_path / "next").symlink_to(tmp_path / "v2")
    os.replace(tmp_path / "next", current)  # a deploy between the command's load and the start
    holder = ModelHolder(str(current), threads=1)
    holder.preloaded = first
    served = holder.load_initial()
    assert loads == [str(tmp_path / "v1")]  # loaded once
    assert served is first[1] and holder.version == "v1"
    assert holder.poll() is True and holder.version == "v2"
    other = ModelHolder(str(tmp_path / "v1"), threads=1)
    other.preloaded = ModelHolder.load_first(str(current), 1)  # (v2, by another path)
    assert other.load_initial().path == str(tmp_path / "v1") and other.version == "v1"

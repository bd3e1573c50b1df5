"""Export (checkpoint -> model.onnx + model.json) and the worker's model runtime, on a tiny model.

One tiny checkpoint is trained per module (seconds); exports of it are shared. Expected values are
computed independently: PyTorch runs the checkpoint itself, the version hash is recomputed here
with hashlib from the files, the probabilities' sums are checked against 1.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_model (conftest does it too)

from tiny_model import build_tiny_checkpoint  # noqa: E402

from interest_core.artifacts import PROFILE_INPUT  # noqa: E402
from interest_core.encoding import Encoder, pad_right  # noqa: E402
from models.simulate import CATEGORIES  # noqa: E402
from interest_core.window import WindowEvent  # noqa: E402
from stream_app.model_runtime import LoadedModel, ModelError  # noqa: E402

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export import onnx_export as ox  # noqa: E402
from export.cli import export_cmd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint dir, torch model, encoder, validation windows, seqs, targets, profiles (dicts),
    profile inputs)."""
    d = tmp_path_factory.mktemp("tiny") / "ckpt"
    return build_tiny_checkpoint(d, seed=0)


@pytest.fixture(scope="module")
def fp32_dir(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32")
    ox.export_checkpoint(tiny[0], out, **QUIET)
    return out


@pytest.fixture(scope="module")
def int8_dir(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8")
    ckpt, _, _, _, vseqs, vtargets, _, vprof = tiny
    ox.export_checkpoint(ckpt, out, int8=True, validation=(vseqs, vprof, vtargets, "tiny validation"), **QUIET)
    return out


def torch_probs(model, ids: np.ndarray, mask: np.ndarray, prof: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(prof))[0]
        return out.numpy().astype(np.float64)


# --- the graph --------------------------------------------------------------------------
def test_graph_passes_checker_with_named_dynamic_axes(fp32_dir, tiny):
    path = fp32_dir / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    m = onnx.load(str(path))
    assert [i.name for i in m.graph.input] == ["input_ids", "attention_mask", "profile"]
    assert [o.name for o in m.graph.output] == ["probs"]
    for i in m.graph.input[:2]:
        assert [d.dim_param for d in i.type.tensor_type.shape.dim] == ["batch", "sequence"]
    prof = m.graph.input[2].type.tensor_type.shape.dim
    assert ([prof[0].dim_param, prof[1].dim_value] == ["batch", len(tiny[2].profile_scales) * len(CATEGORIES)]
            == ["batch", 60])
    assert {o.version for o in m.opset_import if o.domain in ("", "ai.onnx")} == {ox.OPSET}


def test_each_gelu_is_one_node_of_the_graph(fp32_dir, tiny):
    """At opset 18 the backbone's tanh GELU was written out in elementwise nodes (Pow, Tanh, ...)
    over every token's activations, and scoring took 1.2x the time; opset 20 has it as one Gelu."""
    model = tiny[1]
    nodes = onnx.load(str(fp32_dir / "model.onnx")).graph.node
    gelus = [n for n in nodes if n.op_type == "Gelu"]
    approximate = sorted(a.s.decode() for n in gelus for a in n.attribute if a.name == "approximate")
    # a full layer and the last layer at its last position, both tanh; the per-category network's exact GELU
    assert model.backbone.config.n_layer == 2 and model.config.correction == "full"
    assert approximate == ["none", "tanh", "tanh"]
    assert not [n.op_type for n in nodes if n.op_type in ("Tanh", "Pow", "Erf")]


def test_ort_matches_torch_on_unseen_shapes_with_right_padding(fp32_dir, tiny):
    model, enc = tiny[1], tiny[2]
    sess = ort.InferenceSession(str(fp32_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(42)
    for b, t in [(1, 2), (1, enc.max_len), (5, 23), (33, 3), (6, enc.max_len)]:
        lens = rng.integers(2, t + 1, size=b)
        lens[0] = t
        seqs = [[enc.bos_id] + rng.integers(4, enc.vocab_size, size=n - 2).tolist() + [enc.end_id] for n in lens]
        ids, mask = pad_right(seqs, 0)
        prof = ox.random_profiles(rng, enc, b)
        got = sess.run(None, {"input_ids": ids, "attention_mask": mask, "profile": prof})[0]
        want = torch_probs(model, ids, mask, prof)
        assert got.shape == (b, len(CATEGORIES))
        assert np.abs(got - want).max() < 1e-4, (b, t)
        # right padding: a row's answer does not depend on what it is padded to
        alone = sess.run(None, {"input_ids": ids[-1:, : lens[-1]], "attention_mask": mask[-1:, : lens[-1]],
                                "profile": prof[-1:]})[0]
        assert np.abs(alone[0] - got[-1]).max() < 1e-5


def test_head_is_trained_so_parity_exercises_the_backbone(tiny):
    model = tiny[1]
    assert float(model.head.weight.detach().abs().max()) > 1e-3


# --- model.json -------------------------------------------------------------------------
def test_model_json_fields(fp32_dir, tiny):
    ckpt, model, enc = tiny[:3]
    meta = json.loads((fp32_dir / "model.json").read_text())
    assert meta["categories"] == list(CATEGORIES)
    assert meta["max_len"] == enc.max_len == 64
    assert meta["quantized"] is False
    assert meta["opset"] == ox.OPSET
    assert list(meta["inputs"]) == ["input_ids", "attention_mask", "profile"] and list(meta["outputs"]) == ["probs"]
    assert meta["inputs"]["profile"] == {"dtype": "float32", "shape": ["batch", 5 * len(CATEGORIES)]}  # 5 scales
    assert meta["encoding"] == enc.to_spec() and isinstance(meta["encoding"]["tokenizer"], str)
    card = json.loads((ckpt / "model_card.json").read_text())
    assert meta["metrics"] == card["metrics"]
    assert meta["source"]["checkpoint"] == str(ckpt.resolve())
    assert meta["parity"]["max_abs_diff"] < 1e-4 and len(meta["parity"]["shapes"]) >= 4
    assert meta["window"] == card["window"] == {"horizon_s": 86_400, "max_events": 128,
                                                "profile_retention_s": 365 * 86_400}
    # version: sha256 of the graph bytes + canonical JSON of the spec, recomputed independently
    h = hashlib.sha256((fp32_dir / "model.onnx").read_bytes())
    h.update(b"\0")
    h.update(json.dumps(meta["encoding"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    assert meta["version"] == h.hexdigest()[:16]


def test_version_stable_for_same_weights_and_changes_with_weights(tiny, fp32_dir, tmp_path):
    ckpt = tiny[0]
    again = ox.export_checkpoint(ckpt, tmp_path / "again", **QUIET)
    assert again["version"] == json.loads((fp32_dir / "model.json").read_text())["version"]

    from models.model import load_checkpoint, save_checkpoint

    model, enc, card = load_checkpoint(ckpt)
    with torch.no_grad():
        model.head.bias.add_(0.01)
    save_checkpoint(model, enc, card, tmp_path / "ckpt2")
    other = ox.export_checkpoint(tmp_path / "ckpt2", tmp_path / "other", **QUIET)
    assert other["version"] != again["version"]


def test_export_falls_back_to_the_plain_backbone_when_the_fast_graph_disagrees(tiny, tmp_path, monkeypatch):
    real = ox._last_position_backbone

    def broken(gpt2, *args):
        fast = real(gpt2, *args)
        fast.scale_attn = False  # wrong attention scale: a graph that no longer matches PyTorch
        return fast

    monkeypatch.setattr(ox, "_last_position_backbone", broken)
    logs = []
    meta = ox.export_checkpoint(tiny[0], tmp_path / "out", log=logs.append)
    assert meta["parity"]["backbone"] == "full" and meta["parity"]["max_abs_diff"] < 1e-4
    assert any("last-position graph was refused (parity check failed" in m for m in logs)


def test_default_export_uses_the_last_position_graph(fp32_dir):
    assert json.loads((fp32_dir / "model.json").read_text())["parity"]["backbone"] == "last-position"


# --- int8 -------------------------------------------------------------------------------
def test_int8_export_records_quantization_and_accuracy_change(int8_dir, fp32_dir, tiny):
    meta = json.loads((int8_dir / "model.json").read_text())
    assert meta["quantized"] is True
    rep = meta["int8_vs_fp32"]
    assert rep["samples"] == len(tiny[4]) > 0
    for key in ("kl_fp32", "kl_int8", "max_abs_diff"):
        assert np.isfinite(rep[key])
    # int8 weights move a probability by 0.0065 on average on the tiny model (torch 2.15, onnxruntime
    # 1.32: 83 samples, the largest 0.082, top-1 agreement 0.94, KL 0.002 lower): a small model's
    # per-tensor scales make a few large moves, the average and the KL are what must stay small
    assert 0 < rep["mean_abs_diff"] < 0.02 and rep["max_abs_diff"] < 0.15
    assert abs(rep["kl_int8"] - rep["kl_fp32"]) < 0.05
    ops = {n.op_type for n in onnx.load(str(int8_dir / "model.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops
    m8, m32 = LoadedModel.load(int8_dir), LoadedModel.load(fp32_dir)
    assert m8.quantized and not m32.quantized and m8.version != m32.version
    wins, profs = tiny[3], tiny[6]
    diff = np.abs(m8.predict(wins, profs) - m32.predict(wins, profs))
    assert diff.mean() < 0.02 and diff.max() < 0.15


def test_the_quantizer_gets_the_graph_without_the_weights_value_info_and_leaves_no_copy(fp32_dir, int8_dir,
                                                                                         tmp_path, monkeypatch):
    """ONNX Runtime's quantizer before 1.32 transposed a Gemm's weight in place while the graph
    still listed its old shape in value_info, and refused the graph (`make test-lowest`, at 1.18):
    the quantizer's input lists no weight there, keeps every other entry, and is removed after,
    also when the quantizer fails."""
    import onnx
    import onnxruntime.quantization as oq

    graph = onnx.load(str(fp32_dir / "model.onnx"))
    weights = {w.name for w in graph.graph.initializer}
    listed = [v.name for v in graph.graph.value_info]
    assert weights & set(listed)  # what torch's exporter writes, and what the mend is for
    given = []

    def quantizer(src, dst, **kw):
        given.append([v.name for v in onnx.load(src).graph.value_info])
        raise RuntimeError("the quantizer failed")

    monkeypatch.setattr(oq, "quantize_dynamic", quantizer)
    with pytest.raises(RuntimeError, match="the quantizer failed"):
        ox.quantize_int8(fp32_dir / "model.onnx", tmp_path / "q.onnx")
    assert given == [[name for name in listed if name not in weights]]
    assert list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in int8_dir.iterdir()) == ["model.json", "model.onnx"]


# --- failures ---------------------------------------------------------------------------
def test_parity_failure_fails_the_export_with_the_measured_difference(tiny, tmp_path, monkeypatch):
    from click.testing import CliRunner

    monkeypatch.setattr(ox, "PARITY_TOL", -1.0)  # any measured difference is now too large

    def no_fast_graph(gpt2, *args):
        raise ValueError("skipped in this test")  # straight to the plain backbone: one export, not two

    monkeypatch.setattr(ox, "_last_position_backbone", no_fast_graph)
    (tmp_path / "out").mkdir()  # (one the export makes is removed: the test below)
    res = CliRunner().invoke(export_cmd, [str(tiny[0]), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1
    assert "parity check failed: max |ONNX Runtime - PyTorch| =" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "out" / "model.onnx").exists() and not (tmp_path / "out" / "model.json").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no temporary files left


def test_cli_refuses_bad_inputs_with_one_line_errors(tmp_path, tiny):
    from click.testing import CliRunner

    run = CliRunner().invoke
    res = run(export_cmd, [str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no such checkpoint directory" in res.output
    (tmp_path / "empty").mkdir()
    res = run(export_cmd, [str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "not a checkpoint directory (missing config.json)" in res.output
    res = run(export_cmd, [str(tiny[0]), "--out", str(tmp_path / "o"), "--int8"])
    assert res.exit_code == 1 and "--int8 needs --data" in res.output
    res = run(export_cmd, [str(tiny[0]), "--out", str(tmp_path / "o"), "--data", "x.jsonl"])
    assert res.exit_code == 2 and "--data is only used with --int8" in res.output
    res = run(export_cmd, [str(tiny[0]), "--out", str(tmp_path / "o"), "--int8", "--data", str(tmp_path / "x.jsonl")])
    assert res.exit_code == 1 and "x.jsonl: no such data file" in res.output
    (tmp_path / "file").write_text("")
    res = run(export_cmd, [str(tiny[0]), "--out", str(tmp_path / "file")])
    assert res.exit_code == 1 and "cannot create the output directory" in res.output
    bad = tmp_path / "badckpt"
    shutil.copytree(tiny[0], bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 64)
    res = run(export_cmd, [str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "cannot load the checkpoint" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_python_m_export_missing_dir_is_a_clean_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "export", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [f"Error: {tmp_path / 'missing'}: no such checkpoint directory"]


def test_worker_side_imports_need_no_torch():
    code = ("import sys, export.cli, stream_app.model_runtime; "
            "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


# --- LoadedModel ------------------------------------------------------------------------
def test_loaded_model_attributes_and_symlink_resolution(fp32_dir, tmp_path):
    link = tmp_path / "current"
    os.symlink(fp32_dir, link)
    m = LoadedModel.load(link, threads=1)
    meta = json.loads((fp32_dir / "model.json").read_text())
    assert m.resolved_dir == os.path.realpath(fp32_dir)
    assert m.version == meta["version"] and m.categories == tuple(CATEGORIES)
    assert m.quantized is False and m.max_len == 64 and m.encoder.categories == tuple(CATEGORIES)
    assert m.window == {"horizon_s": 86_400, "max_events": 128, "profile_retention_s": 365 * 86_400}


def test_predict_matches_pytorch_on_windows_in_input_order(fp32_dir, tiny):
    _, model, enc, windows, _, _, profiles, prof_in = tiny
    m = LoadedModel.load(fp32_dir)
    wins = list(windows) + [[]]  # an empty window is scored too: [BOS] [END]
    profs = list(profiles) + [None]
    pin = np.concatenate([prof_in, np.zeros((1, prof_in.shape[1]), np.float32)])
    got = m.predict(wins, profs, batch_size=7)
    seqs = [enc.encode(w) for w in wins]
    want = np.concatenate([torch_probs(model, *pad_right([s], 0), pin[i : i + 1])  # one by one, no padding
                           for i, s in enumerate(seqs)])
    assert got.shape == (len(wins), len(CATEGORIES)) and got.dtype == np.float64
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(got.sum(1) - 1).max() < 1e-4
    assert np.abs(m.predict(wins, profs, batch_size=256) - got).max() < 1e-5
    assert np.abs(m.predict(wins, profs, batch_size=256, max_batch_tokens=40) - got).max() < 1e-5  # tiny batches
    assert np.abs(m.predict_ids(seqs, pin) - got).max() < 1e-5
    assert m.predict([]).shape == (0, len(CATEGORIES))
    # the profile matters: the same windows without it give other answers
    assert np.abs(m.predict(wins) - got).max() > 1e-3


def test_plan_cuts_runs_within_the_token_budget_and_gather_restores_input_order(fp32_dir, tiny):
    """The worker pads a batch's runs in the event loop (``plan``), runs them in the scoring thread
    (``run``) and puts the rows back in order (``gather``): each row the answer for its sequence
    scored alone, and every run within its rows and padded tokens (rows x its longest), sorted by
    length."""
    _, _, enc, windows, _, _, _, prof_in = tiny
    m = LoadedModel.load(fp32_dir)
    seqs = [enc.encode(w) for w in windows]
    lens = [len(x) for x in seqs]
    runs = m.plan(seqs, prof_in, batch_size=3, max_batch_tokens=2 * max(lens))
    assert runs.n == len(seqs)
    assert sorted(int(i) for idx in runs.rows for i in idx) == list(range(len(seqs)))  # each row once
    for idx, feed in zip(runs.rows, runs.feeds, strict=True):
        longest = max(lens[i] for i in idx)
        assert 1 <= len(idx) <= 3 and len(idx) * longest <= 2 * max(lens)
        assert feed["input_ids"].shape == feed["attention_mask"].shape == (len(idx), longest)
        assert [int(x) for x in feed["attention_mask"].sum(1)] == [lens[i] for i in idx]
        np.testing.assert_array_equal(feed[PROFILE_INPUT], prof_in[idx])
    assert [lens[i] for idx in runs.rows for i in idx] == sorted(lens)  # shortest first: less padding
    outputs = m.run(runs)
    assert [o.shape for o in outputs] == [(len(idx), len(CATEGORIES)) for idx in runs.rows]
    alone = np.concatenate([m.predict_ids([x], prof_in[i:i + 1]) for i, x in enumerate(seqs)])  # no reordering
    assert np.abs(m.gather(runs, outputs) - alone).max() < 1e-5
    one = m.plan(seqs, prof_in, batch_size=256, max_batch_tokens=1)  # a budget below one row: a row a run
    assert [len(idx) for idx in one.rows] == [1] * len(seqs)
    assert m.plan([], None).n == 0 and m.gather(m.plan([], None), []).shape == (0, len(CATEGORIES))


def _copy_pair(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_load_refuses_missing_dir(tmp_path):
    with pytest.raises(ModelError, match="no such directory"):
        LoadedModel.load(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.json").write_text("{}")
    with pytest.raises(ModelError, match="missing model.onnx"):
        LoadedModel.load(tmp_path / "half")


def test_load_names_what_is_wrong_with_a_file_it_cannot_use(fp32_dir, tmp_path, monkeypatch):
    """A directory the worker may not enter was a PermissionError traceback from the worker's start and
    `replay` (Path.is_file raises it); a link loop was "no such directory"; a model.json that is a
    directory or a FIFO was "missing model.json"; an unreadable one "not readable JSON"."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ModelError, match=r"loop: a symbolic link to nothing \(dangling, or a loop of links\)$"):
        LoadedModel.load(tmp_path / "loop")
    d = _copy_pair(fp32_dir, tmp_path / "d")
    (d / "model.json").unlink()
    (d / "model.json").mkdir()
    with pytest.raises(ModelError, match=r"model.json is not a file \(a directory\)$"):
        LoadedModel.load(d)
    (d / "model.json").rmdir()
    os.mkfifo(d / "model.json")
    with pytest.raises(ModelError, match=r"model.json is not a file \(not a regular file\)$"):
        LoadedModel.load(d)
    d = _copy_pair(fp32_dir, tmp_path / "shut")
    stat = Path.stat

    def not_allowed(self, *args, **kwargs):  # as a directory the worker's user may not enter (root may)
        if self.parent == d:
            raise PermissionError(13, "Permission denied", str(self))
        return stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", not_allowed)
    with pytest.raises(ModelError) as err:
        LoadedModel.load(d)
    denied = f"[Errno 13] Permission denied: '{d / 'model.json'}'"
    assert str(err.value) == f"model at {d}: model.json cannot be read: {denied}"
    monkeypatch.setattr(Path, "stat", stat)
    monkeypatch.setattr(Path, "read_bytes", lambda self: (_ for _ in ()).throw(PermissionError(13, "Permission denied",
                                                                                                str(self))))
    with pytest.raises(ModelError, match=r"model.json cannot be read: \[Errno 13\] Permission denied"):
        LoadedModel.load(d)


def test_a_failed_test_inference_is_the_one_line_error_alone(fp32_dir, tmp_path, capfd):
    """A pair whose max_len (512) is beyond the graph's positions (64), signed as consistent: its test
    inference fails, and ONNX Runtime wrote its own coloured error line to stderr beside the
    worker's one-line error (and into INTEREST_LOG_FORMAT=json's log, at a hot swap)."""
    from interest_core.artifacts import content_version

    d = _copy_pair(fp32_dir, tmp_path / "long")
    card = json.loads((d / "model.json").read_text())
    card["max_len"] = card["encoding"]["max_len"] = 512
    card["version"] = content_version((d / "model.onnx").read_bytes(), card["encoding"])
    (d / "model.json").write_text(json.dumps(card))
    capfd.readouterr()
    with pytest.raises(ModelError, match="test inference failed: "):
        LoadedModel.load(d)
    assert capfd.readouterr().err == ""


def test_a_checkpoint_of_two_checkpoints_files_is_named_so(tiny, tmp_path):
    """Another checkpoint's encoding.json (48 tokens, the config's 64) failed deep in torch.onnx, in
    11 lines naming no cause; its model.safetensors stopped at "Error(s) in loading state_dict for
    InterestModel:", the mismatch cut off."""
    other = build_tiny_checkpoint(tmp_path / "other", seed=1, max_len=48)[0]
    mixed = shutil.copytree(tiny[0], tmp_path / "enc")
    shutil.copy(other / "encoding.json", mixed / "encoding.json")
    with pytest.raises(ox.ExportError) as err:
        ox.export_checkpoint(mixed, tmp_path / "o1", **QUIET)
    theirs, ours = Encoder.load(other / "encoding.json"), Encoder.load(tiny[0] / "encoding.json")
    assert str(err.value) == (f"{mixed}: cannot load the checkpoint: ValueError: {mixed}: encoding.json (vocab_size "
                              f"{theirs.vocab_size}, k 12, category_offset {theirs.category_offset}, max_len 48) "
                              f"is not the encoding config.json was trained with (vocab_size {ours.vocab_size}, k 12, "
                              f"category_offset {ours.category_offset}, max_len 64): files of different checkpoints")
    mixed = shutil.copytree(tiny[0], tmp_path / "weights")
    shutil.copy(other / "model.safetensors", mixed / "model.safetensors")
    with pytest.raises(ox.ExportError) as err:
        ox.export_checkpoint(mixed, tmp_path / "o2", **QUIET)
    assert str(err.value).startswith(f"{mixed}: cannot load the checkpoint: ValueError: {mixed}: model.safetensors "
                                     "does not fit config.json: size mismatch for "), str(err.value)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_load_refuses_corrupt_graph(fp32_dir, tmp_path):
    d = _copy_pair(fp32_dir, tmp_path / "corrupt")
    (d / "model.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError, match="model.onnx cannot be loaded by ONNX Runtime") as e:
        LoadedModel.load(d)
    assert str(d) in str(e.value)


def test_load_refuses_categories_that_do_not_match_k(fp32_dir, tmp_path):
    d = _copy_pair(fp32_dir, tmp_path / "k")
    meta = json.loads((d / "model.json").read_text())
    meta["categories"] = meta["categories"][:-1]
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="k mismatch: the graph outputs 12 probabilities but model.json lists 11"):
        LoadedModel.load(d)


def test_load_refuses_bad_json_and_mixed_pairs(fp32_dir, int8_dir, tmp_path):
    d = _copy_pair(fp32_dir, tmp_path / "badjson")
    (d / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not readable JSON"):
        LoadedModel.load(d)
    meta = json.loads((fp32_dir / "model.json").read_text())
    del meta["encoding"]
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"lacks required keys \['encoding'\]"):
        LoadedModel.load(d)
    d = _copy_pair(fp32_dir, tmp_path / "mixed")
    shutil.copy(int8_dir / "model.onnx", d / "model.onnx")
    with pytest.raises(ModelError, match="does not match the content hash"):
        LoadedModel.load(d)
    d = _copy_pair(fp32_dir, tmp_path / "dup")
    meta = json.loads((fp32_dir / "model.json").read_text())
    meta["categories"][1] = meta["categories"][0]
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="not unique"):
        LoadedModel.load(d)


def test_a_tokenizer_the_installed_tokenizers_cannot_read_is_named_with_its_version(fp32_dir, tmp_path):
    """tokenizers 0.19 cannot read the tokenizer that training writes with 0.20 or later, and the
    load failed with serde's words alone: "Exception: data did not match any variant of untagged
    enum ModelWrapper at line 1 column 4541". A tokenizer of a model type this one does not know
    stands for a newer one here."""
    import tokenizers

    d = _copy_pair(fp32_dir, tmp_path / "newer")
    meta = json.loads((d / "model.json").read_text())
    tok = json.loads(meta["encoding"]["tokenizer"])
    tok["model"]["type"] = "BPE3"
    meta["encoding"]["tokenizer"] = json.dumps(tok)
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError) as err:
        LoadedModel.load(d)
    assert str(err.value).startswith(
        f"model at {d}: the encoding spec does not rebuild an encoder: ValueError: the query tokenizer cannot be "
        f"read by the installed tokenizers {tokenizers.__version__} (a newer one wrote it, or it is not a "
        "tokenizer): "), str(err.value)


def test_predict_rejects_overlong_sequences(fp32_dir):
    m = LoadedModel.load(fp32_dir)
    with pytest.raises(ValueError, match="1..64 ids"):
        m.predict_ids([[1] * 65])
    long_window = [WindowEvent(1_700_000_000_000 + i * 1000, "click", "books", "b") for i in range(200)]
    assert len(m.encode(long_window)) <= 64  # the encoder keeps the most recent events that fit
    assert m.predict([long_window]).shape == (1, 12)


@pytest.mark.parametrize("length_buckets", [[], [1, 4, 16]])
def test_the_plain_path_exports_to_the_same_interface(tmp_path, length_buckets):
    """When training keeps the plain path (the corrections lost on validation), the checkpoint
    still exports to a pair the worker serves: same inputs and output, parity checked, and the
    worker's predictions are the plain path's; also with its weights per history length."""
    from tiny_model import TINY

    ckpt, model, enc, wins, _, _, profs, prof_in = build_tiny_checkpoint(
        tmp_path / "ckpt", seed=1, steps=10,
        model_config={**TINY, "correction": "none", "length_buckets": length_buckets})
    assert model.config.correction == "none"
    if length_buckets:  # trained away from zero: a graph without them would differ
        assert float(model.log_w_length.detach().abs().max()) > 0.01
    meta = ox.export_checkpoint(ckpt, tmp_path / "out", **QUIET)
    assert list(meta["inputs"]) == ["input_ids", "attention_mask", "profile"] and list(meta["outputs"]) == ["probs"]
    assert meta["model"]["correction"] == "none" and meta["parity"]["max_abs_diff"] < 1e-4
    m = LoadedModel.load(tmp_path / "out")
    got = m.predict(wins, profs)
    ids, mask = pad_right([enc.encode(w) for w in wins], enc.pad_id)
    want = torch_probs(model, ids, mask, prof_in)
    assert np.abs(got - want).max() < 1e-4


def test_an_item_lift_travels_in_model_json_and_the_worker_adds_it(tiny, fp32_dir, tmp_path):
    """A checkpoint whose encoding carries an item lift: export copies it into model.json (and the
    version changes), the worker adds it to the graph's answer exactly as evaluation does."""
    from interest_core.artifacts import ENCODING_FILE
    from interest_core.item_lift import ItemLift, apply
    from models.item_lift import served

    ckpt, model, enc, windows, _, _, profiles, prof_in = tiny
    d = Path(shutil.copytree(ckpt, tmp_path / "ckpt"))
    items = sorted({e.item for w in windows for e in w if e.item is not None})
    v = np.zeros(enc.k)
    v[3] = 1.0  # every item lifts the fourth category by 1 in logits: a window's mean lift is v
    lifted = enc.with_item_lift(ItemLift(enc.categories, 20, {x: v for x in items}))
    lifted.save(d / ENCODING_FILE)
    out = tmp_path / "pair"
    ox.export_checkpoint(d, out, **QUIET)
    meta = json.loads((out / "model.json").read_text())
    assert meta["encoding"]["version"] == 4 and len(meta["encoding"]["item_lift"]["items"]) == len(items)
    assert meta["version"] != json.loads((fp32_dir / "model.json").read_text())["version"]

    m, plain = LoadedModel.load(out), LoadedModel.load(fp32_dir)
    wins = list(windows) + [[]]
    profs = list(profiles) + [None]
    has_item = np.array([any(e.item is not None and e.type != "search" and e.category in enc.categories for e in w)
                         for w in wins])
    assert has_item.sum() > 10 and not has_item[-1]
    base = plain.predict(wins, profs)
    want = np.where(has_item[:, None], apply(base, np.tile(v, (len(wins), 1))), base)
    got = m.predict(wins, profs)
    assert np.abs(got - want).max() < 1e-6
    assert np.abs(got[has_item, 3] - base[has_item, 3]).min() > 1e-3  # the lift moved every lifted window
    # evaluation's path: PyTorch's graph, then the same lift
    pin = np.concatenate([prof_in, np.zeros((1, prof_in.shape[1]), np.float32)])
    graph = np.concatenate([torch_probs(model, *pad_right([enc.encode(w)], 0), pin[i:i + 1])
                            for i, w in enumerate(wins)])
    assert np.abs(served(lifted, graph, wins) - got).max() < 1e-4


def test_an_int8_export_whose_log_cannot_be_measured_on_stops_before_exporting(tmp_path, tiny, monkeypatch):
    """The validation samples were built after the fp32 export (6 s on a real model), so a log or a
    card they cannot come from was said only then, and left the --out it had made, empty."""
    from click.testing import CliRunner

    log = tmp_path / "log.jsonl"
    log.write_text("")
    out = tmp_path / "new" / "o"
    messages = []
    with pytest.raises(ox.ExportError) as err:
        ox.export_checkpoint(tiny[0], out, int8=True, data=str(log), log=messages.append)
    assert str(err.value) == ("the checkpoint's model card records no data split (split.data_config, t1, t2): "
                              "cannot rebuild its validation split for the int8 comparison")
    assert messages == [] and not out.exists()  # nothing exported, no directory made
    res = CliRunner().invoke(export_cmd, [str(tiny[0]), "--out", str(out), "--int8", "--data", str(log)])
    assert res.exit_code == 1 and not out.exists()
    # a card with its split, and a log whose validation period holds no sample
    monkeypatch.setattr(ox, "validation_samples", lambda *args: ([], [], None, ""))
    with pytest.raises(ox.ExportError) as err:
        ox.export_checkpoint(tiny[0], out, int8=True, data=str(log), log=messages.append)
    assert str(err.value) == f"{log}: the validation split has no samples to measure int8 against fp32"
    assert messages == [] and not out.exists()


def test_a_failed_export_removes_the_directory_it_made_and_keeps_one_it_found(tmp_path, tiny, monkeypatch):
    """Both graphs fail after writing part of the temporary file (as torch.onnx.export can): the
    directory `export` made is removed, one it found is left, emptied of its temporary file. (The
    failure stands in for torch's exporter, whose four runs took this test 39 s.)"""
    def half_written(model, encoder, path, last_position, opset):
        Path(path).write_bytes(b"\x08\x07")
        raise RuntimeError("the exporter stopped\nits trace")

    monkeypatch.setattr(ox, "export_graph", half_written)
    for out, existed in ((tmp_path / "made", False), (tmp_path / "found", True)):
        if existed:
            out.mkdir()
        with pytest.raises(ox.ExportError) as err:
            ox.export_checkpoint(tiny[0], out, **QUIET)
        assert str(err.value) == "torch.onnx.export failed: RuntimeError: the exporter stopped"
        assert out.exists() == existed and (not existed or list(out.iterdir()) == [])


def test_an_export_that_cannot_be_written_is_one_line_and_leaves_out_as_it_was(tmp_path, tiny, monkeypatch):
    """A directory where model.json goes: the new graph replaced the old one, then os.replace raised
    IsADirectoryError in a traceback, leaving .model.json.tmp behind. A full disk: OSError in a
    traceback, the half-written .model.json.tmp left. Now both are one line, and --out is as it was."""
    out = tmp_path / "out"
    (out / "model.json").mkdir(parents=True)
    (out / "model.onnx").write_bytes(b"the old graph")
    with pytest.raises(ox.ExportError) as err:
        ox.export_checkpoint(tiny[0], out, **QUIET)
    assert str(err.value) == f"{out}/model.json is a directory: the export writes its model.json there"
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]
    assert (out / "model.onnx").read_bytes() == b"the old graph"

    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ox.os, "replace", full)
    with pytest.raises(ox.ExportError) as err:
        ox.export_checkpoint(tiny[0], tmp_path / "new", **QUIET)
    assert str(err.value) == f"{tmp_path / 'new'}: cannot write the export: No space left on device"
    assert not (tmp_path / "new").exists()  # the directory it made, with no temporary file in it


def test_a_card_number_that_is_not_finite_is_refused_not_written(tmp_path, tiny):
    """json.dumps wrote NaN into model_card.json and model.json, which the worker refused as not
    readable JSON: a training that wrote one now says so, and an export of such a card stops."""
    from models.model import json_text

    with pytest.raises(ValueError) as exc:
        json_text({"metrics": {"item_lift": {"val_kl_with": float("nan"), "ci": [0.1, float("inf")]}}},
                  "model_card.json")
    assert str(exc.value) == ("model_card.json: metrics.item_lift.val_kl_with is not a finite number "
                              "(JSON has no NaN or infinity)")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny[0], ckpt)
    card = json.loads((ckpt / "model_card.json").read_text())
    # the card of the sweep's training (its category_prior is refused at load: models.model.check_card)
    card["metrics"] = {**card.get("metrics", {}), "item_lift": {"val_kl_with": float("nan")}}
    (ckpt / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ox.ExportError) as exc:
        ox.export_checkpoint(ckpt, tmp_path / "out", **QUIET)
    assert str(exc.value) == ("model.json: metrics.item_lift.val_kl_with is not a finite number "
                              "(JSON has no NaN or infinity)")
    assert not (tmp_path / "out").exists()

"""Checkpoint directory -> ``model.onnx`` + ``model.json`` (CONTRACT.md, "Model artifacts").

1. Rebuild the model from the checkpoint alone (:func:`models.model.load_checkpoint`) and wrap it
   in an inference-only wrapper: ``(input_ids, attention_mask[, profile]) -> probs``, no targets,
   no loss (``profile``, float (batch, S*k), for encoding specs with the long-term profile).
   Since the head reads only the last real position, the wrapper's backbone computes the last
   GPT-2 layer only there (:func:`_last_position_backbone`, ~2x faster scoring); should that graph
   ever fail its checks (a changed model), the plain backbone is exported instead.
2. Export with ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript) at opset
   :data:`OPSET`, dynamic axes named ``batch`` and ``sequence``, traced on a RIGHT-padded batch with
   batch and length above 1 (an exporter fixes size-1 dimensions it traces). The TorchScript exporter
   (``dynamo=False``) cannot trace transformers >= 4.5x GPT-2: its mask builder uses ``torch.vmap``.
3. ``onnx.checker.check_model(full_check=True)``, then the parity check: ONNX Runtime and PyTorch on
   several batch sizes and lengths, mixed lengths with right padding in every batch; a difference
   above :data:`PARITY_TOL` fails the export with the measured value.
4. With ``int8``: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights of MatMul/Gemm with
   constant weights; activation-activation matmuls stay fp32);
   ``model.onnx`` is then the quantized graph, and the change against fp32 on the validation split
   of the data (the split the model card records) goes into ``model.json`` (``int8_vs_fp32``).
5. ``model.json`` beside the graph: what the worker needs besides it (:func:`build_model_json`).

Both files are written under temporary names and renamed into place, model.onnx first, so a reader
polling the directory never sees a half-written file.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np

from interest_core.artifacts import (CARD_FILE, INPUT_NAMES, MODEL_FILE, OUTPUT_NAME, PROFILE_INPUT, WEIGHTS_FILE,
                                     content_version)  # one definition: export writes, worker checks
from interest_core.encoding import pad_right  # the one padding convention
from interest_core.errors import InterestStreamError
from models.data import file_sha256 as sha256_file  # one file hash, and one check of the log it hashes
from models.data import hashed_log_error

# Opset 20 has GELU as one operator (Gelu, with the tanh approximation the backbone trains with):
# at 18 the exporter wrote it out in eight elementwise nodes over every token's 4C activations, and
# scoring took 1.18-1.22x the time (three runs of bench/score.py, its onnx_fp32_opset18 engine).
# ONNX Runtime runs it from 1.18, which also reads the IR version 10 the exporter writes (1.17
# refused every export).
OPSET = 20
OUTPUT_NAMES = (OUTPUT_NAME,)
DYNAMIC_AXES = ("batch", "sequence")
PARITY_TOL = 1e-4  # max |ORT - PyTorch| over probabilities (issue 5)
# Attention logits are floored at (row max - SOFTMAX_FLOOR) in the exported graph: ONNX Runtime's
# Softmax is ~7x slower on rows holding exp() inputs below about -87 (masked keys at float32's
# min), measured 3.3 vs 0.45 ns/element on this project's CPU. A masked key then weighs at most
# exp(-60) ~ 1e-26 instead of 0: far below float32's resolution of the other weights.
SOFTMAX_FLOOR = 60.0
PROB_FLOOR = 1e-4  # KL floor of the contract's metrics
MODEL_JSON_SCHEMA = 1
# (batch, length) of the parity check; lengths are capped at the model's max_len, and the last
# shape uses max_len itself. Batch 1 and odd sizes prove the dynamic axes.
PARITY_SHAPES = ((1, 7), (2, 2), (3, 19), (8, 64), (17, 37), (4, None))
TRACE_SHAPE = (3, 11)  # batch and length above 1 and unequal, so neither is specialised


class ExportError(InterestStreamError):
    """The export cannot proceed or its result failed a check; the message says which."""


def log_default(msg: str) -> None:
    print(msg, flush=True)



def input_names(encoder) -> tuple[str, ...]:
    return INPUT_NAMES + ((PROFILE_INPUT,) if encoder.profile_size else ())


def feeds(encoder, ids, mask, profile) -> dict:
    """The session's inputs for a batch (``profile`` only for a spec that has one)."""
    d = {"input_ids": ids, "attention_mask": mask}
    if encoder.profile_size:
        d[PROFILE_INPUT] = np.asarray(profile, dtype=np.float32)
    return d


def random_profiles(rng: np.random.Generator, encoder, batch: int) -> np.ndarray:
    """Profile inputs shaped like the worker's: non-negative weights, many zeros, some users empty."""
    p = rng.exponential(2.0, size=(batch, encoder.profile_size)) * (rng.random((batch, encoder.profile_size)) < 0.4)
    p[rng.random(batch) < 0.2] = 0.0
    return p.astype(np.float32)


def random_batch(rng: np.random.Generator, encoder, batch: int, length: int):
    """A right-padded batch shaped like the encoder's output: [BOS] tokens [END], lengths mixed
    in 2..length with at least one row of the full length (as a batch the worker pads), and
    random profiles: (ids, mask, profiles)."""
    lens = rng.integers(2, length + 1, size=batch)
    lens[rng.integers(batch)] = length
    seqs = []
    for n in lens:
        body = rng.integers(encoder.type_offset, encoder.vocab_size, size=n - 2).tolist()
        seqs.append([encoder.bos_id] + body + [encoder.end_id])
    return (*pad_right(seqs, encoder.pad_id), random_profiles(rng, encoder, batch))


def _last_position_backbone(gpt2, back: int = 0):
    """An inference-only stand-in for the GPT-2 backbone when the head reads only ONE position of
    right-padded sequences (models.model.InterestModel does: ``back`` tokens before the last real
    one, clamped at 0; 2 for ``readout="event"``, 0 for ``"end"``): all layers but the last
    run on every position; the last layer computes keys and values everywhere but the query, the
    attention output and the MLP only at that readout position. Causal + key-padding masking is
    one additive (B, 1, T, T) mask built once. ``last_hidden_state`` holds the true final hidden
    state at the readout position and zeros elsewhere. Mathematically the same model (the
    parity check proves it); roughly halves the work of a 2-layer model."""
    import torch
    from types import SimpleNamespace

    class LastPositionGPT2(torch.nn.Module):
        def __init__(self, g):
            super().__init__()
            self.g = g
            cfg = g.config
            self.floor = SOFTMAX_FLOOR
            # the last layer's Q and KV projections as separate constants (Conv1D: y = x @ W + b,
            # W (C, 3C)), so the graph holds them as initializers that int8 quantization can reach
            W, b = g.h[-1].attn.c_attn.weight.detach(), g.h[-1].attn.c_attn.bias.detach()
            C = W.shape[0]
            self.register_buffer("q_w", W[:, :C].clone(), persistent=False)
            self.register_buffer("q_b", b[:C].clone(), persistent=False)
            self.register_buffer("kv_w", W[:, C:].clone(), persistent=False)
            self.register_buffer("kv_b", b[C:].clone(), persistent=False)
            if getattr(cfg, "add_cross_attention", False):
                raise ValueError("cross-attention GPT-2 is not supported")
            self.n_head = cfg.n_head
            self.scale_attn = bool(cfg.scale_attn_weights)
            self.by_layer = bool(cfg.scale_attn_by_inverse_layer_idx)
            self.back = int(back)

        def _scale(self, layer: int, head_dim: int) -> float:
            s = head_dim ** -0.5 if self.scale_attn else 1.0
            return s / (layer + 1) if self.by_layer else s

        def _softmax(self, logits):
            floor = logits.amax(dim=-1, keepdim=True) - self.floor  # (..., 1)
            return torch.softmax(torch.maximum(logits, floor), dim=-1)

        @property
        def wte(self):
            return self.g.wte

        def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
            g = self.g
            B, T = attention_mask.shape
            pos = torch.arange(T, device=attention_mask.device)
            emb = g.wte(input_ids) if inputs_embeds is None else inputs_embeds
            x = emb + g.wpe(pos).unsqueeze(0)  # (B, T, C)
            C = x.size(-1)
            H = self.n_head
            D = C // H
            neg = torch.finfo(x.dtype).min
            key_ok = attention_mask.bool()  # (B, T)
            causal = pos.unsqueeze(0) <= pos.unsqueeze(1)  # (T, T) key <= query
            zero = torch.zeros((), dtype=x.dtype)
            mask = torch.where(causal.unsqueeze(0) & key_ok.unsqueeze(1), zero, neg).unsqueeze(1)  # (B, 1, T, T)
            last = (attention_mask.sum(dim=1) - 1 - self.back).clamp_min(0)  # (B,) the readout (right padding)
            n = len(g.h)
            for i, block in enumerate(g.h):
                attn = block.attn
                h = block.ln_1(x)
                if i < n - 1:
                    q, k, v = attn.c_attn(h).split(C, dim=2)  # (B, T, C) each
                    q = q.view(B, T, H, D).transpose(1, 2) * self._scale(i, D)  # (B, H, T, D)
                    k = k.view(B, T, H, D).transpose(1, 2)
                    v = v.view(B, T, H, D).transpose(1, 2)
                    w = self._softmax(q @ k.transpose(-1, -2) + mask)  # (B, H, T, T)
                    a = (w @ v).transpose(1, 2).reshape(B, T, C)
                    x = x + attn.c_proj(a)
                    x = x + block.mlp(block.ln_2(x))
                else:
                    kv = h @ self.kv_w + self.kv_b  # (B, T, 2C)
                    k, v = kv.split(C, dim=2)
                    idx = last.view(B, 1, 1).expand(B, 1, C)
                    x_last = x.gather(1, idx).squeeze(1)  # (B, C)
                    h_last = h.gather(1, idx).squeeze(1)  # (B, C)
                    q = (h_last @ self.q_w + self.q_b).view(B, H, 1, D) * self._scale(i, D)  # (B, H, 1, D)
                    k = k.view(B, T, H, D).transpose(1, 2)
                    v = v.view(B, T, H, D).transpose(1, 2)
                    key_ok = key_ok & (pos.unsqueeze(0) <= last.unsqueeze(1))  # causal: keys up to the readout
                    kmask = torch.where(key_ok, zero, neg).view(B, 1, 1, T)
                    w = self._softmax(q @ k.transpose(-1, -2) + kmask)  # (B, H, 1, T)
                    a = (w @ v).reshape(B, C)
                    x_last = x_last + attn.c_proj(a)
                    x_last = x_last + block.mlp(block.ln_2(x_last))
            out_last = g.ln_f(x_last)  # (B, C)
            hidden = torch.zeros_like(x).scatter(1, last.view(B, 1, 1).expand(B, 1, C), out_last.unsqueeze(1))
            return SimpleNamespace(last_hidden_state=hidden)

    return LastPositionGPT2(gpt2)


def _inference_wrapper(model, last_position: bool = False):
    import copy

    import torch

    class InferenceWrapper(torch.nn.Module):
        """Inference only: (input_ids, attention_mask[, profile]) -> probs (B, k); no loss."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, profile=None):
            probs, _ = self.inner(input_ids, attention_mask, profile)
            return probs

    if last_position:
        model = copy.copy(model)  # shallow: shares the parameters, swaps the backbone module only
        model._modules = dict(model._modules)
        back = 2 if getattr(model.config, "readout", "end") == "event" else 0
        model._modules["backbone"] = _last_position_backbone(model.backbone, back)
    return InferenceWrapper(model).eval()


def ort_session(path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # a failure is the exception alone, as the worker's (stream_app.model_runtime)
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _quiet_exporter():
    """The dynamo exporter logs a warning per missing torchvision op and progress lines."""
    for name in ("torch.onnx._internal.exporter._registration", "torch.onnx", "torch.export",
                 "torch._dynamo", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


def export_graph(model, encoder, path, last_position: bool = True, opset: int = OPSET) -> None:
    """Write the fp32 ONNX graph of ``model`` (eval mode) to ``path``; ``last_position`` swaps in
    :func:`_last_position_backbone`."""
    import torch

    _quiet_exporter()
    wrapper = _inference_wrapper(model, last_position)
    b, t = TRACE_SHAPE
    t = min(t, encoder.max_len)
    ids, mask, prof = random_batch(np.random.default_rng(0), encoder, b, t)
    batch = torch.export.Dim("batch", min=1)
    seq = torch.export.Dim("sequence", min=1, max=encoder.max_len)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    args = (torch.from_numpy(ids), torch.from_numpy(mask))
    if encoder.profile_size:
        shapes[PROFILE_INPUT] = {0: batch}
        args = (*args, torch.from_numpy(prof))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            args,  # forward()'s order
            str(path),
            input_names=list(input_names(encoder)),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamic_shapes=shapes,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def check_graph(path, encoder) -> None:
    """onnx.checker plus the interface the worker relies on (names, dynamic axes, k)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError
        raise ExportError(f"onnx.checker rejected the exported graph: {exc}") from exc
    m = onnx.load(str(path), load_external_data=False)
    k = encoder.k
    ins = [i.name for i in m.graph.input]
    outs = [o.name for o in m.graph.output]
    if tuple(ins) != input_names(encoder) or tuple(outs) != OUTPUT_NAMES:
        raise ExportError(f"exported graph has inputs {ins} and outputs {outs}, "
                          f"expected {list(input_names(encoder))} and {list(OUTPUT_NAMES)}")
    for i in m.graph.input:
        dims = tuple(d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim)
        want = ("batch", encoder.profile_size) if i.name == PROFILE_INPUT else DYNAMIC_AXES
        if dims != want:
            raise ExportError(f"input {i.name} has axes {list(dims)}, expected {list(want)} (dynamic)")
    odims = [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    if len(odims) != 2 or odims[0] != "batch" or (isinstance(odims[1], int) and odims[1] != k):
        raise ExportError(f"output probs has shape {odims}, expected ['batch', {k}]")


def parity_check(model, encoder, session, shapes=PARITY_SHAPES, seed: int = 0) -> dict:
    """Max |ORT - PyTorch| over several shapes, right padding included; raises ExportError
    naming the measured difference when it exceeds :data:`PARITY_TOL`."""
    import torch

    rng = np.random.default_rng(seed)
    worst, worst_shape, checked = 0.0, None, []
    for b, t in shapes:
        t = encoder.max_len if t is None else min(t, encoder.max_len)
        ids, mask, prof = random_batch(rng, encoder, b, t)
        with torch.no_grad():
            ref = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(prof))[0].numpy()
        got = session.run(None, feeds(encoder, ids, mask, prof))[0]
        if got.shape != ref.shape:
            raise ExportError(f"parity check failed at batch={b} length={t}: ONNX Runtime gave shape "
                              f"{got.shape}, PyTorch {ref.shape}")
        diff = float(np.max(np.abs(got.astype(np.float64) - ref))) if np.all(np.isfinite(got)) else float("inf")
        checked.append([b, t])
        if worst_shape is None or diff > worst:
            worst, worst_shape = diff, (b, t)
    if not worst <= PARITY_TOL:
        raise ExportError(
            f"parity check failed: max |ONNX Runtime - PyTorch| = {worst:.3g} > {PARITY_TOL:g} "
            f"(worst at batch={worst_shape[0]}, length={worst_shape[1]}); model.onnx not written")
    return {"max_abs_diff": worst, "tolerance": PARITY_TOL, "shapes": checked}


def run_session(session, encoder, seqs, profiles, batch_size: int = 256) -> np.ndarray:
    """Probabilities (N, k) float64 in input order; batches grouped by length."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = None
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids, mask = pad_right([seqs[i] for i in idx], encoder.pad_id)
        p = session.run(None, feeds(encoder, ids, mask, profiles[idx]))[0]
        if out is None:
            out = np.zeros((len(seqs), p.shape[1]), dtype=np.float64)
        out[idx] = p
    return out


def _kl(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-sample KL(target || prediction), prediction floored at 1e-4 (the contract's metric)."""
    p = np.maximum(probs, PROB_FLOOR)
    p = p / p.sum(1, keepdims=True)
    t = targets
    return np.where(t > 0, t * (np.log(np.maximum(t, 1e-12)) - np.log(p)), 0.0).sum(1)


def compare_int8(fp32_session, int8_session, encoder, seqs, profiles, targets, split_note: str) -> dict:
    """The accuracy change of the int8 graph against fp32 on the same sequences."""
    p32 = run_session(fp32_session, encoder, seqs, profiles)
    p8 = run_session(int8_session, encoder, seqs, profiles)
    out = {
        "split": split_note,
        "samples": len(seqs),
        "max_abs_diff": float(np.abs(p8 - p32).max()),
        "mean_abs_diff": float(np.abs(p8 - p32).mean()),
        "top1_agreement": float((p8.argmax(1) == p32.argmax(1)).mean()),
    }
    if targets is not None:
        t = np.asarray(targets, dtype=np.float64)
        out["kl_fp32"] = float(_kl(t, p32).mean())
        out["kl_int8"] = float(_kl(t, p8).mean())
        out["kl_change"] = out["kl_int8"] - out["kl_fp32"]
        out["mse_fp32"] = float(((p32 - t) ** 2).mean())
        out["mse_int8"] = float(((p8 - t) ** 2).mean())
    return out


def validation_samples(data_file, card: dict, encoder, log=log_default):
    """(token sequences, profiles, targets (N, k), description) of the validation split of ``data_file``,
    rebuilt by the models package's own data code from the split the model card records (the
    same way ``evaluate`` rebuilds its test split)."""
    from models.data import DataConfig, another_log, prepare, sample_profiles, sample_windows

    split = card.get("split")
    if not isinstance(split, dict) or "data_config" not in split or "t1" not in split:
        raise ExportError("the checkpoint's model card records no data split (split.data_config, t1, t2): "
                          "cannot rebuild its validation split for the int8 comparison")
    if another_log(card, data_file):
        log(f"warning: {data_file} is not the file the checkpoint was trained on (sha256 differs); "
            "measuring int8 on its samples under the recorded split anyway")
    try:
        dcfg = DataConfig.from_dict(split["data_config"])
        ds, _, _ = prepare(data_file, dcfg, encoder=encoder, split=split)
    except (ValueError, KeyError, OSError) as exc:
        raise ExportError(f"{data_file}: cannot build the validation split: {exc}") from None
    val = ds.splits["val"]
    seqs = [encoder.encode(w) for w in sample_windows(ds, val, dcfg)]
    note = (f"validation split of {Path(data_file).name} (cut >= t1={ds.t1}, target ends < t2={ds.t2}; "
            f"models.data, as recorded in the model card)")
    return seqs, sample_profiles(ds, val, dcfg, encoder), val.targets, note


def quantize_int8(src, dst) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # pre-processing hint
    # torch's exporter lists some weights in value_info beside their initializers. ONNX Runtime's
    # quantizer before 1.32 transposes a Gemm's weight in place (its Gemm-to-MatMul step), so the
    # entry it kept contradicted the weight and shape inference refused the graph: "Inferred shape
    # and existing shape differ in dimension 0: (65) vs (8)" (1.18 to 1.31). An initializer gives
    # its own shape, so those entries go; every other one stays.
    graph = onnx.load(str(src))
    weights = {w.name for w in graph.graph.initializer}
    kept = [v for v in graph.graph.value_info if v.name not in weights]
    del graph.graph.value_info[:]
    graph.graph.value_info.extend(kept)
    src = Path(dst).with_name(Path(dst).name + ".in")
    # MatMulConstBOnly: only weight matmuls; the attention products (QK^T, AV) of two activations
    # stay fp32 (quantizing both of their inputs on the fly costs more than it saves: measured
    # 3.72x vs 3.55x PyTorch on the default model, same max difference)
    try:
        onnx.save(graph, str(src))  # (a full disk: removed below too)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         extra_options={"MatMulConstBOnly": True})
    finally:
        src.unlink(missing_ok=True)


def count_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def build_model_json(*, version, encoder, model, card, ckpt_dir, quantized, parity, int8_report,
                     graph_sha256, opset=OPSET) -> dict:
    import onnxruntime
    import torch

    cfg = model.config
    return {
        "schema": MODEL_JSON_SCHEMA,
        "version": version,
        "model_file": MODEL_FILE,
        "quantized": bool(quantized),
        "categories": list(encoder.categories),  # output order of probs
        "k": encoder.k,
        "max_len": encoder.max_len,
        "padding": "right",
        "pad_id": encoder.pad_id,
        "inputs": {**{n: {"dtype": "int64", "shape": list(DYNAMIC_AXES)} for n in INPUT_NAMES},
                   **({PROFILE_INPUT: {"dtype": "float32", "shape": ["batch", encoder.profile_size]}}
                      if encoder.profile_size else {})},
        "outputs": {OUTPUT_NAMES[0]: {"dtype": "float32", "shape": ["batch", encoder.k]}},
        "opset": opset,
        "encoding": encoder.to_spec(),  # tokenizer embedded
        "metrics": card.get("metrics", {}),
        # the per-user window the model was trained on (serve with the same horizon / max events)
        "window": card.get("window"),
        # the population's category distribution (training targets): the prior of the re-ranking
        # lift (interest_core.rerank); None for checkpoints from before it was recorded
        "category_prior": card.get("category_prior"),
        "parity": parity,
        "int8_vs_fp32": int8_report,
        "model": {"n_layer": model.backbone.config.n_layer, "n_head": model.backbone.config.n_head,
                  "n_embd": model.backbone.config.n_embd, "vocab_size": cfg.vocab_size,
                  "params": count_params(model), "loss": cfg.loss,
                  "correction": getattr(cfg, "correction", "full"), "readout": getattr(cfg, "readout", "end")},
        "source": {
            "checkpoint": str(Path(ckpt_dir).resolve()),
            "weights_sha256": sha256_file(Path(ckpt_dir) / WEIGHTS_FILE),
            "card": {k: card[k] for k in ("model_version", "data", "split", "seed") if k in card},
        },
        "graph_sha256": graph_sha256,
        "exporter": {"method": "torch.onnx.export(dynamo=True)", "torch": torch.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def export_checkpoint(ckpt_dir, out_dir, int8: bool = False, data=None, log=log_default,
                      validation=None, opset: int = OPSET) -> dict:
    """Export the checkpoint ``ckpt_dir`` into ``out_dir`` (model.onnx + model.json); returns the
    model.json content. ``validation`` (seqs, profiles, targets, note) overrides reading ``data`` for the
    int8 comparison (tests); ``opset`` another opset than :data:`OPSET` (bench/score.py's comparison).
    Raises :class:`ExportError` with a one-line reason."""
    ckpt = Path(ckpt_dir)
    if not ckpt.exists():
        raise ExportError(f"{ckpt}: no such checkpoint directory")
    if not ckpt.is_dir():
        raise ExportError(f"{ckpt}: not a directory (expected a checkpoint directory from `train`)")
    if int8 and data is None and validation is None:
        raise ExportError("--int8 needs --data FILE: the accuracy change is measured on its validation split")
    if data is not None and (error := hashed_log_error(data, "export")):
        raise ExportError(error)

    from models.model import json_text, load_checkpoint  # imports torch

    try:
        model, encoder, card = load_checkpoint(ckpt)
    except FileNotFoundError as exc:
        raise ExportError(str(exc)) from None
    except Exception as exc:  # corrupt weights, config mismatch, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(f"{ckpt}: cannot load the checkpoint: {type(exc).__name__}: {first}") from None
    model.eval()
    if int8 and validation is None:  # before the export: a log without validation samples is said at once
        validation = validation_samples(data, card, encoder, log)
    if int8 and not validation[0]:
        raise ExportError(f"{data}: the validation split has no samples to measure int8 against fp32")

    out = Path(out_dir)
    for name in (MODEL_FILE, CARD_FILE):  # found before anything is written: the export leaves --out as it was
        if (out / name).is_dir():
            raise ExportError(f"{out / name} is a directory: the export writes its {name} there")
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{out}: cannot create the output directory: {exc.strerror or exc}") from None
    tmp32 = out / f".{MODEL_FILE}.fp32.tmp"
    tmp8 = out / f".{MODEL_FILE}.int8.tmp"
    tmp_json = out / f".{CARD_FILE}.tmp"
    try:
        t0 = time.time()
        log(f"exporting {ckpt} (k={encoder.k}, max_len={encoder.max_len}, "
            f"{count_params(model):,} params) at opset {opset}")
        parity, backbone = None, None
        for last_position in (True, False):
            backbone = "last-position" if last_position else "full"
            try:
                export_graph(model, encoder, tmp32, last_position, opset)
                check_graph(tmp32, encoder)
                sess32 = ort_session(tmp32, threads=1)
                parity = parity_check(model, encoder, sess32)
                break
            except Exception as exc:
                if not isinstance(exc, ExportError):
                    first = str(exc).splitlines()[0] if str(exc) else ""
                    exc = ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {first}")
                if not last_position:
                    raise exc from None
                log(f"the last-position graph was refused ({exc}); exporting the plain backbone instead")
        parity["backbone"] = backbone
        log(f"parity ONNX Runtime vs PyTorch ({backbone} graph): max abs diff {parity['max_abs_diff']:.2e} "
            f"over {len(parity['shapes'])} shapes (export {time.time() - t0:.1f}s)")

        final, int8_report = tmp32, None
        if int8:
            try:
                quantize_int8(tmp32, tmp8)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ExportError(f"int8 quantization failed: {type(exc).__name__}: {first}") from exc
            check_graph(tmp8, encoder)
            sess8 = ort_session(tmp8, threads=1)
            seqs, profiles, targets, note = validation
            int8_report = compare_int8(sess32, sess8, encoder, seqs, profiles, targets, note)
            if not np.isfinite(int8_report["max_abs_diff"]):
                raise ExportError("the int8 graph gives non-finite probabilities")
            msg = (f"int8 vs fp32 on {int8_report['samples']} validation samples: "
                   f"max abs diff {int8_report['max_abs_diff']:.2e}")
            if "kl_fp32" in int8_report:
                msg += f", KL {int8_report['kl_fp32']:.5f} -> {int8_report['kl_int8']:.5f}"
            log(msg)
            final = tmp8

        graph = final.read_bytes()
        spec = encoder.to_spec()
        version = content_version(graph, spec)
        meta = build_model_json(version=version, encoder=encoder, model=model, card=card, ckpt_dir=ckpt,
                                quantized=int8, parity=parity, int8_report=int8_report, opset=opset,
                                graph_sha256=hashlib.sha256(graph).hexdigest())
        try:
            text = json_text(meta, CARD_FILE, ensure_ascii=False)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        try:
            tmp_json.write_text(text, encoding="utf-8")
            os.replace(final, out / MODEL_FILE)
            os.replace(tmp_json, out / CARD_FILE)
        except OSError as exc:  # a full disk, a file system gone read-only: a traceback before
            raise ExportError(f"{out}: cannot write the export: {exc.strerror or exc}") from None
        log(f"wrote {out / MODEL_FILE} and {out / CARD_FILE} (version {version}, "
            f"{'int8' if int8 else 'fp32'}, {len(graph) / 1e6:.2f} MB)")
        return meta
    finally:
        for p in (tmp32, tmp8, tmp_json):
            if p.exists():
                p.unlink()
        if made and out.is_dir() and not any(out.iterdir()):  # a failed export leaves no directory it made
            out.rmdir()

"""Scoring throughput: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8, one run, one JSON.

    python bench/score.py [--users 4000] [--days 1.5] [--threads 1] [--batch-size 256] [--repeats 3]

Workload: a simulated population (:mod:`models.simulate`), each user's window at the end of the
simulated period (:func:`interest_core.window.window_slice`, default horizon and max events) encoded
with an encoder fitted on the population (its defaults: the JSON's ``model`` gives ``max_len``).
Model: the DEFAULT config of :func:`models.model.build_model` (its size in the JSON), UNTRAINED:
speed does not depend on the weight values, except that the head, zero at initialisation, is given
small random weights so every path computes. It is saved as a checkpoint and exported with the
project's own export (fp32 with its parity check, then int8 dynamic quantization), and once more in
fp32 at opset 18 (``onnx_fp32_opset18``: the export before opset 20, where each of the backbone's
GELUs was eight elementwise nodes).

Every engine scores the SAME batches (sorted by token length, right padded, ``--batch-size``),
one warm-up pass, then the best of ``--repeats`` timed passes; ``users_per_s`` is users / seconds
for the model step alone (encoding is timed separately, it is shared by all engines).

Achieved multiply-adds: counted from the GPT-2 config over the padded batches each engine actually
runs (per layer and token 12*C^2 for QKV, projection and the 4C MLP; per layer and sequence 2*T^2*C
for QK^T and AV; plus the head; the exported graph computes the last layer only at the last real
position, see export.onnx_export._last_position_backbone, and is counted so), divided by the time;
``full_forward_equivalent_gmacs_per_s`` divides the full forward's count instead. The machine's
peak is numpy float32 matmul (sgemm, OpenBLAS) measured in the same process with the same thread
count.
"""
from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":  # BLAS/OpenMP thread pools read these when they load
    _ap = argparse.ArgumentParser(add_help=False)
    _ap.add_argument("--threads", type=int, default=1)
    _t = str(_ap.parse_known_args()[0].threads)
    for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_v] = _t

import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in have]
    except OSError:
        pass
    return []


def sgemm_peak(threads: int, seconds: float = 3.0) -> dict:
    """Best float32 matmul rate (multiply-adds/s) over square sizes; OpenBLAS with ``threads``."""
    rng = np.random.default_rng(0)
    best = {"gmacs": 0.0}
    for n in (512, 1024, 2048):
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        c = np.empty((n, n), np.float32)
        np.matmul(a, b, out=c)  # warm-up
        reps, t_end = 0, time.perf_counter() + seconds / 3
        t0 = time.perf_counter()
        while reps < 2 or time.perf_counter() < t_end:
            np.matmul(a, b, out=c)
            reps += 1
        dt = time.perf_counter() - t0
        g = reps * n ** 3 / dt / 1e9
        if g > best["gmacs"]:
            best = {"gmacs": g, "n": n}
    return best


def population(users: int, days: float, seed: int):
    from models.simulate import simulate_user
    from interest_core.window import (DEFAULT_HORIZON_S, DEFAULT_MAX_EVENTS, DEFAULT_PROFILE_RETENTION_S, WindowEvent,
                               profiles_in_order, seconds_to_ms, window_slice)

    horizon = seconds_to_ms(DEFAULT_HORIZON_S)
    windows, profiles, all_events = [], [], []
    for i in range(users):
        evs, _ = simulate_user(i, seed, days)
        w = [WindowEvent.from_event(e) for e in evs]
        all_events.extend(w)
        if w:
            windows.append(window_slice(w, w[-1].ts, horizon, DEFAULT_MAX_EVENTS))
            prof = None
            for prof in profiles_in_order(w, seconds_to_ms(DEFAULT_PROFILE_RETENTION_S)):
                pass  # the user's profile after all their events
            profiles.append(prof)
    return windows, profiles, all_events


def gpt2_macs(batches, n_layer: int, n_embd: int, k: int, last_position: bool = False) -> int:
    """Multiply-adds of the forward over the padded batches. Full GPT-2 (what PyTorch eager runs):
    per layer 12*C^2 per token (QKV 3C^2, projection C^2, MLP 8C^2) and 2*T^2*C per sequence
    (QK^T and AV). ``last_position`` (the exported graph): the last layer computes K and V for every
    token (2*C^2) but Q, attention (2*T*C), projection and MLP only at the last position."""
    C, total = n_embd, 0
    for ids, *_ in batches:
        B, T = ids.shape
        full_layers = n_layer - 1 if last_position else n_layer
        total += full_layers * (12 * C * C * B * T + 2 * B * T * T * C) + B * C * k
        if last_position:
            total += 2 * C * C * B * T + B * (10 * C * C + 2 * T * C)
    return int(total)


def real_token_macs(lengths, n_layer: int, n_embd: int, k: int) -> int:
    """The same count over the real tokens only (causal attention: n(n+1)/2 pairs per sequence)."""
    C = n_embd
    n = np.asarray(lengths, np.int64)
    return int(n_layer * (12 * C * C * n.sum() + 2 * C * (n * (n + 1) // 2).sum()) + len(n) * C * k)


def time_passes(run_batch, batches, repeats: int) -> float:
    run_batch(*batches[0])  # warm-up (allocations, kernel selection)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            run_batch(*b)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=4000, help="simulated users (one window each)")
    ap.add_argument("--days", type=float, default=1.5, help="simulated days before the scored windows")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of torch, ORT and BLAS")
    ap.add_argument("--batch-size", type=int, default=256, help="rows per batch at most")
    ap.add_argument("--batch-tokens", type=int, default=None,
                    help="padded tokens per batch at most (default: LoadedModel's DEFAULT_BATCH_TOKENS)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per engine (best kept)")
    ap.add_argument("--checkpoint", default=None, help="score this checkpoint instead of an untrained default model")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    windows, profiles, events = population(args.users, args.days, args.seed)
    log(f"population: {len(windows)} windows, {len(events)} events ({time.perf_counter() - t_start:.1f}s)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-score-"))
    try:
        return _run(args, tmp, windows, profiles, events, t_start, log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args, tmp: Path, windows, profiles, events, t_start: float, log) -> dict:
    import onnx
    import onnxruntime as ort
    import torch

    from export.onnx_export import export_checkpoint, feeds
    from interest_core.encoding import fit_encoder
    from models.model import build_model, load_checkpoint, save_checkpoint
    from stream_app.model_runtime import LoadedModel

    if args.checkpoint:
        model, enc, _ = load_checkpoint(args.checkpoint)
        ckpt, trained = Path(args.checkpoint), True
    else:
        enc = fit_encoder(events)
        torch.manual_seed(0)
        model = build_model(enc).eval()
        with torch.no_grad():
            model.head.weight.normal_(0, 0.02)  # zero at init; give the GPT-2 path a say
        ckpt, trained = tmp / "ckpt", False
        save_checkpoint(model, enc, {"metrics": {}, "note": "untrained default-config model for bench/score.py"}, ckpt)
        model, enc, _ = load_checkpoint(ckpt)
    model.eval()

    t0 = time.perf_counter()
    seqs = [enc.encode(w) for w in windows]
    encode_s = time.perf_counter() - t0
    lengths = [len(s) for s in seqs]
    from stream_app.model_runtime import DEFAULT_BATCH_TOKENS

    args.batch_tokens = args.batch_tokens or DEFAULT_BATCH_TOKENS
    prof_in = np.asarray([enc.profile_vector(p) for p in profiles], np.float32).reshape(len(seqs), -1)

    fp32_dir, int8_dir, old_dir = tmp / "fp32", tmp / "int8", tmp / "opset18"
    export_checkpoint(ckpt, fp32_dir, log=log)
    # the one list of (ids, mask, profiles) batches every engine runs: the runs LoadedModel.predict
    # makes (sorted by length, at most --batch-size rows and --batch-tokens padded tokens, right padded)
    runs = LoadedModel.load(fp32_dir, threads=args.threads).plan(seqs, prof_in, args.batch_size, args.batch_tokens)
    batches = [(f["input_ids"], f["attention_mask"], prof_in[idx]) for idx, f in zip(runs.rows, runs.feeds)]
    export_checkpoint(ckpt, old_dir, log=log, opset=18)
    export_checkpoint(ckpt, int8_dir, int8=True, validation=(seqs[:2000], prof_in[:2000], None, "bench windows"),
                      log=log)

    def ort_runner(path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        return lambda ids, mask, prof: sess.run(["probs"], feeds(enc, ids, mask, prof))[0]

    @torch.no_grad()
    def torch_run(ids, mask, prof):
        return model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(prof))[0].numpy()

    torch.set_num_threads(args.threads)  # again: nothing the export did may change it
    engines = {"pytorch_eager": torch_run, "onnx_fp32": ort_runner(fp32_dir / "model.onnx"),
               "onnx_int8": ort_runner(int8_dir / "model.onnx"),
               "onnx_fp32_opset18": ort_runner(old_dir / "model.onnx")}
    # the same batches give the same answers (int8 within quantization error)
    ref = np.concatenate([torch_run(*b) for b in batches[:3]])
    agree = {n: float(np.abs(np.concatenate([f(*b) for b in batches[:3]]) - ref).max()) for n, f in engines.items()}

    g = model.backbone.config
    macs = gpt2_macs(batches, g.n_layer, g.n_embd, enc.k)
    meta32 = json.loads((fp32_dir / "model.json").read_text())
    onnx_last = meta32["parity"].get("backbone") == "last-position"
    macs_onnx = gpt2_macs(batches, g.n_layer, g.n_embd, enc.k, last_position=onnx_last)
    macs_real = real_token_macs(lengths, g.n_layer, g.n_embd, enc.k)
    peak = sgemm_peak(args.threads)
    results = {}
    for name, fn in engines.items():
        secs = time_passes(fn, batches, args.repeats)
        executed = macs if name == "pytorch_eager" else macs_onnx
        results[name] = {
            "seconds_per_pass": round(secs, 4),
            "users_per_s": round(len(seqs) / secs, 1),
            "executed_macs_per_pass": executed,
            "gmacs_per_s": round(executed / secs / 1e9, 3),
            "fraction_of_sgemm_peak": round(executed / secs / 1e9 / peak["gmacs"], 4),
            "full_forward_equivalent_gmacs_per_s": round(macs / secs / 1e9, 3),
            "max_abs_diff_vs_pytorch": agree[name],
        }
        log(f"{name}: {results[name]['users_per_s']} users/s")
    # the worker's whole scoring call: encode + group by length + ORT (LoadedModel.predict)
    for name, d in (("loaded_model_predict_fp32", fp32_dir), ("loaded_model_predict_int8", int8_dir)):
        lm = LoadedModel.load(d, threads=args.threads)
        lm.predict(windows[:256], profiles[:256])
        t0 = time.perf_counter()
        lm.predict(windows, profiles, batch_size=args.batch_size, max_batch_tokens=args.batch_tokens)
        secs = time.perf_counter() - t0
        results[name] = {"seconds_per_pass": round(secs, 4), "users_per_s": round(len(windows) / secs, 1)}

    torch_s = results["pytorch_eager"]["seconds_per_pass"]
    n_params = sum(p.numel() for p in model.parameters())
    out = {
        "benchmark": "score",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "torch": torch.__version__, "onnxruntime": ort.__version__, "onnx": onnx.__version__,
                    "threads": args.threads},
        "model": {"trained": trained, "checkpoint": str(args.checkpoint) if args.checkpoint else None,
                  "params": int(n_params), "n_layer": g.n_layer, "n_head": g.n_head, "n_embd": g.n_embd,
                  "vocab_size": g.vocab_size, "max_len": enc.max_len, "k": enc.k,
                  "onnx_fp32_bytes": (fp32_dir / "model.onnx").stat().st_size,
                  "onnx_int8_bytes": (int8_dir / "model.onnx").stat().st_size},
        "workload": {"users": len(seqs), "simulated_days": args.days, "seed": args.seed,
                     "batch_size": args.batch_size, "batch_tokens": args.batch_tokens, "batches": len(batches),
                     "tokens_real": int(sum(lengths)), "tokens_padded": int(sum(b[0].size for b in batches)),
                     "mean_len": round(float(np.mean(lengths)), 1), "max_len_seen": int(max(lengths)),
                     "macs_per_pass_full_forward_padded": macs, "macs_per_pass_full_forward_real_tokens": macs_real,
                     "onnx_graph": "last-position" if onnx_last else "full",
                     "encode_seconds": round(encode_s, 4), "encode_users_per_s": round(len(seqs) / encode_s, 1)},
        "sgemm_peak": {"gmacs_per_s": round(peak["gmacs"], 2), "n": peak["n"], "blas": "numpy float32 matmul"},
        "results": results,
        "ratios": {"onnx_fp32_vs_pytorch": round(torch_s / results["onnx_fp32"]["seconds_per_pass"], 2),
                   "onnx_int8_vs_pytorch": round(torch_s / results["onnx_int8"]["seconds_per_pass"], 2),
                   "onnx_int8_vs_fp32": round(results["onnx_fp32"]["seconds_per_pass"]
                                              / results["onnx_int8"]["seconds_per_pass"], 2),
                   "onnx_fp32_vs_opset18": round(results["onnx_fp32_opset18"]["seconds_per_pass"]
                                                 / results["onnx_fp32"]["seconds_per_pass"], 3)},
        "goals": {"onnx_fp32_at_least_2x": None, "onnx_int8_at_least_3x": None},
        "wall_seconds": None,
    }
    out["goals"]["onnx_fp32_at_least_2x"] = out["ratios"]["onnx_fp32_vs_pytorch"] >= 2
    out["goals"]["onnx_int8_at_least_3x"] = out["ratios"]["onnx_int8_vs_pytorch"] >= 3
    out["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

"""A tiny interest model, trained in seconds and exported, for tests that need a real model pair.

``build_tiny_model_dir(out_dir)`` writes ``model.onnx`` + ``model.json`` into ``out_dir``: a
2-layer, 32-dim GPT-2 over the simulator's 12 categories (:data:`models.simulate.CATEGORIES`, in
that order), trained for a few dozen steps on a small simulated population. Weights are
deterministic for a seed; different seeds give different weights (and versions).

Samples are built directly here (not with the models package's data code) so the fixture keeps
working whatever that code's options become: per user, cut points every few events; input = the
window before the cut (:func:`interest_core.window.window_slice`) and the profile of the events before
it (:func:`interest_core.window.profile_update`), target = the category distribution of the next events.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from interest_core.encoding import Encoder, train_tokenizer
from models.simulate import CATEGORIES, simulate_user
from interest_core.window import (DEFAULT_HORIZON_S, DEFAULT_MAX_EVENTS, DEFAULT_PROFILE_RETENTION_S, WindowEvent,
                           profiles_in_order, seconds_to_ms, window_slice)

TINY = dict(n_layer=2, n_head=2, n_embd=32, dropout=0.0)  # HF-style tiny test config
TINY_MAX_LEN = 64  # tokens; keeps training and export fast
TINY_USERS = 30
TINY_DAYS = 4
NEXT_EVENTS = 8  # target = categories of the next 8 events
CUT_EVERY = 4  # events between cut points


def tiny_windows(seed: int = 0, users: int = TINY_USERS, days: float = TINY_DAYS):
    """Per-user event lists (WindowEvent, ts order) of a small simulated population."""
    out = {}
    for i in range(users):
        events, _ = simulate_user(i, seed, days)
        out[f"u{i}"] = [WindowEvent.from_event(e) for e in events]
    return out


def tiny_encoder(per_user: dict[str, list[WindowEvent]], max_len: int = TINY_MAX_LEN,
                 profile_scales: int | None = None) -> Encoder:
    """``profile_scales``: how many of the profile's scales the spec reads (None: all)."""
    queries = [e.query for evs in per_user.values() for e in evs if e.type == "search" and e.query]
    return Encoder(categories=CATEGORIES, tokenizer_json=train_tokenizer(queries, 200), max_len=max_len,
                   profile=True if profile_scales is None else profile_scales)


def tiny_samples(per_user, encoder: Encoder):
    """(windows, profiles (dicts), token sequences, profile inputs (N, P) float32, targets (N, k)
    float32) at cut points of every user."""
    import copy

    horizon = seconds_to_ms(DEFAULT_HORIZON_S)
    retention = seconds_to_ms(DEFAULT_PROFILE_RETENTION_S)
    windows, profiles, seqs, prof_in, targets = [], [], [], [], []
    for evs in per_user.values():
        folding, done = profiles_in_order(evs, retention), 0
        for cut in range(CUT_EVERY, len(evs) - 1, CUT_EVERY):
            while done < cut:
                prof = next(folding)
                done += 1
            nxt = [e for e in evs[cut : cut + NEXT_EVENTS] if e.type != "search"]
            t = np.zeros(encoder.k, dtype=np.float32)
            for e in nxt:
                j = encoder.category_index(e.category)
                if j >= 0:
                    t[j] += 1
            if t.sum() == 0:
                continue
            w = window_slice(evs[:cut], evs[cut - 1].ts, horizon, DEFAULT_MAX_EVENTS)
            windows.append(w)
            profiles.append(copy.deepcopy(prof))
            seqs.append(encoder.encode(w))
            prof_in.append(encoder.profile_vector(prof))
            targets.append(t / t.sum())
    return windows, profiles, seqs, np.asarray(prof_in, np.float32), np.stack(targets)


def build_tiny_checkpoint(ckpt_dir: Path, seed: int = 0, steps: int = 60, model_config: dict | None = None,
                          max_len: int = TINY_MAX_LEN, profile_scales: int | None = None):
    """Train the tiny model and save a checkpoint; returns (ckpt_dir, model, encoder, val windows,
    val seqs, val targets, val profiles (dicts), val profile inputs). ``model_config={}`` and
    ``max_len=256`` give the default model size (benchmarks), briefly trained."""
    import torch

    from models.model import TrainConfig, build_model, save_checkpoint, train_model

    per_user = tiny_windows(seed)
    enc = tiny_encoder(per_user, max_len, profile_scales)
    windows, profiles, seqs, prof_in, targets = tiny_samples(per_user, enc)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(seqs))
    n_val = max(16, len(seqs) // 5)
    val, tr = order[:n_val], order[n_val:]
    torch.manual_seed(seed)
    model = build_model(enc, **(TINY if model_config is None else model_config))
    model.init_prior(targets[tr].mean(0))
    cfg = TrainConfig(epochs=100, batch_size=32, lr=3e-3, warmup_steps=5, eval_every=steps,
                      max_steps=steps, patience=100, seed=seed, threads=1)
    summary = train_model(model, [seqs[i] for i in tr], prof_in[tr], targets[tr], [seqs[i] for i in val],
                          prof_in[val], targets[val], cfg, enc.pad_id, progress=False)
    card = {"categories": list(enc.categories), "seed": seed,
            "data": f"tests/tiny_model.py simulated {TINY_USERS} users x {TINY_DAYS} days, seed {seed}",
            "split": {"kind": "random samples", "val": int(n_val), "train": int(len(tr))},
            "window": {"horizon_s": DEFAULT_HORIZON_S, "max_events": DEFAULT_MAX_EVENTS,
                       "profile_retention_s": DEFAULT_PROFILE_RETENTION_S},
            "metrics": {"val": {"loss": summary["best_val_loss"]}, "steps": summary["steps"]}}
    save_checkpoint(model, enc, card, ckpt_dir)
    return (Path(ckpt_dir), model, enc, [windows[i] for i in val], [seqs[i] for i in val], targets[val],
            [profiles[i] for i in val], prof_in[val])


def build_tiny_model_dir(out_dir: Path, seed: int = 0, int8: bool = False, ckpt_dir: Path | None = None,
                         model_config: dict | None = None, max_len: int = TINY_MAX_LEN,
                         profile_scales: int | None = None) -> Path:
    """Train a tiny model (seconds) and export it into ``out_dir`` (model.onnx + model.json);
    returns ``out_dir``. The checkpoint goes to ``ckpt_dir`` when given, else a temporary directory.
    ``profile_scales=3`` gives a model that workers from before the year and 100-event scales
    load too (benchmarks' ``--old``)."""
    from export.onnx_export import export_checkpoint

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="tiny-ckpt-") as tmp:
        ckpt = Path(ckpt_dir) if ckpt_dir is not None else Path(tmp)
        _, _, _, _, vseqs, vtargets, _, vprof = build_tiny_checkpoint(ckpt, seed, model_config=model_config,
                                                                      max_len=max_len, profile_scales=profile_scales)
        export_checkpoint(ckpt, out_dir, int8=int8, log=lambda m: None,
                          validation=(vseqs, vprof, vtargets, "tiny random validation samples"))
    return out_dir


def edit_card(path: Path, **fields) -> Path:
    """The model pair at ``path`` with ``fields`` of its model.json replaced, in place."""
    import orjson

    card = orjson.loads((path / "model.json").read_bytes())
    card.update(fields)
    (path / "model.json").write_bytes(orjson.dumps(card))
    return path


def with_card(src, dst: Path, **fields) -> Path:
    """A copy of the model pair ``src`` at ``dst`` whose model.json has ``fields`` replaced (a
    card that is wrong in one way)."""
    import shutil

    shutil.copytree(src, dst)
    return edit_card(dst, **fields)

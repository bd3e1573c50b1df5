"""Self-supervised pretraining of the backbone on behaviour logs (``interest-stream pretrain``), and
carrying it into a model with another encoding (``train --init-from DIR``).

The corpus is the logs themselves, whole: no split, no interest targets. Each user's events are cut
into consecutive windows (:func:`interest_core.window.window_slice`, the worker's horizon and
event cap), encoded as the worker encodes them. At every event's last token (the readout of
:mod:`models.model`) three heads predict the user's NEXT event: its category (or "none" for a
search or an unknown category), its type, and the time-gap bucket before it (the encoding's own
buckets). The loss is the sum of the three cross-entropies, every event counting once.

Written to ``DIR``: ``backbone/`` (transformers ``save_pretrained``), ``encoding.json`` (the
pretraining encoder) and ``pretrain.json`` (the marker :func:`is_pretrain_dir` looks for: config,
logs, losses, timings).

:func:`transfer_backbone` gives a fine-tuning encoder (other categories, other query subwords) the
pretrained backbone: each token's embedding is copied from the pretrained token of the same
meaning (specials, types, gap and dwell buckets, hours by layout; categories and query subwords by
name), and tokens the pretraining never saw start at the mean of their family.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from interest_core.cli_types import MAX_SEED
from models.config_checks import (MAX_EVENTS, MAX_HORIZON_S, MAX_LEN, MAX_THREADS, check_backbone,
                                  check_lr_floor, check_ranges)

PRETRAIN_FILE = "pretrain.json"  # marks a directory written by ``interest-stream pretrain``
BACKBONE_DIR = "backbone"


@dataclass
class PretrainConfig:
    n_layer: int = 2  # the fine-tuned model's defaults (models.model.ModelConfig)
    n_head: int = 2
    n_embd: int = 48
    dropout: float = 0.1
    max_len: int = 128  # tokens per window (the encoding's max_len)
    horizon_s: int = 86_400  # window reach, as the worker's INTEREST_HORIZON_S
    max_events: int = 128
    min_category_count: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.05
    max_steps: int = 3000  # ~0.1 s a step on 2 cores at the default size
    eval_every: int = 500
    val_frac: float = 0.05  # users held out for the validation loss
    seed: int = 1337
    threads: int = 2

    def __post_init__(self):
        check_backbone(self)
        check_ranges(self, at_least={"max_len": 1, "horizon_s": 1, "max_events": 1, "min_category_count": 1,
                                     "batch_size": 1, "min_lr": 0.0, "warmup_steps": 0, "weight_decay": 0.0,
                                     "max_steps": 1, "eval_every": 1, "threads": 1, "seed": 0},
                     above={"lr": 0.0, "val_frac": 0.0}, below={"val_frac": 1.0},
                     at_most={"seed": MAX_SEED, "max_len": MAX_LEN, "horizon_s": MAX_HORIZON_S, "threads": MAX_THREADS,
                              "max_events": MAX_EVENTS})
        check_lr_floor(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown pretrain config keys: {sorted(unknown)}")
        return cls(**d)


def is_pretrain_dir(path) -> bool:
    return (Path(path) / PRETRAIN_FILE).exists()


def pretrain_windows(users: dict, encoder, cfg: PretrainConfig):
    """Per window: (token ids, readout positions, next-event category / type / gap classes).
    Consecutive windows of each user, newest first; every event of a user is a readout once
    (the newest has no next event and is left out)."""
    from interest_core.window import seconds_to_ms, window_slice

    k = encoder.k
    n_gap = len(encoder.gap_bounds_ms) + 1
    types = {"click": 0, "browse": 1, "search": 2}
    horizon = seconds_to_ms(cfg.horizon_s)
    out = []
    for evs in users.values():
        i = len(evs)
        while i > 0:
            win = window_slice(evs[max(0, i - cfg.max_events) : i], evs[i - 1].ts, horizon, cfg.max_events)
            ids, ends = encoder.encode_with_ends(win)
            kept = [m for m, e in enumerate(ends) if e >= 0]
            if not kept:  # an event too long for a window alone: skip it
                i -= 1
                continue
            a = i - len(win)
            pos, cat, typ, gap = [], [], [], []
            for m in kept:
                j = a + m + 1  # the next event
                if j >= len(evs):
                    continue
                nxt = evs[j]
                c = encoder.category_index(nxt.category) if nxt.type != "search" else -1
                pos.append(ends[m])
                cat.append(c if c >= 0 else k)
                typ.append(types[nxt.type])
                gap.append(encoder.gap_token(nxt.ts - evs[j - 1].ts) - encoder.gap_offset - 1)
            if pos:
                out.append((np.asarray(ids, np.int64), np.asarray(pos), np.asarray(cat), np.asarray(typ),
                            np.clip(np.asarray(gap), 0, n_gap - 1)))
            i = a + kept[0]  # the next window ends where this one's kept events begin
    return out


def _build(encoder, cfg: PretrainConfig):
    """The backbone and its three next-event heads."""
    import torch.nn as nn
    from transformers import GPT2Config, GPT2Model

    from models.model import ACTIVATION

    gcfg = GPT2Config(vocab_size=encoder.vocab_size, n_positions=encoder.max_len, n_embd=cfg.n_embd,
                      n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                      attn_pdrop=0.0, activation_function=ACTIVATION)
    m = nn.Module()
    m.backbone = GPT2Model(gcfg)
    m.cat_head = nn.Linear(cfg.n_embd, encoder.k + 1)  # + "none"
    m.type_head = nn.Linear(cfg.n_embd, 3)
    m.gap_head = nn.Linear(cfg.n_embd, len(encoder.gap_bounds_ms) + 1)
    return m


def _batch(windows, idx, pad_id):
    import torch

    from interest_core.encoding import pad_right

    ids, mask = pad_right([windows[i][0] for i in idx], pad_id)
    b = np.concatenate([np.full(len(windows[i][1]), r) for r, i in enumerate(idx)])
    cols = [np.concatenate([windows[i][c] for i in idx]) for c in (1, 2, 3, 4)]
    t = lambda x: torch.from_numpy(np.asarray(x, np.int64))  # noqa: E731
    return t(ids), t(mask), t(b), *[t(c) for c in cols]


def _losses(m, batch):
    import torch.nn.functional as F

    ids, mask, b, pos, cat, typ, gap = batch
    h = m.backbone(input_ids=ids, attention_mask=mask).last_hidden_state[b, pos]  # (R, C)
    parts = (F.cross_entropy(m.cat_head(h), cat), F.cross_entropy(m.type_head(h), typ),
             F.cross_entropy(m.gap_head(h), gap))
    return parts[0] + parts[1] + parts[2], [float(p.detach()) for p in parts]


def run_pretraining(data_paths, out_dir, cfg: PretrainConfig | None = None, progress: bool = True, log=print) -> dict:
    """Pretrain on the logs ``data_paths`` and write ``out_dir`` (module doc); returns pretrain.json."""
    import torch
    from tqdm import tqdm

    from interest_core.encoding import fit_encoder
    from models.data import invalid_summary, read_log
    from models.model import get_lr, TrainConfig, writing

    cfg = cfg or PretrainConfig()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    users, stats = {}, []
    for n, path in enumerate(data_paths):
        u, st = read_log(path)
        users.update({f"{n}:{uid}": evs for uid, evs in u.items()})  # logs never share a user
        stats.append({"path": str(path), **st})
    skipped = [f"{s['path']}: {invalid_summary(s)}" for s in stats if s["invalid"]]
    if not users:
        raise ValueError("no valid events in the pretraining logs" + (f" ({'; '.join(skipped)})" if skipped else ""))
    for line in skipped:
        log(line)
    encoder = fit_encoder((e for evs in users.values() for e in evs), min_category_count=cfg.min_category_count,
                          max_len=cfg.max_len)
    rng = np.random.default_rng(cfg.seed)
    names = sorted(users)
    if len(names) < 2:  # the validation loss is measured on held-out users, training on the rest
        raise ValueError("pretraining needs events of at least two users (one is held out for the validation "
                         "loss); the logs hold one user's")
    val_users = set(rng.choice(names, size=max(1, int(len(names) * cfg.val_frac)), replace=False).tolist())
    windows = pretrain_windows({u: users[u] for u in names if u not in val_users}, encoder, cfg)
    val_windows = pretrain_windows({u: users[u] for u in names if u in val_users}, encoder, cfg)[:2000]
    if not windows or not val_windows:
        raise ValueError("not enough events to pretrain on (need users with at least two events)")
    readouts = int(sum(len(w[1]) for w in windows))
    log(f"pretraining on {sum(s['events'] for s in stats)} events of {len(users)} users in {len(data_paths)} "
        f"log(s): {len(windows)} windows, {readouts} readouts; {encoder}")
    log("pretrain config: " + json.dumps(asdict(cfg)))
    m = _build(encoder, cfg)
    decay = [p for p in m.parameters() if p.dim() >= 2]
    no_decay = [p for p in m.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))
    sched = TrainConfig(lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps)
    history, step, prep_s = [], 0, time.time() - t0
    bs = min(cfg.batch_size, len(windows))
    perm, at = rng.permutation(len(windows)), 0
    bar = tqdm(total=cfg.max_steps, disable=not progress, desc="pretrain", unit="step")
    t1 = time.time()
    m.train()
    while step < cfg.max_steps:
        if at + bs > len(perm):
            perm, at = rng.permutation(len(windows)), 0
        idx = perm[at : at + bs]
        at += bs
        for g in opt.param_groups:
            g["lr"] = get_lr(step, sched, cfg.max_steps)
        loss, _ = _losses(m, _batch(windows, idx, encoder.pad_id))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            m.eval()
            with torch.no_grad():
                parts = np.mean([_losses(m, _batch(val_windows, np.arange(a, min(a + 128, len(val_windows))),
                                                   encoder.pad_id))[1]
                                 for a in range(0, len(val_windows), 128)], axis=0)
            m.train()
            history.append({"step": step, "val_category_ce": float(parts[0]), "val_type_ce": float(parts[1]),
                            "val_gap_ce": float(parts[2]), "elapsed_s": round(time.time() - t1, 1)})
            bar.set_postfix(cat=f"{parts[0]:.3f}", type=f"{parts[1]:.3f}", gap=f"{parts[2]:.3f}")
    bar.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the record goes first and comes back last: a run stopped while saving over an earlier one
    # left that one's encoding beside the new backbone, which --init-from took as a pretrain
    # directory
    (out / PRETRAIN_FILE).unlink(missing_ok=True)
    record = {"config": asdict(cfg), "logs": stats, "users": len(users), "windows": len(windows),
              "readouts": readouts, "history": history, "train_seconds": round(time.time() - t1, 1),
              "prepare_seconds": round(prep_s, 1), "categories": list(encoder.categories)}
    with writing(out / BACKBONE_DIR):
        m.backbone.save_pretrained(out / BACKBONE_DIR)
        encoder.save(out / "encoding.json")
        (out / PRETRAIN_FILE).write_text(json.dumps(record, indent=1))
    last = history[-1]
    log(f"pretrained {step} steps in {record['train_seconds']:.0f}s; validation cross-entropy: category "
        f"{last['val_category_ce']:.3f}, type {last['val_type_ce']:.3f}, gap {last['val_gap_ce']:.3f}; wrote {out}")
    return record


def load_gpt2(directory):
    """The GPT-2 backbone saved in ``directory`` (``save_pretrained``), every weight from its files.
    ValueError unless its config.json says ``"model_type": "gpt2"`` and the weights fill the model
    exactly: ``from_pretrained`` would otherwise build a default GPT-2 (124M) from any config.json,
    a checkpoint's of ``train`` included, and start every weight it does not find at random."""
    from transformers import GPT2Model
    from transformers.utils import logging as hf_logging

    from models.model import _json_object

    d = Path(directory)
    kind = _json_object(d / "config.json").get("model_type")
    if kind != "gpt2":
        raise ValueError(f"{d / 'config.json'} is not a GPT-2 config (model_type {json.dumps(kind)})")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its warning about the weights it started at random: refused below
    try:
        backbone, info = GPT2Model.from_pretrained(str(d), local_files_only=True, output_loading_info=True)
    except RuntimeError as exc:  # "Error(s) in loading state_dict for ...:\n\tsize mismatch for ..."
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        raise ValueError(f"the weights do not fit {d / 'config.json'} ({lines[-1].rstrip('.')})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(key):
            names = sorted(str(k) for k in info[key])
            raise ValueError(f"the weights do not fit {d / 'config.json'} ({len(names)} {key.replace('_', ' ')}: "
                             f"{', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    return backbone


def read_encoding(path):
    """The encoding the pretrain directory ``path`` was trained with."""
    from interest_core.encoding import Encoder
    from models.model import _json_object

    return Encoder.from_spec(_json_object(Path(path) / "encoding.json"))


def transfer_backbone(path, encoder):
    """The pretrained backbone of ``path`` with an embedding table for ``encoder`` (module doc)."""
    import torch

    backbone = load_gpt2(Path(path) / BACKBONE_DIR)
    src = read_encoding(path)
    old = backbone.wte.weight.detach()
    new = torch.empty(encoder.vocab_size, old.shape[1])

    def family(lo, hi):  # the mean embedding of a token family of the pretraining encoding
        return old[lo:hi].mean(0) if hi > lo else old.mean(0)

    src_cat_mean = family(src.category_offset, src.gap_offset)
    src_query_mean = family(src.query_offset, src.vocab_size)
    src_vocab = src.tokenizer.get_vocab()
    new_vocab = {i: s for s, i in encoder.tokenizer.get_vocab().items()}
    for tid in range(encoder.vocab_size):
        if tid < encoder.category_offset:  # specials and types: one layout
            row = old[tid]
        elif tid < encoder.gap_offset:  # categories by name
            j = src.category_index(encoder.categories[tid - encoder.category_offset])
            row = old[src.category_offset + j] if j >= 0 else src_cat_mean
        elif tid < encoder.dwell_offset:  # gap buckets, when both encodings bucket alike
            same = src.gap_bounds_ms == encoder.gap_bounds_ms
            row = old[src.gap_offset + tid - encoder.gap_offset] if same else family(src.gap_offset, src.dwell_offset)
        elif tid < encoder.hour_offset:
            same = src.dwell_buckets_ms == encoder.dwell_buckets_ms
            row = old[src.dwell_offset + tid - encoder.dwell_offset] if same else \
                family(src.dwell_offset, src.hour_offset)
        elif tid < encoder.query_offset:  # hours
            row = old[src.hour_offset + tid - encoder.hour_offset] if src.hour_token else old.mean(0)
        else:  # query subwords by their text
            j = src_vocab.get(new_vocab.get(tid - encoder.query_offset, ""))
            row = old[src.query_offset + j] if j is not None else src_query_mean
        new[tid] = row
    emb = torch.nn.Embedding(encoder.vocab_size, old.shape[1])
    emb.weight.data.copy_(new)
    backbone.set_input_embeddings(emb)
    backbone.config.vocab_size = encoder.vocab_size
    return backbone

"""``interest-stream train`` end to end: event log -> split -> encoder -> samples -> model ->
checkpoint directory (see :mod:`models.model` for the loop and :mod:`models.data` for the split)."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path



def _mean_distribution(targets) -> list[float]:
    """The mean of the rows, as a distribution, in float64 (the numbers of models.baselines' prior)."""
    m = targets.astype("float64").mean(0)
    return (m / m.sum()).tolist()


def run_training(data_path, out_dir, data_cfg=None, train_cfg=None, model_overrides: dict | None = None,
                 init_from=None, resume: bool = False, progress: bool = True, log=print) -> dict:
    """Train on ``data_path`` and write the checkpoint into ``out_dir``; returns the model card."""
    import torch

    from interest_core.artifacts import CHECKPOINT_CARD_FILE, ENCODING_FILE, WEIGHTS_FILE
    from models.data import DataConfig, encode_samples, file_sha256, prepare, sample_profiles
    from models.evaluate import metrics
    from models.model import TRAIN_STATE_FILE, TrainConfig, build_model, predict, save_checkpoint, train_model

    data_cfg = data_cfg or DataConfig()
    train_cfg = train_cfg or TrainConfig()
    model_overrides = dict(model_overrides or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(train_cfg.threads)
    torch.manual_seed(train_cfg.seed)
    t0 = time.time()

    split = None
    if resume and (out / "resume.json").exists():  # same split and encoder as the interrupted run
        saved = json.loads((out / "resume.json").read_text())
        from interest_core.encoding import Encoder

        split, encoder = saved["split"], Encoder.from_spec(saved["encoding"])
        ds, encoder, info = prepare(data_path, data_cfg, encoder=encoder, split=split)
    else:
        ds, encoder, info = prepare(data_path, data_cfg)
        (out / "resume.json").write_text(json.dumps({"split": info["split"], "encoding": encoder.to_spec()}))
    tr, va = ds.splits["train"], ds.splits["val"]
    log(f"data: {info['log']['events']} events, {info['log']['users']} users; samples "
        f"train {len(tr)} val {len(va)} test {len(ds.splits['test'])}; "
        f"skipped empty targets {info['samples']['empty_target']}; {encoder}")
    if len(tr) == 0 or len(va) == 0:
        raise ValueError("not enough data for a time split: no training or validation samples "
                         f"(counts: {info['samples']}); for a short log try --target next_k or a "
                         "smaller --target-window-s")
    train_seqs = encode_samples(ds, tr, data_cfg, encoder)
    val_seqs = encode_samples(ds, va, data_cfg, encoder)
    train_prof, val_prof = sample_profiles(ds, tr, data_cfg, encoder), sample_profiles(ds, va, data_cfg, encoder)
    model = build_model(encoder, init_from=init_from, **model_overrides)
    model.init_prior(tr.targets.mean(0))
    log("model config: " + json.dumps({k: v for k, v in asdict(model.config).items() if k != "backbone"}))
    log("train config: " + json.dumps(asdict(train_cfg)))
    log(f"data config: {json.dumps(asdict(data_cfg))}")
    n_params = sum(p.numel() for p in model.parameters())
    prep_s = time.time() - t0
    summary = train_model(model, train_seqs, train_prof, tr.targets, val_seqs, val_prof, va.targets, train_cfg, encoder.pad_id,
                          state_path=out / TRAIN_STATE_FILE, resume=resume, progress=progress)
    val_pred = predict(model, val_seqs, val_prof, encoder.pad_id)
    card = {
        "model_version": None,
        "categories": list(encoder.categories),
        "split": info["split"],
        # the per-user window the model was trained on; serve it with the same
        # INTEREST_HORIZON_S / INTEREST_MAX_EVENTS / INTEREST_PROFILE_RETENTION_S (CONTRACT "Per-user window")
        "window": {"horizon_s": data_cfg.horizon_s, "max_events": data_cfg.max_events,
                   "profile_retention_s": data_cfg.profile_retention_s},
        "data": {"path": str(data_path), "sha256": file_sha256(data_path), **info["log"]},
        "samples": info["samples"],
        "training": {**asdict(train_cfg), "steps": summary["steps"], "stop_reason": summary["stop_reason"],
                     "train_seconds": round(summary["train_seconds"], 1),
                     "total_seconds": round(time.time() - t0, 1), "prepare_seconds": round(prep_s, 1),
                     "parameters": n_params, "init_from": init_from, "loss": model.config.loss},
        # the population's category distribution (mean training target): the prior of the
        # re-ranking lift (interest_core.rerank); export copies it into model.json
        "category_prior": dict(zip(encoder.categories, _mean_distribution(tr.targets))),
        "metrics": {"validation": metrics(va.targets, val_pred)},
        "history": summary["history"],
    }
    save_checkpoint(model, encoder, card, out)
    # a version that changes with the weights and the encoding
    import hashlib

    h = hashlib.sha256((out / WEIGHTS_FILE).read_bytes())
    h.update((out / ENCODING_FILE).read_bytes())
    card["model_version"] = h.hexdigest()[:16]
    (out / CHECKPOINT_CARD_FILE).write_text(json.dumps(card, indent=1))
    log(f"trained {summary['steps']} steps in {summary['train_seconds']:.0f}s ({summary['stop_reason']}); "
        f"validation KL {card['metrics']['validation']['kl']:.4f}; checkpoint in {out}")
    return card

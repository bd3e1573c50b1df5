"""``interest-stream train`` end to end: event log -> split -> encoder -> samples -> model ->
checkpoint directory (see :mod:`models.model` for the loop and :mod:`models.data` for the split).

Two stages, then a choice (issue 11, "never worse than the counter inside it"):

1. the plain path alone (:meth:`models.model.InterestModel.plain_parameters`, correction "none"):
   a learned counter over the window and the profile, trained for ``plain_steps``;
2. the whole model, its plain path started from stage 1, its corrections from zero. When training saw
   searches, whether the per-category network reads them through the query map
   (``TrainConfig.queries``, "auto") is chosen on validation first, by that network alone
   (:func:`choose_query_map`; kept only if it clearly helps): the map helped on the simulator and
   cost MovieLens, whose searches are tags (``bench/README.md``);
3. the corrections' strengths: each correction's logits (the per-category network's, the
   transformer's) are scaled by its own factor from :data:`CORRECTION_SCALES`, the factors with the
   lowest KL on the whole validation split (:func:`choose_correction_scales`; the factors are folded
   into their last layers, so the graph is unchanged; ``--set scale_corrections=0`` keeps them as
   trained). Early stopping keeps the step with the best validation KL, but at that step the
   corrections were too strong on MovieLens and the Complete Journey, and on a simulated population
   the transformer's correction added nothing once the per-category network's was stronger
   (``bench/README.md``);
4. the plain path and the corrected model are scored on the whole validation split by KL; the
   corrected model is kept only if it is better there. Otherwise the checkpoint holds the plain
   path (it exports to a graph with the same inputs and outputs), and the card and the output say so;
5. with ``TrainConfig.refit`` on, the model chosen in 4 is trained again from the start on the
   training and validation periods together (:func:`refit_data`: every sample whose target ends
   before the test period), with everything validation chose: each stage's step of its best
   validation KL (on the same learning-rate schedule) and the corrections' strengths. The
   checkpoint holds these weights; its validation figures stay those of the selection run;
6. with ``TrainConfig.item_lift`` on, the items of the window (:mod:`models.item_lift`): a table of
   what each item's users did next, fit on the training cuts, how many of the window's newest items
   count, its shrinkage and its strength chosen on validation on top of the validation predictions
   of the model chosen in 4 (:func:`choose_item_lift`), kept only if it lowers the validation KL by
   0.1 % at least. The table is fit again on the training and validation periods when the model was
   refit, and the checkpoint's encoding carries it (:class:`interest_core.item_lift.ItemLift`):
   evaluation and the worker add it outside the graph. The card's validation metrics stay the
   model's without it; ``metrics.selection.item_lift`` has both validation KLs.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CORRECTION_SCALES = tuple(round(0.05 * i, 2) for i in range(41))  # 0, 0.05, ..., 2 (stage 3)
LOG_FLOOR = 1e-30  # probabilities below it (float32 underflow) are read as it before the log


def choose_correction_scales(p_off, p_parts, targets, scales=CORRECTION_SCALES) -> tuple[tuple[float, ...], float]:
    """One scale per correction, jointly the lowest mean KL against ``targets`` (N, k), and that KL.

    ``p_off`` (N, k) are the model's probabilities with every correction scaled to 0; ``p_parts`` holds,
    for each correction in :meth:`models.model.InterestModel.correction_outputs` order, the
    probabilities with that correction alone at its trained strength. Corrections are added in logits,
    so scales ``s`` predict ``softmax(log p_off + sum_i s_i * (log p_parts[i] - log p_off))`` (a
    softmax ignores each row's constant): every point of the grid ``scales`` x ... x ``scales`` is
    exact from these passes. The first of equal candidates (in grid order) wins."""
    import itertools

    from models.evaluate import kl_per_sample

    lo = np.log(np.maximum(np.asarray(p_off, np.float64), LOG_FLOOR))
    steps = [np.log(np.maximum(np.asarray(p, np.float64), LOG_FLOOR)) - lo for p in p_parts]
    best = None
    for s in itertools.product(scales, repeat=len(steps)):
        z = lo + sum(si * d for si, d in zip(s, steps))
        p = np.exp(z - z.max(1, keepdims=True))
        kl = float(kl_per_sample(targets, p / p.sum(1, keepdims=True)).mean())
        if best is None or kl < best[1]:
            best = (tuple(float(x) for x in s), kl)
    return best


def _mean_distribution(targets) -> list[float]:
    """The mean of the rows, as a distribution, in float64 (the numbers of models.baselines' prior)."""
    m = targets.astype("float64").mean(0)
    return (m / m.sum()).tolist()


RESUME_FILE = "resume.json"  # what --resume continues from: the run's split, encoding, log and settings


class ResumeMismatch(ValueError):
    """``--resume`` on a run that was started on another log or with other settings."""


def log_fingerprint(path) -> dict:
    """The log a run was started on, as ``--resume`` compares it: its size and a hash of its first
    and last MiB (cheap on gigabytes; another log differs in one of them, a log moved or copied
    does not). The path is kept for the message only."""
    import hashlib
    import os
    import stat

    if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe: "File or stream is not seekable.", naming nothing
        raise ValueError(f"{path}: not a regular file: train needs the log as a file (a run records a hash of "
                         "its first and last MiB, which --resume compares), not a pipe")
    size = os.path.getsize(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(1 << 20, size - (1 << 20)))
        h.update(f.read())
    return {"path": str(Path(path).resolve()), "size": size, "head_tail_sha256": h.hexdigest()}


def run_settings(data_cfg, train_cfg, model_overrides: dict | None, init_from) -> dict:
    """A run's settings as ``--resume`` compares them (as JSON reads them back): the model's with
    ModelConfig's defaults filled in (``--loss kl`` is no other setting than none); the torch
    threads change the speed only."""
    from dataclasses import MISSING, fields

    from models.model import ModelConfig

    train = {k: v for k, v in asdict(train_cfg).items() if k != "threads"}
    model = {f.name: f.default for f in fields(ModelConfig) if f.default is not MISSING} | dict(model_overrides or {})
    return json.loads(json.dumps({"data": asdict(data_cfg), "train": train, "model": model,
                                  "init_from": str(Path(init_from).resolve()) if init_from else None}))


def check_resume(out_dir, fingerprint: dict, data_cfg, train_cfg, model_overrides: dict | None,
                 init_from) -> dict | None:
    """The run in ``out_dir`` to continue (its resume.json), None when there is none. Raises
    :class:`ResumeMismatch` when it was started on another log than the one of ``fingerprint``
    (:func:`log_fingerprint`) or with other settings than these (resuming would mix both). A run that
    recorded neither (from before they were recorded) is not compared."""
    path = Path(out_dir) / RESUME_FILE
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        started, settings = saved.get("log"), saved.get("settings")
    except (ValueError, AttributeError):
        raise ResumeMismatch(f"{path} is not readable: start the run again without --resume") from None
    if started is not None:
        if (fingerprint["size"], fingerprint["head_tail_sha256"]) != (started.get("size"),
                                                                      started.get("head_tail_sha256")):
            raise ResumeMismatch(f"the run in {out_dir} was started on {started.get('path')} ({started.get('size')} "
                                 f"bytes), not on this --data ({fingerprint['size']} bytes): give that log, or "
                                 "another --out")
    if settings is not None:
        now = run_settings(data_cfg, train_cfg, model_overrides, init_from)
        changed = [f"{key} {settings.get(key)!r} then, {now[key]!r} now" for key in ("init_from",)
                   if settings.get(key) != now[key]]
        for group in ("data", "train", "model"):
            then, new = settings.get(group) or {}, now[group]
            changed += [f"{k} {then.get(k)!r} then, {new.get(k)!r} now" for k in sorted({*then, *new})
                        if then.get(k) != new.get(k)]
        if changed:
            raise ResumeMismatch(f"the run in {out_dir} was started with other settings ({'; '.join(changed)}): "
                                 "give the same options, or another --out")
    return saved


def run_training(data_path, out_dir, data_cfg=None, train_cfg=None, model_overrides: dict | None = None,
                 init_from=None, resume: bool = False, progress: bool = True, log=print) -> dict:
    """Train on ``data_path`` and write the checkpoint into ``out_dir``; returns the model card.
    ``resume`` continues the run in ``out_dir`` (:func:`check_resume` first)."""
    from models.data import DataConfig
    from models.model import TrainConfig

    data_cfg = data_cfg or DataConfig()
    train_cfg = train_cfg or TrainConfig()
    out = Path(out_dir)
    started = log_fingerprint(data_path)  # before the log is read: what training reads is this one
    saved = check_resume(out, started, data_cfg, train_cfg, model_overrides, init_from) if resume else None
    out.mkdir(parents=True, exist_ok=True)
    split, encoder = None, None
    if saved is not None:  # same split and encoder as the interrupted run
        from interest_core.encoding import Encoder

        split, encoder = saved["split"], Encoder.from_spec(saved["encoding"])
    td = prepare_training(data_path, data_cfg, train_cfg, encoder=encoder, split=split, log=log)
    if split is None:  # (a --resume with nothing to resume starts the run)
        from models.model import TRAIN_STATE_FILE, writing

        # an earlier run's training state is not this run's: a --resume after this run stopped before
        # its first save loaded it, weights and optimizer of other settings or another log
        (out / TRAIN_STATE_FILE).unlink(missing_ok=True)
        with writing(out / RESUME_FILE):
            (out / RESUME_FILE).write_text(json.dumps({
                "split": td.info["split"], "encoding": td.encoder.to_spec(), "log": started,
                "settings": run_settings(data_cfg, train_cfg, model_overrides, init_from)}))
    return fit(td, out, train_cfg, model_overrides, init_from=init_from, resume=resume, progress=progress, log=log)


@dataclass
class TrainingData:
    """Everything training reads, prepared once (benchmarks fit several models on one)."""

    data_path: str
    data_cfg: object
    ds: object  # models.data.Dataset
    encoder: object
    info: dict
    train_seqs: list
    dense: object  # models.data.DenseReadouts, or None (last readout only)
    train_prof: object  # (N, P) without dense readouts, else None
    train_tgt: object
    val_seqs: list
    val_prof: object
    prepare_seconds: float


def prepare_training(data_path, data_cfg, train_cfg, encoder=None, split=None, log=print) -> TrainingData:
    from models.data import DataConfig, encode_samples, invalid_summary, prepare, sample_profiles

    t0 = time.time()
    ds, encoder, info = prepare(data_path, data_cfg, encoder=encoder, split=split)
    data_cfg = DataConfig.from_dict(info["split"]["data_config"])  # the target chosen, if it was "auto"
    if "target_choice" in info["split"]:
        choice = info["split"]["target_choice"]
        k = f" {choice['target_k']}" if choice["target_k"] else ""
        log(f"target: {choice['target']}{k}, chosen from the log: {choice['why']} (--target sets it)")
    tr, va = ds.splits["train"], ds.splits["val"]
    log(f"data: {info['log']['events']} events, {info['log']['users']} users; samples "
        f"train {len(tr)} val {len(va)} test {len(ds.splits['test'])}; "
        f"skipped empty targets {info['samples']['empty_target']}; {encoder}")
    if info["log"]["invalid"]:
        log(f"data: {invalid_summary(info['log'])}")
    if len(tr) == 0 or len(va) == 0:
        hint = ("--target next_k or a smaller --target-window-s" if data_cfg.target == "time" else
                "a smaller --target-k, or a longer log")  # (it suggested next_k to a run that had chosen it)
        raise ValueError("not enough data for a time split: no training or validation samples "
                         f"(counts: {info['samples']}); for a short log try {hint}")
    if len(ds.splits["test"]) == 0:
        log("warning: the test split is empty (the log ends before a test target fits), so `evaluate` will "
            "have nothing to score on this log")
    train_seqs, dense, train_prof, train_tgt = training_inputs(ds, data_cfg, encoder, train_cfg, log)
    val_seqs = encode_samples(ds, va, data_cfg, encoder)
    val_prof = sample_profiles(ds, va, data_cfg, encoder)
    return TrainingData(str(data_path), data_cfg, ds, encoder, info, train_seqs, dense, train_prof, train_tgt,
                        val_seqs, val_prof, time.time() - t0)


def training_inputs(ds, data_cfg, encoder, train_cfg, log=print) -> tuple:
    """``(train_seqs, dense, train_prof, train_tgt)`` of ``ds``'s training split: dense readouts
    (``train_prof`` and ``train_tgt`` None) when ``train_cfg.dense_weight > 0``, else one per sequence."""
    from models.data import dense_readouts, encode_samples, sample_profiles

    tr = ds.splits["train"]
    if train_cfg.dense_weight > 0:
        train_seqs, dense = dense_readouts(ds, tr, data_cfg, encoder)
        log(f"dense training: {len(dense.pos)} readouts in {len(train_seqs)} sequences "
            f"({dense.readouts_per_sequence:.1f} per sequence; an earlier event weighs "
            f"{train_cfg.dense_weight:g} x the share of its window it sees, "
            f"{dense.weight[~dense.is_last].mean() if (~dense.is_last).any() else 0:.2f} on average)")
        return train_seqs, dense, None, None
    return encode_samples(ds, tr, data_cfg, encoder), None, sample_profiles(ds, tr, data_cfg, encoder), tr.targets


def with_aux_targets(td: TrainingData, train_cfg):
    """``td.dense`` with every training cut's target over ``train_cfg.aux_horizon`` target spans
    (:func:`models.data.scaled_targets`), a copy (``td`` may be shared); as it is without dense
    readouts or an auxiliary target."""
    from dataclasses import replace

    from models.data import scaled_targets

    if not train_cfg.aux_horizon or td.dense is None:
        return td.dense
    aux, ok = scaled_targets(td.ds, td.ds.splits["train_all"], td.data_cfg, train_cfg.aux_horizon)
    return replace(td.dense, aux_targets=aux, aux_ok=ok)


def refit_data(td: TrainingData, train_cfg, log=print) -> TrainingData:
    """``td`` with the validation period joined to training (stage 5,
    :func:`models.data.joined_dataset`): the same encoder and caps; validation is empty."""
    from dataclasses import replace

    from models.data import joined_dataset

    t0 = time.time()
    ds = joined_dataset(td.ds, td.encoder.categories, td.data_cfg)
    log(f"refit: {len(ds.splits['train'])} samples (training and validation periods), "
        f"against {len(td.ds.splits['train'])} for selection")
    train_seqs, dense, train_prof, train_tgt = training_inputs(ds, td.data_cfg, td.encoder, train_cfg, log)
    return replace(td, ds=ds, train_seqs=train_seqs, dense=dense, train_prof=train_prof, train_tgt=train_tgt,
                   val_seqs=[], val_prof=None, prepare_seconds=time.time() - t0)


def fit(td: TrainingData, out_dir, train_cfg, model_overrides: dict | None = None, init_from=None,
        resume: bool = False, progress: bool = True, log=print) -> dict:
    """Stages 1-6 of the module doc on prepared data; writes the checkpoint, returns the card."""
    import torch

    from interest_core.artifacts import CHECKPOINT_CARD_FILE, ENCODING_FILE, WEIGHTS_FILE
    from models.data import file_sha256
    from models.evaluate import metrics
    from models.model import TRAIN_STATE_FILE, json_text, save_checkpoint, train_model, writing

    model_overrides = dict(model_overrides or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(train_cfg.threads)
    torch.manual_seed(train_cfg.seed)
    t0 = time.time()
    data_cfg, ds, encoder, info = td.data_cfg, td.ds, td.encoder, td.info
    tr, va = ds.splits["train"], ds.splits["val"]
    train_seqs, train_prof, train_tgt = td.train_seqs, td.train_prof, td.train_tgt
    dense = with_aux_targets(td, train_cfg)  # td.dense, with the auxiliary target if asked for
    val_seqs, val_prof = td.val_seqs, td.val_prof
    qt = query_targets(td) if train_cfg.queries != "off" else None
    if qt is None or not qt[1].any():  # (no search in training: a map would stay as it started)
        model_overrides["query_offset"] = -1
    if train_cfg.aux_horizon and dense is not None:
        model_overrides["aux_head"] = 1
    seeded = torch.get_rng_state()  # where the model starts (again, if stage 2a leaves the map out)
    model = _new_model(encoder, model_overrides, tr.targets, init_from, qt)
    log("model config: " + json.dumps({k: v for k, v in asdict(model.config).items() if k != "backbone"}))
    log("train config: " + json.dumps(asdict(train_cfg)))
    log(f"data config: {json.dumps(asdict(data_cfg))}")

    # 1) the plain path alone
    plain, plain_summary = train_plain_path(td, model_overrides, train_cfg, progress)
    history = [{**h, "stage": "plain"} for h in plain_summary["history"]] if plain_summary else []
    plain_pred, plain_kl = _val_pred_kl(plain, val_seqs, val_prof, va.targets, encoder.pad_id)
    summary = {"steps": 0, "stop_reason": "plain path only", "train_seconds": 0.0}
    query_map = None
    if train_cfg.queries == "auto" and hasattr(model, "query_cat") and model.config.correction != "none":
        # 2a) the query map, chosen on validation
        query_map = choose_query_map(td, plain, model_overrides, qt, train_cfg, progress)
        if not query_map["kept"]:  # the model queries=off builds: the map draws nothing, so the same start
            model_overrides["query_offset"] = -1
            torch.set_rng_state(seeded)
            model = _new_model(encoder, model_overrides, tr.targets, init_from)
        lo, hi = query_map["val_kl_diff_ci95"]
        log(f"query map: the per-category network alone reached validation KL {query_map['val_kl_with']:.4f} "
            f"reading the searches through it and {query_map['val_kl_without']:.4f} without (difference "
            f"{lo:+.4f} to {hi:+.4f}); {'kept' if query_map['kept'] else 'left out'} "
            f"({query_map['train_seconds']:.0f}s; --set queries=on|off decides instead)")
    n_params = sum(p.numel() for p in model.parameters())
    # 2) the corrections, from the plain path
    if model.config.correction != "none":
        _copy_plain_path(plain, model)
        summary = train_model(model, train_seqs, train_prof, train_tgt, val_seqs, val_prof, va.targets, train_cfg,
                              encoder.pad_id, state_path=out / TRAIN_STATE_FILE, resume=resume,
                              progress=progress, dense=dense)
        history += [{**h, "stage": "corrected"} for h in summary["history"]]
    corrected_pred, corrected_kl, unscaled_kl, scales = None, None, None, None
    if model.config.correction != "none":
        # 3) the corrections' strengths, chosen on validation
        scales, corrected_pred, corrected_kl, unscaled_kl = scale_on_validation(
            model, val_seqs, val_prof, va.targets, encoder.pad_id, train_cfg.scale_corrections)
    # 4) keep the corrections only if they beat the plain path on validation
    keep_corrected = corrected_kl is not None and corrected_kl < plain_kl
    chosen = model if keep_corrected else plain
    selection = {
        "rule": "each correction's strength is its factor in the combination with the lowest validation KL; the "
                "corrected model is kept only if its validation KL is below the plain path's",
        "plain_val_kl": plain_kl, "corrected_val_kl": corrected_kl,
        "correction_scales": scales, "unscaled_val_kl": unscaled_kl,
        "correction": model.config.correction,
        "exported": model.config.correction if keep_corrected else "none",
        "query_map": query_map or _query_map_record(model, qt, train_cfg),
    }
    val_pred = corrected_pred if keep_corrected else plain_pred  # no second pass over validation
    train_seconds = summary["train_seconds"] + (plain_summary["train_seconds"] if plain_summary else 0.0) + \
        (query_map["train_seconds"] if query_map else 0.0)
    prep_s = td.prepare_seconds
    prior_targets, refit = tr.targets, None
    # 5) the chosen model again, on the training and validation periods
    if train_cfg.refit:
        rd = refit_data(td, train_cfg, log)
        chosen, refit = _refit(rd, model_overrides, init_from, train_cfg, plain_summary,
                               summary if keep_corrected else None, scales, progress)
        prior_targets = rd.ds.splits["train"].targets
        train_seconds += refit["train_seconds"]
        prep_s += rd.prepare_seconds
        selection["refit"] = refit
    if train_cfg.item_lift:
        # 6) the items' lift, chosen on validation on top of the model chosen in 4
        selection["item_lift"], lift = choose_item_lift(td, val_pred, rd if refit else None)
        if lift is not None:
            encoder = encoder.with_item_lift(lift)
        il = selection["item_lift"]
        log(f"item lift: validation KL {il['val_kl_with']:.4f} with the window's items against "
            f"{il['val_kl_without']:.4f} without (newest {il['slots']}, m {il['m']:g}, strength {il['lambda']:g}); "
            + (f"kept, {il['items']} items" if lift is not None else "left out")
            + f" ({il['seconds']:.0f}s; --set item_lift=0 leaves it out)")
    card = {
        "model_version": None,
        "categories": list(encoder.categories),
        "split": info["split"],
        # the per-user window the model was trained on; serve it with the same
        # INTEREST_HORIZON_S / INTEREST_MAX_EVENTS / INTEREST_PROFILE_RETENTION_S (CONTRACT "Per-user window")
        "window": {"horizon_s": data_cfg.horizon_s, "max_events": data_cfg.max_events,
                   "profile_retention_s": data_cfg.profile_retention_s},
        "data": {"path": td.data_path, "sha256": file_sha256(td.data_path), **info["log"]},
        "samples": info["samples"],
        "training": {**asdict(train_cfg), "steps": summary["steps"], "stop_reason": summary["stop_reason"],
                     "plain_steps_run": plain_summary["steps"] if plain_summary else 0,
                     "train_seconds": round(train_seconds, 1),
                     "total_seconds": round(time.time() - t0 + prep_s, 1), "prepare_seconds": round(prep_s, 1),
                     "parameters": n_params if keep_corrected else sum(p.numel() for p in plain.parameters()),
                     "dense_readouts": int(len(dense.pos)) if dense is not None else int(len(tr)),
                     "init_from": init_from, "loss": model.config.loss},
        # the population's category distribution (mean training target): the prior of the
        # re-ranking lift (interest_core.rerank); export copies it into model.json
        "category_prior": dict(zip(encoder.categories, _mean_distribution(prior_targets))),
        "metrics": {"validation": metrics(va.targets, val_pred), "selection": selection},
        "history": history,
    }
    save_checkpoint(chosen, encoder, card, out)
    # a version that changes with the weights and the encoding
    import hashlib

    h = hashlib.sha256((out / WEIGHTS_FILE).read_bytes())
    h.update((out / ENCODING_FILE).read_bytes())
    card["model_version"] = h.hexdigest()[:16]
    with writing(out / CHECKPOINT_CARD_FILE):
        (out / CHECKPOINT_CARD_FILE).write_text(json_text(card, CHECKPOINT_CARD_FILE))
    strength = ""
    if scales:
        at = " and ".join(f"{s:g} ({n})" for n, s in scales.items())
        strength = f" at {at} x their trained strength (KL {unscaled_kl:.4f} at 1)"
    if keep_corrected:
        verdict = (f"the corrections ({model.config.correction}){strength} beat the plain path on validation: "
                   f"KL {corrected_kl:.4f} vs {plain_kl:.4f}; the checkpoint holds the corrected model")
    elif corrected_kl is None:
        verdict = f"plain path only (correction none): validation KL {plain_kl:.4f}"
    else:
        verdict = (f"the corrections ({model.config.correction}){strength} did NOT beat the plain path on validation "
                   f"(KL {corrected_kl:.4f} vs {plain_kl:.4f}): the checkpoint holds the plain path")
    if refit:
        verdict += (f", refit on the training and validation periods ({refit['samples']} samples, "
                    f"{refit['plain_steps']} + {refit['steps']} steps)")
    log(f"trained {summary['steps']} + {card['training']['plain_steps_run']} (plain) steps in {train_seconds:.0f}s "
        f"({summary['stop_reason']}); {verdict}; checkpoint in {out}")
    return card


def choose_item_lift(td: TrainingData, val_pred: np.ndarray, refit_td: TrainingData | None = None,
                     slots_grid=None) -> tuple:
    """Stage 6: ``(record, ItemLift or None)`` for the chosen model's validation predictions
    (:func:`item_lift_choice`; with ``refit_td``, stage 5's data, the table is fit again on it)."""
    return item_lift_choice(td.ds, td.data_cfg, td.encoder.categories, val_pred,
                            None if refit_td is None else refit_td.ds, slots_grid)


def item_lift_choice(ds, dcfg, categories, val_pred: np.ndarray, refit_ds=None, slots_grid=None) -> tuple:
    """``(record, ItemLift or None)``: for each number of the window's newest items that count
    (``slots_grid``, :data:`models.item_lift.SLOTS`), the table of the training cuts' items of
    ``ds`` (:func:`models.item_lift.fit_table`, items credited with less than one target left out);
    the slots, the shrinkage ``m`` and the strength ``lam`` with the lowest validation KL on top of
    ``val_pred`` (any predictor's: the model's in training, the best baseline's in evaluation), kept
    when it lowers the validation KL by :data:`models.item_lift.MIN_GAIN` of it at least; with
    ``refit_ds`` (a refit's data) the table is fit again on its training cuts, the choices kept."""
    from models.data import sample_windows
    from models.evaluate import kl_per_sample, paired_bootstrap
    from models.item_lift import (MIN_GAIN, SHRINK, SLOTS, build, choose, cut_lifts, fit_table, pruned, window_keys,
                                  with_lift)

    t0 = time.time()
    index = {c: i for i, c in enumerate(categories)}

    def training_cuts(d):
        """``(windows, targets, prior)`` of the training cuts of ``d``."""
        tr = d.splits["train"]
        return sample_windows(d, tr, dcfg), tr.targets, np.asarray(_mean_distribution(tr.targets))

    def fit_pruned(windows, targets, slots):
        return pruned(fit_table([window_keys(w, index, slots) for w in windows], targets))

    va = ds.splits["val"]
    val_windows = sample_windows(ds, va, dcfg)
    train_windows, train_targets, prior = training_cuts(ds)
    best = None
    for slots in slots_grid or SLOTS:
        table = fit_pruned(train_windows, train_targets, slots)
        val_keys = [window_keys(w, index, slots) for w in val_windows]
        val_lifts = {m: cut_lifts(val_keys, table, prior, m) for m in SHRINK}
        m, lam, kl = choose(val_pred, va.targets, val_lifts, kl_per_sample)
        if best is None or kl < best[3]:
            best = (slots, m, lam, kl, table, val_lifts[m])
    slots, m, lam, kl, table, val_lift = best
    without = kl_per_sample(va.targets, val_pred)
    diff = kl_per_sample(va.targets, with_lift(val_pred, val_lift, lam)) - without
    kept = lam > 0 and kl < (1.0 - MIN_GAIN) * float(without.mean())
    record = {"rule": "the newest items that count (slots), the shrinkage m and the strength lambda with the lowest "
                      f"validation KL on top of the chosen model; kept when that KL is at least {MIN_GAIN:.1%} lower "
                      "than without", "slots": slots, "m": m, "lambda": lam, "val_kl_with": kl,
              "val_kl_without": float(without.mean()), "val_kl_diff_ci95": paired_bootstrap(diff, va.user),
              "kept": kept, "items": 0}
    lift = None
    if kept:
        if refit_ds is not None:
            windows, targets, prior = training_cuts(refit_ds)
            table = fit_pruned(windows, targets, slots)
        lift = build(table, prior, m, lam, categories, slots)
        record["items"] = len(lift)
    record["seconds"] = round(time.time() - t0, 1)
    return record, lift


def _query_map_record(model, qt, train_cfg) -> dict:
    """The card's ``query_map`` when validation did not choose: whether the model reads the searches, and why."""
    if qt is None:
        return {"kept": False, "rule": "queries=off"}
    if not qt[1].any():
        return {"kept": False, "rule": "no search in training"}
    if not hasattr(model, "query_cat") or model.config.correction == "none":
        return {"kept": False, "rule": "no per-category network to read them"}
    return {"kept": True, "rule": f"queries={train_cfg.queries}"}


def train_plain_path(td: TrainingData, model_overrides: dict, train_cfg, progress: bool = False) -> tuple:
    """Stage 1: ``(the plain path, train_model's summary or None)``, trained alone for
    ``TrainConfig.plain_steps`` (none: as it starts)."""
    from models.model import train_model

    tr, va = td.ds.splits["train"], td.ds.splits["val"]
    plain = _new_model(td.encoder, {**model_overrides, "correction": "none"}, tr.targets)
    if train_cfg.plain_steps == 0:
        return plain, None
    return plain, train_model(plain, td.train_seqs, td.train_prof, td.train_tgt, td.val_seqs, td.val_prof, va.targets,
                              train_cfg, td.encoder.pad_id, progress=progress, dense=td.dense,
                              params=plain.plain_parameters(), max_steps=train_cfg.plain_steps,
                              peak_lr=train_cfg.plain_lr, desc="plain path")


def scale_on_validation(model, val_seqs, val_prof, val_targets, pad_id: int, choose: int = 1) -> tuple:
    """Stage 3 in place: each correction's logits scaled by its factor in the combination with the
    lowest validation KL (:func:`choose_correction_scales`), unless ``choose`` is 0. Returns
    ``(scales by correction, validation probabilities, their KL, the KL as trained)``."""
    import copy

    from models.model import predict

    p_on, unscaled_kl = _val_pred_kl(model, val_seqs, val_prof, val_targets, pad_id)
    names = list(model.correction_outputs())
    if not (choose and names):  # (a "features" model with cat_hidden=0 has no correction to scale)
        return dict.fromkeys(names, 1.0), p_on, unscaled_kl, unscaled_kl

    def alone(i):  # validation probabilities with correction i alone (None: none of them)
        m = copy.deepcopy(model)
        m.scale_corrections([1.0 if j == i else 0.0 for j in range(len(names))])
        return predict(m, val_seqs, val_prof, pad_id)

    parts = [alone(i) for i in range(len(names))] if len(names) > 1 else [p_on]
    chosen, _ = choose_correction_scales(alone(None), parts, val_targets)
    model.scale_corrections(chosen)
    return (dict(zip(names, chosen)), *_val_pred_kl(model, val_seqs, val_prof, val_targets, pad_id), unscaled_kl)


def _val_pred_kl(model, val_seqs, val_prof, val_targets, pad_id: int) -> tuple[np.ndarray, float]:
    """The validation probabilities of ``model``, and their mean KL."""
    from models.evaluate import kl_per_sample
    from models.model import predict

    p = predict(model, val_seqs, val_prof, pad_id)
    return p, float(kl_per_sample(val_targets, p).mean())


def choose_query_map(td: TrainingData, plain, model_overrides: dict, qt, train_cfg, progress: bool = False) -> dict:
    """Stage 2a: whether the per-category network reads the window's searches through the query map.

    The map is one of that network's inputs, so the network alone decides (correction "features", no
    transformer, so its steps are cheap: 21 s of the demo's ``train``, docs/model.md, "Training cost"):
    trained from the stage-1 plain path ``plain`` as stage 2 trains, but for at most
    ``TrainConfig.query_map_steps``, with and without the map, each at the strength stage 3 would
    choose. The map is kept only if it lowers the validation KL beyond
    doubt: the 95 % interval of the per-sample difference, users resampled, below zero. An input
    that does not clearly help is left out, the simpler model, as the one-standard-error rule of
    model selection prefers: on MovieLens, whose searches are tags, the two runs came within 0.0011
    of each other either way, while the full model with the map stopped earlier and scored worse
    on validation and test; on the simulator the map was 0.5-2 % better (``bench/README.md``,
    "Searches through the query map"). Both runs start from the seed, and stage 2 seeds itself
    again, so the model trained after the choice is the one ``queries=on`` or ``off`` trains."""
    import torch

    from models.evaluate import kl_per_sample, paired_bootstrap
    from models.model import train_model

    tr, va = td.ds.splits["train"], td.ds.splits["val"]
    out = {"rule": "the per-category network alone (no transformer) trained with and without the map; the map is "
                   "kept if the 95 % interval of its validation KL minus the other's (users resampled) is below zero"}
    seconds, kl = 0.0, {}
    for with_map in (True, False):
        torch.manual_seed(train_cfg.seed)
        overrides = {**model_overrides, "correction": "features", **({} if with_map else {"query_offset": -1})}
        m = _new_model(td.encoder, overrides, tr.targets, None, qt if with_map else None)
        _copy_plain_path(plain, m)
        run = train_model(m, td.train_seqs, td.train_prof, td.train_tgt, td.val_seqs, td.val_prof, va.targets,
                          train_cfg, td.encoder.pad_id, progress=progress, dense=td.dense,
                          max_steps=train_cfg.query_map_steps, desc="query map" if with_map else "no query map")
        _, p, _, _ = scale_on_validation(m, td.val_seqs, td.val_prof, va.targets, td.encoder.pad_id,
                                         train_cfg.scale_corrections)
        kl[with_map] = kl_per_sample(va.targets, p)
        seconds += run["train_seconds"]
    ci = paired_bootstrap(kl[True] - kl[False], np.asarray(va.user))
    out.update(val_kl_with=float(kl[True].mean()), val_kl_without=float(kl[False].mean()),
               val_kl_diff_ci95=ci, kept=bool(ci[1] < 0), train_seconds=round(seconds, 1))
    return out


def _refit(rd: TrainingData, model_overrides: dict, init_from, train_cfg, plain_summary, summary, scales,
           progress: bool) -> tuple:
    """Stage 5 on :func:`refit_data`'s ``rd``: the plain path for its best step, then (``summary``
    given: the corrected model was kept) the corrections for theirs, at the chosen ``scales``.
    Returns the model and the card's ``refit`` record."""
    import torch

    from models.model import train_model

    torch.manual_seed(train_cfg.seed)
    pad, tr = rd.encoder.pad_id, rd.ds.splits["train"]
    common = (rd.train_seqs, rd.train_prof, rd.train_tgt, None, None, None, train_cfg, pad)
    plain = _new_model(rd.encoder, {**model_overrides, "correction": "none"}, tr.targets)
    runs = {}  # stage -> train_model's summary
    if plain_summary is not None:
        runs["plain"] = train_model(plain, *common, progress=progress, dense=rd.dense, params=plain.plain_parameters(),
                                    peak_lr=train_cfg.plain_lr, desc="refit plain path",
                                    refit=(plain_summary["best_step"], plain_summary["total_steps"]))
    model = plain
    if summary is not None:
        with_map = model_overrides.get("query_offset") != -1  # (fit decided it)
        model = _new_model(rd.encoder, model_overrides, tr.targets, init_from, query_targets(rd) if with_map else None)
        _copy_plain_path(plain, model)
        runs["corrected"] = train_model(model, *common, progress=progress, dense=with_aux_targets(rd, train_cfg),
                                        desc="refit", refit=(summary["best_step"], summary["total_steps"]))
        if scales:
            model.scale_corrections(list(scales.values()))
    steps = {st: r["steps"] for st, r in runs.items()}
    return model, {"samples": int(len(tr)), "plain_steps": steps.get("plain", 0), "steps": steps.get("corrected", 0),
                   "train_seconds": round(sum(r["train_seconds"] for r in runs.values()), 1)}


def _new_model(encoder, model_overrides: dict, targets, init_from=None, query_targets=None):
    """A new model of ``model_overrides``, its prior at the mean of ``targets`` (N, k), its query
    map (if it has one) at ``query_targets`` (:func:`query_targets`)."""
    from models.model import build_model

    model = build_model(encoder, init_from=init_from, **model_overrides)
    model.init_prior(targets.mean(0))
    if query_targets is not None and hasattr(model, "query_cat"):
        model.init_query_map(*query_targets)
    return model


def query_targets(td: TrainingData) -> tuple[np.ndarray, np.ndarray]:
    """``(sums (V, k), counts (V,))``: per query subword (id - ``query_offset``), the sum of the
    training targets of the readouts on the searches it is in, and how many: what the users who
    searched it did next. The query map starts there (:meth:`models.model.InterestModel.init_query_map`)."""
    enc = td.encoder
    v = enc.vocab_size - enc.query_offset
    if not td.train_seqs:
        return np.zeros((v, enc.k)), np.zeros(v)
    tok = np.concatenate([np.asarray(x, np.int64) for x in td.train_seqs])  # every sequence, end to end
    start = np.concatenate([[0], np.cumsum([len(x) for x in td.train_seqs])[:-1]])
    # an event has exactly one type token: numbering them numbers the events, and each token gets its event's
    event = np.cumsum((tok >= enc.type_offset) & (tok < enc.category_offset))
    if td.dense is not None:
        d = td.dense
        seq_of = np.repeat(np.arange(len(td.train_seqs)), np.diff(d.offsets))
        readout, target, target_row = start[seq_of] + d.pos, d.targets, d.cut_row
    else:  # one readout per sequence: its newest event's last token (before the hour and [END])
        readout = start + np.array([len(x) for x in td.train_seqs]) - 3
        target, target_row = np.asarray(td.train_tgt), np.arange(len(td.train_seqs))
    row = np.full(event[-1] + 1, -1)
    row[event[readout]] = np.arange(len(readout))  # the readout on each event, if any
    q = np.flatnonzero(tok >= enc.query_offset)
    r = row[event[q]]
    sub, t = tok[q[r >= 0]] - enc.query_offset, target[target_row[r[r >= 0]]]  # (Q,), (Q, k)
    sums = np.stack([np.bincount(sub, weights=t[:, j], minlength=v) for j in range(enc.k)], axis=1)
    return sums, np.bincount(sub, minlength=v).astype(np.float64)


def _copy_plain_path(plain, model) -> None:
    """Start ``model``'s plain path at the trained ``plain``'s (stage 2, and its refit)."""
    import torch

    with torch.no_grad():
        for p_full, p_plain in zip(model.plain_parameters(), plain.plain_parameters()):
            p_full.copy_(p_plain)

"""The interest model against the baselines on one dataset, with ablations (not a test).

    .venv/bin/python bench/model_eval.py --dataset cj|movielens|sim|rees46 [--variants default,plain,...]
        [--users N --days D --seed S --mechanisms on|off] [--pretrained DIR] [--workdir DIR] [--end-frac F]
        [--reuse]

The data is prepared once (:func:`models.train.prepare_training`), the baselines are fit once
(:func:`models.evaluate.baseline_predictions`; both cached in the workdir while the log, the data
settings and the code of ``CACHED_CODE`` are unchanged, so the setup time is measured by the first
run only), then every variant is trained with the project's own :func:`models.train.fit` (plain
path, corrections, choice on validation) and scored on the test split by
:func:`models.evaluate.report`, the code behind ``interest-stream evaluate``. Each
variant's full metrics.json lands in ``WORKDIR/<dataset>/<variant>/metrics.json``; stdout gets one
JSON summary with the machine, the commit and every figure the README quotes. Every variant after
the first has ``kl_diff_vs_first``: its test KL minus the first variant's on the same samples, with
the paired bootstrap interval over users (``kl_diff_vs_first_ci95``). Each variant's
``by_sitting`` splits its test samples by where the cut falls in the user's sittings (an hour
without an event ends one: :func:`sitting_groups`), and gives each user's first test cut, the cut
``bench/live_eval.py`` streams, and each new user's first event on their own. Each variant is also
compared with the best baseline given an items' lift as ``train`` gives the model one
(``evaluate``'s ``best_with_item_lift``; ``kl_ratio_vs_best_with_item_lift``), and per_sample.npz
keeps that baseline's KL per test sample for ``bench/backtest.py``. On a simulated log
each prediction is also scored against the simulator's truth (:func:`_truth`). ``--reuse`` scores
the checkpoints an earlier run with the same settings left in the workdir instead of training
them again: for metrics added after they were trained.

Variants (``--variants``, comma-separated):
* ``default``: what ``interest-stream train`` does with the dataset's target;
* ``features``: the per-category correction without the transformer (correction "features");
* ``plain``: the plain path alone (correction "none");
* ``single_target``: supervision of each sequence's last readout only (no dense readouts);
* ``no_profile``: the model's profile input zeroed in training, validation and test;
* ``unscaled``: the corrections kept at the strength training left them (``scale_corrections=0``);
* ``mse``: the MSE loss instead of KL;
* ``pretrained``: ``--init-from`` the ``--pretrained`` directory (``interest-stream pretrain``);
* ``per_length`` / ``plain_per_length``: ``default`` / ``plain`` with the plain path's weights per
  history length (``length_buckets``, the ``mixture`` baseline's :data:`models.baselines.LENGTH_BUCKETS`;
  at ``7f6fda1`` they were the default, and these variants, then named ``one_length`` and
  ``plain_one_length``, were the model without them);
* ``no_refit``: ``default`` without its refit on the training and validation periods
  (``refit=0``, :func:`models.train.fit` stage 5). A refit variant's baselines are refit on the
  same samples (:meth:`models.baselines.Baselines.refit`), and ``kl_ratio_vs_unrefit_baselines``
  compares it with the baselines as they were fit (at ``8309b08`` refit was off, and this
  comparison was ``default,refit``);
* ``no_queries``: ``default`` without the query map (``queries=off``): the per-category network does
  not read the window's searches (the transformer still sees their subwords);
* ``queries_on``: ``default`` with the query map whatever validation says (``queries=on``, the
  default from ``bf3f45b`` to ``7727068``; ``default`` now chooses it on validation);
* ``seeds3``: ``default`` trained at three seeds (the configured one and the next two), their test
  probabilities averaged (not something ``train`` exports: a measure of what lower variance is worth).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

from models.baselines import LENGTH_BUCKETS  # noqa: E402

# The target of each dataset (justified in docs/model.md, "Targets"):
DATASETS = {
    # grocery: the next 4 baskets (about a month at the median household's pace); a time target
    # would mix households that shop twice a week with ones that shop twice a month
    "cj": {"data": {"target": "next_baskets", "target_k": 4}},
    # bursty sittings of ratings, then months of nothing: the next 10 ratings
    "movielens": {"data": {"target": "next_k", "target_k": 10, "val_frac": 0.10}},
    # the simulator: the next 6 hours (the default target)
    "sim": {"data": {}},
    # 2 h 37 min of a shop's log: the next 5 events (no multi-day histories)
    "rees46": {"data": {"target": "next_k", "target_k": 5}},
}
# what the cache depends on: the code that prepares, encodes and scores the data (from the repository root)
CACHED_CODE = ("models/data.py", "models/baselines.py", "models/evaluate.py", "models/train.py",
               "interest_core/encoding.py", "interest_core/window.py")
VARIANTS = {
    "default": {},
    "features": {"model": {"correction": "features"}},
    "plain": {"model": {"correction": "none"}},
    "single_target": {"train": {"dense_weight": 0.0}},
    "no_profile": {"zero_profile": True},
    "unscaled": {"train": {"scale_corrections": 0}},
    "mse": {"model": {"loss": "mse"}},
    "pretrained": {"pretrained": True},
    "seeds3": {"members": 3},
    "per_length": {"model": {"length_buckets": list(LENGTH_BUCKETS)}},
    "plain_per_length": {"model": {"correction": "none", "length_buckets": list(LENGTH_BUCKETS)}},
    "no_refit": {"train": {"refit": 0}},
    "no_queries": {"train": {"queries": "off"}},
    "queries_on": {"train": {"queries": "on"}},
    "aux4": {"train": {"aux_horizon": 4}},
    "aux_quarter": {"train": {"aux_horizon": 0.25}},
    "no_item_lift": {"train": {"item_lift": 0}},
}


def data_overrides(dataset: str, items) -> dict:
    """The dataset's data config (:data:`DATASETS`) with ``KEY=VALUE`` items applied (``--data-set``)."""
    from models.data import DataConfig

    out = dict(DATASETS[dataset]["data"])
    for item in items:
        key, _, raw = item.partition("=")
        typ = DataConfig.__dataclass_fields__[key].type if key in DataConfig.__dataclass_fields__ else None
        if typ is None:
            raise click.BadParameter(f"unknown key {key!r}", param_hint="--data-set")
        out[key] = {"int": int, "float": float}.get(typ if isinstance(typ, str) else typ.__name__, str)(raw)
    return out


def command(dataset: str, workdir: Path, *options: str, sets=(), data_sets=()) -> list[str]:
    """This script as a subprocess (bench/backtest.py, bench/cross_target.py): ``--set`` and
    ``--data-set`` from their ``KEY=VALUE`` items, then any other ``options``."""
    return [sys.executable, str(Path(__file__).resolve()), "--dataset", dataset, "--workdir", str(workdir),
            *[a for s in sets for a in ("--set", s)], *[a for s in data_sets for a in ("--data-set", s)], *options]


def make_log(dataset: str, wd: Path, users: int, days: float, seed: int, mechanisms: str) -> Path:
    from models.loaders import load_completejourney, load_movielens, load_rees46

    if dataset == "cj":
        log = wd / "completejourney.jsonl"
        if not log.exists():
            load_completejourney(DATA / "completejourney", log)
    elif dataset == "movielens":
        log = wd / "movielens.jsonl"
        if not log.exists():
            load_movielens(DATA / "movielens-latest-small", log)
    elif dataset == "rees46":
        log = wd / "rees46.jsonl"
        if not log.exists():
            load_rees46(DATA / "rees46-ecommerce-behavior-sample" / "events_2019-10-01_head.csv", log)
    else:
        from models.simulate import simulate_to_files

        on = mechanisms == "on"
        log = wd / f"sim-{users}-{days:g}-{seed}-{mechanisms}.jsonl"
        if not log.exists():
            simulate_to_files(users, days, seed, log, intent=on, transitions=on)
    return log


def truncate_log(log: Path, end_frac: float) -> Path:
    """The log's events before its ``end_frac`` event-time quantile (the quantile ``models.data``
    splits by), as ``<log>-end<F>.jsonl`` beside it: the same data as it stood at an earlier day, so
    a backtest's test periods can be moved back in time. A timestamp is kept or dropped whole (a
    basket's lines share one)."""
    if end_frac >= 1.0:
        return log
    out = log.with_name(f"{log.stem}-end{end_frac:.4f}.jsonl")
    if out.exists() and out.stat().st_mtime > log.stat().st_mtime:
        return out
    import orjson

    lines = log.read_bytes().splitlines()
    ts = np.array([orjson.loads(line)["ts"] for line in lines])
    end = np.quantile(ts, end_frac, method="lower")
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(b"".join(line + b"\n" for line, t in zip(lines, ts) if t < end))
    tmp.replace(out)
    return out


def single_target(td):
    """The same prepared data with one readout per sequence (the last)."""
    from models.data import encode_samples, sample_profiles

    tr = td.ds.splits["train"]
    return replace(td, train_seqs=encode_samples(td.ds, tr, td.data_cfg, td.encoder), dense=None,
                   train_prof=sample_profiles(td.ds, tr, td.data_cfg, td.encoder), train_tgt=tr.targets)


def zero_profile(td):
    import numpy as np

    dense = td.dense and replace(td.dense, profiles=np.zeros_like(td.dense.profiles))
    return replace(td, dense=dense, val_prof=np.zeros_like(td.val_prof),
                   train_prof=None if td.train_prof is None else np.zeros_like(td.train_prof))


def reused_card(ck: Path, tcfg, model_overrides: dict) -> dict:
    """``--reuse``: the card of the checkpoint at ``ck``, which must have been trained with ``tcfg``
    (threads aside) and the model settings ``model_overrides``; otherwise a clear error."""
    from dataclasses import asdict

    from models.model import CHECKPOINT_CARD_FILE, CONFIG_FILE

    if not (ck / CHECKPOINT_CARD_FILE).exists():
        raise click.UsageError(f"--reuse: no checkpoint at {ck}; run without --reuse first")
    card = json.loads((ck / CHECKPOINT_CARD_FILE).read_text())
    trained_model = json.loads((ck / CONFIG_FILE).read_text())["model"]
    differ = {k: (card["training"].get(k), v) for k, v in asdict(tcfg).items()
              if k != "threads" and card["training"].get(k) != v}
    differ |= {k: (trained_model.get(k), v) for k, v in model_overrides.items() if trained_model.get(k) != v}
    if differ:
        raise click.UsageError(f"--reuse: the checkpoint at {ck} was trained with other settings "
                               f"(setting: (trained, asked)): {differ}")
    return card


def summarise(name: str, card: dict, result: dict, wall: float) -> dict:
    g = result["gain_ci95"]
    best = result["best_baseline"]
    r4 = lambda x: round(float(x), 4)  # noqa: E731
    return {
        "variant": name,
        "kl": r4(result["models"]["gpt2"]["kl"]),
        "best_baseline": best,
        "best_baseline_kl": r4(result["models"][best]["kl"]),
        "ema_prior_kl": r4(result["models"]["ema_prior"]["kl"]),
        "kl_ratio": r4(result["kl_ratio"]),
        "kl_ratio_vs_ema_prior": r4(result["models"]["gpt2"]["kl"] / result["models"]["ema_prior"]["kl"]),
        # against the best baseline given an items' lift (models.evaluate.report's best_with_item_lift)
        "kl_ratio_vs_best_with_item_lift": r4(result["best_with_item_lift"]["kl_ratio"]),
        "kl_gain_vs_best_with_item_lift_ci95": [r4(x) for x in result["best_with_item_lift"]["kl_gain_ci95"]],
        "best_baseline_item_lift": {k: result["best_with_item_lift"]["item_lift"][k]
                                    for k in ("kept", "slots", "m", "lambda", "items")},
        "kl_gain_ci95": [r4(x) for x in result["kl_gain_ci95"]],
        "top3": r4(result["models"]["gpt2"]["top3"]),
        "best_baseline_top3": r4(result["models"][best]["top3"]),
        "top3_gain_ci95": [r4(x) for x in g["top3"]["ci95"]],
        "ece": round(result["models"]["gpt2"]["ece"], 5), "best_baseline_ece": round(result["models"][best]["ece"], 5),
        "buckets_kl_ratio": {b: r4(v["kl_ratio"]) for b, v in result["buckets"].items() if b != "rule"},
        "buckets_kl_gain_ci95": {b: [r4(x) for x in v["gain_ci95"]["kl"]["ci95"]]
                                 for b, v in result["buckets"].items() if b != "rule"},
        "truth_kl": {n: r4(v["kl"]) for n, v in result.get("truth", {}).get("models", {}).items()
                     if n in ("gpt2", "ema_prior", "mixture")},
        "truth_kl_gain_ci95": {n: [r4(x) for x in ci]
                               for n, ci in result.get("truth", {}).get("gain_ci95", {}).items()},
        "truth_kl_by_next_event": {g: {"samples": v["samples"],
                                       "truth_kl": {n: r4(x) for n, x in v["truth_kl"].items()},
                                       "event_kl": {n: r4(x) for n, x in v["event_kl"].items()}}
                                   for g, v in result.get("truth", {}).get("by_next_event", {}).items()},
        "exported": card["metrics"]["selection"]["exported"],
        "val_kl": {"plain": r4(card["metrics"]["selection"]["plain_val_kl"]),
                   "corrected": card["metrics"]["selection"]["corrected_val_kl"] and
                   r4(card["metrics"]["selection"]["corrected_val_kl"]),
                   "unscaled": card["metrics"]["selection"]["unscaled_val_kl"] and
                   r4(card["metrics"]["selection"]["unscaled_val_kl"])},
        "correction_scales": card["metrics"]["selection"]["correction_scales"],
        # whether the per-category network reads the searches, and why (models.train.fit, stage 2a)
        "query_map": card["metrics"]["selection"].get("query_map"),
        "seed": card["training"]["seed"],
        "steps": card["training"]["steps"], "plain_steps": card["training"]["plain_steps_run"],
        "stop_reason": card["training"]["stop_reason"],
        "train_seconds": card["training"]["train_seconds"], "wall_seconds": round(wall, 1),
        "parameters": card["training"]["parameters"],
    }


@click.command()
@click.option("--dataset", type=click.Choice(sorted(DATASETS)), required=True)
@click.option("--variants", default="default", show_default=True, help=f"Comma-separated: {', '.join(VARIANTS)}.")
@click.option("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-bench"), show_default=True,
              type=click.Path(file_okay=False))
@click.option("--users", default=2000, show_default=True, help="sim only")
@click.option("--days", default=7.0, show_default=True, help="sim only")
@click.option("--seed", default=1, show_default=True, help="sim only (the simulator's seed)")
@click.option("--mechanisms", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="sim only: the simulator's intent and transition mechanisms")
@click.option("--pretrained", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="train/model config for every variant")
@click.option("--data-set", "data_sets", multiple=True, metavar="KEY=VALUE",
              help="override the dataset's data config (e.g. target_k=1)")
@click.option("--threads", default=2, show_default=True)
@click.option("--end-frac", type=click.FloatRange(0.05, 1.0), default=1.0, show_default=True,
              help="Use only the log's events before this event-time quantile (bench/backtest.py's folds).")
@click.option("--reuse", is_flag=True,
              help="Score each variant's checkpoint that an earlier run left in the workdir, trained with the "
                   "same settings, instead of training it again (for metrics added since).")
def main(dataset, variants, workdir, users, days, seed, mechanisms, pretrained, sets, data_sets, threads, end_frac,
         reuse):
    import torch

    from bench.common import commit, machine
    from models.data import DataConfig, sample_profiles
    from models.evaluate import baseline_predictions, refit_dataset, report
    from models.model import ModelConfig, TrainConfig, predict
    from models.train import fit, prepare_training

    torch.set_num_threads(threads)
    names = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise click.BadParameter(f"unknown variants {unknown}", param_hint="--variants")
    extra = {"train": {}, "model": {}}
    tfields, mfields = TrainConfig.__dataclass_fields__, ModelConfig.__dataclass_fields__
    for item in sets:
        key, _, raw = item.partition("=")
        group = "train" if key in tfields else "model" if key in mfields else None
        if group is None:
            raise click.BadParameter(f"unknown key {key!r}", param_hint="--set")
        typ = (tfields if group == "train" else mfields)[key].type
        extra[group][key] = {"int": int, "float": float}.get(typ if isinstance(typ, str) else typ.__name__, str)(raw)
    wd = Path(workdir) / dataset
    wd.mkdir(parents=True, exist_ok=True)
    log_path = truncate_log(make_log(dataset, Path(workdir), users, days, seed, mechanisms), end_frac)
    quiet = lambda m: print(m, file=sys.stderr)  # noqa: E731
    t0 = time.time()
    data_over = data_overrides(dataset, data_sets)
    data_cfg = DataConfig(**data_over)
    base_train = TrainConfig(threads=threads, **extra["train"])
    # the prepared data and baselines, reused by later runs of the same code on the same log
    code = hashlib.sha1(b"".join((ROOT / f).read_bytes() for f in CACHED_CODE)).hexdigest()[:10]
    # and what prepare_training reads beside the code: the data config, and whether readouts are dense
    code += hashlib.sha1(json.dumps([data_over, base_train.dense_weight > 0], sort_keys=True).encode()).hexdigest()[:6]
    cache = wd / f"prepared-{log_path.stem}-{code}.pkl"
    if cache.exists() and cache.stat().st_mtime > log_path.stat().st_mtime:
        with open(cache, "rb") as f:
            td, base, test_seqs, test_prof = pickle.load(f)
    else:
        td = prepare_training(log_path, data_cfg, base_train, log=quiet)
        base = baseline_predictions(td.ds, td.data_cfg, td.encoder.k)  # td's: the target chosen, if "auto"
        test_seqs = [td.encoder.encode(w) for w in base["test_windows"]]
        test_prof = sample_profiles(td.ds, td.ds.splits["test"], td.data_cfg, td.encoder)
        with open(cache, "wb") as f:
            pickle.dump((td, base, test_seqs, test_prof), f)
    test = td.ds.splits["test"]
    first_test_cut = first_cut_mask(test)  # per_sample.npz's, for bench/backtest.py
    setup_s = time.time() - t0
    out = {"machine": machine(), "commit": commit(), "dataset": dataset, "log": str(log_path),
           "end_frac": end_frac, "data_config": data_over, "reused_checkpoints": reuse,
           "sim": {"users": users, "days": days, "seed": seed, "mechanisms": mechanisms} if dataset == "sim" else None,
           "events": td.info["log"]["events"], "users": td.info["log"]["users"],
           "samples": {k: td.info["samples"][k] for k in ("train", "val", "test")},
           "test_users": int(len(set(test.user.tolist()))), "setup_seconds": round(setup_s, 1),
           "baselines_test_kl": None, "variants": []}
    base_refit, base_lifted, first_kl, tuned = None, None, None, {}
    for name in names:
        spec = VARIANTS[name]
        if spec.get("pretrained") and not pretrained:
            raise click.BadParameter("the pretrained variant needs --pretrained DIR", param_hint="--variants")
        v_td = single_target(td) if "dense_weight" in spec.get("train", {}) else td
        prof = test_prof
        if spec.get("zero_profile"):
            v_td, prof = zero_profile(v_td), test_prof * 0
        tcfg = replace(base_train, **spec.get("train", {}))
        t = time.time()
        from models.evaluate import kl_per_sample, paired_bootstrap
        from models.item_lift import served
        from models.model import load_checkpoint

        members, cards, preds = spec.get("members", 1), [], []
        for i in range(members):
            ck = wd / name if members == 1 else wd / name / f"seed{tcfg.seed + i}"
            m_tcfg, m_over = replace(tcfg, seed=tcfg.seed + i), {**extra["model"], **spec.get("model", {})}
            if reuse:
                cards.append(reused_card(ck, m_tcfg, m_over))
            else:
                cards.append(fit(v_td, ck, m_tcfg, m_over, init_from=pretrained if spec.get("pretrained") else None,
                                 progress=False, log=quiet))
            model, enc, _ = load_checkpoint(ck)  # (its encoding: the item lift train chose, if any)
            preds.append(served(enc, predict(model, test_seqs, prof, td.encoder.pad_id).astype("float64"),
                                base["test_windows"]))
        pred, card = np.mean(preds, axis=0), cards[0]
        v_base = base
        if card["metrics"]["selection"].get("refit"):  # the baselines see what the model saw, as in evaluate
            if base_refit is None:  # (the same samples for every refit variant)
                joined = refit_dataset(card, td.ds, td.encoder.categories, td.data_cfg)
                base_refit = baseline_predictions(td.ds, td.data_cfg, td.encoder.k, joined.splits["train"],
                                                  categories=td.encoder.categories, refit_ds=joined)
            v_base = base_refit
        elif base_lifted is None:  # the best baseline given an items' lift too, as evaluate fits it
            base_lifted = {**base, **{k: v for k, v in baseline_predictions(
                td.ds, td.data_cfg, td.encoder.k, categories=td.encoder.categories).items()
                if k in ("item_lift", "test_with_item_lift")}}
        v_base = base_lifted if v_base is base else v_base
        result = report(td.ds, v_base, pred, td.info, {"variant": name, "correction": model.config.correction,
                                                      "selection": card["metrics"]["selection"]})
        _truth(result, log_path, td, v_base, pred, td.data_cfg)
        (wd / name / "metrics.json").write_text(json.dumps(result, indent=1))
        # each test sample's KL, for pooling runs (bench/backtest.py)
        model_kl = kl_per_sample(test.targets, pred)
        base_kl = {n: kl_per_sample(test.targets, p) for n, p in v_base["test"].items()}
        which = "lifted" if v_base is base_lifted else "refit"  # once for each set of baselines (their prior)
        if which not in tuned:
            tuned[which] = tuned_on_first_cuts(td.ds, test, first_test_cut, td.encoder.k, v_base["test"]["prior"][0])
        np.savez(wd / name / "per_sample.npz", user=np.asarray(test.user), model=model_kl, **base_kl,
                 best_baseline=np.asarray(result["best_baseline"]), first_test_cut=first_test_cut,
                 best_with_item_lift=kl_per_sample(test.targets, v_base["test_with_item_lift"]),
                 **tuned[which])
        out["baselines_test_kl" if v_base is base_lifted else "refit_baselines_test_kl"] = \
            {n: round(v["kl"], 4) for n, v in result["models"].items() if n != "gpt2"}
        out["variants"].append(summarise(name, card, result, time.time() - t))
        if v_base is not base_lifted:  # against the baselines as the other variants see them, too
            out["variants"][-1]["kl_ratio_vs_unrefit_baselines"] = round(
                float(model_kl.mean() / kl_per_sample(test.targets, base["test"][result["best_baseline"]]).mean()), 4)
        out["variants"][-1]["by_sitting"] = by_sitting(td.ds, test, model_kl, base_kl, result["best_baseline"])
        if first_kl is None:
            first_kl = model_kl
        else:  # against the first variant on the same test samples: its KL minus the first's, users resampled
            out["variants"][-1]["kl_diff_vs_first"] = round(float((model_kl - first_kl).mean()), 5)
            out["variants"][-1]["kl_diff_vs_first_ci95"] = [
                round(x, 5) for x in paired_bootstrap(model_kl - first_kl, np.asarray(test.user))]
        if members > 1:  # each member alone, by the same KL
            best_kl = result["models"][result["best_baseline"]]["kl"]
            out["variants"][-1]["members"] = [
                {"seed": c["training"]["seed"],
                 "kl_ratio": round(float(kl_per_sample(test.targets, p).mean()) / best_kl, 4),
                 "correction_scales": c["metrics"]["selection"]["correction_scales"]} for c, p in zip(cards, preds)]
            averaged_kl = float(kl_per_sample(test.targets, pred).mean())
            out["variants"][-1]["averaged_kl_ratio_check"] = round(averaged_kl / best_kl, 4)
        print(json.dumps(out["variants"][-1]), file=sys.stderr)
    out["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))


SESSION_GAP_MS = 600_000  # the simulator's events of a session are 60 s apart on average (exponential)


def cut_gaps(ds, samples) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, ms from the user's event before the cut's newest one to it, and from the cut's
    newest event to the user's next (``inf`` where there is none)."""
    before, after = [], []
    for u, c in zip(samples.user, samples.cut):
        ts = ds.seqs[u].ts
        before.append(ts[c - 1] - ts[c - 2] if c >= 2 else np.inf)
        after.append(ts[c] - ts[c - 1] if c < len(ts) else np.inf)
    return np.asarray(before, np.float64), np.asarray(after, np.float64)


def next_event_groups(ds, samples, ok) -> dict[str, np.ndarray]:
    """Masks of the ``ok`` samples whose user's next event comes within 10 minutes of the cut
    (``within_10_min``: inside a session) or later (``later``: a new session)."""
    _, gap = cut_gaps(ds, samples)
    return {"within_10_min": ok & (gap < SESSION_GAP_MS), "later": ok & (gap >= SESSION_GAP_MS)}


def first_cuts(samples) -> np.ndarray:
    """Row of each user's earliest sample (bench/live_eval.py streams each test user up to it)."""
    order = np.lexsort((samples.cut_ts, samples.user))
    first = np.r_[True, samples.user[order][1:] != samples.user[order][:-1]]
    return order[first]


def tuned_on_first_cuts(ds, test, first: np.ndarray, k: int, prior: np.ndarray) -> dict[str, np.ndarray]:
    """(N,) KL of ``ema_prior`` tuned on the first test cuts themselves, in sample and cross-validated
    over users (:func:`models.baselines.counter_tuned_on_samples`), NaN for the other samples: for
    bench/backtest.py, as bench/live_eval.py scores the live vectors against it."""
    from models.baselines import counter_tuned_on_samples
    from models.evaluate import kl_per_sample

    rows = np.flatnonzero(first)
    s = test.take(rows)
    tuned = counter_tuned_on_samples(ds, s, k, prior, kl_per_sample)
    out = {}
    for key, name in (("in_sample", "tuned_in_sample"), ("cross_validated", "tuned_cross_validated")):
        out[name] = np.full(len(test), np.nan)
        out[name][rows] = kl_per_sample(s.targets, tuned[key])
    return out


def first_cut_mask(samples) -> np.ndarray:
    """(N,) bool: the rows of :func:`first_cuts`."""
    mask = np.zeros(len(samples.user), bool)
    mask[first_cuts(samples)] = True
    return mask


SITTING_GAP_MS = 3_600_000  # an hour without an event ends a sitting (a MovieLens user's ratings come in sittings)


def sitting_groups(ds, samples) -> dict[str, np.ndarray]:
    """Masks of the samples by where the cut falls in the user's sittings: ``start`` (the cut's newest
    event came an hour or more after the one before it, or is the user's first), ``end`` (not a
    start, and the user's next event comes an hour or more later, or never), ``inside`` (both gaps
    under an hour); ``first_test_cut``, each user's earliest sample (bench/live_eval.py's cuts); and
    ``first_event``, the samples whose window holds only the user's first event (a new user)."""
    before, after = cut_gaps(ds, samples)
    start = before >= SITTING_GAP_MS
    end = ~start & (after >= SITTING_GAP_MS)
    return {"start": start, "inside": ~start & ~end, "end": end, "first_test_cut": first_cut_mask(samples),
            "first_event": np.asarray(samples.cut) == 1}


def by_sitting(ds, samples, model_kl: np.ndarray, base_kl: dict[str, np.ndarray], best: str) -> dict:
    """The model's KL ratio to the best baseline and to ``ema_prior`` in each :func:`sitting_groups`
    group, with the paired bootstrap interval over users of the gain on the best baseline."""
    from models.evaluate import paired_bootstrap

    out = {}
    for name, m in sitting_groups(ds, samples).items():
        if m.any():
            out[name] = {"samples": int(m.sum()), "users": int(len(np.unique(samples.user[m]))),
                         "kl_ratio": round(float(model_kl[m].mean() / base_kl[best][m].mean()), 4),
                         "kl_ratio_vs_ema_prior": round(float(model_kl[m].mean() / base_kl["ema_prior"][m].mean()), 4),
                         "kl_gain_ci95": [round(float(x), 4) for x in
                                          paired_bootstrap(base_kl[best][m] - model_kl[m], samples.user[m])]}
    return out


def _truth(result, log_path, td, base, pred, data_cfg) -> None:
    """On a simulated log: every prediction's KL with the truth as the target, overall and split by
    whether the user's next event comes within 10 minutes of the cut (inside a session, whose later
    events the simulator keeps on the session's category more often than the interests say) or
    later (a new session), with the KL on the events beside it; and the paired bootstrap interval of
    ``ema_prior``'s and ``mixture``'s truth KL minus the model's (above zero: the model is closer)."""
    truth_path = Path(f"{log_path}.truth.jsonl")
    if not truth_path.exists():
        return
    from models.evaluate import kl_per_sample, paired_bootstrap, truth_targets
    from models.simulate import read_truth

    test = td.ds.splits["test"]
    tt, ok = truth_targets(read_truth(truth_path), td.ds, test, td.encoder.categories, data_cfg)
    if ok.any():
        preds = {**base["test"], "gpt2": pred}
        truth_kl = {n: kl_per_sample(tt[ok], p[ok]) for n, p in preds.items()}
        result["truth"] = {"samples": int(ok.sum()),
                           "models": {n: {"kl": float(v.mean())} for n, v in truth_kl.items()}}
        # the baseline's truth KL minus the model's, paired per sample, users resampled: above zero = model closer
        result["truth"]["gain_ci95"] = {n: paired_bootstrap(truth_kl[n] - truth_kl["gpt2"], test.user[ok])
                                        for n in ("ema_prior", "mixture")}
        result["truth"]["by_next_event"] = {
            name: {"samples": int(m.sum()),
                   "truth_kl": {n: float(kl_per_sample(tt[m], preds[n][m]).mean())
                                for n in ("gpt2", "ema_prior", "mixture")},
                   "event_kl": {n: float(kl_per_sample(test.targets[m], preds[n][m]).mean())
                                for n in ("gpt2", "ema_prior", "mixture")}}
            for name, m in next_event_groups(td.ds, test, ok).items() if m.any()}


if __name__ == "__main__":
    main()

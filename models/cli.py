"""Training-side CLI verbs: ``load movielens|rees46|completejourney``, ``pretrain``, ``train``, ``evaluate``,
``evaluate-rerank``.

Click command objects; ``stream_app.cli`` attaches them to the ``interest-stream`` group.
Importing this module needs neither torch nor transformers: they load inside the commands.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from interest_core.cli_types import FiniteRange
from models.config_checks import MAX_EVENTS, MAX_HORIZON_S


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=1))


def _out_dir(out) -> None:
    """Create the --out directory before any work: a path that cannot be one fails in one line
    (as export's does), not in a traceback after the training."""
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"{out}: cannot create the output directory: {exc.strerror or exc}") from None


def _out_file(out, inputs) -> None:
    """A load's --out: in an existing directory, and none of the files it reads (the log would
    replace the dataset)."""
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise click.BadParameter(f"{parent} is not a directory", param_hint="--out")
    if os.path.exists(out) and any(os.path.exists(p) and os.path.samefile(out, p) for p in inputs):
        raise click.BadParameter(f"{out} is an input of the dataset; the log would replace it", param_hint="--out")


def _out_apart_from_init(out, init_from) -> None:
    """train's --out is neither its --init-from directory nor, for a pretrain directory, its
    backbone/: a checkpoint written there replaced the backbone's config.json and weights (a
    checkpoint writes its files at the top of --out, so a directory inside or around is safe)."""
    from models.pretrain import BACKBONE_DIR, is_pretrain_dir

    o, i = Path(out).resolve(), Path(init_from).resolve()
    if o == i:
        raise click.BadParameter("the checkpoint would overwrite the --init-from directory; give another one",
                                 param_hint="--out")
    if is_pretrain_dir(init_from) and o == i / BACKBONE_DIR:
        raise click.BadParameter(f"{out} is the backbone of the --init-from directory {init_from}, whose files "
                                 "the checkpoint would replace; give another one", param_hint="--out")


def _sizes_of_init(init_from, model_set: dict) -> None:
    """A train --set n_layer / n_head / n_embd with --init-from is the backbone's own, or refused:
    the backbone's sizes were used, the one given silently ignored."""
    from models.pretrain import BACKBONE_DIR, is_pretrain_dir

    given = {k: model_set[k] for k in ("n_layer", "n_head", "n_embd") if k in model_set}
    path = Path(init_from) / (f"{BACKBONE_DIR}/config.json" if is_pretrain_dir(init_from) else "config.json")
    try:
        sizes = json.loads(path.read_text()) if given else {}
    except (OSError, ValueError):  # models.model.build_model names what is wrong with the directory
        return
    for key, value in given.items():
        if isinstance(sizes, dict) and key in sizes and sizes[key] != value:
            raise click.UsageError(f"--set {key}={value}: the --init-from backbone has {key} {sizes[key]} "
                                   f"({path}); leave it out or give {sizes[key]}")


# what a load raises for a dataset it cannot read: models.loaders names the file and line of a bad row
# in a ValueError; OSError is open() of an input or of --out
LOAD_ERRORS = (OSError, ValueError)


def _load_error(exc: Exception) -> click.ClickException:
    """One line for what a load raised (``--out`` is left as it was: ``models.loaders._write``)."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return click.ClickException(f"{exc.filename}: {exc.strerror}")
    return click.ClickException(str(exc))


@click.group("load")
def load():
    """A public dataset as an event log in the contract's schema."""


@load.command("movielens")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, writable=True), help="JSONL event log.")
def load_movielens_cmd(data_dir, out):
    """MovieLens ml-latest-small DIR: ratings -> clicks (first genre = category), tags -> searches."""
    from models.loaders import load_movielens

    _out_file(out, [os.path.join(data_dir, n) for n in ("ratings.csv", "movies.csv", "tags.csv")])
    try:
        stats = load_movielens(data_dir, out)
    except LOAD_ERRORS as exc:
        raise _load_error(exc) from exc
    click.echo(f"wrote {stats['events']} events to {out}: {json.dumps(stats)}", err=True)


@load.command("rees46")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, writable=True), help="JSONL event log.")
def load_rees46_cmd(file, out):
    """REES46 e-commerce CSV: view -> browse, cart/purchase -> click, category_code = category."""
    from models.loaders import load_rees46

    _out_file(out, [file])
    try:
        stats = load_rees46(file, out)
    except LOAD_ERRORS as exc:
        raise _load_error(exc) from exc
    click.echo(f"wrote {stats['events']} events to {out}: {json.dumps(stats)}", err=True)


@load.command("completejourney")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, writable=True), help="JSONL event log.")
@click.option("--top", type=click.IntRange(min=1), default=None,
              help="Keep the N most frequent product categories of this file by name, instead of the fixed list "
                   "of the 30 most frequent in the shared half; the rest become 'OTHER <department>'.")
def load_completejourney_cmd(data_dir, out, top):
    """The Complete Journey DIR (transactions + products CSV): purchase lines -> clicks, product category = category."""
    from models.loaders import load_completejourney

    _out_file(out, [os.path.join(data_dir, f"{s}.csv{z}") for s in ("products", "transactions") for z in ("", ".gz")])
    try:
        stats = load_completejourney(data_dir, out, top)
    except LOAD_ERRORS as exc:
        raise _load_error(exc) from exc
    click.echo(f"wrote {stats['events']} events to {out}: {json.dumps(stats)}", err=True)


@click.command("train")
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False), help="JSONL event log.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Checkpoint directory.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Passes over the training samples [8].")
@click.option("--seed", type=int, default=None, help="Seed of training and subsampling [1337].")
@click.option("--loss", type=click.Choice(["mse", "kl"]), default=None, help="Training loss [kl].")
@click.option("--target", type=click.Choice(["auto", "time", "next_k", "next_baskets"]), default=None,
              help="Target: categories of the next time window, of the next K events, or of the next K "
                   "distinct timestamps (baskets); auto chooses from the log: baskets -> next 4 baskets, "
                   "a log under 10 windows -> next 5 events, sittings -> next 10 events, else time "
                   "[auto; time with --target-window-s].")
@click.option("--target-window-s", type=click.IntRange(min=1), default=None, help="With --target time [21600].")
@click.option("--target-k", type=click.IntRange(min=1), default=None, help="With --target next_k / next_baskets [10].")
@click.option("--horizon-s", type=click.IntRange(1, MAX_HORIZON_S), default=None, help="Input window reach [86400].")
@click.option("--max-events", type=click.IntRange(1, MAX_EVENTS), default=None, help="Events per input window [128].")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Training step cap [1500].")
@click.option("--max-train-samples", type=click.IntRange(min=1), default=None, help="Training samples cap [120000].")
@click.option("--init-from", type=click.Path(exists=True, file_okay=False), default=None,
              help="Start from a directory of `interest-stream pretrain` (or a local GPT-2 directory).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any other model/train/data config key, e.g. --set n_layer=4 --set lr=1e-3.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(data, out, epochs, seed, loss, target, target_window_s, target_k, horizon_s, max_events, max_steps,
          max_train_samples, init_from, sets, resume, quiet):
    """Train the interest model on a JSONL event log; writes a checkpoint directory."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning on a busy box
    from dataclasses import fields

    from models.data import DataConfig
    from models.model import ModelConfig, TrainConfig

    groups = {"train": {f.name: f for f in fields(TrainConfig)}, "data": {f.name: f for f in fields(DataConfig)},
              "model": {f.name: f for f in fields(ModelConfig)
                        if f.name not in ("vocab_size", "k", "category_offset", "max_len", "token_offset",
                                          "profile_scales", "hour_offset", "query_offset", "init_from", "backbone")}}
    chosen = {"data": {}, "train": {}, "model": {}}
    given = {("train", "epochs"): epochs, ("train", "seed"): seed, ("model", "loss"): loss,
             ("data", "target"): target, ("data", "target_window_s"): target_window_s,
             ("data", "target_k"): target_k, ("data", "horizon_s"): horizon_s,
             ("data", "max_events"): max_events, ("train", "max_steps"): max_steps,
             ("data", "max_train_samples"): max_train_samples}
    for (g, key), v in given.items():
        if v is not None:
            chosen[g][key] = v
    for item in sets:
        key, sep, raw = item.partition("=")
        owner = [g for g, fs in groups.items() if key in fs]
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        if not owner:
            known = sorted({k for fs in groups.values() for k in fs})
            raise click.BadParameter(f"unknown key {key!r}; known keys: {', '.join(known)}", param_hint="--set")
        g = owner[0]
        typ = groups[g][key].type
        try:
            conv = {"int": int, "float": float, "str": str, "bool": lambda s: s.lower() in ("1", "true", "yes"),
                    "list": lambda s: [int(x) for x in s.split(",") if x.strip()]}  # length_buckets=1,4,16
            chosen[g][key] = conv.get(typ if isinstance(typ, str) else typ.__name__, str)(raw)
        except ValueError:
            raise click.BadParameter(f"{key}: bad value {raw!r}", param_hint="--set") from None
        option = given.get((g, key))
        if option is not None and option != chosen[g][key]:  # the --set won, without a word
            raise click.UsageError(f"--{key.replace('_', '-')} {option} and --set {item} give {key} twice: "
                                   "give one")
    target_set = chosen["data"]
    # each target reads one of the two (models.data.target_span); auto measures the log in windows
    if target_set.get("target", "auto") in ("auto", "time") and "target_k" in target_set:
        raise click.UsageError("--target-k needs --target next_k or next_baskets")
    if target_set.get("target") in ("next_k", "next_baskets") and "target_window_s" in target_set:
        raise click.UsageError("--target-window-s needs --target time or auto")
    if "target" not in target_set:  # a window says time; otherwise the log's shape decides (models.data.choose_target)
        target_set["target"] = "time" if "target_window_s" in target_set else "auto"
    if "seed" in chosen["train"] and "seed" not in chosen["data"]:
        chosen["data"]["seed"] = chosen["train"]["seed"]
    try:
        dcfg = DataConfig(**chosen["data"])
        tcfg = TrainConfig(**chosen["train"])
        ModelConfig(vocab_size=1, k=1, category_offset=0, **chosen["model"])  # validate early
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    from models.pretrain import PRETRAIN_FILE

    if (Path(out) / PRETRAIN_FILE).exists():  # its encoding.json would be replaced by the checkpoint's
        raise click.BadParameter(f"{out} holds an `interest-stream pretrain` directory; give another one",
                                 param_hint="--out")
    if init_from is not None:
        _out_apart_from_init(out, init_from)
        _sizes_of_init(init_from, chosen["model"])
        from models.model import load_init, too_short

        try:  # before the log is read: a mistake here was found only minutes later
            backbone = load_init(init_from)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        if short := too_short(backbone, dcfg.max_len, init_from):  # build_model said so once the log was read
            raise click.UsageError(f"--init-from {short}")
    _out_dir(out)
    from models.train import ResumeMismatch, run_training

    try:
        run_training(data, out, dcfg, tcfg, chosen["model"], init_from=init_from, resume=resume,
                     progress=not quiet, log=lambda m: click.echo(m, err=True))
    except ResumeMismatch as exc:  # checked before the log is read: the options are the mistake
        raise click.UsageError(f"--resume: {exc}") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("pretrain")
@click.option("--data", "data", required=True, multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="JSONL event log; repeat for several logs (all their events are used, no split).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Pretrained directory.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Training steps [3000].")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any pretrain config key, e.g. --set n_embd=64 --set lr=1e-3.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def pretrain(data, out, max_steps, sets, quiet):
    """Self-supervised pretraining of the backbone on every event of the logs (next event's category,
    type and time gap); `train --init-from DIR` fine-tunes it."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import filecmp
    from dataclasses import fields

    from models.pretrain import PretrainConfig, run_pretraining

    for i, path in enumerate(data):  # the same log twice: its events twice, its users in both splits
        for earlier in data[:i]:
            if os.path.samefile(path, earlier):
                same = "" if path == earlier else f" (the same file as {earlier})"
                raise click.BadParameter(f"{path} is given twice{same}", param_hint="--data")
            if filecmp.cmp(path, earlier, shallow=False):  # (files of other sizes are not read)
                raise click.BadParameter(f"{path} is given twice (a copy of {earlier})", param_hint="--data")
    known = {f.name: f for f in fields(PretrainConfig)}
    chosen = {} if max_steps is None else {"max_steps": max_steps}
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        if key not in known:
            raise click.BadParameter(f"unknown key {key!r}; known keys: {', '.join(sorted(known))}", param_hint="--set")
        typ = known[key].type
        try:
            chosen[key] = {"int": int, "float": float}.get(typ if isinstance(typ, str) else typ.__name__, str)(raw)
        except ValueError:
            raise click.BadParameter(f"{key}: bad value {raw!r}", param_hint="--set") from None
    try:
        cfg = PretrainConfig(**chosen)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    from interest_core.artifacts import CHECKPOINT_CARD_FILE

    if (Path(out) / CHECKPOINT_CARD_FILE).exists():  # its encoding.json would be replaced by pretraining's
        raise click.BadParameter(f"{out} holds a checkpoint of `interest-stream train`; give another one",
                                 param_hint="--out")
    _out_dir(out)
    try:
        run_pretraining(list(data), out, cfg, progress=not quiet, log=lambda m: click.echo(m, err=True))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("evaluate")
@click.argument("ckpt_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False), help="JSONL event log.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Directory for metrics.json and plots.")
@click.option("--no-plots", is_flag=True, help="Only metrics.json.")
def evaluate(ckpt_dir, data, out, no_plots):
    """The model and the baselines (prior, last_window, user_mean, ema, ema_prior, mixture) on the
    checkpoint's test split: metrics.json and PNG plots."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from models.data import invalid_summary
    from models.evaluate import another_log_note, run_evaluation

    _out_dir(out)
    try:
        result = run_evaluation(ckpt_dir, data, out, plots=not no_plots)
    except (OSError, ValueError) as exc:  # OSError: metrics.json or a plot cannot be written in --out
        raise _load_error(exc) from None
    if result["log"]["invalid"]:
        click.echo(f"data: {invalid_summary(result['log'])}", err=True)
    if result["another_log"]:
        click.echo(another_log_note(data), err=True)
    m = result["models"]
    best = result["best_baseline"]
    click.echo(f"test samples {result['samples']}: gpt2 KL {m['gpt2']['kl']:.4f}, best baseline {best} "
               f"KL {m[best]['kl']:.4f}, gain CI95 [{result['kl_gain_ci95'][0]:.4f}, "
               f"{result['kl_gain_ci95'][1]:.4f}]; wrote {Path(out) / 'metrics.json'}")
    lifted = result.get("best_with_item_lift")
    if lifted and lifted["item_lift"]["kept"]:
        lo, hi = lifted["kl_gain_ci95"]
        # the baseline's lift, chosen on its own validation predictions (the model may have none)
        click.echo(f"against {best} given the items' lift too (chosen on its validation, as train chooses the "
                   f"model's): its KL {lifted['kl']:.4f}, ratio {lifted['kl_ratio']:.4f}, gain CI95 [{lo:.4f}, "
                   f"{hi:.4f}]")


@click.command("evaluate-rerank")
@click.argument("ckpt_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False), help="JSONL event log.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Directory for rerank_metrics.json.")
@click.option("--negatives", type=click.IntRange(min=1), default=100, show_default=True,
              help="Popular items the user has not clicked yet, added to the true next items.")
@click.option("--weight", type=FiniteRange(0.0, 1.0), default=None,
              help="A fixed blend weight for every interest source (default: chosen on validation).")
def evaluate_rerank(ckpt_dir, data, out, negatives, weight):
    """What re-ranking with the vectors is worth on the checkpoint's test split: NDCG@10 and HR@10 of
    popularity, model re-rank, best-baseline re-rank and an oracle, with bootstrap intervals."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from models.rerank_eval import run_rerank_evaluation

    _out_dir(out)
    try:
        r = run_rerank_evaluation(ckpt_dir, data, out, negatives=negatives, weight=weight,
                                  log=lambda m: click.echo(m, err=True))
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    k = r["rankings"]
    d = r["diff"]
    click.echo(f"test samples {r['samples']} ({r['users']} users): "
               f"NDCG@10 popularity {k['popularity']['ndcg@10']:.4f}, "
               f"model {k['model']['ndcg@10']:.4f} (w {r['weights']['model']}), {r['best_baseline']} "
               f"{k['baseline']['ndcg@10']:.4f} (w {r['weights']['baseline']}), oracle {k['oracle']['ndcg@10']:.4f}; "
               f"model - popularity CI95 [{d['model-popularity']['ndcg@10']['ci95'][0]:+.4f}, "
               f"{d['model-popularity']['ndcg@10']['ci95'][1]:+.4f}], model - baseline CI95 "
               f"[{d['model-baseline']['ndcg@10']['ci95'][0]:+.4f}, {d['model-baseline']['ndcg@10']['ci95'][1]:+.4f}]; "
               f"wrote {Path(out) / 'rerank_metrics.json'}")

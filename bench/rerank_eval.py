"""Benchmark (not a test): what re-ranking with the interest vectors is worth on every real log under
``../shared/data/``. For each: load -> train (``train``'s defaults with the dataset's target of
``bench/model_eval.py``, as in docs/model.md's model table) -> ``evaluate-rerank``. Prints JSON: the machine,
per dataset the four rankings' NDCG@10 and HR@10, the paired bootstrap intervals, the blend weights
chosen on validation, timings, and (``blend_forms``) the validation NDCG@10 of other blend forms
with the same vectors, which is what chose the blend of :mod:`interest_core.rerank`.

    .venv/bin/python bench/rerank_eval.py [--workdir DIR] [--only movielens|rees46|completejourney]
        [--data-set KEY=VALUE ...]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import model_eval  # noqa: E402  (the model benchmark's settings per dataset)
from common import machine  # noqa: E402

DATA = HERE.parent.parent / "shared" / "data"

DATASETS = {
    # name: (its name in bench/model_eval.DATASETS, loader, source path)
    "movielens": ("movielens", "load_movielens", DATA / "movielens-latest-small"),
    "rees46": ("rees46", "load_rees46", DATA / "rees46-ecommerce-behavior-sample" / "events_2019-10-01_head.csv"),
    "completejourney": ("cj", "load_completejourney", DATA / "completejourney"),
}


def settings(name: str, data_sets=()) -> tuple[dict, str]:
    """The dataset's target, as in the model table (bench/model_eval.py, with ``--data-set``
    overrides), and train's defaults."""
    key = DATASETS[name][0]
    run = model_eval.DATASETS[key]
    how = f"bench/model_eval.py DATASETS[{key!r}]" + "".join(f", {item}" for item in data_sets)
    return ({"data": model_eval.data_overrides(key, data_sets), "train": run.get("train", {}),
             "model": run.get("model", {})}, how)


def rank_percentiles(scores) -> list[float]:
    """Mid-rank percentiles in [0, 1] (equal scores, equal values; 0.5 for one candidate)."""
    n = len(scores)
    if n == 1:
        return [0.5]
    order = sorted(range(n), key=scores.__getitem__)
    out, a = [0.0] * n, 0
    while a < n:
        b = a + 1
        while b < n and scores[order[b]] == scores[order[a]]:
            b += 1
        for j in range(a, b):
            out[order[j]] = (a + b - 1) / 2 / (n - 1)
        a = b
    return out


def blend_forms(inp) -> dict:
    """Validation NDCG@10 of other blends of the same two signals, per interest source: the best
    weight, its NDCG@10, and the NDCG@10 at w = 0.5. Only for choosing the served form."""
    import numpy as np

    from interest_core.rerank import FLOOR
    from models.rerank_eval import WEIGHTS, BlendGrid

    cats, c = inp.categories, inp.candidates["val"]
    index = {x: i for i, x in enumerate(cats)}
    q = np.array([inp.prior[x] for x in cats])
    out = {}
    for src in ("model", "baseline"):
        P = inp.interests["val"][src]
        g = BlendGrid(c, P, cats, inp.prior)
        S, M = g.r.shape
        ci = np.full((S, M), -1)
        for s in range(S):
            ci[s, : len(c.items[s])] = [index.get(x, -1) for x in c.categories[s]]
        known = ci >= 0
        p = np.where(known, np.take_along_axis(P, np.maximum(ci, 0), 1), 0.0)
        qq = np.where(known, q[np.maximum(ci, 0)], 1.0)
        lift = np.where(known, np.maximum(p, FLOOR) / np.maximum(qq, FLOOR), 1.0)
        borda, rank = np.zeros((S, M)), np.zeros((S, M))
        for s in range(S):
            n = len(c.items[s])
            borda[s, :n] = rank_percentiles(lift[s, :n].tolist())
            rank[s, :n] = rank_percentiles(c.scores[s])
        k = len(cats)
        forms = {
            "min-max score + ln lift over the population prior (served)": (g.r, g.lift),
            "rank + ln lift": (rank, g.lift),
            "rank + ln lift over the uniform": (rank, np.where(known, np.log(np.maximum(p, FLOOR) * k), 0.0)),
            "min-max score + ln lift over the uniform": (g.r, np.where(known, np.log(np.maximum(p, FLOOR) * k), 0.0)),
            "rank + p": (rank, np.where(known, p, 1.0 / k)),
            "rank + p / (p + q)": (rank, lift / (1.0 + lift)),
            "rank + rank of lift (Borda)": (rank, borda),
        }
        res = {}
        for name, (r, part) in forms.items():
            g.r, g.lift = r, part
            curve = {w: float(g.metrics(w)[0].mean()) for w in WEIGHTS}
            best = max(WEIGHTS, key=lambda w: (curve[w], -w))
            res[name] = {"best_weight": best, "ndcg@10": round(curve[best], 4), "ndcg@10_at_0.5": round(curve[0.5], 4)}
        out[src] = res
    return out


def at_weight(inp, weight: float) -> dict:
    """Test NDCG@10 and HR@10 of the three re-rankings at one fixed weight (the served default)."""
    from models.rerank_eval import SOURCES, served_metrics

    out = {}
    for src in SOURCES:
        nd, hr = served_metrics(inp.candidates["test"], inp.interests["test"][src], inp.categories, inp.prior, weight)
        out[src] = {"ndcg@10": round(float(nd.mean()), 4), "hr@10": round(float(hr.mean()), 4)}
    return out


def summary(name, how, card, res, forms, default, seconds) -> dict:
    d = res["diff"]

    def ci(key, m):
        return {"mean": round(d[key][m]["mean"], 4), "ci95": [round(x, 4) for x in d[key][m]["ci95"]]}

    return {
        "dataset": name,
        "settings": how,
        "target": {k: card["split"]["data_config"][k] for k in ("target", "target_window_s", "target_k")},
        "test_samples": res["samples"], "test_users": res["users"],
        "candidates_mean": round(res["candidates_mean"], 1), "positives_mean": round(res["positives_mean"], 2),
        "rankings": {k: {m: round(v, 4) for m, v in r.items()} for k, r in res["rankings"].items()},
        "weights": res["weights"],
        "at_default_weight": default,
        "best_baseline": res["best_baseline"],
        "model_minus_popularity": {m: ci("model-popularity", m) for m in ("ndcg@10", "hr@10")},
        "model_minus_baseline": {m: ci("model-baseline", m) for m in ("ndcg@10", "hr@10")},
        "oracle_minus_model": {m: ci("oracle-model", m) for m in ("ndcg@10", "hr@10")},
        "beats_popularity": d["model-popularity"]["ndcg@10"]["ci95"][0] > 0,
        "beats_baseline": d["model-baseline"]["ndcg@10"]["ci95"][0] > 0,
        "blend_forms_validation": forms,
        "seconds": seconds,
        "train": {"steps": card["training"]["steps"], "stop_reason": card["training"]["stop_reason"]},
    }


@click.command()
@click.option("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-rerank-bench"), show_default=True,
              type=click.Path(file_okay=False), help="Logs, checkpoints and metrics (logs are reused).")
@click.option("--only", type=click.Choice(list(DATASETS)), multiple=True, help="Datasets to run [all present].")
@click.option("--negatives", default=100, show_default=True)
@click.option("--reuse-checkpoints", is_flag=True, help="Skip training where a checkpoint is already in --workdir.")
@click.option("--data-set", "data_sets", multiple=True, metavar="KEY=VALUE",
              help="override the data config of every dataset run (e.g. target_k=1)")
def main(workdir, only, negatives, reuse_checkpoints, data_sets):
    from models import loaders
    from models.data import DataConfig
    from models.model import TrainConfig
    from models.rerank_eval import rerank_inputs, run_rerank_evaluation
    from models.train import run_training
    from stream_app.rerank import DEFAULT_WEIGHT

    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in only or DATASETS:
        _, loader, src = DATASETS[name]
        if not src.exists() or not hasattr(loaders, loader):
            rows.append({"dataset": name,
                         "skipped": f"no {src}" if not src.exists() else f"no models.loaders.{loader}"})
            continue
        log, ck, out = wd / f"{name}.jsonl", wd / f"{name}-ckpt", wd / f"{name}-rerank"
        t = time.time()
        if not log.exists():
            getattr(loaders, loader)(src, log)
        t_load = time.time() - t
        run, how = settings(name, data_sets)
        t = time.time()
        if not (reuse_checkpoints and (ck / "model_card.json").exists()):
            run_training(log, ck, DataConfig(**run["data"]), TrainConfig(**run["train"]), dict(run["model"]),
                         progress=False, log=lambda m: print(m, file=sys.stderr))
        t_train = time.time() - t
        t = time.time()
        inp = rerank_inputs(ck, log, negatives, log=lambda m: print(m, file=sys.stderr))
        res = run_rerank_evaluation(ck, log, out, negatives=negatives, inputs=inp)
        t_eval = time.time() - t
        forms = blend_forms(inp)
        default = {"weight": DEFAULT_WEIGHT, **at_weight(inp, DEFAULT_WEIGHT)}
        card = json.loads((ck / "model_card.json").read_text())
        rows.append(summary(name, how, card, res, forms, default, {
            "load": round(t_load, 1), "train": round(t_train, 1), "evaluate_rerank": round(t_eval, 1),
            "of_which_data_baselines_and_model": res["seconds"]["data_baselines_and_model"],
            "blend_forms_and_default_weight": round(time.time() - t - t_eval, 1)}))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({"machine": machine(), "negatives": negatives, "datasets": rows}, indent=1))


if __name__ == "__main__":
    main()

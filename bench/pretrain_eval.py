"""Does pretraining help fine-tuning, and does pretraining on more logs help more? (not a test)

    .venv/bin/python bench/pretrain_eval.py [--dataset movielens] [--steps 3000] [--workdir DIR]

1. ``interest-stream pretrain`` on the dataset's own log alone, and on every log the benchmarks use
   (the simulator's populations of ``bench/train_eval.py`` that exist in the workdir, The Complete
   Journey, MovieLens, REES46), each timed;
2. ``bench/model_eval.py --dataset D`` three ways: from scratch (the default variant), fine-tuned
   from the first, fine-tuned from the second (the ``pretrained`` variant).
Prints one JSON: the pretraining records (logs, events, steps, seconds, final validation
cross-entropies) and the three test summaries.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _run(args: list[str]) -> dict:
    res = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed (exit {res.returncode})")
    return json.loads(res.stdout)


@click.command()
@click.option("--dataset", type=click.Choice(["movielens", "cj", "sim"]), default="movielens", show_default=True)
@click.option("--steps", default=3000, show_default=True, help="pretraining steps (each run)")
@click.option("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-bench"), show_default=True,
              type=click.Path(file_okay=False))
def main(dataset, steps, workdir):
    from bench.common import commit, machine
    from bench.model_eval import make_log
    from models.pretrain import PretrainConfig, run_pretraining

    wd = Path(workdir)
    own = make_log(dataset, wd, 2000, 7.0, 1, "on")
    others = [make_log(d, wd, 0, 0, 0, "on") for d in ("cj", "movielens", "rees46") if d != dataset]
    others += sorted(p for p in wd.glob("sim-*.jsonl") if p != own and not p.name.endswith(".truth.jsonl"))
    out = {"machine": machine(), "commit": commit(), "dataset": dataset, "pretraining": {}, "fine_tuning": {}}
    for name, logs in (("own_log", [own]), ("all_logs", [own, *others])):
        t = time.time()
        rec = run_pretraining(logs, wd / f"pretrain-{dataset}-{name}", PretrainConfig(max_steps=steps), progress=False,
                              log=lambda m: print(m, file=sys.stderr))
        out["pretraining"][name] = {"logs": [s["path"] for s in rec["logs"]],
                                    "events": sum(s["events"] for s in rec["logs"]), "readouts": rec["readouts"],
                                    "steps": steps, "train_seconds": rec["train_seconds"],
                                    "wall_seconds": round(time.time() - t, 1), "final": rec["history"][-1]}
    common = ["bench/model_eval.py", "--dataset", dataset, "--workdir", workdir]
    out["fine_tuning"]["scratch"] = _run([*common, "--variants", "default"])["variants"][0]
    for name in ("own_log", "all_logs"):
        res = _run([*common, "--variants", "pretrained", "--pretrained", str(wd / f"pretrain-{dataset}-{name}")])
        out["fine_tuning"][f"pretrained_{name}"] = res["variants"][0]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

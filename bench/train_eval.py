"""The model table of docs/model.md, "Measured" (not a test): every dataset through ``bench/model_eval.py``, one JSON.

    .venv/bin/python bench/train_eval.py [--only cj|movielens|rees46|sim] [--variants default,...]
        [--workdir DIR]

Runs (each a subprocess of ``bench/model_eval.py``, which prints its own JSON with the machine
and the commit; this script collects them under ``runs``):
* The Complete Journey (next 4 baskets), MovieLens (next 10 ratings), REES46 (next 5 events);
* the simulator, mechanisms on and off, on populations of several sizes, lengths and seeds
  (:data:`SIM_RUNS`).
The default variant is what ``interest-stream train`` does; ``--variants`` adds ablations (see
``bench/model_eval.py``).
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
SIM_RUNS = [  # (users, days, seed, mechanisms)
    (2000, 7, 1, "on"), (2000, 7, 1, "off"),
    (1000, 14, 2, "on"), (1000, 14, 2, "off"),
    (4000, 4, 3, "off"),
]


@click.command()
@click.option("--only", type=click.Choice(["cj", "movielens", "rees46", "sim"]), default=None)
@click.option("--variants", default="default", show_default=True)
@click.option("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-bench"), show_default=True,
              type=click.Path(file_okay=False))
def main(only, variants, workdir):
    runs = [["--dataset", d] for d in ("cj", "movielens", "rees46")]
    runs += [["--dataset", "sim", "--users", str(u), "--days", str(d), "--seed", str(s), "--mechanisms", m]
             for u, d, s, m in SIM_RUNS]
    if only:
        runs = [r for r in runs if r[1] == only]
    out, t0 = {"runs": []}, time.time()
    for args in runs:
        cmd = [sys.executable, str(ROOT / "bench" / "model_eval.py"), *args, "--variants", variants,
               "--workdir", workdir]
        print("$ " + " ".join(cmd[1:]), file=sys.stderr)
        res = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed (exit {res.returncode})")
        out["runs"].append(json.loads(res.stdout))
    out["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

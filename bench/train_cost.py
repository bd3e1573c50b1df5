"""Training cost (not a test): the default ``interest-stream train`` on the demo's data, timed, and the
measured speed of a training step at several model sizes (what the default size was chosen from).

    .venv/bin/python bench/train_cost.py [--workdir DIR] [--sizes 1x32,2x48,2x64,3x64] [--steps 40]

The demo's data is what ``interest-stream demo`` trains on (stream_app/demo.py: ``simulate --users
600 --days 6 --seed 7``). The default run is the CLI itself in a subprocess (``train --data LOG --out
DIR``, no other flag), so the time includes reading the log, preparing dense readouts, the plain
path, the corrections and writing the checkpoint. Step speed: the same prepared batches, ``--steps``
timed training steps per size (after 5 warm-up steps), dense readouts, 2 threads, in rounds: the
sizes take turns five times and each keeps its median round. A size may name the backbone's
activation (``2x48:gelu_new``, GPT-2's own, which the model used before ``models.model.ACTIVATION``),
so the two are timed in one run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEMO_POPULATION = {"users": 600, "days": 6, "seed": 7}  # stream_app/demo.py ensure_model()
ROUNDS = 5  # of the step timing (main)


@click.command()
@click.option("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-bench" / "cost"),
              show_default=True, type=click.Path(file_okay=False))
@click.option("--sizes", default="1x32,2x32,2x48,2x48:gelu_new,2x64,3x64", show_default=True,
              help="LAYERSxWIDTH[:ACTIVATION], comma-separated")
@click.option("--steps", default=40, show_default=True)
def main(workdir, sizes, steps):
    import numpy as np
    import torch

    from bench.common import commit, machine
    from models.data import DataConfig
    from models.model import TrainConfig, build_model, get_batch
    from models.simulate import simulate_to_files
    from models.train import prepare_training

    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    log = wd / "demo.jsonl"
    if not log.exists():
        simulate_to_files(DEMO_POPULATION["users"], DEMO_POPULATION["days"], DEMO_POPULATION["seed"], log)
    out = {"machine": machine(), "commit": commit(), "demo_population": DEMO_POPULATION}
    t = time.time()
    run = subprocess.run([sys.executable, "-m", "stream_app.cli", "train", "--data", str(log), "--out",
                          str(wd / "ckpt"), "--quiet"], cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(run.stderr)
    card = json.loads((wd / "ckpt" / "model_card.json").read_text())
    out["default_train"] = {"wall_seconds": round(time.time() - t, 1),
                            "train_seconds": card["training"]["train_seconds"],
                            "prepare_seconds": card["training"]["prepare_seconds"],
                            "steps": card["training"]["steps"], "plain_steps": card["training"]["plain_steps_run"],
                            "stop_reason": card["training"]["stop_reason"],
                            "selection": card["metrics"]["selection"], "last_line": run.stderr.strip().splitlines()[-1]}
    print(json.dumps(out["default_train"]), file=sys.stderr)
    torch.set_num_threads(2)
    td = prepare_training(log, DataConfig(), TrainConfig(), log=lambda m: None)
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(td.train_seqs), 64, replace=False) for _ in range(steps)]
    runs = {}  # size -> (model, optimizer)
    for size in sizes.split(","):
        shape, _, act = size.partition(":")
        n_layer, n_embd = (int(x) for x in shape.split("x"))
        model = build_model(td.encoder, n_layer=n_layer, n_embd=n_embd, n_head=2).train()
        if act:  # the same weights with another of transformers' activations in every block
            from transformers.activations import ACT2FN

            for block in model.backbone.h:
                block.mlp.act = ACT2FN[act]
        runs[size] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))

    def timed(model, opt, idxs) -> float:
        t = time.time()
        for idx in idxs:
            ids, mask, prof, tgt, ro = get_batch(idx, td.train_seqs, None, None, td.encoder.pad_id, td.dense)
            _, loss = model(ids, mask, prof, tgt, ro)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.time() - t) / len(idxs)

    # the sizes take turns, ROUNDS times over the same batches, and each keeps its median round: a
    # shared machine's slow minute then slows every size alike instead of the one it fell on
    for model, opt in runs.values():
        timed(model, opt, batches[:5])  # warm-up
    rounds = {size: [] for size in runs}
    for _ in range(ROUNDS):
        for size in runs:
            rounds[size].append(timed(*runs[size], batches))
    out["step_seconds"] = {size: {"seconds_per_step": round(float(np.median(r)), 4),
                                  "rounds": [round(x, 4) for x in r],
                                  "parameters": sum(p.numel() for p in runs[size][0].parameters())}
                           for size, r in rounds.items()}
    print(json.dumps(out["step_seconds"]), file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

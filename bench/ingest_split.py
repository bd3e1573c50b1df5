"""Where the worker's ingestion time goes, by taking its parts out one at a time (run by `make bench`).

The same preloaded topics (as bench/ingest.py) are read from the beginning, in one run, by:
  1. the Faust agent that only decodes (bench/faust_floor.py);
  2. the worker with each event only counted and held until its partition's flush
     (``ingest_split_app``, ``BENCH_SPLIT=hold``): the worker's app and Faust as the worker drives it;
  3. the same with the worker's aligner (``BENCH_SPLIT=align``);
  4. the worker itself (validation, the state update, its flushes).
Each step's cost is the difference of µs per event to the step before. Throughput, not a profile:
py-spy on this machine's VM over-samples system calls (with ``--native`` it put 15–28 % of the
samples in ``getpid``, a cheap system call asyncio makes on every ``get_running_loop``), so its
shares mislead here.

    python bench/ingest_split.py [--events N] [--users U] [--order shuffled|inorder]
"""
from __future__ import annotations

import argparse
import sys

from common import broker, commit, deployment, dumps, machine, run, workdir
from ingest import faust_floor, preload, run_worker

STEPS = (("Faust decode-only agent", None), ("+ the worker's app, events held until the flush", "hold"),
         ("+ the aligner", "align"), ("+ validation and the state (the worker)", "worker"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--order", choices=["shuffled", "inorder"], default="inorder")
    args = ap.parse_args()
    from tiny_model import build_tiny_model_dir

    work = workdir("split")
    model_dir = build_tiny_model_dir(work / "model")
    with broker() as (bootstrap, k):
        env, _ = deployment(bootstrap, "bench", model_dir, score_interval_s=3600, store="rocksdb://")
        print(f"preloading {args.events} events for {args.users} users ({args.order})...", file=sys.stderr)
        preload(env, args.events, args.users, args.order == "inorder")
        steps, prev = [], None
        for label, variant in STEPS:
            print(f"{label}...", file=sys.stderr)
            if variant is None:
                rate = faust_floor(env, args.events, work)
            elif variant == "worker":
                rate = run_worker(env, work, k, bootstrap, args.events, args.users, variant)["events_per_s"]
            else:
                rate = run_worker(dict(env, BENCH_SPLIT=variant), work, k, bootstrap, args.events, args.users,
                                  variant, app="ingest_split_app")["events_per_s"]
            us = 1e6 / rate
            steps.append({"step": label, "events_per_s": round(rate), "us_per_event": round(us, 1),
                          "added_us_per_event": round(us - prev, 1) if prev is not None else None})
            prev = us
        print(dumps({"benchmark": "ingest split", "machine": machine(), "commit": commit(), "events": args.events,
                     "users": args.users, "order": args.order, "steps": steps,
                     "worker_vs_faust_decode_only": round(steps[-1]["events_per_s"] / steps[0]["events_per_s"], 3)}))


if __name__ == "__main__":
    run(main)

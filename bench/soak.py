"""Sustained load: the simulator at a steady rate against one worker, minute by minute.

    python bench/soak.py [--rate 1500] [--minutes 10] [--users 5000] [--horizon-s 120] [--profile-retention-s 240]

The simulator (`interest-stream simulate --rate R`, a separate process, ``ts`` at the wall clock)
streams for ``--minutes``; the worker (default-size model, scoring every
INTEREST_SCORE_INTERVAL_S=10 s) consumes it. Every minute one JSON line on stderr: events
accepted in that minute and per second, consumer lag, vectors published, the worker's RSS, its
state directory and the users changelog on disk. The window is short (``--horizon-s``, grace a
quarter of it) so events leave the windows, idle users are compacted (rows dropped) and, after
``--profile-retention-s`` idle, evicted; memory should stop growing after the first few minutes;
the summary on stdout says whether lag stayed bounded (below 2 score intervals of input) and how
RSS moved over the second half of the run.
"""
from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time

from common import (ROOT, WorkerProc, broker, checkout, commit, deployment, dir_bytes, dumps, machine, run, topic_bytes,
                    workdir)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=1500)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--horizon-s", type=int, default=120)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--profile-retention-s", type=int, default=240)
    ap.add_argument("--old", default=None, help="run the worker of this git ref instead (same simulator)")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(checkout(args.old)) if args.old else None
        soak(args, src)


def soak(args, src) -> None:
    from tiny_model import build_tiny_model_dir

    work = workdir("soak")
    # with --old, a model whose profile input older workers read too (three scales)
    model_dir = build_tiny_model_dir(work / "model", model_config={}, max_len=256,
                                     profile_scales=3 if args.old else None)
    rows = []
    with broker() as (bootstrap, k):
        env, _ = deployment(bootstrap, "soak", model_dir, score_interval_s=args.interval, horizon_s=args.horizon_s,
                            grace_s=max(1, args.horizon_s // 4), evict_every_s=30,
                            profile_retention_s=args.profile_retention_s, store="rocksdb://")
        prefix = env["INTEREST_TOPIC_PREFIX"]
        w = WorkerProc(env, work, src=src).start()
        sim = subprocess.Popen(
            [sys.executable, "-m", "stream_app.cli", "simulate", "--rate", str(args.rate),
             "--users", str(args.users), "--speedup", "60", "--seed", "4"],
            env=env, cwd=ROOT, stdout=open(work / "simulate.log", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            start = time.monotonic()
            prev = w.metrics()
            for minute in range(1, int(args.minutes) + 1):
                time.sleep(max(0.0, start + 60 * minute - time.monotonic()))
                if w.proc.poll() is not None or sim.poll() is not None:
                    raise SystemExit(f"worker or simulator died; see {work}")
                m = w.metrics()
                acc = m.get('interest_events_total{outcome="accepted"}', 0) - \
                    prev.get('interest_events_total{outcome="accepted"}', 0)
                row = {
                    "minute": minute,
                    "accepted": int(acc),
                    "events_per_s": round(acc / 60),
                    "lag": int(sum(v for k2, v in m.items() if k2.startswith("interest_consumer_lag"))),
                    "vectors": int(m.get("interest_scored_users_total", 0)
                                   - prev.get("interest_scored_users_total", 0)),
                    "compacted_total": int(m.get("interest_users_compacted_total", 0)),
                    "evicted_total": int(m.get("interest_users_evicted_total", 0)),
                    "rss_mib": round(w.rss_mib(), 1),
                    "state_dir_mib": round(dir_bytes(work / "worker-data") / 2**20, 1),
                    "users_changelog_mib": round((topic_bytes(k, f"{prefix}interest-stream-users-changelog") or 0)
                                                 / 2**20, 1),
                }
                rows.append(row)
                prev = m
                print(dumps(row).replace("\n", " "), file=sys.stderr, flush=True)
        finally:
            sim.terminate()
            try:
                sim.wait(30)
            except subprocess.TimeoutExpired:
                sim.kill()
            w.stop()
    half = rows[len(rows) // 2:]
    bound = 2 * args.interval * args.rate
    print(dumps({
        "benchmark": "soak",
        "machine": machine(),
        "commit": args.old or commit(),  # the worker that ran
        "rate": args.rate,
        "minutes": args.minutes,
        "users": args.users,
        "horizon_s": args.horizon_s,
        "profile_retention_s": args.profile_retention_s,
        "score_interval_s": args.interval,
        "worker_ref": args.old or "this checkout",
        "model": {**__import__("json").loads((model_dir / "model.json").read_text())["model"],
                  "max_len": 256, "ort_threads": 1},
        "per_minute": rows,
        "mean_events_per_s": round(sum(r["accepted"] for r in rows) / (60 * len(rows))) if rows else None,
        "max_lag": max(r["lag"] for r in rows) if rows else None,
        "lag_bounded": bool(rows) and all(r["lag"] < bound for r in half),
        "lag_bound": bound,
        "rss_second_half_mib": [half[0]["rss_mib"], half[-1]["rss_mib"]] if half else None,
    }))


if __name__ == "__main__":
    run(main)

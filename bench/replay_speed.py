"""Replay speed: `interest-stream replay` over a preloaded backlog, this checkout against an older one.

Since the backfill is written in Kafka transactions (stream_app/backfill.py: one transactional id
per output topic, a commit every second), this measures what the transactions cost: the same
replay of the same range, run by this checkout and by ``--old`` (a git ref, in a temporary
worktree) in turn, ``--rounds`` times each, each into a topic of its own. Reports each run's wall
time (the command's whole process: start, model load, plan, read, score, write), records read per
second and vectors written, and the ratio of the medians, new ÷ old (above 1: the new code is
slower). Prints JSON.

    python bench/replay_speed.py [--events 300000] [--users 20000] [--rounds 2] [--old REF]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, broker, checkout, commit, deployment, dumps, machine, run, synthetic_events, workdir

SPAN_MS = 20 * 3_600_000
T0 = (int(time.time()) - SPAN_MS // 1000 - 60) * 1000  # a whole second, inside the input topics' retention


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


def run_replay(env: dict, src: Path, topic: str) -> dict:
    """One replay in a process of its own, run from ``src``; its wall time, reads and writes."""
    env = dict(env, PYTHONPATH=str(src))
    start = time.monotonic()
    args = ["replay", "--from", iso(T0), "--to", iso(T0 + SPAN_MS), "--output-topic", topic, "--no-progress"]
    out = subprocess.run([sys.executable, "-m", "stream_app.cli", *args], env=env, cwd=src, capture_output=True,
                         text=True, timeout=3600)
    wall = time.monotonic() - start
    if out.returncode != 0:
        raise SystemExit(f"replay from {src} failed: {out.stderr.strip()}")
    counts = dict(kv.split("=", 1) for kv in out.stdout.strip().splitlines()[-1].removeprefix("replayed: ")
                  .split(", "))
    read = int(counts["read"])
    return {"wall_s": round(wall, 2), "read": read, "records_per_s": round(read / wall),
            "vectors": int(counts["vectors"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--interval", type=float, default=60.0, help="INTEREST_SCORE_INTERVAL_S: event-time ticks")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--old", default="b2098d0", help="git ref whose replay writes without transactions")
    args = ap.parse_args()
    from tiny_model import build_tiny_model_dir

    from stream_app.produce import send_events

    work = workdir("replay")
    model_dir = build_tiny_model_dir(work / "model", model_config={}, max_len=256)
    with broker() as (bootstrap, _k):
        env, s = deployment(bootstrap, "bench", model_dir, score_interval_s=args.interval)
        prefix = env["INTEREST_TOPIC_PREFIX"]
        print(f"preloading {args.events} events for {args.users} users...", file=sys.stderr)
        send_events(synthetic_events(args.users, args.events, seed=3, t0=T0, span_ms=SPAN_MS, in_order=True), s)
        runs: dict[str, list] = {"new": [], "old": []}
        with checkout(args.old) as old_src:
            for i in range(args.rounds):
                for name, src in (("new", ROOT), ("old", old_src)):
                    print(f"round {i + 1}: {name}...", file=sys.stderr)
                    runs[name].append(run_replay(env, src, f"{prefix}replay-{name}-{i}"))
    med = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    print(dumps({
        "benchmark": "replay speed, backfill in transactions (new) against without (old)",
        "machine": machine(),
        "commit": commit(),
        "old_ref": args.old,
        "events": args.events,
        "users": args.users,
        "score_interval_s": args.interval,
        "runs": runs,
        "median_wall_s": med,
        "new_over_old": round(med["new"] / med["old"], 3),
    }))


if __name__ == "__main__":
    run(main)

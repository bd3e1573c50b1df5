"""Ingestion during scoring: does a scoring pass over 20,000 users starve consumption?

Preloads a backlog of N events (default 500,000) spread over U users (default 20,000) and starts
the worker from the beginning with INTEREST_SCORE_INTERVAL_S=T (default 20; the first pass comes
one interval after the worker is ready, so the backlog must last several intervals): the worker consumes
the backlog flat out, and every T seconds a scoring pass covers every user with new events (all
U of them, once the backlog has reached them). /metrics is sampled every 0.5 s.

- idle rate: accepted events/s over the sample intervals with no scoring in them or next to them
  (after the first 5 s of consumption, before the backlog runs out);
- busy rate: accepted events/s over the intervals in which users were scored;
- their ratio (goal >= 0.8), the passes (users, seconds) and the model's size and threads.

    python bench/contention.py [--events N] [--users U] [--interval T] [--threads 1] [--old REF]

With ``--old REF`` the worker of another commit then reads the same backlog (its own consumer
group), so the two are compared in one run.

The model is the default configuration (:func:`models.model.build_model`: 2 layers, 2 heads, 48
dims; max_len 256), briefly trained by tests/tiny_model.py: its speed, not its accuracy, matters
here; the JSON's ``model`` gives its sizes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import WorkerProc, broker, checkout, deployment, dumps, machine, run, synthetic_events, workdir

SPAN_MS = 20 * 3_600_000
# event time ends now: records (timestamp = ts) older than the topics' retention (7 days) would
# be deleted by the broker's retention check while the benchmark runs
T0 = int(time.time() * 1000) - SPAN_MS - 60_000


def measure(env: dict, work: Path, n: int, name: str, src=None) -> dict:
    """One worker (its own consumer group) from the beginning of the backlog to its end; /metrics
    every 0.5 s; the ingestion rates between passes and during them."""
    w = WorkerProc(dict(env, INTEREST_APP_ID=f"interest-stream-{name}"), work, src=src, name=name).start()
    samples = []  # (t, accepted, scored, scoring active)
    t_start = time.monotonic()
    while True:
        time.sleep(0.5)
        m = w.metrics()
        acc = m.get('interest_events_total{outcome="accepted"}', 0) + \
            m.get('interest_events_total{outcome="duplicate"}', 0)
        samples.append((time.monotonic(), acc, m.get("interest_scored_users_total", 0),
                        m.get("interest_scoring_active", 0)))
        if acc >= n:
            break
        if w.proc.poll() is not None:
            raise SystemExit(f"worker died; see {work / (name + '.log')}")
        if time.monotonic() - t_start > 3600:
            raise SystemExit("backlog not consumed within an hour")
    w.stop()

    # classify sample intervals
    first = next(i for i, s_ in enumerate(samples) if s_[1] > 0)
    t_first = samples[first][0]
    scoring = [False] * len(samples)
    for i in range(1, len(samples)):
        # a pass was running at either end of the interval, or users were scored in it
        scoring[i] = samples[i][2] > samples[i - 1][2] or samples[i][3] > 0 or samples[i - 1][3] > 0
    idle_ev = idle_s = busy_ev = busy_s = 0.0
    passes, current = [], None
    for i in range(first + 1, len(samples) - 1):  # the last interval may end mid-way
        dt = samples[i][0] - samples[i - 1][0]
        dev = samples[i][1] - samples[i - 1][1]
        if scoring[i]:
            busy_ev += dev
            busy_s += dt
            if current is None:
                current = {"start_s": round(samples[i - 1][0] - t_first, 1), "users": 0, "seconds": 0.0}
                passes.append(current)
            current["users"] += samples[i][2] - samples[i - 1][2]
            current["seconds"] += dt
        else:
            current = None
            if samples[i][0] - t_first > 5 and not scoring[i - 1] and not scoring[i + 1]:
                idle_ev += dev
                idle_s += dt
    for p in passes:
        p["seconds"] = round(p["seconds"], 1)
        p["users"] = int(p["users"])
    idle = idle_ev / idle_s if idle_s else None
    busy = busy_ev / busy_s if busy_s else None
    return {"idle_events_per_s": round(idle) if idle else None,
            "idle_seconds_measured": round(idle_s, 1),
            "during_scoring_events_per_s": round(busy) if busy else None,
            "scoring_seconds_measured": round(busy_s, 1),
            "ratio": round(busy / idle, 3) if idle and busy else None,
            "users_scored": int(samples[-1][2]),
            "whole_backlog_events_per_s": round(n / (samples[-1][0] - t_first)),
            "passes": passes}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--interval", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--old", default=None, help="git ref of an older worker to run on the same backlog")
    args = ap.parse_args()
    from tiny_model import build_tiny_model_dir

    from stream_app.produce import send_events

    work = workdir("contention")
    model_dir = build_tiny_model_dir(work / "model", model_config={}, max_len=256)
    card = __import__("json").loads((model_dir / "model.json").read_text())

    with broker() as (bootstrap, _k):
        env, s = deployment(bootstrap, "bench", model_dir, score_interval_s=args.interval, ort_threads=args.threads,
                            score_batch=args.batch, store="rocksdb://")
        print(f"preloading {args.events} events for {args.users} users...", file=sys.stderr)
        send_events(synthetic_events(args.users, args.events, seed=2, t0=T0, span_ms=SPAN_MS), s)
        print("worker...", file=sys.stderr)
        new = measure(env, work, args.events, "new")
        old = None
        if args.old:
            print(f"worker of {args.old}...", file=sys.stderr)
            with checkout(args.old) as src:
                old = measure(env, work, args.events, "old", src=src)

    print(dumps({
        "benchmark": "ingestion during scoring",
        "machine": machine(),
        "events": args.events,
        "users": args.users,
        "score_interval_s": args.interval,
        "model": {**card["model"], "max_len": card["max_len"],
                  "quantized": card.get("quantized"), "ort_threads": args.threads,
                  "batch": args.batch},
        **new,
        **({"old_ref": args.old, "old_worker": old} if old else {}),
        "goal": "ingestion during a 20,000-user scoring pass >= 0.8 x idle",
    }))


if __name__ == "__main__":
    run(main)

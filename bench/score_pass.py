"""A live scoring pass against the model alone, and the Kafka records a scored user costs.

    python bench/score_pass.py [--users 20000] [--events 200000]

Preloads events for U users; a worker ingests them with scoring off and stops (its shutdown flush
writes every state). A second worker on the same state then scores every user in its first pass
(unpaced: nothing waits). In the same run, this process scores the same windows (the states the
worker's own code builds from the same events) with ``LoadedModel.predict`` alone, same model, one
ONNX Runtime thread. Prints users/s of both and their ratio, and the records written per scored
user besides the vector: the users changelog records the second worker wrote (its shutdown flush)
plus control-topic records, divided by the users it scored.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import orjson

from common import WorkerProc, broker, dumps, machine, run, synthetic_events, topic_records, workdir

SPAN_MS = 20 * 3_600_000
T0 = int(time.time() * 1000) - SPAN_MS - 60_000


def predict_alone(model_dir: Path, events: list[dict], threads: int, batch: int) -> tuple[int, float]:
    """Users/s of LoadedModel.predict on every user's window and profile (best of 2 passes)."""
    from stream_app import state
    from stream_app.model_runtime import LoadedModel
    from stream_app.settings import Settings

    limits = state.Limits.from_settings(Settings.from_env({}))
    states: dict = {}
    for e in events:  # the worker's own state code, in arrival order
        _, new = state.apply(states.get(e["user_id"]), e, limits, 0)
        if new is not None:
            states[e["user_id"]] = new
    model = LoadedModel.load(model_dir, threads=threads)
    windows = [state.window_events(st) for st in states.values()]
    profiles = [state.profile(st) for st in states.values()]
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        model.predict(windows, profiles, batch_size=batch)
        best = min(best, time.perf_counter() - t)
    return len(states), len(states) / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    from tiny_model import build_tiny_model_dir

    from stream_app.produce import send_events
    from stream_app.settings import Settings
    from stream_app.topics import create_topics

    work = workdir("scorepass")
    model_dir = build_tiny_model_dir(work / "model", model_config={}, max_len=256)  # the default-size model
    card = orjson.loads((model_dir / "model.json").read_bytes())
    events = list(synthetic_events(args.users, args.events, seed=3, t0=T0, span_ms=SPAN_MS))
    with broker() as (bootstrap, k):
        prefix = f"scorepass{int(time.time())}."
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, INTEREST_TOPIC_PREFIX=prefix,
                   INTEREST_PARTITIONS="6", INTEREST_MODEL_DIR=str(model_dir), INTEREST_STORE="rocksdb://",
                   INTEREST_ORT_THREADS=str(args.threads), INTEREST_SCORE_BATCH=str(args.batch))
        s = Settings.from_env(env)
        create_topics(s)
        send_events(iter(events), s)
        ingest = WorkerProc(dict(env, INTEREST_SCORE_INTERVAL_S="3600", INTEREST_FLUSH_S="3600"), work, name="ingest")
        ingest.start()
        while ingest.metrics().get('interest_events_total{outcome="accepted"}', 0) < args.events:
            time.sleep(1)
        ingest.stop()
        changelog = f"{prefix}interest-stream-users-changelog"
        before = topic_records(bootstrap, changelog)
        # its first pass comes one interval after it is ready, and scores everyone pending
        scorer = WorkerProc(dict(env, INTEREST_SCORE_INTERVAL_S="20", INTEREST_FLUSH_S="3600"), work, name="scorer")
        scorer.env["INTEREST_DATA_DIR"] = str(work / "ingest-data")  # the same state directory
        scorer.start()
        deadline = time.monotonic() + 600
        while scorer.metrics().get("interest_scoring_pass_seconds_count", 0) < 1 and time.monotonic() < deadline:
            time.sleep(1)  # the first pass scores everyone pending (the ingest worker's first pass may have
            # scored a few early users already)
        time.sleep(2)
        m = scorer.metrics()
        scored = int(m.get("interest_scored_users_total", 0))
        pass_s, n_passes = m.get("interest_scoring_pass_seconds_sum", 0.0), m.get("interest_scoring_pass_seconds_count", 0)
        scorer.stop()
        written = topic_records(bootstrap, changelog) - before
        control = topic_records(bootstrap, f"{prefix}interest-control") or 0
    print("predict alone...", file=sys.stderr)
    n_alone, alone = predict_alone(model_dir, events, args.threads, args.batch)
    live = scored / pass_s if pass_s else None
    print(dumps({
        "benchmark": "live scoring pass vs the model alone",
        "machine": machine(),
        "load_average": os.getloadavg(),
        "users": args.users,
        "events": args.events,
        "model": {**card["model"], "max_len": card["max_len"], "ort_threads": args.threads, "batch": args.batch},
        "passes": int(n_passes),
        "pass_seconds": round(pass_s, 2),
        "live_pass_users_per_s": round(live) if live else None,
        "predict_alone_users_per_s": round(alone),
        "predict_alone_users": n_alone,
        "live_vs_predict_alone": round(live / alone, 3) if live else None,
        "scored_users": scored,
        "records_per_scored_user_besides_the_vector": round((written + control) / max(1, scored), 3),
        "goal": "live pass >= 0.8 x predict alone; <= 1 record per scored user besides the vector",
    }))


if __name__ == "__main__":
    run(main)

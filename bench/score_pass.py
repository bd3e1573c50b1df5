"""A live scoring pass against the model alone, and the Kafka records a scored user costs.

    python bench/score_pass.py [--users 20000] [--events 200000] [--passes 5]

Preloads events for U users; a worker ingests them with scoring off and stops (its shutdown flush
writes every state). A second worker on the same state then scores every user in its first pass
(unpaced: nothing waits). After each pass every user gets one more event (newer than the rest), so
the next pass scores every user again: ``--passes`` passes in one run. Before each pass, once its
events are in, this process scores the same windows (the states the worker's own code builds from
the same events) with ``LoadedModel.predict`` alone, same model, one ONNX Runtime thread, while the
worker waits for the pass (checked: a pass that overlapped it is an error). Prints users/s of each
pass and of the model alone before it, each pass's ratio and the median ratio, and the records
written per scored user besides the vector: the users changelog records the second worker wrote (one
shutdown flush after all its passes) plus control-topic records, divided by the users (and,
``records_per_vector``, by the vectors: a user scored in several passes between two flushes is
written once). A pass of 20,000 users lasts about 3 s, and on a shared machine one pass against the
model alone gave ratios from 0.70 to 0.85 in five runs of one commit (bench/README.md): hence
several, each against its own.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import orjson

from common import (WorkerProc, broker, commit, deployment, dumps, machine, random_event, run, synthetic_events,
                    topic_records, workdir)

SPAN_MS = 20 * 3_600_000
T0 = int(time.time() * 1000) - SPAN_MS - 60_000


class Alone:
    """The worker's states rebuilt in this process from the same events (the worker's own state
    code, in arrival order), and ``LoadedModel.predict`` on all their windows."""

    def __init__(self, model_dir: Path, threads: int, batch: int):
        from stream_app import state
        from stream_app.model_runtime import LoadedModel
        from stream_app.settings import Settings

        self.state = state
        self.limits = state.Limits.from_settings(Settings.from_env({}))
        self.states: dict = {}
        self.model = LoadedModel.load(model_dir, threads=threads)
        self.batch = batch

    def apply(self, events) -> None:
        for e in events:
            _, new = self.state.apply(self.states.get(e["user_id"]), e, self.limits, 0)
            if new is not None:
                self.states[e["user_id"]] = new

    def users_per_s(self) -> float:
        """Users/s of the model alone on every user's window and profile (best of 2 runs)."""
        windows = [self.state.window_events(st) for st in self.states.values()]
        profiles = [self.state.profile(st) for st in self.states.values()]
        best = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            self.model.predict(windows, profiles, batch_size=self.batch)
            best = min(best, time.perf_counter() - t)
        return len(self.states) / best


def top_up(users: int, k: int) -> list[dict]:
    """One more event for every user, newer than all before it: every user is pending again."""
    rng = random.Random(1000 + k)
    return [random_event(rng, f"top{k}-{u}", f"user{u}", T0 + SPAN_MS + k * 1000) for u in range(users)]


def wait_for(worker: WorkerProc, name: str, at_least: float, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        m = worker.metrics()
        if m.get(name, 0) >= at_least:
            return m
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} stayed below {at_least} for {timeout} s; see {worker.name}.log")
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    from tiny_model import build_tiny_model_dir

    from stream_app.produce import send_events

    work = workdir("scorepass")
    model_dir = build_tiny_model_dir(work / "model", model_config={}, max_len=256)  # the default-size model
    card = orjson.loads((model_dir / "model.json").read_bytes())
    events = list(synthetic_events(args.users, args.events, seed=3, t0=T0, span_ms=SPAN_MS))
    alone = Alone(model_dir, args.threads, args.batch)
    alone.apply(events)
    passes = []
    with broker() as (bootstrap, k):
        env, s = deployment(bootstrap, "scorepass", model_dir, store="rocksdb://", ort_threads=args.threads,
                            score_batch=args.batch)
        prefix = env["INTEREST_TOPIC_PREFIX"]
        send_events(iter(events), s)
        ingest = WorkerProc(dict(env, INTEREST_SCORE_INTERVAL_S="3600", INTEREST_FLUSH_S="3600"), work, name="ingest")
        ingest.start()
        wait_for(ingest, 'interest_events_total{outcome="accepted"}', args.events)
        ingest.stop()
        changelog = f"{prefix}interest-stream-users-changelog"
        before = topic_records(bootstrap, changelog)
        # the model alone before the first pass, with nothing else running but the broker
        alone_before = alone.users_per_s()
        # its first pass comes one interval after it is ready, and scores everyone pending; the
        # interval leaves room, between passes, for a top-up's events and the model alone
        scorer = WorkerProc(dict(env, INTEREST_SCORE_INTERVAL_S="30", INTEREST_FLUSH_S="3600"), work, name="scorer")
        scorer.env["INTEREST_DATA_DIR"] = str(work / "ingest-data")  # the same state directory
        scorer.start()
        last = {}
        for n in range(1, args.passes + 1):
            if n > 1:
                extra = top_up(args.users, n)
                send_events(iter(extra), s, topics_checked=True)
                alone.apply(extra)
                wait_for(scorer, 'interest_events_total{outcome="accepted"}', args.users * (n - 1))
                alone_before = alone.users_per_s()
                m = scorer.metrics()
                if m.get("interest_scoring_pass_seconds_count", 0) >= n or m.get("interest_scoring_active", 0):
                    raise RuntimeError(f"pass {n} began before the model alone was timed: a longer "
                                       "INTEREST_SCORE_INTERVAL_S is needed")
            wait_for(scorer, "interest_scoring_pass_seconds_count", n)
            time.sleep(1)  # the pass's vectors are counted when they are published
            m = scorer.metrics()
            scored = m.get("interest_scored_users_total", 0) - last.get("interest_scored_users_total", 0)
            seconds = (m.get("interest_scoring_pass_seconds_sum", 0.0)
                       - last.get("interest_scoring_pass_seconds_sum", 0.0))
            paced = (m.get("interest_scoring_paced_batches_total", 0)
                     - last.get("interest_scoring_paced_batches_total", 0))
            passes.append({"scored_users": int(scored), "seconds": round(seconds, 3),
                           "live_users_per_s": round(scored / seconds), "alone_users_per_s": round(alone_before),
                           "ratio": round(scored / seconds / alone_before, 3), "paced_batches": int(paced)})
            print(f"pass {n}: {passes[-1]}", file=sys.stderr)
            last = m
        scored = int(last.get("interest_scored_users_total", 0))
        scorer.stop()
        written = topic_records(bootstrap, changelog) - before
        control = topic_records(bootstrap, f"{prefix}interest-control") or 0
    ratios = [p["ratio"] for p in passes]
    print(dumps({
        "benchmark": "live scoring pass vs the model alone",
        "machine": machine(),
        "commit": commit(),
        "load_average": os.getloadavg(),
        "users": args.users,
        "events": args.events,
        "model": {**card["model"], "max_len": card["max_len"], "ort_threads": args.threads, "batch": args.batch},
        "passes": passes,
        "live_pass_users_per_s": [p["live_users_per_s"] for p in passes],
        "predict_alone_users_per_s": [p["alone_users_per_s"] for p in passes],
        "live_vs_predict_alone": ratios,
        "live_vs_predict_alone_median": float(statistics.median(ratios)),
        "scored_users": scored,
        # the users changelog records and control records the scorer wrote (one shutdown flush
        # after all its passes), per user and per vector: 1 per user is what a single pass costs
        "records_per_scored_user_besides_the_vector": round((written + control) / max(1, len(alone.states)), 3),
        "records_per_vector": round((written + control) / max(1, scored), 3),
        "goal": "live pass >= 0.8 x predict alone; <= 1 record per scored user besides the vector",
    }))


if __name__ == "__main__":
    run(main)

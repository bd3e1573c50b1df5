"""Ingestion throughput and memory against the real broker (run by `make bench`).

Preloads N events (default 1,000,000) for U users (default 50,000) across the three input
topics, then in the same run measures (1) a bare aiokafka consumer that only decodes the JSON
(the ceiling of a Python consumer) and (2) the worker from the beginning until it has processed
every event. Prints JSON: events/s of both, their ratio, the worker's peak RSS, state bytes per
user and changelog bytes per event. Scoring is switched off (interval of an hour) so only
ingestion is measured.

    python bench/ingest.py [--events N] [--users U]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import orjson

from common import WorkerProc, broker, dir_bytes, dumps, machine, synthetic_events, topic_bytes

SPAN_MS = 20 * 3_600_000
# event time ends now: records (timestamp = ts) older than the topics' retention (7 days) would
# be deleted by the broker's retention check while the benchmark runs
T0 = int(time.time() * 1000) - SPAN_MS - 60_000


def preload(bootstrap: str, env: dict, n: int, users: int) -> float:
    from stream_app.produce import send_events
    from stream_app.settings import Settings

    t = time.monotonic()
    send_events(synthetic_events(users, n, seed=1, t0=T0, span_ms=SPAN_MS), Settings.from_env(env))
    return time.monotonic() - t


async def bare_consumer(bootstrap: str, topics: list[str], n: int) -> float:
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, group_id=None)
    await c.start()
    seen = 0
    t = None
    quiet_since = time.monotonic()
    try:
        while seen < n:
            batch = await c.getmany(timeout_ms=1000, max_records=10_000)
            if batch:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 60:
                raise SystemExit(f"only {seen} of {n} events in the input topics")
            for recs in batch.values():
                if t is None:
                    t = time.monotonic()
                for r in recs:
                    orjson.loads(r.value)
                seen += 1 * len(recs)
    finally:
        await c.stop()
    return seen / (time.monotonic() - t)


def faust_floor(env: dict, n: int, work: Path) -> float:
    """events/s of a Faust agent that only decodes (bench/faust_floor.py), same topics."""
    import os
    import signal
    import subprocess

    out = work / "floor.json"
    log = open(work / "floor.log", "wb")
    # -l info: at WARN and above Faust's terminal spinner turns on DEBUG records (see app.py)
    proc = subprocess.Popen([sys.executable, "-m", "faust", "-A", "faust_floor", "worker", "-l", "info"],
                            cwd=Path(__file__).parent, env=dict(env, BENCH_FLOOR_EVENTS=str(n),
                                                                BENCH_FLOOR_OUT=str(out)),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 3600
        while not out.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"faust floor app failed; see {work / 'floor.log'}")
            time.sleep(0.5)
        time.sleep(0.2)
        r = orjson.loads(out.read_bytes())
        return r["events"] / r["seconds"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=50_000)
    args = ap.parse_args()
    from tiny_model import build_tiny_model_dir

    work = Path(tempfile.mkdtemp(prefix="interest-bench-ingest-"))
    model_dir = build_tiny_model_dir(work / "model")
    import os

    with broker() as (bootstrap, k):
        prefix = f"bench{int(time.time())}."
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, INTEREST_TOPIC_PREFIX=prefix,
                   INTEREST_PARTITIONS="6", INTEREST_MODEL_DIR=str(model_dir),
                   INTEREST_SCORE_INTERVAL_S="3600", INTEREST_STORE="rocksdb://")
        from stream_app.settings import Settings
        from stream_app.topics import create_topics

        s = Settings.from_env(env)
        create_topics(s)
        print(f"preloading {args.events} events for {args.users} users...", file=sys.stderr)
        preload_s = preload(bootstrap, env, args.events, args.users)
        print("bare aiokafka consumer...", file=sys.stderr)
        bare = asyncio.run(bare_consumer(bootstrap, list(s.input_topics.values()), args.events))
        print("faust decode-only agent...", file=sys.stderr)
        floor = faust_floor(env, args.events, work)
        print("worker...", file=sys.stderr)
        w = WorkerProc(env, work)
        w.start()
        t_ready = time.monotonic()
        done = 0.0
        samples = []
        while done < args.events:
            time.sleep(1)
            m = w.metrics()
            done = sum(m.get(f'interest_events_total{{outcome="{o}"}}', 0)
                       for o in ("accepted", "duplicate", "dead_letter"))
            samples.append((time.monotonic() - t_ready, done, w.rss_mib()))
            if w.proc.poll() is not None:
                raise SystemExit("worker died; see " + str(work / "worker.log"))
            if time.monotonic() - t_ready > 3600:
                raise SystemExit("worker did not finish within an hour")
        elapsed = time.monotonic() - t_ready
        # the first sample where events were flowing: startup before it is not ingestion
        t_first = next((t for t, d, _ in samples if d > 0), 0.0)
        rate = args.events / max(1e-9, elapsed - t_first + 1.0)
        peak = w.rss_peak_mib()
        m = w.metrics()
        time.sleep(3)  # let the last changelog writes land before measuring sizes
        users_changelog = topic_bytes(k, f"{prefix}interest-stream-users-changelog")
        pending_changelog = topic_bytes(k, f"{prefix}interest-stream-pending-changelog")
        w.stop()
        state_dir = dir_bytes(work / "data")
        result = {
            "benchmark": "ingest",
            "machine": machine(),
            "events": args.events,
            "users": args.users,
            "preload_s": round(preload_s, 1),
            "bare_aiokafka_events_per_s": round(bare),
            "worker_events_per_s": round(rate),
            "worker_vs_bare": round(rate / bare, 3),
            "faust_decode_only_events_per_s": round(floor),
            "worker_vs_faust_decode_only": round(rate / floor, 3),
            "worker_accepted": m.get('interest_events_total{outcome="accepted"}'),
            "worker_peak_rss_mib": round(peak, 1),
            "state_bytes_per_user_rocksdb": round(state_dir / args.users),
            "changelog_bytes_per_event": (round((users_changelog + pending_changelog) / args.events, 1)
                                          if users_changelog is not None else None),
            "users_changelog_bytes": users_changelog,
            "goal": "worker >= 0.5 x bare and >= 10,000 events/s",
        }
        print(dumps(result))


if __name__ == "__main__":
    main()

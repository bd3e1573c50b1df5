"""Ingestion throughput, changelog volume and memory against the real broker (run by `make bench`).

Preloads N events (default 1,000,000) for U users (default 50,000) across the three input topics,
then, in the same run and on the same topics, measures from the beginning of the topics:
  1. a bare aiokafka consumer that only decodes the JSON (the ceiling of a Python consumer);
  2. a Faust agent that only decodes (bench/faust_floor.py: the ceiling of any Faust agent), with
     Faust's consumer and again with the worker's (stream_app/consumer.py, which delivers each
     message without Faust's four asyncio tasks), so the worker's own work is seen apart;
  3. the worker (this checkout), until it has processed every event;
  4. with ``--old REF``, the worker of another commit (e.g. the last one before the write-behind
     state), same topics, its own consumer group: new / old in one run.
Scoring is off (an interval of an hour), so only ingestion is measured. ``--order inorder`` gives
each user's events in ts order (the common case); the default shuffles them over 20 hours (almost
every event out of order: the profile's worst case).

Prints JSON: events/s of each, the ratios, per accepted event the table records and bytes written
to the users changelog (records: end offsets after the worker stopped and flushed), peak RSS,
RocksDB bytes per user.

    python bench/ingest.py [--events N] [--users U] [--order shuffled|inorder] [--old REF] [--flush-s S]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import orjson

from common import (WorkerProc, broker, checkout, commit, deployment, dir_bytes, dumps, machine, pyspy_args, run,
                    synthetic_events, topic_bytes, topic_records, workdir)

SPAN_MS = 20 * 3_600_000
# event time ends now: records (timestamp = ts) older than the topics' retention (7 days) would
# be deleted by the broker's retention check while the benchmark runs
T0 = int(time.time() * 1000) - SPAN_MS - 60_000


def preload(env: dict, n: int, users: int, in_order: bool) -> float:
    from stream_app.produce import send_events
    from stream_app.settings import Settings

    t = time.monotonic()
    send_events(synthetic_events(users, n, seed=1, t0=T0, span_ms=SPAN_MS, in_order=in_order), Settings.from_env(env))
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
                seen += len(recs)
    finally:
        await c.stop()
    return seen / (time.monotonic() - t)


def faust_floor(env: dict, n: int, work: Path, consumer: str = "faust") -> float:
    """events/s of a Faust agent that only decodes (bench/faust_floor.py), same topics; with
    ``consumer="worker"`` through the worker's consumer (stream_app/consumer.py)."""
    import signal
    import subprocess

    out = work / f"floor-{consumer}.json"
    log = open(work / f"floor-{consumer}.log", "wb")
    # -l info: at WARN and above Faust's terminal spinner turns on DEBUG records (see app.py)
    proc = subprocess.Popen([sys.executable, "-m", "faust", "-A", "faust_floor", "worker", "-l", "info"],
                            cwd=Path(__file__).parent,
                            env=dict(env, BENCH_FLOOR_EVENTS=str(n), BENCH_FLOOR_OUT=str(out),
                                     BENCH_FLOOR_CONSUMER=consumer,
                                     BENCH_FLOOR_DATADIR=str(work / f"floor-{consumer}-data")),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if os.environ.get("BENCH_PYSPY_FLOOR"):  # sample the decode-only agent too
        subprocess.Popen(["sh", "-c", f'sleep {float(os.environ.get("BENCH_PYSPY_DELAY_S", "0"))} && exec "$@"', "sh",
                          "py-spy", "record", "--pid", str(proc.pid), "--format", "raw", "-r", "50", "-d",
                          os.environ.get("BENCH_PYSPY_S", "30"), "-o", os.environ["BENCH_PYSPY_FLOOR"], *pyspy_args()],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 3600
        while not out.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"faust floor app failed; see {work / f'floor-{consumer}.log'}")
            time.sleep(0.5)
        time.sleep(0.2)
        r = orjson.loads(out.read_bytes())
        return r["events"] / r["seconds"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_worker(env: dict, work: Path, k, bootstrap: str, n: int, users: int, name: str, src=None,
               app: str = "stream_app.app") -> dict:
    """One worker from the beginning of the topics until every event is processed; then SIGTERM
    (its last flush) and the changelog's size."""
    from stream_app.settings import Settings

    app_id = f"interest-stream-{name}"
    w = WorkerProc(dict(env, INTEREST_APP_ID=app_id), work, src=src, name=name, app=app)
    w.start()
    t_ready = time.monotonic()
    done = 0.0
    samples = []
    cache_max = 0.0
    while done < n:
        time.sleep(1)
        m = w.metrics()
        done = sum(m.get(f'interest_events_total{{outcome="{o}"}}', 0)
                   for o in ("accepted", "duplicate", "dead_letter"))
        samples.append((time.monotonic() - t_ready, done))
        cache_max = max(cache_max, m.get("interest_state_cache_bytes", 0.0))
        if w.proc.poll() is not None:
            raise SystemExit(f"worker {name} died; see {work / (name + '.log')}")
        if time.monotonic() - t_ready > 3600:
            raise SystemExit(f"worker {name} did not finish within an hour")
    elapsed = time.monotonic() - t_ready
    # the first sample where events were flowing: startup before it is not ingestion
    t_first = next((t for t, d in samples if d > 0), 0.0)
    rate = n / max(1e-9, elapsed - t_first + 1.0)
    peak = w.rss_peak_mib()
    accepted = w.metrics().get('interest_events_total{outcome="accepted"}', 0.0)
    t_stop = time.monotonic()
    rc = w.stop()  # SIGTERM: the last flush
    shutdown_s = time.monotonic() - t_stop
    prefix = env["INTEREST_TOPIC_PREFIX"]
    changelogs = [f"{prefix}{app_id}-{t}-changelog" for t in ("users", "pending", "vectors")]
    records = sum(topic_records(bootstrap, t) or 0 for t in changelogs)
    nbytes = sum(topic_bytes(k, t) or 0 for t in changelogs) if k is not None else None
    return {
        "events_per_s": round(rate),
        "accepted": accepted,
        "peak_rss_mib": round(peak, 1),
        "changelog_records_per_accepted_event": round(records / max(1.0, accepted), 3),
        "changelog_bytes_per_accepted_event": round(nbytes / max(1.0, accepted), 1) if nbytes is not None else None,
        "state_bytes_per_user_rocksdb": round(dir_bytes(work / f"{name}-data") / users),
        "flush_s": Settings.from_env(env).flush_s if src is None else None,
        "shutdown_s": round(shutdown_s, 1),
        "state_cache_max_mib": round(cache_max / 2**20, 1) if src is None else None,
        "state_cache_bound_mib": Settings.from_env(env).state_cache_mb if src is None else None,
        "exit_code": rc,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--order", choices=["shuffled", "inorder"], default="shuffled")
    ap.add_argument("--old", default=None, help="git ref of an older worker to run on the same topics")
    ap.add_argument("--flush-s", type=float, default=None, help="INTEREST_FLUSH_S of the new worker")
    ap.add_argument("--skip-bare", action="store_true", help="skip the bare aiokafka consumer")
    args = ap.parse_args()
    from tiny_model import build_tiny_model_dir

    work = workdir("ingest")
    # with --old, a model whose profile input older workers read too (three scales)
    model_dir = build_tiny_model_dir(work / "model", profile_scales=3 if args.old else None)
    with broker() as (bootstrap, k):
        # --flush-s None: INTEREST_FLUSH_S as the environment has it, else the default
        env, s = deployment(bootstrap, "bench", model_dir, score_interval_s=3600, store="rocksdb://",
                            flush_s=args.flush_s)
        print(f"preloading {args.events} events for {args.users} users ({args.order})...", file=sys.stderr)
        preload_s = preload(env, args.events, args.users, args.order == "inorder")
        bare = None
        if not args.skip_bare:
            print("bare aiokafka consumer...", file=sys.stderr)
            bare = asyncio.run(bare_consumer(bootstrap, list(s.input_topics.values()), args.events))
        print("faust decode-only agent...", file=sys.stderr)
        floor = faust_floor(env, args.events, work)
        print("faust decode-only agent with the worker's consumer...", file=sys.stderr)
        floor_w = faust_floor(env, args.events, work, consumer="worker")
        print("worker...", file=sys.stderr)
        new = run_worker(env, work, k, bootstrap, args.events, args.users, "new")
        old = None
        if args.old:
            print(f"worker of {args.old}...", file=sys.stderr)
            with checkout(args.old) as src:
                old = run_worker(env, work, k, bootstrap, args.events, args.users, "old", src=src)
        result = {
            "benchmark": "ingest",
            "machine": machine(),
            "commit": commit(),
            "events": args.events,
            "users": args.users,
            "order": args.order,
            "preload_s": round(preload_s, 1),
            "bare_aiokafka_events_per_s": round(bare) if bare else None,
            "faust_decode_only_events_per_s": round(floor),
            "worker": new,
            "faust_decode_only_worker_consumer_events_per_s": round(floor_w),
            "worker_vs_faust_decode_only": round(new["events_per_s"] / floor, 3),
            # the worker's own work alone: both read through the worker's consumer
            "worker_vs_faust_decode_only_worker_consumer": round(new["events_per_s"] / floor_w, 3),
            "worker_vs_bare": round(new["events_per_s"] / bare, 3) if bare else None,
        }
        if old is not None:
            result["old_ref"] = args.old
            result["old_worker"] = old
            result["old_vs_faust_decode_only"] = round(old["events_per_s"] / floor, 3)
            result["new_vs_old"] = round(new["events_per_s"] / old["events_per_s"], 2)
        print(dumps(result))


if __name__ == "__main__":
    run(main)

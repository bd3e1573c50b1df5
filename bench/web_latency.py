"""Latency of the worker's per-user views against a running worker: ``GET /users/{id}/explain`` on
full windows and ``POST /users/{id}/rerank`` with 200 candidates (also ``GET /users/{id}/view``),
asked of the owner, then of a second worker that forwards to it.

    python bench/web_latency.py [--users 40] [--requests 400] [--candidates 200] [--model DIR] [--cpu 1]

Workload: ``--users`` users, each with 160 events over the last 20 hours (clicks, browses with dwell,
searches with queries, over 12 categories), so every window holds 160 events and the state keeps
the newest 128 (``INTEREST_MAX_EVENTS``) in full: the explanation re-scores 128 windows without
one event, plus the window without the profile, plus the window as it is. The model is the
DEFAULT model configuration (:func:`models.model.build_model`, 128 tokens, as ``train`` builds it)
briefly trained on a simulated population (speed does not depend on the weights), or ``--model``
(an exported pair). The worker runs with one ONNX Runtime thread, pinned to one CPU (``--cpu``).

Requests are sequential, over one kept-alive connection per endpoint (the client's time, which
includes HTTP and JSON); each endpoint is warmed up first. Prints JSON: p50/p90/p99/max in ms per
endpoint, the worker's CPU time per request (user + system, from /proc: what a request costs on
one core whatever else runs on the machine; for routed requests, the forwarding worker's share),
the machine, and the load average before and after (other jobs on the machine make the latencies
noisy: read them with it).

Goals (issue 13): explain p99 <= 100 ms for a full 128-event window, rerank p99 <= 20 ms for 200
candidates, on one core.
"""
from __future__ import annotations

import argparse
import http.client
import os
import random
import time
from pathlib import Path

import orjson

from common import WorkerProc, broker, deployment, dumps, machine, random_event, run, workdir

CATS = ["books", "cars", "cooking", "fashion", "finance", "fitness", "gaming", "movies", "music", "sports",
        "tech", "travel"]
WORDS = ["cheap", "best", "new", "review", "guide", "deal", "top", "live", "how", "near", "flights", "recipe"]


def user_events(user: str, n: int, now_ms: int, rng: random.Random) -> list[dict]:
    span = 20 * 3_600_000
    return [random_event(rng, f"{user}-{i}", user, now_ms - span + i * span // n, CATS, WORDS) for i in range(n)]


def percentiles(ms: list[float]) -> dict:
    s = sorted(ms)

    def q(p):
        return round(s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))], 2)

    return {"n": len(s), "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "max_ms": round(s[-1], 2),
            "mean_ms": round(sum(s) / len(s), 2)}


def timed(port: int, requests: list[tuple[str, str, bytes | None]], warmup: int = 20) -> list[float]:
    """Client-side milliseconds of each request (sequential, one kept-alive connection)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    try:
        for i, (method, path, body) in enumerate(requests[:warmup] + requests):
            headers = {"Content-Type": "application/json"} if body is not None else {}
            t0 = time.perf_counter()
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            payload = r.read()
            took = (time.perf_counter() - t0) * 1000
            if r.status != 200:
                raise RuntimeError(f"{method} {path}: {r.status} {payload[:300]!r}")
            if i >= warmup:
                out.append(took)
    finally:
        conn.close()
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(port: int, pid: int, requests: list) -> dict:
    """Client-side percentiles, and the worker's CPU time per request over the timed requests
    (load-independent: what one request costs on one core)."""
    timed(port, requests[:20], warmup=0)
    c0 = cpu_seconds(pid)
    out = percentiles(timed(port, requests, warmup=0))
    out["worker_cpu_ms_per_request"] = round((cpu_seconds(pid) - c0) * 1000 / len(requests), 2)
    return out


def get_json(port: int, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, orjson.loads(r.read() or b"null")
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=40)
    ap.add_argument("--events", type=int, default=160, help="events per user (the state keeps 128 in full)")
    ap.add_argument("--requests", type=int, default=400, help="timed requests per endpoint")
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--model", type=Path, help="an exported model (default: the default config, briefly trained)")
    ap.add_argument("--cpu", type=int, default=os.cpu_count() - 1,
                    help="CPU the worker is pinned to (-1: not pinned; it still computes on one core at a time)")
    ap.add_argument("--no-routed", action="store_true", help="skip the second worker (routed requests)")
    args = ap.parse_args()
    from stream_app.produce import send_events

    work = workdir("web")
    if args.model:
        model_dir = args.model
    else:
        from tiny_model import build_tiny_model_dir

        model_dir = build_tiny_model_dir(work / "model", model_config={}, max_len=128)
    card = orjson.loads((Path(model_dir) / "model.json").read_bytes())
    rng = random.Random(13)
    now = int(time.time() * 1000)
    users = {f"user{u}": user_events(f"user{u}", args.events, now, rng) for u in range(args.users)}
    load_before = os.getloadavg()

    with broker() as (bootstrap, _k):
        env, s = deployment(bootstrap, "benchweb", model_dir, partitions=4, score_interval_s=1, ort_threads=1,
                            store="rocksdb://")
        cpus = {args.cpu} if args.cpu >= 0 else None
        owner = WorkerProc(env, work, name="owner", cpus=cpus).start()
        send_events([e for evs in users.values() for e in evs], s)
        deadline = time.monotonic() + 180
        pending = set(users)
        while pending and time.monotonic() < deadline:
            for u in list(pending):
                status, body = get_json(owner.port, f"/users/{u}")
                if status == 200 and body["interests"] and body["events"] == args.events:
                    pending.discard(u)
            time.sleep(0.5)
        if pending:
            raise SystemExit(f"{len(pending)} users without a vector after 180 s")
        status, ex = get_json(owner.port, "/users/user0/explain")
        assert ex["events"] == 128, ex["events"]

        names = list(users)
        cand_cats = CATS + ["unknown-category"]
        rerank_body = orjson.dumps({"items": [{"item_id": f"c{i}", "category": rng.choice(cand_cats),
                                               "score": rng.random()} for i in range(args.candidates)],
                                    "weight": 0.5})
        explain_reqs = [("GET", f"/users/{names[i % len(names)]}/explain", None) for i in range(args.requests)]
        rerank_reqs = [("POST", f"/users/{names[i % len(names)]}/rerank", rerank_body) for i in range(args.requests)]
        view_reqs = [("GET", f"/users/{names[i % len(names)]}/view", None) for i in range(args.requests // 4)]
        pid = owner.proc.pid
        result = {"owner": {
            "explain": measured(owner.port, pid, explain_reqs),
            "rerank": measured(owner.port, pid, rerank_reqs),
            "view": measured(owner.port, pid, view_reqs),
        }}
        load_mid = os.getloadavg()
        if not args.no_routed:
            # a second worker: it takes half the partitions; ask it about the users it does NOT own
            other = WorkerProc(env, work, name="router", cpus=cpus).start()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                p1 = set(get_json(owner.port, "/health")[1]["partitions"])
                p2 = set(get_json(other.port, "/health")[1]["partitions"])
                if p1 and p2 and p1 | p2 == set(range(4)) and not p1 & p2:
                    break
                time.sleep(0.5)
            from stream_app.partitioning import partition_for

            foreign = [u for u in names if partition_for(u.encode(), 4) not in p2]
            # both own their partitions, but a worker answers 503 until its rebalance is done (one
            # run's first routed explain was a 503): wait for a routed answer
            while time.monotonic() < deadline and get_json(other.port, f"/users/{foreign[0]}")[0] != 200:
                time.sleep(0.5)
            result["routed"] = {
                "users": len(foreign),
                "explain": measured(other.port, other.proc.pid,
                                    [("GET", f"/users/{foreign[i % len(foreign)]}/explain", None)
                                     for i in range(args.requests)]),
                "rerank": measured(other.port, other.proc.pid,
                                   [("POST", f"/users/{foreign[i % len(foreign)]}/rerank", rerank_body)
                                    for i in range(args.requests)]),
            }
            other.stop()
        owner.stop()

    print(dumps({
        "benchmark": "web_latency",
        "machine": machine(),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after_owner_phase": [round(x, 2) for x in load_mid],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "worker": {"pinned_cpu": args.cpu if args.cpu >= 0 else None, "ort_threads": 1},
        "model": {"version": card["version"], "categories": len(card["categories"]), "max_len": card["max_len"],
                  "dir": str(model_dir)},
        "workload": {"users": args.users, "events_per_user": args.events, "window_rows_in_full": 128,
                     "candidates": args.candidates, "requests_per_endpoint": args.requests},
        "goals": {"explain_p99_ms": 100, "rerank_p99_ms": 20},
        **result,
    }))


if __name__ == "__main__":
    run(main)

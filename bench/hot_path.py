"""The worker's own per-event and per-user costs, in-process, without Faust or Kafka (not a test).

    .venv/bin/python bench/hot_path.py [--events 300000] [--users 20000] [--order shuffled|inorder]

Per event (the ingest agent's own work): ``core.ingest`` (validation and the window and profile
update), the state cache's bookkeeping, and the agent's whole loop body (the aligner and the
events held until their flush), with the worker's GC thresholds; the loop body also without the
events' input offsets (``core.ingest``'s ``origin``), the two taking turns. Per user of a scoring
pass (the default-size model, 1 ONNX Runtime thread, the pass's batches): copying and encoding the
inputs out of the state (``core.snapshot``), padding each batch's model runs (``core.plan``), the
runs (``LoadedModel.run``, ONNX Runtime: all the scoring thread does), putting the rows back in
order with their items' lift (``core.gather``) and ``core.publish`` plus the JSON of each vector;
all but the runs are the event loop's share. The states' memory, traced
with tracemalloc in a state cache (and the last vector each then keeps), beside what the state
cache's bound counts for them (``estimated_size``). Prints JSON (µs each, best of ``--repeat``)
with the machine. What docs/performance.md compares with Faust's own
per-event cost (``bench/ingest.py``) and ``LoadedModel.predict`` (``bench/score_pass.py``).
"""
from __future__ import annotations

import argparse
import gc
import os
import time
import tracemalloc
import zlib

from collections import namedtuple

import numpy as np
import orjson

from common import commit, machine, run, synthetic_events, workdir

Message = namedtuple("Message", "topic partition offset key value timestamp tp")  # the fields Faust's has
T0 = 1_764_000_000_000
SPAN_MS = 20 * 3_600_000


def best_us(f, n: int, repeat: int) -> float:
    """Best wall time of ``f()`` over ``repeat`` runs, in µs per item."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return round(best / n * 1e6, 2)


def best_us_taking_turns(fs: dict, n: int, repeat: int) -> dict:
    """:func:`best_us` of each of ``fs`` (name: function), the functions taking turns in each of
    ``repeat`` rounds, so that a machine slower for a while slows them alike."""
    best = dict.fromkeys(fs, float("inf"))
    for _ in range(repeat):
        for name, f in fs.items():
            t = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: round(b / n * 1e6, 2) for name, b in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--order", choices=["shuffled", "inorder"], default="shuffled")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = workdir("hotpath")
    os.environ.setdefault("INTEREST_DATA_DIR", str(work / "state"))  # importing the app makes its state directory
    from tiny_model import build_tiny_model_dir

    from stream_app import core, state
    from stream_app.alignment import RELEASE_EVERY, Aligner, message_event_ts, message_order, message_user
    from stream_app.app import GC_THRESHOLDS
    from stream_app.holes import Deliveries
    from stream_app.input_order import RunningBack
    from stream_app.model_runtime import LoadedModel
    from stream_app.settings import Settings
    from stream_app.state_cache import StateCache, estimated_size

    gc.set_threshold(*GC_THRESHOLDS)
    settings = Settings.from_env({})
    limits = state.Limits.from_settings(settings)
    now, future_ms = T0 + SPAN_MS, settings.future_s * 1000
    raw = [(e["type"], e["user_id"].encode(), orjson.dumps(e))
           for e in synthetic_events(args.users, args.events, 1, T0, SPAN_MS, args.order == "inorder")]
    out = {"benchmark": "hot path", "machine": machine(), "commit": commit(), "events": args.events,
           "users": args.users, "order": args.order, "gc_thresholds": GC_THRESHOLDS}

    def ingest_only():
        states: dict = {}
        for t, k, v in raw:
            r = core.ingest(t, k, v, states.get, limits, now, future_ms)
            if r.state is not None:
                states[k] = r.state

    def ingest_cached() -> StateCache:
        cache = StateCache(10**12)
        for m in messages:  # each with its input offset, as the worker's (in "state_memory")
            e = cache.get(m.key)
            r = core.ingest(m.topic, m.key, m.value, lambda _k, e=e: e.state if e else None, limits, now, future_ms, m)
            if r.state is not None:
                cache.put(m.partition, m.key, r.state)
        return cache

    topics = ("click", "browse", "search")
    # each user's events in one partition of each topic (6), as the input topics are keyed by user
    parts = [zlib.crc32(k) % 6 for _, k, _ in raw]
    # Faust's timestamp is in seconds; the record timestamp is the event's ts, as the project's producers stamp it
    messages = [Message(t, p, i, k, v, orjson.loads(v)["ts"] / 1000, (t, p))
                for i, ((t, k, v), p) in enumerate(zip(raw, parts))]

    def agent_body(offsets: bool = True):  # what the ingest agent does per message, all topics caught up
        cache = StateCache(10**12)
        # as stream_app.app's, but idle_s 0: the clock stands still here, so a wait would end only at max_buffered
        aligner = Aligner(topics, release_every=RELEASE_EVERY, tie_key=message_event_ts, user=message_user)
        deliveries = Deliveries()  # no hole: every offset is recorded (stream_app.ingest.process)
        running_back = RunningBack(limits.late_span_ms / 1000)

        def apply(released):
            for x in released:
                e = cache.get(x.key)
                origin, record = (x, deliveries.read_before(x.tp, x.offset)) if offsets else (None, False)
                r = core.ingest(x.topic, x.key, x.value, lambda _k, e=e: e.state if e else None, limits, now,
                                future_ms, origin, record)
                if r.state is not None:
                    cache.put(x.partition, x.key, r.state)
                cache.hold(x.partition, x, len(x.value) + len(x.key))

        for m in messages:
            key, tie = message_order(m, limits.late_span_ms)  # the event's ts parsed, as the agent does
            running_back.see(m.topic, m.partition, m.offset, key)  # in order: never counts
            if aligner.add(m.topic, m.partition, key, m, 0.0, tie):  # due: as the agent
                apply(list(aligner.ready(m.partition, lambda t, p: True, 0.0)))
            cache.over_bound()
        apply(list(aligner.drain()))

    out["per_event_us"] = {"core.ingest": best_us(ingest_only, len(raw), args.repeat),
                           "core.ingest + state cache": best_us(ingest_cached, len(raw), args.repeat),
                           **best_us_taking_turns({
                               "+ aligner and held events (the agent's loop body)": agent_body,
                               # the same, its events without their input offsets (before a04bdd1), in turns
                               "the loop body without the input offsets": lambda: agent_body(offsets=False)},
                               len(raw), args.repeat)}

    model = LoadedModel.load(build_tiny_model_dir(work / "model", model_config={}, max_len=256),
                             threads=1)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = ingest_cached()  # the states with their cache entries and index, as in the worker
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    states = {k: e.state for k, e in cache.entries.items()}
    n_rows = sum(len(s["ev"]) + len(s["old"]) for s in states.values())
    out["state_memory"] = {  # what the cache's bound counts (estimated_size) against tracemalloc
        "users": len(states), "rows_per_user": round(n_rows / len(states), 1),
        "profile_categories_per_user": round(sum(len(s["p"]["w"]) for s in states.values()) / len(states), 1),
        "traced_bytes_per_user": round(traced / len(states)),
        "estimated_bytes_per_user": round(sum(map(estimated_size, states.values())) / len(states))}
    items, horizon = list(states.items()), limits.horizon_ms
    inputs = [core.snapshot(k, s, model, horizon) for k, s in items]
    batch = settings.score_batch
    batches = [inputs[i:i + batch] for i in range(0, len(inputs), batch)]  # as a pass takes them
    runs = [core.plan(model, b, batch) for b in batches]
    outputs = [model.run(r) for r in runs]
    probs = np.concatenate([core.gather(model, b, r, o) for b, r, o in zip(batches, runs, outputs)])
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    core.publish(inputs, probs, model, states.get)  # each state keeps its last vector
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - before
    out["state_memory"]["traced_vector_bytes_per_user"] = round(traced / len(states))
    tracemalloc.stop()
    for s in states.values():  # so the timed publish below starts, as before, with no vector to replace
        s["out"] = None

    def publish():
        for key, vec, _ in core.publish(inputs, probs, model, states.get):
            orjson.dumps(vec)

    n = len(items)
    out["per_user_us"] = {
        "core.snapshot: copy and encoding (event loop)": best_us(
            lambda: [core.snapshot(k, s, model, horizon) for k, s in items], n, args.repeat),
        "core.plan: padding the batch's model runs (event loop)": best_us(
            lambda: [core.plan(model, b, batch) for b in batches], n, args.repeat),
        "LoadedModel.run: ONNX Runtime (scoring thread)": best_us(lambda: [model.run(r) for r in runs], n, args.repeat),
        "core.gather: the rows in order, with the items' lift (event loop)": best_us(
            lambda: [core.gather(model, b, r, o) for b, r, o in zip(batches, runs, outputs)], n, args.repeat),
        "core.publish and the vector's JSON (event loop)": best_us(publish, n, args.repeat),
    }
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    run(main)

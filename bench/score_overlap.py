"""How much a scoring pass gains from running the model in a thread beside the event loop (not a test).

    .venv/bin/python bench/score_overlap.py [--users 20000] [--events 200000] [--rounds 5]

In-process, without Kafka or Faust: the states of ``--users`` users (the worker's own state code),
the default-size model, one ONNX Runtime thread, batches of 256. Times, in alternating rounds:

* the parts alone: ``core.snapshot`` (copy and encode, the event loop's), ``core.infer`` (the
  model: its runs planned, run and gathered) and ``core.publish`` with each vector's JSON (the
  event loop's);
* ``serial``: a pass doing all three in one thread, batch after batch;
* ``pipelined``: the worker's pass (:func:`stream_app.scoring.score_pass`) without its Kafka and
  pacing: a batch's snapshot and its runs' padding (``core.plan``) in an asyncio loop while the
  previous batch's runs (``LoadedModel.run``) go on in a one-thread executor, then that batch's
  publish; at GIL switch intervals of 0.5 ms (the worker's, ``stream_app.app``), 5 ms (CPython's)
  and 0.1 ms;
* the worker before the runs were planned in the loop, nearly: the padding in the thread too, at
  most 2,048 padded tokens a run, 0.5 ms. The thread pads all of a batch's runs, then runs them,
  where the worker before padded each run just before it; each padding call takes the GIL either
  way.

The worker's GC thresholds and freeze (``stream_app.app``) are set before the states are built.

Were the overlap free, a pipelined pass would take the longer of the two sides (``ideal``); the
JSON gives each pass's median seconds and its ratio to ``serial``. Also 400 calls of ``core.infer``
on one batch of 50 windows, alone and in a thread while the main thread runs Python (holding the
GIL but for the switches), at each switch interval: what model runs pay for taking the GIL back.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson

from common import commit, machine, run, synthetic_events, workdir

T0 = 1_764_000_000_000
SPAN_MS = 20 * 3_600_000
BATCH = 256
SWITCH = {"0.5 ms": 0.0005, "5 ms": 0.005, "0.1 ms": 0.0001}
BEFORE_TOKENS = 2048  # padded tokens a run at most before (LoadedModel's DEFAULT_BATCH_TOKENS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = workdir("overlap")
    os.environ.setdefault("INTEREST_DATA_DIR", str(work / "state"))
    from tiny_model import build_tiny_model_dir

    from score_pass import Alone  # the worker's states rebuilt in-process, and the model
    from stream_app import core
    from stream_app.app import GC_THRESHOLDS

    gc.set_threshold(*GC_THRESHOLDS)  # as the worker at its start: the states come after
    gc.freeze()

    alone = Alone(build_tiny_model_dir(work / "model", model_config={}, max_len=256), threads=1, batch=BATCH)
    alone.apply(synthetic_events(args.users, args.events, 3, T0, SPAN_MS))
    model = alone.model
    states = {user.encode(): st for user, st in alone.states.items()}  # keyed as the worker's (bytes)
    items, horizon = list(states.items()), alone.limits.horizon_ms
    chunks = [items[i:i + BATCH] for i in range(0, len(items), BATCH)]

    def fresh():
        for s in states.values():
            s["out"] = None  # every pass starts with no vector to replace

    def snapshot(chunk):
        return [core.snapshot(k, s, model, horizon) for k, s in chunk]

    def publish(inputs, probs):
        for _, vec, _ in core.publish(inputs, probs, model, states.get):
            orjson.dumps(vec)

    def parts() -> dict:
        t = time.perf_counter()
        inputs = [snapshot(c) for c in chunks]
        t1 = time.perf_counter()
        probs = [core.infer(model, x, BATCH) for x in inputs]
        t2 = time.perf_counter()
        for x, p in zip(inputs, probs):
            publish(x, p)
        t3 = time.perf_counter()
        return {"snapshot": t1 - t, "infer": t2 - t1, "publish": t3 - t2}

    def serial():
        for c in chunks:
            inputs = snapshot(c)
            publish(inputs, core.infer(model, inputs, BATCH))

    pool = ThreadPoolExecutor(1)

    def infer_before(inputs):  # the worker's thread before: the padding there too, 2,048 tokens a run
        runs = model.plan([i.ids for i in inputs], np.stack([i.profile for i in inputs]), BATCH, BEFORE_TOKENS)
        return core.gather(model, inputs, runs, model.run(runs))

    async def pipelined(plan_in_loop: bool = True):
        """The worker's pass: each batch's runs planned (padded) in the loop, the thread only runs
        them; ``plan_in_loop`` False: the worker before, the padding in the thread too."""
        loop = asyncio.get_running_loop()
        running = None
        for c in chunks + [None]:
            nxt = None
            if c is not None:
                inputs = snapshot(c)
                if plan_in_loop:
                    runs = core.plan(model, inputs, BATCH)
                    nxt = (inputs, runs, loop.run_in_executor(pool, model.run, runs))
                else:
                    nxt = (inputs, None, loop.run_in_executor(pool, infer_before, inputs))
            if running is not None:
                inputs, runs, outputs = running
                outputs = await outputs
                publish(inputs, outputs if runs is None else core.gather(model, inputs, runs, outputs))
            running = nxt
            await asyncio.sleep(0)

    def timed(f) -> float:
        fresh()
        t = time.perf_counter()
        f()
        return time.perf_counter() - t

    before = "the worker before: padding in the thread, 2,048 tokens a run, switch 0.5 ms"
    times: dict[str, list[float]] = {"serial": [], **{f"pipelined, switch {k}": [] for k in SWITCH}, before: []}
    part_times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        fresh()
        for k, v in parts().items():
            part_times.setdefault(k, []).append(v)
        sys.setswitchinterval(SWITCH["0.5 ms"])
        times["serial"].append(timed(serial))
        for name, s in SWITCH.items():
            sys.setswitchinterval(s)
            times[f"pipelined, switch {name}"].append(timed(lambda: asyncio.run(pipelined())))
        sys.setswitchinterval(SWITCH["0.5 ms"])
        times[before].append(timed(lambda: asyncio.run(pipelined(plan_in_loop=False))))
    med = {k: statistics.median(v) for k, v in times.items()}
    pm = {k: statistics.median(v) for k, v in part_times.items()}
    ideal = max(pm["snapshot"] + pm["publish"], pm["infer"])

    # one batch shape, 400 model runs: alone, and in a thread beside Python in the main thread
    sample = snapshot(chunks[0])[:50]
    longest = max(len(x.ids) for x in sample)
    alone_runs = []
    beside: dict[str, list[float]] = {k: [] for k in SWITCH}

    def infer_400() -> float:
        t = time.perf_counter()
        for _ in range(400):
            core.infer(model, sample, BATCH)
        return time.perf_counter() - t

    for _ in range(args.rounds):
        alone_runs.append(infer_400())
        for name, s in SWITCH.items():
            sys.setswitchinterval(s)
            out: list[float] = []
            th = threading.Thread(target=lambda: out.append(infer_400()))
            th.start()
            x = 0
            while th.is_alive():
                x += sum(range(1000))  # Python in the main thread: it gives the GIL up at the switches only
            th.join()
            beside[name].append(out[0])
    sys.setswitchinterval(SWITCH["0.5 ms"])
    alone_med = statistics.median(alone_runs)
    print(orjson.dumps({
        "benchmark": "scoring pass: the model in a thread beside the event loop, in-process",
        "machine": machine(), "commit": commit(), "users": len(states), "events": args.events,
        "rounds": args.rounds, "batch": BATCH,
        "parts_seconds": {k: round(v, 3) for k, v in pm.items()},
        "ideal_pipelined_seconds": round(ideal, 3),
        "pass_seconds": {k: round(v, 3) for k, v in med.items()},
        "pass_vs_serial": {k: round(v / med["serial"], 3) for k, v in med.items()},
        "ideal_vs_serial": round(ideal / med["serial"], 3),
        "pass_seconds_by_round": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "model_runs": {"windows": len(sample), "tokens_longest": longest, "infer_calls": 400,
                       "alone_seconds": round(alone_med, 3),
                       "beside_python_seconds": {k: round(statistics.median(v), 3) for k, v in beside.items()},
                       "beside_vs_alone": {k: round(statistics.median(v) / alone_med, 3) for k, v in beside.items()}},
    }, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    run(main)

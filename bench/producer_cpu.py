"""What a paced stream of events costs its producer, at the events' linger and at the one before
(run by `make bench`).

`interest-stream simulate --rate R` (and `load jsonl --rate R`, the demo's stream) sends through
``stream_app.produce.send_events``. A benchmark's simulator shares the cores with the worker, so
its CPU is taken from the worker. In one run, against a fresh local broker, the same live
simulated population (20,000 users, speedup 60, as ``bench/freshness.py`` starts it) is streamed
at R events/s for S seconds per round, in turns:

- ``generate``: the events made and serialized at the same pace, nothing sent (what is not the
  producer's);
- ``linger_20``: ``send_events`` with a linger of 20 ms (the events' producer before
  ``SEND_LINGER_MS``);
- ``linger_new``: ``send_events`` at ``SEND_LINGER_MS``.

Prints JSON: per round, CPU µs per event of this process (every thread: the pacing, the
simulation, kafka-python's sender) and of the broker, and the medians; ``ratio`` is the new
linger's process CPU over the old one's, per round, and its median.

    python bench/producer_cpu.py [--rate R] [--seconds S] [--rounds N]
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

import orjson

from common import broker, commit, cpu_s, deployment, dumps, machine, run


def generate(events, rate: float) -> None:
    """The simulation and serialization alone, paced as send_events paces them."""
    from stream_app.produce import paced

    for ev in paced(events, rate):
        ev["ts"] = int(time.time() * 1000)
        orjson.dumps(ev)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=5000, help="events per second")
    ap.add_argument("--seconds", type=float, default=10, help="seconds per round")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()

    from models.simulate import iter_live_events
    from stream_app import produce

    new_linger = produce.SEND_LINGER_MS
    n = int(args.rate * args.seconds)
    rounds = []
    with broker() as (bootstrap, k):
        _, s = deployment(bootstrap, "pcpu")  # no worker, no model
        events = iter_live_events(20_000, 3, 60.0, int(time.time() * 1000))
        next(events)  # the population is built before the first round
        broker_pid = k.pid() if k is not None else None
        for _ in range(args.rounds):
            row = {}
            for name, linger in (("generate", None), ("linger_20", 20), ("linger_new", new_linger)):
                chunk = itertools.islice(events, n)
                c0, b0 = cpu_s(os.getpid()), cpu_s(broker_pid) if broker_pid else None
                if linger is None:
                    generate(chunk, args.rate)
                else:
                    produce.SEND_LINGER_MS = linger
                    try:
                        produce.send_events(chunk, s, rate=args.rate, wallclock_ts=True, topics_checked=True)
                    finally:
                        produce.SEND_LINGER_MS = new_linger
                row[name] = {"process_us_per_event": round((cpu_s(os.getpid()) - c0) / n * 1e6, 1)}
                if b0 is not None:
                    row[name]["broker_us_per_event"] = round((cpu_s(broker_pid) - b0) / n * 1e6, 1)
            new, old = (row[name]["process_us_per_event"] for name in ("linger_new", "linger_20"))
            row["ratio"] = round(new / old, 3)
            rounds.append(row)

    def median(name, key):
        values = [r[name][key] for r in rounds if key in r[name]]
        return round(statistics.median(values), 1) if values else None

    print(dumps({
        "benchmark": "producer_cpu", "machine": machine(), "commit": commit(),
        "rate": args.rate, "seconds_per_round": args.seconds, "events_per_round": n, "linger_ms_new": new_linger,
        "rounds": rounds,
        "median": {name: {key: median(name, key) for key in ("process_us_per_event", "broker_us_per_event")}
                   for name in ("generate", "linger_20", "linger_new")},
        "ratio_median": round(statistics.median(r["ratio"] for r in rounds), 3),
    }))
    return 0


if __name__ == "__main__":
    run(main)

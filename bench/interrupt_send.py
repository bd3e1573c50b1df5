"""Ctrl-C during a load: how often it leaves kafka-python's producer unable to close, and its count
wrong, with the interrupt raised wherever it lands and held while ``send`` runs (run by `make bench`).

``load jsonl`` at full speed spends most of its time inside kafka-python's ``send``. Python raises
a Ctrl-C's KeyboardInterrupt at the next bytecode, so it can land inside ``send``: in kafka-python
3.0's ``Future._add_cb_eb``, between its lock's ``acquire`` and ``release``, it leaves the lock
held, the producer's sender thread blocks on it for ever, and ``close`` never returns (most likely
why a simulator did not exit 30 s after SIGTERM in one freshness run). Landing after the record
joined a batch, it is raised before the send is counted. ``stream_app.produce.SendsUninterrupted``
holds the signal until ``send`` returns.

Against a fresh local broker, trials take turns between two ways of running the loop of
``stream_app.produce.send_events`` (its producer, its record timestamps, the deployment's input
topics):

- ``raised``: the loop without the guard, as ``send_events`` was;
- ``held``: the loop with ``SendsUninterrupted``, as ``send_events`` is.

In each, a timer sends SIGINT to the main thread a random 1 to 50 ms after the first event. Then
``close(timeout=5)``: a producer that cannot close in 5 s is ``stuck`` (kafka-python's own
``close`` waits for ever). A producer that closed is ``miscounted`` when the input topics grew by
another number of records than the loop counted. ``landed`` counts where the interrupt was raised
(the innermost function); ``not_interrupted``, the trials it stopped nothing in, which end after
``TRIAL_S``.

    python bench/interrupt_send.py [--trials N]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import random
import signal
import threading
import time

import orjson

from common import ROOT, broker, commit, deployment, dumps, machine, run, topic_records


TRIAL_S = 2.0  # a loop the signal did not stop (it was raised in a garbage-collected object's __del__) ends here


def trial(s, way: str, rng: random.Random, producers: list) -> dict:
    """One load interrupted by SIGINT: whether its producer closed, and what it counted. Every
    producer stays in ``producers``: a KeyboardInterrupt raised in one's ``__del__``, collected
    during another trial, would be ignored (Python prints it and goes on)."""
    from kafka.errors import KafkaTimeoutError

    from stream_app.produce import SEND_LINGER_MS, SendsUninterrupted, producer

    topic = s.input_topics["click"]
    prod = producer(s, linger_ms=SEND_LINGER_MS)
    producers.append(prod)
    prod.send(topic, key=b"warm", value=b"{}").get(10)  # metadata fetched: what follows is send itself
    before = topic_records(s.bootstrap_servers, topic)
    guard = SendsUninterrupted()
    main = threading.main_thread().ident
    timer = threading.Timer(rng.uniform(0.001, 0.05), signal.pthread_kill, (main, signal.SIGINT))
    sent, landed = 0, None
    try:
        with guard.installed() if way == "held" else contextlib.nullcontext():
            timer.start()
            deadline = time.monotonic() + TRIAL_S
            for i in itertools.count():
                if time.monotonic() > deadline:
                    break
                ev = {"event_id": f"e{i}", "user_id": f"u{i % 5000}", "type": "click", "ts": int(time.time() * 1000),
                      "item_id": "i1", "category": "books"}
                value = orjson.dumps(ev)
                if way == "held":
                    with guard:
                        prod.send(topic, key=ev["user_id"].encode(), value=value, timestamp_ms=ev["ts"])
                        sent += 1
                else:  # the loop as it was, with nothing around the send (not even a null context)
                    prod.send(topic, key=ev["user_id"].encode(), value=value, timestamp_ms=ev["ts"])
                    sent += 1
    except KeyboardInterrupt as exc:
        tb = exc.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code
        where = code.co_filename.rsplit("site-packages/", 1)[-1].removeprefix(f"{ROOT}/")
        landed = f"{where}:{code.co_name}"
    timer.cancel()
    try:
        prod.close(timeout=5)
    except KafkaTimeoutError:
        return {"stuck": True, "miscounted": None, "landed": landed}
    delivered = topic_records(s.bootstrap_servers, topic) - before
    return {"stuck": False, "miscounted": delivered != sent, "landed": landed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=300, help="trials of each way")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    ways = ("raised", "held")
    results = {w: [] for w in ways}
    producers = []  # every trial's (a stuck one's sender thread never ends: a daemon thread, gone at exit)
    t0 = time.monotonic()
    with broker() as (bootstrap, k):
        _, s = deployment(bootstrap, "isend")  # its input topics; no worker, no model
        for _ in range(args.trials):
            for way in ways:
                results[way].append(trial(s, way, rng, producers))
    out = {"benchmark": "interrupt_send", "machine": machine(), "commit": commit(), "trials": args.trials,
           "seconds": round(time.monotonic() - t0, 1)}
    for way, rs in results.items():
        out[way] = {
            "stuck": sum(r["stuck"] for r in rs),
            "miscounted": sum(bool(r["miscounted"]) for r in rs),
            "not_interrupted": sum(r["landed"] is None for r in rs),
            "landed": dict(collections.Counter(r["landed"] for r in rs if r["landed"]).most_common()),
        }
    print(dumps(out))
    return 0


if __name__ == "__main__":
    run(main)

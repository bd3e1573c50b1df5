"""What the aligner's order costs per message, in-process, this checkout against older ones (not a test).

    .venv/bin/python bench/align_cost.py [--messages 200000] [--old c589f2b,bcf3efd] [--repeat 5]

Each version's ``stream_app/alignment.py`` (read with ``git show REF:…``, as a module of the
``stream_app`` package: since ``b00822d`` it imports the contract's size limit) queues messages as
the ingest agent does (``add`` with what that version's agent passed, then ``ready`` when due) while
every topic is behind, as in a backlog: a head goes when each topic of its partition has one
waiting; ``drain`` releases the rest. The messages are Faust's as the agent sees them
(``timestamp`` in seconds, ``value`` a contract event's JSON), for 20,000 users over three topics
and 8 partitions, in three kinds of input:

* ``stamped``: the record timestamp is the event's ``ts`` (the project's producers), 1 ms apart;
* ``plain``: a producer that does not set it stamps the time it sends, 12 records in each
  millisecond, whose events' ``ts`` are spread over a day (``bench/live_eval.py --producer plain``);
* ``by_user``: stamped with ``ts`` and sent one user's history after another's (``bench/live_eval.py
  --order user --producer project``): each topic's timestamps run back at every user, and a head
  waits for its user's older record in another topic (``UsersWaiting``) where the version has that.

The versions take turns, best of ``--repeat`` each. Prints JSON: µs per message for each version and
input, and each older version against this one, with the machine. Against what a message costs the
worker in all (``bench/ingest.py``: about 110 µs at 9,000 events/s), this says what share the
aligner's order has.
"""
from __future__ import annotations

import argparse
import random
import subprocess
import time
import types

import orjson

from common import ROOT, commit, machine, random_event, run
from stream_app.settings import Settings
from stream_app.state import Limits

TOPICS = ("click", "browse", "search")
PARTITIONS = 8
T0 = 1_764_000_000_000
ALLOWED_MS = Limits.from_settings(Settings.from_env({})).late_span_ms  # the worker's default window and grace


class Message:
    """The fields of Faust's message the aligner and its keys read."""
    __slots__ = ("topic", "partition", "key", "value", "timestamp")

    def __init__(self, topic: str, partition: int, key: bytes, value: bytes, timestamp: float):
        self.topic, self.partition, self.key, self.value, self.timestamp = topic, partition, key, value, timestamp


def messages(n: int, kind: str, seed: int = 1) -> list[Message]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        user = rng.randrange(20_000)
        if kind == "plain":  # sent 12 a millisecond, the events' ts anywhere in a day
            record_ms, ts = T0 + i // 12, T0 + rng.randrange(86_400_000)
        else:
            ts = record_ms = T0 + i
        e = random_event(rng, f"e{i}", f"user{user}", ts)
        out.append(Message(e["type"], user % PARTITIONS, f"user{user}".encode(), orjson.dumps(e), record_ms / 1000))
    if kind == "by_user":  # the same events, one user's after another's (each user's in ts order)
        out.sort(key=lambda m: m.key)
    return out


def load(ref: str | None) -> types.ModuleType:
    """``stream_app.alignment`` of ``ref`` (None: this checkout's) as a module of its own."""
    if ref is None:
        source = (ROOT / "stream_app" / "alignment.py").read_text()
    else:
        source = subprocess.run(["git", "show", f"{ref}:stream_app/alignment.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    module = types.ModuleType(f"alignment_{ref or 'new'}")
    module.__package__ = "stream_app"  # its relative imports: this checkout's stream_app
    exec(compile(source, f"{ref or 'HEAD'}:stream_app/alignment.py", "exec"), module.__dict__)
    return module


def agent(module: types.ModuleType):
    """What that version's ingest agent did per message: the aligner it built and the key it passed."""
    tie_key = getattr(module, "message_event_ts", None)
    order_key = getattr(module, "order_key", None)
    user = getattr(module, "message_user", None)
    message_order = getattr(module, "message_order", None)
    if message_order is not None:  # since b00822d: every message's ts parsed, its order timestamp and tie passed
        return lambda: module.Aligner(TOPICS, release_every=module.RELEASE_EVERY, tie_key=tie_key, user=user), \
            lambda m: message_order(m, ALLOWED_MS)
    if user is not None:  # since a head waits for its user's older record in another topic
        return lambda: module.Aligner(TOPICS, release_every=module.RELEASE_EVERY, tie_key=tie_key, user=user), \
            lambda m: m.timestamp
    if tie_key is not None:  # since the lazy tie-break: the record timestamp, ties by the event's ts
        return lambda: module.Aligner(TOPICS, release_every=module.RELEASE_EVERY, tie_key=tie_key), \
            lambda m: m.timestamp
    if order_key is not None:  # c589f2b: the event's ts parsed for every message
        return lambda: module.Aligner(TOPICS, release_every=module.RELEASE_EVERY), \
            lambda m: order_key(m.timestamp, m.value)
    return lambda: module.Aligner(TOPICS, release_every=module.RELEASE_EVERY), lambda m: m.timestamp


def per_message_us(make, key, msgs: list[Message]) -> float:
    aligner = make()
    released = 0
    t = time.perf_counter()
    for m in msgs:
        k = key(m)  # the timestamp, or (order timestamp, tie) where the version's agent passes a tie
        if aligner.add(m.topic, m.partition, *((k[0], m, 0.0, k[1]) if isinstance(k, tuple) else (k, m, 0.0))):
            for _ in aligner.ready(m.partition, lambda t, p: False, 0.0):  # behind: waits for every topic
                released += 1
    for _ in aligner.drain():
        released += 1
    elapsed = time.perf_counter() - t
    assert released == len(msgs), (released, len(msgs))
    return elapsed / len(msgs) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--old", default="c589f2b,bcf3efd", help="comma-separated git refs to compare with")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    refs = [None] + [r for r in args.old.split(",") if r]
    versions = {ref or "this checkout": agent(load(ref)) for ref in refs}
    out = {"benchmark": "align_cost", "machine": machine(), "commit": commit(), "messages": args.messages,
           "repeat": args.repeat, "us_per_message": {}}
    for kind in ("stamped", "plain", "by_user"):
        msgs = messages(args.messages, kind)
        best = {name: float("inf") for name in versions}
        for _ in range(args.repeat):  # the versions take turns, so a slower moment of the host hits each
            for name, (make, key) in versions.items():
                best[name] = min(best[name], per_message_us(make, key, msgs))
        out["us_per_message"][kind] = {name: round(us, 3) for name, us in best.items()}
        out[f"{kind}_old_vs_this"] = {name: round(us / best["this checkout"], 3)
                                      for name, us in best.items() if name != "this checkout"}
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    run(main)

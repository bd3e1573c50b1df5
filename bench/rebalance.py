"""Events kept when two workers (or ``--workers`` N) take partitions from each other while events
stream in, against an older version in the same run.

Each trial: a fresh deployment (6 partitions), worker A, then B (and C...) started 2 s before a
simulated log (50 users, 3 days, about 3,000 events) is sent at ``--rate``; the last worker stops
5 s into the stream and starts again 3 s later, the one before it stops 5 s after that and starts
again 3 s later, and so on down to A (none waited for: each joins the group while the stream goes
on); once everything is sent and flushed all stop, and the users' changelog is
read: the events in the final states (the sum of each state's ``seq``) against the distinct events
sent. Every event is valid and new, so each one missing was lost: faust-streaming drops records it
fetched around an assignment and commits over them (:mod:`stream_app.holes`). The loss depends on
timing, so each version runs ``--trials`` times, alternating. ``--kill``: the workers are killed
(SIGKILL) instead of stopped, so what each applied since its last flush or commit is read again
by another (applied again, or recognised as duplicates; a `late` dead letter is counted, and the
first 40 are listed with their input offsets). The input records past the group's committed
offsets 40 s after the stream ended are counted, by partition (``uncommitted_partitions``), and
counted again 30 s later when any are (stuck, or only slow).

    python bench/rebalance.py [--trials 3] [--old a2a8031] [--kill] [--workers 2] [--rate 200]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time

from common import (ROOT, WorkerProc, broker, commit, deployment, dumps, machine, run, topic_records, versions,
                    workdir)

sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--old", default="a2a8031", help="the version to compare with (a git ref); '' for none")
    ap.add_argument("--kill", action="store_true", help="SIGKILL the workers instead of stopping them")
    ap.add_argument("--workers", type=int, default=2, choices=range(2, 7), metavar="2..6")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        result = trials(args, versions(stack, args.old))
    print(dumps({"machine": machine(), "commit": commit(), "old": args.old or None, "rate": args.rate,
                 "workers": args.workers, "stops": "SIGKILL" if args.kill else "SIGTERM", **result}))


def trials(args, versions: dict) -> dict:
    import orjson
    from tiny_model import build_tiny_model_dir

    from models.simulate import simulate_to_files
    from stream_app.produce import read_jsonl, send_events

    work = workdir("rebalance")
    model_dir = build_tiny_model_dir(work / "model")
    log = work / "events.jsonl"
    simulate_to_files(50, 3, 7, log, start_ms=int(time.time() * 1000) - 4 * 86_400_000)
    sent = len({e["event_id"] for e in read_jsonl(log)})
    rows = {name: [] for name in versions}
    with broker() as (bootstrap, _):
        for t in range(args.trials):
            for name, src in versions.items():
                env, s = deployment(bootstrap, f"rb{t}{name}", model_dir, score_interval_s=1, commit_interval_s=1,
                                    session_timeout_s=10, flush_s=3)
                prefix = env["INTEREST_TOPIC_PREFIX"]
                here = work / f"{name}-{t}"
                here.mkdir()
                workers = [WorkerProc(env, here, src=src, name=n) for n in "ABCDEF"[:args.workers]]
                workers[0].start()
                for w in workers[1:]:
                    w.start(wait=False)  # it joins the group as the stream begins
                time.sleep(2)
                errors = []

                def send():
                    try:
                        send_events(read_jsonl(log), s, rate=args.rate)
                    except Exception as exc:  # counted as the trial's, not a traceback
                        errors.append(str(exc)[:300])

                stream = threading.Thread(target=send)
                stream.start()
                for w in reversed(workers):
                    time.sleep(5)
                    w.kill() if args.kill else w.stop()
                    time.sleep(3)
                    w.start(wait=False)
                stream.join()
                time.sleep(40)  # ready, flushed (3 s) and committed (1 s), with room for a rebalance's delays
                # events read again since each worker's last start: duplicates (by id or input offset)
                read_again = {k: sum(w.metrics().get(f"interest_{k}_total", 0.0) for w in workers)
                              for k in ("duplicates", "duplicates_by_offset")}
                behind = uncommitted(bootstrap, s.app_id, list(s.input_topics.values()), 6)  # commits stuck?
                later = None
                if behind:  # stuck, or only slow (a message waits up to HOLE_WAIT_S for a hole)?
                    time.sleep(30)
                    later = uncommitted(bootstrap, s.app_id, list(s.input_topics.values()), 6)
                codes = [w.stop() for w in workers]
                kept = kept_events(bootstrap, f"{prefix}interest-stream-users-changelog")
                letters = topic_records(bootstrap, f"{prefix}events.dlq")  # said, not lost silently
                rows[name].append({"kept": kept, "lost": sent - kept, "dead_letters": letters,
                                   "dead_letter_reasons": reasons(bootstrap, f"{prefix}events.dlq", orjson.loads),
                                   "late": late_letters(bootstrap, f"{prefix}events.dlq", orjson.loads),
                                   "read_again_since_the_last_starts": read_again,
                                   "uncommitted_before_the_stop": sum(end - (c or 0) for c, end in behind.values()),
                                   "uncommitted_partitions": behind,
                                   "uncommitted_30_s_later": later,
                                   "exit_codes": codes, "send_error": errors[0] if errors else None})
                print(name, t, rows[name][-1], file=sys.stderr)
    return {"sent": sent, "trials": rows,  # a trial whose events were not all sent counts for nothing
            "lost": {name: sum(r["lost"] for r in rs if not r["send_error"]) for name, rs in rows.items()}}


def uncommitted(bootstrap: str, group: str, topics: list[str], partitions: int) -> dict:
    """Records of ``topics`` past the group's committed offsets (all of them where none is), for
    each partition that has any: ``{"search[2]": [committed offset or None, end offset]}``."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        ends = c.end_offsets(tps)
        committed = {tp: c.committed(tp) for tp in tps}
        return {f"{tp.topic.rsplit('.', 1)[-1]}[{tp.partition}]": [committed[tp], ends[tp]]
                for tp in tps if ends[tp] > (committed[tp] or 0)}
    finally:
        c.close()


def reasons(bootstrap: str, topic: str, loads) -> dict:
    """How many dead letters ``topic`` holds for each reason."""
    from collections import Counter

    from kafka_io import read_all

    return dict(Counter(loads(m.value)["reason"] for m in read_all(bootstrap, topic)))


def late_letters(bootstrap: str, topic: str, loads, at_most: int = 40) -> list:
    """The first ``at_most`` `late` dead letters of ``topic`` as [input topic's last word,
    partition, offset, detail], in offset order within each input partition."""
    from kafka_io import read_all

    letters = (loads(m.value) for m in read_all(bootstrap, topic))
    late = sorted([d["topic"].rsplit(".", 1)[-1], d["partition"], d["offset"], d["detail"]]
                  for d in letters if d["reason"] == "late")
    return late[:at_most]


def last_values(bootstrap: str, topic: str, loads) -> dict:
    """Each key's newest value in ``topic`` (None for a tombstone)."""
    from kafka_io import read_all

    return {m.key: loads(m.value) if m.value else None for m in read_all(bootstrap, topic)}


def kept_events(bootstrap: str, changelog: str) -> int:
    """The events in the users' final states: the sum of each state's ``seq`` (accepted events)."""
    import orjson

    return sum(v["seq"] for v in last_values(bootstrap, changelog, orjson.loads).values() if v)


if __name__ == "__main__":
    run(main)

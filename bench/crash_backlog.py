"""Events dead-lettered as ``late`` after a crash while reading a backlog, against an older version
in the same run.

Each version: a fresh deployment (6 partitions), a simulated log (50 users, 3 days) sent at full
speed before the worker starts, so it reads a backlog whose event time runs days ahead in
seconds. Offsets are committed every 600 s only (never, here) and states flushed every 0.5 s: once
every event is processed and every state flushed, the worker is killed (SIGKILL) and started
again. It then reads every event again; each one is in a restored state, so each should be a
duplicate. An event whose id left its user's state meanwhile (its user's event time moved more
than the window plus the grace past it) was dead-lettered as ``late`` before the states kept their
input offsets (:func:`stream_app.state.note_input`). The users' changelog is read at the end: the
events in the final states (the sum of each state's ``seq``) against the distinct events sent.

    python bench/crash_backlog.py [--old ff8d33e]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

from common import (ROOT, WorkerProc, broker, commit, deployment, dumps, machine, run, topic_records, versions,
                    workdir)

sys.path.insert(0, str(ROOT / "tests"))

OUTCOMES = ("accepted", "duplicate", "dead_letter")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", default="ff8d33e", help="the version to compare with (a git ref); '' for none")
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--days", type=int, default=3)
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        result = trials(args, versions(stack, args.old))
    print(dumps({"machine": machine(), "commit": commit(), "old": args.old or None, **result}))


def processed(w: WorkerProc) -> dict:
    m = w.metrics()
    out = {o: m.get(f'interest_events_total{{outcome="{o}"}}', 0.0) for o in OUTCOMES}
    out["late"] = m.get('interest_dead_letters_total{reason="late"}', 0.0)
    out["duplicates_by_offset"] = m.get("interest_duplicates_by_offset_total")  # None: the old version
    return out


def wait_processed(w: WorkerProc, n: int, timeout: float = 300) -> dict:
    """The worker's counts once it has processed ``n`` events and they stay so for 2 s."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        got = processed(w)
        if sum(got[o] for o in OUTCOMES) >= n and got == last:
            return got
        last = got
        time.sleep(2)
    raise RuntimeError(f"{n} events not processed in {timeout} s: {last}")


def trials(args, versions: dict) -> dict:
    from rebalance import kept_events
    from tiny_model import build_tiny_model_dir

    from models.simulate import simulate_to_files
    from stream_app.produce import read_jsonl, send_events

    work = workdir("crash_backlog")
    model_dir = build_tiny_model_dir(work / "model")
    log = work / "events.jsonl"
    simulate_to_files(args.users, args.days, 7, log, start_ms=int(time.time() * 1000) - (args.days + 1) * 86_400_000)
    events = list(read_jsonl(log))
    sent = len({e["event_id"] for e in events})
    rows = {}
    with broker() as (bootstrap, _):
        for name, src in versions.items():
            env, s = deployment(bootstrap, f"cb{name}", model_dir, score_interval_s=3600, commit_interval_s=600,
                                flush_s=0.5)
            prefix = env["INTEREST_TOPIC_PREFIX"]
            records = send_events(events, s)
            here = work / name
            here.mkdir()
            w = WorkerProc(env, here, src=src, name=name)
            w.start()
            first = wait_processed(w, records)
            changelog = f"{prefix}interest-stream-users-changelog"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # every accepted event in a flushed state
                flushed = kept_events(bootstrap, changelog)
                if flushed >= first["accepted"]:
                    break
                time.sleep(1)
            w.kill()
            w.start()
            again = wait_processed(w, records)
            code = w.stop()
            kept = kept_events(bootstrap, changelog)
            rows[name] = {"records": records, "first_run": first, "flushed_before_the_kill": flushed,
                          "after_the_restart": again, "kept": kept, "exit_code": code,
                          "dead_letters_in_the_dlq": topic_records(bootstrap, f"{prefix}events.dlq")}
            print(name, rows[name], file=sys.stderr)
    return {"users": args.users, "days": args.days, "sent": sent, "versions": rows}


if __name__ == "__main__":
    run(main)

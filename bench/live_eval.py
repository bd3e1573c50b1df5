"""The interest model through the live pipeline on a real log (not a test; run by `make bench`).

What a team would check before trusting the model: events streamed through Kafka into the worker,
the vectors it publishes compared with each user's actual next behaviour, against the baselines.

1. ``interest-stream train --data LOG --out CKPT`` with no other option, then ``interest-stream
   export CKPT --out DIR``: the model a team gets from the two commands at their defaults (``train``
   chooses the target from the log; the card's ``split.target_choice`` is printed with the result).
2. For each test user, the cut is the user's first test sample (:mod:`models.data`: the earliest
   cut at or after ``t2`` with a non-empty target). The log's events of that user up to the cut
   (every event with ``ts`` <= the cut's newest ts) are produced to the input topics, all users
   interleaved in ts order, as ``interest-stream load jsonl`` would (``--order user``: one user's
   events after another's, as a harness that collects each user's history in turn writes them).
   ``--producer``: the project's producer, record timestamp = ``ts``, in that order (``project``);
   kafka-python's at its defaults, as a producer outside the project would, its record timestamps
   the time of sending (``plain``); or the events written to a file and sent by ``interest-stream
   load jsonl``, which sends them in ts order (``load``); or a kafka-python producer per event type,
   each in a thread of its own, the three sending at once, as three upstream services would, with
   the record timestamp ``ts`` (``per-topic``) or the time of sending (``per-topic-plain``). ``--trials N``
   streams them N times, each into a broker and a worker of its own (`late` events depend on
   timing); ``--reuse`` serves the checkpoint and export of the last run in ``--workdir``.
3. A worker at its defaults (1-day window, 128 events, profile on, scoring every 10 s) serves the
   exported model; the benchmark reads ``user-interests`` until every user's vector has the cut's
   ``ts`` (the vector saw every event up to the cut) and keeps each user's last vector.
4. Scored against the cut's target (the same :mod:`models.data` code as ``evaluate``): KL, top-3
   hit rate, paired bootstrap intervals over users against the best baseline on validation (fit
   on training, as ``evaluate`` does), and against that baseline given an items' lift as ``train``
   gives the model one (``evaluate``'s ``best_with_item_lift``), and against ``ema_prior`` tuned on
   these very cuts, as a check that tunes its own counter on its test data would: in sample (an
   optimistic yardstick) and cross-validated over users (each fifth of the users predicted by the
   counter tuned on the others; :func:`models.baselines.counter_tuned_on_samples`). Also the largest
   difference between a live vector and the checkpoint's offline prediction (PyTorch) for the same
   sample: training and serving agree.

Prints JSON per dataset: samples, KL of the live vectors, of the offline model and of every
baseline, the ratio to the best baseline with its interval, top-3 hit rates, the parity, dead
letters, and the time each step took.

    python bench/live_eval.py [--dataset cj,movielens] [--workdir DIR] [--trials N] [--reuse]
                              [--producer project|plain|load|per-topic|per-topic-plain]
                              [--order time|user]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from common import ROOT, WorkerProc, broker, commit, deployment, dumps, machine

RETENTION_MS = 100 * 365 * 86_400_000  # the logs are years old; the default 7 days would delete them


def train_and_export(log: Path, wd: Path) -> tuple[Path, Path, float]:
    """Checkpoint and exported model of ``train`` and ``export`` at their defaults, run as the CLI."""
    ckpt, served = wd / "ckpt", wd / "model"
    t0 = time.perf_counter()
    for args in (["train", "--data", str(log), "--out", str(ckpt), "--quiet"],
                 ["export", str(ckpt), "--out", str(served)]):
        done = subprocess.run([sys.executable, "-m", "stream_app.cli", *args], cwd=ROOT,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"interest-stream {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return ckpt, served, time.perf_counter() - t0


def events_to_stream(log: Path, cut_of: dict[str, int], order: str = "time") -> list[dict]:
    """The log's events of the chosen users up to their cut, in ts order (ties in log order), or with
    ``order="user"`` one user's after another's, each user's in ts order: a producer that sends
    each user's history in turn."""
    out = []
    with open(log, "rb") as f:
        for line in f:
            ev = orjson.loads(line)
            cut = cut_of.get(ev["user_id"])
            if cut is not None and ev["ts"] <= cut:
                out.append(ev)
    out.sort(key=lambda e: e["ts"])
    if order == "user":
        out.sort(key=lambda e: e["user_id"])  # stable: each user's events stay in ts order
    return out


def send_plain(events: list[dict], bootstrap: str, topics: dict[str, str], stamp: bool = False) -> int:
    """The events as a producer outside the project sends them: kafka-python's KafkaProducer at its
    defaults (no linger, 16 KB batches), in the order given. ``stamp``: the record timestamp is the
    event's ``ts``; else it is not set (the time of sending)."""
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for ev in events:
            p.send(topics[ev["type"]], key=ev["user_id"].encode(), value=orjson.dumps(ev),
                   timestamp_ms=ev["ts"] if stamp else None)
        p.flush()
    finally:
        p.close()
    return len(events)


def send_per_topic(events: list[dict], bootstrap: str, topics: dict[str, str], stamp: bool) -> int:
    """The events as three upstream services send them: :func:`send_plain` per event type, each in a
    thread of its own sending its type's events in the order given, all three at once, so that the
    topics run out of step."""
    import threading

    by_type: dict[str, list[dict]] = {}
    for ev in events:
        by_type.setdefault(ev["type"], []).append(ev)
    threads = [threading.Thread(target=send_plain, args=(evs, bootstrap, topics, stamp)) for evs in by_type.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(events)


def send_with_load(events: list[dict], env: dict, work: Path) -> int:
    """The events written, in the order given, to a JSONL file and sent by ``interest-stream load
    jsonl`` (the command a team streams a log with; it sends in ts order)."""
    log = work / "stream.jsonl"
    log.write_bytes(b"".join(orjson.dumps(ev) + b"\n" for ev in events))
    proc = subprocess.run([sys.executable, "-m", "stream_app.cli", "load", "jsonl", str(log)], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"load jsonl failed: {proc.stderr.strip()}")
    return int(proc.stdout.split()[-2])  # "sent N events"


def stream_and_collect(events: list[dict], cut_of: dict[str, int], served: Path, work: Path,
                       timeout_s: float, producer: str = "project") -> tuple[dict[str, dict], dict]:
    """Events through Kafka into a worker at its defaults; each user's last vector. ``producer``:
    ``project``, the project's own (``send_events``, in the order given), ``load`` (:func:`send_with_load`)
    or ``plain`` (:func:`send_plain`)."""
    from kafka import KafkaConsumer, TopicPartition

    from stream_app.produce import send_events

    with broker() as (bootstrap, _k):
        # partitions=None: INTEREST_PARTITIONS as the environment has it, else the default
        env, s = deployment(bootstrap, "live", served, partitions=None, retention_ms=RETENTION_MS)
        w = WorkerProc(env, work, name="live").start()
        t0 = time.perf_counter()
        if producer == "project":
            sent = send_events(iter(events), s)
        elif producer == "load":
            sent = send_with_load(events, env, work)
        elif producer in ("per-topic", "per-topic-plain"):
            sent = send_per_topic(events, bootstrap, s.input_topics, stamp=producer == "per-topic")
        else:
            sent = send_plain(events, bootstrap, s.input_topics)
        t_sent = time.perf_counter() - t0
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                 auto_offset_reset="earliest", fetch_max_wait_ms=200)
        consumer.assign([TopicPartition(s.output_topic, p) for p in range(s.partitions)])
        consumer.seek_to_beginning()
        last: dict[str, dict] = {}
        complete = 0
        deadline = time.monotonic() + timeout_s
        while complete < len(cut_of) and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=1000, max_records=10_000).values():
                for r in recs:
                    if r.value is None:
                        continue
                    v = orjson.loads(r.value)
                    user = v["user_id"]
                    before = last.get(user)
                    last[user] = v
                    was = before is not None and before["ts"] == cut_of[user]
                    if v["ts"] == cut_of[user] and not was:
                        complete += 1
            if w.proc.poll() is not None:
                raise SystemExit(f"the worker died; see {work / 'live.log'}")
        m = w.metrics()
        consumer.close()
        w.stop()
    stats = {
        "producer": producer, "events_sent": sent, "send_s": round(t_sent, 1),
        "scored_in_s": round(time.perf_counter() - t0, 1),
        "users_complete": complete,
        "accepted": int(m.get('interest_events_total{outcome="accepted"}', 0)),
        "dead_letters": int(m.get('interest_events_total{outcome="dead_letter"}', 0)),
        "duplicates": int(m.get('interest_events_total{outcome="duplicate"}', 0)),
        "dead_letter_reasons": {k.split('"')[1]: int(v) for k, v in m.items()
                                if k.startswith("interest_dead_letters_total{") and v},
    }
    return last, stats


def score(ds, base, pred, categories, rows, live: dict[str, dict], tuned: dict) -> dict:
    from models.baselines import NAMES
    from models.evaluate import kl_per_sample, paired_bootstrap, top3_per_sample

    test = ds.splits["test"]
    targets, users = test.targets[rows], test.user[rows]
    got = np.array([[live[ds.user_ids[u]]["interests"][c] for c in categories] for u in users], np.float64)
    best = base["best"]
    preds = {"live": got, "offline": pred[rows], **{n: base["test"][n][rows] for n in NAMES},
             "best_with_item_lift": base["test_with_item_lift"][rows],
             "counter_tuned_on_these_cuts": tuned["in_sample"],
             "counter_tuned_on_other_users": tuned["cross_validated"]}
    kl = {n: kl_per_sample(targets, p) for n, p in preds.items()}
    top3 = {n: top3_per_sample(targets, p) for n, p in preds.items()}
    return {
        "samples": int(len(rows)),
        "kl": {n: round(float(v.mean()), 4) for n, v in kl.items()},
        "best_baseline": best,
        "ratio_live_to_best": round(float(kl["live"].mean() / kl[best].mean()), 4),
        "kl_gain_ci95": [round(x, 4) for x in paired_bootstrap(kl[best] - kl["live"], users)],
        "ratio_live_to_ema_prior": round(float(kl["live"].mean() / kl["ema_prior"].mean()), 4),
        # the best baseline given an items' lift, as train gives the model one (evaluate's best_with_item_lift)
        "best_baseline_item_lift": {k: base["item_lift"][k] for k in ("kept", "slots", "m", "lambda", "items")},
        "ratio_live_to_best_with_item_lift": round(float(kl["live"].mean() / kl["best_with_item_lift"].mean()), 4),
        "kl_gain_vs_best_with_item_lift_ci95": [round(x, 4) for x in paired_bootstrap(
            kl["best_with_item_lift"] - kl["live"], users)],
        # ema_prior tuned on these very cuts (in sample, and cross-validated over users), as a check
        # that tunes its own counter on its test data would (models.baselines.counter_tuned_on_samples)
        "counter_tuned_on_these_cuts": tuned["params"],
        **{f"ratio_live_to_{n}": round(float(kl["live"].mean() / kl[n].mean()), 4)
           for n in ("counter_tuned_on_these_cuts", "counter_tuned_on_other_users")},
        **{f"kl_gain_vs_{n}_ci95": [round(x, 4) for x in paired_bootstrap(kl[n] - kl["live"], users)]
           for n in ("counter_tuned_on_these_cuts", "counter_tuned_on_other_users")},
        "top3_hit": {n: round(float(v.mean()), 4) for n, v in top3.items()},
        "top3_gain_ci95": [round(x, 4) for x in paired_bootstrap(top3["live"] - top3[best], users)],
        "max_abs_diff_live_vs_offline": float(np.abs(got - pred[rows]).max()),
    }


def run(dataset: str, workdir: Path, timeout_s: float, trials: int = 1, reuse: bool = False,
        producer: str = "project", order: str = "time") -> dict:
    from model_eval import first_cuts, make_log

    from models.baselines import counter_tuned_on_samples
    from models.evaluate import held_out_predictions, kl_per_sample

    wd = workdir / dataset
    wd.mkdir(parents=True, exist_ok=True)
    log = make_log(dataset, workdir, 0, 0, 0, "off")
    if reuse and (wd / "ckpt" / "model_card.json").exists() and (wd / "model" / "model.json").exists():
        ckpt, served, train_s = wd / "ckpt", wd / "model", None  # the last run's, trained on the same log
    else:
        ckpt, served, train_s = train_and_export(log, wd)
    evaluated = held_out_predictions(ckpt, log)  # what `evaluate` scores
    ds, base, pred, categories = evaluated.ds, evaluated.base, evaluated.pred, evaluated.encoder.categories
    rows = first_cuts(ds.splits["test"])
    tuned = counter_tuned_on_samples(ds, ds.splits["test"].take(rows), len(categories), base["test"]["prior"][0],
                                 kl_per_sample)
    cut_of = {ds.user_ids[u]: int(c) for u, c in zip(ds.splits["test"].user[rows], ds.splits["test"].cut_ts[rows])}
    events = events_to_stream(log, cut_of, order)
    runs = []
    for trial in range(trials):  # each on a broker and a worker of its own: how the timing varies
        work = wd if trial == 0 else wd / f"trial{trial}"
        work.mkdir(exist_ok=True)
        live, stats = stream_and_collect(events, cut_of, served, work, timeout_s, producer)
        missing = [u for u, c in cut_of.items() if live.get(u, {}).get("ts") != c]
        if missing:
            raise SystemExit(f"{dataset}: {len(missing)} of {len(cut_of)} users have no vector at their cut "
                             f"(e.g. {missing[:3]}); see {work / 'live.log'}")
        runs.append({**stats, **score(ds, base, pred, categories, rows, live, tuned)})
    card = orjson.loads((served / "model.json").read_bytes())
    choice = orjson.loads((ckpt / "model_card.json").read_bytes())["split"].get("target_choice")
    out = {"dataset": dataset, "train_and_export_s": None if train_s is None else round(train_s, 1),
           "model": {"version": card["version"], **card["model"]}, "target_choice": choice, "split_t2": ds.t2,
           "order": order, **runs[0]}
    if trials > 1:  # the first trial above; what moves from one to the next
        keys = ("send_s", "scored_in_s", "accepted", "dead_letters", "duplicates", "dead_letter_reasons",
                "ratio_live_to_best", "max_abs_diff_live_vs_offline")
        out["trials"] = [{k: r[k] for k in keys} for r in runs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="cj,movielens", help="comma-separated: cj, movielens, rees46")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-live-eval"))
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the vectors")
    ap.add_argument("--trials", type=int, default=1, help="stream the events this many times, each into a "
                    "fresh broker and worker (late events depend on timing)")
    ap.add_argument("--reuse", action="store_true", help="serve the checkpoint and export a run left in "
                    "--workdir instead of training again")
    ap.add_argument("--producer", choices=("project", "plain", "load", "per-topic", "per-topic-plain"),
                    default="project",
                    help="project: the project's own producer, record timestamp = ts, in the order given; plain: "
                    "kafka-python's at its defaults, the record timestamp the time of sending; load: the events "
                    "written to a file and sent by `interest-stream load jsonl` (in ts order); per-topic: a "
                    "kafka-python producer per event type, the three at once, record timestamp = ts; "
                    "per-topic-plain: the same, the record timestamp the time of sending")
    ap.add_argument("--order", choices=("time", "user"), default="time",
                    help="time: every user's events interleaved in ts order; user: one user's history "
                    "after another's, each in ts order")
    args = ap.parse_args()
    if args.trials < 1:
        ap.error(f"--trials must be at least 1, got {args.trials}")
    out = {"benchmark": "live_eval", "machine": machine(), "commit": commit(), "datasets": []}
    for d in args.dataset.split(","):
        out["datasets"].append(run(d, Path(args.workdir), args.timeout, args.trials, args.reuse,
                                   args.producer, args.order))
    print(dumps(out))


if __name__ == "__main__":
    main()

"""The worker against the real broker: exact counts, dead letters, duplicates, SIGKILL."""
from __future__ import annotations

import base64
import json
import random
import sys
from collections import Counter

import orjson
import pytest

from conftest import ROOT, cli, metric_values, wait_for
from kafka_io import produce, read_all, set_max_message_bytes

pytestmark = pytest.mark.kafka

T0 = 978_307_200_000  # 2001-01-01: event time years away from the wall clock
HOUR = 3_600_000
HORIZON = 86_400_000


def event(i: int, user: str, type_: str, ts: int, cat: str = "sports") -> dict:
    e = {"event_id": f"{user}-{i}", "user_id": user, "type": type_, "ts": ts}
    if type_ == "search":
        e["query"] = f"query {i}"
    else:
        e.update(item_id=f"item{i}", category=cat)
        if type_ == "browse":
            e["dwell_ms"] = 1000 + i
    return e


def expected_user(events: list[dict]) -> dict:
    """Independent computation of GET /users/{id} from raw accepted events (no late ones)."""
    uniq = {e["event_id"]: e for e in events}.values()
    newest = max(e["ts"] for e in uniq)
    win = [e for e in uniq if e["ts"] > newest - HORIZON]
    counts = Counter(e["type"] for e in win)
    cats = Counter(e["category"] for e in win if e["type"] != "search")
    return {"events": len(win), "newest_ts": newest,
            "counts": {t: counts.get(t, 0) for t in ("click", "browse", "search")},
            "categories": dict(cats)}


def topics(env) -> dict:
    p = env["INTEREST_TOPIC_PREFIX"]
    return {t: f"{p}events.{t}" for t in ("click", "browse", "search")} | {"dlq": f"{p}events.dlq"}


def population(n_users: int, per_user: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    events = []
    for u in range(n_users):
        for i in range(per_user):
            ts = T0 + rng.randrange(0, 25 * HOUR)  # past the 24 h horizon, within its grace
            events.append(event(i, f"user{u}", rng.choice(["click", "browse", "search"]), ts,
                                rng.choice(["sports", "tech", "music"])))
    rng.shuffle(events)  # out of order
    return events


def assert_users(worker, events):
    by_user: dict[str, list] = {}
    for e in events:
        by_user.setdefault(e["user_id"], []).append(e)
    for user, evs in by_user.items():
        exp = expected_user(evs)
        status, body = worker.get(f"/users/{user}")
        assert status == 200, body
        got = {k: body[k] for k in exp}
        assert got == exp, user


def send(env, events):
    """``events`` to their input topics, keyed by user."""
    t = topics(env)
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t[e["type"]], e["user_id"].encode(), e) for e in events])


def wait_until_counted(worker, events):
    """Until every user's counts equal those computed from the raw events."""
    def done():
        try:
            assert_users(worker, events)
            return True
        except (AssertionError, OSError):
            return False

    wait_for(done, timeout=60, what="every user's exact counts")


def test_events_reach_state_and_malformed_ones_the_dlq(env, workers):
    t = topics(env)
    cli(env, "topics", "create")
    w = workers()
    good = population(12, 15, seed=1)
    # a bad message of every kind, between the good ones
    bad = [
        (t["click"], b"userX", b"\xff\xfe", "not_utf8"),
        (t["click"], b"userX", b"{nope", "not_json"),
        (t["click"], b"userX", b"[1]", "not_object"),
        (t["click"], b"userX", b"{" + b" " * 70_000 + b"}", "too_large"),
        (t["click"], None, json.dumps(event(1, "userX", "click", T0)).encode(), "missing_key"),
        (t["click"], b"other", json.dumps(event(2, "userX", "click", T0)).encode(), "key_mismatch"),
        (t["click"], b"userX",
         json.dumps({"event_id": "x", "user_id": "userX", "type": "click", "ts": T0, "item_id": "i"}).encode(),
         "missing_field"),
        (t["click"], b"userX", json.dumps(event(3, "userX", "click", T0) | {"ts": 1.5}).encode(), "bad_type"),
        (t["click"], b"userX", json.dumps(event(4, "userX", "click", T0) | {"item_id": "i" * 200}).encode(),
         "too_long"),
        (t["click"], b"userX", json.dumps(event(5, "userX", "click", T0) | {"type": "like"}).encode(), "unknown_type"),
        (t["click"], b"userX", json.dumps(event(6, "userX", "search", T0)).encode(), "topic_mismatch"),
        (t["click"], b"userX", json.dumps(event(7, "userX", "click", 4_000_000_000_000)).encode(), "future_ts"),
    ]
    late = [event(100, "user0", "click", T0 - 3 * HORIZON)]  # far older than user0's window
    records = [(t[e["type"]], e["user_id"].encode(), e, e["ts"] + 5 * HOUR) for e in good]
    mid = len(records) // 2
    records = records[:mid] + [b[:3] for b in bad] + records[mid:]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], records)
    wait_until_counted(w, good)
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t["click"], b"user0", late[0])])
    # duplicates of already counted events change nothing
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t[e["type"]], e["user_id"].encode(), e) for e in good[:40]])

    dlq = read_all(env["KAFKA_BOOTSTRAP_SERVERS"], t["dlq"], expect=len(bad) + 1)
    reasons = [orjson.loads(r.value)["reason"] for r in dlq]
    assert sorted(reasons) == sorted([b[3] for b in bad] + ["late"])
    letter = next(orjson.loads(r.value) for r in dlq if orjson.loads(r.value)["reason"] == "not_json")
    assert set(letter) == {"reason", "detail", "topic", "partition", "offset", "key_b64",
                           "payload_b64", "truncated", "at"}
    assert letter["topic"] == t["click"] and base64.b64decode(letter["payload_b64"]) == b"{nope"
    assert letter["truncated"] is False and base64.b64decode(letter["key_b64"]) == b"userX"
    big = next(orjson.loads(r.value) for r in dlq if orjson.loads(r.value)["reason"] == "too_large")
    assert big["truncated"] is True and len(base64.b64decode(big["payload_b64"])) == 4096

    def dup_count():
        _, m = w.get("/metrics")
        for line in m.splitlines():
            if line.startswith("interest_duplicates_total"):
                return float(line.split()[1]) >= 40
    wait_for(dup_count, what="40 duplicates counted")
    assert_users(w, good)
    status, _ = w.get("/users/nobody")
    assert status == 404


def test_state_survives_sigkill_with_exact_counts(env, workers):
    """Offsets are committed rarely here, so after SIGKILL most events arrive a second time:
    the restored state must recognise them."""
    cli(env, "topics", "create")
    w = workers(INTEREST_COMMIT_INTERVAL_S="600")
    events = population(20, 10, seed=2)
    first, second = events[:120], events[120:]
    send(env, first)
    wait_until_counted(w, first)
    assert_users(w, first)
    w.kill()
    w.start()
    send(env, first[:30] + second)  # events again (redelivered anyway, plus explicit duplicates) and the rest
    wait_until_counted(w, events)

    def counted():
        try:
            assert_users(w, events)
            return True
        except AssertionError:
            return False
    wait_for(counted, timeout=60, what="exact counts after the restart")


def test_a_worker_on_the_memory_store_counts_exactly_across_a_restart(env, workers):
    """INTEREST_STORE=memory:// (README "Configuration"): the table lives in memory and is restored
    from its changelog at each start, so events sent again after a restart are duplicates. Before,
    the start asked the memory store for RocksDB's partition paths and the worker stopped."""
    cli(env, "topics", "create")
    w = workers(INTEREST_STORE="memory://")
    events = population(10, 8, seed=3)
    send(env, events[:40])
    wait_until_counted(w, events[:40])
    assert w.stop() == 0
    w.start()
    send(env, events[:10] + events[40:])
    wait_until_counted(w, events)


def test_a_transactional_producers_markers_are_read_once_as_holes_and_commits_pass_them(env, workers):
    """Each transaction's commit marker takes an offset no consumer is given: to the worker's
    consumer a hole of one offset, as a record its fetcher skipped alone would be (faust-streaming
    issue 216). The first is held behind and read; it holds no record, so the partition carries
    markers and the next ones hold nothing back. One warning for the partition, not one per
    transaction, every event applied once, and the commit past the last marker's hole."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from stream_app.partitioning import partition_for

    t = topics(env)
    cli(env, "topics", "create")
    w = workers(INTEREST_FLUSH_S="0.3", INTEREST_COMMIT_INTERVAL_S="0.3", INTEREST_SCORE_INTERVAL_S="3600")
    clicks = [event(i, "u1", "click", T0 + i * 60_000) for i in range(12)]
    p = KafkaProducer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
                      transactional_id=f"{env['INTEREST_TOPIC_PREFIX']}upstream")
    try:
        p.init_transactions()
        for i in range(0, 12, 3):  # offsets 0..2, its marker at 3, 4..6, 7, 8..10, 11, 12..14, 15
            p.begin_transaction()
            for e in clicks[i:i + 3]:
                p.send(t["click"], key=b"u1", value=orjson.dumps(e), timestamp_ms=e["ts"])
            p.commit_transaction()
    finally:
        p.close()
    wait_until_counted(w, clicks)
    part = partition_for(b"u1", int(env["INTEREST_PARTITIONS"]))
    c = KafkaConsumer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
                      group_id=f"{env['INTEREST_TOPIC_PREFIX']}interest-stream", enable_auto_commit=False)
    try:
        wait_for(lambda: c.committed(TopicPartition(t["click"], part)) == 15, what="the last click committed")
    finally:
        c.close()
    skipped = [line for line in w.log(2000).splitlines() if "the fetcher skipped offsets" in line]
    assert len(skipped) == 1 and f"offsets 3..3 of {t['click']}[{part}]" in skipped[0], skipped


def test_records_the_fetcher_skipped_are_read_again_applied_once_and_committed(env, workers):
    """A new deployment reads a backlog of 4 users × 40 events; its fetcher skips offsets 2..9 of
    one click partition (tests/fetcher_skip_app.py, as faust-streaming's does around an
    assignment: its issue 216) and hands over 10 after the agent has applied 0 and 1 and the whole
    fetcher has waited 3 s. The worker holds 10 and what follows back, reads the hole again from 2
    and then the rest: every event applied once, none `late`, one warning, and the commit reaches
    the partition's end. The other topics' events wait for the skipped clicks: the aligner gives
    up on a topic after 2 s only once a fetch begun since has completed; on wall time alone they
    went ahead during the fetcher's 3 s, and 5 of the clicks were `late`."""
    from kafka import KafkaConsumer, TopicPartition

    from stream_app.partitioning import partition_for

    t = topics(env)
    cli(env, "topics", "create")
    parts = int(env["INTEREST_PARTITIONS"])
    events = [event(i, f"b{u}", ["click", "browse", "search"][i % 3], T0 + i * 3 * HOUR + u) for u in range(4)
              for i in range(40)]
    part = partition_for(b"b0", parts)
    clicks = [e for e in events if e["type"] == "click" and partition_for(e["user_id"].encode(), parts) == part]
    send(env, events)
    w = workers(argv=[sys.executable, "-m", "faust", "-A", "fetcher_skip_app", "worker", "-l", "info"],
                PYTHONPATH=str(ROOT / "tests"), SKIP_FETCH=f"{t['click']}:{part}:2:10", SKIP_FETCH_PAUSE_S="3",
                INTEREST_FLUSH_S="0.3", INTEREST_COMMIT_INTERVAL_S="0.3", INTEREST_SCORE_INTERVAL_S="3600")
    wait_until_counted(w, events)
    c = KafkaConsumer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
                      group_id=f"{env['INTEREST_TOPIC_PREFIX']}interest-stream", enable_auto_commit=False)
    try:
        wait_for(lambda: c.committed(TopicPartition(t["click"], part)) == len(clicks), what="the last click committed")
    finally:
        c.close()
    assert sum(metric_values(w, 'interest_events_total{outcome="accepted"}')) == 160
    assert sum(metric_values(w, 'interest_events_total{outcome="dead_letter"}')) == 0
    skipped = [line for line in w.log(2000).splitlines() if "the fetcher skipped offsets" in line]
    assert len(skipped) == 1 and f"offsets 2..9 of {t['click']}[{part}]" in skipped[0], skipped


def test_worker_refuses_mismatched_partitions(env, tmp_path, tiny_model_dir):
    from kafka.admin import KafkaAdminClient, NewTopic

    from stream_app.kafka_local import free_port

    p = env["INTEREST_TOPIC_PREFIX"]
    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    admin.create_topics([NewTopic(f"{p}events.click", 4, 1), NewTopic(f"{p}events.browse", 2, 1),
                         NewTopic(f"{p}events.search", 4, 1)])
    admin.close()
    # a model, a state directory and a port of its own: the worker checks those before the topics
    proc = cli(dict(env, INTEREST_MODEL_DIR=str(tiny_model_dir), INTEREST_DATA_DIR=str(tmp_path / "data"),
                    INTEREST_WEB_PORT=str(free_port())), "worker", check=False, timeout=60)
    assert proc.returncode != 0
    assert "input topics must have the same number of partitions" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_worker_refuses_a_missing_dead_letter_topic(env, workers):
    """Without it, dead letters waited in Faust's producer buffer while the offsets of their
    messages were committed (lost at the next crash)."""
    from kafka.admin import KafkaAdminClient

    cli(env, "topics", "create")
    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    admin.delete_topics([topics(env)["dlq"]])
    admin.close()
    w = workers(start=False)
    w.start(wait=False)
    assert w.proc.wait(60) != 0
    assert f"dead-letter topic {topics(env)['dlq']} is missing; run `interest-stream topics create`" in w.log(200)


def test_a_worker_warns_of_a_limit_below_its_records_and_a_changelog_faust_makes_gets_it(env, workers):
    """A DLQ made before `topics create` raised its max.message.bytes: the worker (started with
    `faust -A`, which runs no topics create) says so. A changelog that Faust creates itself gets
    the limit topics create gives it (before, the broker's 1 MB)."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    t = topics(env)
    changelog = f"{env['INTEREST_TOPIC_PREFIX']}interest-stream-users-changelog"
    cli(env, "topics", "create")
    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        admin.delete_topics([changelog])
        wait_for(lambda: changelog not in admin.list_topics(), what="the changelog deleted")
        set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], t["dlq"], 2000)
        w = workers()
        assert (f"[WARNING] topic {t['dlq']} has max.message.bytes=2000, below the 4194304 this worker's records "
                "may need; run `interest-stream topics create` to raise it") in w.log(300)
        res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, changelog)], config_filter="all")
        assert res["topic"][changelog]["max.message.bytes"]["value"] == "16777216"
    finally:
        admin.close()


def test_a_dead_letter_of_the_largest_key_the_broker_takes_is_delivered(env, workers):
    """A dead letter holds its source key twice (Kafka key and key_b64): a 1 MB key makes a
    2.3 MB dead letter. It once crashed the worker's producer (over Faust's 1,000,000-byte
    requests), and the worker stopped again at every restart on the same message."""
    t = topics(env)
    cli(env, "topics", "create")
    w = workers()
    key = b"k" * 1_000_000  # with its small value, just under the broker's default 1 MiB limit
    after = event(2, "userK", "click", T0 + 1)
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t["click"], key, event(1, "userK", "click", T0))])
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t["click"], b"userK", after)])
    dlq = read_all(env["KAFKA_BOOTSTRAP_SERVERS"], t["dlq"], expect=1)
    assert [(r.key, orjson.loads(r.value)["reason"]) for r in dlq] == [(key, "key_mismatch")]
    assert base64.b64decode(orjson.loads(dlq[0].value)["key_b64"]) == key
    wait_until_counted(w, [after])
    assert w.proc.poll() is None

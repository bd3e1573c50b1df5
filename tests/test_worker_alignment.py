"""A backlog read at full speed: a partition's click, browse and search topics applied in
record-timestamp order, so no event is lost as late (stream_app.alignment)."""
from __future__ import annotations

import time

import orjson
import pytest

from conftest import cli, metric_values, wait_for
from kafka_io import produce, read_all
from test_worker_ingest import HOUR, T0, assert_users, event, topics, wait_until_counted

pytestmark = pytest.mark.kafka

DAY = 24 * HOUR


def metric(worker, name: str) -> float:
    values = metric_values(worker, name + " ")
    if not values:
        raise AssertionError(f"{name} not in /metrics")
    return values[0]


def test_a_preloaded_backlog_over_three_topics_loses_nothing_as_late(env, workers):
    """30 days of one user: a click every 15 minutes and a browse and a search once a day, all in
    the topics before the worker starts. Faust's fetcher hands the three topics over side by side,
    so without alignment the daily browses run weeks ahead of the clicks in event time and most
    clicks arrive older than the window plus its grace."""
    t = topics(env)
    cli(env, "topics", "create")
    events = [event(i, "u1", "click", T0 + i * 15 * 60_000) for i in range(30 * 96)]
    events += [event(10_000 + d, "u1", "browse", T0 + d * DAY + 7 * 60_000) for d in range(30)]
    events += [event(20_000 + d, "u1", "search", T0 + d * DAY + 11 * 60_000) for d in range(30)]
    # each topic in ts order, as producers write them; the record timestamp is the event's ts
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t[e["type"]], b"u1", e) for e in sorted(events, key=lambda e: e["ts"])])
    w = workers(INTEREST_SCORE_INTERVAL_S="3600")
    wait_for(lambda: metric(w, 'interest_events_total{outcome="accepted"}') + metric(
        w, 'interest_events_total{outcome="dead_letter"}') == len(events), timeout=90, what="every event handled")
    assert metric(w, 'interest_dead_letters_total{reason="late"}') == 0
    assert metric(w, 'interest_events_total{outcome="accepted"}') == len(events)
    wait_for(lambda: metric(w, "interest_align_waiting") == 0, what="nothing left waiting")
    assert_users(w, events)


def test_after_a_restart_a_quiet_topic_does_not_hold_the_others_back(env, workers):
    """The browse and search partitions have nothing new since the worker's last commit, and
    after a restart only clicks arrive. A partition the agent has received nothing from since the
    assignment is caught up when its committed offset is its end. Before, it counted as behind
    until it delivered a message, so every click waited the aligner's 2 s (max.task.idle.ms's
    role) and was applied as forced."""
    t = topics(env)
    cli(env, "topics", "create")
    first = [event(i, "u1", ["click", "browse", "search"][i % 3], T0 + i * 60_000) for i in range(6)]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t[e["type"]], b"u1", e) for e in first])
    w = workers(INTEREST_SCORE_INTERVAL_S="3600", INTEREST_FLUSH_S="0.3", INTEREST_COMMIT_INTERVAL_S="0.3")
    wait_until_counted(w, first)
    assert w.stop() == 0
    w.start()
    clicks = [event(100 + i, "u1", "click", T0 + (10 + i) * 60_000) for i in range(20)]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t["click"], b"u1", e) for e in clicks])
    wait_until_counted(w, first + clicks)
    assert metric(w, "interest_align_forced_total") == 0


def test_a_topic_last_written_in_a_transaction_does_not_hold_the_others_back(env, workers):
    """A transaction's commit marker takes the partition's last offset, and no consumer is given
    it: the agent's last offset received stays one below the end, so by the offset rule the browse
    and search partitions never caught up, and every later click waited the aligner's 2 s and was
    applied as forced. The worker now reads where that partition's last record is."""
    from kafka import KafkaProducer

    t = topics(env)
    cli(env, "topics", "create")
    w = workers(INTEREST_SCORE_INTERVAL_S="3600", INTEREST_FLUSH_S="0.3", INTEREST_COMMIT_INTERVAL_S="0.3")
    first = [event(i, "u1", kind, T0 + i * 60_000) for i, kind in enumerate(("browse", "search"))]
    p = KafkaProducer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
                      transactional_id=f"{env['INTEREST_TOPIC_PREFIX']}upstream")
    try:
        p.init_transactions()
        p.begin_transaction()
        for e in first:
            p.send(t[e["type"]], key=b"u1", value=orjson.dumps(e), timestamp_ms=e["ts"])
        p.commit_transaction()
    finally:
        p.close()
    wait_until_counted(w, first)
    clicks = [event(100 + i, "u1", "click", T0 + (10 + i) * 60_000) for i in range(20)]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t["click"], b"u1", e) for e in clicks])
    wait_until_counted(w, first + clicks)
    assert metric(w, "interest_align_forced_total") == 0
    # the browse and the search partition's tails, read once per end offset, not at every release
    # (a read while the transaction's records were on their way adds one)
    assert 2 <= metric(w, "interest_align_tail_reads_total") <= 4


def test_a_topic_emptied_by_retention_does_not_hold_the_others_back_nor_a_forget(env, workers):
    """A new deployment (a new consumer group) on input whose browse and search records retention
    has deleted: those partitions' first offset is their end, above 0, and nothing is ever
    received from them. Before, by the offset rule they never caught up (every click waited the
    2 s, forced), and `forget` asked the worker to apply them up to that end, which it never
    reached: the command waited for its whole timeout."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    t = topics(env)
    cli(env, "topics", "create")
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    old = [event(i, "u1", kind, T0 + i * 60_000) for i, kind in enumerate(("browse", "search") * 3)]
    produce(bootstrap, [(t[e["type"]], b"u1", e) for e in old])
    reader = KafkaConsumer(bootstrap_servers=bootstrap)
    tps = [TopicPartition(t[kind], p) for kind in ("browse", "search") for p in range(4)]
    ends = {tp: end for tp, end in reader.end_offsets(tps).items() if end}
    reader.close()
    assert sorted(ends.values()) == [3, 3]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_records(ends)
    finally:
        admin.close()
    w = workers(INTEREST_SCORE_INTERVAL_S="3600", INTEREST_FLUSH_S="0.3", INTEREST_COMMIT_INTERVAL_S="0.3")
    clicks = [event(100 + i, "u1", "click", T0 + (10 + i) * 60_000) for i in range(20)]
    produce(bootstrap, [(t["click"], b"u1", e) for e in clicks])
    wait_until_counted(w, clicks)
    assert metric(w, "interest_align_forced_total") == 0
    assert 2 <= metric(w, "interest_align_tail_reads_total") <= 4
    started = time.monotonic()
    out = cli(env, "forget", "u1", "--timeout", "30").stdout
    assert out.startswith("forgotten: u1 (tombstone at "), out
    assert time.monotonic() - started < 20


def test_records_a_producer_stamped_in_one_millisecond_are_applied_by_their_events_ts(env, workers):
    """A producer that does not set the record timestamp stamps the time it sends, and a log
    streamed at full speed sends a dozen events in a millisecond. Among those, the worker applied
    the topics in the order they arrived: a user's browse and search days ahead went first, and
    the user's clicks were `late` (MovieLens through `bench/live_eval.py` with kafka-python's
    producer at its defaults: 117 to 164 of 11,639 events in four runs). Here every record has the
    same record timestamp, and the event's ts orders them."""
    t = topics(env)
    cli(env, "topics", "create")
    stamp = int(time.time() * 1000)
    events = []
    for u in range(8):
        user = f"u{u}"
        events += [event(10 * u + i, user, "click", T0 + i * 60_000) for i in range(3)]
        events += [event(10 * u + 3, user, "browse", T0 + 7 * DAY), event(10 * u + 4, user, "search", T0 + 14 * DAY)]
    # newest first: the order they arrive in is the reverse of event time
    order = sorted(events, key=lambda e: -e["ts"])
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t[e["type"]], e["user_id"].encode(), e, stamp) for e in order])
    w = workers(INTEREST_SCORE_INTERVAL_S="3600")
    wait_for(lambda: metric(w, 'interest_events_total{outcome="accepted"}') + metric(
        w, 'interest_events_total{outcome="dead_letter"}') == len(events), timeout=90, what="every event handled")
    assert metric(w, 'interest_dead_letters_total{reason="late"}') == 0
    assert metric(w, 'interest_events_total{outcome="accepted"}') == len(events)


def test_records_stamped_when_sent_long_after_their_events_are_applied_by_their_ts(env, workers):
    """Two producers streaming a historical log at once, one per event type, each leaving the record
    timestamp the time of sending: the user's search of day 10, sent first, was applied before the
    same user's clicks of days 0 to 9, sent a second later, and the clicks of days 0 to 8 were
    `late` (MovieLens' test users so: 2,507 of 11,639, `bench/live_eval.py --producer
    per-topic-plain`). A record timestamp more than the window and its grace after the event's ts
    is the time it was sent, and such records are ordered by their ts."""
    t = topics(env)
    cli(env, "topics", "create")
    sent = int(time.time() * 1000)
    search = event(99, "u1", "search", T0 + 10 * DAY)
    clicks = [event(d, "u1", "click", T0 + d * DAY) for d in range(10)]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t["search"], b"u1", search, sent)]
            + [(t["click"], b"u1", e, sent + 1000 + d) for d, e in enumerate(clicks)])
    w = workers(INTEREST_SCORE_INTERVAL_S="3600")
    wait_for(lambda: metric(w, 'interest_events_total{outcome="accepted"}') + metric(
        w, 'interest_events_total{outcome="dead_letter"}') == 11, timeout=90, what="every event handled")
    assert metric(w, 'interest_dead_letters_total{reason="late"}') == 0
    assert metric(w, 'interest_events_total{outcome="accepted"}') == 11
    assert [metric(w, f'interest_input_running_back_total{{topic="{t[k]}"}}') for k in ("click", "search")] == [0, 0]
    assert_users(w, clicks + [search])


def test_a_topic_caught_up_is_waited_for_a_record_that_comes_a_moment_later(env, workers):
    """A log produced at full speed while the worker reads it: the browse partition has caught up,
    but a browse older in event time than a click reaches the worker after it (a producer sends a
    busy partition's batches one per request, and a quiet partition's batch overtakes them). Applied
    at once, the click moved the user's event time on and the browse was `late`. With
    INTEREST_ALIGN_IDLE_MS the click waits for the browse topic, as Kafka Streams'
    max.task.idle.ms does, and both are applied in order. The 0.5 s between the two is many
    fetches of the worker's (100 ms)."""
    t = topics(env)
    cli(env, "topics", "create")
    w = workers(INTEREST_SCORE_INTERVAL_S="3600", INTEREST_ALIGN_IDLE_MS="2000")
    first = [event(i, "u1", kind, T0 + i * 1000) for i, kind in enumerate(("click", "browse", "search"))]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t[e["type"]], b"u1", e) for e in first])
    wait_until_counted(w, first)  # each of the user's three partitions has delivered and caught up
    click, browse = event(3, "u1", "click", T0 + 2 * DAY), event(4, "u1", "browse", T0 + 60_000)
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t["click"], b"u1", click)])
    time.sleep(0.5)
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t["browse"], b"u1", browse)])
    wait_for(lambda: metric(w, 'interest_events_total{outcome="accepted"}') + metric(
        w, 'interest_events_total{outcome="dead_letter"}') == 5, what="every event handled")
    assert metric(w, 'interest_dead_letters_total{reason="late"}') == 0
    assert metric(w, 'interest_events_total{outcome="accepted"}') == 5
    assert metric(w, "interest_align_forced_total") == 0
    assert metric(w, "interest_align_idle_total") >= 2  # the click and the browse, each for a topic caught up


def test_a_log_written_user_by_user_loses_nothing_as_late_sent_as_written_or_in_ts_order(env, workers, tmp_path):
    """A log written user by user, each user's events in ts order (a harness that collects each
    user's history in turn), its records stamped with their ts. The worker applies a partition's
    three topics by record timestamp: by that alone, user b's search (day 5) went with user a's
    clicks of day 5, before b's own clicks of days 0 to 4, which came later in the click topic and
    were `late` (MovieLens through `bench/live_eval.py --order user`: 1,738 of 11,639). The
    search now waits for b's older clicks (stream_app.alignment.UsersWaiting), sent as written
    (`--in-file-order`) as in ts order (`load jsonl`'s default, which says the file was not). Both
    logs go in before the worker starts; the second's users live 20 days later, so the first's
    cannot reach them. The worker counts the records that run back and says so once a partition
    (stream_app.input_order)."""
    from stream_app.partitioning import partition_for

    cli(env, "topics", "create")
    n = int(env["INTEREST_PARTITIONS"])
    names = [f"user{i}" for i in range(200)]
    same = [u for u in names if partition_for(u.encode(), n) == partition_for(names[0].encode(), n)][:4]
    logs = []
    for k, (a, b) in enumerate([same[:2], same[2:]]):
        t0 = T0 + 20 * k * DAY
        user_by_user = [event(d, a, "click", t0 + d * DAY) for d in range(11)]
        user_by_user += [event(d, b, "click", t0 + d * DAY) for d in range(6)]
        user_by_user += [event(99, b, "search", t0 + 5 * DAY + HOUR)]
        user_by_user += [event(d, b, "click", t0 + d * DAY) for d in range(6, 11)]
        logs.append(tmp_path / f"log{k}.jsonl")
        logs[-1].write_text("".join(orjson.dumps(e).decode() + "\n" for e in user_by_user))
    as_written = cli(env, "load", "jsonl", str(logs[0]), "--in-file-order")
    assert "come after a newer one" not in as_written.stderr
    by_ts = cli(env, "load", "jsonl", str(logs[1]))
    assert (f"11 of the 23 events of {logs[1]} come after a newer one: sent in ts order (ties in the file's "
            "order), as the worker reads them; --in-file-order sends them as they are\n") in by_ts.stderr
    w = workers(INTEREST_SCORE_INTERVAL_S="3600")
    wait_for(lambda: metric(w, 'interest_events_total{outcome="accepted"}') + metric(
        w, 'interest_events_total{outcome="dead_letter"}') == 46, timeout=90, what="every event handled")
    assert metric(w, 'interest_events_total{outcome="accepted"}') == 46
    assert metric(w, 'interest_dead_letters_total{reason="late"}') == 0
    assert read_all(env["KAFKA_BOOTSTRAP_SERVERS"], topics(env)["dlq"]) == []
    # the worker says why: b's clicks of days 0 to 8 are older than a's of day 10 by more than 25 h
    t, p = topics(env), partition_for(same[0].encode(), n)
    assert [metric(w, f'interest_input_running_back_total{{topic="{t[k]}"}}') for k in ("click", "browse", "search")] \
        == [9, 0, 0]
    said = [line.rstrip() for line in w.log_path.read_text().splitlines() if "older than a record before it" in line]
    assert len(said) == 1 and said[0].endswith(
        f"offset 11 of {t['click']}[{p}] is 10.0 days older than a record before it (record timestamps, or ts for "
        "records sent long after their event), more than "
        "the window and its grace (1.0 days): its producer sends out of ts order, and a user's older events may be "
        "applied after newer ones of other topics and be late; send in ts order (`load jsonl` does). Counted in "
        "interest_input_running_back_total; said once a partition"), said
    _, overview = w.get("/")  # the overview lists the count as needing attention
    assert '<li><b>9</b> input records stamped older than one before them' in overview
    for user, last in zip(same, [T0 + 10 * DAY] * 2 + [T0 + 30 * DAY] * 2):
        status, body = w.get(f"/users/{user}")
        assert status == 200 and body["newest_ts"] == last, body


def test_into_a_running_worker_a_users_search_waits_for_its_clicks_once_the_click_topic_ran_back(env, workers):
    """Sent into a running worker user by user, user b's search (day 5.5) arrived while the click
    topic held user a's clicks of days 6 to 10 and b's own had not come yet: by the heads alone it
    went at once, and b's clicks of days 0 to 4 came after it, `late` (MovieLens' users so through
    `bench/live_eval.py --order user`: 404 of 11,639). The click topic ran back (a's day 0 after
    z's day 30), so for 10 s its head promises nothing: the search waits for it as for a topic
    with nothing waiting (INTEREST_ALIGN_IDLE_MS, 2 s here), b's clicks sent 0.2 s later arrive
    and hold it back. A browse of day 40 keeps the browse topic from being waited for anyway."""
    from stream_app.partitioning import partition_for

    t = topics(env)
    cli(env, "topics", "create")
    n = int(env["INTEREST_PARTITIONS"])
    names = [f"user{i}" for i in range(200)]
    z, x, a, b = [u for u in names if partition_for(u.encode(), n) == partition_for(names[0].encode(), n)][:4]
    w = workers(INTEREST_SCORE_INTERVAL_S="3600", INTEREST_ALIGN_IDLE_MS="2000")
    first = [event(0, z, "click", T0 + 30 * DAY)]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t["click"], z.encode(), e) for e in first])
    wait_until_counted(w, first)
    sent = [event(d, a, "click", T0 + d * DAY) for d in range(11)]
    sent += [event(0, x, "browse", T0 + 40 * DAY), event(99, b, "search", T0 + 5 * DAY + 12 * HOUR)]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t[e["type"]], e["user_id"].encode(), e) for e in sent])
    time.sleep(0.2)
    later = [event(d, b, "click", T0 + d * DAY) for d in range(11)]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t["click"], b.encode(), e) for e in later])
    everything = first + sent + later
    wait_for(lambda: metric(w, 'interest_events_total{outcome="accepted"}') + metric(
        w, 'interest_events_total{outcome="dead_letter"}') == len(everything), timeout=60, what="every event handled")
    assert metric(w, 'interest_dead_letters_total{reason="late"}') == 0
    assert metric(w, 'interest_events_total{outcome="accepted"}') == len(everything)
    assert metric(w, f'interest_input_running_back_total{{topic="{t["click"]}"}}') == 22  # a's and b's clicks
    wait_until_counted(w, everything)

"""Two workers in one group: queries routed to the owner, failover with state, lag metric."""
from __future__ import annotations

import time

import pytest

from conftest import cli, wait_for
from stream_app.partitioning import partition_for
from test_worker_ingest import assert_users, population, topics, wait_until_counted
from kafka_io import produce

pytestmark = pytest.mark.kafka


def owned(w) -> set[int]:
    status, body = w.get("/health")
    return set(body["partitions"]) if status == 200 else set()


def test_two_workers_route_queries_and_fail_over(env, workers):
    cli(env, "topics", "create")
    t = topics(env)
    w1 = workers("w1")
    w2 = workers("w2")
    wait_for(lambda: owned(w1) and owned(w2) and owned(w1) | owned(w2) == {0, 1, 2, 3}
             and not owned(w1) & owned(w2), what="partitions split between the workers")
    events = population(24, 8, seed=3)
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t[e["type"]], e["user_id"].encode(), e) for e in events])
    wait_until_counted(w1, events)
    parts1 = owned(w1)
    by_owner = {"w1": 0, "w2": 0}
    for user in {e["user_id"] for e in events}:
        mine = partition_for(user.encode(), 4) in parts1
        by_owner["w1" if mine else "w2"] += 1
        other = w2 if mine else w1  # ask the worker that does NOT own the user
        evs = [e for e in events if e["user_id"] == user]
        assert_users(other, evs)
    assert by_owner["w1"] and by_owner["w2"]

    # w2 stops; w1 takes over its partitions with their state; redelivered duplicates don't count
    assert w2.stop() == 0
    wait_for(lambda: owned(w1) == {0, 1, 2, 3}, what="w1 owning every partition")
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t[e["type"]], e["user_id"].encode(), e) for e in events[:60]])

    def counted():
        try:
            assert_users(w1, events)
            _, m = w1.get("/metrics")
            return any(l.startswith("interest_duplicates_total") and float(l.split()[1]) >= 60
                       for l in m.splitlines())
        except AssertionError:
            return False
    wait_for(counted, what="exact counts on the surviving worker")


def test_consumer_lag_metric_sees_a_backlog(env, workers):
    cli(env, "topics", "create")
    t = topics(env)
    events = population(200, 100, seed=4)  # 20,000 events waiting before the worker starts
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t[e["type"]], e["user_id"].encode(), e) for e in events])
    w = workers()

    def lag_total():
        _, m = w.get("/metrics")
        rows = [l for l in m.splitlines() if l.startswith("interest_consumer_lag{")]
        return rows, sum(float(l.split()[-1]) for l in rows)

    wait_for(lambda: lag_total()[1] > 0, timeout=30, interval=0.1, what="a positive lag")
    rows, lag = lag_total()
    assert 0 < lag <= len(events)  # at most what was waiting
    assert {l.split('topic="')[1].split('"')[0] for l in rows} <= set(t.values())
    wait_for(lambda: len(lag_total()[0]) == 12 and lag_total()[1] == 0, timeout=120,
             what="lag back to 0 on all 12 input partitions")


def test_consumer_lag_is_zero_when_retention_deleted_everything(env, workers):
    """A new group on input whose records were all deleted (first offset = end offset > 0) showed a
    lag of every deleted record per partition, until new events came: it counted from offset 0."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    cli(env, "topics", "create")
    t = topics(env)
    events = population(40, 10, seed=6)
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    produce(bootstrap, [(t[e["type"]], e["user_id"].encode(), e) for e in events])
    tps = [TopicPartition(t[kind], p) for kind in ("click", "browse", "search") for p in range(4)]
    reader = KafkaConsumer(bootstrap_servers=bootstrap)
    ends = reader.end_offsets(tps)
    reader.close()
    assert sum(ends.values()) == len(events)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_records({tp: end for tp, end in ends.items() if end})
    finally:
        admin.close()
    w = workers()

    def lags():
        _, m = w.get("/metrics")
        return {tuple(l.split('"')[1:4:2]): float(l.split()[-1]) for l in m.splitlines()
                if l.startswith("interest_consumer_lag{")}

    wait_for(lambda: len(lags()) == 12, timeout=30, interval=0.2, what="a lag for all 12 input partitions")
    for _ in range(10):  # and it stays there
        assert set(lags().values()) == {0.0}, lags()
        time.sleep(0.5)


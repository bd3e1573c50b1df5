"""A backlog read at full speed: a partition's click, browse and search topics applied in
record-timestamp order, so no event is lost as late (stream_app.alignment)."""
from __future__ import annotations

import pytest

from conftest import cli, metric_values, wait_for
from kafka_io import produce
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

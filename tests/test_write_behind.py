"""The write-behind state against the real broker: one changelog record per changed user and
flush, nothing lost or counted twice when the worker dies after a flush or in the middle of one,
and a rebalance that flushes what the cache holds before handing partitions over."""
from __future__ import annotations

import subprocess
import sys
import time

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from conftest import ROOT, cli, metric_values, wait_for
from kafka_io import produce, read_all, set_max_message_bytes
from stream_app import state
from stream_app.input_ends import END_REFRESH_S
from stream_app.partitioning import partition_for
from test_worker_ingest import HOUR, T0, assert_users, event, topics

pytestmark = pytest.mark.kafka
PARTS = 4
# a flush and a commit every 0.3 s, scoring off
FAST = dict(INTEREST_FLUSH_S="0.3", INTEREST_COMMIT_INTERVAL_S="0.3", INTEREST_SCORE_INTERVAL_S="3600")


def changelog(env) -> str:
    return f"{env['INTEREST_TOPIC_PREFIX']}interest-stream-users-changelog"


def end_offsets(env, topic: str) -> dict[int, int]:
    c = KafkaConsumer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        parts = c.partitions_for_topic(topic) or set()
        return {tp.partition: n for tp, n in c.end_offsets([TopicPartition(topic, p) for p in parts]).items()}
    finally:
        c.close()


def records(env, topic: str) -> int:
    return sum(end_offsets(env, topic).values())


def flushed_events(env) -> dict[str, int]:
    """Each user's event count in its newest changelog record (what a restart restores)."""
    latest = {m.key.decode(): m.value for m in read_all(env["KAFKA_BOOTSTRAP_SERVERS"], changelog(env))}
    return {k: len(st["ev"]) + len(st["old"]) for k, st in ((k, state.load(v)) for k, v in latest.items()) if st}


def metric(w, name: str) -> float:
    return sum(metric_values(w, name))


def send(env, events):
    t = topics(env)
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t[e["type"]], e["user_id"].encode(), e) for e in events])


def users_events(n_users: int, per_user: int, start: int = 0, name: str = "w") -> list[dict]:
    return [event(start + i, f"{name}{u}", ["click", "browse", "search"][i % 3], T0 + (start + i) * 60_000 + u,
                  ["sports", "tech"][u % 2]) for u in range(n_users) for i in range(per_user)]


def counted(w, events) -> bool:
    try:
        assert_users(w, events)
        return True
    except AssertionError:
        return False


def committed(env) -> int:
    c = KafkaConsumer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
                      group_id=f"{env['INTEREST_TOPIC_PREFIX']}interest-stream", enable_auto_commit=False)
    try:
        return sum(c.committed(TopicPartition(t, p)) or 0
                   for t in topics(env).values() if t.endswith(("click", "browse", "search"))
                   for p in range(PARTS))
    finally:
        c.close()


def test_each_changed_user_is_one_changelog_record_per_flush_and_scoring_adds_at_most_one(env, workers):
    """Flushes here happen only at shutdown (SIGTERM), so each run of the worker is one flush."""
    cli(env, "topics", "create")
    w = workers(INTEREST_FLUSH_S="3600", INTEREST_SCORE_INTERVAL_S="3600")  # scoring off
    events = users_events(5, 8)
    send(env, events)
    wait_for(lambda: counted(w, events), what="40 events counted")
    assert records(env, changelog(env)) == 0
    assert w.stop() == 0
    assert records(env, changelog(env)) == 5  # 40 events, 5 users: one record each

    # scoring: each user's vector rides in its state, so a scored user is one record more at most,
    # and nothing else is written: no control round trip, no pending or vectors tables
    w2 = workers("scoring", INTEREST_FLUSH_S="3600", INTEREST_SCORE_INTERVAL_S="1")
    wait_for(lambda: metric(w2, "interest_scored_users_total") >= 5, what="5 users scored")
    assert w2.stop() == 0
    assert records(env, changelog(env)) == 5 + 5
    w3 = workers("both", INTEREST_FLUSH_S="3600", INTEREST_SCORE_INTERVAL_S="1")
    more = users_events(5, 2, start=100)
    send(env, more)
    wait_for(lambda: all((w3.get(f"/users/w{u}")[1].get("interests") or {}).get("events") == 10 for u in range(5)),
             what="5 users scored with their new events")
    assert w3.stop() == 0
    assert records(env, changelog(env)) == 10 + 5  # new events and new vector: one record per user
    assert records(env, f"{env['INTEREST_TOPIC_PREFIX']}interest-control") == 0
    existing = KafkaConsumer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"]).topics()
    assert not {t for t in existing if t.startswith(env["INTEREST_TOPIC_PREFIX"])
                and t.endswith(("pending-changelog", "vectors-changelog"))}


def test_sigkill_after_a_flush_before_the_commit_counts_nothing_twice(env, workers):
    """The changelog holds every state, the offsets are not committed: after the restart every
    event comes again and every one is recognised as a duplicate."""
    cli(env, "topics", "create")
    w = workers(INTEREST_FLUSH_S="0.5", INTEREST_COMMIT_INTERVAL_S="600", INTEREST_SCORE_INTERVAL_S="3600")
    events = users_events(6, 10)
    send(env, events)
    wait_for(lambda: counted(w, events), what="60 events counted")
    # the flushes (every 0.5 s, so the events may span several) have written every user's 10 events
    wait_for(lambda: flushed_events(env) == {f"w{u}": 10 for u in range(6)}, what="the flush of 6 users")
    w.kill()
    assert committed(env) == 0  # the crash came between the flush and any commit
    w.start()
    wait_for(lambda: counted(w, events), what="exact counts after the restart")
    wait_for(lambda: metric(w, "interest_duplicates_total") >= 60, what="the redelivered events")
    time.sleep(1.5)
    assert metric(w, "interest_duplicates_total") == 60
    assert metric(w, 'interest_events_total{outcome="accepted"}') == 0  # restored, not re-applied
    assert_users(w, events)


@pytest.mark.parametrize("hole", [False, True], ids=["", "a_hole_the_fetcher_skipped"])
def test_sigkill_in_a_backlog_after_a_flush_takes_the_events_read_again_for_duplicates_not_late(env, workers, hole):
    """Reading a backlog, event time runs days ahead in a second: by the flush, a user's oldest
    events have left the state (past the window and the grace), ids and all. Killed before any
    commit, the restarted worker reads them again; the state's input offsets tell that they were
    applied, where the ids cannot: duplicates, not dead letters (they were `late` before).

    ``hole``: the restarted worker's fetcher skips 8 of user b0's clicks (offsets 2..9 of its
    partition, as faust-streaming's does around an assignment) and hands over the next after the
    agent has applied b0's first records. Finding the hole capped the offsets of b0's restored
    state to 1, below the 13 it had read, and the 9 clicks read again past its window (offsets
    2..10) were `late` dead letters; the offsets a state was restored with now stay known."""
    cli(env, "topics", "create")
    w = workers(INTEREST_FLUSH_S="0.5", INTEREST_COMMIT_INTERVAL_S="600", INTEREST_SCORE_INTERVAL_S="3600",
                start=False)
    # 4 users, 40 events each, 3 h apart: 5 days, past the 1-day window and the 1-hour grace
    events = [event(i, f"b{u}", ["click", "browse", "search"][i % 3], T0 + i * 3 * HOUR + u, ["sports", "tech"][u % 2])
              for u in range(4) for i in range(40)]
    # a backlog: written before the worker starts, so the aligner merges the three topics in event
    # time (sent to a running worker, a topic whose records had not arrived yet counted as caught
    # up, and a user's events that came after clicks days newer were `late`: 9 of 160 in one run)
    send(env, events)
    w.start()
    wait_for(lambda: metric(w, "interest_events_total{") >= 160, what="160 events read")
    assert metric(w, 'interest_events_total{outcome="dead_letter"}') == 0
    assert metric(w, 'interest_events_total{outcome="accepted"}') == 160
    assert counted(w, events)
    wait_for(lambda: flushed_seq(env) == {f"b{u}": 40 for u in range(4)}, what="the flush of 4 users' 40 events")
    w.kill()
    assert committed(env) == 0
    click, p = topics(env)["click"], partition_for(b"b0", PARTS)
    if hole:  # b0's clicks come first in its partition: offsets 0..13, events 0, 3, ..., 39
        assert [e["user_id"] for e in events if e["type"] == "click"
                and partition_for(e["user_id"].encode(), PARTS) == p][:14] == ["b0"] * 14
        w.argv = [sys.executable, "-m", "faust", "-A", "fetcher_skip_app", "worker", "-l", "info"]
        w.env.update(PYTHONPATH=str(ROOT / "tests"), SKIP_FETCH=f"{click}:{p}:2:10", SKIP_FETCH_PAUSE_S="1")
    w.start()
    wait_for(lambda: metric(w, "interest_duplicates_total") + metric(w, 'interest_events_total{outcome="dead_letter"}')
             >= 160, what="the redelivered events")
    time.sleep(1.5)
    assert metric(w, 'interest_events_total{outcome="dead_letter"}') == 0
    assert metric(w, "interest_duplicates_total") == 160
    # the ids the states keep (within 25 h of each user's newest event, 9 of 40) found 36; offsets the rest
    assert metric(w, "interest_duplicates_by_offset_total") == 4 * 31
    assert metric(w, 'interest_events_total{outcome="accepted"}') == 0
    assert_users(w, events)
    assert records(env, topics(env)["dlq"]) == 0
    skipped = f"the fetcher skipped offsets 2..9 of {click}[{p}]"
    assert (skipped in w.log_path.read_text()) == hole


def flushed_seq(env) -> dict[str, int]:
    """Each user's accepted events in its newest changelog record."""
    latest = {m.key.decode(): m.value for m in read_all(env["KAFKA_BOOTSTRAP_SERVERS"], changelog(env))}
    return {k: st["seq"] for k, st in ((k, state.load(v)) for k, v in latest.items()) if st}


def test_sigkill_in_the_middle_of_a_flush_counts_exactly(env, workers):
    """A flush writes partition after partition (here with a pause between them, from the test
    harness), and offsets are committed every 0.5 s meanwhile: killed after some partitions'
    records reached the changelog and before the rest, the restart restores those users as their
    newest records hold them (those events were committed, or come again as duplicates) and
    applies every other event again (its state never arrived, its offset was never committed)."""
    cli(env, "topics", "create")
    slow = [sys.executable, "-m", "faust", "-A", "slow_flush_app", "worker", "-l", "info"]
    w = workers(argv=slow, PYTHONPATH=str(ROOT / "tests"), SLOW_FLUSH_PAUSE_S="1.5", INTEREST_FLUSH_S="1",
                INTEREST_COMMIT_INTERVAL_S="0.5", INTEREST_SCORE_INTERVAL_S="3600", start=False)
    w.start()
    events = users_events(24, 3)
    users = {e["user_id"] for e in events}
    assert {partition_for(u.encode(), PARTS) for u in users} == set(range(PARTS))
    send(env, events)
    flushed = wait_for(lambda: [p for p, n in end_offsets(env, changelog(env)).items() if n] or None,
                       interval=0.05, what="the first partition's records")
    w.kill()
    after = end_offsets(env, changelog(env))
    done = {p for p, n in after.items() if n}
    assert done and done != set(range(PARTS)), f"killed after the flush had finished: {after}"
    assert set(flushed) <= done
    # what the restart restores: each flushed user's events as of its newest changelog record (a
    # partition's events consumed after its flush had taken its states are not among them)
    restored = sum(flushed_events(env).values())
    assert 0 < restored < len(events)
    w.argv = w.FAUST  # the plain worker from here on
    w.start()
    wait_for(lambda: counted(w, events), what="exact counts after the restart")
    wait_for(lambda: metric(w, 'interest_events_total{outcome="accepted"}') >= len(events) - restored,
             what="the unflushed events applied again")
    time.sleep(1.5)
    assert metric(w, 'interest_events_total{outcome="accepted"}') == len(events) - restored
    assert metric(w, "interest_duplicates_total") <= restored
    assert_users(w, events)


def test_a_rebalance_flushes_the_cache_before_handing_partitions_over(env, workers):
    cli(env, "topics", "create")
    w1 = workers("w1", INTEREST_FLUSH_S="3600", INTEREST_SCORE_INTERVAL_S="3600")  # only rebalances flush
    events = users_events(12, 5)
    send(env, events)
    wait_for(lambda: counted(w1, events), what="events counted on w1")
    assert records(env, changelog(env)) == 0  # all of it only in w1's memory
    w2 = workers("w2", INTEREST_FLUSH_S="3600", INTEREST_SCORE_INTERVAL_S="3600")

    def split():
        parts = [set(w.get("/health")[1].get("partitions", [])) for w in (w1, w2)]
        return parts[0] and parts[1] and parts[0] | parts[1] == set(range(PARTS))
    wait_for(split, what="partitions split between the workers")
    assert metric(w1, 'interest_flushes_total{reason="rebalance"}') >= 1
    assert records(env, changelog(env)) == 12  # each user once, written before the hand-over
    for w in (w1, w2):  # either worker answers for every user, with exact counts
        wait_for(lambda w=w: counted(w, events), what="exact counts after the rebalance")
    more = users_events(12, 3, start=50)
    send(env, more)
    for w in (w1, w2):
        wait_for(lambda w=w: counted(w, events + more), what="exact counts of the new events")


def test_a_user_whose_state_outgrows_four_megabytes_is_restored(env, workers):
    """Every id within the window plus the grace is in the user's one changelog record: 16,000
    events of a day with 128-character ids and categories make a 4.6 MB record. The broker once
    refused a record over its default limit of about 1 MB (5,000 such events made 1.4 MB), and a
    restore lacked the user."""
    t = topics(env)
    cli(env, "topics", "create")
    w = workers(INTEREST_FLUSH_S="1")
    n = 16_000
    events = [{"event_id": f"{i:0128d}", "user_id": "big", "type": "click", "ts": T0 + i * 5_000,
               "item_id": "i" * 128, "category": f"{i % 7}" * 128} for i in range(n)]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t["click"], b"big", e) for e in events])
    wait_for(lambda: w.get("/users/big")[1].get("events") == n, what="16,000 events counted", timeout=120)
    assert w.stop() == 0  # SIGTERM: the last flush, then the commit
    assert "changelog write" not in w.log(400)
    fresh = workers("fresh")  # an empty state directory: the state comes from the changelog
    assert_users(fresh, events)


def committed_at(env, topic: str, partition: int) -> int | None:
    c = KafkaConsumer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
                      group_id=f"{env['INTEREST_TOPIC_PREFIX']}interest-stream", enable_auto_commit=False)
    try:
        return c.committed(TopicPartition(topic, partition))
    finally:
        c.close()


def set_dlq_limit(env, max_bytes: int) -> None:
    set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], topics(env)["dlq"], max_bytes)


def test_a_dead_letter_the_broker_refuses_keeps_its_event_uncommitted_until_it_is_delivered(env, workers):
    """A DLQ topic with a smaller limit than its dead letters (one made before `topics create`
    raised it): the broker refuses the dead letter. Its malformed event's offset must stay
    uncommitted while the events after it are applied, through a shutdown too, and the dead letter
    is sent again until the limit is raised. Before, the flush acknowledged the event whatever became
    of its dead letter (the commit waits for the producer, not for the send to succeed): the offset
    was committed and the dead letter lost, with a warning."""
    t = topics(env)
    cli(env, "topics", "create")
    set_dlq_limit(env, 2_000)
    w = workers(**FAST)
    p = partition_for(b"userD", PARTS)
    first, last = event(1, "userD", "click", T0), event(3, "userD", "click", T0 + 2)
    send(env, [first])
    wait_for(lambda: committed_at(env, t["click"], p) == 1, what="the first event committed")
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t["click"], b"userD", b"{" + b"x" * 3_000)])  # offset 1
    send(env, [last])  # offset 2
    wait_for(lambda: counted(w, [first, last]), what="the events around the malformed one")
    time.sleep(1)  # three flushes and commit intervals
    assert committed_at(env, t["click"], p) == 1  # the malformed event's offset (it was 3)
    wait_for(lambda: metric(w, "interest_dead_letters_resent_total") >= 2, what="the dead letter sent again")
    assert f"dead letter of {t['click']}[{p}]@1 was not delivered (MessageSizeTooLargeError" in w.log(200)
    assert w.stop() == 0  # SIGTERM: the last flush lets it go unacknowledged, and the commit stops before it
    assert committed_at(env, t["click"], p) == 1
    assert f"partition {p}: 1 dead letter(s) not delivered in 5 s;" in w.log(100)

    w.start()  # reads it again, and the broker still refuses its dead letter
    wait_for(lambda: metric(w, "interest_dead_letters_resent_total") >= 2, what="the dead letter sent again")
    set_dlq_limit(env, 4 * 2**20)
    wait_for(lambda: committed_at(env, t["click"], p) == 3, what="every offset committed once it is delivered")
    dlq = read_all(env["KAFKA_BOOTSTRAP_SERVERS"], t["dlq"], expect=1)
    assert [(r.key, orjson.loads(r.value)["reason"], orjson.loads(r.value)["offset"]) for r in dlq] == [
        (b"userD", "not_json", 1)]
    assert_users(w, [first, last])


def test_a_forget_behind_a_dead_letter_the_broker_refuses_waits_for_it_even_after_a_kill(env, workers):
    """The user's events follow a malformed event whose dead letter the broker refuses, so the
    partition's commits stop at that event. A forget applied then would be committed while the
    user's events stay uncommitted, to be read again after a crash. The forget waits for the dead
    letter instead, and is applied once it is delivered, after a kill too. Before, `forget` said
    "forgotten", and the killed worker's successor gave the user back."""
    t = topics(env)
    cli(env, "topics", "create")
    set_dlq_limit(env, 2_000)
    w = workers(**FAST)
    p = partition_for(b"userF", PARTS)
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t["click"], b"userF", b"{" + b"x" * 3_000)])  # offset 0
    mine = [event(i, "userF", "click", T0 + i) for i in range(1, 4)]  # offsets 1 to 3
    send(env, mine)
    wait_for(lambda: counted(w, mine), what="the user's events after the malformed one")
    proc = cli(env, "forget", "userF", "--timeout", "5", check=False)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout
    assert committed_at(env, t["click"], p) is None and control_committed(env) == 0
    w.kill()
    set_dlq_limit(env, 4 * 2**20)
    w.start()
    wait_for(lambda: w.get("/users/userF")[0] == 404 and committed_at(env, t["click"], p) == 4
             and control_committed(env) == 1, what="the user forgotten, every offset committed")
    out = read_all(env["KAFKA_BOOTSTRAP_SERVERS"], f"{env['INTEREST_TOPIC_PREFIX']}user-interests", expect=1)
    assert [(r.key, r.value) for r in out] == [(b"userF", None)]
    assert "userF" not in flushed_events(env)


def test_a_rebalance_hands_over_a_partition_whose_last_event_waits_for_its_dead_letter(env, workers):
    """The agent's last event is a dead-lettered one the broker refuses: a second worker's arrival
    must not wait for it (Faust waits at a rebalance until every message it tracks is acknowledged
    or gone, and its stream still refers to the last one), its offset stays uncommitted, and the
    partition's owner delivers the dead letter once the broker takes it. Before, the first worker's
    rebalance still waited for it a minute later."""
    t = topics(env)
    cli(env, "topics", "create")
    set_dlq_limit(env, 2_000)
    w1 = workers("w1", **FAST)
    p = partition_for(b"userD", PARTS)
    first = event(1, "userD", "click", T0)
    send(env, [first])
    wait_for(lambda: committed_at(env, t["click"], p) == 1, what="the first event committed")
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t["click"], b"userD", b"{" + b"x" * 3_000)])  # offset 1, the last
    wait_for(lambda: metric(w1, "interest_dead_letters_resent_total") >= 2, what="the dead letter sent again")
    w2 = workers("w2", **FAST)

    def split():
        parts = [set(w.get("/health")[1].get("partitions", [])) for w in (w1, w2)]
        return parts[0] and parts[1] and parts[0] | parts[1] == set(range(PARTS))
    wait_for(lambda: w1.log(5000).count("Joined group") >= 2, timeout=30, what="the first worker in the new generation")
    wait_for(split, timeout=30, what="partitions split between the workers")
    assert "wait_empty: Waiting for tasks" not in w1.log(5000)
    assert committed_at(env, t["click"], p) == 1
    set_dlq_limit(env, 4 * 2**20)
    wait_for(lambda: committed_at(env, t["click"], p) == 2, what="the offset committed once it is delivered")
    dlq = read_all(env["KAFKA_BOOTSTRAP_SERVERS"], t["dlq"], expect=1)
    assert {(r.key, orjson.loads(r.value)["offset"]) for r in dlq} == {(b"userD", 1)}


def test_a_partition_back_after_a_rebalance_is_not_committed_past_its_undelivered_dead_letter(env, workers):
    """Each partition: a malformed event whose dead letter the broker refuses, then a valid one.
    Nothing is flushed before a second worker arrives, so the rebalance's flush acknowledges the
    valid events after Faust dropped its records of the partitions; the commits stop at the dead
    letters, which are let go. Before, those acknowledgements stayed behind, and the partitions
    the first worker kept were committed past their malformed events, from the stale records,
    while the broker still refused the dead letters: the events and their dead letters lost (in
    one run of two: the commit had to come before the kept partition's malformed event was read
    again)."""
    t = topics(env)
    cli(env, "topics", "create")
    set_dlq_limit(env, 2_000)
    slow = dict(FAST, INTEREST_FLUSH_S="3600")
    w1 = workers("w1", **slow)
    users = [next(u for u in (f"k{i}" for i in range(100)) if partition_for(u.encode(), PARTS) == p)
             for p in range(PARTS)]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(t["click"], u.encode(), b"{" + b"x" * 3_000) for u in users])
    valid = [event(1, u, "click", T0) for u in users]  # offset 1 of each partition
    send(env, valid)
    wait_for(lambda: counted(w1, valid), what="the valid events applied")
    w2 = workers("w2", **slow)

    def split():
        parts = [set(w.get("/health")[1].get("partitions", [])) for w in (w1, w2)]
        return parts[0] and parts[1] and parts[0] | parts[1] == set(range(PARTS))
    wait_for(split, timeout=60, what="partitions split between the workers")
    time.sleep(3)  # ten commit intervals
    assert [committed_at(env, t["click"], p) for p in range(PARTS)] == [None] * PARTS


def refused_changelog_worker(env, workers):
    """A worker whose changelog refuses every record (max.message.bytes of 100), with 12 events of
    3 users counted in its memory."""
    cli(env, "topics", "create")
    set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], changelog(env), 100)
    w = workers("w", **FAST)
    events = users_events(3, 4)
    send(env, events)
    wait_for(lambda: counted(w, events), what="12 events counted")
    return w, events


def test_a_flush_the_changelog_refuses_commits_nothing_until_its_users_are_written(env, workers):
    """The changelog refuses every record (max.message.bytes of 100): the events stay applied in
    memory but uncommitted, and once the changelog takes records the next flush writes every user.
    A worker that then restores from the changelog alone has every event, and reads none again.
    Before, the flush acknowledged its events whatever the broker answered: the offsets were
    committed, and a restore from the changelog lacked the users (an error in the log)."""
    w, events = refused_changelog_worker(env, workers)
    time.sleep(1.5)  # five flushes and commit intervals
    assert committed(env) == 0  # it was 12
    assert f"changelog write to {changelog(env)}[" in w.log(300) and "(MessageSizeTooLargeError()): its" in w.log(300)
    assert metric(w, "interest_changelog_failures_total") >= 3
    set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], changelog(env), 16 * 2**20)
    wait_for(lambda: committed(env) == 12, what="every offset committed once the users are written")
    assert flushed_events(env) == {f"w{u}": 4 for u in range(3)}
    w.kill()
    fresh = workers("fresh", **FAST)  # its own empty state directory: the changelog is all it has
    wait_for(lambda: counted(fresh, events), what="exact counts restored from the changelog")
    time.sleep(1)
    assert metric(fresh, 'interest_events_total{outcome="accepted"}') == 0
    assert metric(fresh, "interest_duplicates_total") == 0


def test_a_forget_whose_delete_the_changelog_refuses_is_applied_once_it_can_be_even_after_a_kill(env, workers):
    """While the changelog refuses the delete, `forget` gets no tombstone and the request stays
    uncommitted; the worker killed then and restarted once the changelog takes records applies it
    again: the user is gone from the changelog and the worker, and the tombstone is published.
    Before, the worker published the tombstone whatever the changelog answered and committed the
    request: `forget` said "forgotten", and after the kill the user was back, restored whole."""
    w, events = refused_changelog_worker(env, workers)
    set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], changelog(env), 10)  # below a lone tombstone too
    proc = cli(env, "forget", "w0", "--timeout", "3", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (f"Error: no tombstone for w0 within 3s: is a worker running for "
                           f"{env['INTEREST_TOPIC_PREFIX']}interest-stream? (one still applying the user's earlier "
                           "events, or whose changelog refuses the delete, says so in its log, and forgets the "
                           "user once it can)\n")
    assert "1 forget request(s) of partition" in w.log(300)
    w.kill()
    assert control_committed(env) == 0
    set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], changelog(env), 16 * 2**20)
    w.start()
    kept = [e for e in events if e["user_id"] != "w0"]
    wait_for(lambda: counted(w, kept) and w.get("/users/w0")[0] == 404, what="w0 forgotten, the others counted")
    # the other users' partitions flush on their own turns: every offset committed means they did
    wait_for(lambda: control_committed(env) == 1 and committed(env) == len(events),
             what="the forget request and every event committed")
    assert flushed_events(env) == {"w1": 4, "w2": 4}
    out = read_all(env["KAFKA_BOOTSTRAP_SERVERS"], f"{env['INTEREST_TOPIC_PREFIX']}user-interests", expect=1)
    assert [(r.key, r.value) for r in out] == [(b"w0", None)]


def test_a_forget_is_applied_after_the_users_events_still_in_the_lag(env, workers):
    """The request reaches the worker while the user's events wait behind 24,000 others of its
    partition: the worker applies it once it applied them, so the user stays gone. Before, the
    forget deleted a state that did not exist yet, and the events read after it brought the user
    back."""
    cli(env, "topics", "create")
    p = partition_for(b"g0", PARTS)
    crowd = [u for u in (f"crowd{i}" for i in range(100)) if partition_for(u.encode(), PARTS) == p][:12]
    backlog = users_events(len(crowd), 2000, name="crowd")  # crowd0.. then renamed into the partition
    for e in backlog:
        e["user_id"] = crowd[int(e["user_id"][5:])]
        e["event_id"] = f"{e['user_id']}-{e['event_id']}"
    mine = [event(i, "g0", ["click", "browse", "search"][i % 3], T0 + 10**9 + i, "tech") for i in range(6)]
    send(env, backlog + mine)
    forget = subprocess.Popen([sys.executable, "-m", "stream_app.cli", "forget", "g0", "--timeout", "120"],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: records(env, f"{env['INTEREST_TOPIC_PREFIX']}interest-control") == 1,
                 what="the forget request sent")
        w = workers("w", **FAST)
        out, err = forget.communicate(timeout=150)
    finally:
        forget.kill()
    assert forget.returncode == 0 and out.startswith("forgotten: g0 (tombstone at "), err
    wait_for(lambda: committed(env) == len(backlog) + len(mine), timeout=120, what="every event applied")
    assert w.get("/users/g0")[0] == 404
    assert "g0" not in flushed_events(env) and len(flushed_events(env)) == len(crowd)


def test_a_user_state_over_the_largest_record_loses_its_oldest_rows_instead_of_stalling_its_partition(
        env, workers):
    """A changelog made with the broker's default limit (here 1 MiB and 1 KiB) and a bot's 5,000
    events with 128-character ids and categories (1.5 MB of state): the flush trims the state to
    INTEREST_MAX_STATE_BYTES (1 MiB), says whose, and the partition's offsets are committed; the
    user's count is short by exactly the rows dropped. Before, the broker refused the record at
    every flush, and the partition's offsets were never committed again."""
    cli(env, "topics", "create")
    set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], changelog(env), 2**20 + 2**10)
    w = workers("w", INTEREST_MAX_STATE_BYTES=str(2**20), **FAST)
    bot = [dict(event(i, "bot", ["click", "browse"][i % 2], T0 + i * 10_000, f"{i % 7}" * 128),
                event_id=f"{i:0128d}") for i in range(5000)]
    send(env, bot + users_events(3, 4))
    wait_for(lambda: committed(env) == 5012, what="every offset committed")
    dropped = metric(w, "interest_state_rows_trimmed_total")
    assert dropped > 1000
    assert w.get("/users/bot")[1]["events"] == 5000 - dropped
    assert "partition" in w.log(300) and "user state(s) over 1048576 bytes lost their oldest" in w.log(300)
    assert "'bot' (" in w.log(300)
    assert flushed_events(env)["bot"] == 5000 - dropped and {f"w{u}": 4 for u in range(3)}.items() <= \
        flushed_events(env).items()


def test_a_full_cache_the_changelog_cannot_empty_stops_reading_until_it_can(env, workers):
    """The changelog refuses every flush and the cache (1 MB) fills with users and events that
    cannot leave memory: the worker stops reading, the cache stays at its bound and the rest waits
    in Kafka, where the lag counts what keeps arriving; once the changelog takes records, every
    event is counted and committed. Before, the worker read on, each event over the bound set off
    a flush of every partition (refused), and the cache grew past its bound without limit (1.8 MB
    after 5 s here, 2.0 MB after 20 s). The lag stood still while input arrived: the consumer
    learnt ends only from its fetches, and it fetches no partition whose records it still holds."""
    cli(env, "topics", "create")
    set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], changelog(env), 100)
    w = workers("w", INTEREST_STATE_CACHE_MB="1", **FAST)
    # about 1,000 fill the cache, and Faust's stream buffer takes 4,096 more
    events = users_events(160, 80)
    send(env, events)
    sent = time.monotonic()
    wait_for(lambda: metric(w, "interest_ingest_stalled") == 1, what="reading stopped")
    # reading stops at once; the ends are read every END_REFRESH_S, and one read during the send
    # would give a lag short of the events sent after it
    time.sleep(max(2.0, sent + 2 * END_REFRESH_S - time.monotonic()))
    assert metric(w, "interest_state_cache_bytes") <= 1.1 * 2**20
    lag = metric(w, "interest_consumer_lag{")
    assert lag > 4000  # waiting in Kafka, not in memory
    assert "the state cache is full (1 MB) and the changelog refuses partitions [" in w.log(300)
    more = users_events(10, 100, name="x")
    send(env, more)
    wait_for(lambda: metric(w, "interest_consumer_lag{") == lag + len(more), timeout=3 * END_REFRESH_S,
             what="the lag of new input")
    set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], changelog(env), 16 * 2**20)
    wait_for(lambda: committed(env) == len(events + more), timeout=120, what="every offset committed")
    assert counted(w, events + more) and metric(w, "interest_ingest_stalled") == 0


def test_a_forget_waiting_for_its_users_events_holds_back_neither_other_partitions_nor_a_stop(env, workers):
    """A request whose end offsets the worker never reaches (as if its events were still far
    behind) waits, while a forget of a user in another partition goes through; SIGTERM stops the
    worker at once and leaves the waiting request uncommitted. Before, the one control agent
    waited on the first request, so the second `forget` timed out, and the stop waited for it."""
    cli(env, "topics", "create")
    w = workers("w", **FAST)
    p_stuck = partition_for(b"stuck0", PARTS)
    free = next(u for u in (f"free{i}" for i in range(100)) if partition_for(u.encode(), PARTS) != p_stuck)
    send(env, users_events(1, 2, name="stuck") + [dict(e, user_id=free, event_id=f"{free}-{i}")
                                                   for i, e in enumerate(users_events(1, 2, name="x"))])
    clicks = topics(env)["click"]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(f"{env['INTEREST_TOPIC_PREFIX']}interest-control", b"stuck0",
                                              {"op": "forget", "ends": {clicks: 10**9}})])
    out = cli(env, "forget", free, "--timeout", "30").stdout
    assert out.startswith(f"forgotten: {free} (tombstone at ")
    assert w.get("/users/stuck0")[0] == 200
    t0 = time.monotonic()
    assert w.stop(timeout=20) == 0
    assert time.monotonic() - t0 < 15
    assert control_committed(env) == 1  # the free user's request only


def control_committed(env) -> int:
    c = KafkaConsumer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
                      group_id=f"{env['INTEREST_TOPIC_PREFIX']}interest-stream", enable_auto_commit=False)
    try:
        topic = f"{env['INTEREST_TOPIC_PREFIX']}interest-control"
        return sum(c.committed(TopicPartition(topic, p)) or 0 for p in range(PARTS))
    finally:
        c.close()


def test_a_worker_killed_after_the_changelog_refused_a_flush_rebuilds_that_partition(env, workers):
    """Killed while the changelog refuses its flushes, the worker's RocksDB holds states the
    changelog lacks, and their events are uncommitted. At the restart those partitions are
    rebuilt from the changelog, so the events read again are applied (not duplicates of the local
    state) and reach the changelog. Without the `.unwritten` file they counted as duplicates, and
    the changelog never got those users."""
    w, events = refused_changelog_worker(env, workers)
    wait_for(lambda: metric(w, "interest_changelog_failures_total") >= 3, what="refused flushes")
    w.kill()
    assert committed(env) == 0
    set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], changelog(env), 16 * 2**20)
    w.start()
    wait_for(lambda: counted(w, events), what="exact counts after the restart")
    wait_for(lambda: committed(env) == 12, what="every offset committed")
    assert flushed_events(env) == {f"w{u}": 4 for u in range(3)}
    assert metric(w, 'interest_events_total{outcome="accepted"}') == 12  # applied again, not duplicates
    assert metric(w, "interest_duplicates_total") == 0
    assert "may hold states its changelog lacks (a flush was refused or cut short before the worker stopped)" \
        in w.log(400)


def test_a_forget_after_events_of_a_transactional_producer_does_not_wait_for_the_next_event(env, workers):
    """A transaction's commit marker takes an offset that no consumer reads, so the end offset of
    a partition last written by a transactional producer is one past anything the worker will
    receive. `forget` asks for the offset after the last record a consumer is given instead.
    Before, the request waited for the partition's next event, here never, and `forget` timed
    out. The worker reads uncommitted, as Faust does under at-least-once: an aborted transaction's
    events are counted."""
    from kafka import KafkaProducer

    cli(env, "topics", "create")
    w = workers("w", **FAST)
    mine = users_events(1, 3, name="tx")  # one click, one browse, one search: three partitions
    # an aborted click of another user in tx0's click partition first: read_uncommitted counts it
    p_tx = partition_for(b"tx0", PARTS)
    other = next(u for u in (f"ab{i}" for i in range(100)) if partition_for(u.encode(), PARTS) == p_tx)
    aborted = [dict(users_events(1, 1, name="ab")[0], user_id=other, event_id=f"{other}-0")]
    t = topics(env)
    p = KafkaProducer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
                      transactional_id=f"{env['INTEREST_TOPIC_PREFIX']}upstream")
    try:
        p.init_transactions()
        for events, end in ((aborted, p.abort_transaction), (mine, p.commit_transaction)):
            p.begin_transaction()
            for e in events:
                p.send(t[e["type"]], key=e["user_id"].encode(), value=orjson.dumps(e), timestamp_ms=e["ts"])
            p.flush()  # an abort drops what the producer has not sent yet
            end()
    finally:
        p.close()
    wait_for(lambda: counted(w, mine + aborted), what="the transactions' events counted")
    started = time.monotonic()
    out = cli(env, "forget", "tx0", "--timeout", "30").stdout
    assert out.startswith("forgotten: tx0 (tombstone at "), out
    assert time.monotonic() - started < 20
    assert w.get("/users/tx0")[0] == 404
    # the click partition: the aborted click at 0, its marker at 1, tx0's click at 2, the commit at
    # 3; the browse and search partitions: tx0's event at 0, the commit at 1
    request = read_all(env["KAFKA_BOOTSTRAP_SERVERS"], f"{env['INTEREST_TOPIC_PREFIX']}interest-control", expect=1)
    assert orjson.loads(request[0].value) == {"op": "forget", "ends": {t["click"]: 3, t["browse"]: 1, t["search"]: 1}}
    assert sum(end_offsets(env, t["click"]).values()) == 4

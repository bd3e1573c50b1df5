"""The aligner: a partition's three topics applied in record-timestamp order (worked by hand)."""
import orjson
import pytest

from stream_app.alignment import Aligner, event_ts, message_event_ts, message_order, order_timestamp

TOPICS = ("click", "browse", "search")


def never(topic, partition):  # no topic has caught up: everything is still to come
    return False


def always(topic, partition):
    return True


def test_a_topic_ahead_waits_for_the_others_then_all_leave_oldest_first():
    a = Aligner(TOPICS)
    a.add("click", 0, 50.0, "c50", now=0.0)
    a.add("click", 0, 60.0, "c60", now=0.0)
    assert list(a.ready(0, never, now=0.0)) == []  # browse and search may still bring older events
    a.add("browse", 0, 10.0, "b10", now=0.0)
    assert list(a.ready(0, never, now=0.0)) == []  # search still unknown
    a.add("search", 0, 55.0, "s55", now=0.0)
    # b10 leaves; c50 waits: browse has nothing waiting now and may bring an event before 50
    assert list(a.ready(0, never, now=0.0)) == ["b10"]
    a.add("browse", 0, 52.0, "b52", now=0.0)
    assert list(a.ready(0, never, now=0.0)) == ["c50", "b52"]  # s55 waits for browse again
    assert len(a) == 2 and a.forced == 0


def test_a_caught_up_topic_is_not_waited_for():
    a = Aligner(TOPICS)
    a.add("click", 0, 50.0, "c50", now=0.0)
    a.add("browse", 0, 20.0, "b20", now=0.0)
    caught = {"search"}
    assert list(a.ready(0, lambda t, p: t in caught, now=0.0)) == ["b20"]
    caught.add("browse")
    assert list(a.ready(0, lambda t, p: t in caught, now=0.0)) == ["c50"]
    assert a.forced == 0


def test_partitions_are_aligned_independently():
    a = Aligner(TOPICS)
    a.add("click", 0, 50.0, "p0", now=0.0)
    a.add("click", 1, 40.0, "p1", now=0.0)
    caught = lambda t, p: p == 1  # noqa: E731
    assert list(a.ready(0, caught, now=0.0)) == []
    assert list(a.ready(1, caught, now=0.0)) == ["p1"]


def test_a_message_waits_at_most_max_wait_s_then_counts_as_forced():
    a = Aligner(TOPICS, max_wait_s=2.0)
    a.add("click", 3, 50.0, "c50", now=10.0)
    a.add("click", 3, 70.0, "c70", now=11.5)
    assert list(a.expired(never, now=11.9)) == []
    assert list(a.expired(never, now=12.0)) == ["c50"]  # waited 2.0 s
    assert list(a.expired(never, now=13.4)) == []
    assert list(a.expired(never, now=13.5)) == ["c70"]
    assert a.forced == 2


def test_a_topic_behind_is_given_up_on_only_once_a_fetch_begun_after_the_wait_has_completed():
    """A fetcher (or an event loop) that stalls is not a topic with nothing to give: the click
    waits past max_wait_s until a fetch that began 2 s after it arrived has completed. With the
    test harness's fetcher stalled 3 s, the other topics' events went ahead of clicks it had
    skipped, and 5 of them were `late` (tests/test_worker_ingest.py)."""
    a = Aligner(TOPICS, max_wait_s=2.0, hole_wait_s=30.0)
    a.add("click", 3, 50.0, "c50", now=10.0)
    assert list(a.expired(never, now=13.0, fetched=9.5)) == []  # the last fetch began before it came
    assert list(a.expired(never, now=15.0, fetched=11.9)) == []  # one began 1.9 s after
    assert a.forced == 0
    assert list(a.expired(never, now=15.0, fetched=12.0)) == ["c50"]  # one began 2 s after: nothing came
    a.add("click", 3, 60.0, "c60", now=20.0)
    hole = lambda t, p: t == "browse"  # noqa: E731
    assert list(a.ready(3, never, now=51.0, has_hole=hole, fetched=49.9)) == []  # a hole: 30 s
    assert list(a.ready(3, never, now=51.0, has_hole=hole, fetched=50.0)) == ["c60"]
    a.add("click", 3, 70.0, "c70", now=60.0)
    assert list(a.expired(never, now=62.0)) == ["c70"]  # not known: wall time alone (a benchmark's consumer)
    assert a.forced == 3


def test_a_topic_behind_with_a_hole_is_waited_for_up_to_hole_wait_s():
    """The partition's browse records are to be read again (a hole the fetcher left, held back
    until it is read): a search waits for them up to hole_wait_s, not max_wait_s. Forced past
    after 2 s, the searches moved their users' event time on, and the browses read afterwards
    were `late` (bench/rebalance.py --workers 3 --kill). Click is behind without a hole: the
    browse's hole still counts."""
    a = Aligner(TOPICS, max_wait_s=2.0, hole_wait_s=30.0)
    a.add("search", 0, 50.0, "s50", now=0.0)
    hole = lambda t, p: t == "browse"  # noqa: E731
    assert list(a.ready(0, never, now=2.5, has_hole=hole)) == []
    assert list(a.expired(never, now=29.9, has_hole=hole)) == []
    assert a.forced == 0
    assert list(a.expired(never, now=30.0, has_hole=hole)) == ["s50"]
    assert a.forced == 1
    a.add("search", 0, 60.0, "s60", now=40.0)
    browse_caught_up = lambda t, p: t == "browse"  # noqa: E731  # its hole no longer counts
    assert list(a.ready(0, browse_caught_up, now=41.9, has_hole=hole)) == []
    assert list(a.ready(0, browse_caught_up, now=42.0, has_hole=hole)) == ["s60"]  # click's 2 s
    assert a.forced == 2


def test_a_message_waits_idle_s_for_a_topic_caught_up_that_may_get_an_older_one_a_fetch_later():
    """A log produced at full speed while the worker reads it: click has caught up, but its records
    sent just before the search wait in the producer behind its other batches and arrive later.
    With idle_s the search waits for them, and they go in order; released by the wait, a message
    counts as idled, not forced."""
    a = Aligner(TOPICS, idle_s=0.5)
    a.add("search", 0, 50.0, "s50", now=10.0)
    assert list(a.ready(0, always, now=10.4)) == []
    a.add("click", 0, 40.0, "c40", now=10.3)
    assert list(a.ready(0, always, now=10.4)) == []  # c40 is the head, and waits for browse
    assert list(a.expired(always, now=10.79)) == []
    assert list(a.expired(always, now=10.8)) == ["c40", "s50"]
    assert (a.idled, a.forced) == (2, 0)
    # the wait counts from the message's arrival: one that waited for a topic behind goes at once
    a.add("search", 0, 60.0, "s60", now=20.0)
    assert list(a.expired(never, now=21.0)) == []
    assert list(a.expired(always, now=21.0)) == ["s60"]
    assert (a.idled, a.forced) == (3, 0)
    # a topic behind is waited for max_wait_s, even when another has caught up
    a.add("search", 0, 70.0, "s70", now=30.0)
    click_behind = lambda t, p: t != "click"  # noqa: E731
    assert list(a.expired(click_behind, now=31.9)) == []
    assert list(a.expired(click_behind, now=32.0)) == ["s70"]
    assert (a.idled, a.forced) == (3, 1)


def test_without_idle_s_a_caught_up_topic_is_not_waited_for_and_drain_never_waits():
    a = Aligner(TOPICS)  # idle_s 0, Kafka Streams' max.task.idle.ms by default
    a.add("click", 0, 50.0, "c50", now=10.0)
    assert list(a.ready(0, always, now=10.0)) == ["c50"]
    assert (a.idled, a.forced) == (0, 0)
    b = Aligner(TOPICS, idle_s=0.5)
    b.add("click", 0, 50.0, "c50", now=10.0)
    b.add("click", 1, 60.0, "c60", now=10.0)
    assert list(b.drain([0])) == ["c50"]  # a revocation: applied before the last flush, at once
    assert list(b.drain()) == ["c60"] and len(b) == 0
    c = Aligner(TOPICS, idle_s=0.5, max_buffered=1)
    c.add("click", 0, 50.0, "c50", now=10.0)
    c.add("click", 0, 51.0, "c51", now=10.0)
    assert list(c.ready(0, always, now=10.0)) == ["c50"]  # memory before order, as for a topic behind
    assert (c.idled, c.forced) == (0, 1)


class Msg:
    """What the worker's aligner holds: Faust's message, its timestamp in seconds."""

    def __init__(self, name, record_ms, ts):
        self.name, self.timestamp, self.value = name, record_ms / 1000, orjson.dumps({"ts": ts})

    def __repr__(self):
        return self.name


def test_records_of_one_millisecond_go_by_their_events_ts():
    """A producer that does not set the record timestamp stamps the time it sends: a log streamed
    at full speed sends a dozen events in a millisecond. The search of 14 days later arrived first;
    in arrival order it went first and the user's clicks were `late`."""
    parsed = []

    def tie_key(m):
        parsed.append(m.name)
        return message_event_ts(m)

    a = Aligner(TOPICS, tie_key=tie_key)
    day = 86_400_000
    for topic, m in [("search", Msg("s14", 415, 14 * day)), ("click", Msg("c1", 415, day)),
                     ("click", Msg("c2", 415, 2 * day)), ("browse", Msg("b3", 416, 3 * day)),
                     ("click", Msg("c0", 417, 0))]:  # later milliseconds: by record timestamp
        a.add(topic, 0, m.timestamp, m, now=0.0)
    assert [m.name for m in a.ready(0, always, now=0.0)] == ["c1", "c2", "s14", "b3", "c0"]
    # only the heads that tied were parsed, each once: s14 against c1, then c2
    assert sorted(parsed) == ["c1", "c2", "s14"]


def test_without_a_tie_key_records_of_one_millisecond_go_in_arrival_order():
    a = Aligner(TOPICS)
    a.add("search", 0, 0.415, "s", now=0.0)
    a.add("click", 0, 0.415, "c", now=0.0)
    assert list(a.ready(0, always, now=0.0)) == ["s", "c"]


@pytest.mark.parametrize("value, want", [
    (b'{"ts": 1700000000000, "type": "click"}', 1_700_000_000_000),
    (b'{"ts": 0}', 0),
    (b'{"ts": true}', 415),  # not an integer: the worker dead-letters it (bad_type)
    (b'{"ts": 1.5e12}', 415),
    (b'{"ts": "1700000000000"}', 415),
    (b'{"type": "click"}', 415),  # missing_field
    (b'[1, 2]', 415),  # not_object
    (b'not json', 415),
    (b'\xff\xfe', 415),  # not_utf8
    (b'', 415),
    (None, 415),  # a tombstone
    (orjson.dumps({"ts": 7, "query": "x" * 65_536}), 415),  # over 64 KiB: too_large, not parsed
])
def test_an_event_without_an_integer_ts_is_ordered_by_its_record_timestamp(value, want):
    assert event_ts(value, 415) == want
    m = Msg("m", 415, None)
    m.value = value
    assert message_event_ts(m) == want  # Faust's seconds back to the millisecond
    assert message_order(m, 1_000)[1] == want  # the tie the ingest agent hands the aligner


@pytest.mark.parametrize("record_ms, ts, want", [
    (10_000, 8_999, (8.999, 8_999)),  # sent long after its event: ordered by its ts, in seconds
    (10_000, 9_700, (10.0, 9_700)),  # a live producer's delay: its record timestamp, the tie its ts
    (10_000, None, (10.0, 10_000)),  # no integer ts: the record timestamp, and its millisecond as tie
])
def test_the_agents_keys_for_a_message_are_its_order_timestamp_and_its_tie(record_ms, ts, want):
    m = Msg("m", record_ms, ts)
    assert message_order(m, 1_000) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("record_ts, ts, ms, want", [
    (10_000, 8_999, 1, 8_999),  # sent more than the allowance (1,000) after its event: its ts
    (10_000, 9_000, 1, 10_000),  # exactly the allowance: the record timestamp
    (10_000, 9_700, 1, 10_000),  # a live producer's delay
    (10_000, 50_000, 1, 10_000),  # ahead of its record timestamp (a clock ahead): nothing held back
    (10_000, None, 1, 10_000),  # no integer ts (a dead letter to be)
    (10.0, 8_999, 0.001, 8.999),  # Faust's record timestamps are in seconds
    (10.0, 9_000, 0.001, 10.0),
    (10.0, 50_000, 0.001, 10.0),
])
def test_a_record_sent_long_after_its_event_is_ordered_by_its_ts(record_ts, ts, ms, want):
    got = order_timestamp(record_ts, ts, 1_000) if ms == 1 else order_timestamp(record_ts, ts, 1_000, ms)  # ms: replay
    assert got == pytest.approx(want, abs=1e-12)
    if want == record_ts:
        assert got is record_ts  # the record timestamp itself: ties stay ties to the bit
    assert type(got) is type(want)  # kafka-python's integer milliseconds stay integers


def test_too_many_waiting_lets_the_next_go():
    a = Aligner(TOPICS, max_buffered=2)
    for ts in (30.0, 10.0, 20.0):
        a.add("click", 0, ts, f"c{ts:g}", now=0.0)
    assert list(a.ready(0, never, now=0.0)) == ["c30"]  # a partition's own order is kept
    assert len(a) == 2 and a.forced == 1


def test_a_topic_keeps_its_own_order_and_the_heads_are_compared():
    a = Aligner(TOPICS)
    a.add("click", 0, 30.0, "c30", now=0.0)
    a.add("click", 0, 10.0, "c10", now=0.0)  # out of order within its topic: stays after c30
    a.add("browse", 0, 20.0, "b20", now=0.0)
    a.add("browse", 0, 40.0, "b40", now=0.0)
    assert list(a.ready(0, always, now=0.0)) == ["b20", "c30", "c10", "b40"]


def test_equal_timestamps_leave_in_arrival_order():
    a = Aligner(TOPICS)
    for name, topic in (("x", "click"), ("y", "browse"), ("z", "click")):
        a.add(topic, 0, 5.0, name, now=0.0)
    assert list(a.ready(0, always, now=0.0)) == ["x", "y", "z"]


def test_drain_empties_the_given_partitions_oldest_first():
    a = Aligner(TOPICS)
    a.add("click", 0, 9.0, "a9", now=0.0)
    a.add("browse", 0, 1.0, "a1", now=0.0)
    a.add("click", 2, 5.0, "b5", now=0.0)
    assert list(a.drain([0, 4])) == ["a1", "a9"]
    assert len(a) == 1
    assert list(a.drain()) == ["b5"]
    assert len(a) == 0 and list(a.ready(2, always, now=0.0)) == []


def test_a_partition_is_due_for_release_every_release_every_messages_of_its_own():
    """The agent asks for a release only when ``add`` says the partition is due; the count is per
    partition and starts again after each due add and after a drain (a revoked partition)."""
    a = Aligner(TOPICS, release_every=3)
    due = [a.add("click", p, float(i), f"{p}-{i}", now=0.0) for i, p in enumerate([0, 0, 1, 0, 1, 0, 0, 0, 1, 1])]
    assert due == [False, False, False, True, False, False, False, True, True, False]
    assert list(a.drain([1])) == ["1-2", "1-4", "1-8", "1-9"]
    assert [a.add("click", 1, 9.0, "x", now=0.0), a.add("click", 1, 9.5, "y", now=0.0)] == [False, False]
    assert Aligner(TOPICS).add("click", 0, 1.0, "m", now=0.0)  # by default every message is due


def test_the_worker_asks_its_consumer_whether_a_topics_partition_has_a_hole_not_settled(monkeypatch):
    """stream_app.ingest.Received.has_hole, the aligner's ``has_hole``: a hole the fetcher left in
    browse[2] (56..200, as in the trial above) until it is settled; click[2] has none."""
    from types import SimpleNamespace

    from faust.types import TP

    from stream_app import app as _app  # noqa: F401  (the app module first: it imports ingest at its end)
    from stream_app import ingest
    from stream_app.holes import Deliveries

    d = Deliveries()
    browse = TP("events.browse", 2)
    d.positioned(browse, 56)
    d.delivered(browse, 201)
    monkeypatch.setattr(ingest.app, "consumer", SimpleNamespace(deliveries=d))
    received = ingest.Received(None)
    assert received.has_hole("events.browse", 2) and not received.has_hole("events.click", 2)
    d.settled(browse, 56)  # read again and acknowledged
    assert not received.has_hole("events.browse", 2)
    monkeypatch.setattr(ingest.app, "consumer", SimpleNamespace())  # a benchmark's consumer
    assert not received.has_hole("events.browse", 2)


def by_user(m: str) -> str:  # the test messages are "user:name"
    return m.split(":")[0]


def test_a_users_record_waits_for_its_users_older_record_in_another_topic():
    """A log stamped with ts and sent user by user (MovieLens through bench/live_eval.py --order user):
    the click topic holds a's days 0 to 10, then b's; b's search of day 5.5 is the search topic's
    head. By timestamp alone it went as soon as the click head (a's day 6) was newer, before b's
    own clicks of days 0 to 5, which then came after it (in the worker, `late`). Held back for them,
    a's clicks go on, b's search goes among b's clicks in ts order, and each topic keeps its order."""
    clicks = [f"a:c{d}" for d in range(11)] + [f"b:c{d}" for d in range(11)]

    def fill(a: Aligner) -> Aligner:
        for name in clicks:
            a.add("click", 0, float(name.split("c")[1]), name, now=0.0)
        a.add("search", 0, 5.5, "b:s5.5", now=0.0)
        return a

    plain = list(fill(Aligner(TOPICS)).ready(0, always, now=0.0))
    assert plain == clicks[:6] + ["b:s5.5"] + clicks[6:]
    keyed = fill(Aligner(TOPICS, user=by_user))
    assert list(keyed.waiting) == [0]  # the click topic ran back (b's day 0 after a's day 10): users indexed
    assert list(keyed.ready(0, always, now=0.0)) == clicks[:11 + 6] + ["b:s5.5"] + clicks[11 + 6:]
    assert keyed.waiting == {}  # gone with the partition's last waiting message


def test_when_every_head_is_held_back_the_oldest_goes():
    """Two topics that ran user by user in opposite orders: each head has an older record of its
    own user behind the other head. Nothing can go in every user's order, so the timestamp decides
    (the merge never stalls)."""
    a = Aligner(TOPICS, user=by_user)
    for topic, ts, name in [("click", 5.0, "a:c5"), ("click", 1.0, "b:c1"), ("search", 6.0, "b:s6"),
                            ("search", 2.0, "a:s2")]:
        a.add(topic, 0, ts, name, now=0.0)
    assert list(a.ready(0, always, now=0.0)) == ["a:c5", "b:c1", "b:s6", "a:s2"]


def test_a_log_in_ts_order_goes_as_by_timestamp_alone():
    """Where every topic's timestamps rise (a log in ts order, or stamped with the time of sending),
    no head has an older record of its user behind another head: the order is the timestamp merge's,
    ties included, whatever the users."""
    import random

    rng = random.Random(7)
    ts, log = 0, []
    for i in range(3000):
        ts += rng.choice((0, 0, 1, 5))  # ties across topics and within one
        log.append((rng.choice(TOPICS), float(ts), f"u{rng.randrange(40)}:{i}"))
    # arriving as a fetcher hands them over: a batch of each topic's records in turn
    log.sort(key=lambda r: (int(r[2].split(":")[1]) // 200, TOPICS.index(r[0])))
    orders = []
    for a in (Aligner(TOPICS, release_every=64), Aligner(TOPICS, release_every=64, user=by_user)):
        out = []
        for topic, t, name in log:
            if a.add(topic, 0, t, name, now=0.0):
                out += a.ready(0, never, now=0.0)
            assert a.waiting == {}  # no topic ran back: no user is indexed
        orders.append(out + list(a.drain()))
    assert orders[0] == orders[1] and len(orders[0]) == 3000
    assert orders[0] != [name for _, _, name in log]  # the merge did reorder: the check is not empty
    ts_of = {name: t for _, t, name in log}
    assert [ts_of[n] for n in orders[0]] == sorted(ts_of.values())  # in timestamp order


def test_a_topic_that_ran_back_is_waited_for_as_one_with_nothing_waiting():
    """Sent into a running worker user by user, a user's search can arrive before that user's
    clicks, while the click topic still holds the previous user's newer ones: by the heads alone it
    went at once, and the clicks came after it (404 `late` of MovieLens' 11,639 through
    bench/live_eval.py --order user). Once the click topic has run back (ran_back, from
    stream_app.input_order), its head no longer says that nothing older is to come: b's search
    waits idle_s for it, b's clicks arrive meanwhile and hold it back. For UNORDERED_S only."""
    from stream_app.alignment import UNORDERED_S

    two = ("click", "search")
    a = Aligner(two, idle_s=0.5, user=by_user)
    plain = Aligner(two, idle_s=0.5, user=by_user)
    for al in (a, plain):
        for d in range(11):
            al.add("click", 0, float(d), f"a:c{d}", now=0.0)
        al.add("search", 0, 5.5, "b:s5.5", now=0.3)
    a.ran_back("click", 0, now=0.0)
    # a's clicks up to day 5 go; b's search waits for the click topic (caught up) from its arrival
    assert list(a.ready(0, always, now=0.6)) == [f"a:c{d}" for d in range(6)]
    assert list(plain.ready(0, always, now=0.6)) == [f"a:c{d}" for d in range(6)] + ["b:s5.5"] + [
        f"a:c{d}" for d in range(6, 11)]
    for d in range(11):
        a.add("click", 0, float(d), f"b:c{d}", now=0.7)
    assert list(a.ready(0, always, now=0.8)) == [f"a:c{d}" for d in range(6, 11)] + [
        f"b:c{d}" for d in range(6)] + ["b:s5.5"]
    assert a.idled == 1  # b's search, after its 0.5 s; b's later clicks wait for the search topic
    assert list(a.ready(0, always, now=1.2)) == [f"b:c{d}" for d in range(6, 11)]
    a.add("click", 0, 40.0, "d:c40", now=UNORDERED_S)
    a.add("search", 0, 30.0, "c:s30", now=UNORDERED_S)
    assert list(a.ready(0, always, now=UNORDERED_S)) == ["c:s30"] and a.unordered == {}  # the wait has ended


def test_once_nothing_waits_every_topic_has_been_asked_whether_it_caught_up():
    """The worker's ``caught_up`` starts the read of a partition's tail when the fetcher is at its
    end (stream_app.delivered), so that a topic ending in a transaction's marker counts as caught up
    before the next message comes. The aligner asks every topic with nothing waiting, also on the
    pass that finds the partition empty: `8896ed6` returned before asking then, and the last topic
    to give up a message was not asked (here: click)."""
    a = Aligner(TOPICS)
    a.add("click", 0, 1.0, "c1", now=0.0)
    asked = []
    assert list(a.ready(0, lambda t, p: asked.append(t) or True, now=0.0)) == ["c1"]
    assert sorted(asked) == ["browse", "click", "search"]  # each once: the answers of a pass are kept

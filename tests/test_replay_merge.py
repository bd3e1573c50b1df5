"""Replay's merge of the input partitions (no broker: a consumer that fetches as kafka-python's
does, every partition not paused at each poll): exact order, and how much it reads ahead; and how
a replay names its range."""
from __future__ import annotations

from collections import namedtuple

import orjson

from stream_app.replay import merged_records

Record = namedtuple("Record", "topic partition offset value timestamp key", defaults=(b"u1",))  # key: the user
TP = namedtuple("TP", "topic partition")


class FetchingConsumer:
    """Each poll returns up to ``per_poll`` records of every assigned partition not paused, from its
    position on (kafka-python fetches every fetchable partition alike)."""

    def __init__(self, logs: dict, per_poll: int):
        self.logs, self.per_poll = logs, per_poll
        self.pos, self.paused = {}, set()
        self.returned = 0

    def assign(self, tps):
        self.pos = {tp: 0 for tp in tps}

    def seek(self, tp, offset):
        self.pos[tp] = offset

    def pause(self, tp):
        self.paused.add(tp)

    def resume(self, tp):
        self.paused.discard(tp)

    def position(self, tp):
        return self.pos[tp]

    def poll(self, timeout_ms, max_records):
        out = {}
        for tp, at in self.pos.items():
            recs = self.logs[tp][at:at + self.per_poll]
            if tp in self.paused or not recs:
                continue
            out[tp], self.pos[tp] = recs, at + len(recs)
            self.returned += len(recs)
        return out


def log(tp: TP, n: int, step: int) -> list:
    return [Record(tp.topic, tp.partition, i, orjson.dumps({"ts": 1_000 + i * step}), 1_000 + i * step)
            for i in range(n)]


def test_a_sparse_partition_is_not_read_far_ahead_of_the_merge():
    """Clicks every ms, searches every 10 ms: each poll brings 10 times more event time of searches,
    so before the bound the merge held almost all 1,000 searches at once (peak 921 records read
    but not yet merged); now at most ``buffered`` plus one poll per partition."""
    clicks, searches = TP("click", 0), TP("search", 0)
    logs = {clicks: log(clicks, 10_000, 1), searches: log(searches, 1_000, 10)}
    consumer = FetchingConsumer(logs, per_poll=20)
    ranges = {clicks: (0, 10_000), searches: (0, 1_000)}
    merged, peak = [], 0
    for ts, r in merged_records(consumer, ranges, buffered=50):
        merged.append((ts, r.topic, r.partition, r.offset))
        peak = max(peak, consumer.returned - len(merged))
    want = sorted((orjson.loads(r.value)["ts"], r.topic, r.partition, r.offset) for rs in logs.values() for r in rs)
    assert merged == want
    assert peak <= 2 * (50 + 20)


def event(tp: TP, offset: int, ts: int, stamp: int | None = None, user: bytes = b"u1") -> Record:
    """A record of an event at ``ts``, stamped ``stamp`` (the project's producers stamp ``ts``)."""
    return Record(tp.topic, tp.partition, offset, orjson.dumps({"ts": ts}), ts if stamp is None else stamp, user)


def merge(logs: dict, after: int | None = None, per_poll: int = 2, allowed_ms: int | None = None) -> list:
    ranges = {tp: (0, len(rs)) for tp, rs in logs.items()}
    return [(ts, r.topic) for ts, r in merged_records(FetchingConsumer(logs, per_poll), ranges, after=after,
                                                      allowed_ms=allowed_ms)]


def test_a_users_record_goes_after_its_users_older_record_read_ahead_in_another_topic():
    """As the live worker's aligner (tests/test_alignment.py): a log stamped with ts and sent user
    by user, a's clicks of days 0 to 10 then b's in the click partition, b's search of day 5.5 in
    the search partition. By timestamp alone the search went before b's clicks of days 0 to 5,
    which were then `late` in the replay too."""
    clicks, searches = TP("click", 0), TP("search", 0)
    day = 86_400_000
    logs = {clicks: [event(clicks, i, (i % 11) * day, user=b"a" if i < 11 else b"b") for i in range(22)],
            searches: [event(searches, 0, 5 * day + day // 2, user=b"b")]}
    merged = merge(logs, per_poll=100)  # all of it read ahead at the first poll
    assert merged == [(d * day, "click") for d in range(11)] + [(d * day, "click") for d in range(6)] + [
        (5 * day + day // 2, "search")] + [(d * day, "click") for d in range(6, 11)]
    # every head held back (two partitions that ran user by user in opposite orders): the oldest goes
    logs = {clicks: [event(clicks, 0, 5, user=b"a"), event(clicks, 1, 1, user=b"b")],
            searches: [event(searches, 0, 6, user=b"b"), event(searches, 1, 2, user=b"a")]}
    assert merge(logs, per_poll=100) == [(5, "click"), (1, "click"), (6, "search"), (2, "search")]


def test_the_merge_follows_the_record_timestamps_as_the_live_worker_does():
    """A click whose producer stamped it 1,003 carries a ts a month ahead (the worker dead-lettered
    it as future_ts), between clicks of 1,002 and 1,004. Merged by its ts, it held the clicks after
    it back until the browse partition had ended: 1,004 and 1,006 came after 1,005 and 1,007, where
    the live worker's aligner, which orders by record timestamp, applied them in turn."""
    clicks, browses = TP("click", 0), TP("browse", 0)
    month = 30 * 86_400_000
    logs = {clicks: [event(clicks, 0, 1_000), event(clicks, 1, 1_002), event(clicks, 2, month, stamp=1_003),
                     event(clicks, 3, 1_004), event(clicks, 4, 1_006)],
            browses: [event(browses, i, ts) for i, ts in enumerate([1_001, 1_003, 1_005, 1_007])]}
    assert merge(logs, after=2_000) == [(1_000, "click"), (1_001, "browse"), (1_002, "click"), (1_003, "browse"),
                                        (month, "click"), (1_004, "click"), (1_005, "browse"), (1_006, "click"),
                                        (1_007, "browse")]


def test_records_stamped_in_one_millisecond_merge_by_their_events_ts():
    """A producer that does not set the record timestamp stamps the time it sends, the same
    millisecond for a dozen events of a log streamed at full speed. The merge took those in topic
    order (browse before click) where the live worker's aligner now orders them by their ts."""
    clicks, browses = TP("click", 0), TP("browse", 0)
    logs = {clicks: [event(clicks, 0, 4_000, stamp=500), event(clicks, 1, 5_000, stamp=500)],
            browses: [event(browses, 0, 9_000, stamp=500), event(browses, 1, 9_500, stamp=501)]}
    assert merge(logs) == [(4_000, "click"), (5_000, "click"), (9_000, "browse"), (9_500, "browse")]


def test_records_stamped_when_sent_long_after_their_events_merge_by_their_ts():
    """Two producers streaming a historical log at once, one per event type, each leaving the record
    timestamp the time of sending (the window and its grace here 1,000 ms): the search, the user's
    newest event, was sent first. By record timestamp it went before the user's older clicks, which
    the live worker then dead-lettered as `late`; the merge now orders those records by their ts, as
    the worker does. A record within the allowance of its ts keeps its record timestamp."""
    clicks, searches = TP("click", 0), TP("search", 0)
    logs = {clicks: [event(clicks, i, ts, stamp=10_000 + i) for i, ts in enumerate([100, 200, 300])],
            searches: [event(searches, 0, 250, stamp=9_000)]}
    assert merge(logs) == [(250, "search"), (100, "click"), (200, "click"), (300, "click")]  # by record timestamp
    assert merge(logs, allowed_ms=1_000) == [(100, "click"), (200, "click"), (250, "search"), (300, "click")]
    near = {clicks: [event(clicks, 0, 9_500, stamp=10_000)], searches: [event(searches, 0, 9_800, stamp=9_900)]}
    assert merge(near, allowed_ms=1_000) == [(9_800, "search"), (9_500, "click")]  # a live producer's delay


def test_a_record_stamped_after_the_range_does_not_hold_back_its_partition():
    """A record stamped after `to` (its event is too, and the replay skips it) is merged where its
    partition has it, not after every other partition has ended."""
    clicks, browses = TP("click", 0), TP("browse", 0)
    logs = {clicks: [event(clicks, 0, 1_000), event(clicks, 1, 10**15), event(clicks, 2, 1_004)],
            browses: [event(browses, i, ts) for i, ts in enumerate([1_001, 1_003, 1_005])]}
    assert merge(logs, after=2_000) == [(1_000, "click"), (10**15, "click"), (1_001, "browse"), (1_003, "browse"),
                                        (1_004, "click"), (1_005, "browse")]
    assert merge(logs) == [(1_000, "click"), (1_001, "browse"), (1_003, "browse"), (1_005, "browse"),
                           (10**15, "click"), (1_004, "click")]  # without `after`: at the end
    first = {clicks: [event(clicks, 0, 10**15), event(clicks, 1, 1_000)], browses: [event(browses, 0, 999)]}
    assert merge(first, after=2_000) == [(10**15, "click"), (999, "browse"), (1_000, "click")]


def test_a_range_is_named_to_the_millisecond():
    """The `replay` field and the plan named --to 05:47:00.500 as 05:47:00, the end of a range its
    vector at 05:47:00.000 was in."""
    from stream_app.replay import iso, parse_time

    assert iso(parse_time("2026-12-06T05:47:00.500Z", "--to")) == "2026-12-06T05:47:00.500Z"
    assert iso(parse_time("2026-12-06T05:47:00Z", "--to")) == "2026-12-06T05:47:00Z"
    assert iso(parse_time("2026-12-06T04:42:00.123456789Z", "--from")) == "2026-12-06T04:42:00.123Z"  # ms, floored
    assert iso(253_402_300_799_999) == "9999-12-31T23:59:59.999Z"

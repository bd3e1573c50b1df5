"""Where a partition's records end (stream_app.delivered), against a log held in memory: which
offsets hold records a consumer is given, and which hold transaction markers, which it is not."""
from __future__ import annotations

import time
from collections import namedtuple
from types import SimpleNamespace

import pytest

from stream_app.delivered import DeliveredEnds, delivered_end

TP = namedtuple("TP", "topic partition")("events.browse", 3)


class LogReader:
    """A kafka-python consumer of one partition: ``records`` are the offsets holding records, every
    other offset below ``end`` a marker; each poll gives up to ``batch`` offsets' worth. ``answers``
    False: a broker that never returns a fetch."""

    def __init__(self, records, end, begin=0, batch=2, answers=True):
        self.records, self.end, self.begin, self.batch, self.answers = set(records), end, begin, batch, answers
        self.pos = None
        self.polls = 0
        self.seeks = []

    def assign(self, tps):
        pass

    def seek(self, tp, offset):
        self.pos = offset
        self.seeks.append(offset)

    def position(self, tp):
        return self.pos

    def beginning_offsets(self, tps):
        return {tp: self.begin for tp in tps}

    def poll(self, timeout_ms):
        self.polls += 1
        if not self.answers:
            time.sleep(timeout_ms / 1000 / 20)
            return {}
        upto = min(self.end, self.pos + self.batch)
        got = [SimpleNamespace(offset=o) for o in range(self.pos, upto) if o in self.records]
        self.pos = upto
        return {TP: got} if got else {}

    def close(self):
        pass


@pytest.mark.parametrize("records, begin, end, want", [
    ([0, 1, 2], 0, 3, 3),  # no marker: the end offset itself
    ([0, 1, 2], 0, 4, 3),  # a commit marker at 3
    ([0, 1, 3, 4], 0, 6, 5),  # two transactions: records 0-1, marker 2, records 3-4, marker 5
    ([0] + [], 0, 12, 1),  # a record, then 11 markers (aborted empty transactions): read back 8, 64
    ([], 0, 2, 0),  # only markers: nothing to receive
    ([], 7, 7, 0),  # retention deleted everything: first offset = end offset > 0
    ([8, 9], 8, 11, 10),  # retention deleted 0-7, a marker at 10
])
def test_the_offset_after_the_last_record(records, begin, end, want):
    assert delivered_end(LogReader(records, end, begin), TP, begin, end) == want


@pytest.mark.parametrize("records, end, seeks", [
    (range(100), 101, [93]),  # a transaction's records and its marker: one step, 8 back
    (range(100), 100, [92]),  # no marker
    ([0, 1], 20, [12, 0]),  # 18 markers: 8 back, then 64 (from the first offset)
    (range(80), 180, [172, 116, 0]),
])
def test_the_tail_is_read_back_8_offsets_first_then_8_times_more_each_step(records, end, seeks):
    """Read back 1 offset first, a partition ended by a transaction's marker took two steps, and
    the second waited for the fetch the first left at the end (0.53 s against 0.004 s)."""
    reader = LogReader(records, end, batch=500)
    assert delivered_end(reader, TP, 0, end) == max(records) + 1
    assert reader.seeks == seeks


def test_a_tail_not_read_in_time_is_a_timeout():
    with pytest.raises(TimeoutError) as err:
        delivered_end(LogReader([0], 2, answers=False), TP, 0, 2, wait_s=0.05)
    assert str(err.value) == "the tail of events.browse[3] was not read within 0.05 s"


def wait_idle(ends: DeliveredEnds) -> None:
    deadline = time.monotonic() + 5
    while ends._asked and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not ends._asked


def test_a_read_is_kept_per_end_offset_and_a_timeout_is_not_kept():
    """A read that timed out was kept as the end offset, so a partition ended by a marker counted
    as behind until its next record, however the broker answered afterwards."""
    reader = LogReader([0], 2, answers=False)
    ends = DeliveredEnds(lambda: reader, wait_s=0.05)
    try:
        ends.ask("events.browse", 3, 2)
        wait_idle(ends)
        assert ends.get("events.browse", 3, 2) is None and reader.polls > 0
        reader.answers = True  # the broker answers again: the next ask reads
        ends.ask("events.browse", 3, 2)
        wait_idle(ends)
        assert ends.get("events.browse", 3, 2) == 1
        assert ends.get("events.browse", 3, 3) is None  # another end offset: not read yet
    finally:
        ends.close()


def test_a_read_under_way_when_its_partition_is_revoked_is_not_kept():
    """The partition may come back after retention deleted its records: what a read found before
    the revocation would then hold the aligner to a record it can no longer receive."""
    import threading

    release = threading.Event()

    class HeldReader(LogReader):
        def beginning_offsets(self, tps):
            release.wait(5)  # the revocation comes while the read is under way
            return super().beginning_offsets(tps)

    ends = DeliveredEnds(lambda: HeldReader([0], 2))
    try:
        ends.ask("events.browse", 3, 2)
        ends.forget("events.browse", 3)
        release.set()
        wait_idle(ends)
        assert ends.get("events.browse", 3, 2) is None
        ends.ask("events.browse", 3, 2)  # read again once it is back
        wait_idle(ends)
        assert ends.get("events.browse", 3, 2) == 1
    finally:
        ends.close()

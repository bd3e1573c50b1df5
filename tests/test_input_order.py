"""stream_app.input_order.RunningBack: which input records run back in record time, by how much."""
from __future__ import annotations

import pytest

from stream_app.input_order import RunningBack


@pytest.mark.parametrize("records, expected", [
    # (topic, partition, offset, timestamp in s) in arrival order -> what see() returns for each; allowed 10 s:
    # (seconds older than the newest before it, whether older than the one just before it by more than 10 s)
    ([("c", 0, 0, 100.0)], [None]),  # the first record of a partition has nothing before it
    ([("c", 0, 0, 100.0), ("c", 0, 1, 105.0), ("c", 0, 2, 95.0), ("c", 0, 3, 94.0)],
     [None, None, None, (11.0, False)]),  # 10 s back is allowed, 11 s is not: from the newest, 105
    ([("c", 0, 0, 100.0), ("c", 0, 1, 80.0), ("c", 0, 2, 85.0), ("c", 0, 3, 90.0)],
     [None, (20.0, True), (15.0, False), None]),  # the newest stays 100 while later records are older
    ([("c", 0, 5, 100.0), ("c", 0, 3, 10.0), ("c", 0, 5, 0.0), ("c", 0, 6, 50.0)],
     [None, None, None, (50.0, True)]),  # offsets at or before the highest seen are read again: not compared
    ([("c", 0, 0, 100.0), ("c", 1, 0, 10.0), ("s", 0, 0, 20.0), ("c", 1, 1, 5.0), ("c", 0, 1, 50.0)],
     [None, None, None, None, (50.0, True)]),  # each topic's partition on its own
    ([("c", 0, 0, 100.0), ("c", 0, 1, 10_000.0), ("c", 0, 2, 101.0), ("c", 0, 3, 102.0)],
     [None, None, (9899.0, True), (9898.0, False)]),  # stamped far ahead: the order stepped back once
])
def test_a_record_is_counted_when_older_than_the_newest_before_it_by_more_than_allowed(records, expected):
    rb = RunningBack(10.0)
    assert [rb.see(*r) for r in records] == expected

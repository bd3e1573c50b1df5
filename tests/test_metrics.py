"""The worker's metrics that are computed, not counted: the consumer lag of a partition."""
from __future__ import annotations

import pytest

from stream_app.metrics import lag


@pytest.mark.parametrize("end, offsets, want", [
    # nothing known beyond the end (a new group the consumer has not placed yet): not known, since
    # retention may have deleted the records before it (was 392)
    (392, {}, None),
    (392, {"committed": 0}, 392),
    # a new group on a partition whose 392 records retention deleted: the fetcher reset to the
    # first offset there is, so nothing to read (was 392)
    (392, {"position": 392}, 0),
    (400, {"position": 392}, 8),  # 8 written since
    (400, {"committed": 250}, 150),  # nothing read since the assignment, not fetched yet
    (400, {"committed": 250, "position": 300}, 100),  # nothing read yet: where the consumer is
    # read to 259, fetched to 299: 260..299 wait in the worker's buffers, still to be applied
    (400, {"read": 259, "committed": 250, "position": 300}, 140),
    (400, {"read": 379, "committed": 250, "position": 300}, 20),
    (400, {"committed": 410}, 0),  # never negative
])
def test_lag_counts_from_the_furthest_known_offset(end, offsets, want):
    assert lag(end, **offsets) == want

"""Input partitions whose record timestamps run back: a producer that sends out of ``ts`` order.

The worker applies a partition's three topics by record timestamp (:mod:`stream_app.alignment`),
which the contract's producers set to the event's ``ts`` (and by the event's ``ts`` where the
record timestamp is the time of sending, long after it: :func:`stream_app.alignment.order_timestamp`;
those order timestamps are what this compares). A producer that stamps ``ts`` but sends a
log out of that order, such as one user's history after another's, makes a topic's timestamps run
back at each user. A user's event on another topic could then be applied before the same user's
older events further down this one, and those were ``late`` when more than the window plus its
grace older (MovieLens' live-evaluation users sent user by user: 1,738 of 11,639,
``bench/README.md``). The aligner now keeps each user's order (``step`` below), but only among the
records it has been given: a user's older record arriving more than its wait after a newer one on
another topic is still ``late``. The dead letters say ``late``; this says why, so an operator can
fix the producer (``interest-stream load jsonl`` sends every log in ``ts`` order).

Only a step back larger than the window plus its grace is counted: a smaller one cannot make an
event ``late``. Records read again (a hole the consumer reads again, a partition back after a
rebalance) are at or before the highest offset seen, and are not compared. Each record is compared
with the newest before it, not with the one just before it, so a log sent newest first counts too;
a record stamped far ahead of the rest (an event further ahead than its topic takes goes with the
time it is sent, ``stream_app.produce.record_timestamp``) makes every record after it count. The
count says how many records came after a newer one, not why.

What the aligner is told (``step``): whether the record is older than the one just before it by
more than the window plus its grace, where the topic's order itself steps back (at each user of a
log sent user by user; once after a record stamped far ahead). For a while after that, the aligner
no longer takes the topic's head to mean that nothing older is to come
(:meth:`stream_app.alignment.Aligner.ran_back`).
"""
from __future__ import annotations

from typing import Hashable, NamedTuple


class Back(NamedTuple):
    seconds: float  # older than the newest record before it in its partition, more than allowed
    step: bool  # older than the record just before it by more than allowed too


class RunningBack:
    def __init__(self, allowed_s: float) -> None:
        self.allowed_s = allowed_s  # the window plus its grace, in seconds (Faust's record timestamps)
        # (topic, partition) -> [highest offset, newest timestamp, timestamp of the highest offset]
        self._newest: dict[tuple[Hashable, int], list] = {}
        self.said: set[tuple[Hashable, int]] = set()  # partitions the worker has logged a warning for

    def see(self, topic: Hashable, partition: int, offset: int, timestamp: float) -> Back | None:
        """How many seconds the record at ``offset`` is older than the newest record before it in
        its partition, when that is more than ``allowed_s``, and whether it is so older than the
        record just before it too; else None. A record at or before the highest offset seen (read
        again) is not compared."""
        seen = self._newest.get((topic, partition))
        if seen is None:
            self._newest[(topic, partition)] = [offset, timestamp, timestamp]
            return None
        if offset <= seen[0]:
            return None
        seen[0] = offset
        previous, seen[2] = seen[2], timestamp
        back = seen[1] - timestamp
        if back <= 0:
            seen[1] = timestamp
            return None
        return Back(back, previous - timestamp > self.allowed_s) if back > self.allowed_s else None

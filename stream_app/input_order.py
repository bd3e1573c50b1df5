"""Input partitions whose record timestamps run back: a producer that sends out of ``ts`` order.

The worker applies a partition's three topics by record timestamp (:mod:`stream_app.alignment`),
which the contract's producers set to the event's ``ts``. A producer that stamps ``ts`` but sends a
log out of that order, such as one user's history after another's, makes a topic's timestamps run
back at each user. A user's event on another topic can then be applied before the same user's
older events further down this one, and those are ``late`` when more than the window plus its grace
older (MovieLens' live-evaluation users sent user by user: 1,738 of 11,639, ``bench/README.md``).
The dead letters say ``late``; this says why, so an operator can fix the producer
(``interest-stream load jsonl`` sends every log in ``ts`` order).

Only a step back larger than the window plus its grace is counted: a smaller one cannot make an
event ``late``. Records read again (a hole the consumer reads again, a partition back after a
rebalance) are at or before the highest offset seen, and are not compared. Each record is compared
with the newest before it, not with the one just before it, so a log sent newest first counts too;
a record stamped far ahead of the rest (an event further ahead than its topic takes goes with the
time it is sent, ``stream_app.produce.record_timestamp``) makes every record after it count. The
count says how many records came after a newer one, not why.
"""
from __future__ import annotations

from typing import Hashable


class RunningBack:
    def __init__(self, allowed_s: float) -> None:
        self.allowed_s = allowed_s  # the window plus its grace, in seconds (Faust's record timestamps)
        self._newest: dict[tuple[Hashable, int], list] = {}  # (topic, partition) -> [highest offset, newest timestamp]
        self.said: set[tuple[Hashable, int]] = set()  # partitions the worker has logged a warning for

    def see(self, topic: Hashable, partition: int, offset: int, timestamp: float) -> float | None:
        """How many seconds the record at ``offset`` is older than the newest record before it in
        its partition, when that is more than ``allowed_s``; else None. A record at or before the
        highest offset seen (read again) is not compared."""
        seen = self._newest.get((topic, partition))
        if seen is None:
            self._newest[(topic, partition)] = [offset, timestamp]
            return None
        if offset <= seen[0]:
            return None
        seen[0] = offset
        back = seen[1] - timestamp
        if back <= 0:
            seen[1] = timestamp
            return None
        return back if back > self.allowed_s else None

"""Where a partition's records end: the offset after the last record a consumer is given below an
end offset, 0 when it is given none.

The end offset is not that offset in two cases. A transaction's commit or abort marker takes an
offset that no consumer is given, so a partition last written by a transactional producer ends one
past anything a consumer receives. And a partition whose records retention deleted has an end
offset above 0 and nothing to give. Two things need the offset a consumer will have received once
it has read everything written so far:
- ``forget``: the offsets up to which the worker must have applied the user's events;
- the worker's aligner: whether a topic's partition that is quiet has caught up
  (:class:`stream_app.ingest.Received`). By the end offset alone, such a partition never did, and
  the other topics' events waited the aligner's 2 s each.

The tail is read with a kafka-python consumer that belongs to no group, backwards, 8, 64, 512…
offsets at a time (each transaction adds one marker after its records). Not 1 first: a partition a
transactional producer wrote last ends with its marker, so 1 back never held the record, and the
fetch the reader left waiting at the end held the next step back for the broker's fetch wait. A
tail of one record and its marker took 0.53 s to read that way (0.23 s with a fetch wait of 100
ms, :data:`READER_FETCH_WAIT_MS`), and 0.004 s 8 back at once. The worker's aligner waits for
these reads (its quiet topics, one after the other) at most 2 s: under load two of them took 2 s,
and every message waiting was released as forced.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from . import metrics

log = logging.getLogger("interest_stream")

DELIVERED_WAIT_S = 10.0  # the longest the tail of one partition is read
FIRST_BACK = 8  # offsets read back from the end at the first step; each next step 8 times more
# the fetch wait of the worker's reader of tails and holes (kafka-python's default, 500 ms, is how
# long a fetch at the end of a partition waits, and a seek does not cut it short)
READER_FETCH_WAIT_MS = 100


def delivered_end(reader, tp, begin: int, end: int, wait_s: float = DELIVERED_WAIT_S) -> int:
    """The offset after the last record ``reader`` (a kafka-python consumer) is given in
    ``[begin, end)`` of ``tp``, 0 when there is none (``begin``: the partition's first offset).
    TimeoutError when the tail is not read within ``wait_s``."""
    reader.assign([tp])
    back, deadline = FIRST_BACK, time.monotonic() + wait_s
    while end > begin:
        start = max(begin, end - back)
        reader.seek(tp, start)
        last = -1
        while reader.position(tp) < end:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the tail of {tp.topic}[{tp.partition}] was not read within {wait_s:g} s")
            got = reader.poll(timeout_ms=200).get(tp, ())
            last = max([last] + [r.offset for r in got if r.offset < end])
        if last >= 0 or start == begin:
            return last + 1
        back *= 8
    return 0  # retention deleted everything before the end


def delivered_ends(reader, tps: list) -> dict:
    """:func:`delivered_end` of each of ``tps``; a tail not read in time gives its end offset, so
    whoever waits for it waits longer, never less (``forget``)."""
    begins, ends = reader.beginning_offsets(tps), reader.end_offsets(tps)
    out = {}
    for tp in tps:
        try:
            out[tp] = delivered_end(reader, tp, begins[tp], ends[tp])
        except TimeoutError:
            out[tp] = ends[tp]
    return out


class DeliveredEnds:
    """The worker's :func:`delivered_end` of its input partitions, each read once per end offset,
    in a daemon thread of its own: the event loop never waits for the broker, and a read under
    way (a broker that is down) does not hold the process at exit. :meth:`get` answers from what
    was read; :meth:`ask` starts a read. ``make_reader()`` makes the thread's kafka-python consumer
    the first time it is needed."""

    def __init__(self, make_reader: Callable[[], object], wait_s: float = DELIVERED_WAIT_S):
        self._make_reader = make_reader
        self._wait_s = wait_s
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        # (topic, partition) -> (end offset, its delivered end); the thread writes a whole entry
        # at once, which the event loop reads under the GIL
        self._known: dict[tuple[str, int], tuple[int, int]] = {}
        self._asked: set[tuple[str, int]] = set()
        # (topic, partition) -> how often it was revoked: a read under way across a revocation is
        # not kept (:meth:`forget`); the lock makes the check and the keeping one step
        self._revoked: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def get(self, topic: str, partition: int, end: int) -> int | None:
        """The delivered end of the partition whose end offset is ``end``; None while not read."""
        known = self._known.get((topic, partition))
        return known[1] if known is not None and known[0] == end else None

    def ask(self, topic: str, partition: int, end: int) -> None:
        """Read the partition's tail up to ``end``, unless a read of it is under way."""
        key = (topic, partition)
        if key in self._asked:
            return
        self._asked.add(key)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="delivered-ends", daemon=True)
            self._thread.start()
        self._requests.put((key, end, self._revoked.get(key, 0)))

    def forget(self, topic: str, partition: int) -> None:
        """Drop what was read of a partition, and what a read under way will find (revoked:
        retention may delete its records before it comes back)."""
        key = (topic, partition)
        with self._lock:
            self._revoked[key] = self._revoked.get(key, 0) + 1
            self._known.pop(key, None)

    def close(self) -> None:
        """Stop the thread once its read under way is over (without waiting for it)."""
        self._requests.put(None)

    def _run(self) -> None:
        from kafka import TopicPartition

        reader = None
        try:
            while (request := self._requests.get()) is not None:
                key, end, revoked = request
                try:
                    if reader is None:
                        reader = self._make_reader()
                    tp = TopicPartition(*key)
                    begin = reader.beginning_offsets([tp])[tp]
                    found = delivered_end(reader, tp, begin, end, self._wait_s)
                    with self._lock:
                        if self._revoked.get(key, 0) == revoked:
                            self._known[key] = (end, found)
                    metrics.ALIGN_TAIL_READS.inc()
                except Exception as exc:  # a timeout included: not kept, so the next ask reads again;
                    # meanwhile the partition counts as behind, as by its end offset
                    log.debug("could not read the tail of %s[%d]: %r", *key, exc)
                finally:
                    self._asked.discard(key)
        finally:
            if reader is not None:
                reader.close()

"""Flushes: the write-behind cache (:mod:`stream_app.state_cache`) written to the ``users`` table,
then the input events it covers acknowledged to Faust.

What this relies on in faust-streaming 0.15 (read in its source; the tests against the broker
check each consequence):

* ``table[k] = v`` (``Table.on_key_set``) sends a changelog record at once
  (``send_changelog`` -> ``changelog_topic.send_soon``) to the partition ``partition_for_key``
  takes from ``current_event()``, and the RocksDB store's ``_set`` puts the value into that
  partition's database, also from ``current_event()``: outside an event both raise. A flush runs
  from a timer, at a rebalance or at shutdown, where no event is current, so
  :func:`current_partition` makes a stand-in current for partition p, carrying only what those
  two read, ``message.partition`` and ``message.topic`` (checked to have the table's partition
  count; the control topic, co-partitioned with the table, is given). Deletes find the key's
  database themselves.
* The ingest agent iterates ``stream.noack()``: Faust does not acknowledge an input event when
  the agent moves past it. The cache holds it until its partition is flushed, then
  :meth:`faust.Event.ack` makes its offset committable.
* Faust commits an offset only when every offset before it in the partition is acknowledged
  (``Consumer._new_offset``), and before committing it waits for the producer to deliver every
  record sent so far (``Consumer._commit_offsets`` -> ``producer.flush()``, which drains Faust's
  send buffer and aiokafka's). So an input offset is committed only after the changelog records
  of every state change it caused: a crash before that redelivers the event, and the restored
  state either lacks it (it is applied) or has it (its ``event_id`` marks it a duplicate).
* At a rebalance Faust revokes every partition (eager protocol) and, before handing them over,
  waits for its streams' unacknowledged events (``stream_wait_empty``) and flushes the producer:
  :class:`stream_app.app.InterestApp` flushes every partition first, so that wait ends and the new
  owner recovers the newest states from the changelog; then the cache forgets those partitions.
  At shutdown the app flushes before Faust stops its consumer (which commits what is acknowledged).
"""
from __future__ import annotations

import asyncio
import time
import weakref
from contextlib import contextmanager

from faust.streams import _current_event  # what faust.streams.current_event() reads

from . import metrics

FLUSH_CHUNK = 500  # users written between two yields to the event loop (heartbeats, web, other agents)


class _Message:
    __slots__ = ("topic", "partition")

    def __init__(self, topic: str, partition: int):
        self.topic, self.partition = topic, partition


class PartitionContext:
    """What Faust's table and RocksDB store read from the current event: its message's partition
    (where the value goes) and topic (checked for the table's partition count)."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, topic: str, partition: int):
        self.message = _Message(topic, partition)


@contextmanager
def current_partition(topic: str, partition: int):
    """Table writes inside this block go to ``partition`` (see the module docstring)."""
    ctx = PartitionContext(topic, partition)
    token = _current_event.set(weakref.ref(ctx))
    try:
        yield ctx
    finally:
        _current_event.reset(token)


class Flusher:
    """Writes a partition's changed users to ``table`` and then acknowledges its held events;
    one flush at a time."""

    def __init__(self, table, cache, context_topic: str, chunk: int = FLUSH_CHUNK):
        self.table = table
        self.cache = cache
        self.context_topic = context_topic  # co-partitioned with the table
        self.chunk = chunk
        self.lock = asyncio.Lock()
        self.last = time.monotonic()

    async def flush(self, reason: str, partitions=None) -> int:
        """Flush ``partitions`` (default: every one with changes or held events); returns how many
        table records were written."""
        async with self.lock:
            t0 = time.perf_counter()
            todo = self.cache.partitions_to_flush() if partitions is None else sorted(partitions)
            records = 0
            for p in todo:
                records += await self._flush_partition(p)
            self.last = time.monotonic()
            if todo:
                metrics.FLUSHES.labels(reason).inc()
                metrics.FLUSH_SECONDS.observe(time.perf_counter() - t0)
            metrics.CACHE_BYTES.set(self.cache.bytes)
            metrics.CACHE_USERS.set(self.cache.users())
            return records

    async def _flush_partition(self, p: int) -> int:
        f = self.cache.take(p)
        table, topic = self.table, self.context_topic
        nbytes = 0
        for i in range(0, len(f.writes), self.chunk):
            with current_partition(topic, p):
                for key, raw in f.writes[i:i + self.chunk]:
                    table[key] = raw  # one changelog record and one RocksDB put per changed user
                    nbytes += len(raw)
            await asyncio.sleep(0)
        if f.deletes:
            with current_partition(topic, p):
                for key in f.deletes:
                    if key in table:
                        del table[key]  # a changelog tombstone
        for event in f.events:  # their state changes are now in the producer ahead of any commit
            event.ack()
        metrics.CHANGELOG_RECORDS.inc(f.records)
        metrics.CHANGELOG_BYTES.inc(nbytes)
        return f.records

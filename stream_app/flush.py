"""Flushes: the write-behind cache (:mod:`stream_app.state_cache`) written to the ``users`` table,
then the input events it covers acknowledged to Faust.

A partition's flush writes like Kafka Streams' record cache and Quix Streams' checkpoint: each
changed user once, as one changelog record; the changelog records of the partition go out as
record batches (``AIOKafkaProducer.send_batch``) and the RocksDB puts as one ``WriteBatch``, and
the partition database's persisted changelog offset is set once, when the last batch is
acknowledged. Faust's table API would cost one ``send_soon`` (with its futures and callback) and
one persisted-offset write per record: measured at about 45 us per record against 8 here. With a
store other than RocksDB (``memory://``) the flush writes through the table API instead.

The interval flush takes one partition at a time: its timer ticks ``INTEREST_PARTITIONS`` times
per ``INTEREST_FLUSH_S`` and each tick flushes the partition whose turn it is
(:func:`due_partition`), so each partition is still written once per ``INTEREST_FLUSH_S``. A flush
runs in the event loop, between the ingest agent's events: at 4,500 events/s
(``bench/freshness.py``), written all at once a flush wrote 10,276 users and took 1.68 s of the
loop on average, in turns 1,649 users and 0.21 s. The other triggers (a full cache, a rebalance,
shutdown, a forget) flush every partition they concern at once, as before.

What this relies on in faust-streaming 0.15 (read in its source; the tests against the broker
check each consequence):

* The changelog topic of a table is ``table.changelog_topic``; recovery and standbys read it
  record by record, whoever wrote it, and start after the offset ``Store.persisted_offset``
  returns (``set_persisted_offset`` records it in the partition's database). The RocksDB store
  keeps one database per partition (``Store._db_for_partition``, the one private call here, the
  same ``Store.apply_changelog_batch`` uses for recovery) and finds a key without an event by
  looking in each database.
* On the table-API path: ``table[k] = v`` (``Table.on_key_set``) sends a changelog record to the
  partition ``partition_for_key`` takes from ``current_event()``, and the RocksDB store's
  ``_set`` puts the value into that partition's database, also from ``current_event()``: outside
  an event both raise. A flush runs from a timer, at a rebalance or at shutdown, where no event
  is current, so :func:`current_partition` makes a stand-in current for partition p, carrying
  only what those two read, ``message.partition`` and ``message.topic`` (checked to have the
  table's partition count; the control topic, co-partitioned with the table, is given).
* The ingest agent iterates ``stream.noack()``: Faust does not acknowledge an input event when
  the agent moves past it. The cache holds its message until its partition is flushed, then
  ``Message.ack(consumer)`` (what :meth:`faust.Event.ack` calls) makes its offset committable.
  The flush acknowledges only once the broker has taken every changelog batch it sent
  (:func:`changelog_error`; with a store written through Faust's table API, ``memory://``, it
  does not see the broker's answer): Faust's commit waits for the producer to have sent what it
  was given (``Consumer._commit_offsets`` -> ``producer.flush()``), whether or not the broker
  took it. If the broker refused a batch, the flush's users are written again by the next flush
  and its events held until then (``StateCache.unwritten``); the last flush of a partition lets
  them go unacknowledged instead, as it does undelivered dead letters (below). A producer that
  raises counts as a refusal. The RocksDB batch is written before the first await (a user the
  flush deletes has left the cache, and a lookup meanwhile would cache its old state again from
  the database), so until the broker has taken every batch, and after a refusal, the partition's
  RocksDB may hold states its changelog lacks, and the events read again would count as
  duplicates of them: a ``.unwritten`` file beside the database from the write until then makes
  the next start rebuild it from the changelog (:mod:`stream_app.local_state`), and after a
  refusal the last flush also sets the database's persisted offset past any changelog
  (:data:`AHEAD_OF_ANY_CHANGELOG`), so that Faust's recovery refuses it (``ConsistencyError``)
  should the partition come back to this process before a restart.
* Faust commits an offset only when every offset before it in the partition is acknowledged
  (``Consumer._new_offset``) provided the acknowledgements come in offset order, as a flush gives
  them: its check for an unacknowledged head lets one message right after the last commit go
  (``min(acked) - committed > 1``) and is skipped before any commit, and after a revocation,
  which forgets the committed offset before the last commit; and it commits over the offsets a
  jump of its fetcher skipped. The worker's consumer keeps those holes from being committed over
  (:mod:`stream_app.holes`). So an input offset is
  committed only after the changelog records of every state change it caused: a crash before
  that redelivers the event, and the restored state either lacks it (it is applied) or has it
  (its ``event_id`` marks it a duplicate).
* At a rebalance Faust revokes every partition (eager protocol) and, before handing them over,
  waits for its streams' unacknowledged events (``stream_wait_empty``) and flushes the producer:
  :class:`stream_app.app.InterestApp` flushes every partition first, so that wait ends and the new
  owner recovers the newest states from the changelog; then the cache forgets those partitions.
  At shutdown the app flushes before Faust stops its consumer (which commits what is acknowledged).
* That wait does not cover Faust's own send buffer (``ProducerBuffer.flush_atmost`` gives up
  after 0.1 s without a send, and the record its task is sending, waiting for the batch before it
  to drain for example, is no longer in the buffer), nor a send that failed: Faust logs a warning.
  So a dead letter (``Topic.send_soon``) could be lost while its input offset was committed. A
  dead-lettered message is therefore acknowledged only by a flush that finds its dead letter's
  future done without an error (:meth:`Flusher._settle_letters`); a failed one is sent again, and
  until then its offset is the floor the worker's consumer does not commit past
  (:meth:`stream_app.consumer.Consumer._new_offset`, :meth:`StateCache.letter_floor`), since the
  messages after it are acknowledged. The last flush of a partition (rebalance, shutdown) waits
  up to :data:`LETTER_WAIT_S`, then lets go of the undelivered ones unacknowledged, keeping their
  floor until the partition is dropped, and the partition's next owner reads them again. Letting
  go removes them from the messages Faust's wait for acknowledgements waits for
  (``Consumer._unacked_messages``, a weak set): Faust's stream still refers to the last message
  it delivered, so without that a rebalance whose last input message is such an event waited
  for it forever.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

from faust.streams import _current_event  # what faust.streams.current_event() reads
from faust.types import TP

from . import metrics
from .local_state import unwritten_marker
from .state_cache import Flush, is_delivered

log = logging.getLogger("interest_stream")

FLUSH_CHUNK = 500  # users written between two yields to the event loop (heartbeats, web, other agents)
LETTER_WAIT_S = 5.0  # at a rebalance or shutdown, how long a flush waits for undelivered dead letters
AHEAD_OF_ANY_CHANGELOG = 2**62  # a persisted offset that marks a partition database unusable (see above)
LAST_FLUSHES = ("rebalance", "shutdown")  # a partition's last flush in this process


def let_go(consumer, messages) -> None:
    """Stop Faust's rebalance or stop from waiting for ``messages``, left unacknowledged for the
    partition's next owner to read (``Consumer._unacked_messages``, see the module docstring)."""
    for message in messages:
        consumer._unacked_messages.discard(message)


async def send_batches(producer, topic: str, partition: int, records, yield_every: int = FLUSH_CHUNK) -> list:
    """``(key, value)`` or ``(key, value, headers)`` records to one partition of ``topic`` as
    aiokafka record batches (a value of None is a tombstone; headers as ``[(name, bytes)]``), in
    order; returns ``(batch future, records in it)`` per batch."""
    sent = []
    batch, in_batch = producer.create_batch(), 0
    for i, (key, value, *headers) in enumerate(records):
        headers = headers[0] if headers else []
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:  # full: send, start another
            sent.append((await producer.send_batch(batch, topic, partition=partition), in_batch))
            batch, in_batch = producer.create_batch(), 0
            batch.append(key=key, value=value, timestamp=None, headers=headers)
        in_batch += 1
        if i % yield_every == yield_every - 1:
            await asyncio.sleep(0)
    sent.append((await producer.send_batch(batch, topic, partition=partition), in_batch))
    return sent


async def changelog_error(sent: list) -> BaseException | None:
    """Wait for the broker's answer to each ``(future, records)`` batch; the first error, if any."""
    results = await asyncio.gather(*(fut for fut, _ in sent), return_exceptions=True)
    return next((r for r in results if isinstance(r, BaseException)), None)


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


def due_partition(tick: int, partitions: int) -> int:
    """The partition whose interval flush is due at the ``tick``-th tick of a timer that ticks
    ``partitions`` times per INTEREST_FLUSH_S: each partition in turn, so each is flushed once per
    INTEREST_FLUSH_S, and a sixth of the users (with 6 partitions) at a time instead of all of
    them at once."""
    return tick % partitions


class Flusher:
    """Writes a partition's changed users to ``table`` and then acknowledges its held events;
    one flush at a time. ``producer`` gives the app's aiokafka producer, ``consumer`` Faust's;
    ``send_letter(key, value)`` sends a dead letter again and returns the send's future;
    ``forgotten(partition, forgets, last)`` is awaited once a flush wrote the deletes of forget
    requests (:class:`~stream_app.state_cache.Forget`, :meth:`StateCache.hold_forget`), after
    acknowledging them."""

    def __init__(self, table, cache, context_topic: str, producer, consumer, send_letter=None,
                 chunk: int = FLUSH_CHUNK, forgotten=None):
        self.ticks = 0  # of the interval timer (flush_turn)
        self.table = table
        self.cache = cache
        self.context_topic = context_topic  # co-partitioned with the table
        self.producer = producer
        self.consumer = consumer
        self.send_letter = send_letter
        self.forgotten = forgotten  # async (partition, forgets, last): deletes written (stream_app.control)
        self.unwritten: set[int] = set()  # partitions whose last changelog write failed
        self.chunk = chunk
        self.lock = asyncio.Lock()
        self.last = time.monotonic()

    async def flush(self, reason: str, partitions=None) -> int:
        """Flush ``partitions`` (default: every one with changes or held events); returns how many
        table records were written. The flush of a rebalance or shutdown is the partitions' last."""
        async with self.lock:
            t0 = time.perf_counter()
            todo = self.cache.partitions_to_flush() if partitions is None else sorted(partitions)
            records = 0
            for p in todo:
                records += await self._flush_partition(p, reason)
            self.last = time.monotonic()
            if todo:
                metrics.FLUSHES.labels(reason).inc()
                metrics.FLUSH_SECONDS.observe(time.perf_counter() - t0)
            metrics.CACHE_BYTES.set(self.cache.bytes)
            metrics.CACHE_USERS.set(self.cache.users())
            return records

    async def flush_turn(self, partitions: int) -> int:
        """The interval flush of the partition whose turn it is (:func:`due_partition`), when it
        has changes or held events; returns how many table records were written."""
        p = due_partition(self.ticks, partitions)
        self.ticks += 1
        if p not in self.cache.partitions_to_flush():
            return 0
        return await self.flush("interval", [p])

    async def _flush_partition(self, p: int, reason: str = "interval") -> int:
        f = self.cache.take(p, self._input_caps(p))
        try:
            return await self._write_and_acknowledge(f, p, reason)
        finally:
            self.cache.settled(f)  # its events count in the cache's bytes until now

    def _input_caps(self, p: int) -> dict:
        """How far the states written now may say their input was read (their ``in``,
        :func:`stream_app.state.note_input`): a consumer that cannot tell (a benchmark's) gives no
        caps, and the states record no input offset."""
        caps_of = getattr(self.consumer(), "input_caps", None)
        return {} if caps_of is None else caps_of(p, *self.cache.handled(p))

    async def _write_and_acknowledge(self, f: Flush, p: int, reason: str) -> int:
        if f.trimmed:
            self._trimmed(f)
        error = None
        batches = f.records and hasattr(self.table.data, "_db_for_partition")
        if f.records:
            if batches:
                try:
                    nbytes, sent = await self._write_batches(f)
                except Exception as exc:  # the producer closed or timed out: as if the broker refused
                    nbytes, sent, error = 0, [], exc
                error = error or await changelog_error(sent)  # the broker's answer to every batch
            else:
                nbytes = await self._write_through_table(f)
            metrics.CHANGELOG_RECORDS.inc(f.records)
            metrics.CHANGELOG_BYTES.inc(nbytes)
        consumer = self.consumer()
        if error is None:
            for message in f.messages:  # their state changes are in the changelog
                message.ack(consumer)
            for forget in f.forgets:  # so are their users' deletes
                forget.message.ack(consumer)
            if batches:  # the database holds nothing the changelog lacks
                self.unwritten.discard(p)
                unwritten_marker(Path(self.table.data.partition_path(p))).unlink(missing_ok=True)
        else:
            self._unwritten(f, error, consumer, reason)
        letters = self.cache.letters.get(p)
        if letters:
            await self._settle_letters(p, list(letters), consumer, reason, acknowledge=error is None)
        if f.forgets and error is None:
            await self.forgotten(p, f.forgets, last=reason in LAST_FLUSHES)
        return f.records

    def _trimmed(self, f: Flush) -> None:
        """Users whose state outgrew the largest record the changelog takes lost their oldest rows
        (:func:`stream_app.state.trim`): one line per flush of the partition, naming them."""
        rows = sum(n for _, n in f.trimmed)
        metrics.STATE_ROWS_TRIMMED.inc(rows)
        names = ", ".join(f"{key.decode(errors='replace')!r} ({n})" for key, n in f.trimmed[:3])
        more = f" and {len(f.trimmed) - 3} more" if len(f.trimmed) > 3 else ""
        log.warning("partition %d: %d user state(s) over %d bytes lost their oldest %d row(s) to fit the changelog: "
                    "%s%s; their counts miss those events, and a redelivered one among them would count again",
                    f.partition, len(f.trimmed), self.cache.max_record, rows, names, more)

    def _unwritten(self, f: Flush, error: BaseException, consumer, reason: str) -> None:
        """A flush whose changelog records the broker did not take: its events stay
        unacknowledged. Its users are written again by the partition's next flush, its events held
        until then; the last flush of a partition (rebalance, shutdown) lets them go instead, to be
        read again by its next owner (see the module docstring)."""
        metrics.CHANGELOG_FAILED.inc()
        topic = self.table.changelog_topic.get_topic_name()
        # RocksDB holds what the changelog lacks: rebuilt at the next start unless a flush succeeds first
        unwritten_marker(Path(self.table.data.partition_path(f.partition))).touch()
        self.unwritten.add(f.partition)
        if reason in LAST_FLUSHES:
            self.table.data.set_persisted_offset(TP(topic, f.partition), AHEAD_OF_ANY_CHANGELOG)
            let_go(consumer, f.messages)
            let_go(consumer, [forget.message for forget in f.forgets])
            log.error("changelog write to %s[%d] failed (%r) at the %s: its %d events stay uncommitted, to be read "
                      "again", topic, f.partition, error, reason, len(f.messages))
            return
        self.cache.unwritten(f)
        log.error("changelog write to %s[%d] failed (%r): its %d users are written again at the next flush, its %d "
                  "events uncommitted until then", topic, f.partition, error, f.records, len(f.messages))
        if f.forgets:
            log.error("%d forget request(s) of partition %d wait for their deletes to be written; their tombstones "
                      "follow", len(f.forgets), f.partition)

    async def _settle_letters(self, p: int, letters: list, consumer, reason: str, acknowledge: bool = True) -> None:
        """Acknowledge the dead-lettered messages whose dead letters were delivered; the interval
        flush also sends the failed ones again (once per INTEREST_FLUSH_S, not at every flush a full
        cache asks for). The rest wait for the partition's next flush. The last flush of a
        partition (rebalance, shutdown) waits for them up to LETTER_WAIT_S and then lets go of the
        messages unacknowledged (see the module docstring). A flush whose changelog write failed
        acknowledges none (``acknowledge`` False): earlier events of their topics are held again,
        and Faust must not see a later offset acknowledged before them."""
        last = reason in LAST_FLUSHES
        letters = [letter for letter in letters if letter.message is not None]  # not let go before
        if last and acknowledge:
            sending = [letter.sent for letter in letters if not letter.sent.done()]
            if sending:
                await asyncio.wait(sending, timeout=LETTER_WAIT_S)
        delivered, failed, undelivered = [], [], 0
        for letter in letters:
            sent = letter.sent
            if acknowledge and is_delivered(sent):
                letter.message.ack(consumer)
                delivered.append(letter)
            elif last:  # let go: Faust stops waiting for it; its offset stays the floor until the drop
                let_go(consumer, [letter.message])
                letter.message = None
                undelivered += 1
            elif sent.done() and reason == "interval":  # failed (or cancelled): never silent, never dropped
                failed.append((letter, None if sent.cancelled() else sent.exception()))
                letter.sent = self.send_letter(letter.key, letter.value)
        self.cache.release_letters(p, delivered)
        if failed:  # one line per flush of the partition, however many
            (first, error), more = failed[0], len(failed) - 1
            log.error("dead letter of %s[%d]@%d was not delivered (%r); sending it %sagain", first.topic, p,
                      first.offset, error, f"and {more} more of the partition's " if more else "")
            metrics.DEAD_LETTERS_RESENT.inc(len(failed))
        if undelivered:
            log.warning("partition %d: %d dead letter(s) not delivered in %g s; their input events stay "
                        "uncommitted, to be read again", p, undelivered, LETTER_WAIT_S)

    async def _write_batches(self, f: Flush) -> tuple[int, list]:
        """Record batches to the changelog partition, one RocksDB write batch, and the persisted
        offset once the last batch is acknowledged; returns the bytes written and the batches'
        ``(future, records)``."""
        from rocksdict import WriteBatch

        store = self.table.data
        topic = self.table.changelog_topic.get_topic_name()
        db_batch = WriteBatch(raw_mode=True)
        nbytes = 0
        records = [(key, raw) for key, raw in f.writes] + [(key, None) for key in f.deletes]
        for key, raw in records:
            if raw is None:
                db_batch.delete(key)
            else:
                db_batch.put(key, raw)
                nbytes += len(raw)
        # The database before the first await: the cache dropped the users this flush deletes
        # (StateCache.take), and a lookup meanwhile (scoring, an event, a web view) would find
        # their old states here and cache them again. Until the broker has taken every batch the
        # database holds what the changelog may lack, which a crash meanwhile would leave
        # unnoticed: the marker makes the next start rebuild it (removed once the broker took them).
        unwritten_marker(Path(store.partition_path(f.partition))).touch()
        store._db_for_partition(f.partition).write(db_batch)
        sent = await send_batches(self.producer(), topic, f.partition, records, self.chunk)
        last, n = sent[-1]
        tp = TP(topic, f.partition)

        def persisted(fut) -> None:
            if not fut.cancelled() and fut.exception() is None and fut.result() is not None:
                store.set_persisted_offset(tp, fut.result().offset + n - 1)

        last.add_done_callback(persisted)
        return nbytes, sent

    async def _write_through_table(self, f: Flush) -> int:
        """Faust's table API, record by record (stores without per-partition databases)."""
        table, topic = self.table, self.context_topic
        nbytes = 0
        # The deletes before the first await, as in _write_batches: the cache dropped these users
        # (StateCache.take), and a lookup while the writes yield would cache their old states again
        if f.deletes:
            with current_partition(topic, f.partition):
                for key in f.deletes:
                    if key in table:
                        del table[key]  # a changelog tombstone
        for i in range(0, len(f.writes), self.chunk):
            with current_partition(topic, f.partition):
                for key, raw in f.writes[i:i + self.chunk]:
                    table[key] = raw
                    nbytes += len(raw)
            await asyncio.sleep(0)
        return nbytes

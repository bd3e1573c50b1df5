"""Faust's Kafka consumer, without four asyncio tasks for every message it hands to a stream, and
without a fetch that waits 1.5 s for partitions that have nothing to read.

faust-streaming 0.15's fetcher (``Consumer._drain_messages``) delivers each message with::

    await self.wait_first(callback(message), self.suspend_flow.wait())

so that a delivery blocked when a rebalance suspends the flow is abandoned (the message is read
again from the committed offset afterwards). mode's ``Service.wait_first`` makes a task of each
awaitable, plus two for the service's ``stopped`` and ``crashed`` events, waits for the first to
finish and cancels the rest: four tasks per message. Yet the delivery almost never waits. The
callback (``Conductor.on_message``, then the topic's handler) takes an uncontended lock, passes the
flow control and the producer's buffer when they are open, decodes, and puts the event into the
stream's queue with ``put_nowait_enhanced`` unless the queue is full: no step of that suspends.

The worker's :class:`Consumer` (``wait_first`` of :class:`FirstStepDelivery`) therefore runs the
delivery's first step itself. When it finishes there, the result is what ``wait_first`` would
have returned (the callback the only winner, since nothing else had happened: the flow was not
suspended and the service neither stopped nor crashed, which is checked first), and no task was
made. When the delivery does suspend (a full queue, suspended flow control, a full producer
buffer), the rest of it (:class:`_Rest`) goes to mode's ``wait_first`` with the other awaitables
as before, so a rebalance still abandons it. The only call of ``wait_first`` in Faust's consumer
is that one (checked by a test). The first step runs in the fetcher's own task, where mode's ran
it in a new task with a copy of the context; the delivery sets no context variable (Faust sets
``current_event`` in the stream's iteration, not in the conductor, topics or channels).

Measured (``bench/ingest.py``, 300,000 events in order over 20,000 users, one run): Faust's
decode-only agent read 18,268 events/s through this consumer against 13,565 through Faust's, on
the same topics.

**The fetch's wait.** aiokafka's fetcher (``Fetcher._get_actions_per_node``) sends one fetch
request per broker at a time, and it holds only the partitions with nothing left in its buffer.
When the input partitions still have buffered records, that request holds the idle ones alone
(the control topic, a quiet input partition), and the broker keeps it until data comes or
``fetch_max_wait_ms`` passes: faust-streaming creates its aiokafka consumer with 1,500 ms
(``AIOKafkaConsumerThread._create_worker_consumer``). Meanwhile the busy partitions are drained and
cannot be fetched again, since a request to that broker is in flight. At 4,500 events/s the
worker read fewer than 200 events in a tenth of its seconds, none in the slowest, and about three
seconds of input in the busiest (``bench/freshness.py``, ``read_per_s``). The worker's
:class:`ConsumerThread` sets the consumer's wait to ``INTEREST_FETCH_MAX_WAIT_MS``
(the app's ``fetch_max_wait_ms``) before it starts; aiokafka's ``start`` gives that attribute to
its ``Fetcher`` (checked by a test). Measured (``bench/freshness.py --rate 4500``, the same
commit with 1,500 and 100 ms): docs/performance.md, "Freshness".
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults

from .holes import Deliveries, read_through
from .settings import Settings

log = logging.getLogger("interest_stream")


class _Rest:
    """The rest of a coroutine that suspended on ``future``: awaitable, so a task can finish it.

    asyncio resumes a coroutine by sending None into it once the future it yielded is done (or by
    throwing an exception into it, a cancellation above all); this hands each of those to the
    coroutine, and each future the coroutine yields next to the task, as ``await`` would have."""

    __slots__ = ("coro", "future")

    def __init__(self, coro, future) -> None:
        self.coro, self.future = coro, future

    def __await__(self):
        coro, future = self.coro, self.future
        while True:
            try:
                yield future
            except BaseException as exc:  # thrown into the task (cancelled): into the coroutine
                resume, arg = coro.throw, exc
            else:
                resume, arg = coro.send, None
            try:
                future = resume(arg)
            except StopIteration as done:
                return done.value


def first_step(coro, others: tuple):
    """Run ``coro`` up to its first suspension: mode's ``WaitResults`` with ``coro`` the only winner
    when it finished there (``others``, coroutines never started, are closed), else
    :class:`_Rest` to wait for in its place. An exception it raises propagates, as from
    ``wait_first``. Call it only when none of ``others`` is done and the service runs."""
    try:
        future = coro.send(None)
    except BaseException as exc:
        for other in others:
            if asyncio.iscoroutine(other):
                other.close()  # never started: nothing waits on it
        if isinstance(exc, StopIteration):
            return WaitResults([coro], [exc.value], False)
        raise
    return _Rest(coro, future)


class FirstStepDelivery:
    """``wait_first`` for a service with a ``suspend_flow`` event (Faust's consumer): the first
    awaitable, a coroutine, is run up to its first suspension here, and only when it suspends
    does mode's ``wait_first`` (the next in the MRO) race the rest of it against the others."""

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if (timeout is None and coros and asyncio.iscoroutine(coros[0]) and not self.suspend_flow.is_set()
                and not self._stopped.is_set() and not self._crashed.is_set()):
            step = first_step(coros[0], coros[1:])
            if isinstance(step, WaitResults):
                return step
            coros = (step, *coros[1:])
        return await super().wait_first(*coros, timeout=timeout)


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread; its aiokafka consumer's fetches wait at most the app's
    ``fetch_max_wait_ms`` for data (Faust's own: 1,500 ms)."""

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # an app that does not set it (a benchmark's) gets the setting's default
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", Settings.fetch_max_wait_ms)
        return consumer


async def _held_back() -> None:
    """What the fetcher awaits for a record held back behind a hole (:meth:`Consumer._hand_over`):
    nothing; the record is fetched again after the hole is read."""


class Consumer(FirstStepDelivery, faust_aiokafka.Consumer):
    """faust-streaming's aiokafka consumer; deliveries that do not wait make no tasks, fetches
    wait at most ``fetch_max_wait_ms`` (:class:`ConsumerThread`), commits stop at a dead-lettered
    message whose dead letter is not delivered and at records the fetcher skipped, which are read
    again (:meth:`_new_offset`, :mod:`stream_app.holes`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deliveries = Deliveries()
        self._hole_reader = None  # made at first use, in an executor thread; used under the lock
        self._reader_lock = threading.Lock()
        self._given = self.callback  # what the fetcher hands each record to (Faust's conductor)
        self.callback = self._hand_over
        self.fetch_began: float | None = None  # time.monotonic() when the last completed fetch began

    def _hand_over(self, message):
        """What the fetcher calls with each record: Faust's conductor, but not with a record of a
        partition whose records are held back behind a hole it skipped (:mod:`stream_app.holes`)."""
        if self._checks_holes(message.topic):
            tp = message.tp
            if self.deliveries.held(tp) is not None:
                return _held_back()
            hole = self.deliveries.delivered(tp, message.offset)
            if hole is not None:
                held = self.deliveries.held(tp) is not None
                if held:
                    log.warning("the fetcher skipped offsets %d..%d of %s[%d] (faust-streaming issue 216, or they "
                                "hold no record, as a transaction's marker); no commit passes them, nor is a record "
                                "after them handed over, until they are read", hole[0], hole[1] - 1, message.topic,
                                message.partition)
                else:  # a partition that carries transaction markers: one offset is taken for a marker
                    log.debug("offset %d of %s[%d] not given, a transaction's marker: no commit passes it until it "
                              "is read", hole[0], message.topic, message.partition)
                self._hole_found(tp, hole[0])
                if held:
                    return _held_back()
        return self._given(message)

    def _checks_holes(self, topic: str) -> bool:
        """The topics whose holes are read (:mod:`stream_app.holes`): the worker's input and
        control topics (``app.hole_topics``, with ``app.hole_reader`` to read them)."""
        return topic in getattr(self.app, "hole_topics", ())

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        unknown = []
        for tp in self.assignment():  # Faust's read offset after a seek: the committed one, the next to read
            offset = self._read_offset.get(tp)
            if offset is None and self._checks_holes(tp.topic):
                unknown.append(tp)  # never committed: read from the beginning (auto_offset_reset earliest)
            else:
                self.deliveries.positioned(tp, offset)
        if unknown:  # the first records of a new deployment's partitions were skipped too, unseen
            try:
                begins = await asyncio.get_running_loop().run_in_executor(None, self._beginnings, unknown)
            except Exception as exc:  # no broker answer: the first record handed over sets the position
                log.warning("cannot read where %d partitions begin (%s)", len(unknown), exc)
                begins = {}
            for tp in unknown:
                self.deliveries.positioned(tp, begins.get(tp))

    def _beginnings(self, tps) -> dict:
        """The first offset of each of ``tps`` (a partition never committed is read from there)."""
        from kafka import TopicPartition

        with self._reader_lock:
            got = self._reader().beginning_offsets([TopicPartition(tp.topic, tp.partition) for tp in tps])
        return {tp: got[TopicPartition(tp.topic, tp.partition)] for tp in tps}

    def _reader(self):
        if self._hole_reader is None:
            self._hole_reader = self.app.hole_reader()
        return self._hole_reader

    async def seek(self, partition, offset: int) -> None:
        await super().seek(partition, offset)
        self.deliveries.positioned(partition, offset)

    async def on_partitions_revoked(self, revoked) -> None:
        await super().on_partitions_revoked(revoked)  # its last commit included: it needs what is known
        for tp in revoked:
            self.deliveries.forget(tp)

    def ack(self, message) -> bool:
        """Faust's ack; a message it does not count (acknowledged before, read again after a hole)
        no longer holds up a rebalance or a stop waiting for the unacknowledged ones."""
        counted = super().ack(message)
        if not counted:
            self._unacked_messages.discard(message)
        return counted

    async def _wait_next_records(self, timeout):
        """Before each fetch, the holes found since the last: each read with a consumer of the
        app's own; records there are read again from the hole's start (the first of a partition's
        holes that hold records), none settle it. The records held back behind a hole
        (:meth:`stream_app.holes.Deliveries.held`) are fetched again with it, or from the first of
        them when it held no record. Not while a rebalance or the tables' recovery is under way:
        records read again then reached the agent before the partition's states were restored, and
        a user's state restored from an older one overwrote the newer (2 of 3 runs of the sequence
        bench/rebalance.py runs, before this); records stay held back meanwhile. When the fetch
        began is kept once it has completed (``fetch_began``, for the aligner's waits)."""
        app = self.app
        if self.flow_active and not app.rebalancing and not app.in_recovery and app.flow_control.is_active():
            pending = self.deliveries.take_pending()
            if pending:  # none: nothing is held back either (a hold is found with its hole)
                await self._read_holes(pending)
        began = time.monotonic()
        records = await super()._wait_next_records(timeout)
        self.fetch_began = began  # a fetch completed: the aligner's waits count to here (stream_app.alignment)
        return records

    async def _read_holes(self, pending: list) -> None:
        """Each hole of ``pending`` (``[(tp, start, end)]``) read with the app's own consumer, then
        the partitions sought to where they are read again (:meth:`_wait_next_records`)."""
        again: dict = {}  # tp -> the first offset to read again
        assigned = self.assignment()
        for tp, start, end in pending:
            if tp not in assigned:
                continue
            try:
                held = await asyncio.get_running_loop().run_in_executor(None, self._holds_records, tp, start, end)
            except Exception as exc:  # a broker that does not answer: read again (never pass a record)
                log.warning("cannot read offsets %d..%d of %s[%d] (%s): reading them again", start, end - 1,
                            tp.topic, tp.partition, exc)
                held = True
            if held:
                again[tp] = min(start, again.get(tp, start))
            else:
                self.deliveries.settle_one(tp, start, end)
        for tp, start in again.items():  # from the first hole: every record after it again, in order
            self._read_again(tp, start)
            self.deliveries.release(tp)
            await self.seek(tp, start)
        for tp in assigned:  # a hole that held no record: the records held back behind it, fetched again
            behind = self.deliveries.release(tp)
            if behind is not None:
                await super().seek(tp, behind)  # Faust's: where commits go on from stays

    def _holds_records(self, tp, start: int, end: int) -> bool:
        """Whether a consumer is given a record in ``[start, end)`` of ``tp`` (not only markers)."""
        from kafka import TopicPartition

        from .delivered import delivered_end

        with self._reader_lock:
            return delivered_end(self._reader(), TopicPartition(tp.topic, tp.partition), start, end) > start

    def _read_again(self, tp, start: int) -> None:
        """Forget what Faust counts as acknowledged or as a gap from ``start`` on: those offsets are
        read and acknowledged again, and nothing above the hole may be committed before them."""
        acked = self._acked[tp]
        acked[:] = [o for o in acked if o < start]
        self._acked_index[tp].difference_update([o for o in list(self._acked_index[tp]) if o >= start])
        self._gap[tp].chop(start, 2**63)

    def _hole_found(self, tp, start: int) -> None:
        """Records of ``tp`` from ``start`` on were not read, and later ones may have been applied
        (a hole found at a commit; one the fetcher left is found before the record after it): the
        states' input offsets in memory go no further than before it
        (:meth:`stream_app.state_cache.StateCache.cap_inputs`). Otherwise, once the hole's first
        record is read again and the hole settles, its other records, read for the first time,
        would be judged against offsets past them and the late ones taken for duplicates."""
        states = getattr(self.app, "states", None)  # an app without the write-behind state: a benchmark's
        if states is not None:
            states.cap_inputs(tp.partition, tp.topic, start - 1)

    def input_caps(self, partition: int, handled: dict, undelivered: dict) -> dict:
        """For each input topic's ``partition``, the highest offset a state flushed now may record
        as applied (:func:`stream_app.state.dump`'s caps): every record up to it was read. Before
        the first offset from where commits go on that is neither acknowledged nor ``handled``
        (``{topic: [offset]}``, the flush's events and dead letters), nor one of Faust's gaps
        (:func:`stream_app.holes.read_through`); before the first hole, and the first dead letter
        not delivered (``undelivered``, ``{topic: offset}``). A partition whose commits' start is
        not known has none (its states record nothing)."""
        caps = {}
        for tp in self.assignment():
            if tp.partition != partition or not self._checks_holes(tp.topic):
                continue
            base = self.deliveries.base(tp)
            if base is None:
                continue
            # a gap Faust found ends at the record after it, which it holds too: that one is handed over
            gaps = [(interval.begin, interval.end - 1) for interval in self._gap.get(tp, ())]
            end = read_through(*base, [*self._acked.get(tp, ()), *handled.get(tp.topic, ())], gaps)
            for floor in (self.deliveries.floor(tp), undelivered.get(tp.topic)):
                if floor is not None:
                    end = min(end, floor)
            caps[(tp.topic, partition)] = end - 1
        return caps

    def _new_offset(self, tp):
        """Faust's offset to commit for ``tp``, or None while the acknowledged offsets start past
        the app's floor for it (``states.letter_floor``: a dead-lettered message waiting for its
        dead letter, acknowledged only once that is delivered, see :mod:`stream_app.flush`), or
        while a hole of records the fetcher skipped is not read yet (:mod:`stream_app.holes`).
        Faust's own check lets one unacknowledged message right after the last commit go, and any
        before the first commit."""
        hole = self.deliveries.floor(tp)
        if hole is not None:
            committed = self._committed_offset[tp]
            if hole in self._acked_index[tp] or (committed is not None and committed > hole):
                self.deliveries.settled(tp, hole)  # read again and acknowledged
            else:
                return None
        states = getattr(self.app, "states", None)  # an app without the write-behind state: a benchmark's
        floor = None if states is None else states.letter_floor(tp.partition, tp.topic)
        acked = self._acked[tp]
        if floor is not None and acked and min(acked) > floor:
            return None
        if acked and floor is None and self._checks_holes(tp.topic):
            lowest = min([min(acked)] + [interval.begin for interval in self._gap[tp]])
            missing = self.deliveries.head_missing(tp, lowest, self._committed_offset[tp])
            if missing is not None:
                log.warning("offsets %d..%d of %s[%d] were handed over but never applied (skipped by Faust's "
                            "stream); no commit passes them until they are read again", missing[0], missing[1] - 1,
                            tp.topic, tp.partition)
                self._hole_found(tp, missing[0])
                return None
            if self.deliveries.floor(tp) is not None:
                return None
        offset = super()._new_offset(tp)
        if offset is not None:
            self.deliveries.committed(tp, offset)
        return offset

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
commit with 1,500 and 100 ms): see the README's Performance section.
"""
from __future__ import annotations

import asyncio
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults

from .settings import Settings


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


class Consumer(FirstStepDelivery, faust_aiokafka.Consumer):
    """faust-streaming's aiokafka consumer; deliveries that do not wait make no tasks, fetches
    wait at most ``fetch_max_wait_ms`` (:class:`ConsumerThread`), and commits stop at a
    dead-lettered message whose dead letter is not delivered (:meth:`_new_offset`)."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp):
        """Faust's offset to commit for ``tp``, or None while the acknowledged offsets start past
        the app's floor for it (``states.letter_floor``: a dead-lettered message waiting for its
        dead letter, acknowledged only once that is delivered, see :mod:`stream_app.flush`).
        Faust's own check lets one unacknowledged message right after the last commit go, and any
        before the first commit."""
        states = getattr(self.app, "states", None)  # an app without the write-behind state: a benchmark's
        floor = None if states is None else states.letter_floor(tp.partition, tp.topic)
        if floor is not None and self._acked[tp] and min(self._acked[tp]) > floor:
            return None
        return super()._new_offset(tp)

"""Faust's Kafka consumer, without four asyncio tasks for every message it hands to a stream.

faust-streaming 0.15's fetcher (``Consumer._drain_messages``) delivers each message with::

    await self.wait_first(callback(message), self.suspend_flow.wait())

so that a delivery blocked when a rebalance suspends the flow is abandoned (the message is read
again from the committed offset afterwards). mode's ``Service.wait_first`` makes a task of each
awaitable, plus two for the service's ``stopped`` and ``crashed`` events, waits for the first to
finish and cancels the rest: four tasks per message. Yet the delivery almost never waits. The
callback (``Conductor.on_message``, then the topic's handler) takes an uncontended lock, passes the
flow control and the producer's buffer when they are open, decodes, and puts the event into the
stream's queue with ``put_nowait_enhanced`` unless the queue is full: no step of that suspends.

:meth:`Consumer.wait_first` therefore runs the delivery's first step itself. When it finishes
there, the result is what ``wait_first`` would have returned (the callback the only winner, since
nothing else had happened: the flow was not suspended and the service neither stopped nor
crashed, which is checked first), and no task was made. When the delivery does suspend (a full
queue, suspended flow control, a full producer buffer), the rest of it (:class:`_Rest`) goes to
mode's ``wait_first`` with the other awaitables as before, so a rebalance still abandons it. The
only call of ``wait_first`` in Faust's consumer is that one (checked by a test).

Measured (``bench/ingest.py``, 300,000 events in order over 20,000 users): Faust's decode-only
agent read 21,587 events/s with this delivery against 13,593-13,954 with Faust's, on the same
topics the same hour.
"""
from __future__ import annotations

import asyncio
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults


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


async def first_step(coro, others: tuple, quiet: bool, wait_first) -> WaitResults:
    """``wait_first(coro, *others)``, with ``coro`` run up to its first suspension here first.

    ``quiet``: none of ``others`` is done and the service is neither stopped nor crashed, so a
    ``coro`` that finishes without suspending is the only winner. ``wait_first`` is mode's."""
    if not quiet or not asyncio.iscoroutine(coro):
        return await wait_first(coro, *others)
    try:
        future = coro.send(None)
    except StopIteration as done:
        for other in others:
            if asyncio.iscoroutine(other):
                other.close()  # never started: nothing waits on it
        return WaitResults([coro], [done.value], False)
    except BaseException:
        for other in others:
            if asyncio.iscoroutine(other):
                other.close()
        raise  # as wait_first propagates the exception of a finished awaitable
    return await wait_first(_Rest(coro, future), *others)


class Consumer(faust_aiokafka.Consumer):
    """faust-streaming's aiokafka consumer; deliveries that do not wait make no tasks."""

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        base = super().wait_first
        if timeout is not None or not coros:
            return await base(*coros, timeout=timeout)
        quiet = not (self.suspend_flow.is_set() or self._stopped.is_set() or self._crashed.is_set())
        return await first_step(coros[0], coros[1:], quiet, base)

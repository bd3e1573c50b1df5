"""Control requests: ``interest-stream forget USER`` reaches the worker that owns the user through
the control topic (co-partitioned with the table).

A forget request carries, per input partition of the user, the offset after the last record a
consumer was given when it was made (``ends``; the end offset less a transaction's marker, which
no consumer is given): the worker applies it once it has applied every event before them
(:func:`unapplied`), so events still in the lag, or read again after a crash, cannot bring the
user back after the forget. It then deletes the user's state and flushes its partition at once.
The request is held like an input event (:meth:`StateCache.hold_forget`): the flush that writes
the delete to the changelog (so the user stays gone after restarts and on standbys) acknowledges
it, commits the offsets of the events it covered (so none of the user's past events is read
again after a crash), and then publishes a tombstone on the interest topic, which the command
waits for (:func:`forgotten`); its headers say whether the worker held a state for the user when
it applied the request, and which request it answers (:mod:`~stream_app.forget_answer`). A request
applied again because the worker stopped after its flush but before the commit finds no state:
the command's message says so. If the changelog refuses the delete, nothing is said: the
partition's next flushes write it again, and the tombstone follows the one that succeeds; a
worker stopped before that leaves the request uncommitted, to be applied again. Every other
control request is held too, so that no later offset of the control partition is committed
before a held forget. Each control partition's requests are applied in order by a task of its own
(:func:`apply_in_order`): a forget waiting for its user's events holds back only its partition's.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from functools import partial

import orjson
from faust.types import TP

from . import metrics
from .app import TOPIC_TYPES, app, control, lookup, owned_partitions, settings
from .flush import let_go, send_batches
from .forget_answer import tombstone_headers
from .ingest import applied_offset
from .partitioning import partition_for
from .state_cache import Forget, message_bytes

log = logging.getLogger("interest_stream.control")

OBSOLETE_OPS = ("scored", "evict")  # requests of the worker before the write-behind state: nothing to do
CATCH_UP_POLL_S = 0.1  # how often a forget waiting for its user's events looks again
CATCH_UP_WARN_S = 10.0  # a forget waiting longer than this says what it waits for


def parse(value: bytes | None) -> tuple[str | None, dict[str, int]]:
    """A control request's op and its input partitions' end offsets (``ends``, none in a request
    of an older ``forget``); op None when the request is malformed."""
    try:
        request = orjson.loads(value)
        op, ends = request["op"], request.get("ends", {})
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None, {}
    if not isinstance(op, str) or not isinstance(ends, dict) or not all(
            isinstance(t, str) and type(n) is int and n >= 0 for t, n in ends.items()):
        return None, {}
    return op, ends


def unapplied(ends: dict[str, int], applied_to) -> dict[str, tuple[int, int]]:
    """The input topics whose partition is not applied up to the request's end offset: topic ->
    (end offset, offset applied to). ``applied_to(topic)``: the offset below which every message
    of the user's partition of that topic is applied."""
    out = {}
    for topic, end in ends.items():
        at = applied_to(topic)
        if at < end:
            out[topic] = (end, at)
    return out


def applied_to(topic: str, partition: int) -> int:
    """:func:`applied_offset` of an input partition, from the worker's state."""
    queue = app.aligner.queues.get(partition, {}).get(topic)
    return applied_offset(app.received.offsets.get((topic, partition)),
                          app.consumer._committed_offset.get(TP(topic, partition)),
                          queue[0][3].offset if queue else None, app.states.undelivered_floor(partition, topic))


async def caught_up(message, ends: dict[str, int]) -> bool:
    """Wait until the worker applied the user's events before the request's end offsets (input
    topics only); False when the partition is handed over meanwhile (a rebalance, or the worker
    stopping): the request is then let go unacknowledged, for its next owner to read."""
    ends = {t: n for t, n in ends.items() if t in TOPIC_TYPES}
    t0, warned = time.monotonic(), False
    while behind := unapplied(ends, partial(applied_to, partition=message.partition)):
        if app.rebalancing or app.should_stop or message.partition not in owned_partitions():
            let_go(app.consumer, [message])
            return False
        if not warned and time.monotonic() - t0 > CATCH_UP_WARN_S:
            warned = True
            log.warning("forget of %r waits for its events to be applied and their dead letters delivered: %s",
                        message.key[:64], ", ".join(
                f"{t}[{message.partition}] up to offset {end} (at {at})" for t, (end, at) in behind.items()))
        await asyncio.sleep(CATCH_UP_POLL_S)
    return True


async def apply_control(message) -> str:
    """Apply one control request (a Faust message); returns what happened."""
    partition, key = message.partition, message.key
    op, ends = parse(message.value)
    if op is None:
        log.error("ignored a malformed control request for key %r", key[:64] if key else key)
    if op == "forget" and key:
        if not await caught_up(message, ends):
            return "handed over"
        held_state = lookup(partition, key) is not None  # a window, a profile or a last vector
        app.states.delete(partition, key)
        app.states.hold_forget(partition, message, held_state)
        await app.flusher.flush("forget", [partition])
        return "waiting" if partition in app.flusher.unwritten else "forgotten"
    app.states.hold(partition, message, message_bytes(message))  # acknowledged in order, by the next flush
    if op in OBSOLETE_OPS:
        return "obsolete"
    if op is not None:
        log.error("ignored a control request with unknown op %r", op)
    return "malformed"


async def forgotten(partition: int, forgets: list[Forget], last: bool = False) -> None:
    """A flush wrote the deletes of these users and acknowledged their forget requests: commit
    (Faust commits itself after the last flush, at shutdown; a rebalance's new owner applies the
    uncommitted request again), then publish their tombstones on the interest topic, one per
    request (:mod:`~stream_app.forget_answer`). A tombstone the broker does not take is logged
    with what to do; their states are gone already."""
    if not last:
        await app.consumer.commit()
    producer = app.producer._ensure_producer()
    by_partition: dict[int, list] = {}
    for forget in forgets:
        key = forget.message.key
        by_partition.setdefault(partition_for(key, app.output_partitions), []).append(
            (key, None, tombstone_headers(forget)))
    for p, records in by_partition.items():
        users = [key for key, _, _ in records]
        try:
            sent = await send_batches(producer, settings.output_topic, p, records)
        except Exception as exc:  # the producer closed or timed out
            tombstones_failed(p, users, exc)
            continue
        for fut, _ in sent:
            fut.add_done_callback(partial(on_tombstones_sent, p, users))


def on_tombstones_sent(out_partition: int, keys: list[bytes], fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        tombstones_failed(out_partition, keys, fut.exception())


def tombstones_failed(out_partition: int, keys: list[bytes], error: BaseException) -> None:
    metrics.TOMBSTONES_FAILED.inc(len(keys))
    log.error("tombstones of %d forgotten user(s) (%s) were not delivered to %s[%d] (%r): their states are deleted; "
              "run `interest-stream forget` for them again to remove their last vectors", len(keys),
              ", ".join(repr(k.decode(errors="replace")) for k in keys[:5]) + (", …" if len(keys) > 5 else ""),
              settings.output_topic, out_partition, error)


app.flusher.forgotten = forgotten


queues: dict[int, deque] = {}  # requests per control partition, applied in order by one task each


async def apply_in_order(partition: int, queue: deque) -> None:
    """Apply one partition's requests in order, so that a forget waiting for its user's events
    holds back only the requests of its partition. At a rebalance or a stop the requests not
    applied are let go unacknowledged, for the partition's next owner."""
    try:
        while queue:
            if app.rebalancing or app.should_stop or await apply_control(queue[0]) == "handed over":
                break
            queue.popleft()
    except Exception:  # never silent, and never a request Faust's stop would wait for
        log.exception("control requests of partition %d failed; %d left unacknowledged, to be read again after a "
                      "restart or a rebalance", partition, len(queue))
    finally:
        let_go(app.consumer, queue)
        queue.clear()
        queues.pop(partition, None)


@app.agent(control)
async def control_agent(stream):
    """Hand forget requests to their partition's queue (acknowledged by the flushes, not by Faust)."""
    async for event in stream.noack().events():
        m = event.message
        queue = queues.get(m.partition)
        if queue is not None:
            queue.append(m)
        else:
            queue = queues[m.partition] = deque([m])
            app.add_future(apply_in_order(m.partition, queue))

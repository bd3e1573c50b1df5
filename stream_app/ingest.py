"""Ingestion: click, browse and search events into the users' states, in memory.

The agent iterates ``stream.noack()``: an event stays unacknowledged (its offset uncommitted)
until the flush of its partition has written the states it changed (:mod:`stream_app.flush`).
Before that, each message waits in the :class:`stream_app.alignment.Aligner` until the three
topics of its partition can be applied in record-timestamp order, then event time (a backlog
read at full speed would otherwise make one topic's events late against another's); they are
released and applied in batches (:data:`stream_app.alignment.RELEASE_EVERY`, and the sweep every
:data:`ALIGN_SWEEP_S`, so a message waits at most that much longer than alignment asks). Per
event the worker pays for the event only: validation, the user's decoded state updated in place, no
serialisation and no table write.
"""
from __future__ import annotations

import asyncio
import logging
import time

from faust.types import TP
from kafka import KafkaConsumer

from . import core, metrics
from .app import FUTURE_MS, LIMITS, TOPIC_TYPES, app, fetch_position, inputs, lookup_key, now_ms, send_letter, settings
from .delivered import READER_FETCH_WAIT_MS, DeliveredEnds
from .events import dead_letter
from .alignment import message_order
from .input_order import RunningBack
from .state_cache import Letter, message_bytes

log = logging.getLogger("interest_stream")

ALIGN_SWEEP_S = 0.1  # how often waiting messages are looked at again (topics caught up, waits over)
STALL_POLL_S = 0.1  # how often a full cache waiting for the changelog looks again


def process(m, deliveries) -> bytes | None:
    """One input message through validation and the user's state; returns its dead letter when
    it is rejected (for :func:`apply_released` to send), else None. The message goes along as the
    record whose offset the state checks (``origin``, :func:`stream_app.core.ingest`), and records
    unless a hole the fetcher skipped lies at or before it (``deliveries``, the consumer's
    :class:`stream_app.holes.Deliveries`; None: a consumer that does not know, and no message goes
    along): the hole's records come after it, so not every record before it was read. A hole's own
    records, read again, are checked: a state restored from the changelog may have applied them
    (``bench/rebalance.py --workers 3 --kill``). A hole found only later, at a commit, lowers the
    offsets the states in memory recorded (``Consumer._hole_found``)."""
    topic, partition, offset, key, value = m.topic, m.partition, m.offset, m.key, m.value
    now = now_ms()
    origin, record = (None, False) if deliveries is None else (m, deliveries.read_before(m.tp, offset))
    result = core.ingest(TOPIC_TYPES[topic], key, value, lookup_key, LIMITS, now, FUTURE_MS, origin, record)
    if result.state is not None:
        app.states.put(partition, key, result.state)
        metrics.ACCEPTED.inc()
        return None
    if result.rejected is not None:
        metrics.DEAD_LETTER.inc()
        metrics.DEAD_LETTERS.labels(result.rejected.reason).inc()
        return dead_letter(result.rejected, topic, partition, offset, key, value, now)
    metrics.DUPLICATE.inc()
    metrics.DUPLICATES.inc()
    if result.outcome == "duplicate_offset":
        metrics.DUPLICATES_BY_OFFSET.inc()
    return None


def applied_offset(received: int | None, committed: int | None, *waiting: int | None) -> int:
    """The offset below which every message of an input partition is applied and can be committed
    by the next flush: the next after the last ``received`` (or the ``committed`` one, when none
    was received since the assignment), lowered to each offset still ``waiting`` (the aligner's
    next message, the first dead letter not delivered yet: stream_app.control)."""
    nxt = max(0 if received is None else received + 1, committed or 0)
    return min([nxt] + [w for w in waiting if w is not None])


class Received:
    """The last offset the agent received of each input partition, to tell whether a topic's
    partition is caught up (every record written so far received) for the aligner.

    A partition is caught up when the offset after the last one received (or its committed offset,
    when nothing was received since the assignment: nothing was written since the last commit)
    is its end offset. Or, when it is not and the fetcher is at the end (so nothing is to come but
    what is in flight), when that offset is the one after the partition's last record, read from
    the log (:class:`stream_app.delivered.DeliveredEnds`, once per end offset): a transaction's
    marker, which no consumer is given, may end it, or retention may have deleted its records."""

    def __init__(self, delivered: DeliveredEnds) -> None:
        self.offsets: dict[tuple[str, int], int] = {}
        self.delivered = delivered
        self._tps: dict[tuple[str, int], TP] = {}

    def _tp(self, topic: str, partition: int) -> TP:
        tp = self._tps.get((topic, partition))
        if tp is None:
            tp = self._tps[(topic, partition)] = TP(topic, partition)
        return tp

    def caught_up(self, topic: str, partition: int) -> bool:
        tp = self._tp(topic, partition)
        try:
            high = app.consumer.highwater(tp)
        except Exception:  # not fetched yet: unknown, so not caught up
            return False
        if high is None:
            return False
        received = self.offsets.get((topic, partition))
        applied = applied_offset(received, app.consumer._committed_offset.get(tp))
        if applied >= high:
            return True
        delivered = self.delivered.get(topic, partition, high)
        if delivered is not None:
            return applied >= delivered
        # read the tail only when nothing fetched is on its way to the agent, as far as Faust says
        # (the offset it last handed over is the one the agent last received)
        position = fetch_position(tp)
        if position is not None and position >= high and app.consumer._read_offset.get(tp) == received:
            self.delivered.ask(topic, partition, high)
        return False

    def has_hole(self, topic: str, partition: int) -> bool:
        """Records of the partition are to be read again: a hole not settled (:mod:`stream_app.holes`);
        the aligner waits longer for it (:data:`stream_app.alignment.HOLE_WAIT_S`)."""
        deliveries = getattr(app.consumer, "deliveries", None)  # a benchmark's consumer has none
        return deliveries is not None and deliveries.floor(self._tp(topic, partition)) is not None


def _reader() -> KafkaConsumer:
    """A consumer of the worker's own, outside Faust, to read a partition's tail or a hole (each
    caller makes one, used in executor threads)."""
    return KafkaConsumer(enable_auto_commit=False, fetch_max_wait_ms=READER_FETCH_WAIT_MS,
                         **settings.kafka_python_config())


app.received = Received(DeliveredEnds(_reader))
# the topics whose offsets the fetcher skipped are read again (stream_app.holes), and the consumer
# that reads them
app.hole_topics = frozenset([*settings.input_topics.values(), settings.control_topic])
app.hole_reader = _reader
app.ingest_stalled = False  # applying waits for the changelog (stream_app.ingest._wait_for_changelog)


@app.on_partitions_revoked.connect
async def forget_received(sender, revoked, **kwargs) -> None:
    """A partition assigned again later starts from a new position (its waiting messages were
    applied before the flush that preceded the revocation)."""
    for tp in revoked:
        app.received.offsets.pop((tp.topic, tp.partition), None)
        app.received.delivered.forget(tp.topic, tp.partition)


def apply_released(messages, bounded: bool = False) -> None:
    """Apply messages the aligner released, and hold each until its partition's flush (a
    dead-lettered one until a flush finds its dead letter delivered). ``bounded``: stop once the
    cache is over its bound (``messages`` is the aligner's generator, so the rest stay there)."""
    states, deliveries = app.states, getattr(app.consumer, "deliveries", None)
    for m in messages:
        letter = process(m, deliveries)
        if letter is None:
            states.hold(m.partition, m, message_bytes(m))  # acknowledged by the flush
        else:
            sent = send_letter(m.key, letter)
            states.hold_letter(m.partition, Letter(m, m.topic, m.offset, m.key, letter, sent,
                                                   message_bytes(m) + len(letter)))
        if bounded and states.over_bound():
            return


async def _respect_bound() -> None:
    states = app.states
    if states.over_bound():  # dirty states cannot be dropped: flush, then drop the least recently used
        await app.flusher.flush("cache_full")
        metrics.CACHE_DROPPED.inc(states.shrink())
        if states.over_bound() and app.flusher.unwritten:
            await _wait_for_changelog()


async def _wait_for_changelog() -> None:
    """The cache is full and the changelog refuses flushes: their users and events cannot leave
    memory, so nothing more is applied (the ingest agent and the aligner's sweep wait here) until
    the changelog took a flush of each refused partition (the interval flushes retry) or a
    rebalance begins (its flush lets the events go). Memory stays at the bound; the input waits
    in Kafka."""
    states, flusher = app.states, app.flusher
    first, t0 = not app.ingest_stalled, time.monotonic()
    if first:  # the other caller (agent or sweep) waits too, without saying so again
        app.ingest_stalled = True
        metrics.INGEST_STALLED.set(1)
        log.error("the state cache is full (%d MB) and the changelog refuses partitions %s: reading stops until it "
                  "takes their flushes", states.max_bytes // 2**20, sorted(flusher.unwritten))
    try:
        # until the changelog takes them: while flushes are under way the cache only seems to have room
        while flusher.unwritten and not app.rebalancing and not app.should_stop:
            await asyncio.sleep(STALL_POLL_S)
    finally:
        if first:
            app.ingest_stalled = False
            metrics.INGEST_STALLED.set(0)
            log.warning("reading again after %.1f s", time.monotonic() - t0)


app.running_back = RunningBack(LIMITS.late_span_ms / 1000)


def _running_back(m, back_s: float) -> None:
    """A record older than one before it in its partition by more than the window and its grace:
    counted, and said once per partition (the dead letters it causes say only ``late``)."""
    metrics.INPUT_RUNNING_BACK.labels(m.topic).inc()
    said = app.running_back.said
    if (m.topic, m.partition) not in said:
        said.add((m.topic, m.partition))
        log.warning("offset %d of %s[%d] is %.1f days older than a record before it (record timestamps, or ts for "
                    "records sent long after their event), more than "
                    "the window and its grace (%.1f days): its producer sends out of ts order, and a user's older "
                    "events may be applied after newer ones of other topics and be late; send in ts order (`load "
                    "jsonl` does). Counted in interest_input_running_back_total; said once a partition",
                    m.offset, m.topic, m.partition, back_s / 86_400, app.running_back.allowed_s / 86_400)


for _topic in settings.input_topics.values():  # each topic's count shows, 0 before the first
    metrics.INPUT_RUNNING_BACK.labels(_topic)


def _fetch_began() -> float | None:
    """When the last fetch of the worker's consumer that has completed began
    (:attr:`stream_app.consumer.Consumer.fetch_began`), what the aligner's waits for a topic behind
    count to; None with a consumer that keeps no such time (a benchmark's Faust consumer): the
    aligner then waits on wall time alone."""
    return getattr(app.consumer, "fetch_began", None)


@app.agent(inputs)
async def ingest(stream):
    """Validate click/browse/search events into per-user states; dead-letter the rest."""
    aligner, received, states, running_back = app.aligner, app.received, app.states, app.running_back
    offsets, caught_up, has_hole = received.offsets, received.caught_up, received.has_hole
    async for event in stream.noack().events():
        m = event.message
        p = m.partition
        offsets[(m.topic, p)] = m.offset
        key, tie = message_order(m, LIMITS.late_span_ms)
        back = running_back.see(m.topic, p, m.offset, key)
        now = time.monotonic()
        if back is not None:
            _running_back(m, back.seconds)
            if back.step:
                aligner.ran_back(m.topic, p, now)
        if aligner.add(m.topic, p, key, m, now, tie):
            apply_released(aligner.ready(p, caught_up, now, has_hole, _fetch_began()), bounded=True)
        if states.over_bound():
            await _respect_bound()


@app.timer(ALIGN_SWEEP_S)
async def align_timer():
    """Apply waiting messages whose topics caught up meanwhile, or that waited long enough."""
    aligner = app.aligner
    if len(aligner) and not app.ingest_stalled:
        received = app.received
        apply_released(aligner.expired(received.caught_up, time.monotonic(), received.has_hole, _fetch_began()),
                       bounded=True)
        await _respect_bound()
    metrics.ALIGN_WAITING.set(len(aligner))
    metrics.ALIGN_FORCED.inc(aligner.forced)
    metrics.ALIGN_IDLED.inc(aligner.idled)
    aligner.forced = aligner.idled = 0


@app.timer(settings.flush_s / settings.partitions)
async def flush_timer():
    """Write changed user states to the table and release the events they cover: each partition
    once per INTEREST_FLUSH_S, one partition at a time (stream_app.flush.due_partition)."""
    await app.flusher.flush_turn(settings.partitions)

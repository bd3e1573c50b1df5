"""Live scoring: every ``INTEREST_SCORE_INTERVAL_S`` the users with new events on this worker's
partitions become interest vectors, with the core replay uses too (:mod:`stream_app.core`).

A pass reads the decoded states in memory (no decode, no table read for cached users), encodes
them in the event loop, runs ONNX Runtime in a thread (it releases the GIL, so consumption and the
next batch's encoding go on meanwhile on the other core), publishes each vector on the output topic and
records it in the user's state; the next flush writes that state with everything else that
changed. So a scored user costs one record besides the published vector at most: none of its own
when the user's events changed the state in the same flush interval. Drift is always against the
vector last published for that user, which the state holds.

Users waiting for a vector are known per partition (``StateCache.pending``), and a pass takes them
in the order they started waiting: a user whose event came just after the previous pass started
is among the first of the next one, so an event waits at most about one interval plus the
ingestion lag, not an interval plus a whole pass. When a pass reaches the end of its list it
takes the users who started waiting while it ran (again, until none are left or the pass has
run for an interval), so an event ingested during a pass, typically the lagged ones, does not
wait for the next. A user whose event came while its vector was being computed starts waiting
again when that vector is published (``StateCache.scored``), so the same pass takes it again.
A batch of vectors the output topic does not take (the broker refuses it, or gives up) is logged
as an error and its users are pending again (:func:`on_vectors_sent`): the next pass scores them
and publishes their newest vectors, instead of leaving them without one until their next event.
The last flush before a rebalance or shutdown waits for the batches not answered yet (up to
:data:`stream_app.flush.LETTER_WAIT_S`), so that it writes their users as pending for the
partitions' next owner.
A newly assigned partition is scanned once (every state decoded once) to find them and to learn
every user's idle facts (:mod:`stream_app.idle`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from concurrent.futures import ThreadPoolExecutor

import orjson

from . import core, metrics, state
from .cadence import next_due, pause
from .app import LIMITS, app, is_ready, lookup, owned_partitions, partition_lags, settings, users
from .flush import send_batches
from .partitioning import partition_for

log = logging.getLogger("interest_stream.scoring")

INDEX_CHUNK = 2000  # states decoded between two yields to the event loop while indexing


class Pass:
    """When passes run, and which partitions are indexed (one per app: ``app.scorer``)."""

    def __init__(self) -> None:
        self.next_start = 0.0
        self.indexed: set[int] = set()
        self.generation = -1
        self.running: asyncio.Future | None = None  # the pass under way


app.scorer = Pass()
app.scoring_thread = ThreadPoolExecutor(1, thread_name_prefix="scoring")  # one model run at a time


async def index_new_partitions() -> None:
    """Scan the table once for the owned partitions not indexed yet (after each assignment):
    their users' pending flags and idle facts, and as many states as the cache bound allows."""
    scorer = app.scorer
    if scorer.generation != app.consumer_generation_id:  # a rebalance happened: everything is new
        scorer.generation, scorer.indexed = app.consumer_generation_id, set()
    todo = owned_partitions() - scorer.indexed
    if not todo:
        return
    t0 = time.perf_counter()
    states, n, generation = app.states, settings.partitions, app.consumer_generation_id
    seen = 0
    # RocksDB iterators read a consistent snapshot: a user forgotten (or evicted as idle) while the
    # scan yields to the loop is still in it, and so is the older state of one changed, flushed
    # and dropped from the cache meanwhile; neither may be cached from it (StateCache.scan_seen).
    # That holds for the users cached before the scan began too (events applied since the
    # assignment): their entries know more than the snapshot, and were indexed when cached
    states.scan_seen = seen_live = set(states.entries)
    try:
        for i, (key, raw) in enumerate(users.items()):
            p = partition_for(key, n)
            if p in todo and key not in states and key not in seen_live:
                st = state.load(raw, LIMITS)
                if states.bytes < states.max_bytes:
                    states.load(p, key, st)
                else:
                    states.index(p, key, st)
                seen += 1
            if i % INDEX_CHUNK == INDEX_CHUNK - 1:
                await asyncio.sleep(0)
                if app.consumer_generation_id != generation:
                    return  # a rebalance began: the next pass indexes the new assignment
    finally:
        states.scan_seen = None
    scorer.indexed |= todo
    log.info("indexed %d users of partitions %s in %.1f s", seen, sorted(todo), time.perf_counter() - t0)


def backlog() -> int:
    """Input messages waiting on this worker's partitions."""
    return sum(lag for _, lag in partition_lags())


def handed_over(generation: int) -> bool:
    """A rebalance began since ``generation`` (or the worker is not ready), or the worker stops:
    a scoring pass must neither look users up nor keep vectors in them."""
    return not is_ready() or app.should_stop or app.consumer_generation_id != generation


async def score_pass() -> int:
    """Score every user with new events on the partitions this worker owns, then those who
    started waiting meanwhile (for at most an interval); returns how many vectors it published.

    Batches are pipelined: while the model runs on one batch (in the scoring thread), the next
    batch's inputs are copied out of the states and padded into the model's runs, and the previous
    batch's vectors are published.
    Inference must not starve consumption: while more than INTEREST_SCORE_PACE_BACKLOG input
    messages wait, the pass pauses after each batch so that the batch's work, in the event loop
    and in the scoring thread, is at most INTEREST_SCORE_SHARE of the time
    (:func:`~stream_app.cadence.pause`); otherwise it runs at full speed (fresher vectors)."""
    model = app.models.model  # one model for the whole pass, even if a swap happens meanwhile
    if model is None or not is_ready():
        return 0
    generation = app.consumer_generation_id
    mark = app.states.mark()
    todo = app.states.waiting(owned_partitions())  # longest waiting first
    loop = asyncio.get_running_loop()
    batch, share, horizon = settings.score_batch, settings.score_share, LIMITS.horizon_ms
    done, i, t_pass = 0, 0, time.perf_counter()
    running = None  # (inputs, partition of each user, their runs, future of the runs' outputs, start time)
    while True:
        if handed_over(generation):
            break  # a rebalance started (the new owners score these users) or the worker stops
        if i >= len(todo) and time.perf_counter() - t_pass < settings.score_interval_s:
            # the users who started waiting while this pass ran: now, not an interval later
            todo, i = app.states.waiting(owned_partitions(), after=mark), 0
            mark = app.states.mark()
        t_start = time.perf_counter()
        nxt = None
        if i < len(todo):
            where: dict[bytes, int] = {}
            inputs = []
            for p, key in todo[i:i + batch]:
                st = lookup(p, key)
                if st is not None and state.is_pending(st):
                    where[key] = p
                    inputs.append(core.snapshot(key, st, model, horizon))
            if inputs:
                runs = core.plan(model, inputs, batch)  # here: the thread only runs the model
                nxt = (inputs, where, runs, loop.run_in_executor(app.scoring_thread, timed_run, model, runs),
                       time.perf_counter())
            i += batch
        work = time.perf_counter() - t_start  # the encoding and padding, in the event loop
        if running is not None:
            published, batch_work = await publish(running, model, generation)
            done, work = done + published, work + batch_work
        running = nxt
        if running is None and i >= len(todo):
            break
        if share < 1 and backlog() > settings.pace_backlog:
            metrics.SCORE_PACED.inc()
            await asyncio.sleep(pause(work, time.perf_counter() - t_start, share))
        else:
            await asyncio.sleep(0)
    if running is not None:
        done += (await publish(running, model, generation))[0]
    return done


def timed_run(model, runs):
    """A batch's model runs in the scoring thread, and the CPU time they took: the scoring thread's (ONNX
    Runtime runs on the calling thread), times the intra-op threads (``INTEREST_ORT_THREADS``), which
    work alongside it. Not wall time: on a busy machine the run waits for a core, and at 5,500
    events/s, counting wall time, the worker published 168,047 vectors in 10 minutes, against
    228,506 before pacing counted the model and 246,460 counting CPU time (``bench/soak.py``)."""
    t0 = time.thread_time()
    outputs = model.run(runs)
    return outputs, (time.thread_time() - t0) * settings.ort_threads


async def publish(running, model, generation: int) -> tuple[int, float]:
    """Wait for a batch's model runs; publish its vectors (record batches per output partition)
    and keep each in its user's state. Nothing is published if the partitions were handed over
    meanwhile (a rebalance flushed and dropped them). Returns how many vectors it published, and
    the batch's work besides its encoding: the model's run and this publication, in seconds."""
    inputs, where, runs, future, t0 = running
    outputs, model_s = await future
    t_out = time.perf_counter()
    metrics.SCORE_LATENCY.observe(t_out - t0)
    metrics.SCORE_BATCHES.inc()
    if handed_over(generation):
        # a rebalance began (its flush may have written and dropped these users already: a state
        # looked up now would be read again from the table and written by a worker that no
        # longer owns it) or the worker is stopping: the users stay pending, for their owner
        return 0, model_s
    by_partition: dict[int, list] = {}
    n_out = app.output_partitions
    probs = core.gather(model, inputs, runs, outputs)
    for key, vec, st in core.publish(inputs, probs, model, lambda k: lookup(where[k], k)):
        by_partition.setdefault(partition_for(key, n_out), []).append((key, orjson.dumps(vec)))
        app.states.scored(where[key], key, st)  # the vector reaches the table with the next flush
    producer = app.producer._ensure_producer()
    for p, records in by_partition.items():
        try:
            sent = await send_batches(producer, settings.output_topic, p, records)
        except Exception as exc:  # the producer closed or timed out: as if the broker refused them
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            sent = [(failed, len(records))]
        first = 0
        for fut, n in sent:
            keys = [key for key, _ in records[first:first + n]]
            fut.add_done_callback(partial(on_vectors_sent, p, {k: where[k] for k in keys}, generation))
            app.vector_sends.add(fut)  # the last flush before a rebalance or shutdown waits for it
            fut.add_done_callback(app.vector_sends.discard)
            first += n
    n = sum(len(r) for r in by_partition.values())
    metrics.SCORED_USERS.inc(n)
    return n, model_s + time.perf_counter() - t_out


def on_vectors_sent(out_partition: int, where: dict[bytes, int], generation: int, fut) -> None:
    """A batch of vectors acknowledged, or not: then never silent, and its users (``where``: key ->
    input partition) are pending again, unless their partitions were handed over meanwhile."""
    if fut.cancelled() or fut.exception() is None:
        return
    metrics.VECTORS_FAILED.inc(len(where))
    log.error("%d vectors to %s[%d] were not delivered (%r); their users are scored again", len(where),
              settings.output_topic, out_partition, fut.exception())
    if app.consumer_generation_id != generation:
        return
    for key, p in where.items():
        st = lookup(p, key)
        if st is not None and not state.is_pending(st):
            state.unpublished(st)
            app.states.put(p, key, st)


# Passes start every INTEREST_SCORE_INTERVAL_S on a fixed schedule (:mod:`stream_app.cadence`):
# Faust's timer would wait a whole interval after a pass ends, so a long pass would stretch the
# cycle. The tick bounds how late a due pass starts.
SCORE_TICK_S = min(0.25, settings.score_interval_s)


@app.timer(SCORE_TICK_S)
async def score_timer():
    """Start a pass when one is due (on owned partitions only). The pass runs as a task of its own,
    so one longer than the tick is not an overlapping timer, and the next waits for it to end."""
    t0 = time.monotonic()
    scorer = app.scorer
    if scorer.running is not None and not scorer.running.done():
        return
    if not is_ready() or app.models.model is None:
        return  # not ready: the next tick tries again
    await index_new_partitions()  # once per assignment; not part of the pass's time
    if not scorer.next_start:  # the first pass comes one interval after the worker is ready,
        scorer.next_start = t0 + settings.score_interval_s  # as with Faust's own timers
        return
    if t0 < scorer.next_start:
        return  # not due yet
    scorer.next_start = next_due(scorer.next_start, t0, settings.score_interval_s)
    scorer.running = app.add_future(timed_pass())  # cancelled with the app's other tasks at stop


async def timed_pass() -> None:
    t0 = time.monotonic()
    metrics.SCORING_ACTIVE.set(1)
    try:
        n = await score_pass()
    finally:
        metrics.SCORING_ACTIVE.set(0)
    if n:
        took = time.monotonic() - t0
        metrics.SCORE_PASS.observe(took)
        log.info("scored %d users in %.1f s", n, took)


@app.timer(settings.model_poll_s)
async def model_poll_timer():
    """Pick up a re-pointed INTEREST_MODEL_DIR; refuse a bad pair and keep serving."""
    await asyncio.get_running_loop().run_in_executor(None, app.models.poll)

"""Ingestion: click, browse and search events into the users' states, in memory.

The agent iterates ``stream.noack()``: an event stays unacknowledged (its offset uncommitted)
until the flush of its partition has written the states it changed (:mod:`stream_app.flush`).
Per event the worker pays for the event only: validation, the user's decoded state updated in
place, no serialisation and no table write.
"""
from __future__ import annotations

from . import core, metrics
from .app import FUTURE_MS, LIMITS, TOPIC_TYPES, app, dlq, inputs, lookup_key, now_ms, settings
from .events import dead_letter


def process(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> str:
    """One input message through validation and the user's state; returns its outcome."""
    now = now_ms()
    result = core.ingest(TOPIC_TYPES[topic], key, value, lookup_key, LIMITS, now, FUTURE_MS)
    if result.state is not None:
        app.states.put(partition, key, result.state)
        metrics.ACCEPTED.inc()
    elif result.rejected is not None:
        metrics.DEAD_LETTER.inc()
        metrics.DEAD_LETTERS.labels(result.rejected.reason).inc()
        dlq.send_soon(key=key, value=dead_letter(result.rejected, topic, partition, offset, key, value, now))
    else:
        metrics.DUPLICATE.inc()
        metrics.DUPLICATES.inc()
    return result.outcome


@app.agent(inputs)
async def ingest(stream):
    """Validate click/browse/search events into per-user states; dead-letter the rest."""
    states, flusher = app.states, app.flusher
    async for event in stream.noack().events():
        m = event.message
        process(m.topic, m.partition, m.offset, m.key, m.value)
        states.hold(m.partition, m, len(m.value or b"") + len(m.key or b""))  # acknowledged by the flush
        if states.over_bound():  # dirty states cannot be dropped: flush, then drop the least recently used
            await flusher.flush("cache_full")
            metrics.CACHE_DROPPED.inc(states.shrink())


@app.timer(settings.flush_s)
async def flush_timer():
    """Write changed user states to the table and release the events they cover (every INTEREST_FLUSH_S)."""
    await app.flusher.flush("interval")

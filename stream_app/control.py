"""Control requests: ``interest-stream forget USER`` reaches the worker that owns the user through
the control topic (co-partitioned with the table).

Forgetting deletes the user's state (a changelog tombstone, flushed at once, so the user stays gone
after restarts and on standbys), commits the offsets of the events that flush covered (so none of
the user's past events is read again after a crash), and then publishes a tombstone on the
interest topic, which the command waits for.
"""
from __future__ import annotations

import logging

import orjson

from .app import app, control, interests_topic

log = logging.getLogger("interest_stream.control")

OBSOLETE_OPS = ("scored", "evict")  # requests of the worker before the write-behind state: nothing to do


async def apply_control(partition: int, key: bytes | None, value: bytes | None) -> str:
    """Apply one control request; returns what happened."""
    try:
        op = orjson.loads(value)["op"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        log.error("ignored a malformed control request for key %r", key[:64] if key else key)
        return "malformed"
    if op == "forget" and key:
        app.states.delete(partition, key)
        await app.flusher.flush("forget", [partition])
        # the user's events are acknowledged now: commit them before saying the user is gone, or a
        # crash right after would read them again and bring the user back
        await app.consumer.commit()
        interests_topic.send_soon(key=key, value=None)  # tombstone on the compacted topic
        return "forgotten"
    if op in OBSOLETE_OPS:
        return "obsolete"
    log.error("ignored a control request with unknown op %r", op)
    return "malformed"


@app.agent(control)
async def control_agent(stream):
    """Apply forget requests to the users' states."""
    async for event in stream.events():
        m = event.message
        await apply_control(m.partition, m.key, m.value)

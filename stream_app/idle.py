"""Idle users: after horizon + grace without events their rows are dropped (the window is over,
the profile and the last vector stay); after the profile retention the whole state is deleted.

Decided from the idle facts the cache keeps for every user of an indexed partition
(:func:`stream_app.state.idle_facts`), in event time and on the worker's clock
(:func:`stream_app.state.idle_action`); the changes go through the write-behind cache like any
other, so the next flush writes them.
"""
from __future__ import annotations

import asyncio

from . import metrics, state
from .app import LIMITS, app, is_ready, lookup, now_ms, owned_partitions, settings



def idle_pass(partition: int, now: int) -> tuple[int, int]:
    """Compact and evict the idle users of one partition; returns (compacted, evicted)."""
    facts = app.states.facts.get(partition)
    if not facts:
        return 0, 0
    newest = max(f[0] for f in facts.values())  # the partition's event time
    compacted = evicted = 0
    for key, f in list(facts.items()):
        action = state.idle_action(f, newest, now, LIMITS)
        if action == "evict":
            app.states.delete(partition, key)
            evicted += 1
        elif action == "compact":
            st = lookup(partition, key)
            if st is not None:
                app.states.put(partition, key, state.compact(st))
                compacted += 1
    return compacted, evicted


@app.timer(settings.evict_every_s)
async def idle_timer():
    """Compact users idle longer than the horizon plus grace and evict those idle longer than
    the profile retention (INTEREST_PROFILE_RETENTION_S)."""
    if not is_ready():
        return
    now = now_ms()
    for p in sorted(owned_partitions() & app.scorer.indexed):
        compacted, evicted = idle_pass(p, now)
        metrics.COMPACTED.inc(compacted)
        metrics.EVICTED.inc(evicted)
        await asyncio.sleep(0)

"""A user's ingest state: one value per user, assigned once per event.

Everything needed to count a user's events exactly once lives in this one value (the recent
events, the ids within the window plus grace, the event-time watermark ``newest``), so that a
redelivered event after a crash or a partition move is recognised from the restored state.

Stored form (orjson, ``v`` is the state format version; see :func:`load`)::

    {"v": 1,
     "seq": 17,                        # accepted events so far: a vector records the seq it saw
     "newest": 1764259200000,          # newest ts accepted for this user (event-time watermark)
     "seen": 1764259201234,            # worker clock when the last event was accepted (eviction)
     "ev":  [[ts, id, type, category, item, dwell, query], ...],  # the newest max_events rows
     "old": [[ts, id, type, category], ...]}  # older rows still in the window or the grace

Both lists are sorted by ``(ts, id)``. ``ev`` holds only rows inside the window; ``old`` holds
the rest of the window plus the grace period, kept compact because only counts and duplicate
detection need them. Counts are derived, not stored.
"""
from __future__ import annotations

from bisect import insort
from dataclasses import dataclass

import orjson

from models.window import WindowEvent, late_bound, window_start

STATE_VERSION = 1


class StateFormatError(Exception):
    """A stored value has a format version this code cannot read."""


@dataclass(frozen=True, slots=True)
class Limits:
    horizon_ms: int
    grace_ms: int
    max_events: int


def load(raw: bytes | None) -> dict | None:
    if raw is None:
        return None
    state = orjson.loads(raw)
    version = state.get("v")
    if version != STATE_VERSION:
        # a future format change adds a migration here instead of misreading old values
        raise StateFormatError(f"user state has format version {version!r}, expected {STATE_VERSION}")
    return state


def dump(state: dict) -> bytes:
    return orjson.dumps(state)


def new_state() -> dict:
    return {"v": STATE_VERSION, "seq": 0, "newest": None, "seen": 0, "ev": [], "old": []}


def apply(state: dict | None, event: dict, limits: Limits, now_ms: int) -> tuple[str, dict | None]:
    """Add one validated event. Returns ``(outcome, new_state)``.

    outcome is ``accepted``, ``duplicate`` (state unchanged, returned as None) or ``late``
    (older than the window by more than the grace; state unchanged, None).
    """
    if state is None:
        state = new_state()
    eid, ts = event["event_id"], event["ts"]
    if any(r[1] == eid for r in state["ev"]) or any(r[1] == eid for r in state["old"]):
        return "duplicate", None
    newest = state["newest"]
    if newest is not None and ts <= late_bound(newest, limits.horizon_ms, limits.grace_ms):
        return "late", None
    row = [ts, eid, event["type"], event.get("category"), event.get("item_id"),
           event.get("dwell_ms"), event.get("query")]
    ev, old = state["ev"], state["old"]
    insort(ev, row, key=_order)
    newest = ts if newest is None else max(newest, ts)
    start = window_start(newest, limits.horizon_ms)
    # rows that left the window, or that are beyond the newest max_events, become compact
    while ev and (ev[0][0] <= start or len(ev) > limits.max_events):
        r = ev.pop(0)
        insort(old, r[:4], key=_order)
    bound = late_bound(newest, limits.horizon_ms, limits.grace_ms)
    drop = 0
    while drop < len(old) and old[drop][0] <= bound:
        drop += 1
    if drop:
        del old[:drop]
    state["newest"] = newest
    state["seen"] = now_ms
    state["seq"] += 1
    return "accepted", state


def _order(row: list) -> tuple:
    return row[0], row[1]


def window_events(state: dict) -> list[WindowEvent]:
    """The events the model reads, oldest first (at most max_events, all inside the window)."""
    return [WindowEvent(r[0], r[2], r[3], r[4], r[5], r[6]) for r in state["ev"]]


def events_in_window(state: dict, horizon_ms: int) -> int:
    """How many events the window holds (the ``events`` of a vector and of ``summary``)."""
    start = window_start(state["newest"], horizon_ms)
    return len(state["ev"]) + sum(1 for r in state["old"] if r[0] > start)


def summary(state: dict, horizon_ms: int) -> dict:
    """Counts over the whole window, as ``GET /users/{id}`` reports them."""
    start = window_start(state["newest"], horizon_ms)
    counts = {"click": 0, "browse": 0, "search": 0}
    categories: dict[str, int] = {}
    n = 0
    for r in state["old"]:
        if r[0] > start:
            n += 1
            counts[r[2]] += 1
            if r[2] != "search" and r[3] is not None:
                categories[r[3]] = categories.get(r[3], 0) + 1
    for r in state["ev"]:
        n += 1
        counts[r[2]] += 1
        if r[2] != "search" and r[3] is not None:
            categories[r[3]] = categories.get(r[3], 0) + 1
    return {"events": n, "newest_ts": state["newest"], "counts": counts, "categories": categories}


def is_idle(state: dict, partition_newest: int, now_ms: int, limits: Limits) -> bool:
    """Evict a user when nothing arrived for longer than the horizon plus grace both in event
    time (the partition's newest ts moved past) and on the worker's clock (so a replay of old
    data, whose event time races ahead, does not evict users whose events are still arriving)."""
    span = limits.horizon_ms + limits.grace_ms
    return state["newest"] + span < partition_newest and state["seen"] + span < now_ms

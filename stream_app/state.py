"""A user's ingest state: one value per user, assigned once per event.

Everything needed to count a user's events exactly once lives in this one value (the recent
events, the ids within the window plus grace, the event-time watermark ``newest``), so that a
redelivered event after a crash or a partition move is recognised from the restored state.

Stored form (orjson, ``v`` is the state format version; see :func:`load`)::

    {"v": 2,
     "seq": 17,                        # accepted events so far: a vector records the seq it saw
     "newest": 1764259200000,          # newest ts accepted for this user (event-time watermark)
     "seen": 1764259201234,            # worker clock when the last event was accepted (eviction)
     "ev":  [[ts, id, type, category, item, dwell, query], ...],  # the newest max_events rows
     "old": [[ts, id, type, category], ...],  # older rows still in the window or the grace
     "p": {"t": ts, "c": {category: [...]}},  # the long-term profile (interest_core.window), v2
     "dropped": 1764170000000,         # newest ts of the rows dropped so far (absent: none, or unknown)
     "in": {"events.click": 5120},     # input offsets applied, per topic (absent: none known) ...
     "inp": 3}                         # ... of this partition of each

Both lists are sorted by ``(ts, id)``. In memory each row is a tuple (JSON arrays when stored): a
row never changes, and CPython's garbage collector stops tracking a tuple that holds only strings,
numbers and None once it has survived a collection, so a worker's hundreds of thousands of rows
are not traversed again by every later collection (lists always are). ``ev`` holds only rows
inside the window; ``old`` holds the rest of the window plus the grace period, kept compact
because only counts and duplicate detection need them. Counts are derived, not stored.

Version 1 had no ``p``; :func:`load` migrates such a value by folding its rows into a profile
(the history before them is gone, so the profile starts with the window). Version 2 kept the last
vector in a table of its own; a migrated value has ``out`` null and ``scored`` 0, so the user is
scored again once (its next vector has drift 0).

Rows leave the state past the grace (:func:`apply`), when the state is too large (:func:`trim`) and
when the user is idle (:func:`compact`); ``dropped`` keeps the newest ts among them: an event at
or before it is refused (its id may be among the dropped ones), and the explanation's profile
without an event starts there (:mod:`stream_app.explain`). States written before it have none: an
optional key, so no version change.

``in`` keeps, per input topic, the offset of the newest record applied to the state with every
record of its partition (``inp``: the input topics are co-partitioned, so a user's records are in
one partition of each) before it read (:func:`note_input`): a record of the user at or before it
was applied or judged, so one read again (after a crash, offsets since the last commit) whose id
the state no longer holds is a duplicate, not ``late`` (:func:`seen_input`, :mod:`stream_app.core`).
"Read" as far as the worker knows when it applies the record: a hole found later, at a commit,
lowers the offset in memory (:func:`cap_input`), and a flush stores it no further than what was read.
Optional keys too; a flush stores the offsets capped to what is known read (:func:`dump`). Plain
ints, so that recording one allocates no object for the garbage collector to track per event.

A cap never goes below what the state knew before this worker applied a record to it: the offsets
it was loaded with (a flush stored them capped) or last flushed with. In memory ``_inb`` keeps
those (never stored; absent: ``in`` has not moved since, and all of it is known). Without it, a
restored state whose offsets a worker capped to the start of a hole it had just found (say 25,
where the worker that counted the user's records up to 163 had stored 163) took records 26..163,
read again, for new ones: ``late`` dead letters for events counted once (bench/rebalance.py, one
trial: 91 of them).

Idle users (:func:`idle_action`): after horizon + grace without events their rows are dropped
(``compact``: the window is over, the profile stays); after the profile retention the whole value
is deleted (``evict``).
"""
from __future__ import annotations

from bisect import insort
from dataclasses import dataclass
from sys import intern

import orjson

from interest_core.window import (DEFAULT_PROFILE_RETENTION_S, EVENT_TYPES, WindowEvent, late_bound, profile_fold,
                                  profiles_in_order, seconds_to_ms, stored_profile, window_start)

STATE_VERSION = 3


class StateFormatError(Exception):
    """A stored value has a format version this code cannot read."""


@dataclass(frozen=True, slots=True)
class Limits:
    horizon_ms: int
    grace_ms: int
    max_events: int
    profile_retention_ms: int = seconds_to_ms(DEFAULT_PROFILE_RETENTION_S)

    @property
    def late_span_ms(self) -> int:
        """The window plus its grace: how much older than the user's newest event an event may be
        before it is late (:func:`interest_core.window.late_bound`). Also how far after its event a
        record timestamp must be to be taken for the time of sending
        (:func:`stream_app.alignment.order_timestamp`), and the step back that the running-back
        count takes note of (:mod:`stream_app.input_order`)."""
        return self.horizon_ms + self.grace_ms

    @classmethod
    def from_settings(cls, s) -> "Limits":
        """The limits of a :class:`stream_app.settings.Settings` (worker and replay alike)."""
        return cls(seconds_to_ms(s.horizon_s), seconds_to_ms(s.grace_s), s.max_events,
                   seconds_to_ms(s.profile_retention_s))


def load(raw: bytes | None, limits: Limits | None = None) -> dict | None:
    """A stored state, migrated to the current format, and with ``limits`` settled to them
    (:func:`settle`)."""
    if raw is None:
        return None
    state = orjson.loads(raw)
    version = state.get("v")
    if version == 1:
        state = _migrate_v1(state)
        version = 2
    if version == 2:
        state["v"], state["out"], state["scored"] = STATE_VERSION, None, 0
        version = STATE_VERSION
    if version != STATE_VERSION:
        # a future format change adds a migration here instead of misreading old values
        raise StateFormatError(f"user state has format version {version!r}, expected {STATE_VERSION}")
    state["ev"] = [(r[0], r[1], _TYPES.get(r[2], r[2]), r[3] and intern(r[3])) + tuple(r[4:]) for r in state["ev"]]
    state["old"] = [(r[0], r[1], _TYPES.get(r[2], r[2]), r[3] and intern(r[3])) for r in state["old"]]
    if limits is not None:
        settle(state, limits)
    return state


def _migrate_v1(state: dict) -> dict:
    rows = sorted([r[:4] for r in state["old"]] + [r[:4] for r in state["ev"]], key=_order)
    prof = None
    for prof in profiles_in_order((WindowEvent(r[0], r[2], r[3]) for r in rows), 1 << 62):
        pass
    state["v"], state["p"] = 2, stored_profile(prof)
    return state


def dump(state: dict, caps: dict | None = None) -> bytes:
    """The stored form (the profile as of its newest event, in millionths: interest_core.window;
    without the in-memory id set and known offsets). ``caps``: per input ``(topic, partition)``, the
    highest offset the stored ``in`` may name (a flush's
    :meth:`stream_app.consumer.Consumer.input_caps`: past it a record may not have been read), see
    :func:`stored_input`."""
    return dump_with_input(state, stored_input(state, caps))


def dump_with_input(state: dict, kept: dict | None) -> bytes:
    """:func:`dump`, with the input offsets to store (``kept``, :func:`stored_input`) already known
    (a flush computes them once, for the stored form and for :func:`flushed_input`)."""
    prof = state.get("p")
    capped = kept != state.get("in")
    if "_ids" in state or "_inb" in state or (prof is not None and "w" in prof) or capped:
        state = {k: v for k, v in state.items() if k != "_ids" and k != "_inb"}
        state["p"] = stored_profile(prof)
        if capped:
            if kept:
                state["in"] = kept
            else:
                del state["in"], state["inp"]
    return orjson.dumps(state)


def stored_input(state: dict, caps: dict | None) -> dict | None:
    """The input offsets a flush stores: each topic's offset in memory ``caps``ped (one not in
    ``caps`` capped below 0), but never below the one known before this worker applied a record
    (``_inb``); a topic left below 0 is left out. Without ``caps`` or ``_inb``: ``in`` itself."""
    applied, known = state.get("in"), state.get("_inb")
    if applied is None or caps is None or known is None:
        return applied
    partition = state["inp"]
    return {t: o for t, a in applied.items()
            if (o := max(known.get(t, -1), min(a, caps.get((t, partition), -1)))) >= 0}


def flushed_input(state: dict, stored: dict | None) -> None:
    """A flush took the state with the input offsets ``stored`` (:func:`stored_input`): they are
    what is known from now on (``in`` keeps an offset past them for a later flush)."""
    if stored is None or stored == state.get("in"):
        state.pop("_inb", None)
    else:
        state["_inb"] = stored


def note_input(state: dict, topic: str, partition: int, offset: int) -> None:
    """The record at ``offset`` of ``topic``'s ``partition`` is applied, and every record of that
    partition before it was read: the state has seen each of the user's records up to it. The
    offsets known before the first such record since the state was loaded or flushed are kept
    (``_inb``, what :func:`cap_input` and a flush's caps do not go below)."""
    applied = state.get("in")
    if applied is None or state["inp"] != partition:  # the first, or the topics' partitions changed
        state["in"], state["inp"], state["_inb"] = {topic: offset}, partition, {}
    elif offset > applied.get(topic, -1):
        if "_inb" not in state:
            state["_inb"] = applied.copy()
        applied[topic] = offset


def cap_input(state: dict, topic: str, partition: int, offset: int) -> None:
    """Records of ``topic``'s ``partition`` after ``offset`` may not have been read (a hole found
    after later records were applied): the offset the state records goes no further, unless it was
    known before (``_inb``: loaded, or flushed; every record up to it was read then)."""
    applied, known = state.get("in"), state.get("_inb")
    if applied is not None and known is not None and state["inp"] == partition and applied.get(topic, -1) > offset:
        offset = max(offset, known.get(topic, -1))
        if offset >= 0:
            applied[topic] = offset
        else:
            del applied[topic]


def seen_input(state: dict | None, topic: str, partition: int, offset: int) -> bool:
    """Whether the record at ``offset`` of ``topic``'s ``partition`` is at or before the newest
    one the state applied (:func:`note_input`): applied or judged before, so read again."""
    return (state is not None and state.get("inp") == partition
            and offset <= state["in"].get(topic, -1))


def trim(state: dict, max_bytes: int) -> int:
    """Drop the oldest compact rows (``old``) until the stored form takes at most ``max_bytes``;
    returns how many were dropped. Only a user with tens of thousands of events within the window
    and the grace gets there (a changelog record is at most ``INTEREST_MAX_STATE_BYTES``): its
    counts then miss the dropped rows, and an event at or before them is refused (:func:`apply`).
    The newest rows, which the model reads, and the profile stay."""
    total = 0
    while (excess := len(dump(state)) - max_bytes) > 0 and state["old"]:
        old, dropped = state["old"], 0
        ids = state.get("_ids")
        while excess > 0 and dropped < len(old):
            row = old[dropped]
            excess -= len(orjson.dumps(row)) + 1  # the row and its comma
            if ids is not None:
                ids.discard(row[1])
            dropped += 1
        _note_dropped(state, old[dropped - 1][0])  # (its key may need another pass)
        del old[:dropped]
        total += dropped
    return total


def _note_dropped(state: dict, ts: int) -> None:
    """``ts`` is the newest of rows leaving the state (rows are sorted, so the last of them)."""
    if ts > state.get("dropped", ts - 1):
        state["dropped"] = ts


def new_state() -> dict:
    return {"v": STATE_VERSION, "seq": 0, "newest": None, "seen": 0, "ev": [], "old": [], "p": None,
            "out": None, "scored": 0}


def apply(state: dict | None, event: dict, limits: Limits, now_ms: int) -> tuple[str, dict | None]:
    """Add one validated event. Returns ``(outcome, new_state)``.

    outcome is ``accepted``, ``duplicate`` (state unchanged, returned as None), ``late`` (older
    than the window by more than the grace; state unchanged, None) or ``dropped``: at or before
    the newest row the state has dropped (an idle user's window, :func:`compact`; a too-large
    state's oldest rows, :func:`trim`). Their ids went with them, so a repeat of one of them
    cannot be told from a new event, and counting it would count it twice (state unchanged, None).

    In memory the state also keeps ``_ids``, the set of its rows' event ids (built at the first
    event after a load, never stored), so a duplicate is found without scanning the rows.
    """
    if state is None:
        state = new_state()
    eid, ts = event["event_id"], event["ts"]
    ev, old = state["ev"], state["old"]
    ids = state.get("_ids")
    if ids is None:
        ids = state["_ids"] = {r[1] for r in ev}
        ids.update(r[1] for r in old)
    if eid in ids:
        return "duplicate", None
    newest = state["newest"]
    if newest is not None and ts <= late_bound(newest, limits.horizon_ms, limits.grace_ms):
        return "late", None
    if ts <= state.get("dropped", ts - 1):
        return "dropped", None
    category = event.get("category")
    row = (ts, eid, _TYPES[event["type"]], category and intern(category), event.get("item_id"),
           event.get("dwell_ms"), event.get("query"))
    # not the newest: the profile needs the events at or after it (all of them are still in the
    # rows: an event older than the rows is late). Rows are sorted and every row of "old" comes
    # before every row of "ev", so those are a suffix of old + ev.
    newer: list = []
    if newest is not None and ts <= newest:
        for rows in (ev, old):
            for r in reversed(rows):
                if r[0] < ts:
                    break
                newer.append((r[0], r[2], r[3]))
            else:
                continue
            break
    state["p"] = profile_fold(state["p"], ts, row[2], row[3], limits.profile_retention_ms, newer)
    if not ev or (ts, eid) > (ev[-1][0], ev[-1][1]):
        ev.append(row)
    else:
        insort(ev, row, key=_order)
    ids.add(eid)
    state["newest"] = ts if newest is None or ts > newest else newest
    settle(state, limits)
    state["seen"] = now_ms
    state["seq"] += 1
    return "accepted", state


def settle(state: dict, limits: Limits) -> None:
    """Rows that left the window, or are beyond the newest ``max_events``, become compact; compact
    rows older than the window by more than the grace are dropped. After each event, and as a
    stored state is read (:func:`load` with ``limits``), so that a lowered ``INTEREST_HORIZON_S``,
    ``INTEREST_MAX_EVENTS`` or ``INTEREST_GRACE_S`` holds for every user at once: until its next
    event, a user's counts and the model's input kept the window of the settings before."""
    ev, old, newest = state["ev"], state["old"], state["newest"]
    if newest is None:
        return
    start = window_start(newest, limits.horizon_ms)
    while ev and (ev[0][0] <= start or len(ev) > limits.max_events):
        r = ev.pop(0)[:4]
        if not old or (r[0], r[1]) > (old[-1][0], old[-1][1]):
            old.append(r)
        else:
            insort(old, r, key=_order)
    bound = late_bound(newest, limits.horizon_ms, limits.grace_ms)
    drop = 0
    while drop < len(old) and old[drop][0] <= bound:
        drop += 1
    if drop:
        ids = state.get("_ids")
        if ids is not None:
            ids.difference_update(r[1] for r in old[:drop])
        _note_dropped(state, old[drop - 1][0])
        del old[:drop]


# A row's type and category are shared string objects (each event's JSON gives new ones): a worker
# holds hundreds of thousands of rows over a few dozen distinct values, and one shared object per
# value takes less memory and stays in the CPU's cache when rows are read.
_TYPES = {t: t for t in EVENT_TYPES}


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


def profile(state: dict) -> dict | None:
    """The user's long-term profile (:func:`interest_core.window.profile_update`), None before any event."""
    return state.get("p")


def is_pending(state: dict) -> bool:
    """Events arrived since the user's last vector (or there is none yet)."""
    return state["seq"] != state["scored"]


def record_vector(state: dict, vector: dict, seq: int) -> None:
    """Keep ``vector`` as the user's last published one; it saw the state up to ``seq``."""
    state["out"], state["scored"] = vector, seq


def unpublished(state: dict) -> None:
    """Its last vector did not reach the output topic: the user is pending again (the next
    vector's drift is still against that one, the last the worker computed)."""
    state["scored"] = -1


def idle_facts(state: dict) -> tuple[int, int, bool]:
    """What idle eviction needs of a state, kept for every user of a partition without
    decoding it again: (newest ts, worker clock when last accepted, whether it has rows)."""
    return state["newest"], state["seen"], bool(state["ev"] or state["old"])


def compact(state: dict) -> dict:
    """The state of an idle user without its rows (the window is over; the profile stays)."""
    newest = max(rows[-1][0] for rows in (state["ev"], state["old"]) if rows) if state["ev"] or state["old"] else None
    if newest is not None:
        _note_dropped(state, newest)
    state["ev"], state["old"] = [], []
    state.pop("_ids", None)
    return state


def idle_action(facts: tuple[int, int, bool], partition_newest: int, now_ms: int, limits: Limits) -> str | None:
    """What to do with a user idle for a while (``facts`` from :func:`idle_facts`), judged both in
    event time (the partition's newest ts moved past) and on the worker's clock (so a replay of
    old data, whose event time races ahead, does not drop users whose events are still
    arriving): ``"evict"`` (delete) after the profile retention, ``"compact"`` (drop the rows)
    after horizon + grace, else None."""
    newest, seen, has_rows = facts

    def idle_for(span: int) -> bool:
        return newest + span < partition_newest and seen + span < now_ms

    window_span = limits.late_span_ms
    if idle_for(max(window_span, limits.profile_retention_ms)):
        return "evict"
    if has_rows and idle_for(window_span):
        return "compact"
    return None

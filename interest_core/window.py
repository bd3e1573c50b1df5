"""The per-user window: one definition shared by training, evaluation and the worker.

A user's window is their accepted, de-duplicated events with ``ts`` in
``(newest_ts - horizon, newest_ts]`` (CONTRACT.md, "Per-user window"). The model reads the most
recent ``max_events`` of them. Events are kept in a model-independent form (no token ids), so a
new model with another vocabulary reads the same state.

Everything here is pure Python (no torch, no Kafka) so every side imports the same code.
Times are epoch milliseconds everywhere; seconds from settings are converted once, in
:func:`seconds_to_ms`.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Iterable, Sequence

EVENT_TYPES = ("click", "browse", "search")

DEFAULT_HORIZON_S = 86_400  # CONTRACT: INTEREST_HORIZON_S, how far back a window reaches
DEFAULT_MAX_EVENTS = 128  # CONTRACT: INTEREST_MAX_EVENTS, most events the model reads
DEFAULT_GRACE_S = 3_600  # CONTRACT: INTEREST_GRACE_S, lateness accepted beyond the window


def seconds_to_ms(seconds: float) -> int:
    """The one place settings in seconds become event-time milliseconds."""
    return int(round(seconds * 1000))


@dataclass(frozen=True, slots=True)
class WindowEvent:
    """One accepted event in the model-independent form the window keeps."""

    ts: int  # event time, epoch ms
    type: str  # click / browse / search
    category: str | None = None  # click, browse
    item: str | None = None  # click, browse
    dwell_ms: int | None = None  # browse, optional
    query: str | None = None  # search

    def to_row(self) -> list:
        """Compact list form used in stored state (smaller than a dict in JSON)."""
        return [self.ts, self.type, self.category, self.item, self.dwell_ms, self.query]

    @classmethod
    def from_row(cls, row: Sequence) -> "WindowEvent":
        return cls(row[0], row[1], row[2], row[3], row[4], row[5])

    @classmethod
    def from_event(cls, event: dict) -> "WindowEvent":
        """From a validated input event (contract schema)."""
        return cls(
            ts=event["ts"],
            type=event["type"],
            category=event.get("category"),
            item=event.get("item_id"),
            dwell_ms=event.get("dwell_ms"),
            query=event.get("query"),
        )


def window_start(newest_ts: int, horizon_ms: int) -> int:
    """Exclusive lower bound of the window: events need ``ts > window_start``."""
    return newest_ts - horizon_ms


def late_bound(newest_ts: int, horizon_ms: int, grace_ms: int) -> int:
    """Events with ``ts <= late_bound`` are older than the window by more than the grace."""
    return newest_ts - horizon_ms - grace_ms


def window_slice(
    events: Sequence[WindowEvent], newest_ts: int, horizon_ms: int, max_events: int
) -> list[WindowEvent]:
    """The events the model reads: those of ``events`` (sorted by ts) in the window ending at
    ``newest_ts``, at most the ``max_events`` most recent."""
    ts = [e.ts for e in events]
    hi = bisect_right(ts, newest_ts)
    lo = bisect_right(ts, window_start(newest_ts, horizon_ms), 0, hi)
    lo = max(lo, hi - max_events)
    return list(events[lo:hi])


def category_counts(events: Iterable[WindowEvent]) -> dict[str, int]:
    """Counts per category of clicks and browses (searches carry no category)."""
    out: dict[str, int] = {}
    for e in events:
        if e.category is not None and e.type != "search":
            out[e.category] = out.get(e.category, 0) + 1
    return out


# --- the long-term profile -------------------------------------------------------------------
# The window holds a day; interests persist for longer, and a user who comes back after a week
# starts with an empty window. The profile is what the window forgets: per category, the user's
# clicks and browses with exponentially decaying weights, on a few fixed scales. It is kept in
# the user's state beside the window (category names, not token ids: model-independent), updated
# by the worker on every accepted event and computed by training at every cut with this very
# code, so both sides see the same numbers.
#
# Stored form: {"t": newest ts folded in (epoch ms), "c": {category: [value per scale]}}, the
# values being as of "t", in millionths (integers). A gap of more than the retention between the
# newest event and the next one starts a new profile (the worker evicts a user idle that long, and
# training does the same).
# (kind, half-life s | events). The first three are the original ones; the last two (a year, 100
# events) were added because a grocery household's tuned counter remembers for months (issue 11:
# on The Complete Journey the best counter's half-life was 300 events), which the 30-day scale
# cannot carry. A spec lists the scales it reads, always a prefix of these (older models read 3).
PROFILE_SCALES = (("time", 86_400), ("time", 30 * 86_400), ("events", 10), ("time", 365 * 86_400), ("events", 100))
# A stored profile written before a scale existed has shorter lists: each missing scale starts from
# the nearest existing one of its kind (the year from 30 days, 100 events from 10), an estimate that
# the following events correct (in ~its half-life).
PROFILE_EXTEND_FROM = {3: 1, 4: 2}
PROFILE_TYPE_WEIGHTS = {"click": 1.0, "browse": 0.5}  # also the default target weights of training (models.data)
PROFILE_MAX_CATEGORIES = 32  # the largest kept per user (state size bound)
PROFILE_UNIT = 1_000_000  # values are stored as integers in millionths (compact, exact in JSON); a
# category whose values all round to 0 is dropped
DEFAULT_PROFILE_RETENTION_S = 365 * 86_400  # CONTRACT extension: INTEREST_PROFILE_RETENTION_S


def profile_update(profile: dict | None, event: WindowEvent, retention_ms: int,
                   newer_rows: Sequence[tuple] = ()) -> dict:
    """Fold one accepted event into ``profile`` (changed in place and returned; a new one for
    None or after a gap longer than ``retention_ms``).

    The result does not depend on the order events are folded in (up to the rounding to
    millionths, :data:`PROFILE_UNIT`), so the worker, which sees a user's clicks, browses and
    searches on three topics in arrival order, gets what training gets folding them in ``ts`` order: on a
    time scale an event weighs ``w * 0.5 ** (age / half_life)``; on the event scale
    ``w * 0.5 ** (n / half_life)``, ``n`` being the number of the user's events with a strictly
    larger ``ts`` (every type counts). ``newer_rows`` are ``(ts, type, category)`` of the events
    already folded in whose ``ts`` is at or after this event's: the worker takes them from its
    rows (anything older than the rows is late); folding in ts order, they are the earlier events
    of the same ts."""
    ts = event.ts
    if profile is None or ts > profile["t"] + retention_ms:
        profile, newer_rows = {"t": ts, "c": {}}, ()
    values = profile["c"]
    ref = profile["t"]
    # Every event older than this one ages: by the time gap on the time scales (only if this one
    # is the newest), by one step on the event scales. Events at or after its ts keep their
    # weight: their event-scale share is taken out before the step and put back after it.
    if ts > ref:
        step = [0.5 ** ((ts - ref) / hm) if hm else 0.5 ** (1.0 / he) for hm, he in _SCALES]
    else:
        step = _EVENT_ONLY_STEP
    keep: dict[str, list[float]] = {}
    n = newer = 0  # newest first: n = rows with a strictly larger ts than the current one
    prev_ts = None
    for i_row, (r_ts, r_type, r_cat) in enumerate(sorted(newer_rows, key=_row_ts, reverse=True)):
        if r_ts != prev_ts:
            n, prev_ts = i_row, r_ts
        if r_ts > ts:
            newer += 1
        w = PROFILE_TYPE_WEIGHTS.get(r_type)
        if not w or r_cat is None:
            continue
        ks = keep.setdefault(r_cat, [0.0] * len(PROFILE_SCALES))
        for i, h in _EVENT_SCALES:
            ks[i] += w * PROFILE_UNIT * 0.5 ** (n / h)
    gone = []
    for cat, vs in values.items():
        if len(vs) < len(PROFILE_SCALES):
            vs = _extend(vs)
        ks = keep.get(cat) if keep else None
        if ks:
            vs = [int(v * f + k * (1.0 - f) + 0.5) for v, f, k in zip(vs, step, ks)]
        else:
            vs = [int(v * f + 0.5) for v, f in zip(vs, step)]
        values[cat] = vs
        if not any(vs):
            gone.append(cat)
    for cat in gone:
        del values[cat]
    if ts > ref:
        profile["t"] = ref = ts
    w = PROFILE_TYPE_WEIGHTS.get(event.type)
    if w and event.category is not None:
        w *= PROFILE_UNIT
        add = [w * 0.5 ** ((ref - ts) / hm) if hm else w * 0.5 ** (newer / he) for hm, he in _SCALES]
        vs = values.get(event.category) or [0] * len(PROFILE_SCALES)
        values[event.category] = [int(v + a + 0.5) for v, a in zip(vs, add)]
        if len(values) > PROFILE_MAX_CATEGORIES:
            drop = min(values, key=lambda c: (sum(values[c]), c))
            del values[drop]
    return profile


def _extend(vs: Sequence) -> list:
    """A stored value list from before the newer scales, extended (:data:`PROFILE_EXTEND_FROM`)."""
    out = list(vs)
    for j in range(len(out), len(PROFILE_SCALES)):
        out.append(out[PROFILE_EXTEND_FROM[j]])
    return out


def _row_ts(row: tuple) -> int:
    return row[0]


# per scale: (half-life in ms, 0) for a time scale, (0, half-life in events) for an event scale
_SCALES = tuple((seconds_to_ms(h), 0) if kind == "time" else (0, h) for kind, h in PROFILE_SCALES)
_EVENT_SCALES = tuple((i, he) for i, (_, he) in enumerate(_SCALES) if he)
_EVENT_ONLY_STEP = [1.0 if hm else 0.5 ** (1.0 / he) for hm, he in _SCALES]  # an event that is not the newest


def profiles_in_order(events: Iterable[WindowEvent], retention_ms: int):
    """Fold ``events`` (sorted by ts) into a profile one by one, yielding it after each (the same
    dict, updated in place, until a gap restarts it): how training computes the profile at cuts."""
    prof, same = None, []
    for e in events:
        if same and same[-1][0] != e.ts:
            same = []
        prof = profile_update(prof, e, retention_ms, same)
        same.append((e.ts, e.type, e.category))
        yield prof


def profile_values(profile: dict | None) -> dict[str, list[float]]:
    """The profile's weights per category and scale (floats), as of its newest event ``t``: the
    time of the window it belongs to, so nothing needs decaying."""
    if not profile:
        return {}
    n = len(PROFILE_SCALES)
    return {c: [v / PROFILE_UNIT for v in (vs if len(vs) >= n else _extend(vs))] for c, vs in profile["c"].items()}

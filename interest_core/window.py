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

from array import array
from bisect import bisect_right
from typing import Iterable, NamedTuple, Sequence

EVENT_TYPES = ("click", "browse", "search")
# CONTRACT: an event's string fields, each 1 to this many characters (the worker dead-letters the
# rest as too_long, and the loaders refuse to write them)
STRING_LIMITS = {"event_id": 128, "user_id": 128, "item_id": 128, "category": 128, "query": 512}
MAX_TS = 2**63 - 1  # CONTRACT: ts is epoch ms >= 0, and a Kafka record timestamp (a LONG) holds it

DEFAULT_HORIZON_S = 86_400  # CONTRACT: INTEREST_HORIZON_S, how far back a window reaches
DEFAULT_MAX_EVENTS = 128  # CONTRACT: INTEREST_MAX_EVENTS, most events the model reads
DEFAULT_GRACE_S = 3_600  # CONTRACT: INTEREST_GRACE_S, lateness accepted beyond the window


def seconds_to_ms(seconds: float) -> int:
    """The one place settings in seconds become event-time milliseconds."""
    return int(round(seconds * 1000))


class WindowEvent(NamedTuple):
    """One accepted event in the model-independent form the window keeps (a named tuple: the
    worker builds one per row of every scored window, and a frozen dataclass costs 2.5x more)."""

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
#
# Working form (in memory, while events are folded in): the sums are kept against fixed anchors
# instead of "as of t", so an event newer than every other one changes one category only
# (an O(1) fold instead of decaying every category at every event):
#   {"t": newest ts, "n": events folded, "at": anchor ts, "an": anchor count,
#    "w": {category: array of sums, one per scale}}
# where on a time scale (half-life H ms) an event adds w * 2 ** ((ts - at) / H), read as of t by
# multiplying with 2 ** ((at - t) / H); on the event scale (half-life h) it adds
# w * 2 ** ((r - an) / h), r being how many folded events have a ts at or before its own, read by
# multiplying with 2 ** ((an - n) / h): that is w * 0.5 ** (events after it / h). The anchors move
# to (t, n) before the sums grow past 2 ** 64 (:data:`_REBASE`), and :func:`stored_profile` gives
# the stored form.
# Scales, (kind, half-life s | events). The first three are the original ones; the last two (a
# year, 100 events) were added because a grocery household's tuned counter remembers for months
# (issue 11: on The Complete Journey the best counter's half-life was 300 events), which the
# 30-day scale cannot carry. A spec lists the scales it reads, always a prefix of these (older
# models read 3).
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
    """Fold one accepted event into ``profile`` (a working-form profile is changed in place and
    returned; a stored one, None, or one older than ``retention_ms`` before the event gives a new
    working-form dict).

    The result does not depend on the order events are folded in (up to floating point), so the
    worker, which sees a user's clicks, browses and searches on three topics in arrival order,
    gets what training gets folding them in ``ts`` order: on a time scale an event weighs
    ``w * 0.5 ** (age / half_life)``; on the event scale ``w * 0.5 ** (n / half_life)``, ``n``
    being the number of the user's events with a strictly larger ``ts`` (every type counts).
    ``newer_rows`` are ``(ts, type, category)`` of the events already folded in whose ``ts`` is at
    or after this event's, **newest first**: the worker takes them from its sorted rows, walking
    back (anything older than the rows is late); folding in ts order, they are the earlier events
    of the same ts. Each of them gets one more event at or before its ts, so its event-scale weight
    grows by one step: a fold costs O(1) plus O(len(newer_rows))."""
    return profile_fold(profile, event.ts, event.type, event.category, retention_ms, newer_rows)


def profile_fold(profile: dict | None, ts: int, etype: str, category: str | None, retention_ms: int,
                 newer_rows: Sequence[tuple] = ()) -> dict:
    """:func:`profile_update` with the event's fields given one by one (the worker's hot path)."""
    if profile is not None and "w" not in profile:
        profile = working_profile(profile)
    if profile is None or ts > profile["t"] + retention_ms:
        profile, newer_rows = {"t": ts, "n": 0, "at": ts, "an": 0, "w": {}}, ()
    sums, n, an = profile["w"], profile["n"], profile["an"]
    strictly_newer = 0
    if newer_rows:
        # a newer row's term on event scale i grows by w * 2 ** ((n - m - an) / h) * grow, m being
        # the rows with a strictly larger ts than its own: 2 ** ((n - an) / h) * grow once per
        # scale, times 2 ** (-m / h) from a table
        grows = [(i, 2.0 ** ((n - an) / h) * grow, steps) for i, h, grow, steps in _EVENT_SCALES]
        m, prev = 0, None
        for i_row, (r_ts, r_type, r_cat) in enumerate(newer_rows):
            if r_ts != prev:
                m, prev = i_row, r_ts
            if r_ts > ts:
                strictly_newer += 1
            w = PROFILE_TYPE_WEIGHTS.get(r_type)
            vs = sums.get(r_cat) if w and r_cat is not None else None
            if vs is not None:
                for i, g, steps in grows:
                    vs[i] += w * g * (steps[m] if m < _STEPS else steps[1] ** m)
    n += 1
    w = PROFILE_TYPE_WEIGHTS.get(etype)
    if w and category is not None:
        vs = sums.get(category)
        if vs is None:
            vs = sums[category] = _ZERO_SUMS[:]
        at = profile["at"]
        for i, (hm, he) in enumerate(_SCALES):
            vs[i] += w * 2.0 ** ((ts - at) / hm) if hm else w * 2.0 ** ((n - strictly_newer - an) / he)
    profile["n"] = n
    if ts > profile["t"]:
        profile["t"] = ts
    if len(sums) > PROFILE_MAX_CATEGORIES:
        values = profile_values(profile)
        del sums[min(values, key=lambda c: (sum(values[c]), c))]
    if profile["t"] - profile["at"] > _REBASE_MS or n - an > _REBASE_EVENTS:
        _rebase(profile)
    return profile


# per scale: (half-life in ms, 0) for a time scale, (0, half-life in events) for an event scale
_SCALES = tuple((seconds_to_ms(h), 0) if kind == "time" else (0, h) for kind, h in PROFILE_SCALES)
# A category's working sums, one per scale, in an array: one object with its floats side by side
# (a list would hold a float object per value, each allocated where it happened to fit; a worker
# reads tens of thousands of users' profiles, and scattered values are slower to read).
_ZERO_SUMS = array("d", bytes(8 * len(_SCALES)))
_STEPS = 1024  # 2 ** (-m / h) is tabled for m below this (a user's rows rarely exceed it)
# per event scale: (index, half-life, 2 ** (1 / h) - 1, [2 ** (-m / h) for m < _STEPS])
_EVENT_SCALES = tuple((i, he, 2.0 ** (1.0 / he) - 1.0, [2.0 ** (-m / he) for m in range(_STEPS)])
                      for i, (_, he) in enumerate(_SCALES) if he)
_REBASE = 64  # half-lives between anchor and newest before the anchors move (sums stay below 2 ** 64)
_REBASE_MS = _REBASE * min((hm for hm, _ in _SCALES if hm), default=1 << 62)
_REBASE_EVENTS = _REBASE * min((he for _, he in _SCALES if he), default=1 << 62)


def _factors(profile: dict) -> list[float]:
    """Per scale, what turns the working sums into values as of the profile's newest event."""
    t, n, at, an = profile["t"], profile["n"], profile["at"], profile["an"]
    return [2.0 ** ((at - t) / hm) if hm else 2.0 ** ((an - n) / he) for hm, he in _SCALES]


def _rebase(profile: dict) -> None:
    f = _factors(profile)
    for vs in profile["w"].values():
        for i, x in enumerate(f):
            vs[i] *= x
    profile["at"], profile["an"] = profile["t"], profile["n"]


def _extend(vs: Sequence) -> list:
    """A stored value list from before the newer scales, extended (:data:`PROFILE_EXTEND_FROM`)."""
    if len(vs) >= len(PROFILE_SCALES):
        return vs
    out = list(vs)
    for j in range(len(out), len(PROFILE_SCALES)):
        out.append(out[PROFILE_EXTEND_FROM[j]])
    return out


def working_profile(stored: dict) -> dict:
    """The working form of a stored profile (values as of ``t`` become the sums, anchored there;
    lists from before the newer scales extended)."""
    return {"t": stored["t"], "n": 0, "at": stored["t"], "an": 0,
            "w": {c: array("d", [v / PROFILE_UNIT for v in _extend(vs)]) for c, vs in stored["c"].items()}}


def stored_profile(profile: dict | None) -> dict | None:
    """The stored form (values as of ``t`` in millionths; categories that round to 0 left out)."""
    if profile is None or "w" not in profile:
        return profile
    f = [x * PROFILE_UNIT for x in _factors(profile)]
    out = {}
    for c, vs in profile["w"].items():
        ints = [int(v * x + 0.5) for v, x in zip(vs, f)]
        if any(ints):
            out[c] = ints
    return {"t": profile["t"], "c": out}


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
    time of the window it belongs to, so nothing needs decaying (either form)."""
    if not profile:
        return {}
    if "w" in profile:
        f = _factors(profile)
        return {c: [v * x for v, x in zip(vs, f)] for c, vs in profile["w"].items()}
    return {c: [v / PROFILE_UNIT for v in _extend(vs)] for c, vs in profile["c"].items()}

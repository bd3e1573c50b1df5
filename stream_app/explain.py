"""Why a user's vector says what it says, and how it got there, from the user's state alone.

Pure (numpy and the model object, no Faust): ``GET /users/{id}/explain`` and the page of
``GET /users/{id}/view`` call :func:`snapshot` in the event loop (a copy of what the answer depends
on: the state keeps changing) and :func:`explain` in a thread.

Everything is scored as serving scores it (:func:`stream_app.core.snapshot` gives the window and
the profile input of the current state) in ONE batched model call per request:

* **the vector now**: the current window with the current profile (what the next published
  vector will say);
* **leave-one-out occlusion**: for every event of the window, the state re-scored as if that event
  had never happened: removed from the window and from the long-term profile
  (:class:`ProfileUnwinder`), and the window the state would then hold (:func:`window_without`):
  without the newest event the window ends earlier, and without any event of a window of
  ``INTEREST_MAX_EVENTS`` the next older one comes in, from the state's compact rows (type and
  category: their item, dwell and query are not kept). An event's *effect* on a category is the
  probability now minus the probability without it: positive, the event raised it;
* **the profile's contribution**: the window re-scored without the profile (zeros, the input of a
  user with no history); the difference per category, and the Jensen-Shannon divergence between
  the two vectors;
* **the evolution** (the page only): the vector after each moment of the window, i.e. for each
  distinct ``ts`` of its events the events up to it, with the profile as it was then (unwound from
  the current one, exactly: no history is stored), and the window as it was (events older than
  the rows the state keeps in full come from its compact rows, as above).

A user whose window is over (idle past the horizon and the grace: the state dropped its rows) has
no event to leave out, and no input its vector came from: :func:`idle` explains the latest published
vector, which ``GET /users/{id}`` and re-ranking serve, as such. Re-scored, the empty window with the
profile said other top interests than that vector, an input no training sample has.

An event is shown as its type, its category and item (clicks and browses), its ``ts``, its age
(``newest_ts - ts``, event time) and its effect. A search is shown as a search: never its text
(the contract keeps search text inside the worker).
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from interest_core.window import (PROFILE_SCALES, PROFILE_TYPE_WEIGHTS, PROFILE_UNIT, WindowEvent, profile_values,
                                  seconds_to_ms, window_slice)

from .vectors import js_divergence, top_categories

TOP = 3  # categories explained: the vector's top 3 (the contract's "top")
LIMIT = 5  # events listed per category and direction (raised, lowered)
EPS = 1e-6  # profile sums below this after removing events are rounding (stored values are millionths): 0

# per scale (ms half-life, 0) for a time scale, (0, half-life in events) for the event scale
_SCALES = [(seconds_to_ms(h), 0) if kind == "time" else (0, h) for kind, h in PROFILE_SCALES]


class ProfileUnwinder:
    """The long-term profile as it would be without some of the events folded into it.

    ``values``/``t``: the profile as of its newest event ``t`` (:func:`profile_values`). ``rows``:
    ``(ts, type, category)`` sorted by ``ts``, holding EVERY folded event with ``ts >= rows[0][0]``
    (the state's rows are such a suffix: anything older than them is late). Within those rows each
    event's share of the profile is known (:func:`interest_core.window.profile_update`: on a time
    scale ``w * 2 ** ((ts - t) / H)``, on the event scale ``w * 2 ** (-newer / h)``, ``newer`` being
    the events with a strictly larger ``ts``), so removing events is exact:

    * :meth:`before` (the rows after ``x`` removed, read as of ``x``): every remaining event is older
      than every removed one, so its share grows by the same factor per scale,
      ``2 ** ((t - x) / H)`` and ``2 ** (removed / h)``, the events before the rows included;
    * :meth:`without` (one row removed): on the time scales its share goes (and the rest is read as
      of the newest remaining ``ts`` when it was the only newest: the previous row's, or ``before``,
      the newest ts folded in before the rows, when it was the only row); on the event scale every
      event strictly older than it counts one newer event less.

    Categories pruned from the profile (it keeps 32) stay out; one pruned that came back has its
    earlier rows subtracted too, and which category the fold without an event would have pruned is
    not known: not exact for users of more than 32 categories. A result below 1e-6 is rounding of the
    stored millionths and becomes 0. Without ``before`` (a state that has dropped no row, or one
    stored before the state kept it), the only row's removal leaves the rest read as of ``t``. A late
    event accepted after rows were compacted or trimmed away has its event-scale share counted
    against the rows only: not exact there either.
    """

    def __init__(self, values: dict[str, list[float]], t: int | None, rows: list[tuple], before: int | None = None):
        self.categories = list(values)
        idx = {c: i for i, c in enumerate(self.categories)}
        m, s = len(self.categories), len(_SCALES)
        self.t, self.before_t = t, before
        self.V = np.array([values[c] for c in self.categories], dtype=np.float64).reshape(m, s)
        self.ts = [r[0] for r in rows]
        n = len(rows)
        self.cat = np.full(n, -1, dtype=np.int64)
        self.C = np.zeros((n, s))  # each row's share, per scale, in its own category
        for j, (ts, etype, category) in enumerate(rows):
            w = PROFILE_TYPE_WEIGHTS.get(etype)
            i = idx.get(category) if w and category is not None else None
            if i is None or t is None:
                continue
            newer = n - bisect_right(self.ts, ts)
            self.cat[j] = i
            self.C[j] = [w * 2.0 ** ((ts - t) / hm) if hm else w * 2.0 ** (-newer / he) for hm, he in _SCALES]
        # G[i]: the shares of rows i.. per category and scale (suffix sums)
        per_row = np.zeros((n + 1, m, s))
        rows_with = np.nonzero(self.cat >= 0)[0]
        per_row[rows_with, self.cat[rows_with]] = self.C[rows_with]
        self.G = np.cumsum(per_row[::-1], axis=0)[::-1]

    def before_all(self, xs) -> np.ndarray:
        """(len(xs), m, scales): the profile after the events with ``ts <= x`` only, read as of ``x``,
        for each ``x`` (at or after the first row's ts)."""
        xs = np.asarray(xs, dtype=np.int64)
        i = np.searchsorted(np.asarray(self.ts, dtype=np.int64), xs, side="right")
        rest = self.V[None] - self.G[i]
        rest[rest < EPS] = 0.0
        removed = len(self.ts) - i
        for s, (hm, he) in enumerate(_SCALES):
            rest[:, :, s] *= (2.0 ** ((self.t - xs) / hm) if hm else 2.0 ** (removed / he))[:, None]
        return rest

    def without_all(self, js) -> tuple[np.ndarray, list[int | None]]:
        """(len(js), m, scales): the profile without row ``j``, for each ``j``; and the ``t`` of each."""
        js = np.asarray(js, dtype=np.int64)
        n, N = len(self.ts), len(js)
        out = np.repeat(self.V[None], N, axis=0)
        own = np.nonzero(self.cat[js] >= 0)[0]
        out[own, self.cat[js[own]]] -= self.C[js[own]]
        ts = np.asarray(self.ts, dtype=np.int64)
        lo = np.searchsorted(ts, ts[js], side="left")
        older = self.V[None] - self.G[lo]  # the events strictly older than row j
        older[older < EPS] = 0.0
        # without the only newest event the profile is read as of the newest remaining one
        # (a late event accepted after rows were compacted or trimmed can sit below ``before``)
        prev = max((v for v in (int(ts[-2]) if n > 1 else None, self.before_t) if v is not None), default=None)
        only_newest = (js == n - 1) & (lo == n - 1) & (prev is not None)
        new_t = [prev if o else self.t for o in only_newest]
        for s, (hm, he) in enumerate(_SCALES):
            if he:
                out[:, :, s] += (2.0 ** (1.0 / he) - 1.0) * older[:, :, s]
            elif only_newest.any():
                out[only_newest, :, s] *= 2.0 ** ((self.t - prev) / hm)
        out[out < EPS] = 0.0
        return out, new_t

    def before(self, x: int) -> dict | None:
        """:meth:`before_all` of one ``x`` in the stored form (``{"t", "c": {category: millionths}}``)."""
        return self.stored(self.before_all([x])[0], x)

    def without(self, j: int) -> dict | None:
        """:meth:`without_all` of one row in the stored form."""
        values, ts = self.without_all([j])
        return self.stored(values[0], ts[0])

    def stored(self, values: np.ndarray, t: int | None) -> dict | None:
        if t is None:
            return None
        return {"t": t, "c": {c: [float(v) * PROFILE_UNIT for v in vs]
                              for c, vs in zip(self.categories, values) if vs.any()}}

    def inputs(self, values: np.ndarray, encoder) -> np.ndarray:
        """(N, P) float32 model inputs of (N, m, scales) values, laid out as
        :meth:`interest_core.encoding.Encoder.profile_vector` lays them out (scale-major, categories
        in output order, categories the model does not know left out)."""
        k = encoder.k
        out = np.zeros((len(values), encoder.profile_size), np.float32)
        idx = np.array([encoder.category_index(c) for c in self.categories], dtype=np.int64)
        keep = np.nonzero(idx >= 0)[0]
        for s in range(len(encoder.profile_scales)):
            out[:, s * k + idx[keep]] = values[:, keep, s]
        return out


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What an explanation depends on, copied out of a user's state in the event loop."""

    newest: int | None
    rows: list  # the window's full rows (state "ev"): [ts, id, type, category, item, dwell, query], oldest first
    tied: list  # compact rows (state "old") with the ts of the first full row: the unwinder needs them
    values: dict  # the profile per category and scale, as of ``t``
    t: int | None
    before: int | None  # the newest ts folded into the profile before ``tied`` and ``rows`` (None: unknown)
    compact: list  # the newest max_events compact rows (state "old"), [ts, id, type, category]: all older than rows
    horizon_ms: int  # the window's reach and size, as the state keeps it (INTEREST_HORIZON_S, INTEREST_MAX_EVENTS)
    max_events: int


def snapshot(state: dict, horizon_ms: int, max_events: int) -> Snapshot:
    ev = list(state["ev"])
    first = ev[0][0] if ev else None
    tied = [tuple(r[:4]) for r in state["old"] if first is not None and r[0] >= first]
    older = [r[0] for r in state["old"] if first is not None and r[0] < first]
    prof = state.get("p")
    before = max((v for v in (older[-1] if older else None, state.get("dropped")) if v is not None), default=None)
    compact = [tuple(r[:4]) for r in state["old"][-max_events:]]  # no window holds more of them
    return Snapshot(state["newest"], ev, tied, profile_values(prof), prof["t"] if prof else None, before, compact,
                    horizon_ms, max_events)


def window_without(snap: Snapshot, full: list, upto: int | None = None) -> list:
    """The window (oldest first) the state would hold with only ``full`` (WindowEvents of some of
    its full rows) of those rows, and none newer than ``upto``: the newest ``max_events`` events
    within the horizon of the newest remaining one (:func:`interest_core.window.window_slice`, the
    one window definition). The state's compact rows, all older than its full rows, come back as
    their type and category."""
    if upto is not None:
        full = full[:bisect_right([e.ts for e in full], upto)]
    events = [WindowEvent(r[0], r[2], r[3]) for r in snap.compact] + full
    if not events:
        return []
    return window_slice(events, events[-1].ts, snap.horizon_ms, snap.max_events)


def _event(row: list, newest: int, effect: float | None = None) -> dict:
    """An event as explanations show it: never a search's text."""
    ts, eid, etype, category, item = row[:5]
    out = {"event_id": eid, "type": etype, "ts": ts, "age_ms": newest - ts}
    if etype != "search":
        out["category"], out["item"] = category, item
    if effect is not None:
        out["effect"] = effect
    return out


def is_idle(snap: Snapshot) -> bool:
    """The state holds no row of its window: an idle user's, compacted (:func:`stream_app.state.compact`)."""
    return not snap.rows and not snap.compact


def idle(vector: dict, snap: Snapshot, profile_used: bool, evolution: bool = False) -> dict:
    """The explanation of an idle user (:func:`is_idle`) whose latest published vector is ``vector``:
    its interests and top, no events (they were dropped with the rows), and ``idle`` naming when
    the window's newest event was and the vector's ``ts``. The profile's part is not measured: the
    inputs the vector came from are gone."""
    interests = {c: float(p) for c, p in vector["interests"].items()}
    out = {
        "model_version": vector["model_version"],
        "newest_ts": snap.newest,
        "events": 0,
        "interests": interests,
        "top": list(vector["top"]),
        "categories": [{"category": c, "p": interests[c], "raised": [], "lowered": []} for c in vector["top"]],
        "profile": {"used": profile_used, "effect": {}, "without_profile": {}, "divergence": None},
        "idle": {"newest_ts": snap.newest, "vector_ts": vector["ts"]},
    }
    if evolution:
        out["evolution"] = {"ts": [], "series": {c: [] for c in interests}, "events": []}
    return out


def explain(model, score_input, snap: Snapshot, batch: int = 256, evolution: bool = False) -> dict:
    """The explanation (module doc) of one user's current state; ``score_input`` is
    :func:`stream_app.core.snapshot` of the same state. Runs the model once (all variants in one
    batched call); safe in a thread."""
    rows, n = snap.rows, len(snap.rows)
    unwinder = ProfileUnwinder(snap.values, snap.t,
                               [(r[0], r[2], r[3]) for r in snap.tied] + [(r[0], r[2], r[3]) for r in rows],
                               snap.before)
    offset = len(snap.tied)
    window = score_input.window
    row_ts = [r[0] for r in rows]
    points = sorted(set(row_ts))[:-1] if evolution else []  # the last point is "now"
    # 0: the current state, 1: without the profile, then without each event, then each moment
    windows = [window, window] + [window_without(snap, window[:j] + window[j + 1:]) for j in range(n)]
    windows += [window_without(snap, window, upto=x) for x in points]
    prof_in = np.zeros((len(windows), model.encoder.profile_size), np.float32)
    if model.encoder.profile_size:
        prof_in[0] = score_input.profile  # exactly what live scoring feeds
        if n:
            prof_in[2:2 + n] = unwinder.inputs(unwinder.without_all(range(offset, offset + n))[0], model.encoder)
        if points:
            prof_in[2 + n:] = unwinder.inputs(unwinder.before_all(points), model.encoder)
    enc = model.encoder.encode  # the current window (twice) is already encoded in the snapshot
    lifts = model.item_lifts(windows)  # each variant's items (None: the model has no item lift)
    probs = model.predict_ids([score_input.ids] * 2 + [enc(w) for w in windows[2:]], prof_in, batch, lifts=lifts)

    cats = list(model.categories)
    now, bare, loo = probs[0], probs[1], probs[2:2 + n]
    interests = dict(zip(cats, map(float, now)))
    top = top_categories(interests, TOP)
    effects = now[None, :] - loo  # (n, k): what each event added to each category
    explained = []
    for c in top:
        i = cats.index(c)
        col = effects[:, i]
        order = sorted(range(n), key=lambda j: (-col[j], -rows[j][0]))
        raised = [_event(rows[j], snap.newest, float(col[j])) for j in order if col[j] > 0][:LIMIT]
        lowered = [_event(rows[j], snap.newest, float(col[j])) for j in reversed(order) if col[j] < 0][:LIMIT]
        explained.append({"category": c, "p": float(now[i]), "raised": raised, "lowered": lowered})
    without = dict(zip(cats, map(float, bare)))
    out = {
        "model_version": model.version,
        "newest_ts": snap.newest,
        "events": n,
        "interests": interests,
        "top": top,
        "categories": explained,
        "profile": {
            "used": bool(model.encoder.profile_size),
            "effect": {c: interests[c] - without[c] for c in top},
            "without_profile": {c: without[c] for c in top},
            "divergence": js_divergence(interests, without),
        },
    }
    if evolution:
        evo = probs[2 + n:]
        last_row = {}
        for r in rows:
            last_row[r[0]] = r
        xs = points + (row_ts[-1:] if n else [])
        series = np.vstack([evo, now[None, :]]) if n else np.empty((0, len(cats)))
        out["evolution"] = {
            "ts": xs,
            "series": {c: [float(v) for v in series[:, i]] for i, c in enumerate(cats)},
            "events": [_event(last_row[x], snap.newest) for x in xs],
        }
    return out


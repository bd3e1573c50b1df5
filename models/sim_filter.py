"""A particle filter over the simulator's hidden state, started from the state some time before the cut.

:mod:`models.simulate` draws each user's events from a hidden state: latent interests drifting
around a base point that jumps, a daily habit, sessions that stick to a category, and, with the
mechanisms on, a scheduled shift announced by searches. ``bench/sim_bound.py`` predicts the target
from the state at the cut, which no model of the past can see. This filter knows less: the state
``lag`` earlier (the particles start as copies of it) and the user's events since then, as a model
reads them. Knowing that state and the events is still more than knowing the events alone, so
its prediction is still a bound that no model of the past beats, and it tightens as the lag grows
(the state a week earlier says little about today).

Every particle is a copy of that hidden state, moved between events by the simulator's own
dynamics and weighted by the probability of each event under it:

* the time since the previous event: while the particle's session has events left (its length
  drawn from the simulator's geometric law when it starts) an exponential of mean
  ``IN_SESSION_GAP_S``, otherwise the first acceptance of the day/night-thinned Poisson process of
  session starts at the user's rate and time zone;
* the event's type, category, query words and dwell time: an intent search for the coming
  category (mechanisms on, in the ``INTENT_LEAD_H`` hours before the particle's scheduled shift),
  or an ordinary event whose category is the session's with probability ``STICKY`` and otherwise
  drawn from the interests, whose query words come from its vocabulary, and whose dwell time is
  log-normal around the interest in it.

At the cut, particles are drawn by weight and turned back into :class:`models.simulate.SimUser`
states, and the target window is
simulated forward from each with :func:`models.simulate.expected_target`. The filter is exact only
with enough particles; ``bench/sim_bound.py`` reports the same cuts at four times as many.
"""
from __future__ import annotations

import math

import numpy as np

from models import simulate as sim
from models.simulate import CATEGORIES, DAY_MS, HOUR_MS, K, VOCAB, SimUser, expected_target

TYPES = ("click", "browse", "search")
# simulate.TRANSITIONS by index: row = the old dominant category, columns = its equally likely targets
_TRANSITION_TO = np.array([[CATEGORIES.index(t) for t in sim.TRANSITIONS[c]] for c in CATEGORIES])


def query_likelihood(query: str) -> np.ndarray:
    """(K,) P(query | category): 1 to 3 words (equally likely), each drawn uniformly from the
    category's vocabulary list (:meth:`models.simulate.SimUser.make_event`)."""
    words = query.split()
    if not 1 <= len(words) <= 3:
        return np.zeros(K)
    out = np.full(K, 1.0 / 3.0)
    for c, name in enumerate(CATEGORIES):
        vocab = VOCAB[name]
        for w in words:
            out[c] *= vocab.count(w) / len(vocab)
    return out


def _diurnal(hour: np.ndarray) -> np.ndarray:
    """:func:`models.simulate._diurnal` on arrays of local hours."""
    return 0.15 + 0.85 * 0.5 * (1.0 + np.cos(2 * math.pi * (hour - 20.0) / 24.0))


def _diurnal_integral(h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """The integral of :func:`models.simulate._diurnal` over local hours ``h1`` to ``h2`` (h2 >= h1)."""
    w = 2 * math.pi / 24.0
    return 0.575 * (h2 - h1) + 0.425 / w * (np.sin(w * (h2 - 20.0)) - np.sin(w * (h1 - 20.0)))


def new_session_density(t0: int, t1, rate_per_day: float, tz_shift_h: float):
    """The density (per hour) that a user's next session starts at ``t1`` (a time or an array of
    them), its last event being at ``t0``: the intensity ``rate_h * diurnal(hour)`` of
    :meth:`models.simulate.SimUser.next_event_time` times the probability of no start before."""
    rate_h = rate_per_day / sim.EVENTS_PER_SESSION / 24.0 / 0.5
    h0 = t0 / HOUR_MS + tz_shift_h
    h1 = np.asarray(t1) / HOUR_MS + tz_shift_h
    return rate_h * _diurnal(np.mod(h1, 24.0)) * np.exp(-rate_h * _diurnal_integral(h0, h1))


def in_session_density(gap_ms: int) -> float:
    """The density (per hour, as :func:`new_session_density`) of a gap inside a session: exponential
    of mean ``IN_SESSION_GAP_S``, floored at 1 s (the floor's mass, spread over its second)."""
    mean_h = sim.IN_SESSION_GAP_S / 3600.0
    if gap_ms <= 1000:
        return (1.0 - math.exp(-1.0 / sim.IN_SESSION_GAP_S)) * 3600.0
    return math.exp(-gap_ms / 3_600_000 / mean_h) / mean_h


class ParticleFilter:
    """One user's hidden state as ``n`` weighted particles (module doc)."""

    def __init__(self, user: SimUser, n: int, seed):
        """``n`` particles, each a copy of ``user``'s state (read right after one of its events)."""
        self.rng = np.random.default_rng(seed)
        self.n, self.intent, self.transitions = n, user.intent, user.transitions
        self.rate, self.habit = user.rate_per_day, user.habit  # constant: known
        self.habit_strength, self.tz = user.habit_strength, user.tz_shift_h
        self.base = np.tile(user.base, (n, 1))
        self.logits = np.tile(user.logits, (n, 1))
        self.t = self.last = user.t
        self.session_cat = np.full(n, user.session_cat)
        self.session_left = np.full(n, user.session_left)  # events left in the session
        if self.intent:
            self.next_shift = np.full(n, user.next_shift, dtype=np.int64)
            self.next_base = np.tile(user.next_base, (n, 1))
        self.logw = np.zeros(n)

    def _new_base(self, old: np.ndarray) -> np.ndarray:
        """(m, K) new base points of particles whose base points are ``old`` (m, K), as
        :meth:`SimUser._new_base` draws them (in another order of draws)."""
        r = self.rng
        m = len(old)
        p = r.dirichlet(np.full(K, sim.BASE_CONCENTRATION), size=m)
        if self.transitions:
            rows = np.flatnonzero(r.random(m) < sim.TRANSITION_P)
            to = _TRANSITION_TO[np.argmax(old[rows], 1), r.integers(_TRANSITION_TO.shape[1], size=len(rows))]
            p[rows, to] = np.maximum(p[rows, to], 1.5 * p[rows].max(1))
            p /= p.sum(1, keepdims=True)
        return np.log(np.maximum(p, 1e-3)) * 0.8

    def _advance(self, t: int) -> None:
        """Move every particle's latent state to ``t`` (:meth:`SimUser._advance`)."""
        dt_h = (t - self.t) / HOUR_MS
        if dt_h <= 0:
            return
        r = self.rng
        if self.intent:
            due = np.flatnonzero(self.next_shift <= t)
            while len(due):
                self.base[due] = self.next_base[due]
                self.next_base[due] = self._new_base(self.base[due])
                self.next_shift[due] += (r.exponential(sim.SHIFT_EVERY_DAYS, size=len(due)) * DAY_MS).astype(np.int64)
                self.logits[due] = self.base[due] + sim.DRIFT_NOISE * r.normal(size=(len(due), K))
                due = due[self.next_shift[due] <= t]
        else:
            jump = np.flatnonzero(r.random(self.n) < 1.0 - math.exp(-dt_h / (24.0 * sim.SHIFT_EVERY_DAYS)))
            if len(jump):
                self.base[jump] = self._new_base(self.base[jump])
        a = math.exp(-dt_h / sim.DRIFT_TIMESCALE_H)
        noise = sim.DRIFT_NOISE * math.sqrt(1.0 - a * a) * r.normal(size=(self.n, K))
        self.logits = self.base + a * (self.logits - self.base) + noise
        self.t = t

    def interests(self, t: int) -> np.ndarray:
        """(n, K) each particle's interest distribution at ``t`` (:meth:`SimUser.interests`)."""
        hour = np.mod(t / HOUR_MS + self.tz, 24.0)
        z = self.logits.copy()
        z[np.arange(self.n), self.habit] += self.habit_strength * _diurnal(hour)
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def observe(self, ev: dict) -> None:
        """Weight the particles by the event ``ev`` (a simulator event: type, ts, category or
        query, dwell_ms), then move each one's session as the simulator did; resample when the
        weights are too uneven."""
        t = int(ev["ts"])
        r, n = self.rng, self.n
        gap_from = self.last
        self._advance(t)
        p = self.interests(t)  # (n, K)
        rows = np.arange(n)
        # the session: a particle with events left in its session continues it, else one starts
        same = self.session_left > 0
        w_time = np.where(same, in_session_density(t - gap_from),
                          new_session_density(gap_from, t, self.rate, self.tz))
        sc = np.where(same, self.session_cat, -1)
        self.session_left = np.where(same, self.session_left,
                                     r.geometric(1.0 / sim.EVENTS_PER_SESSION, size=n)) - 1
        has = sc >= 0
        cat = (1.0 - sim.STICKY) * p  # (n, K) P(category) of an ordinary event
        cat[rows[has], sc[has]] += sim.STICKY
        cat[~has] = p[~has]
        # intent: P(this event is a search for the coming category)
        q_int = np.zeros(n)
        if self.intent:
            lead = (self.next_shift - t) / HOUR_MS
            on = (lead >= 0) & (lead < sim.INTENT_LEAD_H)
            q_int[on] = sim.INTENT_SEARCH_P * (1.0 - lead[on] / sim.INTENT_LEAD_H)
        kind = ev["type"]
        if kind == "search":
            lq = query_likelihood(ev.get("query", ""))  # (K,)
            l_int = q_int * lq[np.argmax(self.next_base, 1)] if self.intent else q_int
            l_cat = cat * lq  # (n, K) an ordinary search, per category
        else:
            c = CATEGORIES.index(ev["category"])
            l_int = np.zeros(n)
            l_cat = np.zeros((n, K))
            l_cat[:, c] = cat[:, c]
            if kind == "browse" and "dwell_ms" in ev:
                z = (math.log(ev["dwell_ms"] / 8000.0) - 0.6 * np.log(p[:, c] * K)) / 0.7
                l_cat[:, c] *= np.exp(-0.5 * z * z)
        l_ord = (1.0 - q_int)[:, None] * sim.TYPE_P[TYPES.index(kind)] * l_cat  # (n, K)
        total = w_time * (l_int + l_ord.sum(1))
        self.logw += np.log(np.maximum(total, 1e-300))
        # the session's category after the event, drawn from its posterior under each particle
        was_int = r.random(n) * (l_int + l_ord.sum(1)) < l_int
        u = r.random(n) * np.maximum(l_ord.sum(1), 1e-300)
        drawn = np.minimum((np.cumsum(l_ord, 1) < u[:, None]).sum(1), K - 1)
        self.session_cat = np.where(was_int, sc, drawn)
        self.last = t
        self._resample_if_needed()

    def _resample_if_needed(self) -> None:
        w = np.exp(self.logw - self.logw.max())
        w /= w.sum()
        if 1.0 / (w * w).sum() >= self.n / 2:
            return
        r = self.rng
        pos = (r.random() + np.arange(self.n)) / self.n  # systematic resampling
        idx = np.minimum(np.searchsorted(np.cumsum(w), pos), self.n - 1)
        for name in ("base", "logits", "session_cat", "session_left") + (("next_shift", "next_base") if self.intent else ()):
            setattr(self, name, getattr(self, name)[idx].copy())
        self.logw = np.zeros(self.n)
        if self.intent:  # so that copies part again: a shift more than the intent's lead away has left no
            # trace in the events yet, so its time (exponential, memoryless) and where it goes are drawn
            # again from their law (forgetting the schedule known at the start still leaves the filter
            # more than the events alone)
            lead_ms = int(sim.INTENT_LEAD_H * HOUR_MS)
            far = np.flatnonzero(self.next_shift > self.t + lead_ms)
            self.next_shift[far] = self.t + lead_ms + (r.exponential(sim.SHIFT_EVERY_DAYS, size=len(far)) * DAY_MS).astype(np.int64)
            self.next_base[far] = self._new_base(self.base[far])

    def users(self, m: int, user_id: str = "u") -> list[SimUser]:
        """``m`` particles drawn by weight, as :class:`SimUser` states at the last event."""
        r = self.rng
        w = np.exp(self.logw - self.logw.max())
        out = []
        for i in r.choice(self.n, size=m, p=w / w.sum()):
            u = SimUser.__new__(SimUser)
            u.user_id, u.rng, u.intent, u.transitions = user_id, np.random.default_rng(r.integers(1 << 63)), \
                self.intent, self.transitions
            u.rate_per_day, u.habit, u.habit_strength, u.tz_shift_h = self.rate, self.habit, self.habit_strength, self.tz
            u.base, u.logits, u.t, u.n_events = self.base[i].copy(), self.logits[i].copy(), self.t, 0
            u.session_cat, u.session_left = int(self.session_cat[i]), int(self.session_left[i])
            if self.intent:
                u.next_shift, u.next_base = int(self.next_shift[i]), self.next_base[i].copy()
            out.append(u)
        return out

    def predict(self, window_ms: int, weights: dict, m: int, runs: int, seed) -> np.ndarray | None:
        """(K,) the expected target of the next ``window_ms`` over ``m`` particles, ``runs``
        forward simulations each (:func:`models.simulate.expected_target`)."""
        preds = [expected_target(u, window_ms, weights, runs, (seed, j)) for j, u in enumerate(self.users(m))]
        preds = [p for p in preds if p is not None]
        return np.mean(preds, axis=0) if preds else None

"""A particle filter over the simulator's hidden state, started from the state some time before the cut.

:mod:`models.simulate` draws each user's events from a hidden state: latent interests drifting
around a base point that jumps, a daily habit, sessions that stick to a category, and, with the
mechanisms on, a scheduled shift announced by searches. ``bench/sim_bound.py`` predicts the target
from the state at the cut, which no model of the past can see. This filter knows less: the state
``lag`` earlier (the particles start as copies of it) and the user's events since then, as a model
reads them. Knowing that state and the events is still more than knowing the events alone, so
its prediction is still a bound that no model of the past beats, and it tightens as the lag grows
(the state a week earlier says little about today). :meth:`ParticleFilter.from_prior` starts it
before the user's first event instead, from the simulator's prior: then it knows the events and
the user's constants only (its activity, habit and time zone), or, drawing those from their prior
too, the events alone.

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

**Resample-move** (Gilks and Berzuini 2001). Each event reweighs the particles and resampling
copies the heavy ones; between a session's events, a minute apart, the drift barely parts the
copies again, so on a user with hundreds of events the particles end up as a few copies of
hypotheses drawn early, and the base point a shift drew (from a Dirichlet over 12 categories)
is almost never the one the events since show. Recorded (``record``), every particle keeps its
path since the start: the Gaussian draws of the drift and of the shifts' new logits, the Gamma
draws behind each base point it drew, and which branch each event took. :meth:`ParticleFilter.move`
then takes Metropolis steps that keep the posterior of the paths given the events: a
preconditioned Crank-Nicolson proposal for the Gaussian draws (it keeps their prior, so the ratio
is the events' likelihood alone) and a log-scale random walk for the Gamma draws of the base
point in use. With ``block``, every resampling is followed by such steps on the paths' last
``block`` events. The particles then part where resampling had copied them, and a few thousand
do what a few tens of thousands did not.

**The user's constants, drawn** (``from_prior(constants="prior")``). The activity, the habit and
the time zone never change, so resampling alone soon leaves one value of each, drawn before the
events could tell (half the activity of a user of 120 events a day, in a test). They are moved too
(:meth:`ParticleFilter.move_constants`), over each particle's whole path: the habit by a Gibbs step
over the categories, the activity's normal draw, the time zone and the habit's strength by
Metropolis steps. The habit still mixes slowly, since each particle's interests were drawn along
with it: on one user of 120 events a day (300 particles, two days; scratch), all the weight sat on
the user's strongest interest and none on its habit. A user active mostly in the evening, when the
habit's boost is near its peak, shows little to tell the two apart.
"""
from __future__ import annotations

import math

import numpy as np

from models import sim_paths
from models import simulate as sim
from models.simulate import CATEGORIES, DAY_MS, HOUR_MS, K, VOCAB, SimUser, expected_target

TYPES = ("click", "browse", "search")
# simulate.TRANSITIONS by index: row = the old dominant category, columns = its equally likely targets
_TRANSITION_TO = np.array([[CATEGORIES.index(t) for t in sim.TRANSITIONS[c]] for c in CATEGORIES])


def _c(*arrays) -> tuple[np.ndarray, ...]:
    """The arrays as C-contiguous ones (:mod:`models.sim_paths` compiles for that layout)."""
    return tuple(np.ascontiguousarray(x) for x in arrays)


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


def _categorical(w: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(m,) per row of the unnormalised weights ``w`` (m, k), the index that the uniform draw ``u``
    (m,) picks by inverse transform."""
    return np.minimum((np.cumsum(w, 1) < (u * np.maximum(w.sum(1), 1e-300))[:, None]).sum(1), w.shape[1] - 1)


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

    def __init__(self, user: SimUser, n: int, seed, record: bool = False, block: int = 0, block_moves: int = 0,
                 keep: int = 0):
        """``n`` particles, each a copy of ``user``'s state (read right after one of its events).
        ``record`` keeps each particle's path since then, which :meth:`move` needs (with ``keep``,
        over the last ``keep`` events only: the moves cannot reach further back). With ``block``,
        every resampling is followed by ``block_moves`` Metropolis steps on the paths' last
        ``block`` events (the resample-move filter)."""
        self.rng = np.random.default_rng(seed)
        self.steps: list[dict] | None = [] if record or block else None  # per event (observe)
        self.block, self.block_moves, self.keep = block, block_moves, max(keep, block) if keep else 0
        self.z0 = np.tile(user.logits, (n, 1))  # the logits before the first recorded step, per particle
        self._x0 = None  # from_prior's first draw of the interests, recorded at the first event
        self.move_stats: list[dict] = []
        self._const_steps = {"x": 0.3, "tz": 0.5, "strength": 0.3}  # move_constants' step sizes, adapted
        self.n, self.intent, self.transitions = n, user.intent, user.transitions
        # constant about the user, per particle (known: all the user's; from_prior can draw them)
        self.rate_x = None  # the activity's normal draws, when drawn (constants == "prior")
        self.rate, self.habit = np.full(n, float(user.rate_per_day)), np.full(n, int(user.habit))
        self.habit_strength, self.tz = np.full(n, float(user.habit_strength)), np.full(n, float(user.tz_shift_h))
        self.base = np.tile(user.base, (n, 1))
        # the Gamma draws behind each base point and its transition (_new_base), NaN for the known one
        self.base_g, self.base_to = np.full((n, K), np.nan), np.full(n, -1)
        self.logits = np.tile(user.logits, (n, 1))
        self.t = self.last = user.t
        self.session_cat = np.full(n, user.session_cat)
        self.session_left = np.full(n, user.session_left)  # events left in the session
        if self.intent:
            self.next_shift = np.full(n, user.next_shift, dtype=np.int64)
            self.next_base = np.tile(user.next_base, (n, 1))
            self.next_g, self.next_to = np.full((n, K), np.nan), np.full(n, -1)
        self.logw = np.zeros(n)

    @classmethod
    def from_prior(cls, user: SimUser, n: int, seed, record: bool = False, block: int = 0,
                   block_moves: int = 0, keep: int = 0, constants: str = "known") -> "ParticleFilter":
        """``n`` particles of ``user`` before its first event (``user`` as :class:`SimUser` makes
        it, at the simulation's start): what is constant about the user (its activity, habit, time
        zone and mechanisms) is known, and every particle draws the rest as the simulator did, from
        its prior: the base point (a Dirichlet, through its Gamma draws), the interests around it,
        and with the mechanisms on the first shift's time and base point. Fed the user's events
        from the first, the filter then knows only those events and the constants, so once it has
        converged its prediction bounds every model of the past more tightly than any started from
        a state. With ``constants="prior"`` each particle draws the constants too
        (:func:`models.simulate.constants_prior`), and the filter knows the events alone, as a
        model does. Resampling alone would soon leave one value of them, drawn before the events
        could tell (static parameters), so they are moved too (:meth:`move_constants`): after
        every ``block`` events, and by whoever predicts. That needs every event's path, so such
        a filter records them all (``keep`` is ignored).
        Recorded, the first draw of the interests is a reset of the path at the first event
        (where no shift or jump came first), so :meth:`move` moves it and the first base point
        too."""
        if constants not in ("known", "prior"):
            raise ValueError(f"constants must be 'known' or 'prior', got {constants!r}")
        prior = constants == "prior"
        pf = cls(user, n, seed, record or prior, block, block_moves, 0 if prior else keep)
        r = pf.rng
        if prior:
            pf.rate_x, pf.habit, pf.habit_strength, pf.tz = sim.constants_prior(r, n)
            pf.rate = sim.activity_rate(pf.rate_x)
        pf.base_g, pf.base_to = r.standard_gamma(sim.BASE_CONCENTRATION, size=(n, K)), np.full(n, -1)
        pf.base = pf._base_from(pf.base_g, pf.base_to)  # the first base point: no transition into it
        x0 = r.normal(size=(n, K))
        pf.logits = pf.base + sim.DRIFT_NOISE * x0
        pf.z0 = pf.logits.copy()
        if pf.steps is not None:
            pf._x0 = x0
        if pf.intent:
            pf.next_shift = user.t + (r.exponential(sim.SHIFT_EVERY_DAYS, size=n) * DAY_MS).astype(np.int64)
            pf.next_base, pf.next_g, pf.next_to = pf._new_base(pf.base)
        return pf

    @property
    def constants(self) -> str:
        """``"prior"`` when the particles drew the user's constants (:meth:`from_prior`), else
        ``"known"``."""
        return "known" if self.rate_x is None else "prior"

    def _new_base(self, old: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(m, K) new base points of particles whose base points are ``old`` (m, K), as
        :meth:`SimUser._new_base` draws them (in another order of draws), with what they are made
        of (:meth:`_base_from`): the Gamma draws whose shares are the Dirichlet's, and the category
        each one's transition favours (-1: none)."""
        r = self.rng
        m = len(old)
        g = r.standard_gamma(sim.BASE_CONCENTRATION, size=(m, K))  # normalised: the Dirichlet (same draws)
        to = np.full(m, -1)
        if self.transitions:
            rows = np.flatnonzero(r.random(m) < sim.TRANSITION_P)
            to[rows] = _TRANSITION_TO[np.argmax(old[rows], 1), r.integers(_TRANSITION_TO.shape[1], size=len(rows))]
        return self._base_from(g, to), g, to

    def _base_from(self, g: np.ndarray, to: np.ndarray) -> np.ndarray:
        """(m, K) base points from Gamma draws ``g`` (m, K) and favoured categories ``to`` (m,)."""
        p = g / g.sum(1, keepdims=True)
        if self.transitions:
            rows = np.flatnonzero(to >= 0)
            p[rows, to[rows]] = np.maximum(p[rows, to[rows]], 1.5 * p[rows].max(1))
            p /= p.sum(1, keepdims=True)
        return np.log(np.maximum(p, 1e-3)) * 0.8

    def _advance(self, t: int) -> None:
        """Move every particle's latent state to ``t`` (:meth:`SimUser._advance`)."""
        dt_h = (t - self.t) / HOUR_MS
        self._draws = {"a": 1.0, "s": 0.0, "xi": np.zeros((self.n, K)), "reset": np.zeros(self.n, bool),
                       "xr": np.zeros((self.n, K)), "newbase": np.zeros(self.n, bool)}  # none when no time passes
        if dt_h <= 0:
            return
        r = self.rng
        if self.intent:
            due = np.flatnonzero(self.next_shift <= t)
            while len(due):
                self.base[due], self.base_g[due], self.base_to[due] = \
                    self.next_base[due], self.next_g[due], self.next_to[due]
                self.next_base[due], self.next_g[due], self.next_to[due] = self._new_base(self.base[due])
                self.next_shift[due] += (r.exponential(sim.SHIFT_EVERY_DAYS, size=len(due)) * DAY_MS).astype(np.int64)
                xr = r.normal(size=(len(due), K))
                self.logits[due] = self.base[due] + sim.DRIFT_NOISE * xr
                self._draws["reset"][due], self._draws["xr"][due] = True, xr  # a later shift overwrites
                self._draws["newbase"][due] = True
                due = due[self.next_shift[due] <= t]
        else:
            jump = np.flatnonzero(r.random(self.n) < 1.0 - math.exp(-dt_h / (24.0 * sim.SHIFT_EVERY_DAYS)))
            if len(jump):
                self.base[jump], self.base_g[jump], self.base_to[jump] = self._new_base(self.base[jump])
                self._draws["newbase"][jump] = True
        a = math.exp(-dt_h / sim.DRIFT_TIMESCALE_H)
        s = sim.DRIFT_NOISE * math.sqrt(1.0 - a * a)
        xi = r.normal(size=(self.n, K))
        self.logits = self.base + a * (self.logits - self.base) + s * xi
        self._draws.update(a=a, s=s, xi=xi)
        self.t = t

    def interests(self, t: int) -> np.ndarray:
        """(n, K) each particle's interest distribution at ``t`` (:meth:`SimUser.interests`)."""
        z = self.logits.copy()
        z[np.arange(self.n), self.habit] += self.habit_boost([t])[:, 0]
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
        if self._x0 is not None:  # from_prior's first event: the interests' first draw starts the path
            d, fresh = self._draws, ~(self._draws["reset"] | self._draws["newbase"])
            d["reset"][fresh], d["xr"][fresh], d["newbase"][fresh] = True, self._x0[fresh], True
            self._x0 = None
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
        drawn = _categorical(l_ord, r.random(n))
        self.session_cat = np.where(was_int, sc, drawn)
        self.last = t
        if self.steps is not None:
            dwell = float(ev["dwell_ms"]) if kind == "browse" and "dwell_ms" in ev else None
            self.steps.append({**self._draws, "base": self.base.copy(), "cat": drawn, "sc": sc, "intent": was_int,
                               "new": ~same, "t": t, "t_prev": gap_from, "dwell": dwell, "z": self.logits.copy(),
                               "parent": None})
            while self.keep and len(self.steps) > self.keep:  # the oldest step's logits start the paths
                st = self.steps.pop(0)
                self.z0 = st["z"] if st["parent"] is None else st["z"][st["parent"]]
        if self._resample_if_needed() and self.block:
            self.move(self.block_moves, last=self.block, resample=False)
        if self.constants == "prior" and self.block and len(self.steps) % self.block == 0:
            self.move_constants(self.block_moves)

    def _resample_if_needed(self) -> None:
        w = np.exp(self.logw - self.logw.max())
        w /= w.sum()
        if 1.0 / (w * w).sum() >= self.n / 2:
            return False
        self._resample(w)
        return True

    def _resample(self, w: np.ndarray) -> None:
        r = self.rng
        pos = (r.random() + np.arange(self.n)) / self.n  # systematic resampling
        idx = np.minimum(np.searchsorted(np.cumsum(w), pos), self.n - 1)
        if self.steps:  # the particles after this, by their index among the step's recorded ones
            prev = self.steps[-1]["parent"]
            self.steps[-1]["parent"] = idx if prev is None else prev[idx]
        for name in ("base", "base_g", "base_to", "logits", "session_cat", "session_left", "rate", "habit",
                     "habit_strength", "tz") + (("rate_x",) if self.rate_x is not None else ()) + \
                (("next_shift", "next_base", "next_g", "next_to") if self.intent else ()):
            setattr(self, name, getattr(self, name)[idx].copy())
        self.logw = np.zeros(self.n)
        if self.intent:  # so that copies part again: a shift more than the intent's lead away has left no
            # trace in the events yet, so its time (exponential, memoryless) and where it goes are drawn
            # again from their law (forgetting the schedule known at the start still leaves the filter
            # more than the events alone)
            lead_ms = int(sim.INTENT_LEAD_H * HOUR_MS)
            far = np.flatnonzero(self.next_shift > self.t + lead_ms)
            gaps = (r.exponential(sim.SHIFT_EVERY_DAYS, size=len(far)) * DAY_MS).astype(np.int64)
            self.next_shift[far] = self.t + lead_ms + gaps
            self.next_base[far], self.next_g[far], self.next_to[far] = self._new_base(self.base[far])

    _PATH = ("xi", "reset", "xr", "newbase", "base", "cat", "sc", "intent", "new", "z")

    def paths(self, last: int | None = None) -> dict:
        """The particles' recorded paths over the last ``last`` events (all by default), in the
        particles' order: per step (axis 1) its draws, base point, event branch (:meth:`observe`;
        ``new``: the event started a session), the habit's boost at the event (``habit``, from the
        particle's constants) and logits after it (``z``); ``a``, ``s``, ``t``, ``t_prev`` and
        ``dwell`` are the same for every particle (the step's decay, noise scale, time, the previous
        event's time and dwell time); ``z0`` (n, K) the logits before the first of them. The steps
        are rewritten in that order, so that :meth:`move` can write them back."""
        first = 0 if last is None else max(0, len(self.steps) - last)
        cur = np.arange(self.n)
        rows = []
        for st in reversed(self.steps[first:]):
            if st["parent"] is not None:
                cur = st["parent"][cur]
            rows.append({k: st[k][cur] for k in self._PATH})
            st["parent"] = None
        rows.reverse()
        for st, row in zip(self.steps[first:], rows):
            st.update(row)
        if first:  # the step before: its records, for the particles in their order now
            st = self.steps[first - 1]
            st["parent"] = cur if st["parent"] is None else st["parent"][cur]
            z0 = st["z"][st["parent"]]
        else:  # the logits before the first step, for the particles in their order now
            z0 = self.z0 = self.z0[cur]
        out = {k: np.stack([r[k] for r in rows], 1) for k in self._PATH}
        for k in ("a", "s", "t", "t_prev"):
            out[k] = np.array([st[k] for st in self.steps[first:]])
        out["habit"] = self.habit_boost(out["t"])
        out["dwell"] = np.array([np.nan if st["dwell"] is None else st["dwell"] for st in self.steps[first:]])
        out["z0"], out["first"] = z0, first
        return out

    def habit_boost(self, t: np.ndarray, strength: np.ndarray | None = None,
                    tz: np.ndarray | None = None) -> np.ndarray:
        """(n, T) the habit's boost in each particle's logits at times ``t`` (T,), from its constants
        (or ``strength`` and ``tz`` in their place; :meth:`interests`)."""
        strength = self.habit_strength if strength is None else strength
        tz = self.tz if tz is None else tz
        return strength[:, None] * _diurnal(np.mod(np.asarray(t)[None, :] / HOUR_MS + tz[:, None], 24.0))

    def path_logits(self, pa: dict, xi: np.ndarray, xr: np.ndarray) -> np.ndarray:
        """(n, steps, K) each particle's logits at each event, given its path ``pa`` (:meth:`paths`)
        with the noise ``xi`` and shift draws ``xr`` in place of the recorded ones (:meth:`_advance`)."""
        out = np.empty(xi.shape)
        sim_paths.replay_all(*_c(pa["z0"], pa["base"], pa["reset"], pa["a"], pa["s"], xi, xr), out)
        return out

    def path_loglik(self, pa: dict, z: np.ndarray) -> np.ndarray:
        """(n,) the log-probability of the events' categories and dwell times along each path, given
        the logits ``z`` (:meth:`path_logits`) and the path's branches: the only factors of the
        events' likelihood that depend on the interests (:meth:`observe`)."""
        return sim_paths.loglik_all(*_c(z, self.habit, pa["habit"], pa["cat"], pa["sc"], pa["intent"], pa["dwell"]))

    def kernel_path(self, pa: dict) -> tuple:
        """The path ``pa`` (:meth:`paths`) as :func:`models.sim_paths.pcn_step` and
        :func:`models.sim_paths.base_step` take it, before the draws: ``z0``, ``base`` (index 1,
        which ``base_step`` moves in place), ``reset``, ``a``, ``s``, each particle's habit
        category, and the events' ``habit``, ``cat``, ``sc``, ``intent`` and ``dwell``."""
        return _c(pa["z0"], pa["base"], pa["reset"], pa["a"], pa["s"], self.habit, pa["habit"], pa["cat"], pa["sc"],
                  pa["intent"], pa["dwell"])

    def move(self, iterations: int, beta: float | None = None, last: int | None = None, resample: bool = True) -> None:
        """Move each particle's interests by ``iterations`` Metropolis steps on its path over the
        last ``last`` events (all by default), after resampling (``resample``): the resample-move
        filter (Gilks and Berzuini 2001). The Gaussian draws of the drift and of the shifts' new
        logits get a preconditioned Crank-Nicolson proposal (``sqrt(1 - beta^2) x + beta *
        N(0, 1)``, which keeps their prior), accepted with the ratio of the events' likelihood,
        everything else on the path held; the particles then follow the posterior at least as well
        as before, and part where resampling had copied them. ``beta`` (the last move's, 0.3 at
        first) adapts to keep about a quarter of the proposals; the acceptance rates are kept in
        :attr:`move_stats`. The paths are replayed and scored by :mod:`models.sim_paths`."""
        if self.steps is None:
            raise ValueError("move needs a filter made with record=True")
        if not self.steps or not iterations:
            return
        if resample:
            w = np.exp(self.logw - self.logw.max())
            self._resample(w / w.sum())
        self.logw = np.zeros(self.n)
        pa = self.paths(last)
        path = self.kernel_path(pa)
        xi, xr, z = _c(pa["xi"], pa["xr"], pa["z"])  # moved in place
        ll = self.path_loglik(pa, z)
        r, rates, base_rates = self.rng, [], []
        beta = beta or getattr(self, "_beta", 0.3)
        sigma = getattr(self, "_sigma", 0.3)
        # a base point drawn on the moved steps (not the known one), in use from its step on
        nb = pa["newbase"]
        since = np.where(nb.any(1), nb.shape[1] - 1 - np.argmax(nb[:, ::-1], 1), -1)
        movable = (since >= 0) & ~np.isnan(self.base_g[:, 0])
        resets = int(pa["reset"].sum())  # the shifts' draws count only where one happened
        for _ in range(iterations):
            accepted = sim_paths.pcn_step(*path, xi, xr, z, ll, math.sqrt(1.0 - beta * beta), beta,
                                          r.normal(size=xi.shape), r.normal(size=(resets, K)),
                                          np.log(r.random(self.n)))
            rates.append(accepted / self.n)
            beta = min(1.0, beta * (1.3 if rates[-1] > 0.35 else 0.7 if rates[-1] < 0.15 else 1.0))
            if movable.any():
                sigma, rate = self._move_base(path, xi, xr, z, ll, movable, since, sigma)
                base_rates.append(rate)
        self._beta, self._sigma = beta, sigma
        self.logits = z[:, -1].copy()
        for i, st in enumerate(self.steps[pa["first"]:]):  # the moved paths, in the particles' order (copies:
            # a view would keep this move's whole arrays alive as long as the step)
            st.update(xi=xi[:, i].copy(), xr=xr[:, i].copy(), z=z[:, i].copy(), base=path[1][:, i].copy())
        self.move_stats.append({"steps": xi.shape[1], "acceptance": rates, "beta": beta,
                                "base_moved": int(movable.sum()), "base_acceptance": base_rates})

    def move_constants(self, iterations: int) -> None:
        """``iterations`` sweeps of moves on each particle's constants, drawn from their prior
        (``from_prior(constants="prior")``), its path since the first event held: the habit's
        category drawn from its conditional law given everything else (a Gibbs step: the events'
        likelihood under each of the K categories, :func:`models.sim_paths.loglik_by_habit`), then
        Metropolis steps on the activity's normal draw, the time zone and the habit's strength
        (Gaussian, the latter two refused outside their uniform priors' ranges), each accepted with
        the ratio of the prior and of the events' likelihood factors that depend on it: the times of
        the events that started a session (the activity and the time zone) and the categories and
        dwell times (the habit, through its boost at each event's local hour). The step sizes adapt
        as :meth:`move`'s ``beta`` does; the acceptance rates are kept in :attr:`move_stats`."""
        if self.constants != "prior":
            raise ValueError("move_constants needs a filter whose constants were drawn (from_prior(constants='prior'))")
        if not self.steps or not iterations:
            return
        pa = self.paths()
        if pa["first"]:
            raise ValueError("move_constants needs every event's path")
        r, n = self.rng, self.n
        cat = _c(pa["cat"], pa["sc"], pa["intent"], pa["dwell"])
        z = _c(pa["z"])[0]

        def cat_ll(habit, strength, tz):
            return sim_paths.loglik_all(z, *_c(habit, self.habit_boost(pa["t"], strength, tz)), *cat)

        def time_ll(rate, tz):
            dens = new_session_density(pa["t_prev"][None, :], pa["t"][None, :], rate[:, None], tz[:, None])
            return np.where(pa["new"], np.log(np.maximum(dens, 1e-300)), 0.0).sum(1)

        lt = time_ll(self.rate, self.tz)
        steps = self._const_steps
        rates = {k: [] for k in ("habit_changed", *steps)}
        for _ in range(iterations):
            by = sim_paths.loglik_by_habit(z, self.habit_boost(pa["t"]), *cat)  # (n, K): Gibbs on the habit
            g = np.exp(by - by.max(1, keepdims=True))
            h = _categorical(g, r.random(n))
            rates["habit_changed"].append(float((h != self.habit).mean()))
            self.habit = h
            lc = by[np.arange(n), h]
            for k in ("x", "tz", "strength"):
                x, tz, s = self.rate_x, self.tz, self.habit_strength
                if k == "x":
                    x = x + steps[k] * r.normal(size=n)
                    prior = -0.5 * (x * x - self.rate_x ** 2)
                elif k == "tz":
                    tz = tz + steps[k] * r.normal(size=n)
                    prior = np.where(np.abs(tz) <= 3.0, 0.0, -np.inf)
                else:
                    s = s + steps[k] * r.normal(size=n)
                    prior = np.where((s >= 0.0) & (s <= sim.HABIT_BOOST), 0.0, -np.inf)
                rate = sim.activity_rate(x)
                lc2 = lc if k == "x" else cat_ll(self.habit, np.clip(s, 0.0, sim.HABIT_BOOST), tz)
                lt2 = lt if k == "strength" else time_ll(rate, tz)
                ok = np.log(r.random(n)) < prior + (lc2 - lc) + (lt2 - lt)
                self.rate_x, self.rate = np.where(ok, x, self.rate_x), np.where(ok, rate, self.rate)
                self.tz, self.habit_strength = np.where(ok, tz, self.tz), np.where(ok, s, self.habit_strength)
                lc, lt = np.where(ok, lc2, lc), np.where(ok, lt2, lt)
                rates[k].append(float(ok.mean()))
                steps[k] *= 1.3 if rates[k][-1] > 0.35 else 0.7 if rates[k][-1] < 0.15 else 1.0
        self.move_stats.append({"constants": rates, "steps": pa["z"].shape[1]})

    def _move_base(self, path, xi, xr, z, ll, movable, since, sigma) -> tuple[float, float]:
        """One Metropolis step on the base points drawn on the paths (``movable``; in use from
        step ``since`` on): each Gamma draw behind one is multiplied by ``exp(sigma * N(0, 1))``,
        with the Gamma(BASE_CONCENTRATION) prior and the change of variables in the ratio; the
        favoured category is held, and so, with transitions, is the base point's largest category,
        which the next base point's law depends on. Updates the paths' base points (``path``, as
        :meth:`move` passes it), ``z``, ``ll`` and the particles in place; returns the next
        ``sigma`` (adapted as ``beta``) and the acceptance rate."""
        r, m = self.rng, np.flatnonzero(movable)
        g = self.base_g[m]
        g2 = g * np.exp(sigma * r.normal(size=g.shape))
        b2 = self._base_from(g2, self.base_to[m])
        a = sim.BASE_CONCENTRATION
        prior = (a * (np.log(g2) - np.log(g)) - (g2 - g)).sum(1)  # Gamma(a) density in log g
        if self.transitions:  # the largest category held
            prior[np.argmax(b2, 1) != np.argmax(self.base[m], 1)] = -np.inf
        ok = sim_paths.base_step(m, since[m], b2, prior, *path, xi, xr, z, ll, np.log(r.random(len(m))))
        self.base[m[ok]], self.base_g[m[ok]] = b2[ok], g2[ok]
        rate = float(ok.mean())
        return sigma * (1.3 if rate > 0.35 else 0.7 if rate < 0.15 else 1.0), rate

    def users(self, m: int, user_id: str = "u") -> list[SimUser]:
        """``m`` particles drawn by weight, as :class:`SimUser` states at the last event."""
        r = self.rng
        w = np.exp(self.logw - self.logw.max())
        out = []
        for i in r.choice(self.n, size=m, p=w / w.sum()):
            u = SimUser.__new__(SimUser)
            u.user_id, u.rng, u.intent, u.transitions = user_id, np.random.default_rng(r.integers(1 << 63)), \
                self.intent, self.transitions
            u.rate_per_day, u.habit = float(self.rate[i]), int(self.habit[i])
            u.habit_strength, u.tz_shift_h = float(self.habit_strength[i]), float(self.tz[i])
            u.base, u.logits, u.t, u.n_events = self.base[i].copy(), self.logits[i].copy(), self.t, 0
            u.session_cat, u.session_left = int(self.session_cat[i]), int(self.session_left[i])
            if self.intent:
                u.next_shift, u.next_base = int(self.next_shift[i]), self.next_base[i].copy()
            out.append(u)
        return out

    def predict(self, window_ms: int, weights: dict, m: int, runs: int, seed, draws: bool = False) -> np.ndarray | None:
        """(K,) the expected target of the next ``window_ms`` over ``m`` particles, ``runs``
        forward simulations each (:func:`models.simulate.expected_target`); with ``draws``, the
        (m', K) prediction of each particle that had a weighted event instead of their mean."""
        preds = [expected_target(u, window_ms, weights, runs, (seed, j)) for j, u in enumerate(self.users(m))]
        preds = [p for p in preds if p is not None]
        if not preds:
            return None
        return np.array(preds) if draws else np.mean(preds, axis=0)

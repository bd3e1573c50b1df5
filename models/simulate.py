"""Synthetic users whose latent interests evolve, with the ground truth kept beside the log.

Each simulated user has
* an activity level (events per day, log-normal: a few light users, many medium, some heavy),
  with a day/night rhythm; events come in sessions of a few events a minute or so apart;
* a latent interest distribution over :data:`CATEGORIES`: softmax of logits that drift slowly
  (an Ornstein-Uhlenbeck walk around a base point), jump abruptly now and then (a new base point,
  about every ``SHIFT_EVERY_DAYS``), plus a periodic habit (one category boosted every evening);
* two mechanisms that real platforms document, each switchable (``intent=``, ``transitions=``
  of :func:`simulate_user`, :func:`simulate_to_files`, :func:`iter_live_events`; both on by
  default, both off reproduce the simulator before them byte for byte):
  - **intent that shows before it shifts** (:data:`INTENT_LEAD_H`): a shift to a new base point is
    scheduled ahead, and in the hours before it the user increasingly searches for the coming
    dominant category while clicks and browses still follow the old interests; at the shift they
    move there at once (the interests jump to the new base point, instead of drifting toward it
    over the 48 h mean-reversion time). Search volume
    leads what people later do: Choi & Varian, "Predicting the Present with Google Trends",
    Economic Record 88 (2012), where searches for travel and cars lead arrivals and sales;
  - **population-level transitions between categories** (:data:`TRANSITIONS`): a new base
    point's dominant category follows the old one's row of a fixed transition table (after
    travel, often finance), instead of being uniform. Sequential recommenders exist because such
    population-wide transitions are real and learnable: Rendle, Freudenthaler & Schmidt-Thieme,
    "Factorizing Personalized Markov Chains for Next-Basket Recommendation", WWW 2010 (a
    transition matrix shared by all users, personalised on top);
* events drawn from those interests: the first event of a session from the current interest,
  later ones stay on the session's category with probability ``STICKY``; clicks, browses (with a
  dwell time that is longer for categories the user likes) and searches whose query words come
  from per-category vocabularies that overlap (so the text matters and is ambiguous).

File mode (:func:`simulate_to_files`) writes the event log (contract schema, one JSON per line,
sorted by ts) and ``FILE.truth.jsonl``: per user, the latent interests every ``TRUTH_EVERY_H``
hours (``{"user_id", "ts", "interests": {category: p}}``).
Live mode (:func:`iter_live_events`) yields events forever in ts order with the dynamics sped up.
Everything is seeded: the same seed gives the same bytes. :func:`user_steps` replays one user step
by step with its live state, and :func:`expected_target` predicts a target window from such a
state (``bench/sim_bound.py``: what no model of the past can beat).
"""
from __future__ import annotations

import heapq
import math
from typing import Iterator

import numpy as np

from interest_core.cli_types import MAX_SPEEDUP, MIN_SPEEDUP

CATEGORIES = (
    "books", "cars", "cooking", "fashion", "finance", "fitness",
    "gaming", "movies", "music", "sports", "tech", "travel",
)
# Per-category query words; the shared words at the end of some lists make queries ambiguous.
VOCAB = {
    "books": ["novel", "author", "paperback", "fiction", "poetry", "library", "bestseller", "review", "series"],
    "cars": ["sedan", "engine", "tyres", "electric", "dealer", "hybrid", "mileage", "review", "charging"],
    "cooking": ["recipe", "pasta", "oven", "vegan", "spices", "baking", "dinner", "kitchen", "healthy"],
    "fashion": ["dress", "sneakers", "jacket", "denim", "style", "summer", "sale", "leather", "running"],
    "finance": ["stocks", "savings", "mortgage", "crypto", "budget", "tax", "invest", "electric", "bank"],
    "fitness": ["workout", "yoga", "protein", "running", "gym", "cardio", "healthy", "sneakers", "weights"],
    "gaming": ["console", "rpg", "controller", "esports", "steam", "multiplayer", "series", "pc", "review"],
    "movies": ["trailer", "director", "actor", "cinema", "series", "thriller", "comedy", "streaming", "review"],
    "music": ["album", "concert", "guitar", "playlist", "vinyl", "streaming", "band", "jazz", "tickets"],
    "sports": ["football", "league", "score", "tickets", "tennis", "running", "transfer", "match", "stadium"],
    "tech": ["laptop", "phone", "charger", "pc", "chip", "camera", "console", "electric", "wireless"],
    "travel": ["flights", "hotel", "beach", "summer", "tickets", "visa", "city", "hostel", "train"],
}
K = len(CATEGORIES)
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, file mode's first day

MEAN_EVENTS_PER_DAY = 12.0  # median activity; log-normal sigma below
ACTIVITY_SIGMA = 0.8
EVENTS_PER_SESSION = 4.0  # geometric mean
IN_SESSION_GAP_S = 60.0  # exponential mean between events of a session
STICKY = 0.55  # P(stay on the session's category)
DRIFT_TIMESCALE_H = 48.0  # OU mean reversion time of the interest logits
DRIFT_NOISE = 0.6  # stationary std of the OU wander around the base point, logit units
SHIFT_EVERY_DAYS = 4.0  # mean time between abrupt shifts (new base point)
BASE_CONCENTRATION = 0.35  # Dirichlet alpha of base points: a few strong interests per user
HABIT_BOOST = 1.5  # evening boost of the habit category, logit units
TYPE_P = (0.40, 0.45, 0.15)  # click, browse, search
TRUTH_EVERY_H = 6
INTENT_LEAD_H = 12.0  # searches for the coming category start this long before a shift (Choi & Varian 2012)
INTENT_SEARCH_P = 0.6  # at the shift, this share of events is a search for it (rising linearly from 0)
TRANSITION_P = 0.75  # a new dominant category follows TRANSITIONS with this probability (else uniform)
# Where a user's dominant interest goes next, population-wide (Rendle et al. 2010): plausible pairs,
# each row's targets equally likely.
TRANSITIONS = {
    "travel": ("finance", "fashion"), "finance": ("cars", "tech"), "cars": ("finance", "tech"),
    "fitness": ("fashion", "cooking"), "cooking": ("fitness", "books"), "fashion": ("travel", "music"),
    "tech": ("gaming", "cars"), "gaming": ("tech", "movies"), "movies": ("music", "books"),
    "music": ("movies", "travel"), "books": ("movies", "cooking"), "sports": ("fitness", "travel"),
}


def _diurnal(hour: float) -> float:
    """Relative activity by hour of day (peak in the evening, low at night), max 1."""
    return 0.15 + 0.85 * 0.5 * (1.0 + math.cos(2 * math.pi * (hour - 20.0) / 24.0))


def constants_prior(r: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What is constant about ``size`` users, drawn as :class:`SimUser` draws its own (the same law
    and order of draws: one user's from its generator give its values): (size,) the activity's
    normal draw (:func:`activity_rate` makes it events per day), the habit's category, the habit's
    strength and the time zone shift (hours)."""
    x = r.normal(size=size)
    habit = r.integers(K, size=size)
    strength = r.uniform(0.0, HABIT_BOOST, size=size)
    tz = r.uniform(-3, 3, size=size)
    return x, habit, strength, tz


def activity_rate(x: np.ndarray) -> np.ndarray:
    """Events per day of users whose activity's normal draws are ``x`` (:func:`constants_prior`)."""
    return np.clip(MEAN_EVENTS_PER_DAY * np.exp(ACTIVITY_SIGMA * x), 1.0, 120.0)


class SimUser:
    """One user's incremental simulation, in simulated time (ms)."""

    def __init__(self, index: int, seed: int, start_ms: int, intent: bool = True, transitions: bool = True,
                 speedup: float = 1.0):
        self.user_id = f"u{index}"
        self.rng = np.random.default_rng([seed, index])
        r = self.rng
        self.intent, self.transitions = intent, transitions
        self.rate_per_day = float(np.clip(MEAN_EVENTS_PER_DAY * math.exp(ACTIVITY_SIGMA * r.normal()), 1.0, 120.0))
        self.habit = int(r.integers(K))
        self.habit_strength = float(r.uniform(0.0, HABIT_BOOST))
        self.tz_shift_h = float(r.uniform(-3, 3))
        self.base = self._new_base(None)
        self.logits = self.base + DRIFT_NOISE * r.normal(size=K)
        self.t = start_ms  # time the latent state refers to
        self.n_events = 0
        self.session_left = 0
        self.session_cat = 0
        if intent:  # shifts are scheduled ahead, so their intent can show before them
            self.next_shift = start_ms + self._shift_gap_ms(speedup)
            self.next_base = self._new_base(self.base)

    def _shift_gap_ms(self, speedup: float) -> int:
        return int(self.rng.exponential(SHIFT_EVERY_DAYS) * DAY_MS / speedup)

    def _new_base(self, old: np.ndarray | None) -> np.ndarray:
        p = self.rng.dirichlet(np.full(K, BASE_CONCENTRATION))
        if self.transitions and old is not None and self.rng.random() < TRANSITION_P:
            to = TRANSITIONS[CATEGORIES[int(np.argmax(old))]]
            j = CATEGORIES.index(to[int(self.rng.integers(len(to)))])
            p[j] = max(p[j], 1.5 * p.max())  # the transition's target dominates the new base point
            p /= p.sum()
        return np.log(np.maximum(p, 1e-3)) * 0.8

    def _advance(self, t_new: int, speedup: float) -> None:
        """Evolve the latent logits to ``t_new`` (OU drift and abrupt shifts)."""
        dt_h = (t_new - self.t) / HOUR_MS * speedup
        if dt_h <= 0:
            return
        if self.intent:
            while self.next_shift <= t_new:  # the scheduled shift (its intent showed before it)
                self.base, self.next_base = self.next_base, None
                self.next_base = self._new_base(self.base)
                self.next_shift += self._shift_gap_ms(speedup)
                # clicks and browses move there at once: the intent said where, now they go
                self.logits = self.base + DRIFT_NOISE * self.rng.normal(size=K)
        elif self.rng.random() < 1.0 - math.exp(-dt_h / (24.0 * SHIFT_EVERY_DAYS)):
            self.base = self._new_base(self.base)
        a = math.exp(-dt_h / DRIFT_TIMESCALE_H)
        noise = DRIFT_NOISE * math.sqrt(1.0 - a * a) * self.rng.normal(size=K)
        self.logits = self.base + a * (self.logits - self.base) + noise
        self.t = t_new

    def interests(self, t: int, speedup: float = 1.0) -> np.ndarray:
        """Latent interest distribution at the current state's time ``t`` (habit included)."""
        hour = ((t / HOUR_MS) * speedup + self.tz_shift_h) % 24.0
        z = self.logits.copy()
        z[self.habit] += self.habit_strength * _diurnal(hour)
        z = np.exp(z - z.max())
        return z / z.sum()

    def next_event_time(self, t: int, speedup: float) -> int:
        if self.session_left > 0:
            return t + max(1000, int(self.rng.exponential(IN_SESSION_GAP_S) * 1000 / speedup))
        rate_h = self.rate_per_day / EVENTS_PER_SESSION / 24.0 / 0.5  # /0.5: mean of _diurnal ~0.5
        while True:  # thinning of a day/night-modulated Poisson process of session starts
            t += max(1000, int(self.rng.exponential(1.0 / rate_h) * HOUR_MS / speedup))
            hour = ((t / HOUR_MS) * speedup + self.tz_shift_h) % 24.0
            if self.rng.random() < _diurnal(hour):
                self.session_left = 1 + int(self.rng.geometric(1.0 / EVENTS_PER_SESSION)) - 1
                self.session_left = max(1, self.session_left)
                self.session_cat = -1
                return t

    def _intent_search(self, t: int, speedup: float) -> int | None:
        """The coming dominant category if this event is a search for it (hours before the shift)."""
        lead_h = (self.next_shift - t) / HOUR_MS * speedup
        if 0 <= lead_h < INTENT_LEAD_H and self.rng.random() < INTENT_SEARCH_P * (1.0 - lead_h / INTENT_LEAD_H):
            return int(np.argmax(self.next_base))
        return None

    def make_event(self, t: int, seed: int, speedup: float) -> dict:
        self._advance(t, speedup)
        p = self.interests(t, speedup)
        r = self.rng
        intent_cat = self._intent_search(t, speedup) if self.intent else None
        self.last_intent = intent_cat is not None  # (expected_target)
        if intent_cat is not None:
            cat, kind = intent_cat, "search"
            self.session_left -= 1
        else:
            if self.session_cat >= 0 and r.random() < STICKY:
                cat = self.session_cat
            else:
                cat = int(r.choice(K, p=p))
            self.session_cat = cat
            self.session_left -= 1
            kind = ("click", "browse", "search")[int(r.choice(3, p=TYPE_P))]
        self.n_events += 1
        ev = {"event_id": f"s{seed}-{self.user_id}-{self.n_events}", "user_id": self.user_id,
              "type": kind, "ts": int(t)}
        name = CATEGORIES[cat]
        if kind == "search":
            words = VOCAB[name]
            n = 1 + int(r.integers(3))
            ev["query"] = " ".join(words[int(i)] for i in r.integers(len(words), size=n))
        else:
            ev["item_id"] = f"{name}-{int(r.integers(500))}"
            ev["category"] = name
            if kind == "browse":
                liking = math.log(p[cat] * K)  # >0 for categories above uniform
                ev["dwell_ms"] = int(min(600_000, 8000 * math.exp(0.6 * liking + 0.7 * r.normal())))
        return ev


def _truth_row(user: SimUser, t: int, speedup: float = 1.0) -> dict:
    p = user.interests(t, speedup)
    return {"user_id": user.user_id, "ts": int(t),
            "interests": {c: round(float(v), 5) for c, v in zip(CATEGORIES, p)}}


def user_steps(index: int, seed: int, days: float, start_ms: int = DEFAULT_START_MS, intent: bool = True,
               transitions: bool = True) -> Iterator[tuple[str, dict, SimUser]]:
    """One user's file-mode simulation as it happens: ``("truth", row, user)`` every
    ``TRUTH_EVERY_H`` hours and ``("event", event, user)`` for each event, in ts order. ``user`` is
    the live :class:`SimUser`, read right after the step (its whole state, for
    :func:`expected_target`); do not change it."""
    u = SimUser(index, seed, start_ms, intent, transitions)
    end = start_ms + int(days * DAY_MS)
    next_truth = start_ms
    t = u.next_event_time(start_ms, 1.0)
    while True:
        while next_truth <= min(t, end):
            u._advance(next_truth, 1.0)
            yield "truth", _truth_row(u, next_truth), u
            next_truth += TRUTH_EVERY_H * HOUR_MS
        if t > end:
            break
        yield "event", u.make_event(t, seed, 1.0), u
        t = u.next_event_time(t, 1.0)


def simulate_user(index: int, seed: int, days: float, start_ms: int = DEFAULT_START_MS, intent: bool = True,
                  transitions: bool = True):
    """(events, truth rows) of one user over ``days`` days, both in ts order; ``intent`` and
    ``transitions`` switch the mechanisms of the module doc."""
    events, truth = [], []
    for kind, row, _ in user_steps(index, seed, days, start_ms, intent, transitions):
        (events if kind == "event" else truth).append(row)
    return events, truth


def expected_target(user: SimUser, window_ms: int, weights: dict, runs: int, seed,
                    draws: bool = False) -> np.ndarray | None:
    """The best prediction of the next ``window_ms`` that anything can make from ``user``'s whole
    state (its latent interests, drift, scheduled shift, habit, session): the expected
    ``weights``-weighted category shares of its events in ``(user.t, user.t + window_ms]`` given
    that there are any (a target with none is not a sample), as ``models.data`` builds targets;
    (K,) over :data:`CATEGORIES`, or None when no run had a weighted event.

    Every event before the window's end is simulated forward ``runs`` times from a copy of the
    state, with its own generator (``seed``: anything ``numpy.random.default_rng`` takes). The
    categories are not drawn but carried as distributions (Rao-Blackwellised, so no share is 0):
    a session's first event follows the interests ``p``; each later one is ``STICKY`` the previous
    one's distribution plus ``1 - STICKY`` of ``p``; an intent search (weight 0) leaves the
    session's category alone, as :meth:`SimUser.make_event` does. Times, types and the latent path
    do not depend on the categories drawn, so this is exact in expectation. With ``draws``, the
    (runs', K) expectation of each run that had a weighted event instead of their mean (for a
    jackknife of the Monte Carlo error, ``bench/sim_bound.py``)."""
    import copy

    t0 = user.t
    end = t0 + window_ms
    rng = np.random.default_rng(seed)
    kept = []
    for _ in range(runs):
        u = copy.deepcopy(user)
        u.rng = np.random.default_rng(rng.integers(1 << 63))
        sess = np.eye(K)[u.session_cat] if u.session_cat >= 0 else None  # the session's category, as a distribution
        acc, mass = np.zeros(K), 0.0
        t = u.next_event_time(t0, 1.0)
        while t <= end:
            if u.session_cat < 0:  # next_event_time started a new session
                sess = None
            ev = u.make_event(t, 0, 1.0)
            if not u.last_intent:
                p = u.interests(t)
                sess = p if sess is None else STICKY * sess + (1.0 - STICKY) * p
                w = weights.get(ev["type"], 0.0)
                acc += w * sess
                mass += w
            t = u.next_event_time(t, 1.0)
        if mass > 0:
            kept.append(acc / mass)
    if not kept:
        return None
    return np.array(kept) if draws else np.mean(kept, axis=0)


def simulate_to_files(users: int, days: float, seed: int, out, start_ms: int = DEFAULT_START_MS,
                      progress: bool = False, intent: bool = True, transitions: bool = True) -> dict:
    """Write the event log ``out`` (sorted by ts) and ``out.truth.jsonl``, each whole or not at all
    (:func:`models.loaders.write_whole`); returns counts."""
    from tqdm import tqdm

    from .loaders import write_whole

    all_events, all_truth = [], []
    for i in tqdm(range(users), disable=not progress, desc="simulate", unit="user"):
        ev, tr = simulate_user(i, seed, days, start_ms, intent, transitions)
        all_events.extend(ev)
        all_truth.extend(tr)
    if not all_events:  # an empty log, written with exit 0 over any log there, was refused by every later command
        raise ValueError(f"{users} users made no event in {days:g} days: nothing was written (give more days or "
                         "users)")
    all_events.sort(key=lambda e: (e["ts"], e["event_id"]))
    write_whole([(out, all_events), (f"{out}.truth.jsonl", all_truth)])
    return {"events": len(all_events), "users": users, "truth_rows": len(all_truth),
            "mechanisms": {"intent": intent, "transitions": transitions}}


def iter_live_events(users: int, seed: int, speedup: float, start_ms: int, intent: bool = True,
                     transitions: bool = True) -> Iterator[dict]:
    """Events of ``users`` simulated users forever, in ts order, starting at ``start_ms``, with
    every timescale (activity, sessions, drift, shifts, daily habits) ``speedup`` times faster.
    Pacing against the wall clock and producing to Kafka are the caller's job."""
    if not MIN_SPEEDUP <= speedup <= MAX_SPEEDUP:
        raise ValueError(f"speedup must be between {MIN_SPEEDUP:g} and {MAX_SPEEDUP:g}, got {speedup}")
    sims = [SimUser(i, seed, start_ms, intent, transitions, speedup) for i in range(users)]
    heap = [(u.next_event_time(start_ms, speedup), i) for i, u in enumerate(sims)]
    heapq.heapify(heap)
    while heap:
        t, i = heapq.heappop(heap)
        u = sims[i]
        yield u.make_event(t, seed, speedup)
        heapq.heappush(heap, (u.next_event_time(t, speedup), i))


def read_truth(path) -> dict[str, tuple[np.ndarray, list[str], np.ndarray]]:
    """``FILE.truth.jsonl`` -> user -> (ts array, category names, (n, k) interests). A line that is
    not such a row is a ValueError naming the file and the line (it was a KeyError or TypeError
    traceback, or orjson's message alone, which named neither)."""
    import orjson

    rows: dict[str, list] = {}
    cats: list[str] | None = None
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                r = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
            interests = r.get("interests") if isinstance(r, dict) else None
            if (not isinstance(interests, dict) or not isinstance(r.get("user_id"), str)
                    or type(r.get("ts")) is not int):
                raise ValueError(f"{path}:{n}: a truth row is an object with user_id (text), ts (an integer) and "
                                 "interests (category -> share)")
            if cats is None:
                cats, names = list(interests), set(interests)
            if interests.keys() != names or not all(type(v) in (int, float) for v in interests.values()):
                raise ValueError(f"{path}:{n}: interests must give a number for each of the categories of its "
                                 f"first line ({', '.join(cats)})")
            rows.setdefault(r["user_id"], []).append((r["ts"], [interests[c] for c in cats]))
    out = {}
    for u, rs in rows.items():
        rs.sort()
        out[u] = (np.array([t for t, _ in rs], dtype=np.int64), cats or [], np.array([v for _, v in rs]))
    return out

"""From a JSONL event log to training samples, with the split by time.

A sample is a (user, cut) pair. The cut falls after the user's event ``i-1`` and before event
``i`` (only where ``ts[i] > ts[i-1]``, so no event shares the cut's time):
* input = the window of :mod:`interest_core.window` ending at ``newest_ts = ts[i-1]`` (horizon and
  max events as configured), exactly what the worker holds at that moment;
* target = the category distribution of what comes next, clicks and browses weighted by type
  (``click_weight``, ``browse_weight``; searches carry no category; categories outside the
  encoder's list are left out): the events in ``(cut, cut + target_window_s]``
  (``target="time"``), the next ``target_k`` events (``target="next_k"``, for bursty logs such
  as MovieLens), or the events of the next ``target_k`` distinct timestamps
  (``target="next_baskets"``: grocery baskets, whose lines share one timestamp, so the target never
  depends on the order of lines within a basket). Samples whose target is empty are skipped and
  counted. ``target="auto"`` (``train``'s default) picks one of the three from the log's shape
  (:func:`choose_target`), before anything else is built.

Split by time, from the log's event-time quantiles ``t1`` (1 - val_frac - test_frac) and ``t2``
(1 - test_frac): a training sample's target ends before ``t1``; a validation sample's cut is at or
after ``t1`` and its target ends before ``t2``; a test sample's cut is at or after ``t2``. Nothing
the model trains on reaches into the validation or test period. Samples straddling a boundary are
dropped and counted. Time targets that run past the end of the log are dropped (partly unseen).
The whole :class:`DataConfig` plus ``t1``/``t2`` go into the model card, so ``evaluate``
rebuilds the very same samples.

Dense training (:func:`dense_readouts`): a training sample's input sequence also holds the user's
earlier events, and the cut after each of them is a sample of its own (the same target code, the
same profile code). One forward pass reads them all: the readout of each such cut is the last token
of its event, its profile and target those of that cut. Its input is the window of the sequence's
own cut up to that event: the serving window of that cut minus, possibly, its oldest events (never
anything older than the horizon allows). Position weights: the sequence's own cut weighs 1; an
earlier cut weighs the share of its serving window that its input holds (events), so a readout
that sees its whole window counts fully and one that sees a sliver of it hardly at all (the model
is served whole windows); training multiplies these by ``TrainConfig.dense_weight``.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from interest_core.encoding import DEFAULT_MAX_LEN
from interest_core.window import (DEFAULT_HORIZON_S, DEFAULT_MAX_EVENTS, DEFAULT_PROFILE_RETENTION_S,
                                  PROFILE_TYPE_WEIGHTS, WindowEvent, profiles_in_order, seconds_to_ms, window_slice)
from models.config_checks import MAX_EVENTS, MAX_HORIZON_S, MAX_LEN, check_ranges


TARGETS = ("time", "next_k", "next_baskets")
AUTO = "auto"  # one of TARGETS, chosen from the log (choose_target)


@dataclass
class DataConfig:
    horizon_s: int = DEFAULT_HORIZON_S  # input window reach (CONTRACT INTEREST_HORIZON_S)
    max_events: int = DEFAULT_MAX_EVENTS  # events the model reads (CONTRACT INTEREST_MAX_EVENTS)
    # a longer gap restarts the profile (INTEREST_PROFILE_RETENTION_S)
    profile_retention_s: int = DEFAULT_PROFILE_RETENTION_S
    target: str = "time"  # "time" (next target_window_s), "next_k" (next target_k events), "next_baskets", "auto"
    target_window_s: int = 21_600  # the "next window": 6 h (a day would not fit val/test of short logs)
    target_k: int = 10  # events (next_k) or distinct timestamps (next_baskets) per target
    click_weight: float = PROFILE_TYPE_WEIGHTS["click"]  # a click says more than a glance
    browse_weight: float = PROFILE_TYPE_WEIGHTS["browse"]
    val_frac: float = 0.15  # share of the log's time span (by events) for validation
    test_frac: float = 0.15
    max_train_samples: int = 120_000  # seeded subsample above this (keeps training < 15 min)
    max_eval_samples: int = 40_000  # per validation/test split
    min_category_count: int = 5  # rarer training categories -> unknown-category token
    max_len: int = DEFAULT_MAX_LEN  # tokens per input sequence (the encoding's max_len)
    seed: int = 0  # subsampling

    def __post_init__(self):
        if self.target not in (*TARGETS, AUTO):
            raise ValueError(f"target must be one of {(*TARGETS, AUTO)}, got {self.target!r}")
        if not (0 < self.val_frac and 0 < self.test_frac and self.val_frac + self.test_frac < 1):
            raise ValueError("val_frac and test_frac must be > 0 and sum to < 1")
        check_ranges(self, at_least={"horizon_s": 1, "max_events": 1, "profile_retention_s": 1,
                                     "target_window_s": 1, "target_k": 1, "click_weight": 0.0,
                                     "browse_weight": 0.0, "max_train_samples": 1, "max_eval_samples": 1,
                                     "min_category_count": 1, "max_len": 1, "seed": 0},
                     at_most={"horizon_s": MAX_HORIZON_S, "max_events": MAX_EVENTS, "max_len": MAX_LEN,
                              "profile_retention_s": MAX_HORIZON_S})

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown data config keys: {sorted(unknown)}")
        return cls(**d)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hashed_log_error(path, verb: str) -> str | None:
    """Why ``path`` cannot be the log of ``verb`` (evaluate, evaluate-rerank, export), which hashes
    it besides reading it (:func:`another_log`); None for a regular file. A pipe was read, then
    hashed empty, and said to be another log than the card's (``another_log: true``)."""
    p = Path(path)
    if not p.exists():
        return f"{path}: no such data file"
    if p.is_dir():
        return f"{path}: a directory, not a data file"
    if not p.is_file():
        return (f"{path}: not a regular file: {verb} needs the log as a file, not a pipe (it compares the "
                "log's sha256 with the model card's, and a pipe can be read once)")
    return None


def another_log(card: dict, path) -> bool:
    """Whether ``path`` is not the log a checkpoint was trained on: its sha256 differs from the one
    the model card records (``train`` writes ``data.sha256``); False for a card that records none."""
    data = card.get("data")
    recorded = data.get("sha256") if isinstance(data, dict) else None
    return bool(recorded) and recorded != file_sha256(path)


def read_log(path) -> tuple[dict[str, list[WindowEvent]], dict]:
    """User -> events sorted by (ts, file order), a repeated event_id counted once (as the worker
    does). Each line goes through the worker's own check of an event
    (:func:`interest_core.event_check.check_event`), so training reads the events the worker
    accepts, with the fields it keeps; the others are skipped and counted by the reason the worker
    would dead-letter them with (``invalid``, ``invalid_reasons``; ``first_invalid`` gives the
    first line of each reason and its detail: :func:`invalid_summary`)."""
    from interest_core.event_check import Refusals, Rejected, check_event

    users: dict[str, list[WindowEvent]] = {}
    seen: dict[str, set] = {}
    refused = Refusals()
    stats = {"lines": 0, "events": 0, "duplicates": 0}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            stats["lines"] += 1
            e = check_event(line)
            if isinstance(e, Rejected):
                refused.add(n, e)
                continue
            uid, eid = e["user_id"], e["event_id"]
            s = seen.setdefault(uid, set())
            if eid in s:
                stats["duplicates"] += 1
                continue
            s.add(eid)
            users.setdefault(uid, []).append(WindowEvent.from_event(e))
            stats["events"] += 1
    for evs in users.values():
        evs.sort(key=lambda w: w.ts)  # stable: file order within a millisecond
    stats.update(invalid=refused.total, invalid_reasons=refused.counts, first_invalid=refused.first, users=len(users))
    return users, stats


def invalid_summary(stats: dict) -> str:
    """What :func:`read_log` skipped, in words: ``""`` when nothing, else e.g. ``skipped 3 of 10
    lines the worker would refuse: missing_field 2 (first: line 4: item_id is missing (required
    for click)), bad_type 1 (first: line 9: ...)``."""
    from interest_core.event_check import describe

    if not stats.get("invalid"):
        return ""
    return (f"skipped {stats['invalid']} of {stats['lines']} lines the worker would refuse: "
            + describe(stats["invalid_reasons"], stats["first_invalid"]))


def split_times(users: dict[str, list[WindowEvent]], cfg: DataConfig) -> tuple[int, int]:
    ts = np.concatenate([np.fromiter((e.ts for e in evs), np.int64, len(evs)) for evs in users.values()])
    q = np.quantile(ts, [1 - cfg.val_frac - cfg.test_frac, 1 - cfg.test_frac], method="lower")
    return int(q[0]), int(q[1])


@dataclass
class UserSeq:
    """One user's events as arrays: ts, output category index (-1: none/unknown), target weight."""

    events: list[WindowEvent]
    ts: np.ndarray
    cat: np.ndarray
    weight: np.ndarray


@dataclass
class Samples:
    user: np.ndarray  # (N,) index into user_ids
    cut: np.ndarray  # (N,) i: input = events[:i]
    cut_ts: np.ndarray  # (N,) newest_ts of the input window
    targets: np.ndarray  # (N, k) float32, rows sum to 1

    def __len__(self) -> int:
        return len(self.cut)

    def take(self, idx) -> "Samples":
        return Samples(self.user[idx], self.cut[idx], self.cut_ts[idx], self.targets[idx])


@dataclass
class Dataset:
    user_ids: list[str]
    seqs: list[UserSeq]
    splits: dict[str, Samples]  # "train", "val", "test"; "train_all": every training candidate
    counts: dict  # skipped / dropped / kept, per reason
    t1: int
    t2: int


def user_seqs(users: dict[str, list[WindowEvent]], categories, cfg: DataConfig):
    index = {c: i for i, c in enumerate(categories)}
    ids = sorted(users)
    seqs = []
    for u in ids:
        evs = users[u]
        cat = np.array([index.get(e.category, -1) if e.type != "search" else -1 for e in evs], np.int32)
        w = np.array([cfg.click_weight if e.type == "click" else cfg.browse_weight if e.type == "browse"
                      else 0.0 for e in evs], np.float32)
        w[cat < 0] = 0.0
        seqs.append(UserSeq(evs, np.array([e.ts for e in evs], np.int64), cat, w))
    return ids, seqs


def basket_index(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Of a sorted ts array: the first event of each distinct timestamp (basket), and each
    event's basket number."""
    new = np.r_[True, ts[1:] != ts[:-1]]
    return np.flatnonzero(new), np.cumsum(new) - 1


def target_span(ts: np.ndarray, i: int, cut_ts: int, cfg: DataConfig, end_of_log: int,
                baskets: tuple | None = None) -> tuple[int, int] | None:
    """The target of a cut at ``cut_ts``, right before event ``i`` of a user's sorted ``ts``: its
    events ``[i, j)`` and its end ``end_ts`` (``(j, end_ts)``), or None when it runs past the end of
    the log (a time target past ``end_of_log``, or fewer than ``target_k`` events or baskets
    left). The end of one target is the cut of the next: ``target_span(ts, j, end_ts, ...)``.
    ``baskets``: :func:`basket_index` of ``ts``, for ``next_baskets``."""
    n = len(ts)
    if cfg.target == "time":
        end_ts = cut_ts + seconds_to_ms(cfg.target_window_s)
        if end_ts > end_of_log:
            return None
        return int(np.searchsorted(ts, end_ts, side="right")), end_ts
    if cfg.target == "next_k":
        j = i + cfg.target_k
    else:
        starts, group_of = baskets
        g = int(group_of[i]) + cfg.target_k  # the basket after the target's last one
        j = int(starts[g]) if g < len(starts) else (n if g == len(starts) else n + 1)
    if j > n:
        return None
    return j, int(ts[j - 1])


# --- the target when none is given (target="auto", train's default) ----------------------------
# Thresholds set between the logs measured (docs/model.md, "Targets"): the Complete Journey 98 % of lines
# in shared timestamps, MovieLens 23 %, REES46 and the simulator under 1 %; a 6-hour target holds a
# median of 41 events on MovieLens (sittings of hundreds of ratings), 8 on the simulator and 3 on
# the Complete Journey and REES46; REES46 spans 2.6 hours.
BASKET_SHARE = 0.5  # this share of the target's events in timestamps shared with others: baskets
SITTING_EVENTS = 20  # a time target holding this median of events is the rest of a sitting
MIN_SPAN_WINDOWS = 10  # a time target needs whole windows in validation and test: the log spans this many
# targets' K: MovieLens' next 10 ratings; about a month of groceries; a log of hours holds few
# events per user (REES46: 3.5), and the next 10 left 1 test sample there, the next 5 65
AUTO_K = {"sittings": 10, "baskets": 4, "short": 5}


@dataclass(frozen=True)
class LogShape:
    """What :func:`choose_target` reads of a log (clicks and browses, what targets are made of)."""

    events: int
    span_s: float  # first to last event
    shared_ts_share: float  # share of events whose user has another event at the same ms
    median_window_events: float  # median, over cuts (distinct timestamps) with any, of the events in the next window


def log_shape(users: dict[str, list[WindowEvent]], window_s: int) -> LogShape:
    """The :class:`LogShape` of a log read by :func:`read_log`, for target windows of ``window_s``."""
    window_ms = seconds_to_ms(window_s)
    n = shared = 0
    first, last, in_window = None, None, []
    for evs in users.values():
        ts = np.sort(np.fromiter((e.ts for e in evs if e.type != "search"), np.int64))
        if not len(ts):
            continue
        n += len(ts)
        first = ts[0] if first is None else min(first, ts[0])
        last = ts[-1] if last is None else max(last, ts[-1])
        distinct, counts = np.unique(ts, return_counts=True)
        shared += int(counts[counts > 1].sum())
        after = np.searchsorted(ts, distinct, side="right")
        in_window.append(np.searchsorted(ts, distinct + window_ms, side="right") - after)
    counts = np.concatenate(in_window) if in_window else np.zeros(0, np.int64)
    counts = counts[counts > 0]
    return LogShape(events=n, span_s=float(last - first) / 1000.0 if n else 0.0,
                    shared_ts_share=shared / n if n else 0.0,
                    median_window_events=float(np.median(counts)) if len(counts) else 0.0)


def choose_target(shape: LogShape, window_s: int) -> tuple[str, int, str]:
    """``(target, target_k, why)`` for a log of this shape: baskets -> the next 4 baskets; a log
    too short for time windows -> the next 5 events; one that comes in sittings -> the next 10;
    otherwise the next ``window_s`` (``target_k`` 0: unused)."""
    hours = f"{window_s / 3600:g} h"
    if shape.shared_ts_share >= BASKET_SHARE:
        return "next_baskets", AUTO_K["baskets"], (
            f"{shape.shared_ts_share:.0%} of the events share their user's timestamp with others "
            f"(baskets, at least {BASKET_SHARE:.0%})")
    if shape.span_s < MIN_SPAN_WINDOWS * window_s:
        return "next_k", AUTO_K["short"], (
            f"the log spans {shape.span_s / 3600:.1f} h, under {MIN_SPAN_WINDOWS} windows of {hours}")
    if shape.median_window_events >= SITTING_EVENTS:
        return "next_k", AUTO_K["sittings"], (
            f"a {hours} window holds a median of {shape.median_window_events:g} events (sittings, at "
            f"least {SITTING_EVENTS})")
    return "time", 0, (
        f"a {hours} window holds a median of {shape.median_window_events:g} events, over "
        f"{shape.span_s / 86400:.1f} days without baskets")


def resolve_target(users, cfg: DataConfig) -> tuple[DataConfig, dict | None]:
    """``cfg`` with ``target="auto"`` replaced by :func:`choose_target`'s choice, and that choice
    (None when the target was given)."""
    if cfg.target != AUTO:
        return cfg, None
    shape = log_shape(users, cfg.target_window_s)
    target, k, why = choose_target(shape, cfg.target_window_s)
    cfg = replace(cfg, target=target, target_k=k or cfg.target_k)
    return cfg, {"target": target, "target_k": k or None, "why": why, "shape": asdict(shape)}


def build_dataset(users, categories, cfg: DataConfig, t1: int, t2: int) -> Dataset:
    """All samples of the log, split by time, subsampled (seeded) to the configured caps. Every
    training candidate (before the cap) is kept in ``splits["train_all"]`` for dense training."""
    if cfg.target == AUTO:
        raise ValueError("target 'auto' is resolved by prepare (resolve_target) before samples are built")
    k = len(categories)
    ids, seqs = user_seqs(users, categories, cfg)
    end_of_log = max(int(s.ts[-1]) for s in seqs)
    rows = {"train": [], "val": [], "test": []}
    counts = {"empty_target": 0, "straddling_split": 0, "target_past_log_end": 0, "same_ts_cut": 0}
    for ui, s in enumerate(seqs):
        n = len(s.ts)
        if n < 2:
            continue
        csum = np.concatenate([[0.0], np.cumsum(s.weight)])
        baskets = basket_index(s.ts) if cfg.target == "next_baskets" else None
        for i in range(1, n):
            cut_ts = int(s.ts[i - 1])
            if s.ts[i] == cut_ts:
                counts["same_ts_cut"] += 1
                continue
            span = target_span(s.ts, i, cut_ts, cfg, end_of_log, baskets)
            if span is None:
                counts["target_past_log_end"] += 1
                continue
            j, end_ts = span
            if csum[j] - csum[i] <= 0:
                counts["empty_target"] += 1
                continue
            if end_ts < t1:
                split = "train"
            elif cut_ts >= t1 and end_ts < t2:
                split = "val"
            elif cut_ts >= t2:
                split = "test"
            else:
                counts["straddling_split"] += 1
                continue
            rows[split].append((ui, i, cut_ts, j))
    rng = np.random.default_rng(cfg.seed)
    rows["train_all"] = rows["train"]
    splits = {}
    for name in ("train", "val", "test", "train_all"):
        rs = rows[name]
        if name != "train_all":
            cap = cfg.max_train_samples if name == "train" else cfg.max_eval_samples
            counts[f"{name}_candidates"] = len(rs)
            if len(rs) > cap:
                keep = np.sort(rng.choice(len(rs), size=cap, replace=False))
                rs = [rs[x] for x in keep]
        splits[name] = Samples(
            np.array([r[0] for r in rs], np.int32), np.array([r[1] for r in rs], np.int32),
            np.array([r[2] for r in rs], np.int64), _targets(seqs, rs, k),
        )
        if name != "train_all":
            counts[name] = len(rs)
    return Dataset(ids, seqs, splits, counts, t1, t2)


def joined_dataset(ds: Dataset, categories, cfg: DataConfig) -> Dataset:
    """``ds`` with its validation period joined to training: :func:`build_dataset` with ``t1 = t2``,
    so training holds every sample whose target ends before the test period, validation is empty
    and the test split is unchanged (a refit, ``models.train.fit`` stage 5)."""
    users = {u: s.events for u, s in zip(ds.user_ids, ds.seqs)}
    return build_dataset(users, categories, cfg, ds.t2, ds.t2)


def _targets(seqs, rows, k: int) -> np.ndarray:
    """(N, k) float32: the type-weighted category shares of events ``[i, j)`` of each row."""
    t = np.zeros((len(rows), k), np.float32)
    for r, (ui, i, _, j) in enumerate(rows):
        s = seqs[ui]
        w, c = s.weight[i:j], s.cat[i:j]
        np.add.at(t[r], c[w > 0], w[w > 0])
    t /= np.maximum(t.sum(1, keepdims=True), 1e-12)
    return t


def sample_windows(ds: Dataset, samples: Samples, cfg: DataConfig) -> list[list[WindowEvent]]:
    """The input window of each sample, through :func:`interest_core.window.window_slice`."""
    horizon_ms = seconds_to_ms(cfg.horizon_s)
    out = []
    for ui, i, cut_ts in zip(samples.user, samples.cut, samples.cut_ts):
        evs = ds.seqs[ui].events
        # the window keeps at most max_events, so the last max_events of the prefix suffice
        out.append(window_slice(evs[max(0, i - cfg.max_events) : i], int(cut_ts), horizon_ms, cfg.max_events))
    return out


def encode_windows(windows, encoder) -> list[np.ndarray]:
    """The token sequence of each window (:meth:`interest_core.encoding.Encoder.encode`), int32."""
    return [np.asarray(encoder.encode(w), dtype=np.int32) for w in windows]


def encode_samples(ds: Dataset, samples: Samples, cfg: DataConfig, encoder) -> list[np.ndarray]:
    return encode_windows(sample_windows(ds, samples, cfg), encoder)


def sample_profiles(ds: Dataset, samples: Samples, cfg: DataConfig, encoder) -> np.ndarray:
    """(N, encoder.profile_size) float32: each sample's profile input. The user's events before
    the cut are folded in, in ts order, by :func:`interest_core.window.profile_update` (the code the
    worker runs on every accepted event, :func:`interest_core.window.profiles_in_order`), and the profile
    is read at the cut."""
    out = np.zeros((len(samples), encoder.profile_size), np.float32)
    if encoder.profile_size == 0:
        return out
    retention_ms = seconds_to_ms(cfg.profile_retention_s)
    user, prof, folding, done = -1, None, None, 0
    for r in np.lexsort((samples.cut, samples.user)):
        ui, i = int(samples.user[r]), int(samples.cut[r])
        if ui != user:
            user, prof, done = ui, None, 0
            folding = profiles_in_order(ds.seqs[ui].events, retention_ms)
        while done < i:
            prof = next(folding)
            done += 1
        out[r] = encoder.profile_vector(prof)  # as of ts[i - 1], the cut's newest_ts
    return out


def prepare(path, cfg: DataConfig, encoder=None, split: dict | None = None, fit_kwargs: dict | None = None):
    """Read the log, choose the target if ``cfg.target`` is ``auto``, fix the split (given, or from
    time quantiles), fit the encoder on training-period events if none is given, and build the
    samples. Returns (dataset, encoder, info); ``info["split"]["data_config"]`` is the config used."""
    from interest_core.encoding import fit_encoder

    users, stats = read_log(path)
    if not users:
        raise ValueError(f"{path}: no valid events" + (f" ({invalid_summary(stats)})" if stats["invalid"] else ""))
    cfg, choice = resolve_target(users, cfg)
    if split is None:
        t1, t2 = split_times(users, cfg)
    else:
        t1, t2 = int(split["t1"]), int(split["t2"])
    if encoder is None:
        if not any(evs[0].ts < t1 for evs in users.values()):  # fit_encoder said "no categorised events"
            raise ValueError(f"{path}: no event lies before the validation period (t1 {t1} ms): the split is by "
                             "time, so the log must span several timestamps")
        train_events = (e for evs in users.values() for e in evs if e.ts < t1)
        encoder = fit_encoder(train_events, min_category_count=cfg.min_category_count, max_len=cfg.max_len,
                              **(fit_kwargs or {}))
        if len(encoder.categories) < 2:  # evaluate divided by its baselines' KL of 0 (a ZeroDivisionError)
            raise ValueError(f"{path}: the clicks and browses before the validation period have one category "
                             f"seen {cfg.min_category_count} times or more ({encoder.categories[0]!r}): a vector over "
                             "one category is always 1, with nothing to learn or evaluate; give a log of two or "
                             "more (or a lower --set min_category_count)")
    ds = build_dataset(users, encoder.categories, cfg, t1, t2)
    info = {"log": stats, "samples": ds.counts, "split": split_record(cfg, t1, t2, choice)}
    return ds, encoder, info


def split_record(cfg: DataConfig, t1: int, t2: int, target_choice: dict | None = None) -> dict:
    """The card's ``split``: its data config is the resolved one (never ``auto``), so ``evaluate``
    rebuilds the same samples; ``target_choice`` says why when the target was chosen."""
    out = {
        "by": "time",
        "t1": t1, "t2": t2,
        "rule": "train: target ends < t1; val: cut >= t1 and target ends < t2; test: cut >= t2",
        "data_config": asdict(cfg),
    }
    if target_choice is not None:
        out["target_choice"] = target_choice
    return out



# --- dense training ---------------------------------------------------------------------------
def serving_window_sizes(seq: UserSeq, encoder, horizon_ms: int, max_events: int) -> np.ndarray:
    """(n+1,): for each cut c, the number of events the worker's encoded window holds when event c-1
    is the newest: those within the horizon, at most ``max_events``, and the most recent whole
    events that fit the token budget (:meth:`interest_core.encoding.Encoder.encode`)."""
    evs, ts = seq.events, seq.ts
    n = len(evs)
    toklen = np.array([len(encoder.event_tokens(e, None)) for e in evs], np.int64)  # a gap token is 1 either way
    csum = np.concatenate([[0], np.cumsum(toklen)])
    budget = encoder.token_budget
    out = np.zeros(n + 1, np.int64)
    for c in range(1, n + 1):
        lo = max(int(np.searchsorted(ts, ts[c - 1] - horizon_ms, side="right")), c - max_events)
        lo = max(lo, int(np.searchsorted(csum, csum[c] - budget, side="left")))
        out[c] = c - lo
    return out


@dataclass
class DenseReadouts:
    """Every readout of every training sequence, flat: sequence ``q`` owns rows
    ``offsets[q]:offsets[q+1]``; each row has its token position ``pos``, the ``hour`` of its event,
    ``is_last`` (the sequence's own cut) and ``cut_row`` into ``targets`` / ``profiles`` (one row
    per training cut, ``splits["train_all"]``)."""

    offsets: np.ndarray  # (N+1,) int64
    pos: np.ndarray  # (M,) int64
    hour: np.ndarray  # (M,) int64
    is_last: np.ndarray  # (M,) bool
    weight: np.ndarray  # (M,) float32: 1 for the last; the share of its serving window otherwise (module doc)
    cut_row: np.ndarray  # (M,) int64
    targets: np.ndarray  # (C, k) float32
    profiles: np.ndarray  # (C, P) float32
    # every cut's scaled_targets, (C, k) float32 and (C,) bool, or None (TrainConfig.aux_horizon 0)
    aux_targets: np.ndarray | None = None
    aux_ok: np.ndarray | None = None

    @property
    def readouts_per_sequence(self) -> float:
        return float(len(self.pos) / max(1, len(self.offsets) - 1))


def scaled_targets(ds: Dataset, samples: Samples, cfg: DataConfig, times: float) -> tuple[np.ndarray, np.ndarray]:
    """The target of each sample over ``times`` target spans instead of one (the next ``times *
    target_k`` events or baskets, rounded, at least 1, or ``times * target_window_s``), the same
    code as the target: ((N, k) float32, (N,) bool ok). Not ok (row all zero) where that span runs
    past the log's end, past the training period (it must end before ``ds.t1``, as a training
    target does), or holds no categorised event."""
    wide = replace(cfg, target_k=max(1, round(cfg.target_k * times)),
                   target_window_s=max(1, round(cfg.target_window_s * times)))
    end_of_log = max(int(s.ts[-1]) for s in ds.seqs)
    k = samples.targets.shape[1]
    rows, ok = [], np.zeros(len(samples), bool)
    baskets = {}
    for r, (ui, i, cut_ts) in enumerate(zip(samples.user, samples.cut, samples.cut_ts)):
        s = ds.seqs[int(ui)]
        if wide.target == "next_baskets" and int(ui) not in baskets:
            baskets[int(ui)] = basket_index(s.ts)
        span = target_span(s.ts, int(i), int(cut_ts), wide, end_of_log, baskets.get(int(ui)))
        if span is not None and span[1] < ds.t1 and (s.weight[int(i):span[0]] > 0).any():
            rows.append((int(ui), int(i), int(cut_ts), span[0]))
            ok[r] = True
    out = np.zeros((len(samples), k), np.float32)
    out[ok] = _targets(ds.seqs, rows, k)
    return out, ok


def dense_readouts(ds: Dataset, samples: Samples, cfg: DataConfig, encoder) -> tuple[list[np.ndarray], DenseReadouts]:
    """The token sequences of ``samples`` (training cuts) and every readout in them (module doc)."""
    allc = ds.splits["train_all"]
    row_of = {(int(u), int(i)): r for r, (u, i) in enumerate(zip(allc.user, allc.cut))}
    horizon_ms = seconds_to_ms(cfg.horizon_s)
    serving = {}  # user -> events in the serving window of each cut (index c: the window ending at event c-1)
    seqs, offsets, pos, hour, is_last, cut_row, weight = [], [0], [], [], [], [], []
    for ui, i, cut_ts in zip(samples.user, samples.cut, samples.cut_ts):
        ui, i = int(ui), int(i)
        evs = ds.seqs[ui].events
        if ui not in serving:
            serving[ui] = serving_window_sizes(ds.seqs[ui], encoder, horizon_ms, cfg.max_events)
        win = window_slice(evs[max(0, i - cfg.max_events) : i], int(cut_ts), horizon_ms, cfg.max_events)
        ids, ends = encoder.encode_with_ends(win)
        a = i - len(win)  # the window is events a .. i-1
        first = next((m for m, e in enumerate(ends) if e >= 0), len(ends))  # the oldest event that fit
        for m, end in enumerate(ends):
            c = a + m + 1  # the cut after this event
            r = row_of.get((ui, c))
            if end < 0 or r is None:
                continue
            pos.append(end)
            hour.append((win[m].ts // 3_600_000) % 24)
            is_last.append(c == i)
            cut_row.append(r)
            weight.append(1.0 if c == i else min(1.0, (m + 1 - first) / max(1, serving[ui][c])))
        seqs.append(np.asarray(ids, np.int32))
        offsets.append(len(pos))
    dense = DenseReadouts(np.asarray(offsets, np.int64), np.asarray(pos, np.int64), np.asarray(hour, np.int64),
                          np.asarray(is_last, bool), np.asarray(weight, np.float32), np.asarray(cut_row, np.int64),
                          allc.targets, sample_profiles(ds, allc, cfg, encoder))
    return seqs, dense

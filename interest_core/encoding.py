"""The one encoding of a user's window into token ids: training, export and the worker use it.

Imports only the standard library, numpy and Hugging Face ``tokenizers`` (no torch), so the
worker-only install runs exactly this code.

Each event of the window (sorted by ``ts``, already cut by :mod:`interest_core.window`) becomes a few
tokens, in this order::

    gap   type   category | query subwords   [dwell]

* ``gap``: the time since the previous event of the window, bucketed (``gap:first`` for the
  oldest event of the window, whose predecessor the window does not hold);
* ``type``: ``click`` / ``browse`` / ``search``;
* ``category``: one token per known category, ``[UNK_CAT]`` for a category the spec does not
  know (rare in training or unseen); searches carry no category but their query, as up to
  ``max_query_tokens`` BPE subword tokens (a tokenizer trained on the training queries only);
* ``dwell``: a bucketed dwell time, only for events that carry ``dwell_ms``.

Beside the tokens, a spec of version 3 has a float input: the user's long-term profile
(:func:`interest_core.window.profile_update`), per scale the decayed weight of each output category
(:meth:`Encoder.profile_vector`). It carries what the window has forgotten.

A spec of version 4 also carries an item lift (:mod:`interest_core.item_lift`): per item, k logit
offsets that the window's items add to the graph's prediction, outside the graph
(:attr:`Encoder.item_lift`).

A sequence is ``[BOS] event ... event hour [END]``, ``hour`` being the UTC hour of day of the
newest event (daily habits; spec version 2, absent from version-1 specs); when the events do not
fit in ``max_len`` tokens the oldest ones are dropped, whole (an event is never cut in half). The
model's interest head reads the ``[END]`` position.

Token id layout (also written into the spec as ``offsets``)::

    0 [PAD]  1 [BOS]  2 [END]  3 [UNK_CAT]
    types (3) | categories (k) | gap buckets | dwell buckets | hours (24, v2) | query subwords (BPE)

Search text is never logged by this module; ``repr`` of an encoder shows only sizes.
"""
from __future__ import annotations

import json
from bisect import bisect_right
from collections import Counter
from typing import Iterable, Sequence

from interest_core.item_lift import ItemLift
from interest_core.window import EVENT_TYPES, PROFILE_SCALES, PROFILE_TYPE_WEIGHTS, WindowEvent, profile_values

SPEC_VERSION = 4  # 2: hour-of-day token before [END]; 3: the long-term profile input; 4: an item lift. Older specs load
SPECIALS = ("[PAD]", "[BOS]", "[END]", "[UNK_CAT]")
PAD_ID, BOS_ID, END_ID, UNK_CAT_ID = 0, 1, 2, 3

# Upper bounds (exclusive) of the time-gap buckets, seconds: seconds-apart bursts, minutes,
# a session pause, hours, a day and more. Bucket i holds gaps < bound i; the last bucket is open.
DEFAULT_GAP_BUCKETS_S = (2, 10, 60, 300, 1800, 7200, 21600, 86400)
# Upper bounds (exclusive) of the dwell buckets, milliseconds: bounce, glance, read, study.
DEFAULT_DWELL_BUCKETS_MS = (2_000, 10_000, 30_000, 120_000)
DEFAULT_MAX_LEN = 128  # tokens including [BOS] and [END]; ~40 clicks (CPU cost grows ~T^1.5 here)
DEFAULT_MAX_QUERY_TOKENS = 8  # subwords kept per search query
DEFAULT_BPE_VOCAB = 1000  # subword vocabulary of the query tokenizer
DEFAULT_MIN_CATEGORY_COUNT = 5  # rarer categories in training map to [UNK_CAT]


class Encoder:
    """Turns a window of :class:`~interest_core.window.WindowEvent` into token ids (see module doc)."""

    def __init__(
        self,
        categories: Sequence[str],
        tokenizer_json: str,
        max_len: int = DEFAULT_MAX_LEN,
        gap_buckets_s: Sequence[float] = DEFAULT_GAP_BUCKETS_S,
        dwell_buckets_ms: Sequence[int] = DEFAULT_DWELL_BUCKETS_MS,
        max_query_tokens: int = DEFAULT_MAX_QUERY_TOKENS,
        hour_token: bool = True,
        profile: bool | int = True,
        item_lift: dict | None = None,
    ):
        from tokenizers import Tokenizer

        if len(set(categories)) != len(categories) or not categories:
            raise ValueError("categories must be a non-empty list of distinct names")
        if max_len < 3 + 4 + max_query_tokens:
            raise ValueError(f"max_len {max_len} cannot hold one event")
        self.categories: tuple[str, ...] = tuple(categories)
        self.tokenizer_json = tokenizer_json
        try:
            self.tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # the Rust parser's own Exception, with serde's words only
            import tokenizers

            raise ValueError(f"the query tokenizer cannot be read by the installed tokenizers {tokenizers.__version__} "
                             f"(a newer one wrote it, or it is not a tokenizer): {exc}") from None
        self.max_len = int(max_len)
        self.gap_bounds_ms = tuple(int(round(s * 1000)) for s in gap_buckets_s)
        self.gap_buckets_s = tuple(gap_buckets_s)
        self.dwell_buckets_ms = tuple(int(d) for d in dwell_buckets_ms)
        self.max_query_tokens = int(max_query_tokens)
        self.hour_token = bool(hour_token)
        # the long-term profile (interest_core.window) as a float input beside the tokens: one value
        # per (scale, category), scale-major; () for specs before version 3 (no profile input)
        # (version 3 implies version 2's hour token)
        # (True: all of PROFILE_SCALES; an int n: the first n, as an older spec lists them)
        n_scales = len(PROFILE_SCALES) if profile is True else int(profile)
        self.profile_scales: tuple = tuple(PROFILE_SCALES[:n_scales]) if hour_token else ()

        self.pad_id, self.bos_id, self.end_id, self.unk_cat_id = PAD_ID, BOS_ID, END_ID, UNK_CAT_ID
        o = len(SPECIALS)
        self.type_offset = o
        o += len(EVENT_TYPES)
        self.category_offset = o
        o += len(self.categories)
        self.gap_offset = o  # gap:first, then len(bounds)+1 buckets
        o += 1 + len(self.gap_bounds_ms) + 1
        self.dwell_offset = o
        o += len(self.dwell_buckets_ms) + 1
        self.hour_offset = o
        o += 24 if self.hour_token else 0
        self.query_offset = o
        o += self.tokenizer.get_vocab_size()
        self.vocab_size = o
        self._type_ids = {t: self.type_offset + i for i, t in enumerate(EVENT_TYPES)}
        self._cat_ids = {c: self.category_offset + i for i, c in enumerate(self.categories)}
        self._cat_index = {c: i for i, c in enumerate(self.categories)}
        self._query_cache: dict[str, tuple[int, ...]] = {}
        # what the window's items add to the graph's prediction (interest_core.item_lift; None: nothing)
        self.item_lift = ItemLift.from_spec(item_lift, self.categories) if item_lift is not None else None

    def __repr__(self) -> str:
        return f"Encoder(k={len(self.categories)}, vocab_size={self.vocab_size}, max_len={self.max_len})"

    @property
    def k(self) -> int:
        return len(self.categories)

    # --- serialisation -------------------------------------------------------------------
    def to_spec(self) -> dict:
        """JSON-serialisable spec; :meth:`from_spec` rebuilds an identical encoder."""
        spec = {
            "version": (SPEC_VERSION if self.item_lift is not None else 3 if self.profile_scales else 2)
            if self.hour_token else 1,
            "categories": list(self.categories),
            "max_len": self.max_len,
            "max_query_tokens": self.max_query_tokens,
            "gap_buckets_s": list(self.gap_buckets_s),
            "dwell_buckets_ms": list(self.dwell_buckets_ms),
            "special_tokens": {name: i for i, name in enumerate(SPECIALS)},
            "event_types": list(EVENT_TYPES),
            "offsets": {
                "type": self.type_offset,
                "category": self.category_offset,
                "gap": self.gap_offset,
                "dwell": self.dwell_offset,
                "hour": self.hour_offset,
                "query": self.query_offset,
            },
            "vocab_size": self.vocab_size,
            "tokenizer": self.tokenizer_json,
        }
        if self.profile_scales:
            spec["profile"] = {"scales": [list(x) for x in self.profile_scales],
                               "type_weights": dict(PROFILE_TYPE_WEIGHTS),
                               "layout": "scale-major, categories in output order"}
        if self.item_lift is not None:
            spec["item_lift"] = self.item_lift.to_spec()
        return spec

    def with_item_lift(self, item_lift: ItemLift | None) -> "Encoder":
        """This encoding with ``item_lift`` (None: without one); the tokens do not change."""
        spec = {k: v for k, v in self.to_spec().items() if k != "item_lift"}
        if not self.profile_scales:
            raise ValueError("an item lift needs an encoding of version 3 (with the profile)")
        spec["version"] = 3
        if item_lift is not None:
            spec.update(version=SPEC_VERSION, item_lift=item_lift.to_spec())
        return Encoder.from_spec(spec)

    @classmethod
    def from_spec(cls, spec: dict) -> "Encoder":
        if spec.get("version") not in (1, 2, 3, SPEC_VERSION):
            raise ValueError(f"unsupported encoding spec version {spec.get('version')!r}")
        if spec["version"] >= 3:
            prof = spec.get("profile") or {}
            scales = [tuple(x) for x in prof.get("scales", ())]
            # the scales a spec reads are a prefix of the ones this code keeps (older specs read fewer)
            if not scales or scales != list(PROFILE_SCALES[: len(scales)]) or \
                    prof.get("type_weights") != PROFILE_TYPE_WEIGHTS:
                raise ValueError(f"the spec's profile {prof.get('scales')!r} / {prof.get('type_weights')!r} is not "
                                 f"the one this code keeps ({[list(x) for x in PROFILE_SCALES]} / "
                                 f"{PROFILE_TYPE_WEIGHTS})")
        enc = cls(
            categories=spec["categories"],
            tokenizer_json=spec["tokenizer"],
            max_len=spec["max_len"],
            gap_buckets_s=spec["gap_buckets_s"],
            dwell_buckets_ms=spec["dwell_buckets_ms"],
            max_query_tokens=spec["max_query_tokens"],
            hour_token=spec["version"] >= 2,
            profile=len((spec.get("profile") or {}).get("scales", ())) if spec["version"] >= 3 else 0,
            item_lift=spec.get("item_lift", {}) if spec["version"] >= 4 else None,
        )
        if spec.get("vocab_size", enc.vocab_size) != enc.vocab_size:
            raise ValueError("encoding spec vocab_size does not match its layout")
        return enc

    def save(self, path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_spec(), f)

    @classmethod
    def load(cls, path) -> "Encoder":
        with open(path, encoding="utf-8") as f:
            return cls.from_spec(json.load(f))

    # --- encoding ------------------------------------------------------------------------
    def category_index(self, category: str | None) -> int:
        """Output index of a category, -1 if unknown."""
        cid = self._cat_ids.get(category) if category is not None else None
        return -1 if cid is None else cid - self.category_offset

    def gap_token(self, gap_ms: int | None) -> int:
        if gap_ms is None:
            return self.gap_offset  # gap:first
        return self.gap_offset + 1 + bisect_right(self.gap_bounds_ms, max(0, gap_ms))

    def dwell_token(self, dwell_ms: int) -> int:
        return self.dwell_offset + bisect_right(self.dwell_buckets_ms, max(0, dwell_ms))

    def query_tokens(self, query: str) -> tuple[int, ...]:
        ids = self._query_cache.get(query)
        if ids is None:
            raw = self.tokenizer.encode(query).ids[: self.max_query_tokens]
            ids = tuple(self.query_offset + i for i in raw)
            if len(self._query_cache) < 200_000:
                self._query_cache[query] = ids
        return ids

    @property
    def profile_size(self) -> int:
        """Width of the profile input (0: the spec has none)."""
        return len(self.profile_scales) * len(self.categories)

    def profile_vector(self, profile: dict | None) -> list[float]:
        """The profile input of a window (the profile is as of the window's newest event): per
        scale, the decayed weight of each output category (categories the spec does not know left
        out)."""
        k, n_scales = len(self.categories), len(self.profile_scales)
        out = [0.0] * self.profile_size
        if not out or not profile:
            return out
        index = self._cat_index
        for cat, vs in profile_values(profile).items():
            i = index.get(cat)
            if i is not None:
                out[i::k] = vs[:n_scales]  # scale-major: positions i, i + k, i + 2k, ...
        return out

    def event_tokens(self, event: WindowEvent, gap_ms: int | None) -> list[int]:
        """Tokens of one event; ``gap_ms`` is None for the oldest event of the window."""
        toks = [self.gap_token(gap_ms), self._type_ids.get(event.type, self.unk_cat_id)]
        if event.type == "search":
            toks.extend(self.query_tokens(event.query or ""))
        else:
            toks.append(self._cat_ids.get(event.category, self.unk_cat_id))
        if event.dwell_ms is not None:
            toks.append(self.dwell_token(event.dwell_ms))
        return toks

    @property
    def token_budget(self) -> int:
        """Tokens the events of a (non-empty) window may take: ``max_len`` minus BOS, the hour
        token and END."""
        return self.max_len - 1 - (2 if self.hour_token else 1)

    def _fitting(self, events: Sequence[WindowEvent]) -> tuple[list[list[int]], list[int]]:
        """The tokens of the most recent whole events that fit, newest first, and the tail."""
        tail = [self.end_id]
        if self.hour_token and events:
            tail = [self.hour_offset + (events[-1].ts // 3_600_000) % 24, self.end_id]
        budget = self.max_len - 1 - len(tail)
        chunks: list[list[int]] = []
        for j in range(len(events) - 1, -1, -1):
            gap = events[j].ts - events[j - 1].ts if j > 0 else None
            toks = self.event_tokens(events[j], gap)
            if len(toks) > budget:
                break
            budget -= len(toks)
            chunks.append(toks)
        return chunks, tail

    def encode(self, events: Sequence[WindowEvent]) -> list[int]:
        """Token ids of a window (events sorted by ts ascending): ``[BOS] ... [END]``, keeping the
        most recent whole events that fit in ``max_len``. Never longer than ``max_len``."""
        chunks, tail = self._fitting(events)
        out = [self.bos_id]
        for toks in reversed(chunks):
            out.extend(toks)
        out.extend(tail)
        return out

    def encode_with_ends(self, events: Sequence[WindowEvent]) -> tuple[list[int], list[int]]:
        """:meth:`encode` and, per event, the position of its last token (-1 for the oldest events
        that did not fit): where training reads out every event of a window at once."""
        chunks, tail = self._fitting(events)
        out, ends = [self.bos_id], [-1] * len(events)
        first = len(events) - len(chunks)
        for m, toks in enumerate(reversed(chunks)):
            out.extend(toks)
            ends[first + m] = len(out) - 1
        out.extend(tail)
        return out, ends


def train_tokenizer(queries: Iterable[str], vocab_size: int = DEFAULT_BPE_VOCAB) -> str:
    """A BPE tokenizer (lower-cased, whitespace/punctuation pre-split) trained on ``queries``;
    returns its JSON string."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["[UNK]"], min_frequency=2, show_progress=False
    )
    tok.train_from_iterator(list(queries), trainer)
    return tok.to_str()


def fit_encoder(
    events: Iterable[WindowEvent],
    min_category_count: int = DEFAULT_MIN_CATEGORY_COUNT,
    bpe_vocab_size: int = DEFAULT_BPE_VOCAB,
    max_len: int = DEFAULT_MAX_LEN,
    max_query_tokens: int = DEFAULT_MAX_QUERY_TOKENS,
) -> Encoder:
    """Fit the spec on TRAINING events only: categories of clicks/browses seen at least
    ``min_category_count`` times (sorted by name: the model's output order; the most common one
    is kept even if all are rare), and the query BPE tokenizer on the training queries."""
    counts: Counter[str] = Counter()
    queries: list[str] = []
    for e in events:
        if e.type == "search":
            if e.query:
                queries.append(e.query)
        elif e.category is not None:
            counts[e.category] += 1
    cats = sorted(c for c, n in counts.items() if n >= min_category_count)
    if not cats:
        if not counts:
            raise ValueError("no categorised events in the training data")
        cats = [counts.most_common(1)[0][0]]
    return Encoder(
        categories=cats,
        tokenizer_json=train_tokenizer(queries, bpe_vocab_size),
        max_len=max_len,
        max_query_tokens=max_query_tokens,
    )


def pad_right(seqs, pad_id: int):
    """Right-pad token lists to the longest: (input_ids, attention_mask) int64 numpy (B, T).
    The one padding convention of training, export and serving (the head reads the last real
    position)."""
    import numpy as np

    T = max(len(s) for s in seqs)
    ids = np.full((len(seqs), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), T), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask

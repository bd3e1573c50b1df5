"""The interest model (GPT-2 over behaviour tokens) and its training loop, top to bottom.

1. :class:`ModelConfig`: every size and setting, saved in the checkpoint's ``config.json``.
2. :class:`InterestModel`: the prediction at a READOUT position of a token sequence of
   :mod:`interest_core.encoding` (sequences are RIGHT padded). Three additive parts, in logits:

   * the **plain path** (a learned counter): ``log(a_all*counts + a_recent*recent + beta*prior +
     sum_s a_s*profile_s)``: the window's category counts up to the readout (all, and decayed by
     token distance), a learned population prior and the user's long-term profile (one weight per
     scale). It is the shrinkage baseline in the model, trained first, on its own. With
     ``length_buckets`` (off by default), its weights depend on the user's history length, as in
     the ``mixture`` baseline (:meth:`InterestModel._length_bucket`);
   * the **per-category correction** (``correction="features"``): a small network shared across
     categories reads, for each category, what a counter cannot use: how recent the category is
     against its long-run weight (the profile's 1-day vs 30-day scales: "is this interest due
     again"), its window counts, the user's activity, and a learned category embedding; one logit
     per category. A search carries no category, only its query's subwords: with ``query_offset``
     set (``TrainConfig.queries``, when training saw searches), a learned map from each subword
     to categories (``query_cat``, started at what the users who searched it did next,
     :meth:`InterestModel.init_query_map`) makes the window's searches per-category inputs too
     (all, and decayed by token distance), so intent that shows in searches reaches the network;
   * the **transformer correction** (``correction="full"``): transformers' ``GPT2Model`` reads the
     tokens causally; its hidden state at the readout, plus an hour-of-day embedding and a
     projection of the profile, goes through a linear head.

   Each correction starts at zero, so an untrained model IS its plain path. The readout is the last
   token of the newest event (``readout="event"``): at serving, 2 before the last real position
   (``... event hour [END]``; the hour token is read into the hour embedding instead), which makes
   every event position of a sequence a readout with the same meaning: dense training
   (``forward(..., readouts=...)``) supervises all of them in one pass, serving reads the last.
   Checkpoints from before (``readout="end"``) read the ``[END]`` position as they always did.
3. Checkpoint directory I/O: :func:`save_checkpoint` / :func:`load_checkpoint`.
4. The training loop (:func:`train_model`): AdamW, linear warmup then cosine decay, early stopping
   on validation KL, resumable, seeded.

``forward`` is traceable for ONNX export: no Python branches on tensor values, no ``.item()``.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from transformers import GPT2Config, GPT2Model

from interest_core.encoding import Encoder

from interest_core.artifacts import (CHECKPOINT_CARD_FILE, CONFIG_FILE, ENCODING_FILE, TOKENIZER_FILE,  # noqa: F401
                                     TRAIN_STATE_FILE, WEIGHTS_FILE)
from interest_core.cli_types import MAX_SEED
from interest_core.rerank import PRIOR_SHAPE, is_prior
from models.config_checks import MAX_CAT_WIDTH, MAX_THREADS, check_backbone, check_lr_floor, check_ranges
from models.item_lift import PRIOR_FLOOR

CORRECTIONS = ("none", "features", "full")  # what is added to the plain path (module doc)
READOUTS = ("event", "end")
PROFILE_EPS = 1e-6  # the profile's resolution (interest_core.window.PROFILE_UNIT millionths)


def n_category_features(profile_scales: int) -> int:
    """Inputs per category of the per-category network (InterestModel._category_features)."""
    return 4 + (4 * profile_scales if profile_scales >= 2 else 0)


# GPT-2's own "gelu_new" is the tanh approximation written out in a handful of Python tensor ops;
# torch's fused kernel computes the same function (within 5e-7), and a training step took 19 % less
# time (bench/train_cost.py, docs/model.md, "Training cost"). A checkpoint keeps the activation it was
# trained with (ModelConfig.backbone), so older ones still load with gelu_new.
ACTIVATION = "gelu_pytorch_tanh"
SEARCH_FEATURES = 2  # per category, the window's searches for it: all, and decayed (InterestModel._search_features)


@dataclass
class ModelConfig:
    vocab_size: int  # behaviour tokens of the encoding (Encoder.vocab_size)
    k: int  # categories, the head's outputs (Encoder.categories)
    category_offset: int  # first category token id (Encoder.category_offset)
    max_len: int = 128  # tokens per sequence, = Encoder.max_len (GPT-2 n_positions)
    hour_offset: int = -1  # first hour-of-day token id (Encoder.hour_offset); -1: the spec has none
    # first query subword id (Encoder.query_offset): the per-category network reads searches through
    # a learned map from subwords to categories (module doc); -1: it does not (TrainConfig.queries
    # off, no search in training, or a checkpoint from before the map)
    query_offset: int = -1
    n_layer: int = 2  # 2 blocks like SASRec; measured speed in docs/model.md, "Training cost"
    n_head: int = 2
    n_embd: int = 48  # SASRec uses d=50 on small data; a step costs ~C^2
    dropout: float = 0.1  # residual/embedding dropout; small real logs over-fit without it (SASRec 0.2-0.5)
    loss: str = "kl"  # "kl" (what evaluation judges) or "mse" over the k probabilities
    correction: str = "full"  # "none" (plain path only), "features" (+ per-category net), "full" (+ GPT-2)
    readout: str = "event"  # "event": last token of the newest event; "end": [END] (checkpoints before it)
    recency_tokens: float = 30.0  # initial decay length of the recent-counts path, tokens (~10 events)
    cat_dim: int = 8  # category embedding of the per-category network
    cat_hidden: int = 32  # its hidden width (it runs k times per readout)
    cat_context: int = 8  # a summary of the user's whole profile given to every category (0: none)
    profile_scales: int = 0  # scales of the profile input (Encoder.profile_scales); 0: no profile input
    # the plain path's weights per history length (module doc), as the `mixture` baseline's, e.g.
    # [1, 4, 16, 64, 256]; [] (the default): one set of weights for every user. Off: it did not move
    # the corrected model on MovieLens or the Complete Journey (docs/model.md)
    length_buckets: list = field(default_factory=list)
    # 1: during training, a second linear head on the transformer's state predicts the target over
    # another span (TrainConfig.aux_horizon), from the plain path; only the backbone shares it, and
    # serving never reads it
    aux_head: int = 0
    token_offset: int = 0  # behaviour id -> backbone id shift (= pretrained vocab with a GPT-2 --init-from)
    init_from: str | None = None  # the pretrained directory this model started from
    backbone: dict = field(default_factory=dict)  # the GPT2Config used, so loading needs no source dir

    def __post_init__(self):
        if self.loss not in ("mse", "kl"):
            raise ValueError(f"loss must be 'mse' or 'kl', got {self.loss!r}")
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {self.correction!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if not all(isinstance(b, int) and b >= 1 for b in self.length_buckets) or \
                any(b <= a for a, b in zip(self.length_buckets, self.length_buckets[1:])):
            raise ValueError(f"length_buckets must be increasing history lengths >= 1, got {self.length_buckets}")
        if self.aux_head not in (0, 1):
            raise ValueError(f"aux_head must be 0 (off) or 1 (on), got {self.aux_head}")
        check_backbone(self)
        if self.query_offset != -1 and not self.category_offset + self.k <= self.query_offset < self.vocab_size:
            raise ValueError(f"query_offset must be -1 or a token id past the categories and below vocab_size "
                             f"{self.vocab_size}, got {self.query_offset}")
        check_ranges(self, at_least={"max_len": 1, "cat_dim": 1, "cat_hidden": 0, "cat_context": 0},
                     above={"recency_tokens": 0.0}, at_most={"cat_dim": MAX_CAT_WIDTH, "cat_hidden": MAX_CAT_WIDTH,
                                                               "cat_context": MAX_CAT_WIDTH})

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """From a saved config; unknown keys fail. Configs written before the readout existed
        (no ``readout`` key) read the [END] position with the transformer correction only."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        d = dict(d)
        if "readout" not in d:
            d.update(readout="end", correction="full", cat_hidden=0)
        d.setdefault("cat_context", 0)  # checkpoints from before the context
        d.setdefault("query_offset", -1)  # checkpoints from before the query map
        return cls(**d)


class InterestModel(nn.Module):
    """Plain path + corrections at a readout of RIGHT-padded sequences (module doc).

    ``forward(input_ids (B,T) long, attention_mask (B,T) long, profile, targets=None, readouts=None)``
    returns ``(probs (R,k) softmax, loss or None)``:

    * serving (``readouts=None``): one readout per row, R = B; ``profile`` (B, S*k);
    * dense training: ``readouts = {"batch": (R,), "pos": (R,), "hour": (R,) long, "weight": (R,)}``
      names R readouts (row, token position of an event's last token, hour of that event or 24);
      ``profile`` (R, S*k) and ``targets`` (R, k) belong to the readouts; the loss is the
      ``weight``-weighted mean over them.

    ``profile`` is ignored by a model without one (``config.profile_scales == 0``).
    """

    def __init__(self, config: ModelConfig, backbone: GPT2Model | None = None):
        super().__init__()
        self.config = config
        k, S = config.k, config.profile_scales
        # -- the plain path
        self.prior_logits = nn.Parameter(torch.zeros(k))  # set by init_prior
        self.log_a_all = nn.Parameter(torch.tensor(0.0))
        self.log_a_recent = nn.Parameter(torch.tensor(0.0))
        self.log_beta = nn.Parameter(torch.tensor(math.log(2.0)))  # prior worth ~2 events at start
        self.log_tau = nn.Parameter(torch.tensor(math.log(config.recency_tokens)))
        if S:
            self.log_a_profile = nn.Parameter(torch.full((S,), math.log(0.5)))
        if config.length_buckets:  # per history length: offsets of (a_all, a_recent, beta, a_profile...)
            self.register_buffer("length_edges", torch.tensor(config.length_buckets, dtype=torch.float32),
                                 persistent=False)
            self.log_w_length = nn.Parameter(torch.zeros(len(config.length_buckets) + 1, 3 + S))
        # -- the per-category correction (absent from checkpoints before it: cat_hidden 0)
        if config.cat_hidden:
            self.cat_emb = nn.Embedding(k, config.cat_dim)
            nn.init.normal_(self.cat_emb.weight, std=0.1)
            ctx = config.cat_context if S else 0
            if ctx:  # the user's profile, summarised: households alike in what they buy share their rhythms
                self.cat_ctx = nn.Linear(S * (k + 1), ctx)
                nn.init.zeros_(self.cat_ctx.weight)
                nn.init.zeros_(self.cat_ctx.bias)
            first = nn.Linear(n_category_features(S) + config.cat_dim + ctx, config.cat_hidden)
            if config.query_offset >= 0:
                # query subword -> category logits (init_query_map), and the searches' inputs last,
                # their weights from zero: nothing draws from the random generator, so the rest of
                # the model starts (and, without searches, trains) exactly as without the map
                self.query_cat = nn.Embedding.from_pretrained(
                    torch.zeros(config.vocab_size - config.query_offset, k), freeze=False)
                first.weight = nn.Parameter(torch.cat([first.weight.detach(),
                                                       torch.zeros(config.cat_hidden, SEARCH_FEATURES)], dim=1))
                first.in_features += SEARCH_FEATURES
            self.cat_net = nn.Sequential(first, nn.GELU(), nn.Linear(config.cat_hidden, 1))
            nn.init.zeros_(self.cat_net[2].weight)  # starts at zero: the model starts as the plain path
            nn.init.zeros_(self.cat_net[2].bias)
        # -- the transformer correction
        if backbone is None:
            if config.backbone:
                gcfg = GPT2Config(**config.backbone)
            else:
                gcfg = GPT2Config(
                    vocab_size=config.vocab_size + config.token_offset,
                    n_positions=config.max_len,
                    n_embd=config.n_embd,
                    n_layer=config.n_layer,
                    n_head=config.n_head,
                    resid_pdrop=config.dropout,
                    embd_pdrop=config.dropout,
                    attn_pdrop=0.0,  # attention dropout costs ~60% of a CPU step
                    activation_function=ACTIVATION,
                )
                config.backbone = _backbone_dict(gcfg)
            backbone = GPT2Model(gcfg)
        self.backbone = backbone
        n_embd = backbone.config.n_embd
        self.head = nn.Linear(n_embd, k)
        nn.init.zeros_(self.head.weight)  # start as the plain path (module doc)
        nn.init.zeros_(self.head.bias)
        if config.readout == "event":
            self.hour_emb = nn.Embedding(25, n_embd)  # 24 hours + "no hour" (an empty window)
            nn.init.normal_(self.hour_emb.weight, std=0.02)
        if S:
            # per scale: the k shares and log(1 + mass) -> an embedding (at the readout, or added to
            # every token for readout="end" checkpoints)
            self.profile_proj = nn.Linear(S * (k + 1), n_embd)
            nn.init.zeros_(self.profile_proj.weight)
            nn.init.zeros_(self.profile_proj.bias)
        self.register_buffer("cat_ids", torch.arange(k) + config.category_offset, persistent=False)
        if config.aux_head and config.correction == "full":  # last: it draws after everything else
            self.aux_head = nn.Linear(n_embd, k)
            nn.init.zeros_(self.aux_head.weight)
            nn.init.zeros_(self.aux_head.bias)

    @torch.no_grad()
    def init_prior(self, mean_target: np.ndarray) -> None:
        """Start the prior at the training targets' mean distribution."""
        p = torch.as_tensor(mean_target, dtype=torch.float32).clamp_min(PRIOR_FLOOR)
        self.prior_logits.copy_(torch.log(p / p.sum()))

    @torch.no_grad()
    def init_query_map(self, sums: np.ndarray, counts: np.ndarray) -> None:
        """Start the query map at what users did next (:func:`models.train.query_targets`): each
        subword's categories at the mean target of the searches it was in, shrunk toward the prior
        by one search; a subword never seen starts at the prior."""
        prior = torch.softmax(self.prior_logits, dim=-1).double()  # (k,)
        s, n = torch.as_tensor(sums, dtype=torch.float64), torch.as_tensor(counts, dtype=torch.float64)
        mean = (s + prior) / (n.unsqueeze(-1) + 1.0)  # (V, k)
        self.query_cat.weight.copy_(torch.log(mean.clamp_min(1e-6)).float())

    def plain_parameters(self) -> list[nn.Parameter]:
        """The plain path's parameters (trained alone first, :func:`models.train.run_training`)."""
        ps = [self.prior_logits, self.log_a_all, self.log_a_recent, self.log_beta, self.log_tau]
        ps += [self.log_a_profile] if self.config.profile_scales else []
        return ps + ([self.log_w_length] if self.config.length_buckets else [])

    def correction_outputs(self) -> dict[str, nn.Linear]:
        """The last layer of each correction in use, by name ("features": the per-category network,
        "transformer": GPT-2's head): every correction reaches the logits through one of them, so
        scaling their weights and biases scales the corrections exactly."""
        out = {}
        if self.config.correction != "none" and self.config.cat_hidden:
            out["features"] = self.cat_net[2]
        if self.config.correction == "full":
            out["transformer"] = self.head
        return out

    @torch.no_grad()
    def scale_corrections(self, scale) -> None:
        """Multiply the corrections' logits by ``scale`` (0: the plain path as it is now), in place:
        one number for all, or one per :meth:`correction_outputs` in their order. The graph is
        unchanged; :func:`models.train.fit` chooses the scales on validation."""
        layers = list(self.correction_outputs().values())
        scales = [float(scale)] * len(layers) if np.ndim(scale) == 0 else [float(x) for x in scale]
        if len(scales) != len(layers):
            raise ValueError(f"{len(scales)} scales for {len(layers)} corrections")
        for layer, s in zip(layers, scales):
            layer.weight.mul_(s)
            layer.bias.mul_(s)

    def readout_positions(self, input_ids, attention_mask):
        """Serving readout of each row: (position (B,), hour id (B,) in 0..24, 24 = none).
        ``readout="event"``: the newest event's last token, 2 before the last real position (hour,
        [END]); an empty window ([BOS] [END]) reads [BOS]. ``"end"``: the last real position."""
        last = attention_mask.sum(dim=1) - 1  # (B,) last real position (right padding)
        if self.config.readout == "end":
            return last, torch.full_like(last, 24)
        hour = input_ids.gather(1, (last - 1).clamp_min(0).unsqueeze(1)).squeeze(1) - self.config.hour_offset
        has_hour = (hour >= 0) & (hour < 24) & (last >= 2)
        return (last - 2).clamp_min(0), torch.where(has_hour, hour, torch.full_like(hour, 24))

    def forward(self, input_ids, attention_mask, profile=None, targets=None, readouts=None):
        cfg = self.config
        S, k = cfg.profile_scales, cfg.k
        B, T = input_ids.shape
        if readouts is None:
            b_idx = torch.arange(B, device=input_ids.device)
            r_pos, hour = self.readout_positions(input_ids, attention_mask)
        else:
            b_idx, r_pos, hour = readouts["batch"], readouts["pos"], readouts["hour"]
        R = b_idx.shape[0]
        mask = attention_mask.to(torch.float32)  # (B, T)
        is_cat = (input_ids.unsqueeze(-1) == self.cat_ids).to(torch.float32) * mask.unsqueeze(-1)  # (B, T, k)
        window = self._window_sums(b_idx, r_pos, T, readouts is None)
        counts, recent = window(is_cat)  # (R, k) each: all, and decayed by token distance

        prior = torch.softmax(self.prior_logits, dim=-1)  # (k,)
        prof = profile.reshape(R, S, k).clamp_min(0.0) if S else None  # (R, S, k)
        log_w = torch.cat([torch.stack([self.log_a_all, self.log_a_recent, self.log_beta]),
                           self.log_a_profile if S else self.log_a_all.new_zeros(0)])  # (3 + S,)
        if cfg.length_buckets:
            log_w = log_w + self.log_w_length[self._length_bucket(counts, prof)]  # (R, 3 + S)
        w = torch.exp(log_w)
        mix = w[..., :1] * counts + w[..., 1:2] * recent + w[..., 2:3] * prior  # (R, k)
        if S:
            mix = mix + (w[..., 3:, None] * prof).sum(1)
        logits = torch.log(mix)  # (R, k) the plain path
        plain_logits = logits

        if cfg.correction != "none" and cfg.cat_hidden:
            feats = self._category_features(counts, recent, prof)  # (R, k, F)
            parts = [feats, self.cat_emb.weight.unsqueeze(0).expand(R, k, cfg.cat_dim)]  # (R, k, F), (R, k, D)
            if hasattr(self, "cat_ctx"):
                parts.append(self.cat_ctx(self._profile_features(prof)).unsqueeze(1).expand(R, k, cfg.cat_context))
            if cfg.query_offset >= 0:
                parts.append(self._search_features(window, input_ids, mask))  # (R, k, SEARCH_FEATURES)
            logits = logits + self.cat_net(torch.cat(parts, dim=-1)).squeeze(-1)
        aux_logits = None
        if cfg.correction == "full":
            z = self._transformer_state(input_ids, attention_mask, prof, b_idx, r_pos, hour)  # (R, C)
            logits = logits + self.head(z)
            if readouts is not None and "aux_targets" in readouts and hasattr(self, "aux_head"):
                aux_logits = plain_logits.detach() + self.aux_head(z)  # (R, k): trains the backbone only

        probs = torch.softmax(logits, dim=-1)
        loss = None
        if targets is not None:
            if cfg.loss == "kl":
                t = targets.clamp_min(1e-12)
                per = (targets * (torch.log(t) - torch.log_softmax(logits, dim=-1))).sum(-1)  # (R,)
            else:
                per = ((probs - targets) ** 2).mean(-1)
            if readouts is not None and "weight" in readouts:
                w = readouts["weight"]
                loss = (per * w).sum() / w.sum()
                if aux_logits is not None:  # weights: TrainConfig.aux_weight x the position's, 0 where none
                    a = readouts["aux_targets"]
                    per_aux = (a * (torch.log(a.clamp_min(1e-12)) - torch.log_softmax(aux_logits, dim=-1))).sum(-1)
                    loss = loss + (per_aux * readouts["aux_weight"]).sum() / w.sum()
            else:
                loss = per.mean()
        return probs, loss

    def _window_sums(self, b_idx, r_pos, T: int, one_per_row: bool):
        """A function of per-token weights (B, T, k) -> their sums up to each readout, all and
        decayed by token distance (the plain path's ``tau``): (R, k) each. The distance weights are
        computed once, for every call."""
        tau = torch.exp(self.log_tau)
        pos = torch.arange(T, device=r_pos.device)
        if one_per_row:  # one readout per row: weights over that row's tokens
            dist = (r_pos.unsqueeze(1) - pos.unsqueeze(0)).to(torch.float32)  # (B, T) tokens before the readout
            upto = (dist >= 0).to(torch.float32)
            decayed = upto * torch.exp(-dist.clamp_min(0.0) / tau)  # (B, T)
            return lambda x: (torch.einsum("bt,btk->bk", upto, x), torch.einsum("bt,btk->bk", decayed, x))
        # many readouts per row: every position's sums, then gather
        dist = (pos.unsqueeze(1) - pos.unsqueeze(0)).to(torch.float32)  # (T, T) readout r, token t
        decay = torch.exp(-dist.clamp_min(0.0) / tau) * (dist >= 0).to(torch.float32)  # (T, T)
        return lambda x: (x.cumsum(dim=1)[b_idx, r_pos], torch.einsum("rt,btk->brk", decay, x)[b_idx, r_pos])

    def _search_features(self, window, input_ids, mask):
        """(R, k, 2): per category, log(1 + the window's searches for it) up to the readout, all and
        decayed by token distance (``window``, :meth:`_window_sums`). Each query subword counts as
        its row of the ``query_cat`` map (softmax over categories, :meth:`init_query_map`)."""
        is_query = (input_ids >= self.config.query_offset).to(torch.float32) * mask  # (B, T)
        q = torch.softmax(self.query_cat((input_ids - self.config.query_offset).clamp_min(0)), dim=-1)  # (B, T, k)
        searched, recent = window(q * is_query.unsqueeze(-1))  # (R, k) each
        return torch.stack([torch.log1p(searched), torch.log1p(recent)], dim=-1)

    def _length_bucket(self, counts, prof):
        """(R,) long: the bucket of ``config.length_buckets`` that each readout's history length
        falls in (0: below the first edge). The length is the window's categorised events, or the
        profile's largest mass over its scales when that is larger: about the number of the user's
        events over the last year (type-weighted: a browse counts half)."""
        n = counts.sum(-1)  # (R,)
        if prof is not None:
            n = torch.maximum(n, prof.sum(-1).amax(-1))
        return (n.unsqueeze(-1) >= self.length_edges).sum(-1)

    def _profile_features(self, prof):
        """(R, S*(k+1)): per scale the k shares and log(1 + mass)."""
        mass = prof.sum(-1, keepdim=True)  # (R, S, 1)
        return torch.cat([prof / (mass + 1.0), torch.log1p(mass)], dim=-1).reshape(prof.shape[0], -1)

    def _category_features(self, counts, recent, prof):
        """(R, k, F) inputs of the per-category network (:func:`n_category_features`): the
        window's counts, and per profile scale the category's weight, its share, the user's mass,
        and its log-ratio to the 30-day scale (the 1-day one against it is about minus the days
        since the category's last event while that is under ~20 days: "is this interest due
        again"; the year against it says whether it is a long-run habit)."""
        R, k = counts.shape
        wtot = counts.sum(-1, keepdim=True)  # (R, 1)
        cols = [torch.log1p(counts), torch.log1p(recent), counts / (wtot + 1.0), torch.log1p(wtot).expand(R, k)]
        if prof is not None and prof.shape[1] >= 2:
            S = prof.shape[1]
            mass = prof.sum(-1, keepdim=True)  # (R, S, 1)
            lp = torch.log(prof + PROFILE_EPS)  # (R, S, k)
            cols += [torch.log1p(prof[:, s]) for s in range(S)]
            cols += [prof[:, s] / (mass[:, s] + 1.0) for s in range(S)]
            cols += [torch.log1p(mass[:, s]).expand(R, k) for s in range(S)]
            cols += [lp[:, s] - lp[:, 1] for s in range(S) if s != 1]  # scale 1: 30 days
            cols.append((prof[:, 1] > 0).to(prof.dtype))
        return torch.stack(cols, dim=-1)

    def _transformer_state(self, input_ids, attention_mask, prof, b_idx, r_pos, hour):
        """(R, C): GPT-2's hidden state at each readout (+ hour and profile embeddings)."""
        cfg = self.config
        emb = self.backbone.wte(input_ids + cfg.token_offset)  # (B, T, C)
        if cfg.readout == "end" and prof is not None:  # the design before readouts: profile on every token
            emb = emb + self.profile_proj(self._profile_features(prof)).unsqueeze(1)
        h = self.backbone(inputs_embeds=emb, attention_mask=attention_mask).last_hidden_state  # (B, T, C)
        z = h[b_idx, r_pos]  # (R, C)
        if cfg.readout == "event":
            z = z + self.hour_emb(hour)
            if prof is not None:
                z = z + self.profile_proj(self._profile_features(prof))
        return z


def _backbone_dict(gcfg: GPT2Config) -> dict:
    d = gcfg.to_dict()
    for key in ("transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype"):
        d.pop(key, None)
    return d


def set_dropout(backbone: GPT2Model, p: float) -> None:
    """The residual and embedding dropout of a loaded GPT-2 backbone, in its config and its
    modules (``GPT2Model.drop``, each block's ``attn.resid_dropout`` and ``mlp.dropout``; attention
    dropout stays the backbone's)."""
    backbone.config.resid_pdrop = backbone.config.embd_pdrop = p
    backbone.drop.p = p
    for block in backbone.h:
        block.attn.resid_dropout.p = p
        block.mlp.dropout.p = p


def load_init(init_from, encoder: Encoder | None = None):
    """The GPT-2 backbone of ``init_from``: a directory of ``interest-stream pretrain`` (with each
    token's embedding carried over to ``encoder``'s, :func:`models.pretrain.transfer_backbone`) or a
    local GPT-2 directory; a ValueError naming what is wrong with the directory otherwise. Without
    ``encoder`` it only reads it: ``train`` checks ``--init-from`` so before it reads the log (a
    mistake was found minutes later, once the log was read)."""
    from safetensors import SafetensorError

    from models.pretrain import BACKBONE_DIR, is_pretrain_dir, load_gpt2, read_encoding, transfer_backbone

    if not is_pretrain_dir(init_from) and (Path(init_from) / CHECKPOINT_CARD_FILE).exists():
        # its config.json is not a GPT-2 config: transformers would build a default GPT-2 (124M) from it
        raise ValueError(f"{init_from}: a checkpoint of `interest-stream train`, not an `interest-stream pretrain` "
                         "directory or a GPT-2 directory")
    try:
        if not is_pretrain_dir(init_from):
            return load_gpt2(init_from)
        if encoder is not None:
            return transfer_backbone(init_from, encoder)
        backbone = load_gpt2(Path(init_from) / BACKBONE_DIR)  # in transfer_backbone's order
        read_encoding(init_from)
        return backbone
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if is_pretrain_dir(init_from):
            raise ValueError(f"{init_from}: cannot read this `interest-stream pretrain` directory ({first})") from None
        raise ValueError(f"{init_from}: neither an `interest-stream pretrain` directory nor a GPT-2 directory "
                         f"({first})") from None


def too_short(backbone, max_len: int, init_from) -> str | None:
    """Why ``backbone`` (of ``init_from``) cannot read sequences of ``max_len`` tokens; None when it can."""
    n = backbone.config.n_positions
    if n >= max_len:
        return None
    return (f"{init_from}: its backbone has n_positions {n}, fewer than the encoding's max_len {max_len}; give "
            f"--set max_len={n} (or less) or another backbone")


def build_model(encoder: Encoder, init_from: str | None = None, **overrides) -> InterestModel:
    """A fresh model for ``encoder``. ``init_from``: a directory of ``interest-stream pretrain``
    (its backbone, with each token's embedding carried over by meaning, :mod:`models.pretrain`) or a
    local pretrained GPT-2 directory (its vocabulary extended by the behaviour tokens, ids shifted
    past the pretrained ones)."""
    unknown = set(overrides) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise ValueError(f"unknown model config keys: {sorted(unknown)}")
    cfg = ModelConfig(
        vocab_size=encoder.vocab_size,
        k=encoder.k,
        category_offset=encoder.category_offset,
        max_len=encoder.max_len,
        hour_offset=encoder.hour_offset if encoder.hour_token else -1,
        profile_scales=len(encoder.profile_scales),
        **{"query_offset": encoder.query_offset if encoder.vocab_size > encoder.query_offset else -1, **overrides},
    )
    if cfg.readout == "event" and not encoder.hour_token:
        raise ValueError("readout='event' needs an encoding with the hour token (spec version >= 2)")
    if init_from is None:
        return InterestModel(cfg)
    from models.pretrain import is_pretrain_dir

    backbone = load_init(init_from, encoder)
    if not is_pretrain_dir(init_from):
        old = backbone.config.vocab_size
        backbone.resize_token_embeddings(old + encoder.vocab_size)
        cfg.token_offset = old
    if short := too_short(backbone, encoder.max_len, init_from):
        raise ValueError(short)
    cfg.init_from = str(init_from)
    cfg.n_layer, cfg.n_head, cfg.n_embd = (
        backbone.config.n_layer, backbone.config.n_head, backbone.config.n_embd,
    )  # the sizes are the backbone's (the CLI refuses others)
    if "dropout" in overrides:  # the backbone's residual and embedding dropout, as a fresh one's
        set_dropout(backbone, cfg.dropout)
    else:  # config.json says what it trains with
        cfg.dropout = backbone.config.resid_pdrop
    cfg.backbone = _backbone_dict(backbone.config)
    return InterestModel(cfg, backbone=backbone)


# --- checkpoint directory -----------------------------------------------------------------
def save_checkpoint(model: InterestModel, encoder: Encoder, card: dict, out_dir) -> None:
    """Write config.json, model.safetensors, tokenizer.json, encoding.json, model_card.json."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the card goes first and comes back last: a run stopped in between (a Ctrl-C) over an
    # earlier checkpoint left that one's card beside the new weights, a mix that evaluate and
    # export took as whole; without a card the directory is no checkpoint (load_checkpoint)
    (out / CHECKPOINT_CARD_FILE).unlink(missing_ok=True)
    card = dict(card)
    card.setdefault("categories", list(encoder.categories))
    card["encoding"] = ENCODING_FILE  # the full spec (tokenizer embedded) lives beside the card
    text = json_text(card, CHECKPOINT_CARD_FILE)
    with writing(out / WEIGHTS_FILE):
        (out / CONFIG_FILE).write_text(json.dumps({"model": asdict(model.config)}, indent=1))
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(out / WEIGHTS_FILE))
        (out / TOKENIZER_FILE).write_text(encoder.tokenizer_json)
        encoder.save(out / ENCODING_FILE)
        (out / CHECKPOINT_CARD_FILE).write_text(text)


class WriteError(ValueError):
    """A file of a checkpoint or a pretrain directory could not be written (a full disk, a file
    system gone read-only): one line naming it, where it was a traceback after the training."""


@contextmanager
def writing(path, torch_save: bool = False):
    """Writes under way: their OSError (and safetensors' own error, which names no file; with
    ``torch_save``, torch.save's RuntimeError) become a :class:`WriteError` naming the file."""
    from safetensors import SafetensorError

    errors = (OSError, SafetensorError, RuntimeError) if torch_save else (OSError, SafetensorError)
    try:
        yield
    except errors as exc:
        reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else
                  (str(exc).strip().splitlines() or [type(exc).__name__])[0])
        raise WriteError(f"{getattr(exc, 'filename', None) or path}: cannot write: {reason}") from None


def json_text(obj, name: str, **kw) -> str:
    """``obj`` as the JSON text of the file ``name`` (indented); ValueError naming the file and the
    first key whose number is NaN or infinite: JSON has no such numbers, and the worker refuses a
    model.json that holds one (``json.dumps`` would write ``NaN`` without a word)."""
    try:
        return json.dumps(obj, indent=1, allow_nan=False, **kw)
    except ValueError:
        def where(x, at):
            if isinstance(x, float) and not math.isfinite(x):
                return at or "it"
            items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, (list, tuple)) else ()
            return next((w for k, v in items if (w := where(v, f"{at}.{k}" if at else str(k)))), None)

        raise ValueError(f"{name}: {where(obj, '')} is not a finite number (JSON has no NaN or infinity)") from None


def _json_object(path: Path) -> dict:
    """A checkpoint's JSON file that must hold an object; ValueError naming the file."""
    try:
        value = json.loads(path.read_text())
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise ValueError(f"{path.name} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path.name} is not a JSON object: {json.dumps(value)[:60]}")
    return value


def _object_of(value, types) -> bool:
    """A JSON object whose values are all of ``types`` (true and false are no numbers)."""
    return isinstance(value, dict) and all(isinstance(v, types) and not isinstance(v, bool) for v in value.values())


def check_card(card: dict) -> dict:
    """The checkpoint's model card as evaluate, evaluate-rerank and export read it: each field they
    read, when present, of the type ``train`` writes (``{}`` passes: the card of a hand-made
    checkpoint; the split, which only the evaluations need whole, is :func:`models.evaluate.time_split`'s).
    Raises ValueError naming the field. Export copies ``window`` and ``category_prior`` into model.json,
    whose ``window`` the worker refuses unless it is null or an object of integers, and whose
    ``category_prior`` it refuses unless :func:`interest_core.rerank.is_prior`."""
    def bad(key, want):
        raise ValueError(f"{CHECKPOINT_CARD_FILE}: {key} must be {want}, got {json.dumps(card[key])[:60]}")

    for key, kind in (("split", dict), ("training", dict), ("metrics", dict), ("history", list)):
        if key in card and not isinstance(card[key], kind):
            bad(key, "an object" if kind is dict else "an array")
    if card.get("window") is not None and not _object_of(card["window"], int):
        bad("window", "null or an object of integers (horizon_s, max_events, profile_retention_s)")
    if not is_prior(card.get("category_prior")):
        bad("category_prior", PRIOR_SHAPE)
    threads = card.get("training", {}).get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"{CHECKPOINT_CARD_FILE}: training.threads must be an integer >= 1, got "
                         f"{json.dumps(threads)[:60]}")
    if not isinstance(card.get("metrics", {}).get("selection") or {}, dict):
        raise ValueError(f"{CHECKPOINT_CARD_FILE}: metrics.selection must be an object")
    return card


def load_checkpoint(ckpt_dir) -> tuple[InterestModel, Encoder, dict]:
    """Rebuild (model in eval mode, encoder, card) from a checkpoint directory alone."""
    from safetensors.torch import load_file

    from models.pretrain import PRETRAIN_FILE

    d = Path(ckpt_dir)
    if not (d / CONFIG_FILE).exists() and (d / PRETRAIN_FILE).exists():
        raise FileNotFoundError(f"{d}: an `interest-stream pretrain` directory, not a checkpoint of `train` "
                                f"(`train --init-from {d}` fine-tunes it)")
    for name in (CONFIG_FILE, WEIGHTS_FILE, ENCODING_FILE, CHECKPOINT_CARD_FILE):
        if not (d / name).exists():
            raise FileNotFoundError(f"{d}: not a checkpoint directory (missing {name})")
    card = check_card(_json_object(d / CHECKPOINT_CARD_FILE))  # before the weights: it is the cheap one
    cfg = ModelConfig.from_dict(_json_object(d / CONFIG_FILE)["model"])
    model = InterestModel(cfg)
    # files of two checkpoints: export failed deep in torch.onnx (11 lines, none naming the cause),
    # or named the first line of load_state_dict's error alone
    try:
        model.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
    except RuntimeError as exc:  # "Error(s) in loading state_dict for InterestModel:", then each mismatch
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = "; ".join(lines[1:3]) or lines[0]
        raise ValueError(f"{d}: {WEIGHTS_FILE} does not fit {CONFIG_FILE}: {why}") from None
    model.eval()
    encoder = Encoder.load(d / ENCODING_FILE)
    sizes = ("vocab_size", "k", "category_offset", "max_len")
    if any(getattr(cfg, s) != getattr(encoder, s) for s in sizes):
        theirs, ours = (", ".join(f"{s} {getattr(o, s)}" for s in sizes) for o in (encoder, cfg))
        raise ValueError(f"{d}: {ENCODING_FILE} ({theirs}) is not the encoding {CONFIG_FILE} was trained with "
                         f"({ours}): files of different checkpoints")
    return model, encoder, card


# --- training -----------------------------------------------------------------------------
@dataclass
class TrainConfig:
    epochs: int = 8  # passes over the training sequences (early stopping usually ends sooner)
    batch_size: int = 64  # sequences per step; dense training supervises every event of each
    lr: float = 2e-3  # peak; small models tolerate nanoGPT's shakespeare-char 1e-3..2e-3
    min_lr: float = 1e-4  # cosine floor (nanoGPT: ~lr/10)
    warmup_steps: int = 100
    weight_decay: float = 0.05  # only on matrices (nanoGPT's param groups)
    grad_clip: float = 1.0
    eval_every: int = 200  # steps between validation passes
    patience: int = 4  # validation passes without improvement before stopping
    max_steps: int = 1500  # hard cap; measured cost in docs/model.md, "Training cost"
    eval_samples: int = 4000  # validation samples scored at each validation pass (seeded subset)
    plain_steps: int = 1000  # steps of the plain path alone before the corrections (0: skip); ~5 ms each
    plain_lr: float = 3e-2  # a handful of scalars: a large step converges in a few hundred steps
    dense_weight: float = 1.0  # scales each earlier event's position weight (models.data, "Dense training")
    # > 0: the transformer also learns the target over this many target spans (models.data.scaled_targets;
    # 4: the next 40 ratings for the next 10, 0.25: the next basket for the next 4), through a head of
    # its own (ModelConfig.aux_head), its loss weighted by aux_weight
    aux_horizon: float = 0.0
    aux_weight: float = 0.5
    ema_decay: float = 0.0  # > 0: validation and the kept weights use an exponential moving average
    # of the weights (Polyak averaging over ~1 / (1 - decay) steps). Off by default: at 0.99 it
    # lowered MovieLens' validation KL (0.5788 against 0.5808) but not its test KL (ratio to
    # mixture 0.970 against 0.965), and left the Complete Journey where it was (bench/README.md)
    scale_corrections: int = 1  # 1: each correction's strength is chosen on validation (models.train.fit,
    # stage 3); they came out over-confident on MovieLens and the Complete Journey (bench/README.md)
    refit: int = 1  # 1: train the chosen model again on the training and validation periods
    # (models.train.fit, stage 5): over four test periods each, the Complete Journey's KL fell by
    # 0.0022 (interval 0.0016-0.0028) and MovieLens' did not move (bench/README.md)
    queries: str = "auto"  # whether the per-category network reads the window's searches through the
    # query map (ModelConfig.query_offset): "auto" chooses on validation (models.train.choose_query_map),
    # "on" and "off" (or 1 and 0) decide; off by itself when training saw no search (docs/model.md, "Searches")
    query_map_steps: int = 600  # the cap of each of the choice's two runs (on its own schedule): by
    # then it had decided on MovieLens (with the map, validation was best at step 200) and the simulator
    item_lift: int = 1  # 1: the items of the window add an item lift outside the graph, chosen on
    # validation and kept when it earns 0.1 % of the validation KL (models.train.fit, stage 6):
    # measured on MovieLens' four test periods in bench/README.md, "The items of a window"
    seed: int = 1337
    threads: int = 2  # torch CPU threads

    def __post_init__(self):
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be at least 0 and below 1 (0: off), got {self.ema_decay}")
        for name in ("scale_corrections", "refit", "item_lift"):
            if getattr(self, name) not in (0, 1):
                raise ValueError(f"{name} must be 0 (off) or 1 (on), got {getattr(self, name)}")
        self.queries = {0: "off", 1: "on", "0": "off", "1": "on"}.get(self.queries, self.queries)
        if self.queries not in ("auto", "on", "off"):
            raise ValueError(f"queries must be auto (chosen on validation), on or off, got {self.queries!r}")
        check_ranges(self, at_least={"epochs": 1, "batch_size": 1, "min_lr": 0.0, "warmup_steps": 0,
                                     "weight_decay": 0.0, "eval_every": 1, "patience": 1, "max_steps": 1,
                                     "eval_samples": 1, "plain_steps": 0, "query_map_steps": 1, "dense_weight": 0.0,
                                     "aux_horizon": 0.0, "aux_weight": 0.0, "threads": 1, "seed": 0},
                     above={"lr": 0.0, "grad_clip": 0.0, "plain_lr": 0.0},
                     at_most={"seed": MAX_SEED, "threads": MAX_THREADS})
        check_lr_floor(self, ("lr", "plain_lr"))


def collate(seqs, pad_id: int):
    """Right-pad token lists to the longest: (input_ids, attention_mask) LongTensors (B, T)."""
    from interest_core.encoding import pad_right

    ids, mask = pad_right(seqs, pad_id)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _length_grouped(seqs, batch_size: int, rng) -> np.ndarray:
    """A shuffled order whose consecutive batches hold sequences of similar length (less padding):
    shuffle, sort within chunks of 50 batches by length, then shuffle the batches."""
    perm = rng.permutation(len(seqs))
    chunk = 50 * batch_size
    batches = []
    for c in range(0, len(perm), chunk):
        part = perm[c : c + chunk]
        part = part[np.argsort([len(seqs[i]) for i in part], kind="stable")]
        batches.extend(part[b : b + batch_size] for b in range(0, len(part) - batch_size + 1, batch_size))
    order = rng.permutation(len(batches))
    return np.concatenate([batches[o] for o in order]) if batches else perm


def get_lr(step: int, cfg: TrainConfig, total_steps: int, peak: float | None = None) -> float:
    peak = cfg.lr if peak is None else peak
    # 1) linear warmup
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    # 2) past the end: the floor
    if step >= total_steps:
        return cfg.min_lr
    # 3) cosine decay from the peak to min_lr
    ratio = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - cfg.min_lr)


def get_batch(idx, seqs, profiles, targets, pad_id: int, dense=None, dense_weight: float = 1.0,
              aux_weight: float = 0.0):
    """One training batch of the sequences ``idx``: (input_ids, attention_mask, profile, targets,
    readouts or None). ``dense`` (:class:`models.data.DenseReadouts`) gives every sequence's
    earlier event readouts with their own profiles, targets and position weights; the sequence's
    own (last) readout weighs 1 and each earlier one ``dense_weight`` times its position weight."""
    ids, mask = collate([seqs[i] for i in idx], pad_id)
    if dense is None:
        return ids, mask, torch.from_numpy(profiles[idx]), torch.from_numpy(targets[idx]), None
    rows = [np.arange(dense.offsets[i], dense.offsets[i + 1]) for i in idx]
    batch = np.concatenate([np.full(len(r), b) for b, r in enumerate(rows)])
    rows = np.concatenate(rows)
    cut = dense.cut_row[rows]
    weight = np.where(dense.is_last[rows], 1.0, dense_weight * dense.weight[rows]).astype(np.float32)
    readouts = {"batch": torch.from_numpy(batch.astype(np.int64)), "pos": torch.from_numpy(dense.pos[rows]),
                "hour": torch.from_numpy(dense.hour[rows]), "weight": torch.from_numpy(weight)}
    if dense.aux_targets is not None:
        readouts["aux_targets"] = torch.from_numpy(dense.aux_targets[cut])
        readouts["aux_weight"] = torch.from_numpy((weight * aux_weight * dense.aux_ok[cut]).astype(np.float32))
    return ids, mask, torch.from_numpy(dense.profiles[cut]), torch.from_numpy(dense.targets[cut]), readouts


@torch.no_grad()
def predict(model: InterestModel, seqs, profiles: np.ndarray, pad_id: int, batch_size: int = 256) -> np.ndarray:
    """Probabilities (N, k) for token lists and their profile inputs (N, P), in order (batches
    sorted by length for speed)."""
    model.eval()
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.zeros((len(seqs), model.config.k), dtype=np.float32)
    for i in range(0, len(seqs), batch_size):
        idx = order[i : i + batch_size]
        ids, mask = collate([seqs[j] for j in idx], pad_id)
        probs, _ = model(ids, mask, torch.from_numpy(profiles[idx]))
        out[idx] = probs.numpy()
    return out


@torch.no_grad()
def evaluate_loss(model: InterestModel, seqs, profiles: np.ndarray, targets: np.ndarray, pad_id: int) -> dict:
    probs = predict(model, seqs, profiles, pad_id)
    p = np.maximum(probs, 1e-4)
    p = p / p.sum(1, keepdims=True)
    t = targets
    kl = np.where(t > 0, t * (np.log(np.maximum(t, 1e-12)) - np.log(p)), 0.0).sum(1).mean()
    mse = ((probs - t) ** 2).mean()
    return {"mse": float(mse), "kl": float(kl), "loss": float(mse if model.config.loss == "mse" else kl)}


def train_model(
    model: InterestModel,
    train_seqs,
    train_profiles: np.ndarray,
    train_targets: np.ndarray,
    val_seqs,
    val_profiles: np.ndarray,
    val_targets: np.ndarray,
    cfg: TrainConfig,
    pad_id: int,
    state_path=None,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    dense=None,
    params=None,
    max_steps: int | None = None,
    peak_lr: float | None = None,
    desc: str = "train",
    refit: tuple[int, int] | None = None,
) -> dict:
    """Train in place; leaves the best-on-validation weights in ``model``. Returns a summary with
    the logged ``history`` (one row per validation pass) and ``best_step``, the step of the weights
    kept. ``dense`` (:class:`models.data.DenseReadouts`) supervises every event of each training
    sequence (else its last readout only); ``params`` restricts what is trained (the plain path
    alone), with ``max_steps`` and ``peak_lr`` for that stage. ``state_path`` gets a resumable state
    after every validation pass; with ``resume`` training continues from it. ``stop_at`` ends the
    run after that step as an interruption would (tests of ``resume``).

    ``refit=(steps, schedule_steps)``: no validation (``val_*`` are ignored and may be None); the
    learning-rate schedule is that of a run of ``schedule_steps`` steps, training stops after
    ``steps`` of them, and the last weights are kept (:func:`models.train.fit`, stage 5: the
    selection run's best step and schedule, on more data)."""
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n = len(train_seqs)
    if refit is not None:
        val_seqs = None
        if n == 0:
            raise ValueError("need training samples to refit, got 0")
    elif n == 0 or len(val_seqs) == 0:
        raise ValueError(f"need training and validation samples, got {n} and {len(val_seqs)}")
    if refit is None and len(val_seqs) > cfg.eval_samples:
        pick = np.sort(np.random.default_rng(cfg.seed + 1).choice(len(val_seqs), cfg.eval_samples, replace=False))
        val_seqs, val_profiles, val_targets = [val_seqs[i] for i in pick], val_profiles[pick], val_targets[pick]
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)
    total_steps = min(cfg.max_steps if max_steps is None else max_steps, cfg.epochs * steps_per_epoch)
    end = total_steps
    if refit is not None:
        end, total_steps = refit

    trainable = list(model.parameters()) if params is None else list(params)
    wanted = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.99),
    )
    step, best, bad_evals, history, elapsed0 = 0, float("inf"), 0, [], 0.0
    best_state, best_step = None, 0
    # the moving average of every floating-point tensor of the state (the trained ones move)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()} \
        if cfg.ema_decay > 0 else None
    perm, pos = _length_grouped(train_seqs, bs, rng), 0
    running = None  # the training loss, averaged over the last steps (history, progress bar)
    if resume and state_path is not None and Path(state_path).exists():
        try:  # a state cut short (a run killed while saving one before it was saved whole) or not ours
            st = torch.load(state_path, weights_only=False)
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            step, best, bad_evals, history = st["step"], st["best"], st["bad_evals"], st["history"]
            best_state, elapsed0, best_step = st["best_state"], st["elapsed"], st.get("best_step", 0)
            ema = st.get("ema", ema)
            running = st.get("running")  # (a state saved before it was: starts again, as it did)
            rng.bit_generator.state = st["rng"]
            perm, pos = st["perm"], st["pos"]
            torch.set_rng_state(st["torch_rng"])
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:120]
            raise ValueError(f"{state_path} is not a readable training state ({type(exc).__name__}: {first}): "
                             "start the run again without --resume") from None
        print(f"resumed at step {step} (best val {best:.5f})")

    t0 = time.time() - elapsed0
    stop_reason = "max steps" if refit is None else "refit steps"
    if refit is None and bad_evals >= cfg.patience:  # resumed from the state of the pass that stopped early:
        stop_reason, end = "early stopping", step  # it went on for another pass (other weights, had it improved)
    bar = tqdm(total=end, initial=step, disable=not progress, desc=desc, unit="step")
    model.train()
    while step < end:
        # stop condition 1: step budget (loop guard); 2: early stopping (below)
        if pos + bs > len(perm):
            perm, pos = _length_grouped(train_seqs, bs, rng), 0
        idx = perm[pos : pos + bs]
        pos += bs
        ids, mask, prof, tgt, readouts = get_batch(idx, train_seqs, train_profiles, train_targets, pad_id,
                                                   dense, cfg.dense_weight, cfg.aux_weight)
        lr = get_lr(step, cfg, total_steps, peak_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        _, loss = model(ids, mask, prof, tgt, readouts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    if k in ema:
                        ema[k].lerp_(v, 1.0 - cfg.ema_decay)
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        if refit is None and (step % cfg.eval_every == 0 or step == total_steps):
            raw = None
            if ema is not None:  # validate (and keep) the averaged weights
                raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.load_state_dict({**raw, **ema})
            val = evaluate_loss(model, val_seqs, val_profiles, val_targets, pad_id)
            history.append({"step": step, "lr": lr, "train_loss": running, "val_loss": val["loss"],
                            "val_kl": val["kl"], "val_mse": val["mse"], "elapsed_s": time.time() - t0})
            bar.set_postfix(train=f"{running:.4f}", val=f"{val['loss']:.4f}", kl=f"{val['kl']:.4f}")
            if val["loss"] < best - 1e-7:
                best, bad_evals, best_step = val["loss"], 0, step
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_evals += 1
            if raw is not None:
                model.load_state_dict(raw)  # training goes on from the raw weights
            model.train()
            if state_path is not None:  # saved beside it, then moved over it: a kill mid-save leaves the last
                part = Path(f"{state_path}.part")  # one whole (--resume could not read a cut one)
                try:
                    with writing(state_path, torch_save=True):
                        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                    "best": best, "bad_evals": bad_evals, "history": history,
                                    "best_state": best_state, "best_step": best_step, "ema": ema,
                                    "elapsed": time.time() - t0, "rng": rng.bit_generator.state, "perm": perm,
                                    "pos": pos, "torch_rng": torch.get_rng_state(), "running": running}, part)
                        os.replace(part, state_path)
                except BaseException:
                    part.unlink(missing_ok=True)
                    raise
            if bad_evals >= cfg.patience:
                stop_reason = "early stopping"
                break
            if stop_at is not None and step >= stop_at:
                stop_reason = "interrupted"
                break
    bar.close()
    if refit is not None:
        best_step = step
        if ema is not None:  # the averaged weights, as a selection run would have kept them
            model.load_state_dict({**model.state_dict(), **ema})
    elif best_state is not None:
        model.load_state_dict(best_state)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return {"steps": step, "best_step": best_step, "best_val_loss": best, "history": history,
            "stop_reason": stop_reason, "train_seconds": time.time() - t0, "total_steps": total_steps}

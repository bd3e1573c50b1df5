"""The interest model (GPT-2 over behaviour tokens) and its training loop, top to bottom.

1. :class:`ModelConfig`: every size and setting, saved in the checkpoint's ``config.json``.
2. :class:`InterestModel`: a transformers ``GPT2Model`` backbone reads the token ids of
   :mod:`interest_core.encoding`; the interest head reads the LAST REAL position (sequences are RIGHT
   padded, so that index is ``attention_mask.sum(1) - 1``, the ``[END]`` token) and gives a softmax
   over the k categories. Beside the backbone, the head carries a tiny "shrinkage" path: the
   window's category counts (all, and recency-weighted by token distance from the end) mixed with
   a learned population prior, ``log(a_all*counts + a_recent*recent + beta*prior)``; the GPT-2
   logits are added to that. So the model can represent "history shrunk toward the prior" (the
   strongest baseline on real data) from the first step and learns corrections from the sequence.
   Its GPT-2 head starts at zero, so at initialisation the model IS that shrinkage estimate.
   With a profile (encoding spec 3), the user's long-term decayed category weights
   (:mod:`interest_core.window`) join the mix, one learned weight per scale, and a projection of the
   profile is added to every token embedding, so the transformer reads the sequence knowing the
   user's longer history: the window alone loses to a baseline that reads the whole history.
3. Checkpoint directory I/O: :func:`save_checkpoint` / :func:`load_checkpoint`.
4. The training loop (:func:`train_model`): AdamW, linear warmup then cosine decay, early stopping
   on validation loss, resumable, seeded.

``forward`` is traceable for ONNX export: no Python branches on tensor values, no ``.item()``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from transformers import GPT2Config, GPT2Model

from interest_core.encoding import Encoder

from interest_core.artifacts import (CHECKPOINT_CARD_FILE, CONFIG_FILE, ENCODING_FILE, TOKENIZER_FILE,  # noqa: F401
                                     TRAIN_STATE_FILE, WEIGHTS_FILE)


@dataclass
class ModelConfig:
    vocab_size: int  # behaviour tokens of the encoding (Encoder.vocab_size)
    k: int  # categories, the head's outputs (Encoder.categories)
    category_offset: int  # first category token id (Encoder.category_offset)
    max_len: int = 128  # tokens per sequence, = Encoder.max_len (GPT-2 n_positions)
    n_layer: int = 2  # small: ~0.1M backbone params train in minutes on 2 CPU cores
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0  # residual/embedding dropout; 0: samples are plenty, early stopping guards,
    # and CPU bernoulli costs ~30% of a step. Attention dropout is always 0 (~60% of a step).
    loss: str = "mse"  # "mse" over the k probabilities (the original design) or "kl"
    recency_tokens: float = 30.0  # initial decay length of the recent-counts path, tokens (~10 events)
    profile_scales: int = 0  # scales of the profile input (Encoder.profile_scales); 0: no profile input
    token_offset: int = 0  # behaviour id -> backbone id shift (= pretrained vocab with --init-from)
    init_from: str | None = None  # local pretrained GPT-2 directory this model started from
    backbone: dict = field(default_factory=dict)  # the GPT2Config used, so loading needs no source dir

    def __post_init__(self):
        if self.loss not in ("mse", "kl"):
            raise ValueError(f"loss must be 'mse' or 'kl', got {self.loss!r}")


class InterestModel(nn.Module):
    """GPT-2 backbone + interest head on the last real position of RIGHT-padded sequences.

    ``forward(input_ids (B,T) long, attention_mask (B,T) long, profile (B, S*k) float | None,
    targets (B,k) float | None)`` returns ``(probs (B,k) softmax, loss or None)``; ``profile``
    is ignored by a model without one (``config.profile_scales == 0``).
    """

    def __init__(self, config: ModelConfig, backbone: GPT2Model | None = None):
        super().__init__()
        self.config = config
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
                    attn_pdrop=0.0,
                )
                config.backbone = _backbone_dict(gcfg)
            backbone = GPT2Model(gcfg)
        self.backbone = backbone
        n_embd = backbone.config.n_embd
        self.head = nn.Linear(n_embd, config.k)
        nn.init.zeros_(self.head.weight)  # start as the shrinkage estimate (module doc)
        nn.init.zeros_(self.head.bias)
        self.prior_logits = nn.Parameter(torch.zeros(config.k))  # set by init_prior
        self.log_a_all = nn.Parameter(torch.tensor(0.0))
        self.log_a_recent = nn.Parameter(torch.tensor(0.0))
        self.log_beta = nn.Parameter(torch.tensor(math.log(2.0)))  # prior worth ~2 events at start
        self.log_tau = nn.Parameter(torch.tensor(math.log(config.recency_tokens)))
        S = config.profile_scales
        if S:
            self.log_a_profile = nn.Parameter(torch.full((S,), math.log(0.5)))
            # per scale: the k shares and log(1 + mass) -> an embedding added to every token
            self.profile_proj = nn.Linear(S * (config.k + 1), n_embd)
            nn.init.zeros_(self.profile_proj.weight)
            nn.init.zeros_(self.profile_proj.bias)
        self.register_buffer("cat_ids", torch.arange(config.k) + config.category_offset, persistent=False)

    @torch.no_grad()
    def init_prior(self, mean_target: np.ndarray) -> None:
        """Start the prior at the training targets' mean distribution."""
        p = torch.as_tensor(mean_target, dtype=torch.float32).clamp_min(1e-6)
        self.prior_logits.copy_(torch.log(p / p.sum()))

    def forward(self, input_ids, attention_mask, profile=None, targets=None):
        S, k = self.config.profile_scales, self.config.k
        if S:
            prof = profile.reshape(-1, S, k).clamp_min(0.0)  # (B, S, k)
            mass = prof.sum(-1, keepdim=True)  # (B, S, 1)
            feats = torch.cat([prof / (mass + 1.0), torch.log1p(mass)], dim=-1).reshape(-1, S * (k + 1))
            emb = self.backbone.wte(input_ids + self.config.token_offset)  # (B, T, C)
            emb = emb + self.profile_proj(feats).unsqueeze(1)
            h = self.backbone(inputs_embeds=emb, attention_mask=attention_mask).last_hidden_state
        else:
            h = self.backbone(
                input_ids=input_ids + self.config.token_offset, attention_mask=attention_mask
            ).last_hidden_state  # (B, T, C)
        mask = attention_mask.to(h.dtype)  # (B, T)
        pos = torch.cumsum(attention_mask, dim=1) - 1  # (B, T) index of each real token
        last = attention_mask.sum(dim=1, keepdim=True) - 1  # (B, 1) last real position (right padding)
        h_last = h.gather(1, last.unsqueeze(-1).expand(-1, 1, h.size(-1))).squeeze(1)  # (B, C)

        is_cat = (input_ids.unsqueeze(-1) == self.cat_ids).to(h.dtype) * mask.unsqueeze(-1)  # (B, T, k)
        dist = (last - pos).clamp_min(0).to(h.dtype)  # (B, T) tokens before the end
        recent_w = torch.exp(-dist / torch.exp(self.log_tau))  # (B, T)
        counts = is_cat.sum(dim=1)  # (B, k)
        recent = (is_cat * recent_w.unsqueeze(-1)).sum(dim=1)  # (B, k)
        prior = torch.softmax(self.prior_logits, dim=-1)  # (k,)
        mix = torch.exp(self.log_a_all) * counts + torch.exp(self.log_a_recent) * recent
        mix = mix + torch.exp(self.log_beta) * prior
        if S:
            mix = mix + (torch.exp(self.log_a_profile)[None, :, None] * prof).sum(1)
        logits = torch.log(mix) + self.head(h_last)  # (B, k)
        probs = torch.softmax(logits, dim=-1)

        loss = None
        if targets is not None:
            if self.config.loss == "kl":
                logp = torch.log_softmax(logits, dim=-1)
                t = targets.clamp_min(1e-12)
                loss = (targets * (torch.log(t) - logp)).sum(-1).mean()
            else:
                loss = ((probs - targets) ** 2).mean()
        return probs, loss


def _backbone_dict(gcfg: GPT2Config) -> dict:
    d = gcfg.to_dict()
    for key in ("transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype"):
        d.pop(key, None)
    return d


def build_model(encoder: Encoder, init_from: str | None = None, **overrides) -> InterestModel:
    """A fresh model for ``encoder``; with ``init_from`` a local pretrained GPT-2 directory whose
    vocabulary is extended by the behaviour tokens (ids shifted past the pretrained ones)."""
    unknown = set(overrides) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise ValueError(f"unknown model config keys: {sorted(unknown)}")
    cfg = ModelConfig(
        vocab_size=encoder.vocab_size,
        k=encoder.k,
        category_offset=encoder.category_offset,
        max_len=encoder.max_len,
        profile_scales=len(encoder.profile_scales),
        **overrides,
    )
    if init_from is None:
        return InterestModel(cfg)
    backbone = GPT2Model.from_pretrained(str(init_from), local_files_only=True)
    if backbone.config.n_positions < encoder.max_len:
        raise ValueError(
            f"{init_from}: n_positions {backbone.config.n_positions} < encoding max_len {encoder.max_len}"
        )
    old = backbone.config.vocab_size
    backbone.resize_token_embeddings(old + encoder.vocab_size)
    cfg.token_offset = old
    cfg.init_from = str(init_from)
    cfg.n_layer, cfg.n_head, cfg.n_embd = (
        backbone.config.n_layer, backbone.config.n_head, backbone.config.n_embd,
    )
    cfg.backbone = _backbone_dict(backbone.config)
    return InterestModel(cfg, backbone=backbone)


# --- checkpoint directory -----------------------------------------------------------------
def save_checkpoint(model: InterestModel, encoder: Encoder, card: dict, out_dir) -> None:
    """Write config.json, model.safetensors, tokenizer.json, encoding.json, model_card.json."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps({"model": asdict(model.config)}, indent=1))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    (out / TOKENIZER_FILE).write_text(encoder.tokenizer_json)
    encoder.save(out / ENCODING_FILE)
    card = dict(card)
    card.setdefault("categories", list(encoder.categories))
    card["encoding"] = ENCODING_FILE  # the full spec (tokenizer embedded) lives beside the card
    (out / CHECKPOINT_CARD_FILE).write_text(json.dumps(card, indent=1))


def load_checkpoint(ckpt_dir) -> tuple[InterestModel, Encoder, dict]:
    """Rebuild (model in eval mode, encoder, card) from a checkpoint directory alone."""
    from safetensors.torch import load_file

    d = Path(ckpt_dir)
    for name in (CONFIG_FILE, WEIGHTS_FILE, ENCODING_FILE, CHECKPOINT_CARD_FILE):
        if not (d / name).exists():
            raise FileNotFoundError(f"{d}: not a checkpoint directory (missing {name})")
    cfg = ModelConfig(**json.loads((d / CONFIG_FILE).read_text())["model"])
    model = InterestModel(cfg)
    model.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
    model.eval()
    encoder = Encoder.load(d / ENCODING_FILE)
    card = json.loads((d / CHECKPOINT_CARD_FILE).read_text())
    return model, encoder, card


# --- training -----------------------------------------------------------------------------
@dataclass
class TrainConfig:
    epochs: int = 8  # passes over the training samples (early stopping usually ends sooner)
    batch_size: int = 64
    lr: float = 2e-3  # peak; small models tolerate nanoGPT's shakespeare-char 1e-3..2e-3
    min_lr: float = 1e-4  # cosine floor (nanoGPT: ~lr/10)
    warmup_steps: int = 100
    weight_decay: float = 0.01  # only on matrices (nanoGPT's param groups)
    grad_clip: float = 1.0
    eval_every: int = 250  # steps between validation passes
    patience: int = 5  # validation passes without improvement before stopping
    max_steps: int = 2500  # hard cap; keeps a 5,000-user run under 15 min on 2 cores (~0.2 s/step)
    eval_samples: int = 2000  # validation samples scored at each validation pass (seeded subset)
    seed: int = 1337
    threads: int = 2  # torch CPU threads


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


def get_lr(step: int, cfg: TrainConfig, total_steps: int) -> float:
    # 1) linear warmup
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    # 2) past the end: the floor
    if step >= total_steps:
        return cfg.min_lr
    # 3) cosine decay from lr to min_lr
    ratio = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


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
) -> dict:
    """Train in place; leaves the best-on-validation weights in ``model``. Returns a summary with
    the logged ``history`` (one row per validation pass). ``state_path`` gets a resumable state
    after every validation pass; with ``resume`` training continues from it. ``stop_at`` ends the
    run after that step as an interruption would (tests of ``resume``)."""
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n = len(train_seqs)
    if n == 0 or len(val_seqs) == 0:
        raise ValueError(f"need training and validation samples, got {n} and {len(val_seqs)}")
    if len(val_seqs) > cfg.eval_samples:
        pick = np.sort(np.random.default_rng(cfg.seed + 1).choice(len(val_seqs), cfg.eval_samples, replace=False))
        val_seqs, val_profiles, val_targets = [val_seqs[i] for i in pick], val_profiles[pick], val_targets[pick]
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)
    total_steps = min(cfg.max_steps, cfg.epochs * steps_per_epoch)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.99),
    )
    step, best, bad_evals, history, elapsed0 = 0, float("inf"), 0, [], 0.0
    best_state = None
    perm, pos = _length_grouped(train_seqs, bs, rng), 0
    if resume and state_path is not None and Path(state_path).exists():
        st = torch.load(state_path, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        step, best, bad_evals, history = st["step"], st["best"], st["bad_evals"], st["history"]
        best_state, elapsed0 = st["best_state"], st["elapsed"]
        rng.bit_generator.state = st["rng"]
        perm, pos = st["perm"], st["pos"]
        torch.set_rng_state(st["torch_rng"])
        print(f"resumed at step {step} (best val {best:.5f})")

    t0 = time.time() - elapsed0
    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc="train", unit="step")
    running, stop_reason = None, "max steps"
    model.train()
    while step < total_steps:
        # stop condition 1: step budget (loop guard); 2: early stopping (below)
        if pos + bs > len(perm):
            perm, pos = _length_grouped(train_seqs, bs, rng), 0
        idx = perm[pos : pos + bs]
        pos += bs
        ids, mask = collate([train_seqs[i] for i in idx], pad_id)
        tgt = torch.from_numpy(train_targets[idx])
        lr = get_lr(step, cfg, total_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        _, loss = model(ids, mask, torch.from_numpy(train_profiles[idx]), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        if step % cfg.eval_every == 0 or step == total_steps:
            val = evaluate_loss(model, val_seqs, val_profiles, val_targets, pad_id)
            model.train()
            history.append({"step": step, "lr": lr, "train_loss": running, "val_loss": val["loss"],
                            "val_kl": val["kl"], "val_mse": val["mse"], "elapsed_s": time.time() - t0})
            bar.set_postfix(train=f"{running:.4f}", val=f"{val['loss']:.4f}", kl=f"{val['kl']:.4f}")
            if val["loss"] < best - 1e-7:
                best, bad_evals = val["loss"], 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_evals += 1
            if state_path is not None:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                            "best": best, "bad_evals": bad_evals, "history": history,
                            "best_state": best_state, "elapsed": time.time() - t0,
                            "rng": rng.bit_generator.state, "perm": perm, "pos": pos, "torch_rng": torch.get_rng_state()},
                           state_path)
            if bad_evals >= cfg.patience:
                stop_reason = "early stopping"
                break
            if stop_at is not None and step >= stop_at:
                stop_reason = "interrupted"
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"steps": step, "best_val_loss": best, "history": history, "stop_reason": stop_reason,
            "train_seconds": time.time() - t0, "total_steps": total_steps}

"""The ranges of the training configs' numbers, checked when a config is made.

A bad ``--set`` (``batch_size=0``, ``dropout=2``, ``lr=nan``) is then a one-line error before any
data is read, instead of a traceback, or an error minutes later, or a run that trains on nonsense.
Pure: raises ``ValueError`` naming the key, which the CLI prints as a usage error.
"""

from __future__ import annotations

import math
from dataclasses import fields

# The longest input window training can build: its reach in ms is subtracted from ts in numpy int64
# and its event positions are numpy int32 (models.data: a larger one was an OverflowError). The
# worker keeps any window (Python integers), so every card's window within these is servable.
MAX_HORIZON_S = (2**63 - 1) // 1000
MAX_EVENTS = 2**31 - 1
# The most tokens a window may hold (train's and pretrain's max_len, GPT-2's n_positions): each
# attention layer builds a max_len x max_len causal mask (transformers' GPT2Attention, a bool
# tensor), 64 MiB a layer at 8192, 64 times the default of 128; max_len=100000000 failed to
# allocate it, after the log was read.
MAX_LEN = 8192
# The largest backbone: its blocks hold about 12 x n_layer x n_embd^2 weights (attention 4 n_embd^2,
# the MLP 8 n_embd^2), and training keeps each four times (weights, gradients, Adam's two moments),
# 16 GB of float32 at a billion. `--set n_embd=1048576` asked for 13 TB at the backbone's start,
# a traceback after the log was read. The default (2 layers of 48) holds 55,000.
MAX_BACKBONE_WEIGHTS = 10**9
# The per-category network's widths (it runs once per category and readout): far past any use
MAX_CAT_WIDTH = 4096
# torch.set_num_threads takes a C int: threads=3000000000 was "Overflow when unpacking long", after
# the log was read. 256 as the worker's INTEREST_ORT_THREADS, far past the machines this runs on
MAX_THREADS = 256


def check_ranges(cfg, at_least: dict | None = None, above: dict | None = None,
                 below: dict | None = None, at_most: dict | None = None) -> None:
    """Every float field of the dataclass ``cfg`` is finite; ``at_least[name]`` <= value,
    ``above[name]`` < value, value < ``below[name]`` and value <= ``at_most[name]``."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value}")
    for name, low in (at_least or {}).items():
        if getattr(cfg, name) < low:
            raise ValueError(f"{name} must be >= {low}, got {getattr(cfg, name)}")
    for name, low in (above or {}).items():
        if getattr(cfg, name) <= low:
            raise ValueError(f"{name} must be > {low}, got {getattr(cfg, name)}")
    for name, high in (below or {}).items():
        if getattr(cfg, name) >= high:
            raise ValueError(f"{name} must be < {high}, got {getattr(cfg, name)}")
    for name, high in (at_most or {}).items():
        if getattr(cfg, name) > high:
            raise ValueError(f"{name} must be <= {high}, got {getattr(cfg, name)}")


def check_lr_floor(cfg, peaks: tuple[str, ...] = ("lr",)) -> None:
    """The cosine schedule decays each peak learning rate to ``min_lr``: a floor above a peak
    would make it rise instead."""
    for peak in peaks:
        if cfg.min_lr > getattr(cfg, peak):
            raise ValueError(f"min_lr must be <= {peak} (the learning rate decays from {peak} to min_lr), "
                             f"got {cfg.min_lr} > {getattr(cfg, peak)}")


def check_backbone(cfg) -> None:
    """The GPT-2 backbone's size of a config that has one (``ModelConfig``, ``PretrainConfig``):
    at least one layer, head and width, dropout in [0, 1), and a width its attention can split
    evenly over the heads."""
    check_ranges(cfg, at_least={"n_layer": 1, "n_head": 1, "n_embd": 1, "dropout": 0.0}, below={"dropout": 1.0})
    if cfg.n_embd % cfg.n_head:
        raise ValueError(f"n_embd ({cfg.n_embd}) must be a multiple of n_head ({cfg.n_head})")
    weights = 12 * cfg.n_layer * cfg.n_embd ** 2
    if weights > MAX_BACKBONE_WEIGHTS:
        raise ValueError(f"n_layer {cfg.n_layer} and n_embd {cfg.n_embd} make a backbone of about {weights:,} "
                         f"weights (12 x n_layer x n_embd^2), more than the {MAX_BACKBONE_WEIGHTS:,} training can hold")

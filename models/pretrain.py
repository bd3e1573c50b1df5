"""Self-supervised pretraining of the backbone (filled in below)."""
from __future__ import annotations

from pathlib import Path

PRETRAIN_FILE = "pretrain.json"  # marks a directory written by ``interest-stream pretrain``


def is_pretrain_dir(path) -> bool:
    return (Path(path) / PRETRAIN_FILE).exists()


def transfer_backbone(path, encoder):
    raise NotImplementedError

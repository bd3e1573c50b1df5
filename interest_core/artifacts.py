"""The files a trained model travels in, and the content hash that names an exported pair.

A training run writes a checkpoint directory (:data:`CHECKPOINT_FILES`); export turns it into the
pair the worker serves, ``model.onnx`` + ``model.json`` (CONTRACT.md, "Model artifacts"). Export
writes and the worker checks the same names, inputs and version through this module.
"""
from __future__ import annotations

import hashlib

import orjson

# -- the checkpoint directory (models.model.save_checkpoint / load_checkpoint) -----------------
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
ENCODING_FILE = "encoding.json"
CHECKPOINT_CARD_FILE = "model_card.json"  # the training run's card: metrics, split, history
TRAIN_STATE_FILE = "train_state.pt"  # for --resume; not needed to load the model

# -- the exported pair (export writes, stream_app.model_runtime reads) --------------------------
MODEL_FILE = "model.onnx"
CARD_FILE = "model.json"  # the serving card: categories, encoding spec, version, metrics
INPUT_NAMES = ("input_ids", "attention_mask")  # forward()'s order; then PROFILE_INPUT if the spec has one
PROFILE_INPUT = "profile"  # float32 (batch, S*k), graphs of encoding specs with the long-term profile
OUTPUT_NAME = "probs"


def content_version(graph_bytes: bytes, spec: dict) -> str:
    """A pair's ``version``: sha256 over the graph bytes and the canonical JSON of the encoding
    spec, 16 hex digits (the export writes it; the loader recomputes it)."""
    h = hashlib.sha256()
    h.update(graph_bytes)
    h.update(b"\0")
    h.update(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()[:16]

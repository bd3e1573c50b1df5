"""The training configs' ranges: every bad number is a ValueError naming the key (models.config_checks)."""

import pytest

from models.data import DataConfig
from models.model import ModelConfig, TrainConfig
from models.pretrain import PretrainConfig


def model(**kw):
    return ModelConfig(vocab_size=10, k=3, category_offset=4, **kw)


@pytest.mark.parametrize("make, kw, message", [
    (TrainConfig, {"batch_size": 0}, "batch_size must be >= 1, got 0"),
    (TrainConfig, {"epochs": 0}, "epochs must be >= 1, got 0"),
    (TrainConfig, {"max_steps": -5}, "max_steps must be >= 1, got -5"),
    (TrainConfig, {"plain_steps": -1}, "plain_steps must be >= 0, got -1"),
    (TrainConfig, {"query_map_steps": 0}, "query_map_steps must be >= 1, got 0"),
    (TrainConfig, {"queries": "maybe"}, "queries must be auto (chosen on validation), on or off, got 'maybe'"),
    (TrainConfig, {"threads": 0}, "threads must be >= 1, got 0"),
    (TrainConfig, {"lr": 0.0}, "lr must be > 0.0, got 0.0"),
    (TrainConfig, {"lr": float("nan")}, "lr must be a finite number, got nan"),
    (TrainConfig, {"grad_clip": float("inf")}, "grad_clip must be a finite number, got inf"),
    (TrainConfig, {"weight_decay": -0.1}, "weight_decay must be >= 0.0, got -0.1"),
    (model, {"n_head": 0}, "n_head must be >= 1, got 0"),
    (model, {"n_layer": 0}, "n_layer must be >= 1, got 0"),
    (model, {"dropout": 1.0}, "dropout must be < 1.0, got 1.0"),
    (model, {"dropout": -0.1}, "dropout must be >= 0.0, got -0.1"),
    (model, {"n_head": 5}, "n_embd (48) must be a multiple of n_head (5)"),
    (model, {"recency_tokens": 0.0}, "recency_tokens must be > 0.0, got 0.0"),
    (DataConfig, {"target_k": 0}, "target_k must be >= 1, got 0"),
    (DataConfig, {"target_window_s": 0}, "target_window_s must be >= 1, got 0"),
    (DataConfig, {"browse_weight": float("nan")}, "browse_weight must be a finite number, got nan"),
    (DataConfig, {"max_len": 0}, "max_len must be >= 1, got 0"),
    (PretrainConfig, {"batch_size": 0}, "batch_size must be >= 1, got 0"),
    (PretrainConfig, {"val_frac": 1.0}, "val_frac must be < 1.0, got 1.0"),
    (PretrainConfig, {"val_frac": 0.0}, "val_frac must be > 0.0, got 0.0"),
    (PretrainConfig, {"n_embd": 50, "n_head": 4}, "n_embd (50) must be a multiple of n_head (4)"),
    # 13 TB asked at the backbone's start, after the log was read: a traceback
    (model, {"n_embd": 1048576, "n_head": 1}, "n_layer 2 and n_embd 1048576 make a backbone of about "
     "26,388,279,066,624 weights (12 x n_layer x n_embd^2), more than the 1,000,000,000 training can hold"),
    (PretrainConfig, {"n_layer": 4, "n_embd": 4608, "n_head": 1}, "n_layer 4 and n_embd 4608 make a backbone of "
     "about 1,019,215,872 weights (12 x n_layer x n_embd^2), more than the 1,000,000,000 training can hold"),
    (model, {"cat_hidden": 4097}, "cat_hidden must be <= 4096, got 4097"),
    (model, {"cat_dim": 100000}, "cat_dim must be <= 4096, got 100000"),
    # 26 GB asked at the model's start, after the log was read: a traceback
    (model, {"cat_context": 100000000}, "cat_context must be <= 4096, got 100000000"),
    # torch.set_num_threads' "Overflow when unpacking long", after the log was read
    (TrainConfig, {"threads": 3000000000}, "threads must be <= 256, got 3000000000"),
    (PretrainConfig, {"threads": 257}, "threads must be <= 256, got 257"),
    # trained and exported, then refused by the worker (model.json's window 1e+20, not an integer)
    (DataConfig, {"profile_retention_s": 10**20},
     "profile_retention_s must be <= 9223372036854775, got 100000000000000000000"),
])
def test_a_bad_number_names_its_key(make, kw, message):
    with pytest.raises(ValueError) as err:
        make(**kw)
    assert str(err.value) == message


def test_the_defaults_and_the_edges_of_each_range_are_accepted():
    TrainConfig(), DataConfig(), PretrainConfig(), model()
    TrainConfig(plain_steps=0, warmup_steps=0, weight_decay=0.0, min_lr=0.0, dense_weight=0.0, batch_size=1)
    model(dropout=0.0, cat_hidden=0, cat_context=0, n_layer=1, n_head=1, n_embd=1)
    model(n_layer=4, n_embd=4560, n_head=1, cat_hidden=4096, cat_dim=4096)  # 998,092,800 weights: the edges
    model(cat_context=4096), TrainConfig(threads=256), PretrainConfig(threads=256)
    DataConfig(profile_retention_s=9223372036854775)
    model(dropout=0.999)
    DataConfig(click_weight=0.0, target_k=1, max_len=1)


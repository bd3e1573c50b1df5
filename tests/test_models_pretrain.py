"""Pretraining on logs without targets, and carrying the backbone into another encoding."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from interest_core.encoding import Encoder, fit_encoder  # noqa: E402
from interest_core.window import WindowEvent  # noqa: E402
from models.data import read_log  # noqa: E402
from models.model import build_model  # noqa: E402
from models.pretrain import PretrainConfig, pretrain_windows, run_pretraining  # noqa: E402
from models.simulate import simulate_to_files  # noqa: E402

TINY = PretrainConfig(n_layer=2, n_head=2, n_embd=32, max_len=48, batch_size=16, max_steps=12, eval_every=6,
                      warmup_steps=2, threads=1, min_category_count=1, dropout=0.2)


def test_windows_predict_each_next_event():
    """Every event but a user's newest is a readout exactly once, and its labels are the next
    event's category (or none), type and gap bucket."""
    H = 3_600_000
    evs = [WindowEvent(0, "click", "a", "i"), WindowEvent(30_000, "search", query="x y"),
           WindowEvent(2 * H, "browse", "zz", "j"), WindowEvent(3 * H, "click", "b", "k")]
    enc = fit_encoder(evs, min_category_count=1, bpe_vocab_size=30, max_len=48)  # categories a, b, zz
    wins = pretrain_windows({"u": evs}, enc, TINY)
    assert len(wins) == 1
    ids, pos, cat, typ, gap = wins[0]
    assert list(cat) == [enc.k, enc.category_index("zz"), enc.category_index("b")]  # search -> "none"
    assert list(typ) == [2, 1, 0]  # search, browse, click
    # gaps: 30 s -> [10 s, 60 s) is bucket 2; 2 h - 30 s -> [1800 s, 7200 s) bucket 5; 1 h -> bucket 5
    assert list(gap) == [2, 5, 5]
    assert len(set(pos.tolist())) == 3 and all(ids[p] != enc.pad_id for p in pos)


def test_pretrain_then_fine_tune_with_another_encoding(tmp_path):
    log = tmp_path / "s.jsonl"
    simulate_to_files(20, 2, 4, log)
    rec = run_pretraining([log], tmp_path / "pre", TINY, progress=False, log=lambda m: None)
    assert rec["readouts"] > 100 and [h["step"] for h in rec["history"]] == [6, 12]
    assert json.loads((tmp_path / "pre" / "pretrain.json").read_text())["windows"] == rec["windows"]
    src = Encoder.load(tmp_path / "pre" / "encoding.json")
    # the fine-tuning encoding: two of the categories, in another order, and one the pretraining never saw
    users, _ = read_log(log)
    evs = [e for u in users.values() for e in u][:200]
    enc = Encoder(categories=["travel", "books", "unseen"], tokenizer_json=src.tokenizer_json, max_len=48)
    model = build_model(enc, init_from=str(tmp_path / "pre"))
    assert (model.config.n_embd, model.config.token_offset) == (32, 0) and model.config.init_from
    new = model.backbone.wte.weight.detach()
    from transformers import GPT2Model

    old = GPT2Model.from_pretrained(str(tmp_path / "pre" / "backbone")).wte.weight.detach()
    assert torch.equal(new[enc.category_offset + 0], old[src.category_offset + src.category_index("travel")])
    assert torch.equal(new[enc.category_offset + 1], old[src.category_offset + src.category_index("books")])
    cat_mean = old[src.category_offset:src.gap_offset].mean(0)
    assert torch.allclose(new[enc.category_offset + 2], cat_mean)
    assert torch.equal(new[: enc.category_offset], old[: src.category_offset])  # specials and types
    assert torch.equal(new[enc.gap_offset : enc.dwell_offset], old[src.gap_offset : src.dwell_offset])
    assert torch.equal(new[enc.hour_offset : enc.hour_offset + 24], old[src.hour_offset : src.hour_offset + 24])
    q = enc.query_offset + 5  # the same tokenizer: query subwords map one to one
    assert torch.equal(new[q], old[src.query_offset + 5])
    # the model runs on the new encoding
    ids = torch.tensor([enc.encode(evs[:5])])
    probs, _ = model(ids, torch.ones_like(ids), torch.zeros(1, enc.profile_size))
    assert probs.shape == (1, 3) and np.isclose(probs.sum().item(), 1.0, atol=1e-5)
    # dropout: config.json said 0.1 (or --set's 0.3) while the backbone trained at its own 0.2
    assert model.config.dropout == 0.2 and model.config.backbone["resid_pdrop"] == 0.2
    model = build_model(enc, init_from=str(tmp_path / "pre"), dropout=0.3)
    drops = {m.p for m in model.backbone.modules() if isinstance(m, torch.nn.Dropout)}
    assert drops == {0.3, 0.0}  # residual and embedding 0.3, attention the backbone's 0
    assert model.config.dropout == 0.3
    assert (model.config.backbone["resid_pdrop"], model.config.backbone["embd_pdrop"]) == (0.3, 0.3)


def test_a_backbone_whose_files_do_not_fit_is_refused(tmp_path):
    """from_pretrained built a default GPT-2 (124M, random) from a checkpoint's config.json, started at
    random every weight it did not find, and raised a size-mismatch RuntimeError (a traceback) for a
    config whose width was not the weights'. encoding.json `[]` was an AttributeError traceback."""
    from transformers import GPT2Config, GPT2Model

    from models.pretrain import load_gpt2, transfer_backbone

    d = tmp_path / "pt"
    GPT2Model(GPT2Config(vocab_size=30, n_positions=16, n_layer=1, n_head=2, n_embd=8)).save_pretrained(d / "backbone")
    b = d / "backbone"
    assert load_gpt2(b).config.n_embd == 8
    good = json.loads((b / "config.json").read_text())
    (d / "encoding.json").write_text("[]")
    with pytest.raises(ValueError, match=r"^encoding.json is not a JSON object: \[\]$"):
        transfer_backbone(d, None)
    (b / "config.json").write_text(json.dumps({"model": {"n_embd": 8}}))
    with pytest.raises(ValueError, match=f"^{b / 'config.json'} is not a GPT-2 config \\(model_type null\\)$"):
        load_gpt2(b)
    enc = fit_encoder([WindowEvent(0, "click", "a", "i")], min_category_count=1, bpe_vocab_size=30, max_len=16)
    with pytest.raises(ValueError) as exc:  # --init-from a GPT-2 directory: the same load
        build_model(enc, init_from=str(b))
    assert str(exc.value) == (f"{b}: neither an `interest-stream pretrain` directory nor a GPT-2 directory "
                              f"({b / 'config.json'} is not a GPT-2 config (model_type null))")
    (b / "config.json").write_text(json.dumps(dict(good, n_embd=16)))
    with pytest.raises(ValueError) as exc:
        load_gpt2(b)
    assert str(exc.value) == (f"the weights do not fit {b / 'config.json'} (size mismatch for bias: copying a "
                              "param with shape torch.Size([24]) from checkpoint, the shape in current model is "
                              "torch.Size([48]))")
    (b / "config.json").write_text(json.dumps(dict(good, n_layer=2)))  # a layer the weights do not hold
    with pytest.raises(ValueError, match=r"^the weights do not fit .*config.json \(12 missing keys: h.1.attn.c_attn"
                                         r".bias, h.1.attn.c_attn.weight, h.1.attn.c_proj.bias, ...\)$"):
        load_gpt2(b)


def test_a_log_of_one_user_says_two_are_needed(tmp_path):
    """Its only user was held out for validation: "need users with at least two events", for 3."""
    log = tmp_path / "one.jsonl"
    log.write_text("".join(json.dumps({"event_id": f"e{i}", "user_id": "u", "type": "click", "ts": 1_767_225_600_000
                                       + 60_000 * i, "item_id": "i", "category": "a"}) + "\n" for i in range(3)))
    with pytest.raises(ValueError) as exc:
        run_pretraining([log], tmp_path / "pre", TINY, progress=False, log=lambda m: None)
    assert str(exc.value) == ("pretraining needs events of at least two users (one is held out for the validation "
                              "loss); the logs hold one user's")


def test_a_pretrain_stopped_while_saving_over_an_earlier_one_is_no_pretrain_directory(tmp_path, monkeypatch):
    """Stopped between the backbone and encoding.json (a Ctrl-C), a run over an earlier directory
    left that one's pretrain.json and encoding beside the new backbone: `train --init-from` took
    the mix as a pretrain directory and carried embeddings over by the earlier encoding's names."""
    from models.pretrain import is_pretrain_dir

    log, pre = tmp_path / "s.jsonl", tmp_path / "pre"
    simulate_to_files(20, 2, 4, log)
    run_pretraining([log], pre, TINY, progress=False, log=lambda m: None)

    def stopped(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(Encoder, "save", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_pretraining([log], pre, TINY, progress=False, log=lambda m: None)
    assert not is_pretrain_dir(pre)

"""InterestModel: shapes, right-padding invariance, checkpoint round trip, --init-from, training."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from interest_core.encoding import Encoder, train_tokenizer  # noqa: E402
from models.model import (  # noqa: E402
    TrainConfig, build_model, collate, load_checkpoint, predict, save_checkpoint, train_model,
)
from interest_core.window import WindowEvent  # noqa: E402

TINY = dict(n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def encoder():
    return Encoder(categories=["a", "b", "c"], tokenizer_json=train_tokenizer(["red shoes", "blue hat"] * 3, 60),
                   max_len=40)


def _seqs(encoder, n=24, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = int(rng.integers(1, 9))
        evs = [WindowEvent(ts=1000 * j * int(rng.integers(1, 50)) + j, type="click",
                           category="abc"[int(rng.integers(3))], item="i") for j in range(m)]
        out.append(encoder.encode(sorted(evs, key=lambda e: e.ts)))
    return out


def _profiles(encoder, n, seed=0):
    """Random profile inputs (n, S*k) as torch: non-negative, some users without a profile."""
    rng = np.random.default_rng(seed)
    p = rng.exponential(2.0, size=(n, encoder.profile_size)).astype(np.float32)
    p[::4] = 0.0
    return torch.from_numpy(p)


def _randomise_head(model):
    with torch.no_grad():  # the head starts at zero; make the backbone matter for the tests
        model.head.weight.normal_(0, 0.5)


def test_shapes_loss_and_right_padding_invariance(encoder):
    model = build_model(encoder, loss="mse", **TINY).eval()
    _randomise_head(model)
    seqs = _seqs(encoder)
    ids, mask = collate(seqs, encoder.pad_id)
    assert ids.shape[0] == len(seqs) and ids.shape[1] == max(map(len, seqs))
    prof = _profiles(encoder, len(seqs))
    targets = torch.softmax(torch.randn(len(seqs), 3), -1)
    probs, loss = model(ids, mask, prof, targets)
    assert probs.shape == (len(seqs), 3)
    assert torch.allclose(probs.sum(-1), torch.ones(len(seqs)), atol=1e-5)
    assert loss.ndim == 0 and torch.isclose(loss, ((probs - targets) ** 2).mean())
    assert model(ids, mask, prof)[1] is None
    for i, s in enumerate(seqs):  # alone (no padding) == inside the padded batch
        alone, _ = model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long), prof[i : i + 1])
        assert torch.allclose(alone[0], probs[i], atol=1e-5)
    # more padding changes nothing either
    ids2, mask2 = collate(seqs + [[encoder.bos_id] + [encoder.end_id] * 39], encoder.pad_id)
    prof2 = torch.cat([prof, torch.zeros(1, prof.shape[1])])
    assert torch.allclose(model(ids2, mask2, prof2)[0][: len(seqs)], probs, atol=1e-5)


def test_profile_enters_the_shrinkage_from_the_start(encoder):
    """Untrained (head at zero), a user whose long-term profile is all category "b" gets more of
    "b" than the same window without a profile, on every scale alone."""
    model = build_model(encoder, **TINY).eval()
    seqs = _seqs(encoder, n=3)
    ids, mask = collate(seqs, encoder.pad_id)
    k = encoder.k
    none = model(ids, mask, torch.zeros(3, encoder.profile_size))[0]
    for scale in range(len(encoder.profile_scales)):
        prof = torch.zeros(3, encoder.profile_size)
        prof[:, scale * k + 1] = 5.0
        with_b = model(ids, mask, prof)[0]
        assert bool((with_b[:, 1] > none[:, 1] + 0.05).all()), scale


@torch.no_grad()  # values compared: no gradient
def test_kl_loss_by_hand(encoder):
    model = build_model(encoder, loss="kl", **TINY).eval()
    seqs = _seqs(encoder, n=4)
    ids, mask = collate(seqs, encoder.pad_id)
    t = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5], [0, 0, 1.0]])
    probs, loss = model(ids, mask, _profiles(encoder, 4), t)
    expected = sum(float(t[i, j]) * np.log(float(t[i, j]) / float(probs[i, j]))
                   for i in range(4) for j in range(3) if t[i, j] > 0) / 4
    assert abs(float(loss) - expected) < 1e-5


def test_forward_does_not_write_config(encoder):
    model = build_model(encoder, **TINY).eval()
    before = json.dumps(model.config.__dict__, sort_keys=True, default=str)
    ids, mask = collate(_seqs(encoder, n=3), encoder.pad_id)
    model(ids, mask, _profiles(encoder, 3), torch.full((3, 3), 1 / 3))
    assert json.dumps(model.config.__dict__, sort_keys=True, default=str) == before


def test_tiny_training_and_checkpoint_round_trip(encoder, tmp_path):
    seqs = _seqs(encoder, n=200, seed=1)
    prof = _profiles(encoder, 200).numpy()
    # learnable target: the category of the last click
    last_cat = np.array([s[-3] - encoder.category_offset for s in seqs])  # ... cat, hour, [END]
    targets = np.eye(3, dtype=np.float32)[last_cat] * 0.8 + 0.2 / 3
    model = build_model(encoder, **TINY)
    model.init_prior(targets.mean(0))
    cfg = TrainConfig(epochs=4, batch_size=16, eval_every=10, warmup_steps=5, max_steps=40, seed=3, threads=1)
    summary = train_model(model, seqs[:160], prof[:160], targets[:160], seqs[160:], prof[160:], targets[160:], cfg,
                          encoder.pad_id, state_path=tmp_path / "state.pt", progress=False)
    assert summary["steps"] > 0 and summary["history"]
    assert summary["history"][-1]["val_loss"] < summary["history"][0]["val_loss"] * 1.5
    save_checkpoint(model, encoder, {"split": {"t1": 1, "t2": 2}}, tmp_path / "ckpt")
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "encoding.json", "model_card.json"} <= names
    loaded, enc2, card = load_checkpoint(tmp_path / "ckpt")
    assert enc2.to_spec() == encoder.to_spec() and card["categories"] == ["a", "b", "c"]
    a = predict(model, seqs[160:], prof[160:], encoder.pad_id)
    b = predict(loaded, seqs[160:], prof[160:], enc2.pad_id)
    np.testing.assert_array_equal(a, b)


def test_training_is_seeded_and_resumable(encoder, tmp_path):
    seqs = _seqs(encoder, n=120, seed=2)
    prof = _profiles(encoder, 120, seed=3).numpy()
    targets = np.full((120, 3), 1 / 3, np.float32)
    targets[::2] = [0.7, 0.2, 0.1]
    cfg = TrainConfig(epochs=10, batch_size=16, eval_every=5, warmup_steps=2, max_steps=20, seed=9, patience=100,
                      threads=1)

    def run(path, resume=False, stop_at=None):
        torch.manual_seed(0)
        m = build_model(encoder, **TINY)
        s = train_model(m, seqs[:100], prof[:100], targets[:100], seqs[100:], prof[100:], targets[100:], cfg,
                        encoder.pad_id, state_path=path, resume=resume, progress=False, stop_at=stop_at)
        return predict(m, seqs[100:], prof[100:], encoder.pad_id), s

    full, s1 = run(tmp_path / "a.pt")
    again, _ = run(tmp_path / "b.pt")
    np.testing.assert_array_equal(full, again)  # seeded
    _, part = run(tmp_path / "c.pt", stop_at=10)
    assert part["stop_reason"] == "interrupted" and part["steps"] == 10
    resumed, s2 = run(tmp_path / "c.pt", resume=True)
    assert s2["steps"] == 20 and [h["step"] for h in s2["history"]] == [h["step"] for h in s1["history"]]
    np.testing.assert_allclose(resumed, full, atol=1e-6)
    # the running training loss too (it started again from the first batch after a resume, so the
    # card's history and the progress bar differed from the run's)
    assert [h["train_loss"] for h in s2["history"]] == pytest.approx([h["train_loss"] for h in s1["history"]], abs=1e-6)


def test_a_run_that_stopped_early_resumes_stopped(encoder, tmp_path):
    """The training state is saved at the validation pass that stops early, before the selection,
    the refit and the checkpoint. Resumed from it (a run killed after that save, or run again with
    --resume), training went on for another pass: another history row, and, had that pass
    improved, other weights than the run's."""
    seqs = _seqs(encoder, n=120, seed=2)
    prof = _profiles(encoder, 120, seed=3).numpy()
    targets = np.full((120, 3), 1 / 3, np.float32)
    targets[::2] = [0.7, 0.2, 0.1]
    cfg = TrainConfig(epochs=50, batch_size=16, eval_every=2, warmup_steps=2, max_steps=400, seed=9, patience=1,
                      lr=0.05, threads=1)

    def run(resume=False):
        torch.manual_seed(0)
        m = build_model(encoder, **TINY)
        s = train_model(m, seqs[:100], prof[:100], targets[:100], seqs[100:], prof[100:], targets[100:], cfg,
                        encoder.pad_id, state_path=tmp_path / "s.pt", resume=resume, progress=False)
        return predict(m, seqs[100:], prof[100:], encoder.pad_id), s

    first, s1 = run()
    assert s1["stop_reason"] == "early stopping" and s1["steps"] < 400
    again, s2 = run(resume=True)
    assert (s2["stop_reason"], s2["steps"], s2["history"]) == ("early stopping", s1["steps"], s1["history"])
    np.testing.assert_array_equal(again, first)


def test_refit_trains_the_first_steps_of_the_schedule_without_validation(encoder):
    """``refit=(7, 20)`` (models.train.fit, stage 5) runs steps 1-7 of a 20-step schedule with no
    validation set and keeps the last weights: those a validated run on the same schedule holds
    after step 7."""
    seqs = _seqs(encoder, n=120, seed=6)
    prof = _profiles(encoder, 120, seed=7).numpy()
    targets = np.full((120, 3), 1 / 3, np.float32)
    targets[::3] = [0.1, 0.2, 0.7]
    cfg = TrainConfig(epochs=10, batch_size=16, eval_every=7, warmup_steps=2, max_steps=20, seed=4, patience=100,
                      threads=1)

    def model():
        torch.manual_seed(0)
        return build_model(encoder, **TINY)

    validated = model()
    s = train_model(validated, seqs[:100], prof[:100], targets[:100], seqs[100:], prof[100:], targets[100:], cfg,
                    encoder.pad_id, progress=False, stop_at=7)
    assert s["steps"] == 7 and s["best_step"] == 7 and s["total_steps"] == 20
    refit = model()
    r = train_model(refit, seqs[:100], prof[:100], targets[:100], None, None, None, cfg, encoder.pad_id,
                    progress=False, refit=(7, 20))
    assert r["steps"] == 7 and r["best_step"] == 7 and r["history"] == [] and r["stop_reason"] == "refit steps"
    a = predict(validated, seqs[100:], prof[100:], encoder.pad_id)
    np.testing.assert_allclose(predict(refit, seqs[100:], prof[100:], encoder.pad_id), a, atol=1e-6)
    short = model()  # a 7-step schedule decays faster: different weights
    train_model(short, seqs[:100], prof[:100], targets[:100], None, None, None, cfg, encoder.pad_id,
                progress=False, refit=(7, 7))
    assert np.abs(predict(short, seqs[100:], prof[100:], encoder.pad_id) - a).max() > 1e-4
    with pytest.raises(ValueError, match="^need training samples to refit, got 0$"):
        train_model(model(), [], None, None, None, None, None, cfg, encoder.pad_id, progress=False, refit=(7, 20))


def test_kept_weights_are_the_moving_average(encoder):
    """One step with ema_decay d keeps d * (initial weights) + (1 - d) * (weights after the step);
    the step itself is the one a run without the average takes (the raw weights train on)."""
    seqs = _seqs(encoder, n=40, seed=4)
    prof = _profiles(encoder, 40, seed=5).numpy()
    targets = np.full((40, 3), 1 / 3, np.float32)
    targets[::2] = [0.7, 0.2, 0.1]

    def run(decay):
        torch.manual_seed(0)
        m = build_model(encoder, **TINY)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        cfg = TrainConfig(batch_size=16, eval_every=1, warmup_steps=0, max_steps=1, seed=9, threads=1,
                          ema_decay=decay)
        train_model(m, seqs[:30], prof[:30], targets[:30], seqs[30:], prof[30:], targets[30:], cfg,
                    encoder.pad_id, progress=False)
        return before, m.state_dict()

    w0, w1 = run(0.0)  # the raw weights after one step
    w0_again, kept = run(0.75)
    moved = [k for k in w0 if w0[k].is_floating_point() and not torch.equal(w0[k], w1[k])]
    assert len(moved) > 5  # the step changed the weights
    for k in moved:
        torch.testing.assert_close(w0_again[k], w0[k])
        torch.testing.assert_close(kept[k], 0.75 * w0[k] + 0.25 * w1[k], rtol=1e-5, atol=1e-6)


def test_init_from_tiny_pretrained_gpt2(encoder, tmp_path):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    pre = GPT2Model(GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    pre.save_pretrained(tmp_path / "gpt2-tiny")
    model = build_model(encoder, init_from=str(tmp_path / "gpt2-tiny")).eval()
    assert model.config.token_offset == 50
    assert model.backbone.get_input_embeddings().weight.shape[0] == 50 + encoder.vocab_size
    # the pretrained rows are kept; the behaviour tokens come after them
    assert torch.equal(model.backbone.get_input_embeddings().weight[:50], pre.wte.weight)
    assert torch.equal(model.backbone.h[0].attn.c_attn.weight, pre.h[0].attn.c_attn.weight)
    _randomise_head(model)
    seqs = _seqs(encoder, n=5)
    ids, mask = collate(seqs, encoder.pad_id)
    prof = _profiles(encoder, 5)
    probs, _ = model(ids, mask, prof)
    assert probs.shape == (5, 3)
    save_checkpoint(model, encoder, {}, tmp_path / "ckpt")
    (tmp_path / "gpt2-tiny" / "model.safetensors").unlink()  # loading needs nothing but the checkpoint
    loaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    assert torch.allclose(loaded(ids, mask, prof)[0], probs, atol=1e-6)


def test_init_from_too_short_positions(encoder, tmp_path):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path / "g")
    with pytest.raises(ValueError, match="n_positions"):
        build_model(encoder, init_from=str(tmp_path / "g"))


def _randomise_corrections(model):
    with torch.no_grad():  # every correction starts at zero; give each some weight
        model.head.weight.normal_(0, 0.5)
        model.cat_net[2].weight.normal_(0, 0.5)
        model.profile_proj.weight.normal_(0, 0.2)
        model.cat_ctx.weight.normal_(0, 0.3)
        model.query_cat.weight.normal_(0, 1.0)


def test_dense_readouts_equal_serving_on_the_prefix(encoder):
    """A readout at an earlier event of a sequence gives what serving gives for the window that
    ends with that event (the prefix, then that event's hour and [END]), with that readout's own
    profile: what dense training supervises is what the worker will compute."""
    model = build_model(encoder, **TINY).eval()
    _randomise_corrections(model)
    H = 3_600_000
    evs = [WindowEvent(ts=5 * H + j * 600_000 + (j % 3) * 7, type="click", category="abc"[j % 3], item="i")
           for j in range(9)]
    evs[4] = WindowEvent(ts=evs[4].ts, type="search", query="red shoes")
    ids, ends = encoder.encode_with_ends(evs)
    assert ids == encoder.encode(evs)  # the same ids as the encoder's own
    rows = [2, 4, 8]  # readouts after events 2, 4 (the search) and 8 (the last one)
    prof = _profiles(encoder, len(rows), seed=5)
    readouts = {"batch": torch.zeros(len(rows), dtype=torch.long), "pos": torch.tensor([ends[m] for m in rows]),
                "hour": torch.tensor([(evs[m].ts // H) % 24 for m in rows])}
    ids_t = torch.tensor([ids])
    dense, _ = model(ids_t, torch.ones_like(ids_t), prof, readouts=readouts)
    assert ends[8] == len(ids) - 3  # the last event's readout is 2 before the end (hour, [END])
    for r, m in enumerate(rows):
        prefix = torch.tensor([encoder.encode(evs[: m + 1])])
        served, _ = model(prefix, torch.ones_like(prefix), prof[r : r + 1])
        assert torch.allclose(dense[r], served[0], atol=1e-5), m
    # and the readouts differ from each other (the check above is not vacuous)
    assert (dense[0] - dense[2]).abs().max() > 1e-3


@torch.no_grad()  # values compared: no gradient
def test_dense_loss_is_the_weighted_mean_over_readouts(encoder):
    model = build_model(encoder, loss="kl", **TINY).eval()
    seqs = _seqs(encoder, n=2)
    ids, mask = collate(seqs, encoder.pad_id)
    last = mask.sum(1) - 1
    readouts = {"batch": torch.tensor([0, 1, 1]), "pos": torch.stack([last[0] - 2, last[1] - 2, last[1] - 2]),
                "hour": torch.tensor([3, 5, 24]), "weight": torch.tensor([1.0, 1.0, 0.5])}
    t = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    probs, loss = model(ids, mask, _profiles(encoder, 3), t, readouts)
    per = [-float(torch.log(probs[i, i])) for i in range(3)]  # one-hot targets: KL = -log p
    assert abs(float(loss) - (per[0] + per[1] + 0.5 * per[2]) / 2.5) < 1e-5


def _window_counts_by_hand(encoder, s):
    """A sequence's category counts up to its serving readout (the newest event's last token), and
    the same decayed by token distance (the model's initial 30 tokens)."""
    r = len(s) - 3
    counts, recent = torch.zeros(3), torch.zeros(3)
    for t, tok in enumerate(s[: r + 1]):
        c = tok - encoder.category_offset
        if 0 <= c < 3:
            counts[c] += 1
            recent[c] += float(np.exp(-(r - t) / 30.0))
    return counts, recent


def _subword_ids(encoder, query):
    return [t - encoder.query_offset for t in encoder.query_tokens(query)]


def test_searches_reach_the_per_category_network_through_the_query_map(encoder):
    """A search carries no category, only its query's subwords. The per-category network reads, per
    category, log(1 + the window's searches for it) and the same decayed by token distance, each
    search subword counting as its row of the query map (softmax over categories): worked by hand
    for one search of two subwords. Without a query map (``query_offset=-1``) searches do not move
    the prediction."""
    H = 3_600_000
    evs = [WindowEvent(ts=5 * H, type="click", category="a", item="i"),
           WindowEvent(ts=5 * H + 60_000, type="search", query="red shoes"),
           WindowEvent(ts=5 * H + 120_000, type="click", category="b", item="i")]
    ids = encoder.encode(evs)
    model = build_model(encoder, correction="features", **TINY).eval()
    assert model.config.query_offset == encoder.query_offset
    red, shoes = _subword_ids(encoder, "red"), _subword_ids(encoder, "shoes")
    assert len(red) == len(shoes) == 1 and red != shoes  # one subword each
    with torch.no_grad():
        model.query_cat.weight.zero_()
        model.query_cat.weight[red[0]] = torch.log(torch.tensor([0.5, 0.25, 0.25]))
        model.query_cat.weight[shoes[0]] = torch.log(torch.tensor([0.1, 0.1, 0.8]))
    seen, features = {}, model._search_features

    def spy(*args):  # what forward gives the per-category network
        seen["searched"] = features(*args)
        return seen["searched"]

    model._search_features = spy
    model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), _profiles(encoder, 1))
    pos = [i for i, t in enumerate(ids) if t >= encoder.query_offset]  # the two subwords' positions
    r = len(ids) - 3  # the readout: the newest event's last token
    want_all = torch.tensor([0.5 + 0.1, 0.25 + 0.1, 0.25 + 0.8])
    want_recent = (torch.tensor([0.5, 0.25, 0.25]) * np.exp(-(r - pos[0]) / 30.0)
                   + torch.tensor([0.1, 0.1, 0.8]) * np.exp(-(r - pos[1]) / 30.0))
    assert seen["searched"].shape == (1, 3, 2)
    assert torch.allclose(seen["searched"][0, :, 0], torch.log1p(want_all), atol=1e-6)
    assert torch.allclose(seen["searched"][0, :, 1], torch.log1p(want_recent.float()), atol=1e-6)

    # through the network: the map moves the prediction of a window with a search, not one without
    ids_t, no_search = torch.tensor([ids]), torch.tensor([encoder.encode([evs[0], evs[2]])])
    prof = _profiles(encoder, 1)
    models = {}
    for offset in (encoder.query_offset, -1):
        torch.manual_seed(0)
        models[offset] = build_model(encoder, correction="features", query_offset=offset, **TINY).eval()
        with torch.no_grad():
            models[offset].cat_net[2].weight.normal_(0, 0.5)
    with_map, without = models[encoder.query_offset], models[-1]
    assert not hasattr(without, "query_cat")
    # the map's inputs start at zero weight, and nothing else starts differently: the same predictions
    assert torch.equal(with_map.cat_net[0].weight[:, :-2], without.cat_net[0].weight)
    assert not with_map.cat_net[0].weight[:, -2:].any()
    for x in (ids_t, no_search):
        assert torch.equal(with_map(x, torch.ones_like(x), prof)[0], without(x, torch.ones_like(x), prof)[0])
    with torch.no_grad():
        with_map.cat_net[0].weight[:, -2:].normal_(0, 1.0)
        with_map.query_cat.weight.normal_(0, 2.0)
    moved = with_map(ids_t, torch.ones_like(ids_t), prof)[0] - without(ids_t, torch.ones_like(ids_t), prof)[0]
    assert moved.abs().max() > 1e-4  # a window with a search moves
    assert torch.equal(with_map(no_search, torch.ones_like(no_search), prof)[0],
                       without(no_search, torch.ones_like(no_search), prof)[0])  # one without does not
    with pytest.raises(ValueError, match="query_offset must be -1 or a token id past the categories"):
        build_model(encoder, query_offset=encoder.category_offset)


def test_query_map_starts_at_what_searchers_did_next(encoder):
    """``models.train.query_targets`` sums, per subword, the targets of the readouts on the searches
    it is in (a click's readout adds nothing); ``init_query_map`` starts each subword's row at their
    mean shrunk toward the prior by one search, a subword never searched at the prior."""
    from types import SimpleNamespace

    from models.data import DenseReadouts
    from models.train import query_targets

    evs = [WindowEvent(ts=1000, type="search", query="red shoes"), WindowEvent(ts=2000, type="click", category="a",
                                                                                item="i"),
           WindowEvent(ts=3000, type="search", query="red")]
    ids, ends = encoder.encode_with_ends(evs)
    tg = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], np.float32)
    dense = DenseReadouts(offsets=np.array([0, 3]), pos=np.array(ends), hour=np.zeros(3, np.int64),
                          is_last=np.array([False, False, True]), weight=np.ones(3, np.float32),
                          cut_row=np.array([0, 1, 2]), targets=tg, profiles=np.zeros((3, 1), np.float32))
    td = SimpleNamespace(encoder=encoder, train_seqs=[np.array(ids)], dense=dense, train_tgt=None)
    sums, counts = query_targets(td)
    (red,), (shoes,) = _subword_ids(encoder, "red"), _subword_ids(encoder, "shoes")
    assert counts[red] == 2 and counts[shoes] == 1 and counts.sum() == 3
    assert sums[red].tolist() == [1.0, 0.0, 1.0] and sums[shoes].tolist() == [1.0, 0.0, 0.0]
    # one readout per sequence instead (no dense readouts): the last event's, "red" alone
    one = query_targets(SimpleNamespace(encoder=encoder, train_seqs=[np.array(ids)], dense=None, train_tgt=tg[2:]))
    assert one[1][red] == 1 and one[1].sum() == 1 and one[0][red].tolist() == [0.0, 0.0, 1.0]

    model = build_model(encoder, correction="features", **TINY)
    model.init_prior(np.array([0.5, 0.3, 0.2]))
    model.init_query_map(sums, counts)
    rows = torch.softmax(model.query_cat.weight.detach(), dim=-1)
    assert torch.allclose(rows[red], torch.tensor([1.5, 0.3, 1.2]) / 3, atol=1e-6)
    assert torch.allclose(rows[shoes], torch.tensor([1.5, 0.3, 0.2]) / 2, atol=1e-6)
    never = next(i for i in range(len(counts)) if counts[i] == 0)
    assert torch.allclose(rows[never], torch.tensor([0.5, 0.3, 0.2]), atol=1e-6)


def test_plain_path_ignores_the_sequence_model(encoder):
    """correction="none" is the learned counter alone: the backbone and the correction heads do
    not change its output; "features" adds the per-category network but still no backbone."""
    seqs = _seqs(encoder, n=6)
    ids, mask = collate(seqs, encoder.pad_id)
    prof = _profiles(encoder, 6)
    for correction, moves in (("none", False), ("features", False), ("full", True)):
        torch.manual_seed(0)
        model = build_model(encoder, correction=correction, **TINY).eval()
        _randomise_corrections(model)
        before = model(ids, mask, prof)[0]
        with torch.no_grad():
            for p in model.backbone.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        after = model(ids, mask, prof)[0]
        assert bool((before - after).abs().max() > 1e-4) is moves, correction
    # the plain path by hand for one row: counts of the window, recency by token distance, prior, profile
    model = build_model(encoder, correction="none", **TINY).eval()
    counts, recent = _window_counts_by_hand(encoder, seqs[0])
    p0 = prof[0].reshape(len(encoder.profile_scales), 3)  # scales x categories
    mix = counts + recent + 2.0 * torch.full((3,), 1 / 3) + 0.5 * p0.sum(0)
    want = mix / mix.sum()
    assert torch.allclose(model(ids[:1], mask[:1], prof[:1])[0][0], want, atol=1e-5)


def test_plain_weights_per_history_length_by_hand(encoder):
    """The plain path's weights depend on the history length, as the `mixture` baseline's: the
    window's categorised events, or the profile's largest mass over its scales when larger."""
    assert build_model(encoder, **TINY).config.length_buckets == []  # off by default
    model = build_model(encoder, correction="none", length_buckets=[1, 4, 16, 64, 256], **TINY).eval()
    k, S = 3, len(encoder.profile_scales)
    counts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 1, 0], [0, 0, 1], [0, 0, 1]])
    prof = torch.zeros(5, S, k)
    prof[3, 1] = torch.tensor([10.0, 5, 1])  # 16 on the 30-day scale: 16-63
    prof[4, 0] = torch.tensor([1.0, 1, 1.5])  # 3.5 on the 1-day one: the window's 1 is smaller -> 1-3
    assert model._length_bucket(counts, prof).tolist() == [0, 1, 1, 3, 1]
    assert model._length_bucket(counts, None).tolist() == [0, 1, 1, 1, 1]  # a model without profile

    seqs = _seqs(encoder, n=6)
    ids, mask = collate(seqs, encoder.pad_id)
    profile = torch.zeros(6, S * k)  # no profile: the length is the window's
    counts, recent = _window_counts_by_hand(encoder, seqs[0])
    n = int(counts.sum())
    bucket = sum(n >= e for e in model.config.length_buckets)
    with torch.no_grad():  # this length's weights: a_all x e, a_recent x 1, beta x e^-1
        model.log_w_length[bucket, :3] = torch.tensor([1.0, 0.0, -1.0])
        model.log_w_length[bucket + 1] = 5.0  # another length's: not used
    mix = np.e * counts + recent + 2.0 / np.e * torch.full((3,), 1 / 3)
    assert torch.allclose(model(ids[:1], mask[:1], profile[:1])[0][0], mix / mix.sum(), atol=1e-5)


@torch.no_grad()  # values compared: no gradient
def test_scaling_the_corrections_is_exact_in_logits(encoder):
    """scale_corrections(s) predicts softmax(log p_off + s * (log p_on - log p_off)) for each
    correction, and per correction softmax(log p_off + sum_i s_i * (log p_i - log p_off)) with p_i
    the model with correction i alone (what models.train.choose_correction_scales computes its
    candidates from); scale 0 is the plain path; the plain path has nothing to scale."""
    seqs = _seqs(encoder, n=8)
    ids, mask = collate(seqs, encoder.pad_id)
    prof = _profiles(encoder, 8)

    def scaled(model, s):
        m = copy.deepcopy(model)
        m.scale_corrections(s)
        return m(ids, mask, prof)[0]

    for correction, names in (("features", ["features"]), ("full", ["features", "transformer"])):
        torch.manual_seed(0)
        model = build_model(encoder, correction=correction, **TINY).eval()
        _randomise_corrections(model)
        with torch.no_grad():
            model.head.bias.normal_(0, 0.5)
            model.cat_net[2].bias.normal_(0, 0.5)
        assert list(model.correction_outputs()) == names
        p_on, p_off = model(ids, mask, prof)[0], scaled(model, 0.0)
        assert float((p_on - p_off).abs().max()) > 0.05, correction  # the corrections move it
        plain = build_model(encoder, correction="none", **TINY).eval()
        plain.load_state_dict(model.state_dict())
        assert torch.allclose(p_off, plain(ids, mask, prof)[0], atol=1e-6), correction  # scale 0: the plain path
        want = torch.softmax(torch.log(p_off) + 0.6 * (torch.log(p_on) - torch.log(p_off)), -1)
        assert torch.allclose(scaled(model, 0.6), want, atol=1e-5), correction
        if correction == "full":  # each correction by its own scale
            alone = [scaled(model, [1.0, 0.0]), scaled(model, [0.0, 1.0])]
            assert min(float((p - p_off).abs().max()) for p in alone) > 0.05  # each moves it
            no_head = copy.deepcopy(model)
            with torch.no_grad():
                no_head.head.weight.zero_()
                no_head.head.bias.zero_()
            assert torch.allclose(alone[0], no_head(ids, mask, prof)[0], atol=1e-6)  # the first is the features'
            z = torch.log(p_off) + 0.3 * (torch.log(alone[0]) - torch.log(p_off)) + \
                1.2 * (torch.log(alone[1]) - torch.log(p_off))
            assert torch.allclose(scaled(model, [0.3, 1.2]), torch.softmax(z, -1), atol=1e-5)
            with pytest.raises(ValueError, match="3 scales for 2 corrections"):
                model.scale_corrections([1.0, 1.0, 1.0])
    assert build_model(encoder, correction="none", **TINY).correction_outputs() == {}


def test_correction_scale_by_hand():
    """Two categories; the corrections take [0.5, 0.5] to [0.9, 0.1], so at scale s the odds are
    9**s: a target with odds 3 wants s = 0.5 (KL 0), odds 27 s = 1.5, odds 1 s = 0, and odds 999
    (s = 3.14) the largest scale on the grid, 2."""
    from models.train import CORRECTION_SCALES, choose_correction_scales

    p_off, p_on = np.array([[0.5, 0.5]]), np.array([[0.9, 0.1]])
    s, kl = choose_correction_scales(p_off, [p_on], np.array([[0.75, 0.25]]))
    assert s == (0.5,) and abs(kl) < 1e-12
    assert choose_correction_scales(p_off, [p_on], np.array([[27 / 28, 1 / 28]]))[0] == (1.5,)
    assert choose_correction_scales(p_off, [p_on], np.array([[0.5, 0.5]]))[0] == (0.0,)
    assert choose_correction_scales(p_off, [p_on], np.array([[0.999, 0.001]]))[0] == (2.0,) == (CORRECTION_SCALES[-1],)
    # the mean over rows decides: one row wants 0.5, two want 1.5; at scale s the prediction is
    # (9**s, 1) / (9**s + 1), and KL(t || p) = sum t log(t / p) picks 0.95 from the grid
    t = np.array([[0.75, 0.25], [27 / 28, 1 / 28], [27 / 28, 1 / 28]])

    def mean_kl(s):
        p = np.array([9.0**s, 1.0]) / (9.0**s + 1.0)
        return float((t * np.log(t / p)).sum(1).mean())

    s, kl = choose_correction_scales(np.repeat(p_off, 3, 0), [np.repeat(p_on, 3, 0)], t)
    assert s == (min(CORRECTION_SCALES, key=mean_kl),) == (0.95,) and abs(kl - mean_kl(0.95)) < 1e-9


def test_two_correction_scales_by_hand():
    """Three categories, uniform without corrections; one correction multiplies the first one's odds
    by 9, the other the second one's. A target with odds 3 : 27 : 1 wants 9**0.5 and 9**1.5: scales
    (0.5, 1.5) at KL 0, which no single scale for both reaches; odds 1 : 27 : 1 turn the first off."""
    from models.train import choose_correction_scales

    p_off = np.full((1, 3), 1 / 3)
    parts = [np.array([[9.0, 1.0, 1.0]]) / 11, np.array([[1.0, 9.0, 1.0]]) / 11]
    s, kl = choose_correction_scales(p_off, parts, np.array([[3.0, 27.0, 1.0]]) / 31)
    assert s == (0.5, 1.5) and abs(kl) < 1e-12
    assert choose_correction_scales(p_off, parts, np.array([[1.0, 27.0, 1.0]]) / 29)[0] == (0.0, 1.5)
    both = [np.array([[9.0, 9.0, 1.0]]) / 19]  # the two as one correction: the best single scale is worse
    assert choose_correction_scales(p_off, both, np.array([[3.0, 27.0, 1.0]]) / 31)[1] > 0.05


def test_checkpoint_before_readouts_still_loads_as_it_was(encoder, tmp_path):
    """A config.json without the new keys (written before readouts existed) reads [END] with the
    transformer correction, and a misspelt key fails loudly."""
    from models.model import ModelConfig

    old = {"vocab_size": encoder.vocab_size, "k": 3, "category_offset": encoder.category_offset, "max_len": 40,
           "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0, "loss": "mse", "recency_tokens": 30.0,
           "profile_scales": 3, "token_offset": 0, "init_from": None, "backbone": {}}
    cfg = ModelConfig.from_dict(old)
    assert (cfg.readout, cfg.correction, cfg.cat_hidden) == ("end", "full", 0)
    assert cfg.length_buckets == []  # one set of plain weights for every user, as it had
    assert cfg.query_offset == -1  # no query map, as it had
    with pytest.raises(ValueError, match="length_buckets must be increasing history lengths >= 1"):
        ModelConfig(vocab_size=10, k=3, category_offset=4, length_buckets=[4, 4, 16])
    with pytest.raises(ValueError, match="length_buckets must be increasing history lengths >= 1"):
        ModelConfig(vocab_size=10, k=3, category_offset=4, length_buckets=[0, 4])
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**old, "n_layers": 3})


def test_aux_head_adds_its_weighted_loss_and_trains_only_the_backbone(encoder):
    """With ``aux_head`` the loss adds, per readout, the KL of the other span's target against the
    plain path plus the aux head's logits, weighted by ``aux_weight`` over the main weights' sum
    (worked by hand); the plain path gets no gradient from it, and serving (no readouts) is
    unchanged."""
    torch.manual_seed(0)
    model = build_model(encoder, loss="kl", aux_head=1, **TINY).eval()
    with torch.no_grad():
        model.aux_head.weight.normal_(0, 0.5)
    seqs = _seqs(encoder, n=2)
    ids, mask = collate(seqs, encoder.pad_id)
    last = mask.sum(1) - 1
    prof = _profiles(encoder, 2)
    base = {"batch": torch.tensor([0, 1]), "pos": last - 2, "hour": torch.tensor([3, 24]),
            "weight": torch.tensor([1.0, 0.5])}
    t = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    aux = torch.tensor([[0.0, 0, 1.0], [0.5, 0.5, 0]])
    readouts = {**base, "aux_targets": aux, "aux_weight": torch.tensor([0.25, 0.0])}
    _, loss = model(ids, mask, prof, t, readouts)
    _, main = model(ids, mask, prof, t, base)
    # the aux prediction of readout 0 by hand: the plain path (correction none, same weights) + the aux head
    plain = build_model(encoder, loss="kl", correction="none", **TINY)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in plain.state_dict()})
    z = model._transformer_state(ids, mask, prof.reshape(2, -1, 3), base["batch"], base["pos"], base["hour"])
    p_aux = torch.softmax(torch.log(plain(ids, mask, prof)[0]) + model.aux_head(z), dim=-1)
    assert abs(loss.item() - (main.item() + 0.25 * -torch.log(p_aux[0, 2]).item() / 1.5)) < 1e-5
    assert loss.item() > main.item() + 1e-3
    # the aux term's gradient reaches the backbone and its head, not the plain path
    model.zero_grad()
    (loss - main).backward()
    assert model.log_a_all.grad is None or float(model.log_a_all.grad.abs()) == 0.0
    assert float(model.aux_head.weight.grad.abs().sum()) > 0
    assert float(model.backbone.wte.weight.grad.abs().sum()) > 0
    # serving reads only the main head
    served, _ = model(ids, mask, prof)
    without = build_model(encoder, loss="kl", **TINY).eval()
    without.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("aux_head")})
    assert torch.allclose(served, without(ids, mask, prof)[0], atol=1e-6)

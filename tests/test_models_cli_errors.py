"""The training-side verbs' mistakes are the user's to fix: one line and an exit code, never a
traceback, and never a file of the user's replaced without a word. Nothing here trains but the
`trained` fixture's tiny run (seconds), which the slow tests share."""
from __future__ import annotations

import gzip
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from stream_app.cli import main

EVENT = {"event_id": "e1", "user_id": "u1", "type": "click", "ts": 1_767_225_692_022, "item_id": "i", "category": "a"}


def _run(args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)  # no traceback
    return res


def _log(path, events):
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


@pytest.mark.parametrize("field, value, detail", [
    ("user_id", ["u"], "user_id must be a non-empty string, got list"),
    ("event_id", {"x": 1}, "event_id must be a non-empty string, got dict"),
    ("category", 7, "category must be a non-empty string, got int"),
    ("item_id", [5], "item_id must be a non-empty string, got list"),
    ("dwell_ms", "x", "dwell_ms must be an integer >= 0, got 'x'"),
])
def test_a_log_whose_events_have_the_wrong_types_is_no_valid_events(tmp_path, field, value, detail):
    """A list for an id was a TypeError traceback; a number for a category one deep in training.
    The error says what the worker would say of the line (its dead letter's reason and detail)."""
    pytest.importorskip("torch")
    from models.data import read_log

    log = _log(tmp_path / "log.jsonl", [dict(EVENT, **{field: value})])
    assert read_log(log)[1]["invalid"] == 1
    res = _run(["train", "--data", log, "--out", tmp_path / "ck"])
    assert res.exit_code == 1
    assert res.output.endswith(f"Error: {log}: no valid events (skipped 1 of 1 lines the worker would refuse: "
                               f"bad_type 1 (first: line 1: {detail}))\n")


@pytest.mark.parametrize("args, message", [
    (["train", "--set", "hour_offset=3"], "Invalid value for --set: unknown key 'hour_offset'; known keys: "),
    (["train", "--set", "lr"], "Invalid value for --set: expected KEY=VALUE, got 'lr'"),
    (["pretrain", "--set", "lr"], "Invalid value for --set: expected KEY=VALUE, got 'lr'"),
    (["train", "--set", "seed=-1"], "Error: seed must be >= 0, got -1"),
    (["train", "--seed", "-1"], "Error: seed must be >= 0, got -1"),
    (["pretrain", "--set", "seed=-1"], "Error: seed must be >= 0, got -1"),
    # beyond numpy's int32 positions and int64 ms: OverflowError tracebacks after the log was read
    (["train", "--max-events", "2147483648"],
     "Invalid value for '--max-events': 2147483648 is not in the range 1<=x<=2147483647."),
    (["train", "--set", "max_events=2147483648"], "Error: max_events must be <= 2147483647, got 2147483648"),
    (["train", "--horizon-s", "9223372036854776"],
     "Invalid value for '--horizon-s': 9223372036854776 is not in the range 1<=x<=9223372036854775."),
    (["train", "--set", "horizon_s=9223372036854776"],
     "Error: horizon_s must be <= 9223372036854775, got 9223372036854776"),
    (["pretrain", "--set", "horizon_s=9223372036854776"],
     "Error: horizon_s must be <= 9223372036854775, got 9223372036854776"),
    (["pretrain", "--set", "max_events=2147483648"], "Error: max_events must be <= 2147483647, got 2147483648"),
    # a max_len x max_len attention mask per layer: "can't allocate memory" (train: after ~80 s of data)
    (["train", "--set", "max_len=100000000"], "Error: max_len must be <= 8192, got 100000000"),
    (["pretrain", "--set", "max_len=8193"], "Error: max_len must be <= 8192, got 8193"),
    # torch.manual_seed's "Overflow when unpacking long long", after the log was read
    (["train", "--seed", str(2**64)], "Error: seed must be <= 18446744073709551615, got 18446744073709551616"),
    (["pretrain", "--set", f"seed={2**64}"], "Error: seed must be <= 18446744073709551615, got 18446744073709551616"),
    (["train", "--set", "aux_head=-1"], "Error: aux_head must be 0 (off) or 1 (on), got -1"),
    # the --set won, without a word
    (["train", "--epochs", "3", "--set", "epochs=1"],
     "Error: --epochs 3 and --set epochs=1 give epochs twice: give one"),
    (["train", "--max-steps", "9", "--set", "max_steps=2"],
     "Error: --max-steps 9 and --set max_steps=2 give max_steps twice: give one"),
    # a time target reads no target_k, next_k and next_baskets no target_window_s: both were ignored
    (["train", "--target", "time", "--target-k", "7"], "Error: --target-k needs --target next_k or next_baskets"),
    (["train", "--target", "next_k", "--target-window-s", "60"],
     "Error: --target-window-s needs --target time or auto"),
    (["train", "--target", "next_baskets", "--set", "target_window_s=60"],
     "Error: --target-window-s needs --target time or auto"),
    # the schedule rose from lr to min_lr instead of decaying
    (["train", "--set", "min_lr=0.01"], "Error: min_lr must be <= lr (the learning rate decays from lr to "
                                        "min_lr), got 0.01 > 0.002"),
    (["train", "--set", "min_lr=0.04", "--set", "lr=0.05"], "Error: min_lr must be <= plain_lr (the learning "
                                                            "rate decays from plain_lr to min_lr), got 0.04 > 0.03"),
    (["pretrain", "--set", "min_lr=0.01"], "Error: min_lr must be <= lr (the learning rate decays from lr to "
                                           "min_lr), got 0.01 > 0.002"),
])
def test_a_bad_set_is_a_usage_error_naming_the_key(tmp_path, args, message):
    """hour_offset (the encoding's) was a traceback; `--set lr` said lr was unknown; a negative seed
    failed late with numpy's 'expected non-negative integer'."""
    log = _log(tmp_path / "log.jsonl", [EVENT])
    res = _run([*args, "--data", log, "--out", tmp_path / "out"])
    assert res.exit_code == 2, res.output
    assert message in res.output


@pytest.mark.parametrize("verb", ["train", "pretrain", "evaluate", "evaluate-rerank"])
def test_an_out_that_cannot_be_a_directory_is_one_line(tmp_path, verb):
    """Was a NotADirectoryError traceback (train and pretrain only after reading the log)."""
    log = _log(tmp_path / "log.jsonl", [EVENT])
    (tmp_path / "ck").mkdir()
    out = log / "out"
    args = {"train": ["train", "--data", log], "pretrain": ["pretrain", "--data", log],
            "evaluate": ["evaluate", tmp_path / "ck", "--data", log],
            "evaluate-rerank": ["evaluate-rerank", tmp_path / "ck", "--data", log]}[verb]
    res = _run([*args, "--out", out])
    assert res.exit_code == 1
    assert res.output.endswith(f"Error: {out}: cannot create the output directory: Not a directory\n")


def test_load_refuses_an_out_that_is_its_own_input(tmp_path):
    """`load rees46 X.csv --out X.csv` replaced the dataset with the log."""
    csv = tmp_path / "events.csv"
    text = ("event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
            "2019-10-01 00:00:00 UTC,view,1,2,a.b,x,1.0,3,s\n")
    csv.write_text(text)
    res = _run(["load", "rees46", csv, "--out", csv])
    assert res.exit_code == 2
    assert f"Invalid value for --out: {csv} is an input of the dataset; the log would replace it" in res.output
    assert csv.read_text() == text


def test_load_with_an_out_in_no_directory_is_a_usage_error(tmp_path):
    (tmp_path / "ml").mkdir()
    (tmp_path / "f").write_text("keep")
    res = _run(["load", "movielens", tmp_path / "ml", "--out", tmp_path / "f" / "log.jsonl"])
    assert res.exit_code == 2
    assert f"Invalid value for --out: {tmp_path / 'f'} is not a directory" in res.output


def test_load_movielens_names_a_missing_column(tmp_path):
    """Was `invalid literal for int() with base 10: '4.0'`: the columns shifted."""
    d = tmp_path / "ml"
    d.mkdir()
    (d / "movies.csv").write_text("movieId,title,genres\n1,A,Comedy\n")
    (d / "ratings.csv").write_text("userId,movieId,timestamp\n1,1,4.0,964982703\n")
    res = _run(["load", "movielens", d, "--out", tmp_path / "log.jsonl"])
    assert res.exit_code == 1
    assert res.output.endswith(f"Error: {d / 'ratings.csv'}: has columns ['userId', 'movieId', 'timestamp'], "
                               "expected userId, movieId, rating, timestamp (MovieLens)\n")


def test_train_and_pretrain_do_not_write_over_each_others_directories(tmp_path):
    """Both write encoding.json: pretraining into a checkpoint left weights and encoding at odds."""
    log = _log(tmp_path / "log.jsonl", [EVENT])
    ck, pt = tmp_path / "ck", tmp_path / "pt"
    ck.mkdir()
    pt.mkdir()
    (ck / "model_card.json").write_text("{}")
    (ck / "encoding.json").write_text("checkpoint's")
    (pt / "pretrain.json").write_text("{}")
    (pt / "encoding.json").write_text("pretraining's")
    res = _run(["pretrain", "--data", log, "--out", ck])
    assert res.exit_code == 2
    assert f"Invalid value for --out: {ck} holds a checkpoint of `interest-stream train`; give another one" \
        in res.output
    res = _run(["train", "--data", log, "--out", pt])
    assert res.exit_code == 2
    assert f"Invalid value for --out: {pt} holds an `interest-stream pretrain` directory; give another one" \
        in res.output
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    res = _run(["train", "--data", log, "--out", gpt2, "--init-from", gpt2])
    assert res.exit_code == 2
    assert "the checkpoint would overwrite the --init-from directory; give another one" in res.output
    assert (ck / "encoding.json").read_text() == "checkpoint's"
    assert (pt / "encoding.json").read_text() == "pretraining's"


def test_train_out_on_its_init_froms_backbone_is_refused(tmp_path):
    """`train --out PT/backbone --init-from PT` replaced the backbone's config.json and weights with the
    checkpoint's; the next `--init-from PT` trained a default GPT-2 (124M) from random weights. A
    directory inside PT or around it is another one (a checkpoint writes at the top of --out)."""
    log = _log(tmp_path / "log.jsonl", [EVENT])
    pt = tmp_path / "pt"
    (pt / "backbone").mkdir(parents=True)
    (pt / "pretrain.json").write_text("{}")
    (pt / "backbone" / "config.json").write_text("backbone's")
    for out in (pt / "backbone", pt / "backbone" / "x" / ".."):
        res = _run(["train", "--data", log, "--out", out, "--init-from", pt])
        assert res.exit_code == 2, res.output
        assert f"Invalid value for --out: {out} is the backbone of the --init-from directory {pt}, whose files " \
               "the checkpoint would replace; give another one" in " ".join(res.output.split()), res.output
    assert (pt / "backbone" / "config.json").read_text() == "backbone's"
    for out in (pt / "ft", tmp_path):  # inside it, and holding it
        res = _run(["train", "--data", log, "--out", out, "--init-from", pt])
        assert "--init-from directory" not in res.output, res.output


def test_train_refuses_a_size_that_is_not_its_init_froms(tmp_path):
    """`--set n_embd=32 --init-from PT` trained the backbone's 16 without a word."""
    log = _log(tmp_path / "log.jsonl", [EVENT])
    pt = tmp_path / "pt"
    (pt / "backbone").mkdir(parents=True)
    (pt / "pretrain.json").write_text("{}")
    (pt / "backbone" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_head": 2,
                                                             "n_embd": 16}))
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 12}))
    for init, sets, message in (
            (pt, ["n_embd=32"], f"--set n_embd=32: the --init-from backbone has n_embd 16 ({pt / 'backbone'}"),
            (pt, ["n_embd=16", "n_layer=2"], "--set n_layer=2: the --init-from backbone has n_layer 1"),
            (gpt2, ["n_layer=2"], f"--set n_layer=2: the --init-from backbone has n_layer 12 ({gpt2}")):
        res = _run(["train", "--data", log, "--out", tmp_path / "out", "--init-from", init,
                    *[a for kv in sets for a in ("--set", kv)]])
        assert res.exit_code == 2, res.output
        assert f"Error: {message}" in " ".join(res.output.split()), res.output
    assert not (tmp_path / "out").exists()


def test_train_refuses_a_backbone_shorter_than_its_encoding_before_reading_the_log(tmp_path):
    """A GPT-2 of 16 positions under the encoding's 128 tokens was found by build_model, once the log
    had been read (minutes on a large one). This log would be refused too: it has no event."""
    pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2Model

    g = tmp_path / "g"
    GPT2Model(GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=1, n_head=2)).save_pretrained(g)
    empty = _log(tmp_path / "empty.jsonl", [])
    res = _run(["train", "--data", empty, "--out", tmp_path / "out", "--init-from", g])
    assert res.exit_code == 2, res.output
    assert res.output.splitlines()[-1] == (f"Error: --init-from {g}: its backbone has n_positions 16, fewer than "
                                           "the encoding's max_len 128; give --set max_len=16 (or less) or another "
                                           "backbone")
    res = _run(["train", "--data", empty, "--out", tmp_path / "out", "--init-from", g, "--set", "max_len=16"])
    assert res.exit_code == 1 and res.output.startswith(f"Error: {empty}: no valid events"), res.output


def test_train_on_a_log_of_one_timestamp_says_it_cannot_be_split(tmp_path):
    """Every event at one ts: "no categorised events in the training data", of a log of clicks."""
    pytest.importorskip("torch")
    log = _log(tmp_path / "log.jsonl", [dict(EVENT, event_id=f"e{i}", user_id=f"u{i % 2}") for i in range(6)])
    res = _run(["train", "--data", log, "--out", tmp_path / "ck"])
    assert res.exit_code == 1, res.output
    assert res.output.endswith(f"Error: {log}: no event lies before the validation period (t1 {EVENT['ts']} ms): "
                               "the split is by time, so the log must span several timestamps\n")


def test_pretrain_refuses_the_same_log_twice(tmp_path, monkeypatch):
    """--data X --data X read the log twice: its events twice, its users in training and validation.
    So did a copy of X."""
    pytest.importorskip("torch")
    import models.pretrain

    ran = []
    monkeypatch.setattr(models.pretrain, "run_pretraining", lambda *a, **k: ran.append(a))
    log = _log(tmp_path / "log.jsonl", [EVENT])
    other = _log(tmp_path / "other.jsonl", [EVENT | {"event_id": "e2"}])  # as long, not a copy
    (tmp_path / "link.jsonl").symlink_to(log)
    (tmp_path / "hard.jsonl").hardlink_to(log)
    for again, why in [(log, ""), (tmp_path / "link.jsonl", f" (the same file as {log})"),
                       (tmp_path / "hard.jsonl", f" (the same file as {log})"),
                       (shutil.copy(log, tmp_path / "copy.jsonl"), f" (a copy of {log})")]:
        res = _run(["pretrain", "--data", log, "--data", other, "--data", again, "--out", tmp_path / "pt"])
        assert res.exit_code == 2, res.output
        assert res.output.splitlines()[-1] == f"Error: Invalid value for --data: {again} is given twice{why}"
    assert ran == []
    res = _run(["pretrain", "--data", log, "--data", other, "--out", tmp_path / "pt"])
    assert res.exit_code == 0, res.output
    assert len(ran) == 1 and ran[0][0] == [str(log), str(other)]


def _fake_checkpoint(d):
    """The names `train` writes, a readable config, and weights that are not safetensors."""
    from models.model import ModelConfig

    d.mkdir()
    cfg = ModelConfig(vocab_size=20, k=2, category_offset=3, n_layer=1, n_embd=8, n_head=2)
    (d / "config.json").write_text(json.dumps({"model": asdict(cfg)}))
    for name in ("encoding.json", "model_card.json"):
        (d / name).write_text("{}")
    (d / "model.safetensors").write_bytes(b"\x01\x02")
    return d


def test_evaluate_a_corrupt_or_pretrain_directory(tmp_path):
    """Corrupt weights were a SafetensorError traceback (export and evaluate-rerank said it in a line)."""
    pytest.importorskip("torch")
    log = _log(tmp_path / "log.jsonl", [EVENT])
    ck = _fake_checkpoint(tmp_path / "ck")
    res = _run(["evaluate", ck, "--data", log, "--out", tmp_path / "ev"])
    assert res.exit_code == 1
    assert res.output.endswith(f"Error: {ck}: not a readable checkpoint (SafetensorError: Error while "
                               "deserializing header: header too small)\n")
    pt = tmp_path / "pt"
    pt.mkdir()
    (pt / "pretrain.json").write_text("{}")
    for verb in ("evaluate", "evaluate-rerank", "export"):
        res = _run([verb, pt, *(["--data", log] if verb != "export" else []), "--out", tmp_path / "o"])
        assert res.exit_code == 1
        assert res.output.endswith(f"Error: {pt}: an `interest-stream pretrain` directory, not a checkpoint of "
                                   f"`train` (`train --init-from {pt}` fine-tunes it)\n"), (verb, res.output)


WINDOW = "window must be null or an object of integers (horizon_s, max_events, profile_retention_s), got "
PRIOR = "category_prior must be null or an object of finite non-negative numbers (category: share), got "


@pytest.mark.parametrize("name, text, message", [
    # an AttributeError traceback ('list' object has no attribute 'get') in all three verbs
    ("model_card.json", "[]", "model_card.json is not a JSON object: []"),
    ("model_card.json", "3", "model_card.json is not a JSON object: 3"),
    # export wrote these into a model.json the worker refuses
    ("model_card.json", '{"window": "x"}', f'model_card.json: {WINDOW}"x"'),
    ("model_card.json", '{"window": {"horizon_s": "1d"}}', f'model_card.json: {WINDOW}{{"horizon_s": "1d"}}'),
    ("model_card.json", '{"category_prior": [1]}', f"model_card.json: {PRIOR}[1]"),
    # one the worker refuses too (the re-ranking's log-lift needs a share >= 0)
    ("model_card.json", '{"category_prior": {"books": -0.5}}', f'model_card.json: {PRIOR}{{"books": -0.5}}'),
    ("model_card.json", '{"category_prior": {"books": Infinity}}', f'model_card.json: {PRIOR}{{"books": Infinity}}'),
    ("model_card.json", '{"split": []}', "model_card.json: split must be an object, got []"),
    # torch.set_num_threads' TypeError traceback in evaluate and evaluate-rerank
    ("model_card.json", '{"training": {"threads": "x"}}',
     'model_card.json: training.threads must be an integer >= 1, got "x"'),
    ("model_card.json", "{", "model_card.json is not valid JSON: Expecting property name enclosed in double "
                             "quotes: line 1 column 2 (char 1)"),
    ("config.json", "[]", "config.json is not a JSON object: []"),
])
@pytest.mark.parametrize("verb", ["evaluate", "evaluate-rerank", "export"])
def test_a_bad_card_or_config_is_one_line_naming_the_file(tmp_path, verb, name, text, message):
    """The card is checked before the weights (these have none that load), once, where the
    checkpoint is read (models.model.load_checkpoint)."""
    pytest.importorskip("torch")
    log = _log(tmp_path / "log.jsonl", [EVENT])
    ck = _fake_checkpoint(tmp_path / "ck")
    (ck / name).write_text(text)
    res = _run([verb, ck, *(["--data", log] if verb != "export" else []), "--out", tmp_path / "o"])
    assert res.exit_code == 1
    said = f"cannot load the checkpoint: ValueError: {message}" if verb == "export" else \
        f"not a readable checkpoint (ValueError: {message})"
    assert res.output == f"Error: {ck}: {said}\n"


@pytest.mark.slow
def test_a_card_without_a_whole_time_split_is_evaluated_by_nothing_but_exported(tmp_path):
    """evaluate read the card's split with card["split"], both evaluations its data config with
    split["data_config"]: KeyError tracebacks, and a TypeError one for a string in it. Export
    needs no split (the tests' own checkpoints record another kind)."""
    pytest.importorskip("torch")
    from tiny_model import build_tiny_checkpoint

    ck = build_tiny_checkpoint(tmp_path / "ck", steps=2)[0]
    log = _log(tmp_path / "log.jsonl", [EVENT])
    whole = "model_card.json: split must be the time split `train` records (by, t1, t2, data_config)"
    for card, message in [
        ({}, "the checkpoint's card has no time split (not written by `train`)"),
        ({"split": {"by": "time"}}, f'{whole}, got {{"by": "time"}}'),
        ({"split": {"by": "time", "t1": 1, "t2": 2, "data_config": {"horizon_s": "1d"}}},
         f"{whole}: '<' not supported between instances of 'str' and 'int'"),
    ]:
        (ck / "model_card.json").write_text(json.dumps(card))
        for verb in ("evaluate", "evaluate-rerank"):
            res = _run([verb, ck, "--data", log, "--out", tmp_path / "o"])
            assert res.exit_code == 1
            assert res.output == f"Error: {ck}: {message}\n", (verb, card)
        res = _run(["export", ck, "--out", tmp_path / "x"])
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / "x" / "model.json").read_text())["window"] is None


@pytest.mark.slow
def test_resume_refuses_another_log_or_other_settings(tmp_path):
    """--resume took the interrupted run's split and encoding and trained on whatever --data and
    options it was given, mixing both runs. The same log copied elsewhere resumes."""
    pytest.importorskip("torch")
    from models.simulate import simulate_to_files

    log, other = tmp_path / "s.jsonl", tmp_path / "other.jsonl"
    simulate_to_files(30, 3, 0, log)
    simulate_to_files(30, 3, 1, other)
    ck = tmp_path / "ck"
    tiny = ["--quiet", "--max-steps", "2", "--max-train-samples", "200", "--set", "n_layer=1", "--set", "n_embd=16",
            "--set", "n_head=2", "--set", "max_len=48", "--set", "plain_steps=2", "--set", "threads=1",
            "--set", "refit=0", "--set", "item_lift=0", "--set", "queries=off"]
    assert _run(["train", "--data", log, "--out", ck, *tiny]).exit_code == 0
    res = _run(["train", "--data", other, "--out", ck, "--resume", *tiny])
    assert res.exit_code == 2
    assert res.output.endswith(f"Error: --resume: the run in {ck} was started on {log} ({log.stat().st_size} bytes), "
                               f"not on this --data ({other.stat().st_size} bytes): give that log, or another --out\n")
    res = _run(["train", "--data", log, "--out", ck, "--resume", "--horizon-s", "3600", *tiny, "--set", "lr=0.001"])
    assert res.exit_code == 2
    assert res.output.endswith(f"Error: --resume: the run in {ck} was started with other settings (horizon_s 86400 "
                               "then, 3600 now; lr 0.002 then, 0.001 now): give the same options, or another --out\n")
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(log.read_bytes())
    res = _run(["train", "--data", copy, "--out", ck, "--resume", *tiny, "--set", "threads=2"])
    assert res.exit_code == 0, res.output
    # a model setting given at its default is the same setting (it was "loss None then, 'kl' now")
    res = _run(["train", "--data", log, "--out", ck, "--resume", "--loss", "kl", *tiny, "--set", "dropout=0.1"])
    assert res.exit_code == 0, res.output


@pytest.mark.slow
def test_resume_never_takes_the_training_state_of_an_earlier_run(trained, tmp_path, monkeypatch):
    """A run left its train_state.pt; a new run with other settings rewrote resume.json and stopped
    before its first save; `--resume` of it then loaded the earlier run's weights and optimizer
    ("resumed at step …"), its settings check passed against the new resume.json."""
    import models.train

    log, _ = trained
    ck = tmp_path / "ck"
    assert _run(["train", "--data", log, "--out", ck, *TINY_TRAIN]).exit_code == 0
    assert (ck / "train_state.pt").exists()

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(models.train, "fit", stopped)  # after resume.json is written, before any state is saved
        assert _run(["train", "--data", log, "--out", ck, *TINY_TRAIN, "--set", "lr=0.001"]).exit_code == 1
    assert not (ck / "train_state.pt").exists()
    res = _run(["train", "--data", log, "--out", ck, *TINY_TRAIN, "--set", "lr=0.001", "--resume"])
    assert res.exit_code == 0, res.output
    assert "resumed at step" not in res.output


@pytest.mark.slow
def test_init_from_a_train_checkpoint_or_a_corrupt_pretrain_directory(tmp_path):
    """A train checkpoint was read as a GPT-2 directory: a default 124M GPT-2 trained for minutes.
    A pretrain directory with corrupt weights was a SafetensorError traceback. Both are found
    before the log is read."""
    pytest.importorskip("torch")
    from transformers import GPT2Config

    from models.simulate import simulate_to_files

    log = tmp_path / "s.jsonl"
    simulate_to_files(20, 2, 0, log, 1_767_225_600_000)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    ck = _fake_checkpoint(tmp_path / "ck")
    pt = tmp_path / "pt"
    (pt / "backbone").mkdir(parents=True)
    (pt / "pretrain.json").write_text("{}")
    GPT2Config(n_layer=1, n_embd=8, n_head=2).to_json_file(pt / "backbone" / "config.json")
    (pt / "backbone" / "model.safetensors").write_bytes(b"\x01\x02")
    for d, message in ((ck, f"{ck}: a checkpoint of `interest-stream train`, not an `interest-stream pretrain` "
                            "directory or a GPT-2 directory"),
                       (pt, f"{pt}: cannot read this `interest-stream pretrain` directory (Error while "
                            "deserializing header: header too small)")):
        res = _run(["train", "--data", log, "--out", tmp_path / "out", "--max-steps", "1", "--quiet",
                    "--init-from", d])
        assert res.exit_code == 1, res.output
        assert res.output.endswith(f"Error: {message}\n")
        # found before the log is read (it was after: minutes on a large log); this one has no event
        res = _run(["train", "--data", empty, "--out", tmp_path / "out", "--quiet", "--init-from", d])
        assert (res.exit_code, res.output) == (1, f"Error: {message}\n")


ML_RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"
REES46 = ("event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
          "2019-10-01 00:00:00 UTC,view,1,2,a.b,x,1.0,3,s\n\n")  # the blank line counts as a line
REES46_ROW = dict(zip(REES46.splitlines()[0].split(","), REES46.splitlines()[1].split(",")))
CJ_TX = "household_id,basket_id,product_id,quantity,transaction_timestamp\n2,10,1,1,2017-01-01 10:00:00\n"


CORRUPT_GZ = gzip.compress(CJ_TX.encode())[:10] + b"\xff" * 20  # a gzip header, then no deflate stream


def _rees46(**fields):
    return REES46 + ",".join({**REES46_ROW, **fields}.values()) + "\n"


@pytest.mark.parametrize("verb, files, message", [
    # the first two were tracebacks (the second also left an earlier --out at 0 bytes); the others gave the
    # error without its file and line, or wrote a row that the worker and `load jsonl` refuse
    ("movielens", {"ratings.csv": ML_RATINGS + "2,1\n"}, "ratings.csv:3: the header has 4 fields, this row 2"),
    ("movielens", {"ratings.csv": ML_RATINGS + "1,1,4.0,99999999999999999\n"},
     "ratings.csv:3: timestamp '99999999999999999' is too large (ts is epoch ms up to 2**63-1)"),
    ("movielens", {"ratings.csv": ML_RATINGS + "1,1,4.0,x\n"}, "ratings.csv:3: timestamp 'x' is not an integer"),
    ("movielens", {"ratings.csv": ML_RATINGS + "1,1,4.0,-5\n"},
     "ratings.csv:3: timestamp '-5' is before 1970 (ts is a non-negative epoch in ms)"),
    ("movielens", {"ratings.csv": ML_RATINGS + ",1,4.0,964982703\n"}, "ratings.csv:3: userId is empty"),
    ("movielens", {"ratings.csv": ML_RATINGS + f"1,{'9' * 129},4.0,964982703\n"},
     "ratings.csv:3: movieId has 129 characters, more than the contract's 128"),
    ("movielens", {"ratings.csv": ML_RATINGS + f"{'9' * 127},1,4.0,964982703\n"},
     "ratings.csv:3: event_id r-<userId>-<movieId> has 131 characters, more than the contract's 128"),
    ("movielens", {"ratings.csv": ML_RATINGS + "1,1,nan,964982703\n"}, "ratings.csv:3: rating 'nan' is not a number"),
    ("movielens", {"ratings.csv": ML_RATINGS + "1,1,four,964982703\n"},
     "ratings.csv:3: rating 'four' is not a number"),
    ("movielens", {"ratings.csv": ML_RATINGS, "tags.csv": "userId,movieId,tag,timestamp\n1,1,funny,soon\n"},
     "tags.csv:2: timestamp 'soon' is not an integer"),
    ("movielens", {"ratings.csv": ML_RATINGS, "tags.csv": "userId,movieId,tag,timestamp\n,1,funny,964982703\n"},
     "tags.csv:2: userId is empty"),
    ("movielens", {"ratings.csv": ML_RATINGS, "movies.csv": "movieId,title,genres\n1,A,Comedy\n2\n"},
     "movies.csv:3: the header has 3 fields, this row 1"),
    ("rees46", {"events.csv": _rees46(user_id="")}, "events.csv:4: user_id is empty"),
    ("rees46", {"events.csv": _rees46(user_id="u" * 129)},
     "events.csv:4: user_id has 129 characters, more than the contract's 128"),
    ("rees46", {"events.csv": _rees46(product_id="")}, "events.csv:4: product_id is empty"),
    ("rees46", {"events.csv": _rees46(event_time="2019-10-01")},
     "events.csv:4: event_time '2019-10-01' is not YYYY-MM-DD hh:mm:ss UTC"),
    ("rees46", {"events.csv": _rees46(event_time="1969-12-31 23:59:59 UTC")},
     "events.csv:4: event_time '1969-12-31 23:59:59 UTC' is before 1970 (ts is a non-negative epoch in ms)"),
    ("rees46", {"events.csv": _rees46(price="abc")}, "events.csv:4: price 'abc' is not a number"),
    ("rees46", {"events.csv": REES46 + "2019-10-01 00:00:00 UTC,view,1,2,a.b,x,1.0\n"},
     "events.csv:4: the header has 9 fields, this row 7"),
    ("completejourney", {"transactions.csv": CJ_TX + ",11,1,1,2017-01-01 10:00:00\n"},
     "transactions.csv:3: household_id is empty"),
    ("completejourney", {"transactions.csv": CJ_TX + "2,,1,1,2017-01-01 10:00:00\n"},
     "transactions.csv:3: basket_id is empty"),
    ("completejourney", {"transactions.csv": CJ_TX + f"2,11,{'9' * 129},1,2017-01-01 10:00:00\n"},
     "transactions.csv:3: product_id has 129 characters, more than the contract's 128"),
    ("completejourney", {"transactions.csv": CJ_TX + f"2,{'9' * 124},1,1,2017-01-01 10:00:00\n"},
     "transactions.csv:3: event_id cj-<basket_id>-<product_id> has 129 characters, more than the contract's 128"),
    ("completejourney", {"transactions.csv": CJ_TX + "2,11,1,x,2017-01-01 10:00:00\n"},
     "transactions.csv:3: quantity 'x' is not an integer"),
    ("completejourney", {"transactions.csv": CJ_TX + "2,11,1,99999999999999999999,2017-01-01 10:00:00\n"},
     "transactions.csv:3: quantity '99999999999999999999' is too large"),
    ("completejourney", {"transactions.csv": CJ_TX + "2,11,1,1,1969-12-31 23:59:59\n"},
     "transactions.csv:3: transaction_timestamp '1969-12-31 23:59:59' is before 1970 (ts is a non-negative "
     "epoch in ms)"),
    ("completejourney", {"transactions.csv": CJ_TX + "2,11,1,1,01/01/2017 10:00\n"},
     "transactions.csv:3: transaction_timestamp '01/01/2017 10:00' is not YYYY-MM-DD hh:mm:ss"),
    ("completejourney", {"transactions.csv": CJ_TX, "products.csv": "product_id,department,product_category\n1\n"},
     "products.csv:2: the header has 3 fields, this row 1"),
    # a file that is not UTF-8 was named by neither file nor line ("'utf-8' codec can't decode byte 0xe9 in
    # position 52"), a file named .gz that is not one by neither either
    ("movielens", {"ratings.csv": ML_RATINGS.encode() + b"1,2,4.0,9649\xe982703\n"},
     "ratings.csv:3: not UTF-8 text (byte 0xe9 at character 13)"),
    ("rees46", {"events.csv": REES46.encode() + b"2019-10-01 00:00:00 UTC,view,1,2,a.\xff,x,1.0,3,s\n"},
     "events.csv:4: not UTF-8 text (byte 0xff at character 36)"),
    ("completejourney", {"transactions.csv": CJ_TX, "products.csv": b"product_id,department,product_category\n"
                                                                    b"1,GRO\xc3CERY,BREAD\n"},
     "products.csv:2: not UTF-8 text (byte 0xc3 at character 6)"),
    ("completejourney", {"transactions.csv.gz": CJ_TX}, "transactions.csv.gz:1: not a whole gzip file (Not a gzipped "
                                                        "file (b'ho'))"),
    ("completejourney", {"transactions.csv.gz": CORRUPT_GZ},
     "transactions.csv.gz:1: not a whole gzip file (Error -3 while decompressing data: invalid block type)"),
    # the character counts characters, not bytes: the bad byte follows "Amélie, " (8 characters, 9 bytes)
    ("movielens", {"ratings.csv": ML_RATINGS, "movies.csv": "movieId,title,genres\n1,A,Comedy\n".encode()
                   + '2,"Amélie, '.encode() + b'\xe9",Comedy\n'},
     "movies.csv:3: not UTF-8 text (byte 0xe9 at character 12)"),
    # a row with more fields than the header (one with fewer is above)
    ("movielens", {"ratings.csv": ML_RATINGS + "1,2,4.0,964982703,extra\n"}, "ratings.csv:3: the header has 4 fields, "
                                                                            "this row 5"),
    ("completejourney", {"transactions.csv": CJ_TX + "2,11,1,1,2017-01-01 10:00:00,extra\n"},
     "transactions.csv:3: the header has 5 fields, this row 6"),
    ("movielens", {"ratings.csv": ML_RATINGS, "tags.csv": "userId,movieId,tag,timestamp\n1,,funny,964982703\n"},
     "tags.csv:2: movieId is empty"),
    # the csv module's own errors were tracebacks
    ("movielens", {"ratings.csv": ML_RATINGS + '1,"' + "x" * 131_073 + '",4.0,964982703\n'},
     "ratings.csv:3: not CSV (field larger than field limit (131072))"),
])
def test_load_a_bad_row_names_its_file_line_and_column_and_leaves_out_alone(tmp_path, verb, files, message):
    """A load writes no event outside the contract: a bad row stops it with one line naming the file,
    the line (the header is line 1) and the column, and an earlier --out stays as it was."""
    d = tmp_path / "data"
    d.mkdir()
    defaults = {"movielens": {"movies.csv": "movieId,title,genres\n1,A,Comedy\n"},
                "completejourney": {"products.csv": "product_id,department,product_category\n1,GROCERY,BREAD\n"}}
    for name, text in {**defaults.get(verb, {}), **files}.items():
        (d / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "log.jsonl"
    out.write_text("the log of an earlier run\n")
    res = _run(["load", verb, d / "events.csv" if verb == "rees46" else d, "--out", out])
    assert res.exit_code == 1 and res.output == f"Error: {d}/{message}\n"
    assert out.read_text() == "the log of an earlier run\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "data", "log.jsonl"]


@pytest.mark.parametrize("verb, files", [
    ("movielens", {"movies.csv": "movieId,title,genres\n1,A,Comedy\n",
                   "ratings.csv": ML_RATINGS + f"{'9' * 124},8,4.0,0\n"}),
    ("rees46", {"events.csv": _rees46(user_id="u" * 128, product_id="p" * 128, price="")}),
    ("completejourney", {"products.csv": "product_id,department,product_category\n1,GROCERY,BREAD\n",
                         "transactions.csv": CJ_TX + f"{'9' * 128},{'8' * 123},1,,1970-01-01 00:00:00\n"}),
])
def test_load_takes_the_contract_limits_themselves(tmp_path, verb, files):
    """The contract's own limits load: ids and event_ids of 128 characters, ts 0."""
    d = tmp_path / "data"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    res = _run(["load", verb, d / "events.csv" if verb == "rees46" else d, "--out", tmp_path / "log.jsonl"])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2


def test_load_writes_through_a_link_to_its_out_file(tmp_path):
    """The log moves into place over the file a link names, not over the link."""
    d = tmp_path / "ml"
    d.mkdir()
    (d / "movies.csv").write_text("movieId,title,genres\n1,A,Comedy\n")
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    (tmp_path / "logs").mkdir()
    (tmp_path / "log.jsonl").symlink_to(tmp_path / "logs" / "ml.jsonl")
    assert _run(["load", "movielens", d, "--out", tmp_path / "log.jsonl"]).exit_code == 0
    assert (tmp_path / "log.jsonl").is_symlink() and '"user_id":"1"' in (tmp_path / "logs" / "ml.jsonl").read_text()
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["ml.jsonl"]


def test_load_writes_a_pipe_in_place(tmp_path):
    """An --out that is a pipe or a device (/dev/stdout) is written, not replaced by a file (the
    first form of the move replaced /dev/stdout itself)."""
    import os
    import stat
    import threading

    d = tmp_path / "ml"
    d.mkdir()
    (d / "movies.csv").write_text("movieId,title,genres\n1,A,Comedy\n")
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert _run(["load", "movielens", d, "--out", fifo]).exit_code == 0
    reader.join(10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and got and b'"user_id":"1"' in got[0]


def test_load_completejourney_a_truncated_gzip_is_one_line(tmp_path):
    """Was "Aborted!": click read the EOFError as the user's Ctrl-D."""
    import gzip

    d = tmp_path / "cj"
    d.mkdir()
    (d / "products.csv").write_text("product_id,department,product_category\n1,GROCERY,BREAD\n")
    rows = "".join(f"{i % 97},{i},{i * 7919 % 10007},2017-01-01 10:00:00\n" for i in range(5000))  # 5000 differing
    whole = gzip.compress(f"household_id,basket_id,product_id,transaction_timestamp\n{rows}".encode())
    (d / "transactions.csv.gz").write_bytes(whole[:len(whole) // 2])
    res = _run(["load", "completejourney", d, "--out", tmp_path / "log.jsonl"])
    assert res.exit_code == 1
    line = res.output.splitlines()[-1]
    assert line.startswith(f"Error: {d}/transactions.csv.gz:") and line.endswith(
        ": not a whole gzip file (Compressed file ended before the end-of-stream marker was reached)")
    assert 2 <= int(line[len(f"Error: {d}/transactions.csv.gz:"):].split(":")[0]) <= 5001  # the first line unread


def test_load_jsonl_refuses_a_pipe(tmp_path):
    """A log read from a pipe was empty the second time (checked whole, then sent): "sent 0 events",
    exit 0. Refused before anything is read or any broker is asked."""
    import os

    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    res = _run(["load", "jsonl", fifo])
    assert res.exit_code == 1
    assert res.output == (f"Error: {fifo} is not a regular file: the log is read twice (checked whole, then sent); "
                          "save it to a file first\n")


def test_load_reads_a_file_whose_lines_end_in_a_lone_cr_as_text_mode_did(tmp_path):
    """Text mode with newline="" splits at a lone \\r (old Mac line ends); the loaders' binary read
    first split at \\n only, and such a file was one line the csv module refused with a traceback."""
    d = tmp_path / "ml"
    d.mkdir()
    (d / "movies.csv").write_bytes(b"movieId,title,genres\r1,A,Comedy\r2,B,Drama\r")
    (d / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\r1,1,4.0,964982703\r1,2,3.0,964982704\r")
    res = _run(["load", "movielens", d, "--out", tmp_path / "log.jsonl"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(e["item_id"], e["category"], e["ts"]) for e in rows] == [("1", "Comedy", 964982703000),
                                                                      ("2", "Drama", 964982704000)]


BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark, which Excel and Windows tools write at the start of a CSV


@pytest.mark.parametrize("verb, files", [
    ("movielens", {"movies.csv": "movieId,title,genres\n1,A,Comedy\n", "ratings.csv": ML_RATINGS,
                   "tags.csv": "userId,movieId,tag,timestamp\n1,1,funny,964982704\n"}),
    ("rees46", {"events.csv": REES46}),
    ("completejourney", {"products.csv": "product_id,department,product_category\n1,GROCERY,BREAD\n",
                         "transactions.csv.gz": CJ_TX}),
])
def test_load_reads_files_that_start_with_a_byte_order_mark_as_without(tmp_path, verb, files):
    """A CSV saved by Excel starts with a byte order mark: its first column's name was read with it
    ('\\ufeffuserId') and the whole load refused ("has columns ['\\ufeffuserId', ...]")."""
    logs = []
    for bom in (b"", BOM):
        d = tmp_path / f"data{len(bom)}"
        d.mkdir()
        for name, text in files.items():
            raw = bom + text.encode()
            (d / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
        out = tmp_path / f"log{len(bom)}.jsonl"
        res = _run(["load", verb, d / "events.csv" if verb == "rees46" else d, "--out", out])
        assert res.exit_code == 0, res.output
        logs.append(out.read_text())
    assert logs[1] == logs[0] and len(logs[0].splitlines()) == (2 if verb == "movielens" else 1)


TINY_TRAIN = ["--quiet", "--max-steps", "2", "--max-train-samples", "200", "--set", "n_layer=1", "--set", "n_embd=16",
              "--set", "n_head=2", "--set", "max_len=48", "--set", "plain_steps=2", "--set", "threads=1",
              "--set", "refit=0", "--set", "item_lift=0", "--set", "queries=off"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(log, checkpoint) of a tiny `train` run on a small simulated log; tests copy it to change it."""
    pytest.importorskip("torch")
    from models.simulate import simulate_to_files

    d = tmp_path_factory.mktemp("trained")
    log, ck = d / "s.jsonl", d / "ck"
    simulate_to_files(30, 3, 0, log)
    res = _run(["train", "--data", log, "--out", ck, *TINY_TRAIN])
    assert res.exit_code == 0, res.output
    return log, ck


@pytest.mark.slow
def test_evaluate_an_out_it_cannot_write_into_is_one_line(trained, tmp_path):
    """An IsADirectoryError traceback, after the whole evaluation (evaluate-rerank said it in a line)."""
    log, ck = trained
    out = tmp_path / "ev"
    (out / "metrics.json").mkdir(parents=True)
    res = _run(["evaluate", ck, "--data", log, "--out", out, "--no-plots"])
    assert res.exit_code == 1
    assert res.output == f"Error: {out / 'metrics.json'}: Is a directory\n"


def test_an_evaluation_of_one_test_user_is_refused(trained, tmp_path):
    """With one test user, evaluate and evaluate-rerank printed zero-width intervals (gain CI95
    [0.1416, 0.1416]): they resample users, and one user is resampled into itself."""
    from collections import Counter

    import orjson

    log, ck = trained
    events = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    test_start = json.loads((ck / "model_card.json").read_text())["split"]["t2"]
    # the test period's only user (its busiest one there); everyone's history before it
    kept = Counter(e["user_id"] for e in events if e["ts"] >= test_start).most_common(1)[0][0]
    one = tmp_path / "one.jsonl"
    one.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events if e["ts"] < test_start or e["user_id"] == kept))
    for verb in ("evaluate", "evaluate-rerank"):
        res = _run([verb, ck, "--data", one, "--out", tmp_path / verb])
        assert (res.exit_code, res.output) == (1, f"Error: {one}: the test split holds 1 user(s) under the "
                                                  "checkpoint's split; the intervals resample users, so an "
                                                  "evaluation needs two at least\n"), verb
    res = _run(["evaluate", ck, "--data", log, "--out", tmp_path / "all", "--no-plots"])  # 30 users: evaluated
    assert res.exit_code == 0, res.output


@pytest.mark.slow
def test_resume_from_a_cut_training_state_is_one_line(trained, tmp_path):
    """A train_state.pt cut short (a run killed while saving it) was a RuntimeError traceback from
    torch.load (an UnpicklingError one for a file that is not a state at all)."""
    import shutil

    log, ck = trained
    run = tmp_path / "ck"
    shutil.copytree(ck, run)
    state = run / "train_state.pt"
    for data, why in (((ck / "train_state.pt").read_bytes()[:2000],
                       "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central "
                       "directory. This is an internal miniz error. If yo"),
                      (b"hello\n", "UnpicklingError: Memo value not found at index 101")):
        state.write_bytes(data)
        res = _run(["train", "--data", log, "--out", run, "--resume", *TINY_TRAIN])
        assert res.exit_code == 1
        assert res.output.endswith(f"\nError: {state} is not a readable training state ({why}): start the run "
                                   "again without --resume\n"), res.output[-300:]


@pytest.mark.slow
def test_a_run_killed_while_saving_its_training_state_leaves_the_last_one_whole(trained, tmp_path, monkeypatch):
    """torch.save wrote over train_state.pt in place: a Ctrl-C in it left a cut file that --resume
    could not read, where the state saved before it was whole. The run saves its state at step 1
    and is stopped while saving it at step 2."""
    import torch

    log, _ = trained
    run = tmp_path / "ck"
    save, saved = torch.save, []

    def killed(obj, path, *a, **kw):
        if not saved:
            save(obj, path, *a, **kw)
            saved.append(Path(path).read_bytes())
            return
        Path(path).write_bytes(b"cut")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    res = _run(["train", "--data", log, "--out", run, *TINY_TRAIN, "--set", "eval_every=1"])
    assert res.exit_code == 1 and res.output.endswith("Aborted!\n"), res.output[-300:]
    assert (run / "train_state.pt").read_bytes() == saved[0]
    assert not (run / "train_state.pt.part").exists()


def test_load_of_a_dataset_that_makes_no_events_is_one_line_and_leaves_out_alone(tmp_path):
    """A ratings.csv, a REES46 file or a transactions.csv of its header only wrote an empty log and
    said 'wrote 0 events' (exit 0); every later command refused the log."""
    ml = tmp_path / "ml"
    ml.mkdir()
    (ml / "movies.csv").write_text("movieId,title,genres\n1,A,Comedy\n")
    (ml / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    rees = tmp_path / "rees.csv"
    rees.write_text("event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n")
    cj = tmp_path / "cj"
    cj.mkdir()
    (cj / "products.csv").write_text("product_id,department,product_category,product_type\n1,GROCERY,ICE,ICE\n")
    (cj / "transactions.csv").write_text("household_id,basket_id,product_id,quantity,sales_value,"
                                         "transaction_timestamp\n")
    out = tmp_path / "log.jsonl"
    out.write_text("earlier\n")
    for verb, src, counts in [
        ("movielens", ml, "ratings 0, tags 0, tags_skipped_empty 0, movies_without_genre_row 0"),
        ("rees46", rees, "rows 0, skipped_type 0, no_category_code 0, repeated_rows 0"),
        ("completejourney", cj, "lines 0, households 0, baskets 0, categories_kept 30, category_list fixed, "
                                "lines_in_kept_categories 0, products_missing 0, repeated_lines 0"),
    ]:
        res = _run(["load", verb, src, "--out", out])
        assert res.exit_code == 1
        assert res.output == f"Error: {src}: no events to write ({counts}); nothing was written\n"
        assert out.read_text() == "earlier\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_load_onto_a_full_device_names_it(tmp_path):
    """A write that fails names no file: 'Error: [Errno 28] No space left on device'."""
    rees = tmp_path / "rees.csv"
    rees.write_text("event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
                    "2019-10-01 00:00:00 UTC,view,1,2,a.b,x,1.0,7,s\n")
    res = _run(["load", "rees46", rees, "--out", "/dev/full"])
    assert res.exit_code == 1
    assert res.output == "Error: /dev/full: No space left on device\n"


@pytest.mark.slow
def test_a_train_stopped_while_saving_over_a_checkpoint_leaves_none_export_takes(trained, tmp_path, monkeypatch):
    """A run stopped between the checkpoint's files, over an earlier checkpoint, left the earlier
    card (its split, window and prior) beside the new weights and encoding; export took the mix
    as whole and wrote the earlier window into model.json."""
    import shutil

    import models.model

    log, ck = trained
    run = tmp_path / "ck"
    shutil.copytree(ck, run)
    json_text = models.model.json_text

    def stopped(obj, name, **kw):
        if name == "model_card.json":
            raise KeyboardInterrupt
        return json_text(obj, name, **kw)

    monkeypatch.setattr(models.model, "json_text", stopped)
    res = _run(["train", "--data", log, "--out", run, "--horizon-s", "3600", *TINY_TRAIN])
    assert res.exit_code == 1 and res.output.endswith("Aborted!\n"), res.output[-300:]
    res = _run(["export", run, "--out", tmp_path / "x"])
    assert res.exit_code == 1
    assert res.output == f"Error: {run}: not a checkpoint directory (missing model_card.json)\n"


@pytest.mark.slow
def test_a_checkpoint_or_pretrain_directory_that_cannot_be_written_is_one_line(trained, tmp_path, monkeypatch):
    """A full disk was safetensors' "SafetensorError: Error while serializing: I/O error: No space
    left on device" in a traceback, after the whole training; so for pretrain (OSError)."""
    import safetensors.torch
    from safetensors import SafetensorError
    from transformers import GPT2Model

    log, _ = trained

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    ck = tmp_path / "ck"
    res = _run(["train", "--data", log, "--out", ck, *TINY_TRAIN])
    assert res.exit_code == 1 and res.exception is not None and not isinstance(res.exception, SafetensorError)
    assert res.output.endswith(f"\nError: {ck}/model.safetensors: cannot write: Error while serializing: I/O error: "
                               "No space left on device (os error 28)\n")
    assert not (ck / "model_card.json").exists()  # no checkpoint evaluate or export would take as whole

    def no_space(self, directory, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GPT2Model, "save_pretrained", no_space)
    pt = tmp_path / "pt"
    res = _run(["pretrain", "--data", log, "--out", pt, "--quiet", "--set", "max_steps=2", "--set", "n_layer=1",
                "--set", "n_embd=16", "--set", "n_head=2", "--set", "max_len=48", "--set", "threads=1"])
    assert res.exit_code == 1
    assert res.output.endswith(f"\nError: {pt}/backbone: cannot write: No space left on device\n")


@pytest.mark.slow
def test_a_log_of_one_category_is_refused_by_train(trained, tmp_path):
    """train made a model of one category (export took it, every vector {x: 1}), and evaluate ended in
    a ZeroDivisionError traceback: the baselines' KL was 0. So did any log with min_category_count
    above all but one category's count."""
    log, _ = trained
    one = tmp_path / "one.jsonl"
    with open(log) as src, open(one, "w") as dst:
        for line in src:
            e = json.loads(line)
            dst.write(json.dumps(e | {"category": "x"} if "category" in e else e) + "\n")
    for data, extra, count, cat in ((one, [], 5, "x"), (log, ["--set", "min_category_count=100000"], 100000, None)):
        res = _run(["train", "--data", data, "--out", tmp_path / "ck", *TINY_TRAIN, *extra])
        assert res.exit_code == 1, res.output
        line = res.output.splitlines()[-1]
        assert line.startswith(f"Error: {data}: the clicks and browses before the validation period have one "
                               f"category seen {count} times or more (")
        assert line.endswith("): a vector over one category is always 1, with nothing to learn or evaluate; give a "
                             "log of two or more (or a lower --set min_category_count)")
        assert cat is None or f"('{cat}')" in line


@pytest.mark.slow
def test_categories_with_dollar_signs_are_plotted_as_text(trained, tmp_path):
    """A category is free text: "price $0 to $9" went to matplotlib as mathtext, and evaluate ended
    in "Error: 0_to_ ^ ParseSyntaxException: Expected …" over several lines, without users.png."""
    log, _ = trained
    dollars = tmp_path / "d.jsonl"
    with open(log) as src, open(dollars, "w") as dst:
        for line in src:
            e = json.loads(line)
            dst.write(json.dumps(e | {"category": f"{e['category']} $0_to_$9"} if "category" in e else e) + "\n")
    ck, out = tmp_path / "ck", tmp_path / "ev"
    assert _run(["train", "--data", dollars, "--out", ck, *TINY_TRAIN]).exit_code == 0
    res = _run(["evaluate", ck, "--data", dollars, "--out", out])
    assert res.exit_code == 0, res.output
    assert (out / "users.png").stat().st_size > 0


def test_the_defaults_train_and_pretrain_help_show_are_the_configs():
    """`train --help` said the step cap was 2500 while TrainConfig's is 1500."""
    import re

    pytest.importorskip("torch")
    from models.data import DataConfig
    from models.model import TrainConfig
    from models.pretrain import PretrainConfig

    def shown(verb):  # option -> the [N] of its help (click starts each option's entry at two spaces)
        entries = re.split(r"\n  (?=--)", _run([verb, "--help"]).output)
        return {e.split()[0]: int(m[1]) for e in entries if (m := re.search(r"\[(\d+)\]", e))}

    t, d = TrainConfig(), DataConfig()
    assert shown("train") == {"--epochs": t.epochs, "--seed": t.seed, "--target-window-s": d.target_window_s,
                              "--target-k": d.target_k, "--horizon-s": d.horizon_s, "--max-events": d.max_events,
                              "--max-steps": t.max_steps, "--max-train-samples": d.max_train_samples}
    assert shown("pretrain")["--max-steps"] == PretrainConfig().max_steps


@pytest.mark.slow
def test_evaluate_says_whose_items_lift_the_baseline_is_given(trained, tmp_path):
    """The model here has no items' lift (item_lift=0), the baseline keeps one on its validation:
    evaluate said "given the items' lift too (as the model has one)"."""
    log, ck = trained
    res = _run(["evaluate", ck, "--data", log, "--out", tmp_path / "ev", "--no-plots"])
    assert res.exit_code == 0, res.output
    lifted = json.loads((tmp_path / "ev" / "metrics.json").read_text())["best_with_item_lift"]
    assert lifted["item_lift"]["kept"]
    assert (f"\nagainst {lifted['baseline']} given the items' lift too (chosen on its validation, as train chooses "
            f"the model's): its KL {lifted['kl']:.4f}, ratio {lifted['kl_ratio']:.4f}") in res.output
    assert "as the model has one" not in res.output
    assert "is not the log the checkpoint was trained on" not in res.output


@pytest.mark.slow
def test_evaluating_another_log_says_so(trained, tmp_path):
    """Households the model never saw are a use of evaluate and evaluate-rerank, but a reader of the
    figures must know: export --data said so, they did not. Another simulated population of the
    same shape gets a note, and metrics.json records it."""
    from models.simulate import simulate_to_files

    _, ck = trained
    other = tmp_path / "other.jsonl"
    simulate_to_files(30, 3, 1, other)
    note = (f"note: {other} is not the log the checkpoint was trained on (its sha256 differs from the model "
            "card's): its samples are cut at the card's split times\n")
    res = _run(["evaluate", ck, "--data", other, "--out", tmp_path / "ev", "--no-plots"])
    assert res.exit_code == 0 and note in res.output, res.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["another_log"] is True
    res = _run(["evaluate-rerank", ck, "--data", other, "--out", tmp_path / "rr", "--negatives", "5"])
    assert res.exit_code == 0 and note in res.output, res.output
    res = _run(["export", ck, "--out", tmp_path / "ex", "--int8", "--data", other])  # its own words, the same test
    assert res.exit_code == 0, res.output
    assert f"warning: {other} is not the file the checkpoint was trained on (sha256 differs)" in res.output


def test_train_names_a_log_that_is_a_pipe_and_the_hint_fits_the_target(tmp_path):
    """A pipe as --data was "Error: File or stream is not seekable.", naming neither; a 3-event log
    (the next 5 events chosen; six here, of two categories) was told to "try --target next_k", the
    target it had."""
    pytest.importorskip("torch")
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    res = _run(["train", "--data", fifo, "--out", tmp_path / "ck"])
    assert res.exit_code == 1
    assert res.output.endswith(f"Error: {fifo}: not a regular file: train needs the log as a file (a run records a "
                               "hash of its first and last MiB, which --resume compares), not a pipe\n")
    log = _log(tmp_path / "few.jsonl", [EVENT | {"event_id": f"e{i}", "ts": EVENT["ts"] + i * 60_000,
                                                 "category": "ab"[i % 2]} for i in range(6)])
    res = _run(["train", "--data", log, "--out", tmp_path / "ck", *TINY_TRAIN, "--set", "min_category_count=1"])
    assert res.exit_code == 1
    last = res.output.splitlines()[-1]
    assert last.startswith("Error: not enough data for a time split: no training or validation samples")
    assert last.endswith("; for a short log try a smaller --target-k, or a longer log"), last


@pytest.mark.parametrize("verb", ["evaluate", "evaluate-rerank", "export"])
def test_a_log_that_is_a_pipe_or_a_directory_is_refused_before_it_is_read(tmp_path, verb):
    """These hash the log besides reading it, to say whether it is the one the model was trained on.
    A pipe was read, then hashed empty: evaluate said it was another log than the card's (`another_log:
    true`) of the very log it was trained on; export called a pipe and a directory 'no such data file'."""
    ck = tmp_path / "ck"
    ck.mkdir()  # refused before the checkpoint is read
    pipe = tmp_path / "log.fifo"
    os.mkfifo(pipe)
    more = ["--int8"] if verb == "export" else []
    for data, why in ((pipe, f"not a regular file: {verb} needs the log as a file, not a pipe (it compares the "
                             "log's sha256 with the model card's, and a pipe can be read once)"),
                      (tmp_path, "a directory, not a data file")):
        if data == tmp_path and verb != "export":  # click's own refusal: Path(dir_okay=False)
            continue
        res = _run([verb, ck, "--data", data, "--out", tmp_path / "out", *more])
        assert (res.exit_code, res.output) == (1, f"Error: {data}: {why}\n")

"""The training-side verbs' mistakes are the user's to fix: one line and an exit code, never a
traceback, and never a file of the user's replaced without a word. Nothing here trains."""
from __future__ import annotations

import json
from dataclasses import asdict

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


@pytest.mark.parametrize("field, value", [
    ("user_id", ["u"]), ("event_id", {"x": 1}), ("category", 7), ("item_id", [5]), ("dwell_ms", "x"),
])
def test_a_log_whose_events_have_the_wrong_types_is_no_valid_events(tmp_path, field, value):
    """A list for an id was a TypeError traceback; a number for a category one deep in training."""
    pytest.importorskip("torch")
    from models.data import read_log

    log = _log(tmp_path / "log.jsonl", [dict(EVENT, **{field: value})])
    assert read_log(log)[1]["invalid"] == 1
    res = _run(["train", "--data", log, "--out", tmp_path / "ck"])
    assert res.exit_code == 1
    assert res.output.endswith(f"Error: {log}: no valid events\n")


@pytest.mark.parametrize("args, message", [
    (["train", "--set", "hour_offset=3"], "Invalid value for --set: unknown key 'hour_offset'; known keys: "),
    (["train", "--set", "lr"], "Invalid value for --set: expected KEY=VALUE, got 'lr'"),
    (["pretrain", "--set", "lr"], "Invalid value for --set: expected KEY=VALUE, got 'lr'"),
    (["train", "--set", "seed=-1"], "Error: seed must be >= 0, got -1"),
    (["train", "--seed", "-1"], "Error: seed must be >= 0, got -1"),
    (["pretrain", "--set", "seed=-1"], "Error: seed must be >= 0, got -1"),
    (["train", "--set", "aux_head=-1"], "Error: aux_head must be 0 (off) or 1 (on), got -1"),
])
def test_a_bad_set_is_a_usage_error_naming_the_key(tmp_path, args, message):
    """hour_offset (the encoding's) was a traceback; `--set lr` said lr was unknown; a negative seed
    failed late with numpy's 'expected non-negative integer'."""
    log = _log(tmp_path / "log.jsonl", [EVENT])
    res = _run([*args, "--data", log, "--out", tmp_path / "out"])
    assert res.exit_code == 2, res.output
    assert message in res.output

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

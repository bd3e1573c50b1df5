"""What a worker's start reads from the broker and loads from disk, without a broker: the
command `interest-stream worker`, then the app's own start (``on_first_start``), with Kafka's
answers faked and the start's process-wide settings (GC, switch interval, the state lock) left out.

`interest-stream worker` reads the input topics' partition counts and loads the model before
Faust starts, to refuse a mismatch or a bad model in one line. The app's start read the counts
and loaded the model a second time; `faust -A stream_app.app worker` runs no command, so its
start still does both."""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import sys

import faust
import pytest
from click.testing import CliRunner

from stream_app import cli, local_state, metrics, model_runtime, topics
from stream_app import app as app_module


@pytest.fixture
def start(monkeypatch, tiny_model_dir):
    """(calls, loaded): each partition-count read ("counts", topics) and model load ("load",
    path) of a start, in order, and the models loaded."""
    calls, loaded = [], []

    def counts(settings, names):
        names = list(names)
        calls.append(("counts", names))
        return dict.fromkeys(names, settings.partitions)

    real_load = model_runtime.LoadedModel.load.__func__

    def load(cls, path, threads=1):
        calls.append(("load", str(path)))
        loaded.append(real_load(cls, path, threads))
        return loaded[-1]

    monkeypatch.setattr(topics, "partition_counts", counts)  # check_input_topics's
    monkeypatch.setattr(app_module, "partition_counts", counts)  # the output and DLQ topics'
    monkeypatch.setattr(model_runtime.LoadedModel, "load", classmethod(load))
    monkeypatch.setattr(topics, "create_topics", lambda settings: {})
    monkeypatch.setattr(app_module, "check_existing", lambda settings: [])
    # the app's settings, with the model and a store whose start reads no local files
    monkeypatch.setenv("INTEREST_MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setattr(app_module, "settings", dataclasses.replace(
        app_module.settings, model_dir=str(tiny_model_dir), store="memory://"))
    models = app_module.app.models
    for name in ("path", "model", "_seen", "preloaded"):
        monkeypatch.setattr(models, name, getattr(models, name))  # restored afterwards
    models.path, models.preloaded = str(tiny_model_dir), None
    monkeypatch.setattr(app_module.app, "topics_checked", False)
    # what the start does to the whole process, and the command's other checks
    monkeypatch.setattr(faust.App, "on_first_start", lambda self: asyncio.sleep(0))
    monkeypatch.setattr(app_module, "holds_state_dir", lambda path: True)
    monkeypatch.setattr(gc, "set_threshold", lambda *thresholds: None)
    monkeypatch.setattr(gc, "freeze", lambda: None)
    monkeypatch.setattr(sys, "setswitchinterval", lambda interval: None)
    monkeypatch.setattr(local_state, "lock_state_dir", lambda path: None)
    monkeypatch.setattr(cli, "_check_listen", lambda settings: None)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    yield calls, loaded
    if models.model is not None:
        metrics.MODEL.remove(models.model.version)


def expected(model_dir, s):
    inputs = ("counts", list(s.input_topics.values()))
    outputs = ("counts", [s.output_topic, s.dlq_topic])
    return inputs, outputs, ("load", str(model_dir))


def test_interest_stream_worker_reads_the_input_counts_and_loads_the_model_once(start, tiny_model_dir,
                                                                                monkeypatch):
    """The command's reads and load, then the app's start: the input topics' counts were read
    twice, the model loaded twice (the app served the second load)."""
    calls, loaded = start
    app = app_module.app
    monkeypatch.setattr(app, "main", lambda: asyncio.run(app.on_first_start()))
    res = CliRunner().invoke(cli.main, ["worker"])
    assert res.exit_code == 0, res.output
    assert app.models.model is loaded[0]  # the model the command checked is the one served
    inputs, outputs, load = expected(tiny_model_dir, app_module.settings)
    assert calls == [load, inputs, outputs]  # the model first: a bad one refused before any topic is made


def test_faust_a_reads_the_input_counts_and_loads_the_model_itself(start, tiny_model_dir):
    """`faust -A stream_app.app worker`: no command ran before the start, which checks alone."""
    calls, _ = start
    asyncio.run(app_module.app.on_first_start())
    inputs, outputs, load = expected(tiny_model_dir, app_module.settings)
    assert calls == [inputs, outputs, load]

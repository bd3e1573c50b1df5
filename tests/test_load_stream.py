"""`interest-stream load jsonl`: a malformed log is a one-line error naming its line, and nothing
of it reaches the input topics (a bad line in the middle used to stop the stream there, with a
traceback, after the lines before it were sent)."""
from __future__ import annotations

import json
import time

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from conftest import cli

pytestmark = pytest.mark.kafka


def good(i: int) -> dict:
    """Event i of a log in ts order, i from 0 up, in the last 100 s."""
    return {"event_id": f"e{i}", "user_id": f"u{i}", "type": "click", "ts": int(time.time() * 1000) - 100_000 + i,
            "item_id": "books-1", "category": "books"}


def input_records(env) -> int:
    c = KafkaConsumer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        tps = [TopicPartition(f"{env['INTEREST_TOPIC_PREFIX']}events.{t}", p)
               for t in ("click", "browse", "search") for p in range(int(env["INTEREST_PARTITIONS"]))]
        return sum(c.end_offsets(tps).values())
    finally:
        c.close()


BIG = json.dumps(good(5) | {"item_id": "i" * 1_100_000})  # kafka-python refused it at send, after 2 lines went


@pytest.mark.parametrize("bad, message", [
    ("[1, 2]", "an event must be a JSON object, got list"),
    ('"a string"', "an event must be a JSON object, got str"),
    ('{"type": "click", "ts": 5}', "user_id must be a non-empty string, got None"),
    ('{"user_id": 5, "type": "click", "ts": 5}', "user_id must be a non-empty string, got 5"),
    ('{"user_id": "u", "type": "purchase", "ts": 5}', "type must be one of click, browse, search, got 'purchase'"),
    ('{"user_id": "u", "type": "click"}', "ts must be a non-negative integer (epoch ms), got None"),
    ('{"user_id": "u", "type": "click", "ts": "yesterday"}',
     "ts must be a non-negative integer (epoch ms), got 'yesterday'"),
    ('{"user_id": "u", "type": "click", "ts": 1e30}', "ts must be a non-negative integer (epoch ms), got 1e+30"),
    (BIG, f"an event of {len(BIG):,} bytes, more than the producer sends (1,047,552; the worker's limit for an "
          "event is 64 KiB)"),
])
def test_a_malformed_event_in_the_middle_of_a_log_sends_nothing(env, tmp_path, bad, message):
    cli(env, "topics", "create")
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join([json.dumps(good(0)), json.dumps(good(1)), bad, json.dumps(good(2))]) + "\n")
    for force in ([], ["--force"]):
        out = cli(env, "load", "jsonl", str(log), *force, check=False)
        assert out.returncode == 1, out.stderr
        assert out.stderr == f"Error: {log}:3: {message}\n"
    assert input_records(env) == 0


def test_a_well_formed_log_is_sent(env, tmp_path):
    cli(env, "topics", "create")
    log = tmp_path / "log.jsonl"
    near = json.dumps(good(3) | {"item_id": "i" * 1_040_000})  # just under MAX_LINE_BYTES: Kafka takes it
    log.write_text("".join(json.dumps(good(i)) + "\n" for i in range(3)) + near + "\n")
    assert "sent 4 events" in cli(env, "load", "jsonl", str(log)).stdout
    assert input_records(env) == 4


def test_events_the_worker_will_refuse_are_said_before_they_are_sent_and_are_its_dead_letters(env, tmp_path, workers):
    """`load jsonl` checks each event as the worker will (interest_core.event_check) and says
    which it will refuse, by reason with the first line of each; they are sent all the same, and
    the worker's dead letters are exactly those. Before, nothing was said: a log of clicks
    without items went out whole, and only the dead-letter topic told."""
    import base64

    from kafka_io import read_all

    cli(env, "topics", "create")
    log = tmp_path / "log.jsonl"
    refused = [{k: v for k, v in good(3).items() if k != "item_id"},
               good(4) | {"category": "c" * 129},
               good(5) | {"note": "x" * 70_000},
               {k: v for k, v in good(6).items() if k != "category"}]
    log.write_text("".join(json.dumps(e) + "\n" for e in [good(0), *refused[:2], good(1), *refused[2:], good(2)]))
    out = cli(env, "load", "jsonl", str(log))
    dlq = f"{env['INTEREST_TOPIC_PREFIX']}events.dlq"
    big = len(orjson.dumps(refused[2]))
    assert out.stderr.startswith(
        f"warning: the worker will refuse 4 of the 7 events of {log} (dead letters on {dlq}): missing_field 2 "
        "(first: line 2: item_id is missing (required for click)), too_large 1 (first: line 5: value is "
        f"{big} bytes, limit 65536), too_long 1 (first: line 3: category has 129 characters, limit 128)\n")
    assert "sent 7 events" in out.stdout and input_records(env) == 7
    workers()
    letters = [orjson.loads(r.value) for r in read_all(env["KAFKA_BOOTSTRAP_SERVERS"], dlq, expect=4)]
    assert sorted((d["reason"], base64.b64decode(d["key_b64"])) for d in letters) == [
        ("missing_field", b"u3"), ("missing_field", b"u6"), ("too_large", b"u5"), ("too_long", b"u4")]


def test_events_the_broker_refuses_are_an_error_not_a_count(env, tmp_path):
    """The input topic refuses every event. kafka-python's flush does not say which sends failed,
    and here gives up with "Future not done": `load jsonl` ended with "Kafka at … refused:
    UnknownError: Future not done", which named neither the events nor the cause."""
    from kafka_io import set_max_message_bytes

    cli(env, "topics", "create")
    set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], f"{env['INTEREST_TOPIC_PREFIX']}events.click", 100)
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(good(i)) + "\n" for i in range(3)))
    proc = cli(env, "load", "jsonl", str(log), check=False)
    assert proc.returncode == 1 and "sent 3 events" not in proc.stdout
    assert proc.stderr.endswith("\nError: 3 of 3 events were not delivered to the input topics "
                                "(MessageSizeTooLargeError)\n")
    assert "Traceback" not in proc.stderr and input_records(env) == 0


def test_events_up_to_a_day_ahead_are_sent_as_the_contract_takes_them(env, tmp_path):
    """Kafka 4 refuses a record more than an hour ahead of its clock: `load jsonl` of a click 2 hours
    ahead ended in "not delivered (InvalidTimestampError …)", where the contract takes events up to
    INTEREST_FUTURE_S (a day) ahead. The input topics take what the worker takes. An event further
    ahead was refused by the broker with its whole batch (90 valid events of a 301-event log were
    lost with it): it is sent stamped with the time it is sent, for the worker to dead-letter."""
    from kafka_io import read_all

    cli(env, "topics", "create")
    now = int(time.time() * 1000)
    log = tmp_path / "log.jsonl"
    hours = (2, 23, 25, 24 * 365)
    log.write_text("".join(json.dumps(good(i) | {"ts": now + h * 3_600_000}) + "\n" for i, h in enumerate(hours))
                   + "".join(json.dumps(good(i)) + "\n" for i in range(4, 300)))
    assert "sent 300 events" in cli(env, "load", "jsonl", str(log)).stdout
    records = {orjson.loads(r.value)["event_id"]: r for r in read_all(env["KAFKA_BOOTSTRAP_SERVERS"],
                                                                       f"{env['INTEREST_TOPIC_PREFIX']}events.click")}
    assert len(records) == 300
    assert all(r.timestamp == orjson.loads(r.value)["ts"] for e, r in records.items() if e not in ("e2", "e3"))
    for e, h in (("e2", 25), ("e3", 24 * 365)):
        assert orjson.loads(records[e].value)["ts"] == now + h * 3_600_000
        assert now <= records[e].timestamp <= int(time.time() * 1000)  # the time it was sent


@pytest.mark.parametrize("ts, ahead, stamp", [
    (1_000_000_000 + 86_340_000, 86_400_000, 1_000_000_000 + 86_340_000),  # a day less the clocks' minute
    (1_000_000_000 + 86_340_001, 86_400_000, 1_000_000_000),  # further: the time it is sent
    (5, 86_400_000, 5),  # the past keeps its ts
    (999_999_999, 0, 999_999_999),  # a topic that takes nothing ahead
    (1_000_000_001, 0, 1_000_000_000),
])
def test_the_record_timestamp_is_the_events_ts_unless_the_topic_refuses_it(ts, ahead, stamp):
    from stream_app.produce import record_timestamp

    assert record_timestamp(ts, 1_000_000_000, ahead) == stamp


def test_a_rate_of_one_event_in_centuries_sends_one_and_hears_stop(env):
    """`--rate 1e-10` asks for a 1e10 s pause before the second event: it was an OverflowError in
    sleep after one event went. Now it pauses, and a stop (the demo's Ctrl-C) is heard within the
    slice of a pause."""
    import threading

    from stream_app.produce import PACE_SLICE_S, send_events
    from stream_app.settings import Settings

    cli(env, "topics", "create")
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    started = time.monotonic()
    sent = send_events([good(0), good(1)], Settings.from_env(env), rate=1e-10, stop=stop)
    assert sent == 1 and input_records(env) == 1
    assert time.monotonic() - started < 1.0 + PACE_SLICE_S + 5  # 5 s for the delivery


def test_nothing_waits_after_the_last_event(env):
    """The pause came after each event, so a log of one event at `--rate 1e-10` would have sent it
    and then waited 1e10 s (here, until the stop 20 s later)."""
    import threading

    from stream_app.produce import send_events
    from stream_app.settings import Settings

    cli(env, "topics", "create")
    stop = threading.Event()
    timer = threading.Timer(20.0, stop.set)
    timer.start()
    try:
        started = time.monotonic()
        sent = send_events([good(0)], Settings.from_env(env), rate=1e-10, stop=stop)
    finally:
        timer.cancel()
    assert sent == 1 and input_records(env) == 1
    assert time.monotonic() - started < 10  # the delivery


def test_missing_input_topics_are_refused_before_anything_is_sent(env, tmp_path):
    """The broker is up but the topics were never created: `load jsonl` and `simulate --rate`
    waited 60 s, then blamed KAFKA_BOOTSTRAP_SERVERS ("KafkaTimeoutError: Failed to update
    metadata after 60.0 secs"); with only the click topic there, `load jsonl` sent its click
    events first (a partial load of a log checked whole)."""
    from kafka.admin import KafkaAdminClient, NewTopic

    prefix = env["INTEREST_TOPIC_PREFIX"]
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps(good(0)) + "\n" + json.dumps(good(1) | {"type": "browse"}) + "\n")
    started = time.monotonic()
    for args in (["load", "jsonl", str(log)], ["load", "jsonl", str(log), "--force"],
                 ["simulate", "--users", "3", "--rate", "100"]):
        proc = cli(env, *args, check=False, timeout=30)
        assert proc.returncode == 1 and "sent" not in proc.stdout
        assert proc.stderr.endswith(f"Error: topics {prefix}events.click, {prefix}events.browse, {prefix}events.search "
                                    "do not exist; run `interest-stream topics create`\n"), proc.stderr
    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        admin.create_topics([NewTopic(f"{prefix}events.click", int(env["INTEREST_PARTITIONS"]), 1)])
    finally:
        admin.close()
    proc = cli(env, "load", "jsonl", str(log), check=False, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: topics {prefix}events.browse, {prefix}events.search do not exist; run "
                           "`interest-stream topics create`\n")
    c = KafkaConsumer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        assert sum(c.end_offsets([TopicPartition(f"{prefix}events.click", p)
                                  for p in range(int(env["INTEREST_PARTITIONS"]))]).values()) == 0
    finally:
        c.close()
    assert time.monotonic() - started < 40  # four commands, each answered at once


def set_retention(env, ms: int, types=("click", "browse", "search")) -> None:
    from kafka_io import set_topic_config

    set_topic_config(env["KAFKA_BOOTSTRAP_SERVERS"], [f"{env['INTEREST_TOPIC_PREFIX']}events.{t}" for t in types],
                     "retention.ms", ms)


def test_the_age_of_a_log_is_checked_against_the_topics_retention_not_the_setting(env, tmp_path):
    """The check read INTEREST_RETENTION_MS: input topics that keep a day (made by another
    setting, or altered since) took a log 2 days old, "sent 3 events", and the broker deleted them
    at its next retention check. Now the topics' own retention.ms is read, the smallest of the
    three; -1 (kept forever) takes any log, whatever the setting says."""
    prefix = env["INTEREST_TOPIC_PREFIX"]
    cli(env, "topics", "create")  # a retention of 100 years
    set_retention(env, 86_400_000, types=("click",))
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(good(i) | {"type": t, "ts": good(i)["ts"] - 2 * 86_400_000}) + "\n"
                           for i, t in enumerate(("browse", "search", "click"))))
    proc = cli(env, "load", "jsonl", str(log), check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (f"Error: the log starts 2.0 days ago, but the input topic {prefix}events.click keeps "
                           "1.0 days (its retention.ms=86400000): Kafka would delete these events right away. Raise "
                           "the input topics' retention.ms (kafka-configs --alter), or pass --force to stream them "
                           "anyway\n")
    assert input_records(env) == 0
    set_retention(env, -1)
    assert "sent 3 events" in cli(dict(env, INTEREST_RETENTION_MS="86400000"), "load", "jsonl", str(log)).stdout
    assert input_records(env) == 3


def test_a_load_interrupted_by_ctrl_c_says_how_many_events_were_sent(env, tmp_path, monkeypatch):
    """Ctrl-C mid-load was click's "Aborted!": nothing said that some events had gone out."""
    from click.testing import CliRunner

    from stream_app import produce
    from stream_app.cli import main

    cli(env, "topics", "create")
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(good(i)) + "\n" for i in range(5)))
    newest_first = tmp_path / "newest_first.jsonl"  # sent in ts order: the first sent are not the file's first
    newest_first.write_text("".join(json.dumps(good(i)) + "\n" for i in range(4, -1, -1)))

    def interrupted_after_three(read):
        def read_three(path):
            yield from list(read(path))[:3]
            raise KeyboardInterrupt
        return read_three

    for name in ("read_jsonl", "read_jsonl_by_ts"):
        monkeypatch.setattr(produce, name, interrupted_after_three(getattr(produce, name)))
    for path, which, sent in ((log, "its first 3", 3), (newest_first, "the first 3 in ts order", 6)):
        out = CliRunner().invoke(main, ["load", "jsonl", str(path)], env=env)
        assert out.exit_code == 1
        assert out.output.splitlines()[-1] == (f"Error: interrupted: 3 of the 5 events of {path} were sent ({which}), "
                                               "the rest were not")
        assert input_records(env) == sent


@pytest.mark.parametrize("signum, status", [("SIGINT", 1), ("SIGTERM", 143)])
def test_an_interrupt_inside_the_producers_send_waits_for_it_and_counts_its_event(env, tmp_path, monkeypatch,
                                                                                   signum, status):
    """Ctrl-C or SIGTERM arriving while kafka-python's send ran raised KeyboardInterrupt inside it,
    after it had added the event to a batch: the event was delivered but not counted ("2 of the 5",
    with 3 in the topics), and a producer left half-updated could hang its close for ever (the next
    test). The signal now waits for the send."""
    import signal
    import threading

    from click.testing import CliRunner
    from kafka.producer.producer_batch import ProducerBatch

    from stream_app.cli import main

    assert threading.current_thread() is threading.main_thread()  # where Python delivers signals
    cli(env, "topics", "create")
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(good(i)) + "\n" for i in range(5)))
    appended, try_append = [], ProducerBatch.try_append

    def append_then_signal(self, *args, **kwargs):
        future = try_append(self, *args, **kwargs)
        appended.append(future)
        if len(appended) == 3:  # the third event is in its batch, and send has not returned
            signal.raise_signal(getattr(signal, signum))  # its handler runs before this returns
        return future

    monkeypatch.setattr(ProducerBatch, "try_append", append_then_signal)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    out = CliRunner().invoke(main, ["load", "jsonl", str(log)], env=env)
    assert (out.exit_code, len(appended)) == (status, 3), out.output
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # as the load found them
    assert out.output.splitlines()[-1] == (f"Error: interrupted: 3 of the 5 events of {log} were sent (its first 3), "
                                           "the rest were not")
    assert input_records(env) == 3


@pytest.mark.timeout(120)
def test_an_interrupt_while_kafka_python_holds_a_lock_does_not_hang_the_load(env, tmp_path, monkeypatch):
    """kafka-python 3.0's ``Future._add_cb_eb`` releases its lock on the paths it returns by, not on
    an exception. A Ctrl-C raised between its acquire and its release (7 of 300 loads interrupted
    at random in bench/interrupt_send.py) left the lock held: the producer's sender thread waited
    for it for ever, and so did the load's close. The signal is raised here where it landed then."""
    import threading

    from click.testing import CliRunner

    from kafka_io import interrupt_inside_a_lock
    from stream_app.cli import main

    assert threading.current_thread() is threading.main_thread()  # where Python delivers signals
    cli(env, "topics", "create")
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(good(i)) + "\n" for i in range(5)))
    batch_futures = interrupt_inside_a_lock(monkeypatch, at=3)
    out = CliRunner().invoke(main, ["load", "jsonl", str(log)], env=env)
    assert (out.exit_code, len(batch_futures)) == (1, 3), out.output
    assert out.output.splitlines()[-1] == (f"Error: interrupted: 3 of the 5 events of {log} were sent (its first 3), "
                                           "the rest were not")
    assert input_records(env) == 3


def test_an_interrupted_load_whose_events_the_broker_refused_says_so(env, tmp_path, monkeypatch):
    """Ctrl-C after sends the broker refused said they "were sent": the topics held none of them."""
    from click.testing import CliRunner

    from kafka_io import set_max_message_bytes
    from stream_app import produce
    from stream_app.cli import main

    cli(env, "topics", "create")
    set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], f"{env['INTEREST_TOPIC_PREFIX']}events.click", 100)
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(good(i)) + "\n" for i in range(5)))

    read = produce.read_jsonl

    def first_three(path):
        yield from list(read(path))[:3]
        raise KeyboardInterrupt

    monkeypatch.setattr(produce, "read_jsonl", first_three)
    out = CliRunner().invoke(main, ["load", "jsonl", str(log)], env=env)
    assert out.exit_code == 1
    assert out.output.splitlines()[-1] == ("Error: interrupted: 3 of the 3 events sent before it were not delivered "
                                           "to the input topics (MessageSizeTooLargeError)")
    assert input_records(env) == 0


def test_a_load_stopped_by_sigterm_says_how_many_events_were_sent(env, tmp_path):
    """SIGTERM (`timeout`, `kill`, a scheduler's stop) ended the load on the spot, saying nothing of
    the events that had gone out (and dropping those the producer still held); it now unwinds as
    Ctrl-C does."""
    import re
    import signal
    import subprocess
    import sys

    from conftest import ROOT, wait_for

    cli(env, "topics", "create")
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(good(i)) + "\n" for i in range(100)))
    proc = subprocess.Popen([sys.executable, "-m", "stream_app.cli", "load", "jsonl", str(log), "--rate", "5"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: input_records(env) >= 2, timeout=60)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err  # 128 + SIGTERM: a stop, not a failure
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    match = re.fullmatch(rf"Error: interrupted: (\d+) of the 100 events of {re.escape(str(log))} were sent "
                         r"\(its first \1\), the rest were not", last)
    assert match, err
    assert 2 <= int(match[1]) < 100 and input_records(env) == int(match[1])
    assert "Traceback" not in err


def test_load_jsonl_looks_the_input_topics_up_once(tmp_path, monkeypatch):
    """`load jsonl` checked that the input topics exist, then send_events checked again: two
    consumers and metadata round trips where one does. No broker: the lookups are counted."""
    from click.testing import CliRunner

    from stream_app import produce, topics
    from stream_app.cli import main

    looked_up, sent = [], []

    class Future:
        def add_errback(self, errback):
            pass

    class Producer:
        def send(self, topic, **kw):
            sent.append(topic)
            return Future()

        def flush(self):
            pass

        def close(self):
            pass

    def counts(settings, names):
        looked_up.append(sorted(names))
        return dict.fromkeys(names, 1)

    monkeypatch.setattr(topics, "partition_counts", counts)
    monkeypatch.setattr(topics, "retention_ms", lambda settings, names: dict.fromkeys(names, -1))
    monkeypatch.setattr(topics, "input_ahead_limits", lambda settings: dict.fromkeys(settings.input_topics.values(),
                                                                                     topics.KAFKA_AHEAD_MS))
    monkeypatch.setattr(produce, "producer", lambda settings, **options: Producer())
    monkeypatch.setenv("INTEREST_TOPIC_PREFIX", "once.")
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps(good(0)) + "\n" + json.dumps(good(1) | {"type": "browse"}) + "\n")
    res = CliRunner().invoke(main, ["load", "jsonl", str(log)])
    assert (res.exit_code, res.stdout) == (0, "sent 2 events\n"), res.output
    assert sent == ["once.events.click", "once.events.browse"]
    assert looked_up == [["once.events.browse", "once.events.click", "once.events.search"]]


def test_a_producer_that_may_not_describe_the_topics_takes_kafkas_hour(monkeypatch):
    """Without DescribeConfigs on the input topics, each is taken to refuse a record more than
    Kafka's hour ahead (more events are stamped with the time they are sent; none is refused)."""
    from stream_app import topics
    from stream_app.settings import Settings

    class Admin:
        def close(self):
            pass

    def undescribed(client, names, key):
        raise topics.TopicError("cannot read message.timestamp.after.max.ms of topic events.click")

    monkeypatch.setattr(topics, "admin", lambda s: Admin())
    monkeypatch.setattr(topics, "topic_config", undescribed)
    s = Settings.from_env({"INTEREST_TOPIC_PREFIX": "p-"})
    assert topics.input_ahead_limits(s) == {"p-events.click": 3_600_000, "p-events.browse": 3_600_000,
                                            "p-events.search": 3_600_000}


def test_a_log_out_of_ts_order_is_counted_and_read_back_in_ts_order_ties_as_written(tmp_path):
    """check_log counts the events older than one before them; read_jsonl_by_ts gives every event
    once, by ts, and events of one ts in the file's order (blank lines skipped, a last line
    without its newline read whole)."""
    from stream_app.produce import check_log, read_jsonl, read_jsonl_by_ts

    ts = {"a": 30, "b": 10, "c": 20, "d": 10, "e": 40, "f": 20}  # b, c, d, f come after a newer one
    lines = [json.dumps(good(0) | {"event_id": k, "ts": v}) for k, v in ts.items()]
    log = tmp_path / "log.jsonl"
    log.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]))
    assert check_log(log).out_of_order == 4
    assert [e["event_id"] for e in read_jsonl_by_ts(log)] == ["b", "d", "c", "f", "a", "e"]
    assert list(read_jsonl_by_ts(log)) == sorted(read_jsonl(log), key=lambda e: e["ts"])
    in_order = tmp_path / "in_order.jsonl"
    in_order.write_text("".join(json.dumps(e) + "\n" for e in read_jsonl_by_ts(log)))
    assert check_log(in_order).out_of_order == 0

"""`interest-stream tail` and `forget` given what they cannot use: a one-line error, no traceback."""
from __future__ import annotations

import pytest

from conftest import cli
from kafka_io import produce
from stream_app.partitioning import partition_for
from test_worker_ingest import event

pytestmark = pytest.mark.kafka

VECTOR = {"schema": 1, "user_id": "u1", "ts": 1, "model_version": "v", "interests": {"a": 1.0}, "top": ["a"],
          "drift": 0.0, "events": 1}


def not_a_vector(env, topic: str, key: bytes) -> str:
    """tail's error for the first record of ``key`` on ``topic`` (prefixed) that is no interest vector."""
    prefix = env["INTEREST_TOPIC_PREFIX"]
    partition = partition_for(key, int(env["INTEREST_PARTITIONS"]))
    return (f"Error: {prefix}{topic}[{partition}]@0 is not an interest vector: tail reads interest topics "
            f"({prefix}user-interests, {prefix}user-interests.backfill or a replay's --output-topic)\n")


def test_tail_of_a_topic_without_interest_vectors_is_a_one_line_error(env):
    """`tail --topic events.click` was a KeyError traceback at the first record."""
    cli(env, "topics", "create")
    prefix = env["INTEREST_TOPIC_PREFIX"]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(f"{prefix}events.click", b"u1", event(1, "u1", "click", 1_000)),
                                             (f"{prefix}events.dlq", b"u1", b"\x00not json")])
    for topic in ("events.click", "events.dlq"):
        out = cli(env, "tail", "--topic", prefix + topic, "--from-beginning", "--timeout", "10", check=False)
        assert out.returncode == 1
        assert out.stderr == not_a_vector(env, topic, b"u1")


def test_tail_of_a_topic_that_does_not_exist_names_what_would_make_it(env):
    """`tail --topic <a replay's output not yet written>` said "run `interest-stream topics
    create`", which never makes that topic."""
    prefix = env["INTEREST_TOPIC_PREFIX"]
    out = cli(env, "tail", "--topic", prefix + "my-backfill", "--timeout", "1", check=False)
    assert out.returncode == 1 and out.stderr == (
        f"Error: topic {prefix}my-backfill does not exist (a replay's --output-topic exists once the replay wrote "
        "into it)\n")
    out = cli(env, "tail", "--topic", prefix + "user-interests.backfill", "--timeout", "1", check=False)
    assert out.returncode == 1 and out.stderr == (
        f"Error: topic {prefix}user-interests.backfill does not exist; run `interest-stream topics create`\n")


def test_tail_with_a_timeout_too_long_to_count_in_milliseconds_waits_as_without_one(env):
    """1e308 s is finite, but not in milliseconds: it was an OverflowError traceback."""
    cli(env, "topics", "create")
    prefix = env["INTEREST_TOPIC_PREFIX"]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(f"{prefix}user-interests", b"u1", VECTOR)])
    out = cli(env, "tail", "--from-beginning", "--max-messages", "1", "--timeout", "1e308")
    assert out.stdout.split() == ["u1", "events=1", "drift=0.000", "top:", "a", "1.00"]


def test_a_forget_request_the_broker_refuses_is_said_at_once(env):
    """Before, `forget` waited its whole timeout for a tombstone nobody had been asked for, then
    asked whether a worker was running."""
    from kafka_io import set_max_message_bytes

    cli(env, "topics", "create")
    control = f"{env['INTEREST_TOPIC_PREFIX']}interest-control"
    set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], control, 10)
    proc = cli(env, "forget", "u1", "--timeout", "60", check=False, timeout=50)
    assert proc.returncode == 1
    assert proc.stderr == f"Error: 1 of 1 forget requests were not delivered to {control} (MessageSizeTooLargeError)\n"


def forget_interrupted(env, user: str) -> str:
    """What `forget` says when a Ctrl-C stops it after its request was sent (read from the topic)."""
    from kafka_io import read_all

    control = f"{env['INTEREST_TOPIC_PREFIX']}interest-control"
    [request] = read_all(env["KAFKA_BOOTSTRAP_SERVERS"], control, expect=1)
    assert request.key == user.encode()
    return (f"Error: interrupted: the forget request for {user} was sent ({control}[{request.partition}]@"
            f"{request.offset}); the worker forgets the user when it applies it, without this command waiting for "
            "the tombstone\n")


@pytest.mark.parametrize("signum, status", [("SIGINT", 1), ("SIGTERM", 143)])
def test_a_forget_stopped_while_it_waits_says_its_request_was_sent(env, signum, status):
    """Ctrl-C while `forget` waited for the tombstone was click's "Aborted!" (SIGTERM: "stopped by
    SIGTERM"), which read as if nothing had been done: the request was sent, and a worker applies it."""
    import signal
    import subprocess
    import sys

    from conftest import ROOT, wait_for
    from kafka_io import read_all

    cli(env, "topics", "create")
    control = f"{env['INTEREST_TOPIC_PREFIX']}interest-control"
    proc = subprocess.Popen([sys.executable, "-m", "stream_app.cli", "forget", "u1", "--timeout", "60"], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(read_all(env["KAFKA_BOOTSTRAP_SERVERS"], control, timeout=1)) == 1, timeout=30)
        proc.send_signal(getattr(signal, signum))
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert err == forget_interrupted(env, "u1")


@pytest.mark.timeout(120)
def test_a_forget_interrupted_while_kafka_python_holds_a_lock_sends_its_request_and_says_so(env, monkeypatch):
    """The signal raised inside the request's send, where kafka-python's ``Future._add_cb_eb`` holds
    its lock (tests/kafka_io.interrupt_inside_a_lock): `forget` said "Aborted!", its request was
    never delivered, and the producer's sender thread waited for the lock for ever. The signal now
    waits for the send: the request goes out, and `forget` says so."""
    import threading

    from click.testing import CliRunner

    from kafka_io import interrupt_inside_a_lock
    from stream_app.cli import main

    assert threading.current_thread() is threading.main_thread()  # where Python delivers signals
    cli(env, "topics", "create")
    batch_futures = interrupt_inside_a_lock(monkeypatch, at=1)
    out = CliRunner().invoke(main, ["forget", "u1", "--timeout", "60"], env=env)
    assert (out.exit_code, len(batch_futures)) == (1, 1), out.output
    assert out.output.splitlines()[-1] + "\n" == forget_interrupted(env, "u1")


def test_a_forget_stopped_while_its_request_is_flushed_says_whether_it_was_sent(env, monkeypatch):
    """A Ctrl-C during the flush that follows the send was click's "Aborted!", whether the request
    had gone out or not. The request's own answer now says: here it had."""
    from click.testing import CliRunner

    from stream_app import produce
    from stream_app.cli import main

    cli(env, "topics", "create")
    finish = produce.Deliveries.finish

    def finish_then_ctrl_c(self, *args, **kwargs):
        finish(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(produce.Deliveries, "finish", finish_then_ctrl_c)
    out = CliRunner().invoke(main, ["forget", "u1", "--timeout", "60"], env=env)
    assert out.exit_code == 1, out.output
    assert out.output.splitlines()[-1] + "\n" == forget_interrupted(env, "u1")


@pytest.mark.parametrize("answer", ["refused", "none"])
def test_a_forget_stopped_before_its_request_was_answered_says_so(env, monkeypatch, answer):
    """A Ctrl-C during the flush of a request the broker refused, or had not answered within
    FORGET_ANSWER_S (0 here), was click's "Aborted!" like any other."""
    from click.testing import CliRunner

    from kafka_io import read_all, set_max_message_bytes
    from stream_app import cli as cli_module
    from stream_app import produce
    from stream_app.cli import main

    cli(env, "topics", "create")
    control = f"{env['INTEREST_TOPIC_PREFIX']}interest-control"
    if answer == "refused":
        set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], control, 10)
    else:
        monkeypatch.setattr(cli_module, "FORGET_ANSWER_S", 0.0)

    def ctrl_c_at_the_flush(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(produce.Deliveries, "finish", ctrl_c_at_the_flush)
    out = CliRunner().invoke(main, ["forget", "u1", "--timeout", "60"], env=env)
    assert out.exit_code == 1, out.output
    if answer == "refused":
        assert out.output.splitlines()[-1] == (f"Error: interrupted: the forget request for u1 was not delivered to "
                                               f"{control} (MessageSizeTooLargeError)")
        assert read_all(env["KAFKA_BOOTSTRAP_SERVERS"], control, timeout=5) == []
    else:
        assert out.output.splitlines()[-1] == (
            "Error: interrupted before Kafka answered the forget request for u1: it may still reach the worker "
            "(`interest-stream tail --user u1 --from-beginning` shows its tombstone once it is applied)")


def test_tail_of_a_record_whose_key_is_not_utf8_is_a_one_line_error(env):
    """The key was decoded outside the check that names the record: a UnicodeDecodeError traceback."""
    cli(env, "topics", "create")
    prefix = env["INTEREST_TOPIC_PREFIX"]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], [(f"{prefix}user-interests", b"\xff", VECTOR)])
    out = cli(env, "tail", "--from-beginning", "--timeout", "10", check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr == not_a_vector(env, "user-interests", b"\xff")


def test_a_forget_without_its_control_topic_is_said_at_once(env):
    """The output and input topics exist, the control topic not: `forget --timeout 5` waited 60 s
    for its metadata, then ended in "KafkaTimeoutError: Failed to update metadata after 60.0 secs
    (check KAFKA_BOOTSTRAP_SERVERS ...)" although the broker was up."""
    import time

    from kafka.admin import KafkaAdminClient, NewTopic

    prefix, n = env["INTEREST_TOPIC_PREFIX"], int(env["INTEREST_PARTITIONS"])
    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        admin.create_topics([NewTopic(f"{prefix}{t}", n, 1) for t in ("events.click", "events.browse",
                                                                       "events.search", "user-interests")])
    finally:
        admin.close()
    started = time.monotonic()
    proc = cli(env, "forget", "u1", "--timeout", "5", check=False, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: topic {prefix}interest-control does not exist; run `interest-stream topics "
                           "create`\n")
    assert time.monotonic() - started < 15

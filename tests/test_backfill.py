"""The backfill writer's pure parts: which producer errors mean another replay took over the
output topic, and the one-line error when the brokers give no transaction coordinator (the
fencing itself is tested against the broker in test_replay.py)."""
from __future__ import annotations

import time

import pytest
from kafka.errors import (InvalidProducerEpochError, KafkaError, KafkaTimeoutError, MessageSizeTooLargeError,
                          ProducerFencedError)

from stream_app import backfill
from stream_app.settings import InterestStreamError, Settings


@pytest.mark.parametrize("error, fenced", [
    (ProducerFencedError(), True),  # a commit, or the epoch bump kafka-python tries after a refused send
    (InvalidProducerEpochError(), True),  # a send the broker refused once the id had a new epoch
    (KafkaError("Cannot perform send because at least one previous transactional or idempotent request has "
                "failed with errors.", ProducerFencedError()), True),  # a send after that
    (KafkaError("Cannot perform send because at least one previous transactional or idempotent request has "
                "failed with errors.", InvalidProducerEpochError()), True),
    (KafkaError("Cannot execute transactional method because we are in an error state: [Error 90] "
                "ProducerFencedError"), True),  # a commit or abort after that
    (MessageSizeTooLargeError(), False),
    (KafkaError("Cannot perform send because at least one previous transactional or idempotent request has "
                "failed with errors.", MessageSizeTooLargeError()), False),
    (KafkaTimeoutError("Timeout expired while initializing transactional state in 60000 ms."), False),
    (None, False),
])
def test_which_errors_mean_another_replay_took_over(error, fenced):
    assert backfill.is_fenced(error) is fenced


def test_one_transactional_id_per_output_topic():
    assert backfill.transactional_id("user-interests.backfill") == "interest-stream.replay.user-interests.backfill"
    assert backfill.transactional_id("a") != backfill.transactional_id("b")


class Producer:
    """A fake kafka-python producer with the private parts the writer calls
    (:data:`stream_app.backfill.PRIVATE_PARTS`), each doing nothing, and a close that is noted."""

    closed = False

    @property
    def _transaction_manager(self):
        return self

    _sender = _transaction_manager

    def begin_commit(self):
        pass

    begin_abort = begin_commit

    def wakeup(self):
        pass

    def force_close(self):
        pass

    def init_transactions(self):
        pass

    def close(self, timeout=None):
        self.closed = True


class Renamed(Producer):
    """A kafka-python release whose sender's forced close has another name."""

    force_close = None
    inited = False

    def init_transactions(self):
        self.inited = True


def test_a_kafka_python_without_the_private_parts_is_refused_before_anything_is_written(monkeypatch):
    import kafka

    renamed = Renamed()
    monkeypatch.setattr(backfill, "producer", lambda *args, **kw: renamed)
    with pytest.raises(InterestStreamError) as err:
        backfill.BackfillWriter(Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k1:9092"}), "bf")
    assert str(err.value) == (
        f"kafka-python {kafka.__version__} cannot write a replay's transactions: its producer has no "
        "_sender.force_close, which the replay calls (written for kafka-python 3.0: install 3.0.x)")
    assert renamed.closed and not renamed.inited
    assert backfill.missing_private_parts(object()) == list(backfill.PRIVATE_PARTS)
    assert backfill.missing_private_parts(Producer()) == []
    assert backfill.missing_private_parts(type("Moved", (Producer,), {"wakeup": 0})()) == ["_sender.wakeup"]


class NoCoordinator(Producer):
    """A producer whose brokers never name a transaction coordinator (a cluster whose transaction
    state log wants more replicas than it has live brokers)."""

    def init_transactions(self):
        raise KafkaTimeoutError("Timeout expired while initializing transactional state in 60000 ms.")


def test_no_transaction_coordinator_is_one_line_naming_the_broker_setting(monkeypatch):
    none = NoCoordinator()
    monkeypatch.setattr(backfill, "producer", lambda *args, **kw: none)
    s = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k1:9092"})
    with pytest.raises(InterestStreamError) as err:
        backfill.BackfillWriter(s, "bf")
    assert str(err.value) == (
        "Kafka at k1:9092 gave no transaction coordinator for interest-stream.replay.bf (KafkaTimeoutError: "
        "Timeout expired while initializing transactional state in 60000 ms.): a replay writes in transactions, "
        "which need the brokers' transaction state log (its transaction.state.log.replication.factor at most the "
        "live brokers)")
    assert none.closed


class StuckBatches(Producer):
    """A producer fenced while it re-initialized its epoch, as kafka-python 3.0 leaves it now and
    then (two real replays into one topic, the second started 3 s after the first, two runs of
    five): batches it will never send, so that its close raises "Timeout waiting for future" until
    its sender is forced closed, which fails them."""

    def __init__(self):
        self.forced = False

    def begin_abort(self):
        from kafka.errors import KafkaError

        raise KafkaError("Cannot execute transactional method because we are in an error state: [Error 90] "
                         "ProducerFencedError")

    def force_close(self):
        self.forced = True

    def close(self, timeout=None):
        if not self.forced:
            raise KafkaTimeoutError("Timeout waiting for future")
        self.closed = True


def test_abort_closes_a_fenced_producer_whose_batches_are_stuck(monkeypatch):
    """The stuck batches made abort raise KafkaTimeoutError: the replay ended with "Error: Kafka at
    …: KafkaTimeoutError: Timeout waiting for future (check KAFKA_BOOTSTRAP_SERVERS …)" instead of
    the fence's line, then a traceback from the producer's __del__."""
    stuck = StuckBatches()
    monkeypatch.setattr(backfill, "producer", lambda *args, **kw: stuck)
    writer = backfill.BackfillWriter(Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k1:9092"}), "bf")
    writer.began, writer.open = 0.0, 7  # a transaction of 7 vectors open
    assert writer.abort() == 7
    assert stuck.forced and stuck.closed


class BrokerGone(Producer):
    """A producer whose broker stopped during a commit: the commit is never answered
    (kafka-python's own commit_transaction waits for it for ever)."""

    def __init__(self):
        from kafka.producer.transaction_manager import TransactionalRequestResult

        self.result = TransactionalRequestResult()  # never done

    def begin_commit(self):
        return self.result

    begin_abort = begin_commit


def test_a_commit_the_broker_never_answers_stops_the_replay(monkeypatch):
    """A broker stopped during a replay's commit left the replay waiting for ever, without a word
    (19 minutes, broker back after 5 of them, until killed)."""
    gone = BrokerGone()
    monkeypatch.setattr(backfill, "producer", lambda *args, **kw: gone)
    monkeypatch.setattr(backfill, "END_TIMEOUT_S", 0.2, raising=False)
    writer = backfill.BackfillWriter(Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k1:9092"}), "bf")
    writer.began, writer.open = 0.0, 5
    with pytest.raises(backfill.WriteFailed) as err:
        writer.commit()
    assert str(err.value) == ("Kafka did not answer the commit of a transaction of 5 vectors to bf within 0.2 s (is "
                              "the broker up?)")
    assert writer.committed == 0
    assert writer.abort() == 5 and gone.closed


def test_a_send_that_fails_while_the_commit_waits_stops_the_replay_at_once(monkeypatch):
    """A batch the topic refuses after the commit began (its send still in flight) turns the
    transaction abortable, and kafka-python never answers the commit. The replay waited the whole
    60 s and then blamed the broker ("did not answer the commit ... is the broker up?"), where the
    topic had refused the vectors (seen once in `make test`:
    test_vectors_the_output_topic_refuses_are_an_error)."""
    fails = BrokerGone()
    monkeypatch.setattr(backfill, "producer", lambda *args, **kw: fails)
    monkeypatch.setattr(backfill, "END_TIMEOUT_S", 5.0, raising=False)
    writer = backfill.BackfillWriter(Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k1:9092"}), "bf")
    writer.began, writer.open = 0.0, 5

    def begin_commit():  # the in-flight batch fails just after the commit began
        writer.deliveries._failed(MessageSizeTooLargeError())
        return fails.result

    fails.begin_commit = begin_commit
    t0 = time.monotonic()
    with pytest.raises(backfill.WriteFailed) as err:
        writer.commit()
    assert str(err.value) == "vectors were not delivered to bf (MessageSizeTooLargeError)"
    assert time.monotonic() - t0 < 1.0  # at the first look, not after END_TIMEOUT_S
    assert writer.committed == 0

"""Writing a replay's vectors into its output topic, one writer per topic.

A replay writes in Kafka transactions under one transactional id per output topic
(:func:`transactional_id`). A second replay into the same topic takes that id over when it
starts, and the broker then refuses the first one's next write or commit: Kafka's fencing, as
Kafka Streams fences a task's old owner. The first replay stops with an error that says so
(:class:`Fenced`), its open transaction is aborted, and a reader that reads committed records
(``tail``, or any consumer with ``isolation.level=read_committed``) never sees its uncommitted
vectors; the second replay's vectors follow what the first had committed. Before, nothing
refused the second replay, and two ranges written at once left each user's newest record to
whichever replay wrote last.

A transaction is committed every :data:`COMMIT_S` seconds while vectors are written, and at the
end. A replay stopped (Ctrl-C, a refused vector, a fence) aborts its open transaction, so what it
leaves in the topic is whole transactions. One that is killed leaves its open transaction to the
broker, which aborts it after :data:`TRANSACTION_TIMEOUT_MS`, or at once when the next replay into
the topic starts; until then a committed-records reader of that topic reads nothing past it on
its partitions.
"""
from __future__ import annotations

import time

from .produce import Deliveries, SendsUninterrupted, error_reason, producer
from .settings import InterestStreamError, Settings

COMMIT_S = 1.0  # seconds between commits: a stopped replay loses at most this much of its work
# how long the broker lets a transaction stay open (kafka-python's default, said here): the
# longest a killed replay's open transaction holds back committed-records readers
TRANSACTION_TIMEOUT_MS = 60_000
# how long a commit or abort waits for the broker's answer: kafka-python 3.0's commit_transaction
# and abort_transaction wait without limit (Java's wait max.block.ms, 60 s by default)
END_TIMEOUT_S = 60.0
END_WAIT_SLICE_MS = 100  # how often a commit waiting for its answer looks for a failed send
# kafka-python has no public commit or abort with a time limit, and no public way to fail the
# batches of a fenced producer that it will never send: the writer calls these private parts of
# its producer (kafka-python 3.0). A release without them is refused before a replay writes
# anything; before, it would have stopped at its first commit with an AttributeError.
PRIVATE_PARTS = ("_transaction_manager.begin_commit", "_transaction_manager.begin_abort", "_sender.wakeup",
                 "_sender.force_close")


def transactional_id(topic: str) -> str:
    """One id per output topic, whatever the deployment: two writers of one topic fence each other."""
    return f"interest-stream.replay.{topic}"


class Fenced(InterestStreamError):
    """Another replay into the same output topic took over this one's transactional id."""


class WriteFailed(InterestStreamError):
    """The output topic refused vectors: the replay stops, its open transaction aborted."""


def is_fenced(exc: BaseException | None) -> bool:
    """Whether a producer error means another producer holds the transactional id now. kafka-python
    reports it as ProducerFencedError, or as InvalidProducerEpochError on a send the broker refused,
    or wraps one of them in the KafkaError of a later send or commit."""
    from kafka.errors import InvalidProducerEpochError, ProducerFencedError

    if exc is None:
        return False
    if isinstance(exc, (ProducerFencedError, InvalidProducerEpochError)):
        return True
    return any(isinstance(a, BaseException) and is_fenced(a) for a in exc.args) or "ProducerFencedError" in str(exc)


def missing_private_parts(prod) -> list[str]:
    """The parts of :data:`PRIVATE_PARTS` that the producer ``prod`` has no callable for."""
    missing = []
    for part in PRIVATE_PARTS:
        obj = prod
        for name in part.split("."):
            obj = getattr(obj, name, None)
        if not callable(obj):
            missing.append(part)
    return missing


class BackfillWriter:
    """A replay's transactional producer: :meth:`send` vectors, :meth:`tick` often (it commits
    every COMMIT_S), :meth:`finish` at the end, or :meth:`abort` when the replay stops.
    ``committed`` counts the vectors of committed transactions, ``open`` those of the open one."""

    def __init__(self, s: Settings, topic: str) -> None:
        from kafka.errors import KafkaTimeoutError

        self.topic = topic
        self.tid = transactional_id(topic)
        self.prod = producer(s, max_in_flight=1, transactional_id=self.tid,  # keeps each user's order
                             transaction_timeout_ms=TRANSACTION_TIMEOUT_MS)
        missing = missing_private_parts(self.prod)
        if missing:
            import kafka

            self.prod.close(timeout=1)
            raise InterestStreamError(
                f"kafka-python {kafka.__version__} cannot write a replay's transactions: its producer has no "
                f"{', '.join(missing)}, which the replay calls (written for kafka-python 3.0: install 3.0.x)")
        try:
            self.prod.init_transactions()  # aborts the open transaction of a replay killed before
        except KafkaTimeoutError as exc:
            self.prod.close(timeout=1)
            raise InterestStreamError(
                f"Kafka at {s.bootstrap_servers} gave no transaction coordinator for {self.tid} ({exc}): a replay "
                "writes in transactions, which need the brokers' transaction state log (its "
                "transaction.state.log.replication.factor at most the live brokers)") from None
        self.deliveries = Deliveries()
        self.guard = SendsUninterrupted()  # installed by the replay: a Ctrl-C waits for kafka-python's send
        self.committed = self.open = 0
        self.began: float | None = None  # a transaction begins at its first vector

    def send(self, key: bytes, value: bytes) -> None:
        from kafka.errors import KafkaError

        if self.began is None:
            self.prod.begin_transaction()
            self.began = time.monotonic()
        with self.guard:
            try:
                self.deliveries.track(self.prod.send(self.topic, key=key, value=value))
            except KafkaError as exc:  # a send after a failed one is refused at once
                raise self.failure(exc) from None
            self.open += 1
        self.tick()

    def tick(self) -> None:
        if self.began is not None and time.monotonic() - self.began >= COMMIT_S:
            self.commit()

    def commit(self) -> None:
        from kafka.errors import KafkaError

        if self.began is None:
            return
        try:
            answered = self.end("begin_commit")  # flushes first: fails if any of its sends failed
        except KafkaError as exc:
            raise self.failure(exc) from None
        if self.deliveries.failed:  # while the commit waited for it, or (never counted) a commit that took it
            raise self.failure(self.deliveries.first)
        if not answered:
            raise WriteFailed(f"Kafka did not answer the commit of a transaction of {self.open} vectors to "
                              f"{self.topic} within {END_TIMEOUT_S:g} s (is the broker up?)")
        self.committed += self.open
        self.open, self.began = 0, None

    def finish(self) -> None:
        """Commit the last transaction and close."""
        self.commit()
        self.close()

    def abort(self) -> int:
        """Abort the open transaction (a fenced or failed producer cannot: the broker does) and
        close; returns how many vectors it held."""
        aborted, self.open = self.open, 0
        if self.began is not None:
            try:
                self.end("begin_abort")  # unanswered (no broker): the broker's timeout aborts it
            except Exception:  # fenced, or in a fatal state: the new owner or the timeout aborts it
                pass
        self.began = None
        self.close()
        return aborted

    def close(self) -> None:
        """Close the producer, even one that holds batches it will never send: a producer fenced
        while it re-initialized its epoch keeps them, and kafka-python's close then raised
        KafkaTimeoutError ("Timeout waiting for future", which replaced the replay's own error)
        and again, as a traceback on stderr, when the producer was garbage-collected."""
        from kafka.errors import KafkaError

        try:
            self.prod.close(timeout=5)
        except KafkaError:
            self.prod._sender.force_close()  # fails the stuck batches (kafka-python has no public way)
            self.prod.close(timeout=5)

    def end(self, begin: str) -> bool:
        """Commit (``begin_commit``) or abort (``begin_abort``) the open transaction as kafka-python's
        commit_transaction and abort_transaction do, but waiting END_TIMEOUT_S at most: theirs
        wait for ever, and a broker stopped during a commit left the replay hanging with no word,
        even once the broker was back (19 minutes, then killed). False when unanswered."""
        result = getattr(self.prod._transaction_manager, begin)()
        self.prod._sender.wakeup()
        deadline = time.monotonic() + END_TIMEOUT_S
        while not result.wait(timeout_ms=END_WAIT_SLICE_MS):
            if (begin == "begin_commit" and self.deliveries.failed) or time.monotonic() >= deadline:
                # a send that fails after the commit began leaves the commit unanswered for ever
                # (kafka-python turns the transaction abortable and never sends its end): stop
                # waiting for it at once (the replay's error names the send's)
                return False
        return True

    def failure(self, exc: BaseException) -> InterestStreamError:
        """The error a failed send or commit stops the replay with (the first failed send's, if
        any: a later error only says that an earlier one happened)."""
        first = self.deliveries.first or exc
        if is_fenced(first) or is_fenced(exc):
            return Fenced(f"another replay into {self.topic} started and took over its transactional id {self.tid}")
        return WriteFailed(f"vectors were not delivered to {self.topic} ({error_reason(first)})")

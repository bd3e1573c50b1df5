"""Producing and reading test traffic with kafka-python (as an independent client would)."""
from __future__ import annotations

import json
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def produce(bootstrap: str, records, record_ts_offset_ms: int = 0) -> None:
    """records: (topic, key bytes|None, value bytes|dict|None[, timestamp_ms])."""
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for rec in records:
        topic, key, value = rec[:3]
        if isinstance(value, dict):
            ts = value.get("ts") if isinstance(value.get("ts"), int) else None
            value = json.dumps(value).encode()
        else:
            ts = None
        ts = rec[3] if len(rec) > 3 else ts
        p.send(topic, key=key, value=value,
               timestamp_ms=(ts + record_ts_offset_ms) if isinstance(ts, int) else None)
    p.flush()
    p.close()


def set_topic_config(bootstrap: str, topics, name: str, value) -> None:
    """Change one config of each of ``topics``, the others kept (as an operator's ``kafka-configs
    --alter --add-config`` would). The controller's answer to the change is the check: kafka-python's
    own check of the config names first asks the broker to describe each topic, and a broker that
    has not yet learnt a topic created a moment before (from the metadata log, after CreateTopics
    returned) answers UNKNOWN_TOPIC_OR_PARTITION, which kafka-python read as a topic without
    configs: "Unrecognized configs: {'max.message.bytes'}" (one run of about 100 such changes after
    `topics create`, under load; 8 of 40 straight after an in-process create)."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        result = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={name: str(value)})
                                      for topic in topics], incremental=True, raise_on_unknown=False)
    finally:
        admin.close()
    answers = result.get("topic", {})
    failed = {topic: answers.get(topic) for topic in topics if answers.get(topic) != "OK"}
    assert not failed, f"{name}={value} not set: {failed}"


def set_max_message_bytes(bootstrap: str, topic: str, max_bytes: int) -> None:
    """Change a topic's ``max.message.bytes``."""
    set_topic_config(bootstrap, [topic], "max.message.bytes", max_bytes)


def read_all(bootstrap: str, topic: str, expect: int | None = None, timeout: float = 30,
             isolation: str = "read_uncommitted") -> list:
    """Every record of ``topic`` from the beginning, up to the end offsets its partitions had when
    the read started, or with ``expect``, when that many had arrived (within ``timeout``; a topic
    that does not exist is ``[]`` after it). ``isolation`` is the consumer's isolation.level:
    ``read_committed`` skips the records of aborted transactions, and its end offsets are the
    last stable ones. The consumer is given every partition itself and stops at once at those
    ends: before, it iterated until a second without a record, so each read took a second or
    two more than its records (it is called from 24 places in the tests)."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation)
    out = []
    deadline = time.monotonic() + timeout
    try:
        parts = c.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = c.partitions_for_topic(topic)
        if not parts:
            return out
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ends = c.end_offsets(tps)
        to_ends = expect is None
        while time.monotonic() < deadline:
            if not to_ends and len(out) >= expect:  # and whatever else the topic holds by then
                ends, to_ends = c.end_offsets(tps), True
            if to_ends and all(c.position(tp) >= end for tp, end in ends.items()):
                break
            for recs in c.poll(timeout_ms=200).values():
                out.extend(recs)
    finally:
        c.close()
    return out


def interrupt_inside_a_lock(monkeypatch, at: int) -> list:
    """SIGINT raised inside kafka-python's send, where Python can raise it: between the acquire and
    the release of the lock in ``Future._add_cb_eb``, which has no try/finally (7 of 300 loads
    interrupted at random were left unable to close so, bench/interrupt_send.py at f171bd4), on the
    future of the batch of the ``at``-th record sent. Returns the batches' futures as they come."""
    import signal

    from kafka.future import Future
    from kafka.producer.future import FutureProduceResult

    batch_futures, add_cb_eb = [], Future._add_cb_eb

    def add_cb_eb_interrupted(self, cb, eb):
        if isinstance(self, FutureProduceResult):
            batch_futures.append(self)
        if len(batch_futures) != at or batch_futures[-1] is not self or self.is_done:
            return add_cb_eb(self, cb, eb)
        self._lock.acquire()
        signal.raise_signal(signal.SIGINT)  # its handler runs before this returns
        self._callbacks.append(cb)
        self._errbacks.append(eb)
        self._lock.release()
        return self

    monkeypatch.setattr(Future, "_add_cb_eb", add_cb_eb_interrupted)
    return batch_futures

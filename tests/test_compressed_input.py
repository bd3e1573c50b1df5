"""Input written by producers that compress their record batches (Kafka's `compression.type`:
gzip, snappy, lz4, zstd; the broker keeps a batch as its producer wrote it). The worker's consumer
(aiokafka) and the CLI's clients (kafka-python) need a library per codec, the extras in
pyproject.toml. Without them the worker's fetcher crashed at the first lz4 batch ("Libraries for
lz4 compression codec not found") and the worker stopped; replay was a one-line error naming the
missing codec."""
from __future__ import annotations

import json

import orjson
import pytest
from kafka import KafkaProducer

from conftest import cli
from kafka_io import read_all
from test_worker_ingest import T0, event, topics, wait_until_counted

pytestmark = pytest.mark.kafka
CODECS = ("gzip", "snappy", "lz4", "zstd")


def compressed(env, events, codec: str) -> None:
    p = KafkaProducer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"], compression_type=codec, linger_ms=50)
    t = topics(env)
    for e in events:
        p.send(t[e["type"]], key=e["user_id"].encode(), value=json.dumps(e).encode())
    p.flush()
    p.close()


def test_batches_of_every_kafka_codec_are_read_by_the_worker_and_by_replay(env, workers):
    cli(env, "topics", "create")
    w = workers()
    events = {codec: [event(i, f"{codec}-user{u}", ["click", "browse", "search"][i % 3], T0 + i * 60_000 + u)
                      for u in range(3) for i in range(20)] for codec in CODECS}
    for codec, evs in events.items():
        compressed(env, evs, codec)
    everything = [e for evs in events.values() for e in evs]
    wait_until_counted(w, everything)
    assert w.proc.poll() is None
    # replay reads the input topics with kafka-python: each user's last vector has all 20 events
    out_topic = f"{env['INTEREST_TOPIC_PREFIX']}bf"
    out = cli(env, "replay", "--from", "2001-01-01T00:00:00Z", "--to", "2001-01-02T00:00:00Z",
              "--output-topic", out_topic, "--no-progress").stdout
    assert "replayed:" in out, out
    last = {r.key.decode(): orjson.loads(r.value) for r in read_all(env["KAFKA_BOOTSTRAP_SERVERS"], out_topic)}
    assert {user: v["events"] for user, v in last.items()} == {e["user_id"]: 20 for e in everything}

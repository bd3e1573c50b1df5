"""Which partition a user lives on: Kafka's default key partitioner (murmur2), as used by the
Java client, kafka-python and aiokafka. Input events, table changelogs, the control topic and
the interest topic are all keyed by user id and co-partitioned through it."""
from __future__ import annotations

from kafka.partitioner.default import murmur2


def partition_for(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions

"""The worker's local table state checked against the changelog before Faust recovers it.

Faust keeps, inside each partition's RocksDB database, the offset of the last changelog record it
holds, and at recovery reads the changelog from there. When the local database is ahead of the
changelog (the topics were deleted and created again, the directory was copied from another
deployment or machine), Faust stops with ``ConsistencyError``. The changelog is the source of
truth, so such a partition's database is deleted here, with a warning naming it, and Faust rebuilds
it from the changelog.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger("interest_stream.local_state")

OFFSET_KEY = b"__faust\0offset__"  # faust.stores.rocksdb.Store.offset_key


def persisted_offset(path: Path) -> int | None:
    """The changelog offset a partition database says it holds (None: none or unreadable)."""
    from rocksdict import AccessType, Options, Rdict

    try:
        db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
    except Exception as exc:  # not a database we can read: Faust will say so itself
        log.warning("could not read %s: %s", path, exc)
        return None
    try:
        raw = db.get(OFFSET_KEY)
        return int(raw) if raw is not None else None
    finally:
        db.close()


def stale_partitions(paths: dict[int, Path], ends: dict[int, int]) -> list[tuple[int, Path, int, int]]:
    """``(partition, path, persisted offset, changelog end)`` of local databases whose persisted
    offset is not below the end of their changelog partition (a missing topic ends at 0)."""
    out = []
    for p, path in sorted(paths.items()):
        if not path.exists():
            continue
        offset = persisted_offset(path)
        end = ends.get(p, 0)
        if offset is not None and offset >= end:
            out.append((p, path, offset, end))
    return out


def changelog_ends(settings, topic: str) -> dict[int, int]:
    """End offset of each partition of ``topic`` (empty when the topic does not exist)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.kafka_python_config())
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            return {}
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        consumer.close()


def rebuild_stale(settings, paths: dict[int, Path], topic: str) -> list[int]:
    """Delete the local databases that are ahead of ``topic`` (Faust then recovers them from the
    changelog); returns their partitions."""
    stale = stale_partitions(paths, changelog_ends(settings, topic))
    for p, path, offset, end in stale:
        log.warning("local state %s holds changelog offset %d but %s[%d] ends at %d (topics recreated, or the "
                    "directory came from elsewhere): deleting it to rebuild from the changelog", path, offset,
                    topic, p, end)
        shutil.rmtree(path, ignore_errors=True)
    return [p for p, *_ in stale]

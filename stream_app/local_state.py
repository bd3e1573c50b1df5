"""The worker's local table state checked against the changelog before Faust recovers it.

Faust keeps, inside each partition's RocksDB database, the offset of the last changelog record it
holds, and at recovery reads the changelog from there. When the local database is ahead of the
changelog (the topics were deleted and created again, the directory was copied from another
deployment or machine), Faust stops with ``ConsistencyError``. The changelog is the source of
truth, so such a partition's database is deleted here, with a warning naming it, and Faust rebuilds
it from the changelog.

Behind its changelog, such a database is not detected by its offset: Faust would read the new
changelog from that offset on top of the other one's state (users of the other deployment kept,
this one's earlier records skipped). So the id Kafka gave the changelog topic is kept in a file
beside the databases, ``<changelog topic>.id``; databases built from another id are deleted too.

A database can also hold states its changelog lacks: a flush writes RocksDB, then the broker
refuses the changelog records, or the worker dies before the broker answers
(:mod:`stream_app.flush`). Their events stay uncommitted, and are read again after a restart, but
on top of that database they would count as duplicates, and the changelog would never get those
states. The flush puts a file beside the database, ``<database>.unwritten``
(:func:`unwritten_marker`), before it writes, and removes it once the broker has taken the
records (after a refusal, once a later flush of the partition succeeds); a database found with
one at start is deleted too.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from .settings import ConfigError

log = logging.getLogger("interest_stream.local_state")

OFFSET_KEY = b"__faust\0offset__"  # faust.stores.rocksdb.Store.offset_key


def unwritten_marker(path: Path) -> Path:
    """The file that says the partition database at ``path`` holds states its changelog lacks."""
    return path.with_name(path.name + ".unwritten")


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


def changelog_id(settings, topic: str) -> str | None:
    """Kafka's id of ``topic`` (a topic deleted and created again gets a new one); None when the
    topic does not exist."""
    from .topics import admin

    client = admin(settings)
    try:
        (desc,) = client.describe_topics([topic])
    except Exception:  # UnknownTopicOrPartitionError: Faust creates it
        return None
    finally:
        client.close()
    return desc.get("topic_id") or None  # (kafka-python 3.0 answers a missing topic with id None)


def other_changelog(paths: dict[int, Path], marker: Path, topic_id: str | None) -> str | None:
    """The id of the changelog the local databases were built from, when it is not ``topic_id``
    (the topics were deleted and created again, or the directory came from another deployment or
    cluster): offsets in another changelog say nothing about this one's. None when they match or
    cannot be told (no marker yet: state from before markers, or none at all)."""
    try:
        built_from = marker.read_text().strip()
    except OSError:
        return None
    if topic_id is None or built_from == topic_id or not any(path.exists() for path in paths.values()):
        return None
    return built_from


def rebuild_stale(settings, paths: dict[int, Path], topic: str) -> list[int]:
    """Delete the local databases that were built from another changelog than ``topic`` (the
    marker file beside them holds its id), or are ahead of it; Faust then recovers them from the
    changelog. Returns their partitions."""
    topic_id = changelog_id(settings, topic)
    marker = next(iter(paths.values())).parent / f"{topic}.id"
    other = other_changelog(paths, marker, topic_id)
    if other is not None:
        stale = [(p, path) for p, path in sorted(paths.items()) if path.exists()]
        for p, path in stale:
            log.warning("local state %s was built from another %s (topic id %s; this one is %s: topics "
                        "recreated, or the directory came from elsewhere): deleting it to rebuild from the "
                        "changelog", path, topic, other, topic_id)
            shutil.rmtree(path, ignore_errors=True)
            unwritten_marker(path).unlink(missing_ok=True)  # (left, it would delete the rebuilt one next time)
    else:
        stale = []
        for p, path in sorted(paths.items()):
            if unwritten_marker(path).exists():
                log.warning("local state %s may hold states its changelog lacks (a flush was refused or cut short "
                            "before the worker stopped): deleting it to rebuild from the changelog; their events are "
                            "read again", path)
                shutil.rmtree(path, ignore_errors=True)
                unwritten_marker(path).unlink()
                stale.append((p, path))
        for p, path, offset, end in stale_partitions(paths, changelog_ends(settings, topic)):
            log.warning("local state %s holds changelog offset %d but %s[%d] ends at %d (topics recreated, or "
                        "the directory came from elsewhere): deleting it to rebuild from the changelog", path,
                        offset, topic, p, end)
            shutil.rmtree(path, ignore_errors=True)
            stale.append((p, path))
    if topic_id is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(topic_id + "\n")
    return [p for p, _ in stale]


LOCK_FILE = "worker.lock"
_held = []  # the locks of this process, open until it ends


def lock_state_dir(path: Path) -> None:
    """Take this deployment's state directory for this process (an exclusive ``flock`` on
    ``worker.lock`` in it, which the kernel drops when the process ends, however it ends). A second
    worker with the same INTEREST_DATA_DIR waited on RocksDB's lock of each partition, then stopped
    with tracebacks, and put the first one through a rebalance. A lock file that cannot be opened
    (a directory, another user's file) is a ConfigError naming it."""
    try:
        f = open(path / LOCK_FILE, "a+")
    except OSError as exc:
        raise ConfigError(f"INTEREST_DATA_DIR: cannot open {path / LOCK_FILE}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise ConfigError(f"INTEREST_DATA_DIR: {path} is in use by another worker (pid {holder}); workers on one "
                          "host need their own INTEREST_DATA_DIR") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _held.append(f)


def holds_state_dir(path: Path) -> bool:
    """Whether this process took ``path`` with :func:`lock_state_dir` (``interest-stream worker``
    does before Faust starts; ``faust -A stream_app.app worker`` when the app starts)."""
    return any(f.name == str(path / LOCK_FILE) for f in _held)

"""The worker's local state directory, tried as a new operator would: a directory that does not
exist yet, one that cannot exist, two deployments sharing one, and local state ahead of its
changelog (the topics were deleted and created again)."""
from __future__ import annotations

import time

import pytest
from kafka.admin import KafkaAdminClient

from conftest import Worker, cli, wait_for
from test_write_behind import counted, send, users_events

pytestmark = pytest.mark.kafka


def test_a_missing_state_dir_is_created_and_an_impossible_one_is_a_one_line_error(env, workers, tmp_path):
    cli(env, "topics", "create")
    where = tmp_path / "not" / "yet" / "there"
    w = workers(argv=Worker.CLI, data_dir=where)  # `interest-stream worker`
    assert (where / f"{env['INTEREST_TOPIC_PREFIX']}interest-stream").is_dir()  # one subdirectory per app id
    assert w.stop() == 0
    proc = cli(dict(env, INTEREST_DATA_DIR="/proc/interest-stream"), "worker", check=False, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "INTEREST_DATA_DIR: cannot create /proc/interest-stream/" in proc.stderr


def test_two_deployments_one_after_the_other_in_one_state_dir(env, workers, tmp_path):
    shared = tmp_path / "shared-state"
    first = users_events(4, 3, name="a")
    cli(env, "topics", "create")
    w1 = workers("one", data_dir=shared)
    send(env, first)
    wait_for(lambda: counted(w1, first), what="the first deployment's counts")
    assert w1.stop() == 0
    other = dict(env, INTEREST_TOPIC_PREFIX=env["INTEREST_TOPIC_PREFIX"] + "b.")
    cli(other, "topics", "create")
    w2 = workers("two", data_dir=shared, INTEREST_TOPIC_PREFIX=other["INTEREST_TOPIC_PREFIX"])
    second = users_events(3, 2, name="b")
    send(other, second)
    wait_for(lambda: counted(w2, second), what="the second deployment's counts")
    assert w2.get("/users/a0")[0] == 404  # the first deployment's users are not the second's
    assert sorted(p.name for p in shared.iterdir()) == sorted(
        f"{e['INTEREST_TOPIC_PREFIX']}interest-stream" for e in (env, other))


def delete_topics(env) -> None:
    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        mine = [t for t in admin.list_topics() if t.startswith(env["INTEREST_TOPIC_PREFIX"])]
        admin.delete_topics(mine)
        wait_for(lambda: not [t for t in admin.list_topics() if t.startswith(env["INTEREST_TOPIC_PREFIX"])],
                 what="the topics deleted")
    finally:
        admin.close()


def test_local_state_ahead_of_its_changelog_is_rebuilt_from_it_with_a_warning(env, workers):
    cli(env, "topics", "create")
    w = workers()
    old = users_events(5, 4, name="old")
    send(env, old)
    wait_for(lambda: counted(w, old), what="counts before")
    assert w.stop() == 0  # flushed: the local RocksDB holds changelog offsets 0..4
    delete_topics(env)
    for _ in range(30):  # the broker may still be finishing the deletion
        if "created" in cli(env, "topics", "create", check=False).stdout:
            break
        time.sleep(1)
    w.start()  # same state directory
    log = w.log(400)
    assert "deleting it to rebuild from the changelog" in log and "ConsistencyError" not in log
    assert w.get("/users/old0")[0] == 404  # the changelog is the truth: it is empty now
    new = users_events(2, 3, name="new")
    send(env, new)
    wait_for(lambda: counted(w, new), what="counts after the rebuild")


def test_local_state_behind_a_recreated_changelog_is_rebuilt_from_it(env, workers):
    """The topics deleted and created again, and the new changelog written past the old local
    offsets by another worker: Faust read the new changelog from those offsets on top of the old
    state, so the old users were back (200) and the new users' earlier records were skipped. The
    changelog's topic id, kept beside the databases, tells the two changelogs apart."""
    cli(env, "topics", "create")
    w = workers()
    old = users_events(2, 1, name="old")
    send(env, old)
    wait_for(lambda: counted(w, old), what="counts before")
    assert w.stop() == 0  # the local databases hold offsets 0 of this changelog
    delete_topics(env)
    for _ in range(30):  # the broker may still be finishing the deletion
        if "created" in cli(env, "topics", "create", check=False).stdout:
            break
        time.sleep(1)
    other = workers("other")  # its own state directory
    new = users_events(40, 2, name="new")
    send(env, new)
    wait_for(lambda: counted(other, new), what="counts of the other worker")
    assert other.stop() == 0  # the new changelog's partitions end beyond those offsets
    w.start()  # the first worker's old state directory
    assert w.get("/users/old0")[0] == 404 and w.get("/users/old1")[0] == 404
    wait_for(lambda: counted(w, new), what="counts restored from the new changelog")
    assert "was built from another" in w.log(400) and "deleting it to rebuild from the changelog" in w.log(400)


def test_a_second_faust_worker_on_the_same_state_dir_stops_at_its_lock(env, workers, tmp_path):
    """`faust -A stream_app.app worker` took no lock (only `interest-stream worker` did), so a
    second one on the same INTEREST_DATA_DIR waited on RocksDB's locks, then stopped with
    tracebacks after putting the first through a rebalance. The app takes the lock as it starts."""
    shared = tmp_path / "shared-state"
    cli(env, "topics", "create")
    w1 = workers("one", data_dir=shared)
    w2 = workers("two", data_dir=shared, start=False)
    w2.start(wait=False)
    assert w2.proc.wait(60) != 0
    state = shared / f"{env['INTEREST_TOPIC_PREFIX']}interest-stream"
    assert (f"INTEREST_DATA_DIR: {state} is in use by another worker (pid {w1.proc.pid}); workers on one host "
            "need their own INTEREST_DATA_DIR") in w2.log()
    events = users_events(4, 3, name="a")
    send(env, events)
    wait_for(lambda: counted(w1, events), what="the first worker's counts")
    assert "rebalanc" not in w1.log(400).lower()

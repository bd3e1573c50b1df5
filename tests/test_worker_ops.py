"""Operations against the real broker: SIGTERM, JSON logs, the README's downstream consumer."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from conftest import ROOT, Worker, cli, wait_for
from kafka_io import read_all
from test_worker_ingest import topics
from test_worker_scoring import send, user_events, vectors_by_user

pytestmark = pytest.mark.kafka


def committed_and_end(env) -> tuple[dict, dict]:
    """The worker group's committed offsets and the end offsets of the input topics."""
    c = KafkaConsumer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
                      group_id=f"{env['INTEREST_TOPIC_PREFIX']}interest-stream",
                      enable_auto_commit=False)
    try:
        tps = [TopicPartition(topics(env)[t], p) for t in ("click", "browse", "search")
               for p in range(int(env["INTEREST_PARTITIONS"]))]
        end = c.end_offsets(tps)
        committed = {tp: c.committed(tp) or 0 for tp in tps}
        return committed, end
    finally:
        c.close()


def test_sigterm_commits_flushes_and_exits_quickly(env, workers):
    cli(env, "topics", "create")
    w = workers(INTEREST_COMMIT_INTERVAL_S="3600")  # only the shutdown commits
    users = {f"t{i}": user_events(f"t{i}", 7 + i, 0, ["sports", "tech"]) for i in range(6)}
    send(env, [e for evs in users.values() for e in evs])
    wait_for(lambda: all(w.get(f"/users/{u}")[0] == 200 and w.get(f"/users/{u}")[1]["events"] == len(evs)
                         for u, evs in users.items()), what="all events in state")
    t = time.monotonic()
    rc = w.stop(timeout=60)
    took = time.monotonic() - t
    assert rc == 0, w.log()
    assert took < 15, f"shutdown took {took:.1f} s"
    committed, end = committed_and_end(env)
    assert committed == end, "offsets of every processed event are committed at shutdown"
    # the changelog was flushed: a worker with an empty state directory restores exact counts
    w2 = workers("fresh")
    for u, evs in users.items():
        status, body = w2.get(f"/users/{u}")
        assert status == 200 and body["events"] == len(evs)


def test_json_logs_are_one_object_per_line(env, workers):
    cli(env, "topics", "create")
    w = workers(INTEREST_LOG_FORMAT="json", argv=Worker.CLI)  # `interest-stream worker`
    send(env, user_events("j1", 3, 0, ["music"]))
    wait_for(lambda: w.get("/users/j1")[0] == 200, what="event in state")
    assert w.stop() == 0
    lines = [line for line in w.log_path.read_text().splitlines() if line.strip()]
    assert len(lines) > 5
    records = [orjson.loads(line) for line in lines]  # raises on any line that is not JSON
    for r in records:
        assert {"ts", "level", "logger", "pid", "message"} <= set(r)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", r["ts"])
    assert any(r["level"] == "info" for r in records)


def readme_consumer() -> str:
    """The downstream consumer shown in the README (the block after its marker comment)."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- downstream-consumer -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README has no downstream consumer block"
    code = m.group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 13
    return code


def test_readme_downstream_consumer_keeps_latest_vector_per_user(env, workers, tmp_path):
    cli(env, "topics", "create")
    w = workers()
    users = {f"d{i}": user_events(f"d{i}", 4, 0, [["sports"], ["tech"], ["travel"]][i % 3][0:1])
             for i in range(4)}
    send(env, [e for evs in users.values() for e in evs])
    vectors_by_user(env, expect=4)
    # a second vector for d0 (it moves to music), and d3 is forgotten
    send(env, user_events("d0", 12, 100, ["music"]))
    wait_for(lambda: (w.get("/users/d0")[1].get("interests") or {}).get("events") == 16,
             what="second vector for d0")
    cli(env, "forget", "d3", "--timeout", "60")
    script = tmp_path / "consumer.py"
    script.write_text(readme_consumer())
    out = subprocess.run([sys.executable, str(script)], env=dict(env, CONSUMER_TIMEOUT_MS="5000"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    latest = orjson.loads(out.stdout.strip().splitlines()[-1])
    assert set(latest) == {"d0", "d1", "d2"}
    for u in latest:  # the newest vector of each user, as the worker reports it
        assert latest[u] == w.get(f"/users/{u}")[1]["interests"]
    assert latest["d0"]["events"] == 16


def test_idle_users_are_compacted_keep_their_profile_then_are_evicted(env, workers, tiny_model_dir):
    """Horizon 2 s + grace 1 s, profile retention 8 s (event time and wall clock both): an idle
    user's rows are dropped while the profile and the latest vector stay; the user's next vector
    reads the profile of all their events; after the retention the user is gone (404)."""
    from interest_core.window import WindowEvent, profiles_in_order
    from stream_app.model_runtime import LoadedModel
    from stream_app.partitioning import partition_for
    from test_worker_ingest import T0, event

    cli(env, "topics", "create")
    w = workers(INTEREST_HORIZON_S="2", INTEREST_GRACE_S="1", INTEREST_PROFILE_RETENTION_S="8",
                INTEREST_EVICT_EVERY_S="0.5")
    parts = int(env["INTEREST_PARTITIONS"])
    other = next(f"b{i}" for i in range(1000) if partition_for(f"b{i}".encode(), parts) ==
                 partition_for(b"a", parts))  # moves the partition's event time on
    a_events = [event(1, "a", "click", T0, "sports"), event(2, "a", "browse", T0 + 500, "sports")]
    send(env, a_events)
    def user_a():
        status, body = w.get("/users/a")
        return body if status == 200 else None

    wait_for(lambda: (user_a() or {}).get("interests"), what="a scored")
    time.sleep(3.5)  # idle on the wall clock for longer than horizon + grace
    send(env, [event(1, other, "click", T0 + 4_000, "music")])

    user = wait_for(lambda: (user_a() or {}).get("events", -1) == 0 and user_a(), timeout=30, what="a compacted")
    assert user["interests"] is not None and user["newest_ts"] == T0 + 500
    # the explanation is of the vector served (it re-scored the empty window: other interests)
    status, ex = w.get("/users/a/explain")
    assert status == 200 and ex["interests"] == user["interests"]["interests"] and ex["events"] == 0
    assert ex["idle"] == {"newest_ts": T0 + 500, "vector_ts": user["interests"]["ts"]}

    # a's last event again: its id went with the rows, so it is refused, not counted twice (it was
    # accepted, into the window and a second time into the profile the vector below checks)
    send(env, [a_events[1]])
    letter = orjson.loads(read_all(env["KAFKA_BOOTSTRAP_SERVERS"], topics(env)["dlq"], expect=1)[0].value)
    assert (letter["reason"], letter["key_b64"]) == ("late", "YQ==")  # key a
    assert letter["detail"].startswith("at or before the newest event this worker no longer holds for the user")
    assert user_a()["events"] == 0

    # a comes back before the retention ends: the window holds one event, the profile all three
    back = event(3, "a", "click", T0 + 4_500, "music")
    send(env, [back])
    vecs = wait_for(lambda: [v for v in vectors_by_user(env, expect=1, timeout=5).get("a", [])
                             if v and v["ts"] == T0 + 4_500], timeout=30, what="a scored again")
    model = LoadedModel.load(tiny_model_dir)
    evs = [WindowEvent.from_event(e) for e in a_events + [back]]
    for prof in profiles_in_order(evs, 8_000):
        pass
    want = model.predict([[evs[-1]]], [prof])[0]
    assert vecs[-1]["events"] == 1
    for c, p in zip(model.categories, want):
        assert vecs[-1]["interests"][c] == pytest.approx(p, abs=1e-5)

    time.sleep(8.5)  # idle for longer than the retention, on the wall clock and in event time
    send(env, [event(2, other, "click", T0 + 14_000, "music")])
    wait_for(lambda: w.get("/users/a")[0] == 404, timeout=30, what="a evicted")
    _, m = w.get("/metrics")
    assert re.search(r"^interest_users_compacted_total [1-9]", m, re.M)
    assert re.search(r"^interest_users_evicted_total [1-9]", m, re.M)

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
    rc = w.stop(timeout=30)
    took = time.monotonic() - t
    assert rc == 0, w.log()
    assert took < 30
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

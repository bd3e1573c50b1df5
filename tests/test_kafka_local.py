"""`interest-stream kafka up|down|status` against a broker of its own (not the session's)."""
import os
import signal

import pytest

from conftest import ROOT, cli
from stream_app.kafka_local import LocalKafka, broker_answers, free_port

pytestmark = pytest.mark.kafka


def _no_broker_process(home) -> bool:
    for cmd in os.listdir("/proc"):
        if cmd.isdigit():
            try:
                line = open(f"/proc/{cmd}/cmdline", "rb").read()
            except OSError:
                continue
            if b"kafka.Kafka" in line and str(home).encode() in line:
                return False
    return True


def test_up_status_down_and_stale_pid(tmp_path, session_dir):
    port, cport = free_port(), free_port()
    home = tmp_path / "kafka"
    env = dict(os.environ, INTEREST_KAFKA_HOME=str(home), INTEREST_KAFKA_PORT=str(port),
               INTEREST_KAFKA_CONTROLLER_PORT=str(cport), INTEREST_KAFKA_HEAP="256m")
    try:
        out = cli(env, "kafka", "up").stdout
        assert "started in" in out and f"127.0.0.1:{port}" in out
        assert broker_answers(f"127.0.0.1:{port}")
        assert "already running" in cli(env, "kafka", "up").stdout  # idempotent
        st = cli(env, "kafka", "status").stdout
        assert st.startswith("running: Kafka 4.1.1 at 127.0.0.1:") and str(home) in st

        # a killed session: the broker dies without `down`, its pid file stays behind
        k = LocalKafka(home=home, port=port, controller_port=cport)
        pid = k.pid()
        os.killpg(os.getpgid(pid), signal.SIGKILL)
        import time
        for _ in range(50):
            if k.pid() is None:
                break
            time.sleep(0.1)
        assert k.pid_file.exists() and k.pid() is None
        assert cli(env, "kafka", "status", check=False).returncode == 1
        out = cli(env, "kafka", "up").stdout  # cleans the stale pid file and starts again
        assert "started in" in out and k.pid() != pid

        assert cli(env, "kafka", "down").stdout.strip() == "stopped"
        assert _no_broker_process(home)
        assert (home / "data" / "meta.properties").exists()  # data kept
        assert cli(env, "kafka", "down", "--purge").stdout.strip() == "not running, data purged"
        assert not home.exists()
    finally:
        LocalKafka(home=home, port=port, controller_port=cport).down(purge=True)


def test_a_broker_on_another_port_of_the_same_home_is_kept(tmp_path, session_dir):
    """`kafka up --port P2` stopped the home's broker on P1 without a word (it did not answer on
    P2, so it was taken for half-started) and started another; now it is refused and kept.
    `kafka status` and `down` find it on P1."""
    port, other, cport = free_port(), free_port(), free_port()
    home = tmp_path / "kafka"
    env = dict(os.environ, INTEREST_KAFKA_HOME=str(home), INTEREST_KAFKA_PORT=str(other),
               INTEREST_KAFKA_CONTROLLER_PORT=str(cport), INTEREST_KAFKA_HEAP="256m")
    k = LocalKafka(home=home, port=port, controller_port=cport)
    try:
        assert "started in" in cli(env, "kafka", "up", "--port", str(port)).stdout
        pid = k.pid()
        for args in (["up"], ["up", "--port", str(other)]):
            res = cli(env, "kafka", *args, check=False)
            assert res.returncode == 1 and res.stdout == ""
            assert res.stderr == (f"Error: a broker from {home} is already running at 127.0.0.1:{port}; "
                                  "`interest-stream kafka down` first, or use another INTEREST_KAFKA_HOME\n")
        assert k.pid() == pid and broker_answers(f"127.0.0.1:{port}")
        st = cli(env, "kafka", "status", check=False)  # was "not running": it looked at INTEREST_KAFKA_PORT
        assert st.returncode == 0
        assert st.stdout == f"running: Kafka 4.1.1 at 127.0.0.1:{port}, pid {pid}, data in {home}\n"
        assert "already running" in cli(env, "kafka", "up", "--port", str(port)).stdout
        assert cli(env, "kafka", "down").stdout.strip() == "stopped"  # whatever port it runs on
        assert _no_broker_process(home)
    finally:
        k.down(purge=True)


def test_cluster_ids_never_start_with_a_dash(monkeypatch):
    """kafka-storage's parser takes "-..." for an option; 1 in 64 random ids would start so."""
    import uuid

    from stream_app import kafka_local

    dash = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))  # base64 of 0xF8.. starts with "-"
    ids = iter([dash, uuid.UUID(int=1)])
    monkeypatch.setattr(kafka_local.uuid, "uuid4", lambda: next(ids))
    assert kafka_local.new_cluster_id() == "AAAAAAAAAAAAAAAAAAAAAQ"


def test_two_processes_resolve_the_jars_once(tmp_path):
    """The tests' two workers (or two `kafka up`) on a machine without the jars yet: one Maven
    run, and both find the jars (without the lock both write libs.tmp at once)."""
    import subprocess
    import sys
    import textwrap

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    runs = tmp_path / "mvn-runs"
    mvn = bin_dir / "mvn"  # stands in for Maven: slow, and writes one jar to -DoutputDirectory
    mvn.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo run >> {runs}
        sleep 1
        for a in "$@"; do case "$a" in -DoutputDirectory=*) out="${{a#-DoutputDirectory=}}";; esac; done
        mkdir -p "$out" && touch "$out/kafka_2.13-4.1.1.jar"
        """))
    mvn.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", INTEREST_CACHE_DIR=str(tmp_path / "cache"))
    code = "from pathlib import Path; from stream_app.kafka_local import LocalKafka; " \
           "print(sorted(p.name for p in LocalKafka(home=Path('.')).libs().iterdir()))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [o for o, _ in outs] == ["['kafka_2.13-4.1.1.jar']\n"] * 2, outs
    assert runs.read_text() == "run\n"


def test_purge_deletes_only_what_up_made(tmp_path):
    """`kafka down --purge` ran rmtree on the whole home: a mistaken INTEREST_KAFKA_HOME ($HOME, a
    project) was wiped, broker or not. Now it deletes the data, config, logs and pid file that `up`
    made, then the home if nothing else is in it, and refuses a directory `up` did not make."""
    mistaken = tmp_path / "project"
    (mistaken / "src").mkdir(parents=True)
    (mistaken / "notes.txt").write_text("precious\n")
    (mistaken / "kafka.pid").write_text("12345\n")
    res = cli(dict(os.environ, INTEREST_KAFKA_HOME=str(mistaken)), "kafka", "down", "--purge", check=False)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == (f"Error: {mistaken} is not a broker home (no config written by `interest-stream "
                          "kafka up` in it); nothing deleted: check INTEREST_KAFKA_HOME\n")
    assert sorted(p.name for p in mistaken.iterdir()) == ["kafka.pid", "notes.txt", "src"]

    home = tmp_path / "kafka"
    k = LocalKafka(home=home, port=free_port(), controller_port=free_port())
    k.write_config()  # what `up` leaves behind, without starting a JVM
    (home / "data" / "__consumer_offsets-0").mkdir(parents=True)
    (home / "data" / "meta.properties").write_text("node.id=1\n")
    k.log_file.parent.mkdir()
    k.log_file.write_text("log\n")
    k.pid_file.write_text("999999999\n")
    (home / "mine.txt").write_text("kept\n")
    env = dict(os.environ, INTEREST_KAFKA_HOME=str(home))
    assert cli(env, "kafka", "down", "--purge").stdout == "not running, data purged\n"
    assert [p.name for p in home.iterdir()] == ["mine.txt"]
    (home / "mine.txt").unlink()
    k.write_config()
    assert cli(env, "kafka", "down", "--purge").stdout == "not running, data purged\n"
    assert not home.exists()
    assert cli(env, "kafka", "down", "--purge").stdout == "not running, data purged\n"  # nothing to purge

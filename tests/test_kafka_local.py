"""`interest-stream kafka up|down|status` against a broker of its own (not the session's)."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, cli
from stream_app.kafka_local import KafkaLocalError, LocalKafka, broker_answers, default_home, free_port

pytestmark = pytest.mark.kafka


def _broker_pids(home) -> list[int]:
    pids = []
    for cmd in os.listdir("/proc"):
        if cmd.isdigit():
            try:
                line = open(f"/proc/{cmd}/cmdline", "rb").read()
            except OSError:
                continue
            if b"kafka.Kafka" in line and str(home).encode() in line:
                pids.append(int(cmd))
    return pids


def _no_broker_process(home) -> bool:
    return not _broker_pids(home)


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


def test_free_ports_are_below_the_range_of_outgoing_connections_local_ports():
    """A port the kernel handed out came from the range it gives outgoing connections too: under
    three test processes one was in use by the time the worker bound it ("address already in
    use"). Below that range a port is bound only by whoever chose it."""
    from stream_app.kafka_local import OUTGOING_PORTS

    low = int(OUTGOING_PORTS.read_text().split()[0])
    ports = [free_port() for _ in range(20)]
    assert all(low - 16384 <= p < low for p in ports), ports
    assert len(set(ports)) > 1  # each process draws its own, not the same first port
    for p in ports:
        with socket.socket() as s:
            s.bind(("", p))


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


def test_two_ups_on_one_home_leave_one_broker(tmp_path, session_dir):
    """Two `kafka up` at once on one home: the second found the first's broker alive but not yet
    answering and stopped it, and the first then deleted the second's pid file, leaving a broker
    that `status` and `down` could not see. Now the second waits for the first (a lock on the
    home) and finds its broker running."""
    port, cport = free_port(), free_port()
    home = tmp_path / "kafka"
    env = dict(os.environ, INTEREST_KAFKA_HOME=str(home), INTEREST_KAFKA_PORT=str(port),
               INTEREST_KAFKA_CONTROLLER_PORT=str(cport), INTEREST_KAFKA_HEAP="256m")
    k = LocalKafka(home=home, port=port, controller_port=cport)
    try:
        first = subprocess.Popen([sys.executable, "-m", "stream_app.cli", "kafka", "up"], env=env, cwd=ROOT,
                                 text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(600):  # the first's JVM is starting
            if k.pid_file.exists() or first.poll() is not None:
                break
            time.sleep(0.05)
        second = cli(env, "kafka", "up", check=False)
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0 and out.startswith("kafka started in"), err
        assert second.returncode == 0, second.stderr
        assert second.stdout == f"kafka already running at 127.0.0.1:{port} (data in {home})\n"
        assert _broker_pids(home) == [k.pid()]
        assert cli(env, "kafka", "down").stdout == "stopped\n"
        assert _no_broker_process(home)
    finally:
        k.down(purge=True)
        for pid in _broker_pids(home):  # an orphan the pid file does not name
            os.killpg(pid, signal.SIGKILL)


def test_down_inside_up_does_not_wait_for_itself(tmp_path):
    """The tests' session stops its broker from a SIGTERM handler, which can run while its own
    `up` holds the home's lock: that `down` goes on instead of waiting for itself forever."""
    code = ("from pathlib import Path; from stream_app.kafka_local import LocalKafka; "
            f"k = LocalKafka(home=Path({str(tmp_path / 'kafka')!r})); k.write_config()\n"
            "with k._locked(make=True): print(k.down(purge=True))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert (res.stdout, res.stderr) == ("False\n", "")
    assert not (tmp_path / "kafka").exists()


def test_a_pid_file_naming_no_broker_of_this_home_is_stale(tmp_path):
    """pid() took any live process with kafka.Kafka in its command line, so after pid reuse `down`
    stopped another home's broker; a pid file of 0 or -1 named the caller's own process group, and
    `down` killed the caller. Now only a broker started with this home's config counts."""
    home = tmp_path / "kafka"
    k = LocalKafka(home=home, port=free_port(), controller_port=free_port())
    k.write_config()
    for text in ("0", "-1", "1", "99999999999999999999"):
        k.pid_file.write_text(text + "\n")
        assert k.pid() is None, text
        assert k.down() is False and not k.pid_file.exists()
    other = LocalKafka(home=tmp_path / "other")
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka",
                               str(broker.config_file)], start_new_session=True) for broker in (other, k)]
    try:
        for proc in procs:  # the command line reads empty for a moment after the exec
            for _ in range(100):
                if b"kafka.Kafka" in open(f"/proc/{proc.pid}/cmdline", "rb").read():
                    break
                time.sleep(0.01)
        k.pid_file.write_text(f"{procs[0].pid}\n")  # another home's broker
        assert k.pid() is None and k.down() is False
        assert procs[0].poll() is None  # kept
        # and so is the pid file, its only trace (a broker of this home spelt otherwise was orphaned)
        assert k.pid_file.read_text() == f"{procs[0].pid}\n"
        with pytest.raises(KafkaLocalError) as err:
            k.down(purge=True)
        assert str(err.value) == (f"{k.pid_file} names a Kafka broker (pid {procs[0].pid}) started with another "
                                  f"config than {k.config_file}; nothing deleted: stop it, or remove the pid file "
                                  "if it is not this home's")
        assert k.config_file.exists() and procs[0].poll() is None
        k.pid_file.write_text(f"{procs[1].pid}\n")  # this home's
        assert k.pid() == procs[1].pid and k.down() is True
        try:  # stopped: gone, or a zombie until the test reaps it
            assert open(f"/proc/{procs[1].pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            pass
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_kafka_home_of_only_spaces_is_one_line(tmp_path):
    """It was a directory named '   ' in the working directory, as INTEREST_DATA_DIR's was."""
    env = dict(os.environ, INTEREST_KAFKA_HOME="   ", PYTHONPATH=str(ROOT))  # run in tmp_path: ' ' lands there
    res = subprocess.run([sys.executable, "-m", "stream_app.cli", "kafka", "status"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr.startswith("Error: INTEREST_KAFKA_HOME must be a directory path (unset or empty for ")
    assert res.stderr.endswith("/interest-stream/kafka), got '   '\n") and list(tmp_path.iterdir()) == []


def test_a_pid_file_that_cannot_be_read_is_one_line(tmp_path):
    """A directory where the pid file goes was an IsADirectoryError traceback from status and down."""
    k = LocalKafka(home=tmp_path / "kafka", port=free_port(), controller_port=free_port())
    k.pid_file.mkdir(parents=True)
    for call in (k.pid, k.down):
        with pytest.raises(KafkaLocalError) as err:
            call()
        assert str(err.value) == f"cannot read the broker's pid file {k.pid_file}: Is a directory"
    assert k.pid_file.is_dir()


def test_a_taken_controller_port_is_one_line(tmp_path):
    """Only the broker's port was checked: a taken controller port ended in "the broker exited with
    code 1" and 30 lines of Java stack."""
    import socket

    port = free_port()
    home = tmp_path / "kafka"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cport = taken.getsockname()[1]
        env = dict(os.environ, INTEREST_KAFKA_HOME=str(home), INTEREST_KAFKA_PORT=str(port),
                   INTEREST_KAFKA_CONTROLLER_PORT=str(cport), INTEREST_KAFKA_HEAP="256m")
        try:
            res = cli(env, "kafka", "up", check=False)
        finally:
            LocalKafka(home=home, port=port, controller_port=cport).down(purge=True)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == (f"Error: the controller's port {cport} on 127.0.0.1 is taken by another process; "
                          "set INTEREST_KAFKA_CONTROLLER_PORT to a free port\n")


@pytest.mark.parametrize("heap, reason", [
    ("1000000g", "Could not reserve enough space for 1048576000000KB object heap"),
    ("99999999999g", "Invalid initial heap size: -Xms99999999999g"),
])
def test_a_heap_the_jvm_cannot_have_is_one_line_naming_the_setting(heap, reason, tmp_path):
    """It was "formatting the storage failed:" and the JVM's lines, naming no setting (with more
    than the host could commit, an hs_err_pid<pid>.log left in the working directory)."""
    port, cport = free_port(), free_port()
    home = tmp_path / "kafka"
    env = dict(os.environ, INTEREST_KAFKA_HOME=str(home), INTEREST_KAFKA_PORT=str(port),
               INTEREST_KAFKA_CONTROLLER_PORT=str(cport), INTEREST_KAFKA_HEAP=heap)
    try:
        res = cli(env, "kafka", "up", check=False)
        left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    finally:
        LocalKafka(home=home, port=port, controller_port=cport).down(purge=True)
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr == (f"Error: INTEREST_KAFKA_HEAP={heap}: the JVM cannot run the broker with this heap "
                          f"({reason}); set a JVM size such as 512m or 1g that this host's memory holds\n")
    assert left == []  # the home it made, its config, data and logs directories, deleted again


def test_a_refused_up_leaves_no_directory_it_made(tmp_path):
    """A taken port left the home `up` had made (and its parents) behind, empty; a home that
    existed before stays, with what it held."""
    import socket

    cport = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = (f"Error: port {port} on 127.0.0.1 is taken by another process; set a different port or "
                   "KAFKA_BOOTSTRAP_SERVERS to use that broker\n")
        new = tmp_path / "new" / "state" / "kafka"
        env = dict(os.environ, INTEREST_KAFKA_HOME=str(new), INTEREST_KAFKA_PORT=str(port),
                   INTEREST_KAFKA_CONTROLLER_PORT=str(cport))
        res = cli(env, "kafka", "up", check=False)
        assert (res.returncode, res.stdout, res.stderr) == (1, "", message)
        assert list(tmp_path.iterdir()) == []
        old = tmp_path / "old" / "kafka"
        (old / "config").mkdir(parents=True)
        (old / "mine.txt").write_text("kept\n")
        res = cli(dict(env, INTEREST_KAFKA_HOME=str(old)), "kafka", "up", check=False)
        assert (res.returncode, res.stdout, res.stderr) == (1, "", message)
        assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
            "old", "old/kafka", "old/kafka/config", "old/kafka/mine.txt"]


def test_the_jvms_error_file_goes_to_the_brokers_logs(tmp_path):
    kafka = LocalKafka(home=tmp_path / "kafka", port=free_port(), controller_port=free_port())
    assert f"-XX:ErrorFile={tmp_path / 'kafka' / 'logs' / 'hs_err_pid%p.log'}" in kafka._jvm("kafka.Kafka")


def test_a_controller_port_equal_to_the_brokers_is_one_line_before_anything_starts(tmp_path):
    """Both ports were checked free, never different: the broker started and stopped with 37 lines
    of Java stack (two listeners on the same port)."""
    port = free_port()
    home = tmp_path / "kafka"
    env = dict(os.environ, INTEREST_KAFKA_HOME=str(home), INTEREST_KAFKA_CONTROLLER_PORT=str(port))
    message = (f"Error: INTEREST_KAFKA_CONTROLLER_PORT {port} is the local broker's port too; the controller "
               "needs a port of its own\n")
    for run in (cli(dict(env, INTEREST_KAFKA_PORT=str(port)), "kafka", "up", check=False),
                cli(env, "kafka", "up", "--port", str(port), check=False)):
        assert (run.returncode, run.stdout, run.stderr) == (1, "", message)
    with pytest.raises(KafkaLocalError) as err:
        LocalKafka(home=home, port=port, controller_port=port).up()
    assert str(err.value) == (f"the controller's port {port} is the broker's port too; the controller needs a "
                              "port of its own")
    assert not home.exists()  # nothing written, nothing started


def test_a_relative_home_is_found_from_any_directory(tmp_path, monkeypatch):
    """The broker's command line names its config by the home's path, which pid() looks for: a
    relative INTEREST_KAFKA_HOME would not be found by a `status` or `down` run elsewhere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INTEREST_KAFKA_HOME", "state/kafka")
    assert default_home() == tmp_path / "state" / "kafka"


def test_a_home_whose_file_system_cannot_lock_a_directory_goes_unlocked(tmp_path, monkeypatch):
    """NFS emulates flock with a write lock, which a directory opened to read cannot take (EBADF):
    `kafka up` and `down` went on with an OSError traceback there, the default home under ~ included."""
    import errno

    import stream_app.kafka_local as kl

    def refuse(fd, op):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(kl.fcntl, "flock", refuse)
    k = LocalKafka(home=tmp_path / "kafka", port=free_port(), controller_port=free_port())
    k.write_config()
    assert k.down(purge=True) is False
    assert not k.home.exists()

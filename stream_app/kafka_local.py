"""A real single-node Apache Kafka (KRaft, combined broker + controller) for development and tests.

No Docker engine is needed: the broker's jars come from Maven Central through the small pom in
``infra/kafka/pom.xml`` (resolved with ``mvn dependency:copy-dependencies`` into a cache outside
the repository), the storage is formatted once, and the JVM runs in its own process group with a
pid file. ``up`` is idempotent, ``down`` leaves no process behind (data kept unless ``purge``),
and a stale pid file from a killed session is detected and cleaned up at the next ``up``.
"""
from __future__ import annotations

import base64
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from .settings import InterestStreamError, directory

# One Kafka version everywhere: here, infra/kafka/pom.xml and docker-compose.yml.
KAFKA_VERSION = "4.1.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
POM = REPO_ROOT / "infra" / "kafka" / "pom.xml"
LOG4J2_XML = REPO_ROOT / "infra" / "kafka" / "log4j2.xml"
# the first line of every config `up` writes: what tells a broker home from a mistaken directory
CONFIG_HEADER = "# written by interest-stream kafka up"
# (home, thread) pairs whose thread holds the home's lock (LocalKafka._locked)
_HELD: set[tuple[str, int]] = set()


# The JVM's lines when it cannot have the heap it is given, measured with OpenJDK 17 on a 2-core
# host: "Could not reserve enough space for 104857600000KB object heap" (100000g), "There is
# insufficient memory for the Java Runtime Environment to continue." (4096g: reserved, not
# committed), "Invalid initial heap size: -Xms99999999999g"; and a broker that ran out of it
HEAP_FAILURES = ("object heap", "insufficient memory for the Java Runtime Environment", "Invalid initial heap size",
                 "Invalid maximum heap size", "OutOfMemoryError: Java heap space")


class KafkaLocalError(InterestStreamError):
    """The local broker could not be prepared, started or stopped."""


def cache_dir() -> Path:
    """Where the broker jars live (outside the repository, shared by every clone)."""
    base = os.environ.get("INTEREST_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "interest-stream"
    )
    return Path(base) / f"kafka-{KAFKA_VERSION}"


def default_home() -> Path:
    """Data, config, logs and pid file of the development broker."""
    base = directory(os.environ, "INTEREST_KAFKA_HOME", os.path.join(  # only spaces is refused (was a dir '   ')
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"),
        "interest-stream",
        "kafka",
    ))
    # absolute: the broker's command line names its config by this path, which `pid()` looks for
    # whatever directory a later `status` or `down` runs in
    home = Path(os.path.abspath(base))
    for p in (home, *home.parents):  # the nearest part that exists must be a directory
        if p.exists():
            if not p.is_dir():
                raise KafkaLocalError(f"INTEREST_KAFKA_HOME: {p} is not a directory (the broker's data, "
                                      f"logs and pid file go in {home})")
            break
    return home


@dataclass
class LocalKafka:
    home: Path
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    host: str = "127.0.0.1"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "server.out"

    @property
    def config_file(self) -> Path:
        return self.home / "config" / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    # -- jars ----------------------------------------------------------------------------
    def libs(self) -> Path:
        """The broker's classpath directory, resolved from Maven Central on first use."""
        libs = cache_dir() / "libs"
        marker = cache_dir() / "resolved"
        resolved = lambda: marker.exists() and any(libs.glob("kafka_2.13-*.jar"))  # noqa: E731
        if resolved():
            return libs
        # two processes starting brokers at once (the tests' two workers, two `kafka up`) must
        # not both write libs.tmp: the second waits for the first and then finds the jars
        cache_dir().mkdir(parents=True, exist_ok=True)
        with open(cache_dir() / "resolve.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if resolved():
                return libs
            return self._resolve(libs, marker)

    def _resolve(self, libs: Path, marker: Path) -> Path:
        if not POM.exists():
            raise KafkaLocalError(f"cannot find {POM}; run from a clone of the repository")
        if shutil.which("mvn") is None:
            raise KafkaLocalError("Maven (mvn) is needed to fetch the Kafka jars; install Maven and Java 17")
        tmp = cache_dir() / "libs.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            "mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KafkaLocalError(
                "mvn could not resolve the Kafka jars:\n" + (proc.stdout + proc.stderr)[-2000:]
            )
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
        marker.write_text(KAFKA_VERSION + "\n")
        return libs

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
        if not java or not os.path.exists(java):
            raise KafkaLocalError("Java 17+ is needed to run the local Kafka broker (java not found)")
        return java

    # -- configuration -------------------------------------------------------------------
    def properties(self) -> dict[str, str]:
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # a single node: every internal topic has one replica (defaults are 3 and 2)
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "5",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # fast group formation and quick failovers in development and tests
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            # nothing may rely on auto-creation: `interest-stream topics create` makes them all
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            # compaction runs soon enough to be observed in development
            "log.cleaner.backoff.ms": "5000",
            "log.retention.check.interval.ms": "60000",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }

    def write_config(self) -> None:
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{k}={v}" for k, v in self.properties().items()]
        self.config_file.write_text(CONFIG_HEADER + "\n" + "\n".join(lines) + "\n")

    def made_by_up(self) -> bool:
        """Whether the home holds a config that ``up`` wrote (the only kind ``purge`` deletes)."""
        try:
            with open(self.config_file, "rb") as f:
                return f.read(len(CONFIG_HEADER) + 1) == CONFIG_HEADER.encode() + b"\n"
        except OSError:
            return False

    def _jvm(self, main: str, *args: str) -> list[str]:
        return [
            self._java(),
            f"-Xms{self.heap}", f"-Xmx{self.heap}",
            # a JVM that cannot have its heap wrote hs_err_pid<pid>.log into the working directory
            f"-XX:ErrorFile={self.log_file.parent / 'hs_err_pid%p.log'}",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J2_XML}",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp", str(self.libs() / "*"),
            main, *args,
        ]

    def format_storage(self) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)  # the JVM's error file goes there
        cluster_id = new_cluster_id()
        proc = subprocess.run(
            self._jvm("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config_file)),
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise self._heap_error(proc.stdout + proc.stderr) or KafkaLocalError(
                "formatting the storage failed:\n" + (proc.stdout + proc.stderr)[-2000:])

    def _heap_error(self, output: str) -> KafkaLocalError | None:
        """One line naming INTEREST_KAFKA_HEAP when the JVM's ``output`` says it could not have or
        live within its heap (-Xms = -Xmx): it was the storage tool's or the broker's last lines."""
        for line in output.splitlines():
            if any(marker in line for marker in HEAP_FAILURES):
                return KafkaLocalError(f"INTEREST_KAFKA_HEAP={self.heap}: the JVM cannot run the broker with this "
                                       f"heap ({line.strip('# ')}); set a JVM size such as 512m or 1g that this "
                                       "host's memory holds")
        return None

    # -- process -------------------------------------------------------------------------
    def pid(self) -> int | None:
        """The broker's pid if its pid file names a live broker started with this home's config,
        else None (a stale pid file)."""
        pid, ours = self._named()
        return pid if ours else None  # a recycled pid counts as stale, another home's broker included

    def _named(self) -> tuple[int | None, bool]:
        """The live Kafka broker the pid file names, and whether it was started with this home's
        config (without procfs, as on macOS, the pid is all there is to go on: taken as this
        home's). Another config path is another home's broker after pid reuse, or this one spelt
        otherwise (a relative home of an older version). (None, False) when it names no live
        Kafka broker."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None, False
        except OSError as exc:  # a directory or a file it may not read: a traceback from status and down
            raise KafkaLocalError(f"cannot read the broker's pid file {self.pid_file}: {exc.strerror}") from None
        if pid <= 1:  # to kill(), 0 and -1 are the caller's own group and every process; 1 is init
            return None, False
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, OverflowError):
            return None, False
        except PermissionError:
            pass
        if not Path("/proc/self").exists():
            return pid, True
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None, False
        if b"kafka.Kafka" not in args:
            return None, False
        return pid, os.fsencode(self.config_file) in args

    def answers(self, timeout: float = 2.0) -> bool:
        """True when the broker answers a metadata request."""
        if not _port_open(self.host, self.port):
            return False
        return broker_answers(self.bootstrap, timeout=timeout)

    def started_port(self) -> int | None:
        """The port the home's broker was started with: its config's PLAINTEXT listener, as the
        last ``up`` wrote it (None without a readable one)."""
        try:
            text = self.config_file.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("listeners="):
                for listener in line.split("=", 1)[1].split(","):
                    if listener.startswith("PLAINTEXT://"):
                        port = listener.rsplit(":", 1)[1]
                        return int(port) if port.isdigit() else None
        return None

    @contextmanager
    def _locked(self, make: bool):
        """Hold an exclusive lock on the home for the whole of ``up`` or ``down``, so that a second
        one waits for the first and then finds the broker it started or stopped. The lock is a
        flock on the home directory itself: no file is left in it (where the file system cannot lock
        a directory, as NFS cannot, ``up`` and ``down`` go unlocked). ``make`` creates the home;
        without one (``down``) there is nothing to lock. A thread that holds it already (``down``
        from a signal handler or atexit hook while ``up`` waits for the broker, as the tests'
        session does) goes on without waiting for itself. Yields the directories it made (the home
        and its parents that were missing), innermost first."""
        held = (os.path.abspath(self.home), threading.get_ident())
        if held in _HELD:
            yield []
            return
        while True:
            made = []
            if make:
                made = [p for p in (self.home, *self.home.parents) if not p.exists()]
                self.home.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.home, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                yield []
                return
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    try:
                        current = os.path.samestat(os.fstat(fd), os.stat(self.home))
                    except FileNotFoundError:
                        current = False
                except OSError:  # NFS emulates flock with a write lock, which a directory cannot take
                    current = True  # unlocked, as before the lock
                if current:
                    _HELD.add(held)
                    try:
                        yield made
                    finally:
                        _HELD.discard(held)
                    return
            finally:
                os.close(fd)
            # the home was purged (and maybe made again) while this one waited: lock the one there now

    def up(self, timeout: float = 90.0) -> float:
        """Start the broker unless it already runs; returns seconds until it answered. A broker of
        this home running on another port is refused, not stopped: one home holds one broker."""
        if self.controller_port == self.port:  # before anything is made: the JVM's 37-line stack otherwise
            raise KafkaLocalError(f"the controller's port {self.port} is the broker's port too; the controller "
                                  "needs a port of its own")
        with self._locked(make=True) as made:
            return self._up(timeout, made)

    def _up(self, timeout: float, made: list[Path]) -> float:
        """``made``: the directories the lock made, deleted again when the start is refused before
        the broker runs (a taken port left an empty home behind; a heap the JVM refused, a home
        with a config, a data and a logs directory)."""
        t0 = time.monotonic()
        pid = self.pid()
        if pid is not None:
            started = self.started_port()
            if started is not None and started != self.port:
                raise KafkaLocalError(
                    f"a broker from {self.home} is already running at {self.host}:{started}; "
                    "`interest-stream kafka down` first, or use another INTEREST_KAFKA_HOME"
                )
            if self.answers():
                return 0.0
            # alive but not answering (e.g. half-started by a killed session): restart it
            self._stop_pid(pid)
        self.pid_file.unlink(missing_ok=True)  # stale pid file from a killed session
        try:
            command = self._prepare()
        except BaseException:
            self._unmake(made)
            raise
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(
                command,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: `down` kills all of it
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise self._heap_error(self.log_tail()) or KafkaLocalError(
                    f"the broker exited with code {proc.returncode}; last log lines:\n{self.log_tail()}"
                )
            if self.answers():
                return time.monotonic() - t0
            time.sleep(0.3)
        self._stop_pid(proc.pid)
        raise KafkaLocalError(f"the broker did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def _prepare(self) -> list[str]:
        """Everything before the broker starts: its ports free, its config and storage; returns
        its command line."""
        if _port_open(self.host, self.port):
            raise KafkaLocalError(
                f"port {self.port} on {self.host} is taken by another process; "
                "set a different port or KAFKA_BOOTSTRAP_SERVERS to use that broker"
            )
        if _port_open(self.host, self.controller_port):
            raise KafkaLocalError(
                f"the controller's port {self.controller_port} on {self.host} is taken by another process; "
                "set INTEREST_KAFKA_CONTROLLER_PORT to a free port"
            )
        self.write_config()
        self.format_storage()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        return self._jvm("kafka.Kafka", str(self.config_file))

    def _unmake(self, made: list[Path]) -> None:
        """After a refused start: delete what ``up`` wrote in a home it made (as ``purge``), then
        that home and the parents it made, innermost first, each only if empty. A home that existed
        keeps what it held."""
        if self.home not in made:
            return
        try:
            self._purge()
        except KafkaLocalError:  # the refusal is the error to report
            return
        for d in made[1:]:
            try:
                d.rmdir()
            except OSError:
                return

    def down(self, purge: bool = False, timeout: float = 30.0) -> bool:
        """Stop the broker; returns True if one was running. ``purge`` deletes what ``up`` made
        (data, config, logs, pid file), then the home if nothing else is left in it; a directory
        ``up`` did not make (a mistaken INTEREST_KAFKA_HOME) is refused and nothing is deleted."""
        if not self.home.is_dir():
            return False
        with self._locked(make=False):
            return self._down(purge, timeout)

    def _down(self, purge: bool, timeout: float) -> bool:
        if purge and self.home.is_dir() and not self.made_by_up() and any(self.home.iterdir()):
            raise KafkaLocalError(
                f"{self.home} is not a broker home (no config written by `interest-stream kafka up` in it); "
                "nothing deleted: check INTEREST_KAFKA_HOME"
            )
        pid, ours = self._named()
        if pid is not None and not ours:  # another config's broker: its pid file is its only trace, kept
            if purge:
                raise KafkaLocalError(
                    f"{self.pid_file} names a Kafka broker (pid {pid}) started with another config than "
                    f"{self.config_file}; nothing deleted: stop it, or remove the pid file if it is not this home's"
                )
            return False
        was_running = pid is not None
        if pid is not None:
            self._stop_pid(pid, timeout)
        if was_running or self.made_by_up():
            self.pid_file.unlink(missing_ok=True)
        if purge:
            self._purge()
        return was_running

    def _purge(self) -> None:
        """Delete what ``up`` made, then its config directory and the home if they are empty."""
        for path in (self.data_dir, self.log_file.parent, self.config_file, self.pid_file):
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError as exc:
                raise KafkaLocalError(f"could not delete {exc.filename or path}: {exc.strerror}") from None
        for d in (self.config_file.parent, self.home):
            try:
                d.rmdir()
            except OSError:  # gone already, or something else lives there: kept
                pass

    def _stop_pid(self, pid: int, timeout: float = 30.0) -> None:
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            return
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            _reap(pid)
            time.sleep(0.1)
        _signal_group(pgid, signal.SIGKILL)
        for _ in range(50):
            _reap(pid)
            if not _group_alive(pgid):
                return
            time.sleep(0.1)

    def status(self) -> dict:
        """The home's broker, at the port it was started with (``up --port``), not ``self.port``."""
        pid = self.pid()
        k = replace(self, port=self.started_port() or self.port) if pid is not None else self
        return {
            "running": pid is not None and k.answers(),
            "pid": pid,
            "bootstrap_servers": k.bootstrap,
            "home": str(self.home),
            "version": KAFKA_VERSION,
        }

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def new_cluster_id() -> str:
    """Kafka's Uuid text form: URL-safe base64 of 16 random bytes without padding. Like Kafka's
    own ``Uuid.randomUuid``, never one starting with "-": the storage tool's argument parser would
    take it for an option (it did, once in 64 formats)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # zombies still count for killpg; look for a live (non-zombie) member
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def broker_answers(bootstrap: str, timeout: float = 2.0, security: dict | None = None) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap.split(","),
            request_timeout_ms=int(timeout * 1000),
            **(security or {}),
        )
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.describe_cluster()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


OUTGOING_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port() -> int:
    """A port nothing is bound to, below the range the kernel takes outgoing connections' local
    ports from (``ip_local_port_range``). A port the kernel hands out (bind to port 0) comes from
    that range, where any connection may take it first: one was in use by the time the test worker
    it was for bound it, "address already in use" (``make test-lowest``, session 73; what held it
    was not seen, most likely a client's connection)."""
    try:
        low = int(OUTGOING_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: the kernel's choice
        low = None
    if low is not None and low > 2048:
        rng = random.Random()  # seeded from the OS: a test that seeds `random` leaves every process its own ports
        for port in rng.sample(range(max(1024, low - 16384), low), 64):
            with socket.socket() as s:
                try:
                    s.bind(("", port))  # every address: the worker's web server binds 0.0.0.0
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

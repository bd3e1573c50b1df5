"""Test fixtures: a real Kafka broker for the session, unique topic names per test, workers as
subprocesses, and a tiny exported model.

The session starts its own broker on free ports with a fresh data directory (never one it merely
found running) and always stops it, also when a test fails or pytest is interrupted. A broker
left behind by a killed test session is stopped at the next session's start. With pytest-xdist
(`make test` runs three processes) each process is a session of its own: its own broker, directory
(named by its pid) and tiny model.
"""
from __future__ import annotations

import atexit
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))

from stream_app.kafka_local import LocalKafka, free_port  # noqa: E402

TEST_ROOT = Path(os.environ.get("INTEREST_TEST_TMP", "/tmp/interest-stream-tests"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _reap_stale_brokers() -> None:
    """Brokers of earlier sessions whose pytest died without cleaning up."""
    if not TEST_ROOT.exists():
        return
    for d in TEST_ROOT.iterdir():
        if d.name.isdigit() and not _alive(int(d.name)):
            LocalKafka(home=d / "kafka").down(purge=True)
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir():
    _reap_stale_brokers()
    d = TEST_ROOT / str(os.getpid())
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka(session_dir):
    """A real single-node Kafka for this test session; yields its bootstrap address."""
    external = os.environ.get("INTEREST_TEST_BOOTSTRAP")
    if external:  # explicitly given broker (e.g. CI with a service); never one merely found
        yield external
        return
    broker = LocalKafka(home=session_dir / "kafka", port=free_port(), controller_port=free_port(),
                        heap="384m")

    def stop(*_):
        broker.down(purge=True)

    atexit.register(stop)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        stop()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        broker.up(timeout=120)
        _SESSION_BROKER.append(broker)
        yield broker.bootstrap
    finally:
        stop()
        signal.signal(signal.SIGTERM, previous)


_SESSION_BROKER: list[LocalKafka] = []

# The test files that spend longest waiting for workers and the broker, longest first (each file's
# summed durations in `pytest --durations=0`, session 59). `make test` hands the files out in this
# order (`--no-loadscope-reorder`), so that its pytest processes finish close together:
# pytest-xdist's own order (the files with the most tests first) handed these out last, where one
# process could be left running a long file alone. Files not named here follow in pytest's order.
LONGEST_FILES = (
    "test_write_behind.py", "test_replay.py", "test_export.py", "test_worker_scoring.py", "test_web.py",
    "test_models_cli.py", "test_faults.py", "test_state_dir.py", "test_load_stream.py",
    "test_models_cli_errors.py", "test_kafka_local.py", "test_worker_ops.py", "test_worker_ingest.py",
    "test_demo.py", "test_model_card_window.py", "test_worker_cluster.py", "test_worker_alignment.py",
    "test_rerank_eval.py", "test_models_data.py", "test_model_swap_in_place.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: tests keep their order


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that failed shows the end of each of its workers' logs (a CI run keeps nothing else)."""
    report = yield
    if report.failed:
        for w in getattr(item, "started_workers", ()):
            report.sections.append((f"worker {w.dir.name}: the last 40 lines of its log", w.log(40)))
    return report


@pytest.fixture
def local_broker(kafka) -> LocalKafka:
    """The session's own broker process (for outage tests); skipped with an external broker."""
    if not _SESSION_BROKER:
        pytest.skip("INTEREST_TEST_BOOTSTRAP names an external broker: it cannot be stopped here")
    return _SESSION_BROKER[0]


_counter = itertools.count()


@pytest.fixture
def env(kafka, tmp_path, request):
    """Environment of one test: unique topic prefix, fast Faust settings."""
    return make_env(kafka)


def make_env(kafka: str) -> dict:
    """A fresh test environment (unique topic prefix, fast Faust settings): :func:`env`, and
    module-scoped fixtures that share workers between tests."""
    prefix = f"t{next(_counter)}-{uuid.uuid4().hex[:6]}."
    e = dict(os.environ)
    e.update({
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "INTEREST_TOPIC_PREFIX": prefix,
        "INTEREST_PARTITIONS": "4",
        # test events are years old: with the default 7-day retention the broker's retention
        # check (every 60 s here) would delete them while a test still reads them
        "INTEREST_RETENTION_MS": str(100 * 365 * 86_400_000),
        "INTEREST_STORE": "rocksdb://",
        "INTEREST_SESSION_TIMEOUT_S": "6",
        "INTEREST_HEARTBEAT_S": "1",
        "INTEREST_COMMIT_INTERVAL_S": "0.5",
        "INTEREST_SCORE_INTERVAL_S": "1",
        "INTEREST_MODEL_POLL_S": "1",
        "PYTHONUNBUFFERED": "1",
    })
    return e


@pytest.fixture(scope="session")
def tiny_model_dir(session_dir):
    """A tiny trained and exported model (model.onnx + model.json), built once per session."""
    from tiny_model import build_tiny_model_dir

    return build_tiny_model_dir(session_dir / "tiny-model")


def cli(env: dict, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", *args], env=env, capture_output=True, text=True,
        timeout=timeout, cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"interest-stream {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


class Worker:
    """A worker subprocess (`faust -A stream_app.app worker`) with its own web port and state."""

    FAUST = [sys.executable, "-m", "faust", "-A", "stream_app.app", "worker", "-l", "info"]
    CLI = [sys.executable, "-m", "stream_app.cli", "worker"]

    def __init__(self, env: dict, workdir: Path, name: str = "w", argv: list[str] | None = None,
                 data_dir: Path | None = None) -> None:
        self.argv = argv or self.FAUST
        self.port = free_port()
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(data_dir) if data_dir else self.dir / "data"
        self.env = dict(env, INTEREST_WEB_PORT=str(self.port), INTEREST_DATA_DIR=str(self.data_dir))
        self.log_path = self.dir / "worker.log"
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True, timeout: float = 90) -> "Worker":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout: float = 5):
        """(status, parsed JSON or text) of a GET to this worker."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as r:
                body = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            body, status = e.read(), e.code
        try:
            return status, orjson.loads(body)
        except orjson.JSONDecodeError:
            return status, body.decode()

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, _ = self.get("/health", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker not ready within {timeout}s:\n{self.log()}")

    def log(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"worker did not stop within {timeout}s after SIGTERM")


@pytest.fixture
def workers(env, tmp_path, tiny_model_dir, request):
    """Factory of worker subprocesses; every worker is stopped at the end of the test."""
    started: list[Worker] = []
    request.node.started_workers = started
    env["INTEREST_MODEL_DIR"] = str(tiny_model_dir)

    def make(name: str = "w", start: bool = True, argv: list[str] | None = None, data_dir=None,
             **overrides) -> Worker:
        w = Worker(dict(env, **overrides), tmp_path, name, argv, data_dir)
        started.append(w)
        return w.start() if start else w

    yield make
    for w in started:
        w.kill()


def metric_values(worker, prefix: str) -> list[float]:
    """Values of the worker's /metrics lines that start with ``prefix`` (a name, with labels or a
    space after it to match one series)."""
    _, text = worker.get("/metrics")
    return [float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)]


def wait_for(predicate, timeout: float = 60, interval: float = 0.3, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")

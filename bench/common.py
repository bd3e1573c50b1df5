"""Shared pieces of the benchmarks: a broker, machine info, a worker subprocess, synthetic load."""
from __future__ import annotations

import contextlib
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from stream_app.kafka_local import LocalKafka, free_port  # noqa: E402

if TYPE_CHECKING:
    from stream_app.settings import Settings


def machine() -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_mib": mem, "python": platform.python_version(),
            "platform": platform.platform()}


def commit() -> str:
    """The short commit the benchmark ran on, with ``+changes`` when tracked files differ from it
    (a figure measured on uncommitted code is not that commit's); "unknown" outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        clean = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode == 0
        return head if clean else f"{head}+changes"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


_LIVE: list["WorkerProc"] = []  # workers to stop however the benchmark ends
_WORKDIRS: list[Path] = []  # removed by run() when the benchmark ends well


def workdir(name: str) -> Path:
    """A temporary directory for a benchmark's model, logs and worker data. :func:`run` removes it
    when the benchmark ends well, and keeps it (saying where on stderr) when it fails, for the log
    its error names, or with ``BENCH_KEEP=1``. Before, every run left its own in /tmp (an ingest run
    120 MB, a soak 76 MB)."""
    path = Path(tempfile.mkdtemp(prefix=f"interest-bench-{name}-"))
    _WORKDIRS.append(path)
    return path


def run(main) -> None:
    """A benchmark's ``if __name__ == "__main__"``: ``main()``, then its :func:`workdir` directories
    removed, unless it raised (a failure, Ctrl-C, SIGTERM) or returned a non-zero exit code, which
    is then the process's."""
    failed, result = True, None
    try:
        result = main()
        failed = isinstance(result, int) and result != 0
    finally:
        keep = failed or os.environ.get("BENCH_KEEP")
        for path in _WORKDIRS:
            if keep:
                print(f"kept {path}", file=sys.stderr)
            else:
                shutil.rmtree(path, ignore_errors=True)
    if isinstance(result, int):
        sys.exit(result)


def _sigterm(signum, frame):
    raise SystemExit(f"benchmark stopped by signal {signum}")


def cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used so far, from /proc; None when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


@contextlib.contextmanager
def broker():
    """KAFKA_BOOTSTRAP_SERVERS if set, else a fresh local broker stopped at the end.

    Workers started by the benchmark are stopped on the way out too, also when the benchmark
    is interrupted (Ctrl-C) or terminated (SIGTERM, e.g. by `timeout`)."""
    import signal

    signal.signal(signal.SIGTERM, _sigterm)
    k = None
    try:
        if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            yield os.environ["KAFKA_BOOTSTRAP_SERVERS"], None
            return
        home = Path(tempfile.mkdtemp(prefix="interest-bench-kafka-"))
        k = LocalKafka(home=home, port=free_port(), controller_port=free_port(), heap="1g")
        k.up()
        yield k.bootstrap, k
    finally:
        for w in list(_LIVE):
            w.stop()
        if k is not None:
            k.down(purge=True)
            shutil.rmtree(k.home, ignore_errors=True)


def deployment(bootstrap: str, name: str, model_dir: Path | str | None = None, partitions: int | None = 6,
               **settings) -> tuple[dict, Settings]:
    """A fresh deployment on ``bootstrap`` for one benchmark: its environment, its Settings, and its
    topics, created. The environment is this process's, with KAFKA_BOOTSTRAP_SERVERS=``bootstrap``,
    INTEREST_TOPIC_PREFIX ``<name><unix time>.`` (topics of their own, also on a broker given by
    KAFKA_BOOTSTRAP_SERVERS), INTEREST_PARTITIONS, INTEREST_MODEL_DIR and each keyword as
    ``INTEREST_<KEYWORD>``, its value as a string (``flush_s=0.5``: ``INTEREST_FLUSH_S="0.5"``). A
    None (``model_dir``, ``partitions`` or a keyword's value) sets nothing: the setting is this
    process's environment's, else the default. The environment goes to the workers and
    subprocesses, the Settings to ``send_events``; before, twelve benchmarks wrote these lines each."""
    from stream_app.settings import Settings
    from stream_app.topics import create_topics

    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, INTEREST_TOPIC_PREFIX=f"{name}{int(time.time())}.")
    given = {"partitions": partitions, "model_dir": model_dir, **settings}
    env.update({f"INTEREST_{key.upper()}": str(value) for key, value in given.items() if value is not None})
    s = Settings.from_env(env)
    create_topics(s)
    return env, s


def topic_bytes(k: LocalKafka | None, topic: str) -> int | None:
    """Bytes on disk of a topic's log (local broker only)."""
    if k is None:
        return None
    total = 0
    for d in k.data_dir.glob(f"{topic}-*"):
        total += sum(f.stat().st_size for f in d.glob("*.log"))
    return total


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


CATEGORIES = ["sports", "tech", "music", "travel", "food", "fashion", "news", "games", "films", "books"]
WORDS = ["cheap", "best", "new", "review", "guide", "deal", "top", "live", "how", "near"]


def random_event(rng: random.Random, event_id: str, user: str, ts: int, cats=CATEGORIES, words=WORDS) -> dict:
    """One contract event: a click (45 %), a browse (40 %) or a search (15 %)."""
    r = rng.random()
    e = {"event_id": event_id, "user_id": user, "ts": ts}
    if r < 0.45:
        e.update(type="click", item_id=f"item{rng.randrange(100000)}", category=rng.choice(cats))
    elif r < 0.85:
        e.update(type="browse", item_id=f"item{rng.randrange(100000)}", category=rng.choice(cats),
                 dwell_ms=rng.randrange(60000))
    else:
        e.update(type="search", query=" ".join(rng.sample(words, 3)))
    return e


def synthetic_events(users: int, events: int, seed: int, t0: int, span_ms: int, in_order: bool = False):
    """``events`` contract events for ``users`` users, ts spread over ``span_ms``: at random
    (almost every event of a user arrives out of order) or, with ``in_order``, increasing, so each
    user's events arrive in ts order (the common case)."""
    rng = random.Random(seed)
    for i in range(events):
        u = rng.randrange(users)
        ts = t0 + (i * span_ms // events if in_order else rng.randrange(span_ms))
        yield random_event(rng, f"b{i}", f"user{u}", ts)


def pyspy_args() -> list[str]:
    """Extra py-spy flags from BENCH_PYSPY_ARGS, e.g. ``--gil --native`` (only the GIL holder, C frames)."""
    return shlex.split(os.environ.get("BENCH_PYSPY_ARGS", ""))


class WorkerProc:
    """A worker subprocess; ``src`` runs another checkout of the project (e.g. the previous
    version, for new-against-old ratios in one run): it goes first on PYTHONPATH, ahead of the
    editable install. ``app`` is the module Faust loads the app from: another one (in ``bench/``,
    put on PYTHONPATH) runs the worker with some of its parts replaced (``ingest_split_app``)."""

    def __init__(self, env: dict, workdir: Path, src: Path | None = None, name: str = "worker",
                 cpus: set[int] | None = None, app: str = "stream_app.app"):
        self.port = free_port()
        self.app = app
        self.cpus = cpus  # CPUs the worker process may run on (all its threads); None: any
        self.workdir = workdir
        self.name = name
        self.src = Path(src) if src else ROOT
        self.env = dict(env, INTEREST_WEB_PORT=str(self.port), INTEREST_DATA_DIR=str(workdir / f"{name}-data"))
        if src:
            self.env["PYTHONPATH"] = str(self.src)
        if app != "stream_app.app":
            paths = (str(Path(__file__).parent), self.env.get("PYTHONPATH"))
            self.env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        self.proc = None

    def start(self, wait: bool = True):
        """Start the worker; with ``wait``, return once it answers /health with 200."""
        self.log = open(self.workdir / f"{self.name}.log", "ab")
        _LIVE.append(self)
        self.proc = subprocess.Popen([sys.executable, "-m", "faust", "-A", self.app, "worker",
                                      "-l", os.environ.get("BENCH_WORKER_LOGLEVEL", "warn")],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.src,
                                     start_new_session=True,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None)
        if not wait:
            return self
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited; see {self.workdir / (self.name + '.log')}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                    if r.status == 200:
                        self._profile()
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("worker not ready")

    def _profile(self) -> None:
        """BENCH_PYSPY=out.txt: sample the running worker with py-spy for BENCH_PYSPY_S seconds,
        BENCH_PYSPY_DELAY_S after it is ready (so startup and recovery stay out of the profile)."""
        out = os.environ.get("BENCH_PYSPY")
        if out and self.name == os.environ.get("BENCH_PYSPY_WORKER", "new"):
            cmd = ["py-spy", "record", "--pid", str(self.proc.pid), "--format", "raw", "-r", "50",
                   "-d", os.environ.get("BENCH_PYSPY_S", "30"), "-o", out, *pyspy_args()]
            delay = os.environ.get("BENCH_PYSPY_DELAY_S", "0")
            subprocess.Popen(["sh", "-c", f'sleep {float(delay)} && exec "$@"', "sh", *cmd],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            out = {}
            for line in r.read().decode().splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    out[name] = float(value)
            return out

    def rss_peak_mib(self) -> float:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def rss_mib(self) -> float:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def kill(self) -> int | None:
        """SIGKILL: a crash, nothing flushed or committed on the way out; the exit code (-9)."""
        import signal

        if self in _LIVE:
            _LIVE.remove(self)
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return self.proc.returncode if self.proc else None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 120 s; the exit code (-9 when it had to be killed)."""
        import signal

        if self in _LIVE:
            _LIVE.remove(self)
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode if self.proc else None


@contextlib.contextmanager
def checkout(ref: str):
    """A temporary checkout of ``ref`` of this repository (git worktree), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="interest-bench-old-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(path), ref], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def versions(stack: contextlib.ExitStack, old: str) -> dict:
    """The workers' sources to compare in one run: ``{"new": None}`` (this checkout) and, unless
    ``old`` is '', ``"old"``: a checkout of that ref, removed when ``stack`` closes."""
    out = {"new": None}
    if old:
        out["old"] = stack.enter_context(checkout(old))
    return out


def topic_records(bootstrap: str, topic: str) -> int | None:
    """Records ever written to a topic (sum of its partitions' end offsets; None if missing)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = c.partitions_for_topic(topic)
        if not parts:
            return None
        return sum(c.end_offsets([TopicPartition(topic, p) for p in parts]).values())
    finally:
        c.close()


def dumps(obj) -> str:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode()

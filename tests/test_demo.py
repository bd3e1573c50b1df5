"""`interest-stream demo` run as a user runs it: a subprocess on the session's broker, with the
tiny model given (so it does not train), a few users and seconds."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from conftest import ROOT, _alive, wait_for
from stream_app.kafka_local import free_port

pytestmark = pytest.mark.kafka


class Demo:
    """A demo subprocess whose stderr lines are collected as they come."""

    def __init__(self, env: dict, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "stream_app.cli", "demo", *args], env=env, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err: list[str] = []
        self.out: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(s, lines), daemon=True)
                        for s, lines in ((self.proc.stderr, self.err), (self.proc.stdout, self.out))]
        for r in self.readers:
            r.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        for r in self.readers:
            r.join(5)
        return code


@pytest.fixture
def demo_env(env, tiny_model_dir, tmp_path):
    return dict(env, INTEREST_MODEL_DIR=str(tiny_model_dir), INTEREST_DEMO_DIR=str(tmp_path / "out"),
                INTEREST_WEB_PORT=str(free_port()))


def test_sigterm_stops_the_demos_worker(demo_env, tmp_path):
    """`timeout`, `docker stop` or CI end the demo with SIGTERM: its clean-up ran only on Ctrl-C, so
    the worker it started (in a session of its own) went on running."""
    demo = Demo(demo_env, "--seconds", "120", "--users", "3", "--rate", "20", "--follow", "1")
    worker_pid = None
    try:
        wait_for(lambda: any(line.startswith("==> streaming") for line in demo.err) or demo.proc.poll() is not None,
                 timeout=120, what="the demo to stream")
        assert demo.proc.poll() is None, "\n".join(demo.err)
        (lock,) = (tmp_path / "out" / "state").glob("*/*/worker.lock")
        worker_pid = int(lock.read_text())  # first: a failed assertion below must not leave it running
        assert _alive(worker_pid)
        assert f"==> starting the worker (log: {tmp_path / 'out' / 'worker.log'})" in demo.err
        demo.proc.send_signal(signal.SIGTERM)
        code = demo.wait(60)
        assert code == 128 + signal.SIGTERM, "\n".join(demo.err)
        assert "==> stopping the worker" in demo.err
        assert not _alive(worker_pid), "the demo's worker still runs"
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
            demo.wait(10)
        if worker_pid is not None and _alive(worker_pid):
            os.killpg(worker_pid, signal.SIGKILL)


def test_a_worker_that_stops_is_shown_with_its_own_error(demo_env, tmp_path):
    """The demo said only "the worker exited (1); see demo-out/worker.log": the reason was in the
    log alone."""
    out = tmp_path / "out"
    model = tmp_path / "no-model"
    proc = subprocess.run([sys.executable, "-m", "stream_app.cli", "demo", "--users", "1", "--follow", "0"],
                          env=dict(demo_env, INTEREST_MODEL_DIR=str(model)), cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (f"Error: the worker exited (1): INTEREST_MODEL_DIR: model at {model}: "
                                            f"no such directory; see {out / 'worker.log'}")


def test_another_worker_on_the_demos_port_is_not_taken_for_its_own(demo_env, tmp_path):
    """A worker left running on the demo's web port answered its /health: the demo said "worker
    ready", streamed into topics nothing read, showed the other worker's users and exited 0, while
    its own worker had stopped at once on the taken port. Now it waits for its own worker's answer,
    and says why that worker stopped."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class OtherWorker(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"ready": True, "model_version": "other", "partitions": [0],
                               "app_id": "someone-else"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = int(demo_env["INTEREST_WEB_PORT"])
    server = ThreadingHTTPServer(("0.0.0.0", port), OtherWorker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = subprocess.run([sys.executable, "-m", "stream_app.cli", "demo", "--users", "1", "--follow", "0"],
                              env=demo_env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 1, proc.stderr
    assert not any(line.startswith("==> worker ready") for line in proc.stderr.splitlines()), proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith(f"Error: the worker exited (1): cannot listen on 0.0.0.0:{port} "
                           "(INTEREST_WEB_HOST / INTEREST_WEB_PORT): "), last
    assert last.endswith(f"; see {tmp_path / 'out' / 'worker.log'}")


def test_the_demo_uses_a_running_local_broker_whatever_its_port_setting(demo_env, local_broker, tmp_path):
    """The demo computed the controller's port (the broker's + 1) before it looked for a running
    broker: at INTEREST_KAFKA_PORT=65535 it stopped with "leaves no next port for its controller",
    though it starts no broker when one runs (as `kafka status` and `kafka down` do)."""
    env = {k: v for k, v in demo_env.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    model = tmp_path / "no-model"  # the worker stops at once: this test is about the broker
    env.update(INTEREST_KAFKA_HOME=str(local_broker.home), INTEREST_KAFKA_PORT="65535",
               INTEREST_MODEL_DIR=str(model))
    proc = subprocess.run([sys.executable, "-m", "stream_app.cli", "demo", "--users", "1", "--follow", "0"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"==> using the local Kafka already running at {local_broker.bootstrap}" in proc.stderr.splitlines()
    assert proc.stderr.splitlines()[-1].startswith(
        f"Error: the worker exited (1): INTEREST_MODEL_DIR: model at {model}: no such")


def test_the_workers_reason_is_its_last_error_line_of_this_run(tmp_path, monkeypatch):
    """The log is kept across runs: an earlier run's lines are not this run's reason. Without an
    `Error:` line (a traceback), the last line is."""
    from stream_app import demo

    monkeypatch.setattr(demo, "OUT", tmp_path)
    earlier = "Error: an earlier run's\n"
    log = tmp_path / "worker.log"
    log.write_text(earlier + "starting\nError: first\nError: second\nstopped\n\n")
    assert demo.worker_error(len(earlier)) == "second"
    log.write_text(earlier + "Traceback (most recent call last):\n  File x\nValueError: boom\n")
    assert demo.worker_error(len(earlier)) == "ValueError: boom"
    log.write_text(earlier)
    assert demo.worker_error(len(earlier)) == ""


@pytest.mark.parametrize("given, url", [
    ({}, "http://127.0.0.1:6066"),
    ({"INTEREST_WEB_HOST": "127.0.0.2", "INTEREST_WEB_PORT": "7000"}, "http://127.0.0.2:7000"),
    ({"INTEREST_WEB_HOST": "::"}, "http://[::1]:6066"),
    ({"INTEREST_WEB_HOST": "::1"}, "http://[::1]:6066"),
    ({"INTEREST_WEB_HOST": "localhost"}, "http://localhost:6066"),
    ({"INTEREST_WEB_HOST": "127.0.0.2", "INTEREST_CANONICAL_URL": "http://w1.example:7001/"}, "http://w1.example:7001"),
])
def test_workers_and_the_demo_reach_a_worker_where_its_settings_say(given, url):
    """Other workers (routing) and the demo used http://127.0.0.1:<port> whatever INTEREST_WEB_HOST said."""
    from stream_app.settings import Settings

    assert Settings.from_env(given).web_url == url


def test_the_demo_runs_on_the_web_host_it_is_given_and_follows_its_users_only(demo_env):
    """The demo asked http://127.0.0.1:<port>/health whatever INTEREST_WEB_HOST said: with
    127.0.0.2 the worker was ready, and the demo failed "not ready within 120s". And --follow was
    not bounded by --users: `--users 5 --follow 100000` printed 100,000 users' URLs."""
    port = demo_env["INTEREST_WEB_PORT"]
    demo = Demo(dict(demo_env, INTEREST_WEB_HOST="127.0.0.2"), "--seconds", "10", "--users", "2", "--rate", "20",
                "--follow", "5")
    try:
        code = demo.wait(200)
    finally:
        if demo.proc.poll() is None:
            demo.proc.send_signal(signal.SIGTERM)
            demo.wait(60)
    assert code == 0, "\n".join(demo.err)
    base = f"http://127.0.0.2:{port}"
    assert f"==> while the demo runs: the worker's overview at {base}/" in demo.err
    assert [line for line in demo.err if line.startswith("==>   user ")] == [
        f"==>   user {u}: {base}/users/{u}/view  (JSON: {base}/users/{u}/explain, POST {base}/users/{u}/rerank)"
        for u in ("u0", "u1")]
    summary = re.compile(rf"==> \d+ events streamed; windows as the worker holds them \(pages: "
                         rf"{re.escape(base)}/users/<id>/view\):")
    assert any(summary.fullmatch(line) for line in demo.err), "\n".join(demo.err)

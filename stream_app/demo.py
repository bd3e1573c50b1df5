"""`interest-stream demo`: the whole pipeline end to end on a local broker.

Kafka (started here unless ``KAFKA_BOOTSTRAP_SERVERS`` names one), topics under a fresh prefix,
a model trained and exported when ``INTEREST_MODEL_DIR`` is not given, the worker, a simulated
population streaming with sped-up interest dynamics, and interest vectors printed as they are
published. Everything started here is stopped at the end, also on failure, Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import click
import orjson

from .settings import Settings, directory

# empty is unset, as for INTEREST_DATA_DIR (it was the working directory); only spaces is refused
# in demo() by the settings' own check (it was a directory named ' ' there)
OUT = Path(os.environ.get("INTEREST_DEMO_DIR") or "demo-out")


def say(msg: str) -> None:
    click.secho(f"==> {msg}", fg="cyan", err=True)


def run_cli(*args: str, env: dict) -> None:
    """One step, as its own process whose errors reach the terminal as they come; a failed step
    ends the demo with one more line naming it (and the demo stops what it started)."""
    command = "interest-stream " + " ".join(args)
    say(command)
    code = subprocess.run([sys.executable, "-m", "stream_app.cli", *args], env=env).returncode
    if code != 0:
        how = f"exit code {code}" if code > 0 else f"signal {-code}"
        raise click.ClickException(f"the demo's step `{command}` failed ({how}; its error is above)")


def ensure_model(env: dict) -> Path:
    """An exported model: INTEREST_MODEL_DIR if given, else one trained here (once, then reused)."""
    if env.get("INTEREST_MODEL_DIR"):
        return Path(env["INTEREST_MODEL_DIR"])
    current = OUT / "model" / "current"
    if (current / "model.json").exists():
        say(f"reusing the model in {current} (delete {OUT}/model to train again)")
        return current
    log = OUT / "train.jsonl"
    run_cli("simulate", "--users", "600", "--days", "6", "--seed", "7", "--out", str(log), env=env)
    run_cli("train", "--data", str(log), "--out", str(OUT / "checkpoint"), "--max-steps", "300",
            "--max-train-samples", "10000", env=env)
    run_cli("export", str(OUT / "checkpoint"), "--out", str(OUT / "model" / "v1"), env=env)
    if current.is_symlink():
        current.unlink()
    current.symlink_to("v1")
    return current


# The demo's own values, quicker than the worker's defaults: vectors every 5 s, commits every
# second, a worker that stops is noticed in 10 s
DEMO_SETTINGS = {"INTEREST_SCORE_INTERVAL_S": "5", "INTEREST_COMMIT_INTERVAL_S": "1",
                 "INTEREST_SESSION_TIMEOUT_S": "10"}


def demo_settings(env: dict) -> dict:
    """The demo's values of the settings the user set none of (an empty one is unset, as for the
    worker). Its session timeout also only without INTEREST_HEARTBEAT_S, which must stay below it:
    INTEREST_HEARTBEAT_S=15 alone was refused for a session timeout the user never set."""
    out = {name: value for name, value in DEMO_SETTINGS.items() if not env.get(name)}
    if env.get("INTEREST_HEARTBEAT_S"):
        out.pop("INTEREST_SESSION_TIMEOUT_S", None)
    return out


class Terminated(BaseException):
    """SIGTERM (`timeout`, `docker stop`, CI) arrived: unwinds the demo as Ctrl-C does, through
    its clean-up, and ends it with status 143 (128 + SIGTERM)."""


def _on_sigterm(signum, frame):
    raise Terminated


def demo(seconds: float, users: int, rate: float, speedup: float, follow: int) -> None:
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _demo(seconds, users, rate, speedup, follow)
    except Terminated:
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _demo(seconds: float, users: int, rate: float, speedup: float, follow: int) -> None:
    # the simulator's users are u0..u<users-1>: `--users 5 --follow 100000` printed 100,000 URL
    # lines and asked the worker for 99,995 users that do not exist
    follow = min(follow, users)
    env = dict(os.environ)
    env.update(demo_settings(env))
    prefix = f"demo-{int(time.time())}."  # the demo's topics: a fresh prefix every run
    # every setting, as the worker will have it (the demo's prefix too: with it, a long
    # INTEREST_APP_ID makes names too long for Kafka), before any step: a bad one was found only
    # after minutes of training
    s = Settings.from_env({**env, "INTEREST_TOPIC_PREFIX": prefix})
    directory(os.environ, "INTEREST_DEMO_DIR", "demo-out")
    try:  # with its parents, as INTEREST_DATA_DIR is
        OUT.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, a parent that cannot be written: was a traceback
        raise click.ClickException(f"INTEREST_DEMO_DIR: cannot create {OUT}: {exc.strerror or exc}") from None
    broker = None
    worker = None
    stop_stream = threading.Event()
    try:
        if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
            from .kafka_local import LocalKafka, default_home

            port = s.kafka_port
            broker = LocalKafka(home=default_home(), port=port, heap=s.kafka_heap)
            running = broker.status()  # at the port it was started with, whatever INTEREST_KAFKA_PORT says
            if running["running"]:
                say(f"using the local Kafka already running at {running['bootstrap_servers']}")
                env["KAFKA_BOOTSTRAP_SERVERS"] = running["bootstrap_servers"]
                broker = None  # not ours to stop
            else:
                # its controller's port only for one to start (as `kafka up`): a running broker was
                # refused at INTEREST_KAFKA_PORT=65535 for a next port it never uses
                broker.controller_port = s.controller_port_for(port)
                say("starting a local Apache Kafka (first run fetches its jars with Maven)")
                took = broker.up()
                say(f"Kafka at {broker.bootstrap} answered after {took:.1f}s")
                env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
        env.setdefault("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
        model_dir = ensure_model(env)
        env.update({
            "INTEREST_TOPIC_PREFIX": prefix,
            "INTEREST_MODEL_DIR": str(model_dir.resolve().parent / model_dir.name),
            "INTEREST_DATA_DIR": str((OUT / "state" / prefix).resolve()),
        })
        Path(env["INTEREST_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
        settings = Settings.from_env(env)
        run_cli("topics", "create", env=env)
        say(f"starting the worker (log: {OUT / 'worker.log'})")
        with open(OUT / "worker.log", "ab") as log:  # kept across runs: this run's lines start here
            start = log.tell()
            worker = subprocess.Popen(
                [sys.executable, "-m", "stream_app.cli", "worker"], env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        base = settings.web_url  # where the demo reaches its worker
        wait_healthy(base, worker, settings.app_id, start)
        print_urls(base, follow)

        from models.simulate import iter_live_events

        from .produce import send_events

        sent = {"n": 0}

        def stream():
            sent["n"] = send_events(iter_live_events(users, 11, speedup, int(time.time() * 1000)),
                                    settings, rate=rate, wallclock_ts=True, stop=stop_stream)

        say(f"streaming {users} simulated users at {rate:.0f} events/s, interest dynamics "
            f"{speedup:.0f}x faster than the wall clock, for {seconds:.0f}s")
        producer = threading.Thread(target=stream, daemon=True)
        producer.start()
        show_vectors(settings, seconds, follow)
        stop_stream.set()
        producer.join(30)
        summary(base, follow, sent["n"])
    finally:
        # a second SIGTERM must not cut the clean-up short (it is bounded: 30 s for the worker)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_stream.set()
        if worker is not None and worker.poll() is None:
            say("stopping the worker")
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        if broker is not None:
            say("stopping Kafka (its data stays; `interest-stream kafka down --purge` deletes it)")
            broker.down()


def worker_error(start: int) -> str:
    """The worker's own reason for stopping, from the lines it wrote to its log after ``start``:
    its last ``Error:`` line (the CLI's one-line errors), else its last line (a traceback's)."""
    try:
        with open(OUT / "worker.log", "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line.removeprefix("Error:").strip() for line in lines if line.startswith("Error:")]
    return (errors or lines or [""])[-1]


def wait_healthy(base: str, proc: subprocess.Popen, app_id: str, start: int = 0, timeout: float = 120) -> None:
    """Until the demo's worker (``proc``, of ``app_id``) answers ``/health`` at ``base``. Another
    process on that port is not it: a worker left running on the port answered, the demo streamed
    into topics nothing read and showed that worker's users, and exited 0, while its own worker had
    stopped on the taken port. Its answer is passed over until the demo's worker says why it stopped."""
    deadline = time.monotonic() + timeout
    foreign = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            reason = worker_error(start)
            raise click.ClickException(f"the worker exited ({proc.returncode})" + (f": {reason}" if reason else "")
                                       + f"; see {OUT / 'worker.log'}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=1) as r:
                body = orjson.loads(r.read())
        except (OSError, ValueError):  # ValueError: not JSON, not a worker's answer
            time.sleep(0.5)
            continue
        if isinstance(body, dict) and body.get("app_id") == app_id:
            say(f"worker ready: model {body['model_version']}, partitions {body['partitions']}")
            return
        foreign = body.get("app_id") if isinstance(body, dict) else None
        time.sleep(0.5)
    other = f"; another process answers at {base} (app id {foreign})" if foreign is not None else ""
    raise click.ClickException(f"the worker was not ready within {timeout:.0f}s{other}; see {OUT / 'worker.log'}")


def print_urls(base: str, follow: int) -> None:
    """The worker's pages, to open in a browser while the demo runs."""
    say(f"while the demo runs: the worker's overview at {base}/")
    for i in range(follow):
        say(f"  user u{i}: {base}/users/u{i}/view  (JSON: {base}/users/u{i}/explain, "
            f"POST {base}/users/u{i}/rerank)")


def show_vectors(settings: Settings, seconds: float, follow: int) -> None:
    """Print the vectors of the first ``follow`` users as they change, and a count of the rest."""
    from kafka import KafkaConsumer

    from .cli import format_vector

    followed = {f"u{i}" for i in range(follow)}  # the simulator's user ids
    consumer = KafkaConsumer(settings.output_topic, auto_offset_reset="earliest",
                             enable_auto_commit=False, **settings.kafka_python_config())
    deadline = time.monotonic() + seconds
    last_report, total, since = time.monotonic(), 0, 0
    try:
        while time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                for rec in recs:
                    total += 1
                    since += 1
                    key = rec.key.decode() if rec.key else ""
                    if key in followed:
                        click.echo(format_vector(key, rec.value))
            if time.monotonic() - last_report > 10:
                say(f"{since} vectors published in the last {time.monotonic() - last_report:.0f}s "
                    f"({total} in all)")
                last_report, since = time.monotonic(), 0
    finally:
        consumer.close()


def summary(base: str, follow: int, sent: int) -> None:
    say(f"{sent} events streamed; windows as the worker holds them (pages: {base}/users/<id>/view):")
    for i in range(follow):
        uid = f"u{i}"
        try:
            with urllib.request.urlopen(f"{base}/users/{uid}", timeout=2) as r:
                body = orjson.loads(r.read())
        except OSError:
            continue
        click.echo(f"{uid:>10}  events={body['events']:<4} counts={body['counts']} "
                   f"top={body['interests']['top'] if body['interests'] else None}")

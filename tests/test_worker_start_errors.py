"""`interest-stream worker` refuses, in one line and before Faust starts, what Faust would stop on
with a traceback: more changelog replicas than brokers, a web port already taken, a web host
that does not resolve."""
from __future__ import annotations

import socket

import pytest

from conftest import cli
from stream_app.kafka_local import free_port

pytestmark = pytest.mark.kafka


@pytest.fixture
def start_env(env, tiny_model_dir, tmp_path):
    cli(env, "topics", "create")
    return dict(env, INTEREST_MODEL_DIR=str(tiny_model_dir), INTEREST_DATA_DIR=str(tmp_path / "data"),
                INTEREST_WEB_PORT=str(free_port()))


def test_more_replicas_than_brokers(env, tiny_model_dir, tmp_path):
    """Refused before the topics the worker creates (none here) exist."""
    start_env = dict(env, INTEREST_MODEL_DIR=str(tiny_model_dir), INTEREST_DATA_DIR=str(tmp_path / "data"),
                     INTEREST_WEB_PORT=str(free_port()))
    proc = cli(dict(start_env, INTEREST_REPLICATION="2"), "worker", check=False, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == "Error: INTEREST_REPLICATION=2 but the cluster has 1 broker: set INTEREST_REPLICATION <= 1\n"


def test_a_model_directory_that_is_not_there_names_its_setting(start_env, tmp_path):
    """It was "Error: model at <path>: no such directory", naming no setting."""
    missing = tmp_path / "no-model"
    proc = cli(dict(start_env, INTEREST_MODEL_DIR=str(missing)), "worker", check=False, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == f"Error: INTEREST_MODEL_DIR: model at {missing}: no such directory\n"


def test_a_web_port_in_use(start_env):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli(dict(start_env, INTEREST_WEB_PORT=str(port)), "worker", check=False, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: cannot listen on 0.0.0.0:{port} (INTEREST_WEB_HOST / INTEREST_WEB_PORT): "
                           "Address already in use; workers on one host need their own INTEREST_WEB_PORT\n")


def test_a_web_host_that_does_not_resolve(start_env):
    try:
        socket.getaddrinfo("no-such-host.invalid", 80)
        pytest.skip("this resolver answers for .invalid")
    except socket.gaierror as exc:
        reason = exc.strerror
    proc = cli(dict(start_env, INTEREST_WEB_HOST="no-such-host.invalid"), "worker", check=False, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: cannot listen on no-such-host.invalid:{start_env['INTEREST_WEB_PORT']} "
                           f"(INTEREST_WEB_HOST / INTEREST_WEB_PORT): {reason}\n")


def test_a_state_directory_another_worker_holds(start_env):
    """A second worker on the same INTEREST_DATA_DIR waited on RocksDB's locks, then stopped with
    tracebacks, after putting the first through a rebalance. This test process stands for the
    first worker: it holds the lock."""
    import os

    from stream_app import local_state
    from stream_app.settings import Settings

    path = Settings.from_env(start_env).prepare_state_dir()
    local_state.lock_state_dir(path)
    try:
        proc = cli(start_env, "worker", check=False, timeout=60)
    finally:
        local_state._held.pop().close()
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: INTEREST_DATA_DIR: {path} is in use by another worker (pid {os.getpid()}); "
                           "workers on one host need their own INTEREST_DATA_DIR\n")


def test_a_request_the_broker_refuses_is_its_reason_in_one_line(env):
    """The broker was reached and said no: its reason, not the whole CreateTopicsRequest and a hint
    to check KAFKA_BOOTSTRAP_SERVERS."""
    proc = cli(dict(env, INTEREST_PARTITIONS="100000"), "topics", "create", check=False)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: Kafka at {env['KAFKA_BOOTSTRAP_SERVERS']} refused: PolicyViolationError: "
                           "Excessively large number of partitions per request.\n")


def test_what_this_host_decides_is_refused_before_any_topic_is_created(env, tiny_model_dir, tmp_path):
    """No model, a missing model directory or a taken port: the worker created the deployment's eight
    topics first (under a mistyped prefix, eight strays), then refused."""
    from kafka import KafkaAdminClient

    base = dict(env, INTEREST_MODEL_DIR=str(tiny_model_dir), INTEREST_DATA_DIR=str(tmp_path / "data"),
                INTEREST_WEB_PORT=str(free_port()))
    unset = {k: v for k, v in base.items() if k != "INTEREST_MODEL_DIR"}
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        for bad, message in [(unset, "INTEREST_MODEL_DIR is not set"),
                             (dict(base, INTEREST_MODEL_DIR=str(tmp_path / "none")), "INTEREST_MODEL_DIR: model at"),
                             (dict(base, INTEREST_WEB_PORT=str(taken.getsockname()[1])), "cannot listen on")]:
            proc = cli(bad, "worker", check=False, timeout=60)
            assert proc.returncode == 1 and proc.stderr.startswith(f"Error: {message}"), proc.stderr
    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        assert [t for t in admin.list_topics() if t.startswith(env["INTEREST_TOPIC_PREFIX"])] == []
    finally:
        admin.close()

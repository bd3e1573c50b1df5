"""One Kafka version everywhere; the compose file parses; worker-only install has no torch."""
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import yaml

from stream_app.kafka_local import KAFKA_VERSION

ROOT = Path(__file__).resolve().parent.parent


def test_one_kafka_version_everywhere():
    pom = (ROOT / "infra/kafka/pom.xml").read_text()
    assert re.search(r"<kafka.version>(.+?)</kafka.version>", pom).group(1) == KAFKA_VERSION
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_compose_file_is_valid():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"kafka", "topics", "worker", "simulator"}
    assert compose["services"]["worker"]["command"] == ["interest-stream", "worker"]
    for tool in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(tool[0]) is None:
            continue
        if tool == ["docker", "compose"] and subprocess.run(
                tool + ["version"], capture_output=True).returncode != 0:
            continue  # the docker client without the compose plugin
        proc = subprocess.run(tool + ["config", "-q"], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_worker_install_has_no_torch():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(meta["dependencies"]).lower()
    assert "torch" not in runtime and "transformers" not in runtime
    assert any(d.startswith("torch") for d in meta["optional-dependencies"]["train"])
    # the worker's modules import without torch
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "import stream_app.app, stream_app.cli, stream_app.model_runtime, interest_core.encoding")
    proc = subprocess.run([shutil.which("python3") and __import__("sys").executable, "-c", code],
                          cwd=ROOT, capture_output=True, text=True,
                          env={"INTEREST_STORE": "memory://", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr

"""One Kafka version everywhere; the compose file parses; worker-only install has no torch; every
benchmark script `make bench` runs starts, and the Faust app one of them runs imports; the helpers
of `make test-lowest` pin the extras and compare what two installs serve."""
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
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


def test_every_script_make_bench_runs_starts():
    """`make bench` runs for hours; a script that cannot start is found there, late. Each script it
    names answers --help (its arguments parsed before any work). soak.py's own `run(args, src)`
    shadowed bench/common.py's `run(main)` for a day: `make bench` stopped at it with a TypeError."""
    import sys

    target = re.search(r"^bench: install.*?(?=^\S)", (ROOT / "Makefile").read_text(), re.M | re.S).group(0)
    scripts = sorted(set(re.findall(r"bench/[a-z_]+\.py", target)))
    assert "bench/soak.py" in scripts and len(scripts) >= 20
    for script in scripts:
        out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.lower().startswith("usage: "), f"{script}: {out.stderr[-500:]}"


def test_make_bench_stops_at_the_first_benchmark_that_fails(tmp_path):
    """Each benchmark's JSON goes through `tee`, whose status a pipeline had without pipefail: make
    went on past a benchmark that failed, and its broken JSON was found later, if at all. Run with
    a Python that always fails (`install` taken as done), `make bench` ends non-zero after the
    first benchmark, having written no second file."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    out = subprocess.run(["make", "-o", "install", "bench", "PY=false"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0
    assert sorted(p.name for p in (tmp_path / "bench-out").iterdir()) == ["ingest.json"]


def test_the_worker_of_bench_ingest_split_imports_and_takes_the_place_of_process():
    """bench/ingest_split.py runs `faust -A ingest_split_app worker`, which --help never loads.
    From 05bf9d4 its stand-in for `stream_app.ingest.process` kept the parameters of the one before
    (topic, partition, offset, key, value): every worker it started crashed on its first message
    with a TypeError, and `make bench` waited for it. It also imported stream_app.ingest before
    stream_app.app, a circular import. Each variant imports, and the stand-in takes the same
    parameters as what it replaces."""
    import sys

    code = ("import inspect, ingest_split_app as a; "
            "print(list(inspect.signature(a.count_only).parameters) == list(inspect.signature(a.REPLACED).parameters))")
    for variant in ("hold", "align"):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "bench", capture_output=True, text=True,
                             timeout=60, env={"BENCH_SPLIT": variant, "INTEREST_STORE": "memory://",
                                          "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
        assert (out.returncode, out.stdout) == (0, "True\n"), f"{variant}: {out.stderr[-800:]}"


def _ci_module(name: str):
    """A module of .ci/, imported from its file (.ci is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / ".ci" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_test_lowest_holds_the_extras_at_the_installed_versions(tmp_path):
    """`make test-lowest` lowers only the worker's own dependencies: each package the train and dev
    extras name (extras and bounds stripped from the name) is pinned to the version installed here,
    and an extra naming a package that is not installed stops it, naming the package."""
    import sys
    from importlib import metadata

    extras_pins = _ci_module("extras_pins").extras_pins
    pins = extras_pins(ROOT / "pyproject.toml")
    assert f"torch=={metadata.version('torch')}" in pins and f"pytest=={metadata.version('pytest')}" in pins
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert len(pins) == len(optional["train"]) + len(optional["dev"])
    assert not any(p.split("==")[0] in {"numpy", "onnxruntime", "faust-streaming"} for p in pins)
    fake = tmp_path / "pyproject.toml"
    fake.write_text('[project.optional-dependencies]\ntrain = ["onnx[reference]>=1.16"]\ndev = ["pytest>=8"]\n')
    assert extras_pins(fake) == [f"onnx=={metadata.version('onnx')}", f"pytest=={metadata.version('pytest')}"]
    fake.write_text('[project.optional-dependencies]\ntrain = ["not-a-package-here>=1"]\ndev = ["pytest>=8"]\n')
    with pytest.raises(SystemExit) as stop:
        extras_pins(fake)
    assert str(stop.value) == (f"{sys.executable} lacks not-a-package-here of the extras train, dev; "
                               f"run make install first")
    # --worker: what make test-lowest prints before its suite, each of the worker's own dependencies
    worker = subprocess.run([sys.executable, ".ci/extras_pins.py", "--worker"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60).stdout.split()
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert len(worker) == len(runtime) and "aiokafka==" + metadata.version("aiokafka") in worker


def test_the_serve_check_names_each_window_whose_ids_differ_and_the_largest_probability_gap():
    """.ci/serve_check.py compares a worker-only install at the lowest versions with .venv: equal
    token ids and probabilities within 1e-5 pass; anything else is named."""
    differences = _ci_module("serve_check").differences
    want = {"ids": [[1, 2], [3]], "probs": [[0.5, 0.5], [0.25, 0.75]]}
    assert differences(want, {"ids": [[1, 2], [3]], "probs": [[0.5, 0.5], [0.250009, 0.749991]]}) == []
    assert differences(want, {"ids": [[1, 2], [4]], "probs": [[0.5, 0.5], [0.25, 0.75]]}) == [
        "window 1: token ids [4] where .venv gave [3]"]
    assert differences(want, {"ids": [[1, 2], [3]], "probs": [[0.5, 0.5], [0.2502, 0.7498]]}) == [
        "probabilities differ by up to 0.0002 (limit 1e-05)"]

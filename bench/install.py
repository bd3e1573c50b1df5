"""Set-up cost (not a test): ``make install``'s environment installed by pip and by uv, in one run.

    .venv/bin/python bench/install.py [--workdir DIR]

Each installer puts the project with its ``train`` and ``dev`` extras (``pip install -e
'.[train,dev]'``, what ``make install`` installs) into its own fresh virtualenv, from a fresh clone
of this commit, and is timed from the first download to the last file written:
- ``pip``: the project's old way, with pip's cache as the machine has it;
- ``uv_no_cache``: ``uv pip install --compile-bytecode --no-cache``, as on a machine that never ran
  uv (every wheel downloaded);
- ``uv``: ``uv pip install --compile-bytecode`` with uv's cache as it is after the cold run, as on a
  second clone;
- ``uv_no_bytecode``: the same without ``--compile-bytecode``, as ``make install`` runs it.

pip writes every module's ``.pyc`` at install time, uv only with ``--compile-bytecode``. Where
``PYTHONDONTWRITEBYTECODE`` is set, a venv without them compiles torch again in every process that
imports it (``import_torch_cpu_seconds``: user CPU seconds of ``python -c 'import torch'`` in each
fresh virtualenv, after a first import, with this process's environment); the Makefile therefore
lets Python write them at first import, under ``.venv/pycache``.

All four resolve the same versions (``same_versions``: their ``pip freeze`` lists, names normalized).
Each virtualenv is removed after it is measured: one holds about 6 GB, most of it torch's CUDA
libraries.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXTRAS = "-e.[train,dev]"


def _run(cmd: list[str], cwd: Path) -> float:
    t = time.monotonic()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return round(time.monotonic() - t, 1)


def _freeze(venv: Path) -> set[str]:
    """Installed distributions as normalized ``name==version`` (the project itself and the
    installers left out)."""
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "freeze"],
                         capture_output=True, text=True, check=True).stdout
    keep = set()
    for line in out.splitlines():
        name, _, version = line.partition("==")
        name = re.sub(r"[-_.]+", "-", name).lower()
        if name not in {"interest-stream", "pip", "setuptools", "uv"}:
            keep.add(f"{name}=={version}")
    return keep


def _import_cpu(py: str) -> float:
    """User CPU seconds of a second ``import torch`` in a fresh process (the first warms the disk)."""
    code = "import resource, torch; print(resource.getrusage(resource.RUSAGE_SELF).ru_utime)"
    for _ in range(2):
        done = subprocess.run([py, "-c", code], capture_output=True, text=True, check=True)
    return round(float(done.stdout.strip()), 2)


def _du_gb(path: Path) -> float | None:
    if not path.exists():
        return None
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True).stdout.split()
    return round(int(out[0]) / 1024 ** 2, 2) if out else None


@click.command()
@click.option("--workdir", default=str(Path(tempfile.gettempdir()) / "interest-stream-bench" / "install"),
              show_default=True, type=click.Path(file_okay=False))
def main(workdir):
    from bench.common import commit, machine

    wd = Path(workdir)
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    clone = wd / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    home = Path.home() / ".cache"
    out = {"machine": machine(), "commit": commit(), "installs": EXTRAS,
           "caches_gb_before": {"pip": _du_gb(home / "pip"), "uv": _du_gb(home / "uv")}}
    freezes = {}
    for name in ("pip", "uv_no_cache", "uv", "uv_no_bytecode"):
        venv = wd / f"venv-{name}"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py = str(venv / "bin" / "python")
        if name == "pip":
            out[f"{name}_seconds"] = _run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", EXTRAS],
                                          clone)
        else:
            _run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "uv>=0.5,<1"], clone)
            cmd = [str(venv / "bin" / "uv"), "pip", "install", "--python", py, "-q", EXTRAS]
            cmd += {"uv_no_cache": ["--compile-bytecode", "--no-cache"], "uv": ["--compile-bytecode"]}.get(name, [])
            out[f"{name}_seconds"] = _run(cmd, clone)
        out[f"{name}_venv_gb"] = _du_gb(venv)
        out[f"{name}_import_torch_cpu_seconds"] = _import_cpu(py)
        freezes[name] = _freeze(venv)
        shutil.rmtree(venv)
        print(f"{name}: {out[f'{name}_seconds']} s", file=sys.stderr)
    out["pythondontwritebytecode"] = os.environ.get("PYTHONDONTWRITEBYTECODE", "")
    out["same_versions"] = freezes["pip"] == freezes["uv"] == freezes["uv_no_cache"] == freezes["uv_no_bytecode"]
    out["versions_only_in_pip"] = sorted(freezes["pip"] - freezes["uv"])
    out["versions_only_in_uv"] = sorted(freezes["uv"] - freezes["pip"])
    out["uv_no_cache_over_pip"] = round(out["uv_no_cache_seconds"] / out["pip_seconds"], 3)
    out["uv_over_pip"] = round(out["uv_seconds"] / out["pip_seconds"], 3)
    shutil.rmtree(clone)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

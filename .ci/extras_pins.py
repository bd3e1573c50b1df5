"""Print `name==version` for each package the train and dev extras name, as this Python has it.

`make test-lowest` gives these to uv as constraints while it resolves the worker's own
dependencies to the lowest versions pyproject.toml allows: the extras stay what `make install`
chose, so what the run tests is the worker's lower bounds. A package an extra names that this
Python lacks is an error, since the run would then test something else. With ``--worker``, the
worker's own dependencies instead: what the lowest environment has, printed before its suite runs.
"""
from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path


def installed_pins(requirements, what: str) -> list[str]:
    """``name==version`` as this Python has it, for each requirement (extras and bounds stripped);
    a package not installed stops it, naming the package and ``what`` the requirements are."""
    pins, missing = [], []
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise SystemExit(f"{sys.executable} lacks {', '.join(missing)} of {what}; run make install first")
    return pins


def extras_pins(pyproject: Path, extras=("train", "dev")) -> list[str]:
    optional = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    return installed_pins([r for extra in extras for r in optional[extra]], f"the extras {', '.join(extras)}")


if __name__ == "__main__":
    # --worker: the worker's own dependencies instead, as this Python has them (what make test-lowest tested)
    PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if sys.argv[1:] == ["--worker"]:
        pins = installed_pins(tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"],
                              "the worker's dependencies")
    else:
        pins = extras_pins(PYPROJECT)
    print("\n".join(pins))

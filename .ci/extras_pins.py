"""Print `name==version` for each package the train and dev extras name, as this Python has it.

`make test-lowest` gives these to uv as constraints while it resolves the worker's own
dependencies to the lowest versions pyproject.toml allows: the extras stay what `make install`
chose, so what the run tests is the worker's lower bounds. A package an extra names that this
Python lacks is an error, since the run would then test something else.
"""
from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path


def extras_pins(pyproject: Path, extras=("train", "dev")) -> list[str]:
    optional = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    pins, missing = [], []
    for extra in extras:
        for requirement in optional[extra]:
            name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
            try:
                pins.append(f"{name}=={metadata.version(name)}")
            except metadata.PackageNotFoundError:
                missing.append(name)
    if missing:
        raise SystemExit(f"{sys.executable} lacks {', '.join(missing)} of the extras {', '.join(extras)}; "
                         f"run make install first")
    return pins


if __name__ == "__main__":
    print("\n".join(extras_pins(Path(__file__).resolve().parent.parent / "pyproject.toml")))

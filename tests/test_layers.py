"""Layers point one way: interest_core imports none of the three packages; models and export never
import stream_app (read from the source, so a lazy import inside a function counts too)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_packages(package: str) -> dict[str, set[str]]:
    """file -> top-level packages it imports (absolute imports; relative ones stay inside)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tops = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = tops
    return out


@pytest.mark.parametrize("package, forbidden", [
    ("interest_core", {"stream_app", "models", "export"}),
    ("models", {"stream_app", "export"}),
    ("export", {"stream_app"}),
])
def test_layers_point_one_way(package, forbidden):
    found = {f: sorted(tops & forbidden) for f, tops in imported_packages(package).items() if tops & forbidden}
    assert found == {}


def test_the_scan_sees_imports():
    # the scan itself: stream_app does import the shared package (so an empty result above means something)
    assert any("interest_core" in tops for tops in imported_packages("stream_app").values())

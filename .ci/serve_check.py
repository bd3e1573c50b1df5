"""Serve one model in this environment and write, or check, what it gives.

`make test-lowest` builds a model with .venv (the newest versions `make install` picks), then runs
this with .venv, which writes the windows' token ids and probabilities, and again in a worker-only
environment at the lowest versions pyproject.toml allows, which must give the same ids and the same
probabilities (within 1e-5). It is the check a deployment makes when its worker is older than the
training that made its model: tokenizers 0.19 refused the tokenizer that training writes today.

    python .ci/serve_check.py MODEL_DIR --write FILE
    python .ci/serve_check.py MODEL_DIR --check FILE
"""
from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata

import numpy as np

from interest_core.window import WindowEvent
from stream_app.model_runtime import LoadedModel, ModelError, _test_windows

TOLERANCE = 1e-5


def windows(model: LoadedModel) -> list[list[WindowEvent]]:
    """The worker's own self-test windows, and searches built from the tokenizer's vocabulary, so
    that its merges are used, not only its unknown token."""
    vocab = sorted(json.loads(model.encoder.tokenizer_json)["model"]["vocab"])
    words = [w for w in vocab if w.isalpha()][:40]
    t0 = 1_700_000_000_000
    searches = [WindowEvent(t0 + 60_000 * i, "search", query=" ".join(words[i:i + 3]).upper())
                for i in range(0, len(words), 3)]
    return _test_windows(model.encoder) + [searches]


def serve(model_dir: str) -> dict:
    model = LoadedModel.load(model_dir)
    ws = windows(model)
    return {"versions": {p: metadata.version(p) for p in ("tokenizers", "onnxruntime", "numpy")},
            "ids": [model.encode(w) for w in ws], "probs": model.predict(ws).tolist()}


def differences(want: dict, got: dict) -> list[str]:
    out = [f"window {i}: token ids {g} where .venv gave {w}"
           for i, (w, g) in enumerate(zip(want["ids"], got["ids"])) if w != g]
    gap = float(np.abs(np.array(want["probs"]) - np.array(got["probs"])).max())
    if gap > TOLERANCE:
        out.append(f"probabilities differ by up to {gap:.3g} (limit {TOLERANCE:g})")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", metavar="FILE")
    mode.add_argument("--check", metavar="FILE")
    args = ap.parse_args()
    try:
        got = serve(args.model_dir)
    except ModelError as exc:
        print(f"serve check: {exc}", file=sys.stderr)
        return 1
    if args.write:
        with open(args.write, "w") as f:
            json.dump(got, f)
        return 0
    with open(args.check) as f:
        want = json.load(f)
    problems = differences(want, got)
    mine = ", ".join(f"{p} {v}" for p, v in got["versions"].items())
    made = ", ".join(f"{p} {v}" for p, v in want["versions"].items())
    if problems:
        print(f"serve check: with {mine} the model made with {made} gives:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print(f"serve check: with {mine}, the same {len(got['ids'])} windows' ids and probabilities as with {made}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

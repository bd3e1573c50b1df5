"""Shares of a py-spy profile by function, as JSON (not a test, not run by `make bench`).

Reads the raw output a benchmark records with ``BENCH_PYSPY=FILE`` (``--format raw``: one line per
stack, frames joined by ``;``, then its sample count). With ``BENCH_PYSPY_ARGS=--gil`` only samples
where the worker held the GIL are recorded, so the shares say where its Python time goes; waiting
for the network is left out. (With ``--native`` this machine's VM over-samples system calls:
bench/README.md.) For each function, the share of samples with it anywhere on the stack
(inclusive) and at the top (self):

    BENCH_PYSPY=/tmp/spy.txt BENCH_PYSPY_ARGS=--gil BENCH_PYSPY_S=60 BENCH_PYSPY_DELAY_S=15 \\
        .venv/bin/python bench/ingest.py --skip-bare
    .venv/bin/python bench/pyspy_shares.py /tmp/spy.txt [--top 40]
"""
from __future__ import annotations

import argparse
import collections
import sys

import orjson


def frame_name(frame: str) -> str:
    """``function (path/file.py:line)`` -> ``function (file.py)``."""
    name, _, where = frame.partition(" (")
    file = where.rsplit("/", 1)[-1].split(":", 1)[0].rstrip(")")
    return f"{name} ({file})" if file else name


def shares(lines, top: int) -> dict:
    inclusive, self_, total = collections.Counter(), collections.Counter(), 0
    for number, line in enumerate(lines, 1):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        if not count.isdigit():
            raise SystemExit(f"line {number} is not py-spy raw output (a stack, a space, a sample count)")
        n = int(count)
        total += n
        names = [frame_name(f) for f in stack.split(";")]
        for name in set(names):
            inclusive[name] += n
        self_[names[-1]] += n
    if not total:
        raise SystemExit("no samples in the profile")

    def pct(counter):
        return {k: round(100 * v / total, 1) for k, v in counter.most_common(top)}

    return {"samples": total, "inclusive_pct": pct(inclusive), "self_pct": pct(self_)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    try:
        with open(args.profile) as f:
            out = shares(f, args.top)
    except OSError as exc:
        raise SystemExit(f"cannot read {args.profile}: {exc.strerror}")
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    sys.exit(main())

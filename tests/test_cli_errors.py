"""Command-line errors that are the user's to fix: one line, no traceback."""

import os
import subprocess
import sys

from conftest import ROOT


def test_unreachable_broker_is_a_one_line_error():
    """No traceback when Kafka cannot be reached: what to check is named instead."""
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    out = subprocess.run([sys.executable, "-m", "stream_app.cli", "tail"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.startswith("Error: Kafka at 127.0.0.1:1: ")
    assert "check KAFKA_BOOTSTRAP_SERVERS / --bootstrap-servers" in out.stderr
    assert "Traceback" not in out.stderr

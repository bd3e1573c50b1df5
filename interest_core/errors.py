"""The project's error base: every command turns these into a one-line message, never a traceback."""
from __future__ import annotations


class InterestStreamError(Exception):
    """Base of the project's own errors; the CLI turns these into clean messages."""

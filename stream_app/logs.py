"""Structured logs: ``INTEREST_LOG_FORMAT=json`` writes one JSON object per line.

Fields: ``ts`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``pid``, ``message``, and
``exc`` with the formatted traceback when there is one. Written with orjson (already a runtime
dependency) rather than a logging add-on: the whole formatter is these few lines.
"""
from __future__ import annotations

import datetime as dt
import logging
import os

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process or os.getpid(),
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def use_json(logger: logging.Logger) -> None:
    """Every handler of ``logger`` (the root logger, as Faust set it up) writes JSON lines."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())

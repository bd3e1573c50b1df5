"""An event's JSON against the contract: the one check the worker and training both apply.

Pure functions (no Kafka, no torch). :func:`check_event` takes the bytes of one event (a Kafka
message's value, or a line of a JSONL log) and returns the event with the contract's fields only,
or a :class:`Rejected` with the contract's reason. The worker adds what only a Kafka message has
(its size, its key, its topic, the worker's clock: :func:`stream_app.events.validate`); training
reads logs through the same check (:func:`models.data.read_log`), so it learns from the events
the worker accepts, in the form the worker keeps them.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson

from interest_core.window import EVENT_TYPES, MAX_TS, STRING_LIMITS

REQUIRED_BY_TYPE = {
    "click": ("item_id", "category"),
    "browse": ("item_id", "category"),
    "search": ("query",),
}
BASE_REQUIRED = ("event_id", "user_id", "type", "ts")


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a message cannot be used: one of the contract's reasons and a human-readable detail."""

    reason: str
    detail: str


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_event(value: bytes | None) -> dict | Rejected:
    """The event in ``value`` (UTF-8 JSON) with the contract's fields only (the rest dropped), or
    why it is refused: ``not_json``, ``not_utf8``, or a reason of :func:`check_fields`."""
    if value is None or value == b"":
        return Rejected("not_json", "value is empty")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected("not_utf8", f"value is not valid UTF-8 at byte {exc.start}")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Rejected("not_json", f"value is not JSON: {exc}")
    return check_fields(obj)


def check_fields(obj) -> dict | Rejected:
    """The parsed event ``obj`` with the contract's fields only, or why it is refused:
    ``not_object``, ``missing_field``, ``unknown_type``, ``bad_type`` or ``too_long``."""
    if not isinstance(obj, dict):
        return Rejected("not_object", f"value is a JSON {type(obj).__name__}, not an object")

    for name in BASE_REQUIRED:
        if obj.get(name) is None:
            return Rejected("missing_field", f"{name} is missing")
    etype = obj["type"]
    if not isinstance(etype, str):
        return Rejected("bad_type", f"type must be a string, got {type(etype).__name__}")
    if etype not in EVENT_TYPES:
        return Rejected("unknown_type", f"type {etype[:64]!r} is not one of {', '.join(EVENT_TYPES)}")
    for name in REQUIRED_BY_TYPE[etype]:
        if obj.get(name) is None:
            return Rejected("missing_field", f"{name} is missing (required for {etype})")

    event = {"event_id": None, "user_id": None, "type": etype, "ts": None}
    for name in ("event_id", "user_id") + REQUIRED_BY_TYPE[etype]:
        v = obj[name]
        if not isinstance(v, str) or not v:
            got = "an empty string" if v == "" else type(v).__name__
            return Rejected("bad_type", f"{name} must be a non-empty string, got {got}")
        if len(v) > STRING_LIMITS[name]:
            return Rejected("too_long", f"{name} has {len(v)} characters, limit {STRING_LIMITS[name]}")
        event[name] = v
    ts = obj["ts"]
    if not _is_int(ts) or ts < 0:
        return Rejected("bad_type", f"ts must be a non-negative integer (epoch ms), got {ts!r}"[:200])
    if ts > MAX_TS:  # orjson reads up to 2**64-1; past any clock (the worker's reason), and numpy's int64
        return Rejected("future_ts", f"ts {ts} is past {MAX_TS}, the latest epoch ms a Kafka record timestamp holds")
    event["ts"] = ts
    dwell = obj.get("dwell_ms")
    if dwell is not None:
        if not _is_int(dwell) or dwell < 0:
            return Rejected("bad_type", f"dwell_ms must be an integer >= 0, got {dwell!r}"[:200])
        event["dwell_ms"] = dwell
    return event


class Refusals:
    """The lines of a log that the check refused: how many for each reason, and the first line of
    each with its detail (what :func:`models.data.read_log` and ``load jsonl`` report)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def add(self, line_no: int, rejected: Rejected) -> None:
        self.counts[rejected.reason] = self.counts.get(rejected.reason, 0) + 1
        self.first.setdefault(rejected.reason, f"line {line_no}: {rejected.detail}"[:300])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __str__(self) -> str:
        """Each reason, the most frequent first: ``missing_field 2 (first: line 4: item_id is missing
        (required for click)), not_object 1 (first: line 9: ...)``."""
        return describe(self.counts, self.first)


def describe(counts: dict[str, int], first: dict[str, str]) -> str:
    """:class:`Refusals` in words, from its two dicts (as a model card records them)."""
    reasons = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{r} {c} (first: {first[r]})" for r, c in reasons)

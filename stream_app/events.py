"""Raw Kafka message -> validated event, or a dead letter with the contract's reason.

Pure functions (no Kafka): the agent calls :func:`validate` for every input message and
:func:`dead_letter` for every failure. Reasons are exactly those of CONTRACT.md; ``late`` is
decided against the user's window in :mod:`stream_app.state`.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

import orjson

from interest_core.window import EVENT_TYPES, STRING_LIMITS

MAX_VALUE_BYTES = 64 * 1024  # CONTRACT: too_large is over 64 KiB
DLQ_PAYLOAD_BYTES = 4 * 1024  # CONTRACT: payload_b64 holds the first 4 KiB
# A dead letter carries the source key twice (its Kafka key and key_b64, whole), so it is larger
# than its input message when the key is large: a ~1 MB key (the broker's default limit,
# message.max.bytes) makes a ~2.3 MB dead letter. The dead-letter topic (topics create) and the
# worker's producer allow records up to this size; at Faust's 1,000,000 bytes, such a dead letter
# crashed the worker's producer, and the worker stopped at every restart on the same message.
MAX_DEAD_LETTER_BYTES = 4 * 1024 * 1024

REASONS = (
    "not_utf8", "not_json", "not_object", "too_large", "missing_key", "key_mismatch",
    "missing_field", "bad_type", "too_long", "unknown_type", "topic_mismatch", "future_ts", "late",
)

REQUIRED_BY_TYPE = {
    "click": ("item_id", "category"),
    "browse": ("item_id", "category"),
    "search": ("query",),
}
BASE_REQUIRED = ("event_id", "user_id", "type", "ts")


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a message cannot be used: one of :data:`REASONS` and a human-readable detail."""

    reason: str
    detail: str


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate(
    expected_type: str, key: bytes | None, value: bytes | None, now_ms: int, future_ms: int
) -> dict | Rejected:
    """Check one input message against the contract.

    ``expected_type`` is the event type of the topic it arrived on; ``now_ms`` the worker's
    clock, used only for ``future_ts``. Returns the event (a dict with the contract's fields,
    extra fields dropped) or a :class:`Rejected`.
    """
    if value is not None and len(value) > MAX_VALUE_BYTES:
        return Rejected("too_large", f"value is {len(value)} bytes, limit {MAX_VALUE_BYTES}")
    if not key:
        return Rejected("missing_key", "message has no key (the user id)")
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected("not_utf8", "key is not valid UTF-8")
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
    event["ts"] = ts
    dwell = obj.get("dwell_ms")
    if dwell is not None:
        if not _is_int(dwell) or dwell < 0:
            return Rejected("bad_type", f"dwell_ms must be an integer >= 0, got {dwell!r}"[:200])
        event["dwell_ms"] = dwell
    if event["user_id"] != key_text:
        return Rejected("key_mismatch", "user_id differs from the message key")
    if etype != expected_type:
        return Rejected("topic_mismatch", f"a {etype} event on the {expected_type} topic")
    if ts > now_ms + future_ms:
        return Rejected("future_ts", f"ts is {(ts - now_ms) / 3_600_000:.1f} h ahead of the worker's clock")
    return event


def dead_letter(
    rejected: Rejected, topic: str, partition: int, offset: int,
    key: bytes | None, value: bytes | None, at_ms: int,
) -> bytes:
    """The dead-letter record of CONTRACT.md, serialised."""
    payload = value or b""
    return orjson.dumps({
        "reason": rejected.reason,
        "detail": rejected.detail,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key_b64": base64.b64encode(key).decode() if key is not None else None,
        "payload_b64": base64.b64encode(payload[:DLQ_PAYLOAD_BYTES]).decode(),
        "truncated": len(payload) > DLQ_PAYLOAD_BYTES,
        "at": at_ms,
    })

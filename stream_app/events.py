"""Raw Kafka message -> validated event, or a dead letter with the contract's reason.

Pure functions (no Kafka): the agent calls :func:`validate` for every input message and
:func:`dead_letter` for every failure. Reasons are exactly those of CONTRACT.md; ``late`` is
decided against the user's window in :mod:`stream_app.state`. The event's own JSON is checked by
:func:`interest_core.event_check.check_event`, which training's reading of a log shares; this
module adds what only a Kafka message has: its size, its key, its topic and the worker's clock.
"""
from __future__ import annotations

import base64

import orjson

from interest_core.event_check import Rejected, check_event

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


def validate(
    expected_type: str, key: bytes | None, value: bytes | None, now_ms: int, future_ms: int
) -> dict | Rejected:
    """Check one input message against the contract.

    ``expected_type`` is the event type of the topic it arrived on; ``now_ms`` the worker's
    clock, used only for ``future_ts``. Returns the event (a dict with the contract's fields,
    extra fields dropped) or a :class:`Rejected`.
    """
    if value is not None and (large := too_large(value)):
        return large
    if not key:
        return Rejected("missing_key", "message has no key (the user id)")
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected("not_utf8", "key is not valid UTF-8")
    event = check_event(value)
    if isinstance(event, Rejected):
        return event
    if event["user_id"] != key_text:
        return Rejected("key_mismatch", "user_id differs from the message key")
    if event["type"] != expected_type:
        return Rejected("topic_mismatch", f"a {event['type']} event on the {expected_type} topic")
    if event["ts"] > now_ms + future_ms:
        return Rejected("future_ts", f"ts is {(event['ts'] - now_ms) / 3_600_000:.1f} h ahead of the worker's clock")
    return event


def too_large(value: bytes) -> Rejected | None:
    """``too_large`` for a value over the contract's 64 KiB, else None."""
    if len(value) > MAX_VALUE_BYTES:
        return Rejected("too_large", f"value is {len(value)} bytes, limit {MAX_VALUE_BYTES}")
    return None


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

"""Validation: every dead-letter reason of the contract, from a table of raw inputs."""
import base64
import json

import orjson
import pytest

from stream_app.events import REASONS, Rejected, dead_letter, validate

NOW = 1_900_000_000_000
DAY = 86_400_000


def enc(obj) -> bytes:
    return json.dumps(obj).encode()


CLICK = {"event_id": "e1", "user_id": "u1", "type": "click", "ts": 1_000, "item_id": "i", "category": "c"}
SEARCH = {"event_id": "e2", "user_id": "u1", "type": "search", "ts": 1_000, "query": "red shoes"}


def with_(base, **kw):
    d = dict(base)
    for k, v in kw.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return d


CASES = [
    ("too_large", "click", b"u1", b"{" + b" " * (64 * 1024) + b"}"),
    ("missing_key", "click", None, enc(CLICK)),
    ("missing_key", "click", b"", enc(CLICK)),
    ("not_utf8", "click", b"u1", b'{"event_id": "\xff\xfe"}'),
    ("not_utf8", "click", b"\xff", enc(CLICK)),
    ("not_json", "click", b"u1", b"{event_id: 1}"),
    ("not_json", "click", b"u1", None),
    ("not_object", "click", b"u1", b"[1, 2]"),
    ("not_object", "click", b"u1", b'"click"'),
    ("missing_field", "click", b"u1", enc(with_(CLICK, event_id=...))),
    ("missing_field", "click", b"u1", enc(with_(CLICK, ts=None))),
    ("missing_field", "click", b"u1", enc(with_(CLICK, category=...))),
    ("missing_field", "browse", b"u1", enc(with_(CLICK, type="browse", item_id=...))),
    ("missing_field", "search", b"u1", enc(with_(SEARCH, query=...))),
    ("bad_type", "click", b"u1", enc(with_(CLICK, ts=1.5))),
    ("bad_type", "click", b"u1", enc(with_(CLICK, ts=True))),
    ("bad_type", "click", b"u1", enc(with_(CLICK, ts="1000"))),
    ("bad_type", "click", b"u1", enc(with_(CLICK, event_id=7))),
    ("bad_type", "click", b"u1", enc(with_(CLICK, item_id=""))),
    ("bad_type", "browse", b"u1", enc(with_(CLICK, type="browse", dwell_ms=-1))),
    ("bad_type", "browse", b"u1", enc(with_(CLICK, type="browse", dwell_ms=False))),
    ("bad_type", "click", b"u1", enc(with_(CLICK, type=3))),
    ("too_long", "click", b"u1", enc(with_(CLICK, event_id="x" * 129))),
    ("too_long", "click", b"u1", enc(with_(CLICK, category="c" * 129))),
    ("too_long", "search", b"u1", enc(with_(SEARCH, query="q" * 513))),
    ("unknown_type", "click", b"u1", enc(with_(CLICK, type="purchase"))),
    ("key_mismatch", "click", b"u2", enc(CLICK)),
    ("topic_mismatch", "click", b"u1", enc(SEARCH)),
    ("future_ts", "click", b"u1", enc(with_(CLICK, ts=NOW + DAY + 1))),
    # edges of a fuzzing pass: each is still one of the contract's reasons, never an exception
    ("not_json", "click", b"u1", b"\xef\xbb\xbf" + enc(CLICK)),  # a BOM
    ("not_json", "click", b"u1", b" \n\t"),
    ("not_json", "click", b"u1", b"[" * 10_000 + b"]" * 10_000),  # orjson's depth limit, no recursion
    ("not_json", "click", b"u1", enc(CLICK).replace(b"1000", b"NaN")),
    ("not_object", "click", b"u1", b"null"),
    ("bad_type", "click", b"u1", enc(with_(CLICK, ts=10**30))),  # past 64 bits orjson gives a float
    ("future_ts", "click", b"u1", enc(with_(CLICK, ts=2**63))),
    ("unknown_type", "click", b"u1", enc(with_(CLICK, type="Click"))),
    ("too_long", "click", b"u" * 129, enc(with_(CLICK, user_id="u" * 129))),
]


@pytest.mark.parametrize("reason,topic_type,key,value", CASES)
def test_reason(reason, topic_type, key, value):
    result = validate(topic_type, key, value, NOW, DAY)
    assert isinstance(result, Rejected), result
    assert result.reason == reason, result.detail


def test_every_reason_but_late_is_covered():
    # `late` depends on the user's window and is tested in test_state.py
    assert {c[0] for c in CASES} == set(REASONS) - {"late"}


def test_valid_events_keep_contract_fields_only():
    ev = with_(CLICK, type="browse", dwell_ms=1200, extra={"ignored": True})
    assert validate("browse", b"u1", enc(ev), NOW, DAY) == {
        "event_id": "e1", "user_id": "u1", "type": "browse", "ts": 1000,
        "item_id": "i", "category": "c", "dwell_ms": 1200,
    }
    assert validate("search", b"u1", enc(SEARCH), NOW, DAY) == {
        "event_id": "e2", "user_id": "u1", "type": "search", "ts": 1000, "query": "red shoes",
    }


def test_limits_are_inclusive():
    ok = with_(CLICK, event_id="x" * 128, ts=NOW + DAY)
    assert not isinstance(validate("click", b"u1", enc(ok), NOW, DAY), Rejected)
    ok = with_(SEARCH, query="é" * 512)  # characters, not bytes
    assert not isinstance(validate("search", b"u1", enc(ok), NOW, DAY), Rejected)


def test_dead_letter_record():
    payload = b"x" * 5000
    rec = orjson.loads(dead_letter(Rejected("not_json", "bad"), "events.click", 3, 42, b"u1", payload, 123))
    assert rec == {
        "reason": "not_json", "detail": "bad", "topic": "events.click", "partition": 3, "offset": 42,
        "key_b64": base64.b64encode(b"u1").decode(),
        "payload_b64": base64.b64encode(b"x" * 4096).decode(), "truncated": True, "at": 123,
    }
    rec = orjson.loads(dead_letter(Rejected("missing_key", "m"), "t", 0, 0, None, b"{}", 1))
    assert rec["key_b64"] is None and rec["truncated"] is False

"""Forget requests without a broker: what a request says, and what it waits for."""
import pytest

from stream_app.control import parse, unapplied


@pytest.mark.parametrize("value, expected", [
    (b'{"op": "forget", "ends": {"events.click": 12, "events.browse": 0}}',
     ("forget", {"events.click": 12, "events.browse": 0})),
    (b'{"op": "forget"}', ("forget", {})),  # a request of an older `forget`: applied at once
    (b'{"op": "scored"}', ("scored", {})),
    (b'not json', (None, {})),
    (b'[1, 2]', (None, {})),
    (None, (None, {})),
    (b'{"ends": {}}', (None, {})),
    (b'{"op": 3}', (None, {})),
    (b'{"op": "forget", "ends": [12]}', (None, {})),
    (b'{"op": "forget", "ends": {"events.click": -1}}', (None, {})),
    (b'{"op": "forget", "ends": {"events.click": 1.5}}', (None, {})),
    (b'{"op": "forget", "ends": {"events.click": true}}', (None, {})),
])
def test_a_control_request_is_its_op_and_end_offsets_or_malformed(value, expected):
    assert parse(value) == expected


def test_a_forget_waits_for_each_topic_applied_up_to_its_end_offset():
    ends = {"click": 10, "browse": 0, "search": 5}
    applied = {"click": 9, "browse": 0, "search": 7}
    assert unapplied(ends, applied.get) == {"click": (10, 9)}
    applied["click"] = 10
    assert unapplied(ends, applied.get) == {}
    assert unapplied({}, applied.get) == {}

"""Forget requests without a broker: what a request says, and what it waits for."""
import pytest

from stream_app.control import applied_offset, parse, unapplied
from stream_app.forget_answer import forget_report, tombstone_headers
from stream_app.state_cache import Forget


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


def test_applied_is_what_the_next_flush_can_commit():
    """The offset a forget's end offsets are compared with, for one input partition."""
    assert applied_offset(9, None) == 10  # received up to 9
    assert applied_offset(None, 7) == 7  # nothing received since the assignment: the committed offset
    assert applied_offset(None, None) == 0
    assert applied_offset(9, 12) == 12
    assert applied_offset(9, None, 4, None) == 4  # the aligner still holds offset 4
    assert applied_offset(9, None, None, 6) == 6  # offset 6's dead letter is not delivered yet
    assert applied_offset(9, 12, 11, 6) == 6


class Request:
    partition, offset, key = 3, 17, b"u1"


def test_a_tombstone_says_whether_the_worker_held_a_state_and_which_request_it_answers():
    assert tombstone_headers(Forget(Request(), True)) == [("interest-held-state", b"1"),
                                                          ("interest-forget-request", b"3@17")]
    assert tombstone_headers(Forget(Request(), False)) == [("interest-held-state", b"0"),
                                                           ("interest-forget-request", b"3@17")]


NO_STATE = ("forgotten: u1 (tombstone at user-interests[2]@40); the worker held no state for u1 when it applied "
            "this request: is the id right? (a request applied again after a worker restart also finds none)")


@pytest.mark.parametrize("headers, expected", [
    ([("interest-held-state", b"1"), ("interest-forget-request", b"3@17")],
     "forgotten: u1 (tombstone at user-interests[2]@40)"),
    ([("interest-held-state", b"0"), ("interest-forget-request", b"3@17")], NO_STATE),
    ([("interest-forget-request", b"3@17"), ("interest-held-state", b"0")], NO_STATE),
    ([("interest-held-state", b"0"), ("interest-forget-request", b"3@16")], None),  # another request's
    ([("interest-held-state", b"1"), ("interest-forget-request", b"1@17")], None),
    ([], "forgotten: u1 (tombstone at user-interests[2]@40)"),  # a worker older than the headers
    (None, "forgotten: u1 (tombstone at user-interests[2]@40)"),
])
def test_forget_reports_its_own_requests_tombstone_and_whether_the_worker_held_state(headers, expected):
    assert forget_report("u1", "user-interests[2]@40", headers, "3@17") == expected

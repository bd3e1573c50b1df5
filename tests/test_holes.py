"""stream_app.holes: the offsets a consumer was never given, found from the position it was sought
to and the records handed over, and the floor no commit may pass until they are settled."""
from stream_app.holes import Deliveries, read_through

TP, OTHER = ("events.click", 4), ("events.click", 5)


def test_records_in_order_leave_no_hole():
    d = Deliveries()
    d.positioned(TP, 185)
    assert [d.delivered(TP, o) for o in (185, 186, 187)] == [None, None, None]
    assert d.floor(TP) is None and d.take_pending() == []


def test_a_jump_after_the_seek_is_a_hole_and_the_floor_until_settled():
    """As in the audit: sought to 185, the first record handed over is 253 (Faust dropped 185..252)."""
    d = Deliveries()
    d.positioned(TP, 185)
    assert d.delivered(TP, 253) == (185, 253)
    assert d.delivered(TP, 254) is None
    assert d.floor(TP) == 185 and d.floor(OTHER) is None
    assert d.take_pending() == [(TP, 185, 253)] and d.take_pending() == []
    d.positioned(TP, 185)  # read again from the hole's start: its records, then those after it again
    assert [d.delivered(TP, o) for o in range(185, 256)] == [None] * 71
    assert d.floor(TP) == 185  # until offset 185 is acknowledged (the consumer's _new_offset)
    d.settled(TP, 185)
    assert d.floor(TP) is None


def test_one_record_missing_at_the_seek_point_is_a_hole():
    """Faust's own checks let this one through: the jump is 1 from its read offset, and its head
    check lets one unacknowledged offset after the last commit go (search[1]@3, an audit)."""
    d = Deliveries()
    d.positioned(TP, 3)
    assert d.delivered(TP, 4) == (3, 4) and d.floor(TP) == 3


def test_a_hole_of_markers_settles_alone_and_the_lowest_hole_is_the_floor():
    d = Deliveries()
    d.positioned(TP, 10)
    assert d.delivered(TP, 12) == (10, 12)  # a transaction's marker at 10, say
    assert d.delivered(TP, 20) == (13, 20)
    assert d.floor(TP) == 10
    d.settle_one(TP, 10, 12)  # read: no record there
    assert d.floor(TP) == 13
    d.settle_one(TP, 13, 20)
    assert d.floor(TP) is None


def test_records_after_a_hole_of_the_fetchers_are_held_back_until_it_is_read():
    """A third worker's fetcher, restarted, skipped offsets 66..175 of browse[2] (a trial of
    bench/rebalance.py --workers 3 --kill): 176 on are held back, and read again after the hole."""
    d = Deliveries()
    d.positioned(TP, 66)
    assert d.delivered(TP, 176) == (66, 176)
    assert d.held(TP) == 176 and d.held(OTHER) is None
    assert d.take_pending() == [(TP, 66, 176)]
    d.positioned(TP, 66)  # the hole holds records: read again from its start, then those held back
    assert d.held(TP) is None
    assert [d.delivered(TP, o) for o in range(66, 180)] == [None] * 114


def test_a_hole_that_holds_no_record_releases_what_was_held_back():
    d = Deliveries()
    d.positioned(TP, 10)
    assert d.delivered(TP, 20) == (10, 20)  # an aborted transaction's records, say
    d.settle_one(TP, 10, 20)
    assert d.release(TP) == 20 and d.held(TP) is None and d.release(TP) is None
    assert [d.delivered(TP, o) for o in (20, 21)] == [None, None]  # fetched again from 20
    assert d.base(TP) == (10, True) and d.floor(TP) is None


def test_a_hole_of_one_offset_is_held_behind_until_the_partition_is_found_to_carry_markers():
    """A record the fetcher skipped alone (10) is read before those behind it. Once a hole is read
    and holds no record (a transaction's commit marker at 10, say), the partition carries markers:
    each transaction's marker is a hole of one offset, and the records after it go on (it is read
    afterwards). Known past a revocation; a hole of more offsets is held behind there too."""
    d = Deliveries()
    d.positioned(TP, 10)
    assert d.delivered(TP, 11) == (10, 11) and d.held(TP) == 11
    assert not d.carries_markers(TP)
    d.settle_one(TP, 10, 11)  # read: no record there
    assert d.carries_markers(TP) and not d.carries_markers(OTHER)
    assert d.release(TP) == 11
    assert d.delivered(TP, 11) is None
    assert d.delivered(TP, 13) == (12, 13) and d.held(TP) is None
    assert d.delivered(TP, 30) == (14, 30) and d.held(TP) == 30
    d.forget(TP)
    assert d.held(TP) is None and d.floor(TP) is None and d.carries_markers(TP)
    d.positioned(TP, 40)
    assert d.delivered(TP, 41) == (40, 41) and d.held(TP) is None
    d.positioned(OTHER, 40)
    assert d.delivered(OTHER, 41) == (40, 41) and d.held(OTHER) == 41


def test_the_first_record_sets_the_position_and_a_revocation_forgets_the_partition():
    d = Deliveries()
    assert d.delivered(TP, 500) is None  # no position known (no committed offset): no hole
    assert d.delivered(TP, 502) == (501, 502)
    d.forget(TP)
    assert d.floor(TP) is None and d.take_pending() == [] and d.delivered(TP, 900) is None
    d.positioned(TP, None)
    assert d.delivered(TP, 7) is None


def test_records_handed_over_but_never_acknowledged_at_the_head_are_a_hole():
    """Sought to 216, records 216..220 were handed over while Faust's stream skipped them (flow
    control not active yet); 221.. were applied and acknowledged. Faust, having forgotten its
    committed offset at the revocation, committed 267 over them (an audit's run, at 37efc1f)."""
    d = Deliveries()
    d.positioned(TP, 216)
    assert [d.delivered(TP, o) for o in range(216, 267)] == [None] * 51
    assert d.head_missing(TP, 216) is None  # the head acknowledged: commits go on
    assert d.head_missing(TP, 221) == (216, 221) and d.floor(TP) == 216
    # what a state may record: offsets before the hole only
    assert d.read_before(TP, 215) and not d.read_before(TP, 216) and not d.read_before(TP, 230)
    assert d.head_missing(TP, 221) is None and d.take_pending() == [(TP, 216, 221)]  # found once
    d.settled(TP, 216)
    assert d.read_before(TP, 230)
    d.committed(TP, 267)
    assert d.head_missing(TP, 268) is None  # one offset after a commit: a transaction's marker
    assert d.head_missing(TP, 269) == (267, 269)
    d.settle_one(TP, 267, 269)  # read: only markers
    d.positioned(TP, 300)
    assert d.head_missing(TP, 301) == (300, 301)  # one offset after a seek: read, it may be a record


def test_no_hole_is_found_below_fausts_committed_offset():
    """Sought back to 17 to read a hole again, the base is 17; Faust's committed offset is 19, and
    it does not count acknowledgements below it, so 17 and 18, read again and acknowledged, stay
    missing. Three workers killed in turn found them missing at every commit for a minute, read
    them again and dead-lettered them each time (bench/rebalance.py --workers 3 --kill)."""
    d = Deliveries()
    d.positioned(TP, 17)
    assert [d.delivered(TP, o) for o in range(17, 30)] == [None] * 13
    assert d.head_missing(TP, 19, committed=19) is None and d.floor(TP) is None
    assert d.base(TP) == (19, False)  # commits go on from Faust's: one offset after it is a marker
    assert d.head_missing(TP, 20, committed=19) is None
    assert d.head_missing(TP, 21, committed=19) == (19, 21)  # past it, a hole as before
    assert d.head_missing(TP, 25, committed=None) is None  # found once; Faust's offset not known
    d2 = Deliveries()
    d2.positioned(TP, 17)
    assert d2.head_missing(TP, 19, committed=12) == (17, 19)  # Faust's offset behind the base: the base


def test_read_through_stops_at_the_first_offset_neither_handled_nor_a_gap():
    # sought to 100: 100..102 applied, 103..104 Faust's gap (markers), 105 applied, 106 never given
    assert read_through(100, True, [100, 101, 102, 105], [(103, 105)]) == 106
    assert read_through(100, True, [101, 105, 102, 100, 107], [(103, 105)]) == 106  # in any order
    assert read_through(100, True, [100, 101, 102, 104, 106], [(103, 106)]) == 107  # a record inside a gap
    assert read_through(100, True, [], []) == 100  # nothing read since the seek
    assert read_through(100, True, [99, 100], []) == 101  # an offset acknowledged before the base counts for nothing
    assert read_through(100, True, [101, 102], []) == 100  # after a seek 100 may be a record
    # one offset right after a commit is a transaction's marker, once, and only at the base
    assert read_through(100, False, [101, 102], []) == 103
    assert read_through(100, False, [102, 103], []) == 100
    assert read_through(100, False, [100, 101, 103], []) == 102


def test_the_base_is_the_seek_then_each_commit_and_unknown_after_a_revocation():
    d = Deliveries()
    assert d.base(TP) is None
    d.positioned(TP, 185)
    assert d.base(TP) == (185, True)
    d.committed(TP, 200)
    assert d.base(TP) == (200, False)
    d.forget(TP)
    assert d.base(TP) is None

"""Offsets of an input partition the worker's consumer was never given: the holes a commit must
not pass.

faust-streaming 0.15 resumes its fetcher before it has sought the newly assigned partitions to
their committed offsets (faust-streaming issue 216), and records fetched around that moment are
dropped without reaching the agent. The next record it hands over is then many offsets further on,
and Faust takes the jump for offsets that hold no record (a transaction's marker, a compacted
record): it adds them to its "gaps" and commits over them (``Consumer._add_gap``,
``Consumer._new_offset``, whose check of the head also lets one unacknowledged offset go). And its
stream skips records handed over before its flow control is active again, unacknowledged, which
Faust commits over at a revocation, where it forgets its committed offset before the last commit.
Two workers taking partitions from each other while events stream in lost 3 to 13 % of them that
way, without a dead letter or a log line (an audit, reproduced at a2a8031: 308 of 3,390 events).

:class:`Deliveries` is the bookkeeping, pure: the offset each partition's next record should have
(from the position the consumer was sought to, then after each record handed over), where its
commits go on from (that position, then each commit), and the holes: from the offset expected to
the one given (:meth:`Deliveries.delivered`), or from where commits go on to the lowest offset
acknowledged (:meth:`Deliveries.head_missing`). Until a hole is settled the partition commits
nothing (:meth:`Deliveries.floor`). The consumer (:class:`stream_app.consumer.Consumer`) reads each
hole with a consumer of its own: records there are read again from the hole's start; none (markers)
settle it.

Records behind a hole the fetcher left are held back (:meth:`Deliveries.held`): the record the hole
was found at and every later one of its partition are not handed over until the hole is read, and
the consumer reads from the hole's start again (or, when the hole holds no record, from the first
record held back). Handed over before the hole's records, they moved the user's event time on, and
in a backlog (event time hours ahead per second) the hole's records, read after them, were judged
`late` (256 in one trial of three workers killed in turn, ``bench/rebalance.py --workers 3
--kill``). A hole of one offset is held behind too until the partition is found to carry
transaction markers (:meth:`Deliveries.carries_markers`): a hole read and found to hold no record.
From then on a hole of one offset is taken for a transaction's commit marker, which no consumer is
given; holding there would fetch a transactional producer's partition again after every
transaction. Such a hole is read afterwards, as every hole was before, so a record the fetcher
skipped there is read after those behind it. In a partition written without transactions (this
project's ``load`` and producers) a hole of one offset is a record skipped, and is held behind.
"""
from __future__ import annotations


class Deliveries:
    def __init__(self) -> None:
        self._next: dict = {}  # tp -> the offset the next record handed over should have
        self._base: dict = {}  # tp -> the offset commits go on from: the position sought to, then each commit
        self._sought: set = set()  # the partitions whose base is the position sought to, not a commit
        self._holes: dict = {}  # tp -> [(start, end)] not settled, in the order found
        self._pending: list = []  # (tp, start, end) to be read
        self._held: dict = {}  # tp -> the first offset not handed over, behind a hole not read yet
        self._markers: set = set()  # the partitions with offsets that hold no record: kept past a revocation

    def positioned(self, tp, offset: int | None) -> None:
        """The consumer was sought to ``offset`` for ``tp`` (None: unknown, the first record sets it)."""
        self._held.pop(tp, None)  # read from there: nothing is held back any more
        if offset is None or offset < 0:
            self._next.pop(tp, None)
            self._base.pop(tp, None)
        else:
            self._next[tp] = self._base[tp] = offset
            self._sought.add(tp)

    def committed(self, tp, offset: int) -> None:
        """``offset`` of ``tp`` is committed (the next to read)."""
        self._base[tp] = offset
        self._sought.discard(tp)

    def head_missing(self, tp, lowest: int, committed: int | None = None) -> tuple[int, int] | None:
        """``lowest``, the lowest offset acknowledged (or a gap's start), is past where commits go
        on: the records between were handed over but never acknowledged, skipped by Faust's stream
        (its flow control not active yet, or an older generation), and Faust, which forgets its
        committed offset before the last commit of a revoked partition, committed over them. A
        hole ``(start, end)`` from there, found once. One offset after a commit is taken for a
        transaction's marker (a commit after a transaction's last record lands on its marker): Faust
        skips records only around a rebalance, after a seek.

        ``committed``: Faust's committed offset. Faust does not count an acknowledgement below it,
        so no hole can be filled below it: commits go on from there when it is past the base (a
        hole read again from before it had left the base there, and the records before it, read
        again and acknowledged in vain, were found missing again at every commit)."""
        base = self._base.get(tp)
        if base is not None and committed is not None and committed > base:
            self.committed(tp, committed)
            base = committed
        if base is None or lowest <= base or (lowest == base + 1 and tp not in self._sought):
            return None
        if any(start <= base for start, _ in self._holes.get(tp, ())):
            return None
        self._holes.setdefault(tp, []).append((base, lowest))
        self._pending.append((tp, base, lowest))
        return base, lowest

    def delivered(self, tp, offset: int) -> tuple[int, int] | None:
        """The fetcher gives a record at ``offset``; the hole it leaves behind, ``(start, end)``, if
        any. This record is held back with every later one of ``tp`` (:meth:`held`): the consumer does
        not hand them over. Not behind a hole of one offset in a partition that carries transaction
        markers (:meth:`carries_markers`): that is taken for a transaction's commit marker."""
        expected = self._next.get(tp)
        if expected is not None and offset < expected:
            return None  # a record again (read again after a hole): the position is the seek's
        self._next[tp] = offset + 1
        if expected is None or offset == expected:
            return None
        self._holes.setdefault(tp, []).append((expected, offset))
        self._pending.append((tp, expected, offset))
        if offset - expected > 1 or tp not in self._markers:
            self._held[tp] = offset
        return expected, offset

    def held(self, tp) -> int | None:
        """The first offset of ``tp`` held back (not to be handed over, nor any record after it)
        behind a hole the fetcher left (:meth:`delivered`) until the hole is read; None when none is."""
        return self._held.get(tp)

    def release(self, tp) -> int | None:
        """The records of ``tp`` are read again from where :meth:`held` says (the hole held no
        record), or from before it (:meth:`positioned`): nothing is held back any more; the offset
        that was, if any."""
        return self._held.pop(tp, None)

    def read_before(self, tp, offset: int) -> bool:
        """Whether every record of ``tp`` before ``offset`` was read: no hole unsettled at or
        before it (what lets a state record the offset, :func:`stream_app.core.ingest`)."""
        hole = self.floor(tp)
        return hole is None or offset < hole

    def base(self, tp) -> tuple[int, bool] | None:
        """Where ``tp``'s commits go on from, and whether that is the position sought to (not a
        commit); None when not known."""
        base = self._base.get(tp)
        return None if base is None else (base, tp in self._sought)

    def take_pending(self) -> list:
        """The holes found since the last call, to be read: ``[(tp, start, end)]``."""
        pending, self._pending = self._pending, []
        return pending

    def floor(self, tp) -> int | None:
        """The lowest offset of ``tp`` a hole leaves unread: no commit may pass it; None when none."""
        holes = self._holes.get(tp)
        return min(start for start, _ in holes) if holes else None

    def settled(self, tp, start: int) -> None:
        """The holes of ``tp`` from ``start`` on are settled: read again from there, or the hole at
        ``start`` holds no record."""
        self._keep(tp, lambda hole: hole[0] < start)

    def settle_one(self, tp, start: int, end: int) -> None:
        """The hole ``(start, end)`` of ``tp`` holds no record: ``tp`` carries transaction markers
        (or aborted records, or is compacted)."""
        self._keep(tp, lambda hole: hole != (start, end))
        self._markers.add(tp)

    def carries_markers(self, tp) -> bool:
        """Whether a hole of ``tp`` was found to hold no record (:meth:`settle_one`), since this
        consumer started: then a hole of one offset is taken for a transaction's commit marker and
        holds nothing back (:meth:`delivered`)."""
        return tp in self._markers

    def _keep(self, tp, unsettled) -> None:
        holes = [hole for hole in self._holes.get(tp, ()) if unsettled(hole)]
        if holes:
            self._holes[tp] = holes
        else:
            self._holes.pop(tp, None)

    def forget(self, tp) -> None:
        """``tp`` was revoked: its next owner reads from the committed offset."""
        self._next.pop(tp, None)
        self._base.pop(tp, None)
        self._sought.discard(tp)
        self._holes.pop(tp, None)
        self._held.pop(tp, None)
        self._pending = [p for p in self._pending if p[0] != tp]


def read_through(base: int, sought: bool, offsets, spans) -> int:
    """The first offset from ``base`` on that is neither one of ``offsets`` (records handed over
    and applied or dead-lettered) nor in one of ``spans`` (``(start, end)``, offsets Faust found
    without a record): every record before it was read. As :meth:`Deliveries.head_missing` does,
    one offset right after a commit (``sought`` False) is taken for a transaction's marker."""
    items = sorted([(o, o + 1) for o in offsets] + [tuple(span) for span in spans])
    end = base
    for start, stop in items:
        if start > end:
            if end == base and start == base + 1 and not sought:
                end = start  # the marker
            else:
                break
        end = max(end, stop)
    return end

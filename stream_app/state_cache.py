"""The write-behind cache of decoded user states: events change states in memory, and each changed
user reaches the table (so its changelog) once per flush, like Kafka Streams' record cache in
front of a state store or Quix Streams' per-partition transaction.

Pure bookkeeping, no Faust and no Kafka: :mod:`stream_app.flush` writes what :meth:`StateCache.take`
hands it and acknowledges the events it held. Per partition of this worker it keeps:

* ``entries``: decoded states, least recently used first, bounded by ``max_bytes`` (estimated
  Python memory, :func:`estimated_size`); a changed ("dirty") state is never dropped before it was
  taken for a flush; ``None`` is a deletion waiting for its flush (forget, eviction);
* ``held``: the input events applied since the partition's last flush, not acknowledged to Faust
  yet, so their offsets cannot be committed before the states they changed are in the changelog;
* ``letters``: the dead-lettered input events (:class:`Letter`), each kept until a flush finds its
  dead letter delivered and acknowledges it; the lowest offset of a topic's letters is the floor
  its commits may not pass (:meth:`letter_floor`);
* ``pending``: users with events newer than their last vector (the scoring work list), each with
  the sequence number of the moment it started waiting (a later event of a waiting user keeps
  it), so scoring can take the longest-waiting users first;
* ``facts``: for every known user of the partition, cached or not, what idle eviction needs
  (:func:`stream_app.state.idle_facts`), so nobody decodes every state to find idle users.

``pending`` and ``facts`` cover all users of the partition once :meth:`index` saw them (the
worker scans each newly assigned partition once); the states themselves are only a bounded subset.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field

from . import state as st

# Python memory of a decoded state in this cache, traced with tracemalloc by bench/hot_path.py
# ("state_memory"; shuffled simulated users of 5, 20 and 80 rows at commit aa6e18e, rows sharing
# their type and category strings: 3,360, 9,107 and 29,594 bytes): 337 bytes per row (its id in the
# in-memory id set included), 150 per profile category, 1,150 for the rest (dict, cache entry and
# index), and 1,170 for the last vector it keeps (12 categories).
SIZE_BASE = 2_300
SIZE_ROW = 340
SIZE_CATEGORY = 150
SIZE_INPUT = 140  # per input topic whose offset the state records: an int, a slot of "in", and the
# state dict one size larger (three topics: 421 bytes per user, bench/hot_path.py at 0114045)
SIZE_KNOWN = 220  # the input offsets known before this worker applied a record to the state (state's
# "_inb", from its first recorded record to the next flush): a dict of three ints, 216 bytes traced in
# a scratch run (bench/hot_path.py's states hold only empty ones),
SIZE_KNOWN_NONE = 64  # or an empty dict (a state new to this worker): 64 bytes, sys.getsizeof
SIZE_EVENT = 500  # a held Faust message (its object and attributes) besides its key and value bytes


def estimated_size(state: dict | None) -> int:
    """Approximate bytes of Python memory held by a decoded state (0 for a pending deletion)."""
    if state is None:
        return 0
    prof, known = state.get("p"), state.get("_inb")
    return (SIZE_BASE + SIZE_ROW * (len(state["ev"]) + len(state["old"]))
            + SIZE_CATEGORY * (len(prof.get("w") or prof.get("c") or ()) if prof else 0)
            + SIZE_INPUT * len(state.get("in") or ())
            + (0 if known is None else SIZE_KNOWN if known else SIZE_KNOWN_NONE))


@dataclass(slots=True)
class Entry:
    partition: int
    state: dict | None  # None: delete at the next flush
    size: int
    dirty: bool = False


@dataclass(slots=True)
class Letter:
    """A dead-lettered input message and its dead letter, sent and maybe not delivered yet."""

    message: object | None  # the input message, to acknowledge once the dead letter is delivered
    topic: str  # the input message's topic and offset
    offset: int
    key: bytes | None  # the dead letter's key and value, to send it again if sending failed
    value: bytes
    sent: object  # the send's future (Faust's FutureMessage): done once delivered or failed
    size: int  # bytes of the input message's key and value and of the dead letter


@dataclass(slots=True)
class Forget:
    """A forget request (a control message) held until the flush that writes its user's delete."""

    message: object
    held_state: bool  # the worker held a state for the user when it applied the request


def is_delivered(sent) -> bool:
    """A send's future is done without an error."""
    return sent.done() and not sent.cancelled() and sent.exception() is None


def message_bytes(message) -> int:
    """Bytes of an input message's key and value."""
    return len(message.value or b"") + len(message.key or b"")


@dataclass
class Flush:
    """What one partition's flush must write and then acknowledge."""

    partition: int
    writes: list = field(default_factory=list)  # (key, bytes) in first-changed order
    deletes: list = field(default_factory=list)  # keys
    messages: list = field(default_factory=list)  # held input messages, in arrival order
    trimmed: list = field(default_factory=list)  # (key, rows dropped) of states trimmed to max_record
    held_size: int = 0  # estimated bytes of its messages, counted by the cache until it settles
    forgets: list = field(default_factory=list)  # held Forget requests, whose deletes this flush writes

    @property
    def records(self) -> int:
        return len(self.writes) + len(self.deletes)


class StateCache:
    def __init__(self, max_bytes: int, max_record: int | None = None):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self.max_record = max_record  # the largest stored state a flush writes (stream_app.state.trim)
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()  # least recently used first
        self.dirty: dict[int, dict[bytes, None]] = {}  # per partition, insertion-ordered set
        self.held: dict[int, list] = {}
        self.held_size: dict[int, int] = {}  # estimated bytes of each partition's held events
        self.flushing = 0  # estimated bytes of the events of flushes under way (in memory until settled)
        self.letters: dict[int, list[Letter]] = {}
        self.forgets: dict[int, list[Forget]] = {}  # forget requests held until written
        self.letter_bytes = 0
        self.pending: dict[int, dict[bytes, int]] = {}  # key: when it started waiting (self._since)
        self._since = itertools.count()
        self.facts: dict[int, dict[bytes, tuple]] = {}
        self.state_bytes = 0
        self.dropped = 0  # clean states dropped to respect the bound
        # users cached, changed or deleted while a table scan runs: the scan reads a snapshot that
        # may hold an older state of theirs, and must not cache it once their entry is gone again
        # (dropped clean to respect the bound, or deleted by a flush); None when no scan runs
        self.scan_seen: set[bytes] | None = None

    # -- reading ------------------------------------------------------------------------
    @property
    def held_bytes(self) -> int:
        return sum(self.held_size.values()) + self.letter_bytes + self.flushing

    @property
    def bytes(self) -> int:
        return self.state_bytes + self.held_bytes

    def __contains__(self, key: bytes) -> bool:
        return key in self.entries

    def get(self, key: bytes) -> Entry | None:
        """The cached entry (now most recently used), or None when not cached."""
        e = self.entries.get(key)
        if e is not None:
            self.entries.move_to_end(key)
        return e

    def peek(self, key: bytes) -> Entry | None:
        """The cached entry without touching the LRU order (web views)."""
        return self.entries.get(key)

    # -- changing -----------------------------------------------------------------------
    def load(self, partition: int, key: bytes, state: dict | None) -> None:
        """Cache a state read from the table (clean); None caches nothing."""
        self._scanned(key)
        if state is None or key in self.entries:
            return
        size = estimated_size(state)
        self.entries[key] = Entry(partition, state, size)
        self.state_bytes += size
        self.index(partition, key, state)

    def put(self, partition: int, key: bytes, state: dict) -> None:
        """A changed state: written at the partition's next flush."""
        self._scanned(key)
        size = estimated_size(state)
        e = self.entries.get(key)
        if e is None:
            self.entries[key] = e = Entry(partition, state, size)
            self.state_bytes += size
        else:
            self.entries.move_to_end(key)
            self.state_bytes += size - e.size
            e.state, e.size = state, size
        self._mark(e, key)
        self.index(partition, key, state)

    def scored(self, partition: int, key: bytes, state: dict) -> None:
        """A changed state that just got its vector (:func:`stream_app.state.record_vector`). A
        user whose events came while the vector was computed waits again from now, not from
        before the pass took it: a pass still running takes it again (``waiting(after=mark)``)
        instead of leaving it for the next one."""
        self.pending.get(partition, {}).pop(key, None)
        self.put(partition, key, state)

    def delete(self, partition: int, key: bytes) -> None:
        """Forget a user: its table value is deleted at the partition's next flush."""
        self._scanned(key)
        e = self.entries.get(key)
        if e is None:
            self.entries[key] = e = Entry(partition, None, 0)
        else:
            self.state_bytes -= e.size
            e.state, e.size = None, 0
        self._mark(e, key)
        self.pending.get(partition, {}).pop(key, None)
        self.facts.get(partition, {}).pop(key, None)

    def _mark(self, e: Entry, key: bytes) -> None:
        if not e.dirty:
            e.dirty = True
            self.dirty.setdefault(e.partition, {})[key] = None

    def index(self, partition: int, key: bytes, state: dict) -> None:
        """Keep ``pending`` and ``facts`` in step with a state (also for states not cached)."""
        pend = self.pending.setdefault(partition, {})
        if st.is_pending(state):
            if key not in pend:
                pend[key] = next(self._since)
        else:
            pend.pop(key, None)
        self.facts.setdefault(partition, {})[key] = st.idle_facts(state)

    def hold(self, partition: int, message, size: int) -> None:
        """An input message of ``partition`` to acknowledge after its partition's next flush."""
        self.held.setdefault(partition, []).append(message)
        self.held_size[partition] = self.held_size.get(partition, 0) + SIZE_EVENT + size

    def hold_forget(self, partition: int, message, held_state: bool) -> None:
        """A forget request of ``partition`` whose delete (made before) its partition's next flush
        writes: acknowledged by the flush that writes it, then the user's tombstone is published,
        saying whether the user had a state (``held_state``) when the request was applied."""
        self.forgets.setdefault(partition, []).append(Forget(message, held_state))

    def hold_letter(self, partition: int, letter: Letter) -> None:
        """A dead-lettered input message of ``partition``: kept until :meth:`release_letters`."""
        self.letters.setdefault(partition, []).append(letter)
        self.letter_bytes += SIZE_EVENT + letter.size

    def release_letters(self, partition: int, letters) -> None:
        """Forget ``letters`` of ``partition`` (acknowledged)."""
        gone = {id(letter) for letter in letters}
        mine = self.letters.get(partition, [])
        kept = [letter for letter in mine if id(letter) not in gone]
        self.letter_bytes -= sum(SIZE_EVENT + letter.size for letter in mine if id(letter) in gone)
        if kept:
            self.letters[partition] = kept
        else:
            self.letters.pop(partition, None)

    def _scanned(self, key: bytes) -> None:
        if self.scan_seen is not None:
            self.scan_seen.add(key)

    def letter_floor(self, partition: int, topic: str) -> int | None:
        """The lowest offset of ``topic``'s partition whose dead letter is not known delivered:
        offsets from there on may not be committed. None when there is none."""
        return min((letter.offset for letter in self.letters.get(partition, ()) if letter.topic == topic),
                   default=None)

    def undelivered_floor(self, partition: int, topic: str) -> int | None:
        """The lowest offset of ``topic``'s partition whose dead letter is not delivered yet (being
        sent, failed, or let go): the next flush cannot acknowledge it, so no offset from there on
        can be committed by then. None when there is none."""
        return min((letter.offset for letter in self.letters.get(partition, ()) if letter.topic == topic
                    and not (letter.message is not None and is_delivered(letter.sent))), default=None)

    # -- flushing -----------------------------------------------------------------------
    def partitions_to_flush(self) -> list[int]:
        return sorted(p for p in set(self.dirty) | set(self.held) | set(self.letters) | set(self.forgets)
                      if self.dirty.get(p) or self.held.get(p) or self.letters.get(p) or self.forgets.get(p))

    def handled(self, partition: int) -> tuple[dict, dict]:
        """The input offsets of ``partition`` the next flush acknowledges or holds as dead letters,
        ``{topic: [offset]}``, and each topic's first dead letter not delivered, ``{topic: offset}``
        (what :meth:`stream_app.consumer.Consumer.input_caps` needs)."""
        handled: dict[str, list[int]] = {}
        for m in self.held.get(partition, ()):
            handled.setdefault(m.topic, []).append(m.offset)
        for letter in self.letters.get(partition, ()):
            handled.setdefault(letter.topic, []).append(letter.offset)
        undelivered = {t: o for t in handled if (o := self.undelivered_floor(partition, t)) is not None}
        return handled, undelivered

    def take(self, partition: int, caps: dict | None = None) -> Flush:
        """Everything the partition's flush writes (each changed user once, serialised now with
        its input offsets ``caps``ped, :func:`stream_app.state.dump`, a state larger than
        ``max_record`` trimmed first) and the input messages it then acknowledges; the states
        count as clean from here on."""
        f = Flush(partition)
        for key in self.dirty.pop(partition, {}):
            e = self.entries.get(key)
            if e is None or not e.dirty:
                continue
            e.dirty = False
            if e.state is None:
                f.deletes.append(key)
                del self.entries[key]
            else:
                stored = st.stored_input(e.state, caps)  # a trim leaves the offsets as they are
                raw = st.dump_with_input(e.state, stored)
                if self.max_record is not None and len(raw) > self.max_record:
                    f.trimmed.append((key, st.trim(e.state, self.max_record)))
                    raw = st.dump_with_input(e.state, stored)
                st.flushed_input(e.state, stored)
                size = estimated_size(e.state)  # fewer rows (trimmed), no known offsets kept
                self.state_bytes += size - e.size
                e.size = size
                f.writes.append((key, raw))
        f.messages = self.held.pop(partition, [])
        f.forgets = self.forgets.pop(partition, [])
        f.held_size = self.held_size.pop(partition, 0)
        self.flushing += f.held_size
        return f

    def settled(self, f: Flush) -> None:
        """A flush's events were acknowledged, held again (:meth:`unwritten`) or let go: they no
        longer count as under way."""
        self.flushing -= f.held_size
        f.held_size = 0

    def unwritten(self, f: Flush, load=st.load) -> None:
        """A flush whose changelog records were not delivered: its users are dirty again (the next
        flush writes their states as they are then) and its messages held again, ahead of those
        held since."""
        p = f.partition
        for key, raw in f.writes:
            e = self.entries.get(key)
            if e is None:  # dropped from the cache since: its state is the one the flush took
                self.put(p, key, load(raw))
            elif e.state is not None:  # changed since (dirty already) or not: written again
                self._mark(e, key)
        for key in f.deletes:
            if key not in self.entries:  # not written again since
                self.delete(p, key)
        self.held[p] = f.messages + self.held.get(p, [])
        if f.forgets:
            self.forgets[p] = f.forgets + self.forgets.get(p, [])
        self.held_size[p] = self.held_size.get(p, 0) + f.held_size  # no longer under way once settled

    def over_bound(self) -> bool:
        return self.bytes > self.max_bytes

    def shrink(self, target: float = 0.9) -> int:
        """Drop clean states, least recently used first, until at most ``target`` of the bound is
        used (dirty states and held events wait for a flush); returns how many were dropped."""
        goal = int(self.max_bytes * target)
        dropped = 0
        if self.bytes <= goal:
            return 0
        for key in list(self.entries):
            e = self.entries[key]
            if e.dirty:
                continue
            del self.entries[key]
            self.state_bytes -= e.size
            dropped += 1
            if self.bytes <= goal:
                break
        self.dropped += dropped
        return dropped

    def cap_inputs(self, partition: int, topic: str, offset: int) -> int:
        """A hole of ``topic``'s ``partition`` from ``offset + 1`` on was found (records Faust's
        stream skipped, found at the next commit after later records were applied, or records the
        fetcher skipped): the input offsets of the partition's states in memory go no further
        (:func:`stream_app.state.cap_input`: unless known before this worker applied a record to
        them); returns how many states were looked at. Their stored forms already do (a flush's caps
        stop at the first offset not read, or at one known before)."""
        n = 0
        for e in self.entries.values():
            if e.partition == partition and e.state is not None:
                st.cap_input(e.state, topic, partition, offset)
                n += 1
        return n

    def drop_partitions(self, partitions) -> None:
        """Forget everything of partitions this worker no longer owns (after their last flush)."""
        gone = set(partitions)
        for key in [k for k, e in self.entries.items() if e.partition in gone]:
            self.state_bytes -= self.entries.pop(key).size
        for p in gone:
            self.dirty.pop(p, None)
            self.held.pop(p, None)
            self.held_size.pop(p, None)
            self.forgets.pop(p, None)
            self.letter_bytes -= sum(SIZE_EVENT + letter.size for letter in self.letters.pop(p, ()))
            self.pending.pop(p, None)
            self.facts.pop(p, None)

    def users(self) -> int:
        return len(self.entries)

    def waiting(self, partitions, after: int = -1) -> list[tuple[int, bytes]]:
        """``(partition, key)`` of the pending users of ``partitions`` that started waiting after
        the moment ``after`` (a :meth:`mark`; by default all of them), longest waiting first."""
        todo = sorted((since, p, key) for p in partitions for key, since in self.pending.get(p, {}).items()
                      if since > after)
        return [(p, key) for _, p, key in todo]

    def mark(self) -> int:
        """The moment now in the waiting order: users who start waiting later come after it."""
        return next(self._since)

"""Event-time alignment of the three input topics: a partition's click, browse and search messages
applied in record-timestamp order (then event time; event time for a record sent long after its
event), as Kafka Streams does for the partitions of one task.

Each event type has its own topic, and one user's events are spread over all three (co-partitioned:
partition p of each). Kafka orders a partition, not three. When the worker reads a backlog (a
restart after an outage, a replay of a historical log, a new deployment reading from the
beginning), Faust's fetcher hands over one topic's messages far ahead of another's in event time;
a user's browse events then arrive after clicks that are days newer, and the state's grace
period turns them into ``late`` dead letters: events lost. On a historical MovieLens log streamed at
full speed 2,115 of 11,639 events were lost that way.

So, as Kafka Streams does for the partitions of one task (``PartitionGroup``), each input topic's
partition p keeps its messages in arrival (offset) order in a queue of its own, and the next
message applied is the head with the smallest record timestamp among the three queues, but only
when every topic of the partition either has a message waiting (nothing older can come from it
before that message) or has nothing left to read (caught up: its last message received is the
last one fetched). A partition's own order is never changed, as in Kafka Streams and in
``replay``. A message waits ``max_wait_s`` for a topic that is behind but has delivered nothing
(and until a fetch begun after that has completed, :meth:`Aligner.ready`: a stalled fetcher is not
such a topic), and ``idle_s`` (``INTEREST_ALIGN_IDLE_MS``) for one that has caught up and has nothing
waiting, as Kafka Streams' ``max.task.idle.ms`` (0 there by default): caught up is a moment, and
a producer sending at full speed lets a quiet partition's record overtake a busy partition's
batches sent before it. A partition with more than ``max_buffered`` messages waiting lets its next
one go at once (memory before order).

One user's own order goes first (``user``, :class:`UsersWaiting`): a head waits while an older
record of its own user waits in another topic's queue of the partition, and the oldest head of
another user goes meanwhile. Only a topic whose record timestamps run back can hold such a record
(a log stamped with ``ts`` and sent one user after another), so a partition keeps the index only
from the moment one of its topics runs back until it has nothing waiting; in a log in ``ts`` order
the order is the timestamp merge's. When every head is held back, the oldest goes. And for
``UNORDERED_S`` after a topic's partition stepped back by more than the window and its grace
(:meth:`Aligner.ran_back`), its head no longer says that nothing older is to come: a head of another
topic waits for it as for a topic with nothing waiting, so that a user's older records on it can
arrive and hold that head back.

The record timestamp is the event's ``ts`` when producers follow the contract (``interest-stream``'s
own producers set it), else the time the producer sent the record (or the broker appended it);
either orders the topics against each other, to the millisecond, and the records of one
millisecond go by their event's ``ts`` (``tie_key``, :func:`message_event_ts`). A record sent
more than the window and its grace after its event (a historical log streamed by a producer that
does not stamp ``ts``) is ordered by its ``ts`` instead (:func:`order_timestamp`, computed by the
caller): the time of sending orders nothing there, and several such producers at once lost events
as ``late``. Pure bookkeeping:
the buffered messages are not acknowledged (the ingest agent iterates ``stream.noack()``), so
their offsets are not committed before they are applied and flushed; at a rebalance or a shutdown
:meth:`Aligner.drain` releases everything first.
"""
from __future__ import annotations

import itertools
from collections import defaultdict, deque
from typing import Callable, Hashable, Iterator

import orjson

from .events import MAX_VALUE_BYTES

MAX_WAIT_S = 2.0
# How long a message waits for a topic's partition that is behind with a hole not settled: offsets
# the fetcher skipped, or handed over and never applied, which the worker's consumer reads again
# (stream_app.holes), only while no rebalance is under way. Released after MAX_WAIT_S, the other
# topics go ahead of those records, which in a backlog are then `late` when read: as the logs of one
# trial of bench/rebalance.py --workers 3 --kill read (79 `late` in a held hole; not verified, the
# forced releases are not logged). Bounded: a hole never read must not stall the partition.
HOLE_WAIT_S = 30.0
# A partition's waiting messages are looked at once every RELEASE_EVERY messages added to it, and
# what that releases is applied in one go (a periodic sweep, :meth:`Aligner.expired`, takes the
# rest). Looked at after every message, each release asked every empty topic whether it had caught
# up, and the worker's code ran one message at a time between two of Faust's: bench/ingest.py
# --old 503f59f (300,000 in-order events, 20,000 users, one run) ingested 9,641 events/s at 64
# against 7,443 at 1.
RELEASE_EVERY = 64
MAX_BUFFERED = 50_000  # per partition; about 1 KB each with the message object
# How long a topic's partition whose record timestamps ran back by more than the window and its grace
# (stream_app.input_order) is waited for as a topic with nothing waiting (Aligner.ran_back).
UNORDERED_S = 10.0


def value_ts(value: bytes | None) -> int | None:
    """The event's ``ts`` when ``value`` is an event with an integer one, else None. A value over the
    contract's 64 KiB is not parsed (a ``too_large`` dead letter, which validation refuses before it
    parses anything): every message's ``ts`` is read, and a value of a megabyte took 0.56 ms to
    parse (a scratch timing), where an event takes about 1 µs."""
    if value is None or len(value) > MAX_VALUE_BYTES:
        return None
    try:
        ts = orjson.loads(value).get("ts")
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return None
    return ts if type(ts) is int else None


def tie_ts(ts: int | None, record_ms: int) -> int:
    """What ties of order timestamps are broken by: the event's ``ts`` (:func:`value_ts`), else the
    record timestamp's millisecond."""
    return record_ms if ts is None else ts


def event_ts(value: bytes | None, record_ts: int) -> int:
    """The event's ``ts`` when ``value`` is an event with an integer one, else ``record_ts``."""
    return tie_ts(value_ts(value), record_ts)


def order_timestamp(record_ts: float, ts: int | None, allowed_ms: float, ms: float = 1) -> float:
    """What a record is ordered by among its partition's topics, in the unit of ``record_ts`` (``ms``
    of them a millisecond: 1 for kafka-python's milliseconds, 0.001 for Faust's seconds): its record
    timestamp, unless that is more than ``allowed_ms`` (the window and its grace) after the event's
    ``ts``; then the event's ``ts``.

    The contract's producers stamp the record with ``ts``, and a live producer's time of sending is
    the event's time give or take its delay: the record timestamp orders both. A producer that
    leaves it the time of sending and streams a historical log does not: with three such producers
    at once, one per event type, a user's searches sent in the first second went ahead of the same
    user's clicks of months before, sent a second later, and those were ``late`` (MovieLens'
    86 test users, ``bench/live_eval.py --producer per-topic-plain``: 2,507 of 11,639 in each of
    three trials). Such a record is ordered by its event's time, as a stamped one is; an event ahead
    of its record timestamp (a clock ahead; ``future_ts`` past a day) keeps the record timestamp, so
    it holds nothing back. A ``ts`` that is not an integer (a dead letter to be) keeps it too. In
    milliseconds (``ms`` 1) an integer stays an integer."""
    if ts is not None and record_ts - ts * ms > allowed_ms * ms:
        return ts * ms
    return record_ts


def message_order(message, allowed_ms: int) -> tuple[float, int]:
    """The ingest agent's two keys for a Faust message, its value parsed once: its order timestamp
    in Faust's seconds (:func:`order_timestamp`, ``allowed_ms`` the window and its grace) and its
    tie, the :func:`message_event_ts` the aligner would compute for it (the event's ``ts``, else the
    record timestamp's millisecond)."""
    ts = value_ts(message.value)
    return order_timestamp(message.timestamp, ts, allowed_ms, 0.001), tie_ts(ts, round(message.timestamp * 1000))


def message_event_ts(message) -> int:
    """What the worker's aligner breaks a tie of record timestamps by: the event's ``ts`` (Faust's
    ``message.timestamp`` is in seconds; the fallback is its millisecond). A producer that does not
    set the record timestamp leaves it the time it sent the record, and a log streamed at full speed
    sends a dozen events in a millisecond: in arrival order among those, a user's searches weeks
    ahead went before the user's clicks, which were then `late` (MovieLens through
    ``bench/live_eval.py --producer plain``: 74 to 241 of 11,639 events in each of eight runs). It is
    not the first key: a ``ts`` far from its neighbours' (one stamped with the wall clock in a
    historical log) would hold every later record of its topic's partition back while the other
    topics ran ahead. The ingest agent hands each message's tie to :meth:`Aligner.add`, computed
    with its order timestamp (:func:`message_order`); this computes it for a caller that does not."""
    return event_ts(message.value, round(message.timestamp * 1000))


def message_user(message) -> bytes | None:
    """The user a message is of, for :class:`UsersWaiting`: its key (the contract's user id)."""
    return message.key


class Aligner:
    def __init__(self, topics: tuple[Hashable, ...], max_wait_s: float = MAX_WAIT_S,
                 max_buffered: int = MAX_BUFFERED, release_every: int = 1, hole_wait_s: float = HOLE_WAIT_S,
                 idle_s: float = 0.0, tie_key: Callable[[object], object] | None = None,
                 user: Callable[[object], Hashable] | None = None):
        self.topics = tuple(topics)
        self.tie_key = tie_key
        self.user = user  # the user a message is of (None: heads go by timestamp alone)
        # partition -> UsersWaiting of its topics, from a topic's timestamp running back (``user`` given)
        # until the partition has nothing waiting: only then can users' orders cross (UsersWaiting)
        self.waiting: dict[int, UsersWaiting] = {}
        self.unordered: dict[int, dict] = {}  # partition -> {topic: until when it ran back (monotonic s)}
        self.hole_wait_s = hole_wait_s
        self.idle_s = idle_s
        self.release_every = release_every
        self._added: dict[int, int] = {}  # partition -> messages added since its last due release
        self.max_wait_s = max_wait_s
        self.max_buffered = max_buffered
        self.queues: dict[int, dict] = {}  # partition -> {topic: deque of [timestamp, seq, arrived, message, tie]}
        self.sizes: dict[int, int] = {}  # partition -> messages waiting
        self._seq = itertools.count()
        self.forced = 0  # messages released by max_wait_s or max_buffered, not by order (the
        # worker adds this to a metric and sets it back to 0)
        self.idled = 0  # messages released after idle_s for a topic caught up (the same)

    def __len__(self) -> int:
        return sum(self.sizes.values())

    def add(self, topic, partition: int, timestamp: float, message, now: float, tie=None) -> bool:
        """Queue a message; True when the partition is due for :meth:`ready` (every
        ``release_every`` messages added to it). ``tie``: its ``tie_key`` when the caller has it
        (else computed when its head ties another's)."""
        queues = self.queues.get(partition)
        if queues is None:
            queues = self.queues[partition] = {t: deque() for t in self.topics}
            self.sizes[partition] = 0
        q = queues[topic]
        entry = [timestamp, next(self._seq), now, message, tie]
        if self.user is not None:
            waiting = self.waiting.get(partition)
            if waiting is None and q and timestamp < q[-1][0]:
                waiting = self.waiting[partition] = UsersWaiting()
                for t, tq in queues.items():
                    for e in tq:
                        waiting.add(t, self.user(e[3]), e)
            if waiting is not None:
                waiting.add(topic, self.user(message), entry)
        q.append(entry)
        self.sizes[partition] += 1
        n = self._added.get(partition, 0) + 1
        due = n >= self.release_every
        self._added[partition] = 0 if due else n
        return due

    def ready(self, partition: int, caught_up: Callable[[object, int], bool], now: float,
              has_hole: Callable[[object, int], bool] | None = None, fetched: float | None = None) -> Iterator:
        """The messages of ``partition`` that may be applied now, in order. ``caught_up(topic,
        partition)``: nothing more to read from that topic's partition for now. ``has_hole(topic,
        partition)``: records of it are still to be read again (a hole not settled), so a message
        waits up to ``hole_wait_s`` for it rather than ``max_wait_s``. A message waits ``idle_s`` for
        a topic caught up with nothing waiting.

        ``fetched``: when the last fetch that has completed began (the worker's consumer's
        ``fetch_began``; None: not known). A message waits for a topic that is behind until a fetch
        that began ``max_wait_s`` (or ``hole_wait_s``) after it arrived has completed too: the
        topic delivered nothing though it could. A fetcher or an event loop that stalled meanwhile
        (the harness of ``tests/fetcher_skip_app.py`` at 3 s: the other topics' events went ahead
        and 5 of the skipped clicks were ``late``) is not taken for a topic with nothing to give."""
        return self._ready(partition, caught_up, now, has_hole, self.idle_s, fetched)

    def _ready(self, partition: int, caught_up: Callable[[object, int], bool], now: float,
               has_hole: Callable[[object, int], bool] | None, idle_s: float,
               fetched: float | None = None) -> Iterator:
        queues = self.queues.get(partition)
        if not queues:
            return
        unordered = self.unordered.get(partition)
        if unordered is not None:
            for t in [t for t, until in unordered.items() if until <= now]:
                del unordered[t]
            if not unordered:
                del self.unordered[partition]
                unordered = None
        known: dict = {}  # caught_up answers of this call (nothing is read meanwhile)
        holes: dict = {}  # has_hole answers of this call
        while True:
            head, head_topic, wait = None, None, None  # wait: how long the head may wait; None: not blocked
            idle = False  # a topic caught up has nothing waiting: the head waits idle_s for it
            for t, q in queues.items():
                if q:
                    e = q[0]
                    if head is None or e[0] < head[0] or e[0] == head[0] and self._first(e, head):
                        head, head_topic = e, t
                    continue
                w = self._wait_for(t, partition, caught_up, has_hole, known, holes)
                if w is None:
                    idle = True
                elif wait is None or w > wait:
                    wait = w
            if head is None:
                return
            waiting = self.waiting.get(partition)
            if waiting is not None and waiting.held_back(head_topic, self.user(head[3]), head[0]):
                head, head_topic = self._unheld(queues, waiting, head, head_topic)
            if unordered is not None:  # their heads promise nothing of what comes next: as if empty
                for t in unordered:
                    if t != head_topic and queues[t]:
                        w = self._wait_for(t, partition, caught_up, has_hole, known, holes)
                        if w is None:
                            idle = True
                        elif wait is None or w > wait:
                            wait = w
            waited = now - head[2]
            if wait is not None:
                if self.sizes[partition] <= self.max_buffered and (
                        waited < wait or fetched is not None and fetched < head[2] + wait):
                    return
                self.forced += 1
            elif idle and idle_s > 0:
                if waited >= idle_s:
                    self.idled += 1
                elif self.sizes[partition] <= self.max_buffered:
                    return
                else:
                    self.forced += 1
            queues[head_topic].popleft()
            self.sizes[partition] -= 1
            if waiting is not None:
                waiting.taken(head_topic, self.user(head[3]))
                if not self.sizes[partition]:
                    del self.waiting[partition]
            yield head[3]

    def _wait_for(self, topic, partition: int, caught_up, has_hole, known: dict, holes: dict) -> float | None:
        """How long a head may wait for ``topic``, one with nothing waiting (or whose head promises
        nothing, :meth:`ran_back`): None when it has caught up (then ``idle_s``), else ``max_wait_s``,
        or ``hole_wait_s`` while it has a hole not settled. ``known`` and ``holes`` keep the answers
        of one call of :meth:`ready`."""
        up = known.get(topic)
        if up is None:
            up = known[topic] = caught_up(topic, partition)
        if up:
            return None
        if has_hole is not None and topic not in holes:
            holes[topic] = has_hole(topic, partition)
        return max(self.hole_wait_s, self.max_wait_s) if holes.get(topic) else self.max_wait_s

    def ran_back(self, topic, partition: int, now: float) -> None:
        """A record of ``topic``'s ``partition`` came older than one before it by more than the
        window and its grace (:class:`stream_app.input_order.RunningBack`): its producer sends out of
        ``ts`` order (one user's history after another's), so its head no longer says that nothing
        older is to come. For ``UNORDERED_S`` from ``now`` a head of another topic waits for it as
        for a topic with nothing waiting: ``idle_s`` once it has caught up, up to ``max_wait_s``
        while it is behind. Meanwhile the same user's older records on it arrive and hold the head
        back (:class:`UsersWaiting`); with the order of heads alone (``bench/live_eval.py --order
        user``, MovieLens' users sent one after another by the project's producer into a running
        worker) 404 of 11,639 events were still ``late``: a user's search went before that user's
        clicks had arrived, while the click topic held the previous user's newer ones."""
        self.unordered.setdefault(partition, {})[topic] = now + UNORDERED_S

    def _unheld(self, queues: dict, waiting: "UsersWaiting", head: list, head_topic) -> tuple[list, object]:
        """The first of the other topics' heads (by timestamp, then :meth:`_first`) that no older
        message of its own user waits behind; ``head`` itself when every head is held back."""
        best, best_topic = None, None
        for t, q in queues.items():
            if t == head_topic or not q:
                continue
            e = q[0]
            if best is not None and not (e[0] < best[0] or e[0] == best[0] and self._first(e, best)):
                continue
            if not waiting.held_back(t, self.user(e[3]), e[0]):
                best, best_topic = e, t
        return (head, head_topic) if best is None else (best, best_topic)

    def _first(self, a: list, b: list) -> bool:
        """Whether ``a`` goes before ``b``, two heads of one timestamp: by ``tie_key`` (computed once
        a message, and only for ties), then by arrival."""
        if self.tie_key is None:
            return a[1] < b[1]
        for e in (a, b):
            if e[4] is None:
                e[4] = self.tie_key(e[3])  # never None
        return (a[4], a[1]) < (b[4], b[1])

    def expired(self, caught_up: Callable[[object, int], bool], now: float,
                has_hole: Callable[[object, int], bool] | None = None, fetched: float | None = None) -> Iterator:
        """Messages of every partition that may be applied now (a timer's sweep: topics caught up
        meanwhile, waits past ``idle_s`` or ``max_wait_s``)."""
        for p in list(self.queues):
            yield from self.ready(p, caught_up, now, has_hole, fetched)

    def drain(self, partitions=None) -> Iterator:
        """Everything waiting for ``partitions`` (default all), in the same order, without waiting."""
        for p in list(self.queues) if partitions is None else [p for p in partitions if p in self.queues]:
            yield from self._ready(p, lambda t, p: True, float("-inf"), None, 0.0)
            del self.queues[p], self.sizes[p]
            self.waiting.pop(p, None)
            self.unordered.pop(p, None)
            self._added.pop(p, None)


class UsersWaiting:
    """Per queue (a partition's topic), per user: that user's entries waiting in the queue, in the
    queue's order, ``entry[0]`` its order key (the record timestamp). A queue gives up its entries
    in order, so a user's first waiting entry is the next of that user the queue will give.

    What it is for: a producer that stamps records with the event's ``ts`` and sends a log out of
    ``ts`` order (one user's history after another's) makes a topic's record timestamps run back at
    each user. Merged by timestamp alone, user b's search then went as soon as the click topic's
    head (user a's click) was newer, before b's own older clicks further down the click topic,
    which came after it and were ``late``. :meth:`held_back` says a head must wait for its own
    user's older record in another queue, and another head goes first. For a log in ``ts`` order
    (or stamped with the time of sending) each queue's timestamps only rise, so a head is never
    held back and the merge is the timestamp merge."""

    def __init__(self):
        self.queues: dict = defaultdict(lambda: defaultdict(deque))  # queue -> {user: deque of entries}

    def add(self, queue, user, entry) -> None:
        self.queues[queue][user].append(entry)

    def taken(self, queue, user) -> None:
        """The queue's head, ``user``'s, has left it."""
        users = self.queues[queue]
        d = users[user]
        d.popleft()
        if not d:
            del users[user]

    def held_back(self, queue, user, key) -> bool:
        """Whether a record of ``user`` with an order key below ``key`` waits in another queue."""
        for q, users in self.queues.items():
            if q != queue:
                d = users.get(user)
                if d is not None and d[0][0] < key:
                    return True
        return False

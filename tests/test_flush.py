"""The interval flush's turns (one partition per tick, each partition once per INTEREST_FLUSH_S),
and dead-lettered events acknowledged only once their dead letters are delivered."""
import asyncio
import logging
import time

from stream_app import flush
from stream_app.flush import Flusher, due_partition
from stream_app.state_cache import SIZE_EVENT, Forget, Letter, StateCache


def test_each_partition_has_its_turn_once_per_round():
    assert [due_partition(t, 6) for t in range(14)] == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1]
    assert [due_partition(t, 1) for t in range(3)] == [0, 0, 0]


class Cache:
    """What flush_turn and flush read of the state cache: the partitions with changes."""

    def __init__(self, changed):
        self.changed = set(changed)
        self.bytes = 0

    def partitions_to_flush(self):
        return sorted(self.changed)

    def users(self):
        return 0


def test_a_tick_flushes_only_the_partition_whose_turn_it_is_and_only_when_it_changed():
    cache = Cache({1, 4})
    flusher = Flusher(table=None, cache=cache, context_topic="t", producer=None, consumer=None)
    flushed = []

    async def flush_partition(p, reason):
        flushed.append((flusher.ticks - 1, p))  # the tick it came at
        cache.changed.discard(p)
        return 3

    flusher._flush_partition = flush_partition

    async def ticks(n):
        return [await flusher.flush_turn(6) for _ in range(n)]

    written = asyncio.run(ticks(6))
    assert flushed == [(1, 1), (4, 4)]  # partitions 0, 2, 3 and 5 had nothing to write
    assert written == [0, 3, 0, 0, 3, 0]
    cache.changed = {0, 1, 2, 3, 4, 5}
    asyncio.run(ticks(3))  # the next round starts again at partition 0
    assert flushed[2:] == [(6, 0), (7, 1), (8, 2)]


class Consumer:
    """Faust's consumer as the flush sees it: the messages it waits for at a rebalance."""

    def __init__(self):
        self._unacked_messages = set()


class Message:
    def __init__(self, offset):
        self.topic, self.partition, self.offset = "events.click", 2, offset
        self.acked_by = None

    def ack(self, consumer):
        self.acked_by = "consumer"
        consumer._unacked_messages.discard(self)


def letters_flusher():
    """A flusher over a real cache, whose dead letters are sent again into ``resent``."""
    cache = StateCache(10**9)
    resent = []
    consumer = Consumer()

    def send_letter(key, value):
        resent.append((key, value))
        return asyncio.get_running_loop().create_future()

    return Flusher(table=None, cache=cache, context_topic="t", producer=None, consumer=lambda: consumer,
                   send_letter=send_letter), cache, resent, consumer


def hold_letters(cache, consumer, outcomes):
    """One letter per outcome ('delivered', 'failed', 'sending'), at offsets 0, 1, 2, ..."""
    letters = []
    for offset, outcome in enumerate(outcomes):
        sent = asyncio.get_running_loop().create_future()
        if outcome == "delivered":
            sent.set_result("record metadata")
        elif outcome == "failed":
            sent.set_exception(RuntimeError("UnknownTopicOrPartitionError"))
        letters.append(Letter(Message(offset), "events.click", offset, b"k%d" % offset, b"letter %d" % offset,
                              sent, 100))
        consumer._unacked_messages.add(letters[-1].message)
        cache.hold_letter(2, letters[-1])
    return letters


def test_a_dead_lettered_event_is_acknowledged_only_once_its_dead_letter_is_delivered(caplog):
    flusher, cache, resent, consumer = letters_flusher()

    async def run():
        letters = hold_letters(cache, consumer, ["sending", "delivered", "failed", "failed"])
        assert cache.partitions_to_flush() == [2]  # letters alone make a partition's flush due
        assert cache.letter_floor(2, "events.click") == 0 and cache.letter_floor(2, "events.browse") is None
        await flusher.flush("cache_full")
        assert [m.message.acked_by for m in letters] == [None, "consumer", None, None]
        assert resent == []  # only the interval flush sends again
        await flusher.flush("interval")
        assert [m.message.acked_by for m in letters] == [None, "consumer", None, None]
        assert resent == [(b"k2", b"letter 2"), (b"k3", b"letter 3")]  # the failed ones, sent again
        assert [m.offset for m in cache.letters[2]] == [0, 2, 3]  # kept for the next flush
        assert cache.bytes == 3 * (SIZE_EVENT + 100)
        letters[0].sent.set_result("record metadata")
        await flusher.flush("interval")
        assert [m.message.acked_by for m in letters] == ["consumer", "consumer", None, None]
        assert cache.letter_floor(2, "events.click") == 2  # the commits may go up to the resent one
        letters[2].sent.set_result("record metadata")  # the second sends went through
        letters[3].sent.set_result("record metadata")
        await flusher.flush("interval")
        assert [m.message.acked_by for m in letters] == ["consumer"] * 4
        assert cache.partitions_to_flush() == [] and cache.letter_floor(2, "events.click") is None
        assert cache.bytes == 0 and len(resent) == 2

    with caplog.at_level(logging.ERROR, logger="interest_stream"):
        asyncio.run(run())
    assert [r.getMessage() for r in caplog.records] == [
        "dead letter of events.click[2]@2 was not delivered "
        "(RuntimeError('UnknownTopicOrPartitionError')); sending it and 1 more of the partition's again"]


def test_a_forget_waits_below_the_first_dead_letter_not_delivered_yet():
    """A forget's flush acknowledges the delivered dead letters before it commits, so only the
    others (being sent, failed, let go) keep the commits below the user's events."""
    flusher, cache, resent, consumer = letters_flusher()

    async def run():
        letters = hold_letters(cache, consumer, ["delivered", "sending", "failed"])
        assert cache.undelivered_floor(2, "events.click") == 1
        assert cache.undelivered_floor(2, "events.browse") is None
        letters[1].sent.set_result("record metadata")
        assert cache.undelivered_floor(2, "events.click") == 2
        cache.release_letters(2, letters[2:])
        assert cache.undelivered_floor(2, "events.click") is None
        letters[0].message = None  # let go by a last flush: never acknowledged here
        assert cache.undelivered_floor(2, "events.click") == 0

    asyncio.run(run())


def test_the_last_flush_waits_for_dead_letters_then_lets_the_undelivered_go_keeping_their_floor(
        monkeypatch, caplog):
    """At a rebalance or shutdown: what is delivered within LETTER_WAIT_S is acknowledged; the
    rest is let go unacknowledged (Faust does not wait for it, and it is not sent again), and its
    offset stays the floor of the commits until the partition is dropped."""
    monkeypatch.setattr(flush, "LETTER_WAIT_S", 0.2)
    flusher, cache, resent, consumer = letters_flusher()

    async def run():
        letters = hold_letters(cache, consumer, ["delivered", "sending", "sending", "failed"])
        asyncio.get_running_loop().call_later(0.05, letters[2].sent.set_result, "record metadata")
        messages = [letter.message for letter in letters]
        t0 = time.monotonic()
        await flusher.flush("shutdown")
        assert 0.19 < time.monotonic() - t0 < 1
        assert [m.acked_by for m in messages] == ["consumer", None, "consumer", None]
        assert [letter.message for letter in letters] == [messages[0], None, messages[2], None]  # let go
        assert consumer._unacked_messages == set()  # a rebalance does not wait for the ones let go
        assert cache.letter_floor(2, "events.click") == 1
        await flusher.flush("shutdown")  # nothing more happens to the ones let go
        assert resent == [] and cache.letter_floor(2, "events.click") == 1
        cache.drop_partitions({2})
        assert cache.letter_floor(2, "events.click") is None and cache.bytes == 0

    with caplog.at_level(logging.WARNING, logger="interest_stream"):
        asyncio.run(run())
    assert [r.getMessage() for r in caplog.records] == [
        "partition 2: 2 dead letter(s) not delivered in 0.2 s; their input events stay uncommitted, to be read again"]


class Store:
    """The RocksDB store as the flush sees it: partition paths and persisted offsets."""

    def __init__(self, root):
        self.root, self.offsets = root, {}

    def _db_for_partition(self, p):  # the flush writes record batches when the store has it
        raise AssertionError("_write_batches is replaced in these tests")

    def partition_path(self, p):
        return self.root / f"users-{p}.db"

    def set_persisted_offset(self, tp, offset):
        self.offsets[tp.partition] = offset


class Table:
    def __init__(self, root):
        self.data = Store(root)
        self.changelog_topic = type("Topic", (), {"get_topic_name": staticmethod(lambda: "users-changelog")})


class Held:
    def __init__(self, offset):
        self.key, self.value, self.offset = b"u", b"{}", offset
        self.acked = False

    def ack(self, consumer):
        self.acked = True
        consumer._unacked_messages.discard(self)


def changelog_flusher(tmp_path, answers):
    """A flusher whose changelog batches get ``answers`` in turn (None: taken, else the error)."""
    consumer, cache = Consumer(), StateCache(10**9)
    flusher = Flusher(table=Table(tmp_path), cache=cache, context_topic="t", producer=None, consumer=lambda: consumer)

    async def write_batches(f):
        fut = asyncio.get_running_loop().create_future()
        answer = answers.pop(0)
        fut.set_result("record metadata") if answer is None else fut.set_exception(answer)
        return 10, [(fut, f.records)]

    flusher._write_batches = write_batches
    return flusher, cache, consumer


def held_users(cache, consumer, users, offsets):
    messages = [Held(o) for o in offsets]
    for user in users:
        cache.put(1, user, {"v": 1, "seq": 1, "newest": 1, "seen": 0, "ev": [], "old": [], "p": None,
                            "out": None, "scored": 0})
    for m in messages:
        cache.hold(1, m, 3)  # its key and value
        consumer._unacked_messages.add(m)
    return messages


def test_a_refused_changelog_write_holds_the_events_until_a_flush_writes_the_users(tmp_path, caplog):
    refused = RuntimeError("MessageSizeTooLargeError")
    flusher, cache, consumer = changelog_flusher(tmp_path, [refused, None])
    marker = tmp_path / "users-1.db.unwritten"

    async def run():
        first = held_users(cache, consumer, [b"a", b"b"], [0, 1])
        await flusher.flush("interval")
        assert [m.acked for m in first] == [False, False] and marker.exists()
        assert cache.flushing == 0 and cache.held_size == {1: 2 * (SIZE_EVENT + 3)}  # held again, counted once
        second = held_users(cache, consumer, [], [2])
        assert cache.partitions_to_flush() == [1] and set(cache.dirty[1]) == {b"a", b"b"}
        assert cache.held[1] == first + second  # the refused flush's events first
        await flusher.flush("interval")
        assert [m.acked for m in first + second] == [True] * 3 and not marker.exists()
        assert cache.flushing == 0 and cache.held_size == {}
        assert flusher.table.data.offsets == {}

    with caplog.at_level(logging.ERROR, logger="interest_stream"):
        asyncio.run(run())
    assert [r.getMessage() for r in caplog.records] == [
        "changelog write to users-changelog[1] failed (RuntimeError('MessageSizeTooLargeError')): its 2 users are "
        "written again at the next flush, its 2 events uncommitted until then"]


def test_a_refused_changelog_write_at_a_rebalance_lets_the_events_go_and_spoils_the_database(tmp_path):
    """Unacknowledged and no longer waited for by Faust; the database's persisted offset set past any
    changelog, so Faust's recovery refuses it if the partition comes back before a restart."""
    flusher, cache, consumer = changelog_flusher(tmp_path, [RuntimeError("refused")])

    async def run():
        messages = held_users(cache, consumer, [b"a"], [0, 1])
        await flusher.flush("rebalance")
        assert [m.acked for m in messages] == [False, False] and consumer._unacked_messages == set()
        assert cache.partitions_to_flush() == []  # nothing held again: the next owner reads them
        assert flusher.table.data.offsets == {1: flush.AHEAD_OF_ANY_CHANGELOG}
        assert (tmp_path / "users-1.db.unwritten").exists()

    asyncio.run(run())


def test_a_forget_request_is_acknowledged_and_its_tombstone_published_only_by_a_flush_that_wrote_the_delete(
        tmp_path, caplog):
    """Refused: the request stays unacknowledged and held (no tombstone); the next flush that
    writes the delete acknowledges it, then hands its user to ``forgotten``."""
    flusher, cache, consumer = changelog_flusher(tmp_path, [RuntimeError("refused"), None])
    published = []

    async def forgotten(partition, forgets, last=False):
        published.append((partition, [(f.message.key, f.held_state) for f in forgets], last))

    flusher.forgotten = forgotten

    async def run():
        request = Held(7)
        request.key = b"gone"
        cache.delete(1, b"gone")
        cache.hold_forget(1, request, held_state=True)
        consumer._unacked_messages.add(request)
        await flusher.flush("forget", [1])
        assert not request.acked and published == [] and cache.forgets == {1: [Forget(request, True)]}
        assert cache.dirty[1] == {b"gone": None}  # the delete is written again
        await flusher.flush("interval")
        assert request.acked and published == [(1, [(b"gone", True)], False)] and cache.forgets == {}

    with caplog.at_level(logging.ERROR, logger="interest_stream"):
        asyncio.run(run())
    assert caplog.records[-1].getMessage() == ("1 forget request(s) of partition 1 wait for their deletes to be "
                                               "written; their tombstones follow")


def test_a_forget_request_whose_delete_is_refused_at_a_rebalance_is_let_go_for_the_next_owner(tmp_path):
    flusher, cache, consumer = changelog_flusher(tmp_path, [RuntimeError("refused")])
    flusher.forgotten = None  # never called

    async def run():
        request = Held(7)
        cache.delete(1, b"gone")
        cache.hold_forget(1, request, held_state=False)
        consumer._unacked_messages.add(request)
        await flusher.flush("rebalance")
        assert not request.acked and consumer._unacked_messages == set() and cache.forgets == {}

    asyncio.run(run())


class RocksStore(Store):
    """A store with real RocksDB partition databases (raw mode, as Faust opens them)."""

    def __init__(self, root):
        super().__init__(root)
        self.dbs = {}

    def _db_for_partition(self, p):
        from rocksdict import Options, Rdict

        if p not in self.dbs:
            self.dbs[p] = Rdict(str(self.partition_path(p)), options=Options(raw_mode=True))
        return self.dbs[p]


def rocks_flusher(tmp_path, monkeypatch, during_send, answer=None):
    """A flusher writing real record batches into RocksDB; ``during_send(partition)`` runs where
    the changelog batches are sent (it may raise), and the broker then gives ``answer`` (None: taken)."""
    consumer, cache = Consumer(), StateCache(10**9)
    table = Table(tmp_path)
    table.data = RocksStore(tmp_path)
    flusher = Flusher(table=table, cache=cache, context_topic="t", producer=lambda: None, consumer=lambda: consumer)

    async def send_batches(producer, topic, partition, records, yield_every=0):
        await asyncio.sleep(0)  # the event loop runs others: the agent, scoring, web views
        during_send(partition)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None) if answer is None else fut.set_exception(answer)
        return [(fut, len(records))]

    monkeypatch.setattr(flush, "send_batches", send_batches)
    return flusher, cache, consumer


STATE = {"v": 1, "seq": 1, "newest": 1, "seen": 0, "ev": [], "old": [], "p": None, "out": None, "scored": 0}


def test_a_deleted_user_is_gone_from_the_database_before_the_flush_awaits_the_broker(tmp_path, monkeypatch):
    """The cache drops a user the flush deletes when the flush takes it; a lookup while the
    changelog batches are sent (scoring, an event, a web view) reads the database. Before, the
    database was written after the send, so such a lookup found the old state, cached it again
    and, once scored, wrote it back: the forgotten user returned."""
    seen = []
    flusher, cache, consumer = rocks_flusher(tmp_path, monkeypatch,
                                             lambda p: seen.append(flusher.table.data.dbs[p].get(b"gone")))
    db = flusher.table.data._db_for_partition(1)
    db[b"gone"] = b"old state"
    db[b"kept"] = b"old state"

    async def run():
        cache.delete(1, b"gone")
        cache.put(1, b"kept", dict(STATE))
        await flusher.flush("forget", [1])

    asyncio.run(run())
    assert seen == [None]
    assert db.get(b"gone") is None and db.get(b"kept") != b"old state"


def test_the_database_is_marked_unwritten_until_the_broker_takes_the_flush(tmp_path, monkeypatch):
    """Written before the broker answers, the database holds what the changelog may lack: a crash
    then would leave it ahead of the changelog, and the events read again would count as
    duplicates that no flush writes. The marker makes the next start rebuild it; the flush
    removes it once the broker took every batch. Before, only a refused flush left it."""
    marker = tmp_path / "users-1.db.unwritten"
    seen = []
    flusher, cache, consumer = rocks_flusher(tmp_path, monkeypatch, lambda p: seen.append(marker.exists()))

    async def run():
        messages = held_users(cache, consumer, [b"a"], [0])
        await flusher.flush("interval")
        return messages

    messages = asyncio.run(run())
    assert seen == [True] and not marker.exists() and [m.acked for m in messages] == [True]


def test_a_send_that_raises_holds_the_flush_as_a_refused_one(tmp_path, monkeypatch, caplog):
    """An exception from the producer (closed, timed out) is a write the broker did not take:
    the users are written again by the next flush, the events held until then, the database
    marked. Before, the exception went up through the flush with the users marked clean and the
    events neither acknowledged nor held."""
    marker = tmp_path / "users-1.db.unwritten"

    def closed(p):
        raise RuntimeError("ProducerClosed")

    flusher, cache, consumer = rocks_flusher(tmp_path, monkeypatch, closed)

    async def run():
        messages = held_users(cache, consumer, [b"a"], [0, 1])
        await flusher.flush("interval")
        return messages

    with caplog.at_level(logging.ERROR, logger="interest_stream"):
        messages = asyncio.run(run())
    assert [m.acked for m in messages] == [False, False] and cache.held[1] == messages
    assert set(cache.dirty[1]) == {b"a"} and marker.exists() and flusher.unwritten == {1}
    assert [r.getMessage() for r in caplog.records] == [
        "changelog write to users-changelog[1] failed (RuntimeError('ProducerClosed')): its 1 users are "
        "written again at the next flush, its 2 events uncommitted until then"]


def test_records_with_headers_are_sent_with_them_and_records_without_with_none():
    class Batch:
        def __init__(self):
            self.records = []

        def append(self, **record):
            if len(self.records) == 2:
                return None  # full
            self.records.append(record)
            return "metadata"

    class Producer:
        def __init__(self):
            self.batches = []

        def create_batch(self):
            return Batch()

        async def send_batch(self, batch, topic, partition):
            self.batches.append((topic, partition, batch.records))
            return "future"

    producer = Producer()
    sent = asyncio.run(flush.send_batches(producer, "out", 4, [(b"a", b"1"), (b"b", None, [("h", b"0")]),
                                                              (b"c", None, [("h", b"1"), ("i", b"2@3")])]))
    assert sent == [("future", 2), ("future", 1)]
    assert producer.batches == [
        ("out", 4, [{"key": b"a", "value": b"1", "timestamp": None, "headers": []},
                    {"key": b"b", "value": None, "timestamp": None, "headers": [("h", b"0")]}]),
        ("out", 4, [{"key": b"c", "value": None, "timestamp": None, "headers": [("h", b"1"), ("i", b"2@3")]}]),
    ]


def test_a_store_without_partition_databases_deletes_a_forgotten_user_before_the_flush_yields():
    """``INTEREST_STORE=memory://``: the flush writes through Faust's table API and yields to the
    event loop between chunks of the partition's other users. Before, the forgotten user was
    deleted after them: a lookup in between (an event, a web view) found the old state in the
    table, cached it again, and the user's next event wrote it back after the tombstone."""

    class MemoryTable(dict):  # Faust's table API over a store without per-partition databases
        data = object()

    table, cache = MemoryTable({b"gone": b"old state"}), StateCache(10**9)
    flusher = Flusher(table=table, cache=cache, context_topic="t", producer=None, consumer=lambda: Consumer(),
                      chunk=1)
    seen = []

    async def lookup():  # what runs while the flush yields
        for _ in range(3):
            seen.append(table.get(b"gone"))
            await asyncio.sleep(0)

    async def run():
        cache.delete(1, b"gone")
        for user in (b"a", b"b"):
            cache.put(1, user, dict(STATE))
        looking = asyncio.create_task(lookup())
        await asyncio.sleep(0)  # the lookup runs first, then at each of the flush's yields
        await flusher.flush("forget", [1])
        await looking

    asyncio.run(run())
    assert seen[0] == b"old state" and seen[1:] == [None, None]
    assert set(table) == {b"a", b"b"}

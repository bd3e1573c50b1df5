"""The consumer's delivery without tasks (stream_app.consumer): the same results as mode's
``wait_first``, a rebalance still abandons a delivery that waits, and Faust calls it only where
this was checked. Pure asyncio on a mode Service: the worker's tests against the broker run the
consumer for real."""
import asyncio
import inspect
import os
import subprocess
import sys
from pathlib import Path

import aiokafka
import faust.transport.consumer as faust_consumer
import faust.transport.drivers.aiokafka as faust_aiokafka
import pytest
from mode import Service
from mode.utils.locks import Event

from stream_app.consumer import Consumer, FirstStepDelivery, _Rest
from stream_app.settings import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[1]


class Recorder(Service):
    """mode's wait_first, recording what it was given."""

    def __init__(self):
        super().__init__()
        self.suspend_flow = Event()  # as Faust's consumer has
        self.given = None

    async def wait_first(self, *coros, timeout=None):
        self.given = coros
        return await super().wait_first(*coros, timeout=timeout)


class Probe(FirstStepDelivery, Recorder):
    pass


class Delivery:
    """A stand-in for Faust's callback: records how far it got."""

    def __init__(self, waits=()):
        self.waits = list(waits)  # futures it awaits, in order
        self.steps, self.cleaned = 0, False

    async def __call__(self, value):
        try:
            for w in self.waits:
                await w
                self.steps += 1
            return value
        finally:
            self.cleaned = True


def run(coro):
    return asyncio.run(coro)


def test_a_delivery_that_does_not_wait_is_the_only_winner_and_makes_no_task():
    async def main():
        svc = Probe()
        other = svc.suspend_flow.wait()
        tasks_before = len(asyncio.all_tasks())
        d = Delivery()
        coro = d("v")
        result = await svc.wait_first(coro, other)
        assert (result.done, result.results, result.stopped) == ([coro], ["v"], False)
        assert svc.given is None and len(asyncio.all_tasks()) == tasks_before  # mode's was not needed
        assert inspect.getcoroutinestate(other) == inspect.CORO_CLOSED  # no "never awaited" warning
        assert d.cleaned

    run(main())


def test_a_delivery_that_waits_finishes_in_a_task_with_every_step():
    async def main():
        svc = Probe()
        loop = asyncio.get_running_loop()
        f1, f2 = loop.create_future(), loop.create_future()

        async def waits():
            await asyncio.sleep(0)  # a bare yield to the loop, as asyncio.sleep(0) gives
            return await Delivery([f1, f2])("v")

        loop.call_later(0.01, f1.set_result, None)
        loop.call_later(0.02, f2.set_result, None)
        result = await svc.wait_first(waits(), svc.suspend_flow.wait())
        assert result.results == ["v"] and not result.stopped
        assert isinstance(svc.given[0], _Rest)  # the rest went to mode's wait_first

    run(main())


def test_a_rebalance_abandons_a_delivery_that_waits_and_it_cleans_up():
    async def main():
        svc = Probe()
        loop = asyncio.get_running_loop()
        never = loop.create_future()
        d = Delivery([never])
        loop.call_later(0.01, svc.suspend_flow.set)  # the flow is suspended while the delivery waits
        result = await svc.wait_first(d("v"), svc.suspend_flow.wait())
        assert result.results == [True]  # the flow's event won, not the delivery ("v")
        await asyncio.sleep(0)  # the cancellation reaches the delivery
        assert d.steps == 0 and d.cleaned and never.cancelled()

    run(main())


def test_a_cancellation_that_comes_as_the_wait_ends_still_reaches_the_delivery():
    async def main():
        loop = asyncio.get_running_loop()
        f = loop.create_future()
        d = Delivery([f])
        coro = d("v")
        task = asyncio.ensure_future(_Rest(coro, coro.send(None)))
        await asyncio.sleep(0)  # the task waits on f
        f.set_result(None)  # done, but the task has not resumed yet,
        task.cancel()  # so the cancellation is thrown into it at its next step
        with pytest.raises(asyncio.CancelledError):
            await task
        assert d.steps == 0 and d.cleaned

    run(main())


@pytest.mark.parametrize("why", ["flow suspended", "stopped", "crashed"])
def test_when_the_flow_is_suspended_or_the_service_ends_the_delivery_goes_to_mode_untouched(why):
    async def main():
        svc = Probe()
        {"flow suspended": svc.suspend_flow, "stopped": svc._stopped, "crashed": svc._crashed}[why].set()
        coro, other = Delivery()("v"), svc.suspend_flow.wait()
        await svc.wait_first(coro, other)
        assert svc.given == (coro, other)

    run(main())


def test_an_error_in_the_first_step_propagates_and_closes_the_others():
    async def main():
        async def broken():
            raise ValueError("bad message")

        svc = Probe()
        other = svc.suspend_flow.wait()
        with pytest.raises(ValueError, match="bad message"):
            await svc.wait_first(broken(), other)
        assert inspect.getcoroutinestate(other) == inspect.CORO_CLOSED and svc.given is None

    run(main())


def test_faust_calls_wait_first_only_for_the_delivery_this_was_checked_for():
    # a new call in a later faust-streaming needs its own look before FirstStepDelivery may apply
    src = inspect.getsource(faust_consumer)
    calls = [line.strip() for line in src.splitlines() if "wait_first(" in line and "def wait_first" not in line]
    assert calls == ["await self.wait_first("]
    body = inspect.getsource(faust_consumer.Consumer._drain_messages)
    assert "self.wait_first(\n                                callback(message), self.suspend_flow.wait()\n" in body


def test_the_worker_app_uses_this_consumer_and_its_fetch_wait(tmp_path):
    # the aiokafka consumer the worker's consumer thread creates (not started: no broker needed)
    code = ("import asyncio\n"
            "from stream_app.app import app\n"
            "print(type(app.consumer).__module__, type(app.consumer).__name__)\n"
            "async def made():\n"
            "    made = app.consumer._thread._create_worker_consumer(app.transport)\n"
            "    return made._fetch_max_wait_ms, made._request_timeout_ms\n"
            "print(*asyncio.run(made()))\n")
    env = dict(os.environ, INTEREST_DATA_DIR=str(tmp_path / "data"), INTEREST_FETCH_MAX_WAIT_MS="250")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    # the request timeout INTEREST_FETCH_MAX_WAIT_MS stays below (stream_app.settings)
    assert proc.stdout.split() == ["stream_app.consumer", "Consumer", "250", "90000"], proc.stderr[-2000:]


def test_aiokafka_fetches_with_the_wait_set_before_start_and_faust_still_fixes_its_own():
    # the attribute ConsumerThread sets is the one aiokafka's start gives its Fetcher
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms," in inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    # when faust-streaming lets the wait be configured, configure it there instead
    made = inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer)
    assert "fetch_max_wait_ms=1500," in made


@pytest.mark.parametrize("raw, expected", [
    (None, 100),
    ("250", 250),
    ("0", "INTEREST_FETCH_MAX_WAIT_MS must be >= 1, got 0"),
    ("soon", "INTEREST_FETCH_MAX_WAIT_MS must be an integer, got 'soon'"),
    ("89000", 89000),
    # a struct.error in aiokafka's fetcher task (an INT32 in the Fetch request), the worker never ready
    ("3000000000", "INTEREST_FETCH_MAX_WAIT_MS must be <= 89000 (a fetch must be answered within Faust's "
                   "90 s request timeout), got 3000000000"),
    # an INT32, but every fetch of an idle partition would outlast aiokafka's request timeout
    ("90000", "INTEREST_FETCH_MAX_WAIT_MS must be <= 89000 (a fetch must be answered within Faust's "
              "90 s request timeout), got 90000"),
])
def test_the_fetch_wait_setting(raw, expected):
    env = {} if raw is None else {"INTEREST_FETCH_MAX_WAIT_MS": raw}
    if isinstance(expected, int):
        assert Settings.from_env(env).fetch_max_wait_ms == expected
    else:
        with pytest.raises(ConfigError) as err:
            Settings.from_env(env)
        assert str(err.value) == expected


HOLE_CHECK = '''
import asyncio
from types import SimpleNamespace
from faust.types import TP
import faust.transport.consumer as fc
from stream_app.app import app, settings

c = app.consumer
tp = TP(settings.input_topics["browse"], 4)
c.assignment = lambda: {tp}
c._committed_offset[tp] = 185
c.deliveries.positioned(tp, 185)  # sought to the committed offset
message = SimpleNamespace(tp=tp, topic=tp.topic, partition=4, offset=253)
c.callback(message).close()  # the first record handed over: 253 (Faust dropped 185..252)

def ack(*offsets):  # as Faust's ack counts an offset: once
    for o in offsets:
        if o not in c._acked_index[tp]:
            c._acked[tp].append(o)
            c._acked_index[tp].add(o)

async def main():
    await c._add_gap(tp, 186, 253)  # what Faust's fetcher does on the jump
    ack(253, 254)
    print("faust", fc.Consumer._new_offset(c, tp))  # Faust alone: past the hole
    c._committed_offset[tp] = 185  # (not committed: as it was)
    await c._add_gap(tp, 186, 253)
    ack(253, 254)
    print("worker", c._new_offset(tp))
    sought = []
    async def seek(partition, offset):
        sought.append((partition.partition, offset))
    async def records(timeout):
        return {}, set()
    c.seek, c._holds_records = seek, lambda tp, start, end: True
    fc.Consumer._wait_next_records = lambda self, timeout: records(timeout)
    app.flow_control.suspend()  # a rebalance under way: nothing is read yet
    await c._wait_next_records(1.0)
    print("suspended", sought)
    app.flow_control.resume()
    c.flow_active, app.rebalancing = True, False
    await c._wait_next_records(1.0)
    print("sought", sought, "acked", sorted(c._acked[tp]), "gaps", len(c._gap[tp]))
    ack(*range(185, 256))  # read again from 185
    print("worker", c._new_offset(tp), "floor", c.deliveries.floor(tp))

    # handed over in order, but 216..220 skipped by Faust's stream (flow control not active yet):
    # never acknowledged; at the revocation Faust forgets its committed offset, then commits
    t2 = TP(settings.input_topics["browse"], 0)
    c.assignment = lambda: {tp, t2}
    c.deliveries.positioned(t2, 216)
    for o in range(216, 267):
        c.callback(SimpleNamespace(tp=t2, topic=t2.topic, partition=0, offset=o)).close()
    for o in range(221, 267):
        c._acked[t2].append(o)
        c._acked_index[t2].add(o)
    c._committed_offset.pop(t2, None)
    print("faust", fc.Consumer._new_offset(c, t2))
    for o in range(221, 267):
        c._acked[t2].append(o)
        c._acked_index[t2].add(o)
    print("worker", c._new_offset(t2), "pending", [(p[0].partition, p[1], p[2]) for p in c.deliveries.take_pending()])

asyncio.run(main())
'''


def test_records_the_fetcher_skipped_are_read_again_before_any_commit_passes_them(tmp_path):
    """Sought to 185 at a rebalance, the fetcher handed over 253 first: Faust made 186..253 a gap
    and, its head check letting one offset go, committed 254 over 185..252, never applied (an
    audit: 308 of 3,390 events lost by two workers taking partitions from each other). The
    worker's consumer commits nothing until it has read the hole again from 185. And records
    handed over but skipped by Faust's stream (216..220), never acknowledged, which Faust
    committed over at a revocation, having forgotten its committed offset first."""
    env = dict(os.environ, INTEREST_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.run([sys.executable, "-c", HOLE_CHECK], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert proc.stdout.splitlines() == ["faust 254", "worker None", "suspended []", "sought [(4, 185)] acked [] gaps 0",
                                        "worker 256 floor None",
                                        "faust 267", "worker None pending [(0, 216, 221)]"], proc.stderr[-3000:]


def test_input_caps_stop_at_the_first_offset_not_read_a_hole_or_an_undelivered_dead_letter():
    """How far a flush's states may say their input was read (stream_app.state.dump's caps), for
    partition 0 of each input topic, from Faust's acknowledged offsets and gaps, the flush's own
    offsets and the consumer's holes. Worked by hand."""
    from types import SimpleNamespace

    from faust.types import TP
    from intervaltree import IntervalTree

    from stream_app.holes import Deliveries

    click, browse, search = TP("events.click", 0), TP("events.browse", 0), TP("events.search", 0)
    d = Deliveries()
    d.positioned(click, 100)  # sought to 100
    d.positioned(browse, 50)
    d.positioned(TP("events.click", 1), 0)
    consumer = SimpleNamespace(
        deliveries=d, _checks_holes=lambda topic: topic.startswith("events."),
        assignment=lambda: {click, browse, search, TP("events.click", 1), TP("control", 0)},
        # 100, 101 acknowledged; Faust's gap 102..104 holds 104, the record after the markers 102, 103
        _acked={click: [100, 101]}, _gap={click: IntervalTree.from_tuples([(102, 105)])})
    caps = Consumer.input_caps(consumer, 0, {"events.click": [104, 105, 107]}, {})
    # click read through 105 (106 never given); browse: nothing read since 50; search: no base known
    assert caps == {("events.click", 0): 105, ("events.browse", 0): 49}
    assert Consumer.input_caps(consumer, 0, {"events.click": [105, 107]}, {})[("events.click", 0)] == 103
    # the first dead letter not delivered
    assert Consumer.input_caps(consumer, 0, {"events.click": [104, 105]}, {"events.click": 105})[
        ("events.click", 0)] == 104
    # a hole the fetcher left: 100, 101 handed over, then 104
    for offset in (100, 101, 104):
        d.delivered(click, offset)
    assert Consumer.input_caps(consumer, 0, {"events.click": [104, 105]}, {})[("events.click", 0)] == 101


def test_records_read_again_below_fausts_committed_offset_do_not_stop_the_commits():
    """Faust's own ack counts nothing below its committed offset (19 here), so records 17 and 18,
    read again from a seek to 17 and acknowledged, never join the acknowledged ones. Before, every
    commit found them missing, read them again and committed nothing: in a run of three workers
    killed in turn, 3,200 `late` dead letters (4 records ten times each among the first 40) and 569
    records left uncommitted."""
    from types import SimpleNamespace

    from faust.types import TP
    from intervaltree import IntervalTree

    from stream_app.holes import Deliveries

    tp, d = TP("clicks", 0), Deliveries()
    consumer = Consumer.__new__(Consumer)
    consumer.deliveries, consumer.assignment = d, lambda: {tp}
    consumer._acked, consumer._acked_index, consumer._gap, consumer._committed_offset = (
        {tp: []}, {tp: set()}, {tp: IntervalTree()}, {tp: 19})
    consumer._unacked_messages, consumer._n_acked, consumer._waiting_for_ack = set(), 0, None
    consumer.app = SimpleNamespace(hole_topics={"clicks"}, states=None,
                                   topics=SimpleNamespace(acks_enabled_for=lambda topic: True))
    class Message(SimpleNamespace):
        __hash__ = object.__hash__

    d.positioned(tp, 17)  # a hole read again from 17
    for o in range(17, 30):
        assert d.delivered(tp, o) is None
        consumer.ack(Message(acked=False, tp=tp, offset=o, topic="clicks"))  # applied
    assert consumer._acked[tp] == list(range(19, 30))  # Faust's ack: 17 and 18 counted for nothing
    assert consumer._new_offset(tp) == 30
    assert d.floor(tp) is None and d.take_pending() == []


def _one_partition_by_hand(ts: dict):
    """Faust's bookkeeping of partition 0 of clicks and the worker's (its consumer's hole checks, the
    write-behind cache), without a broker: ``process(o)`` is stream_app.ingest.process for the
    record at offset ``o`` (user u's event ``u-o`` at ``ts[o]``; the offset checked, and recorded
    below the first hole only), ``acknowledge(offsets)`` a flush's."""
    from collections import namedtuple
    from types import SimpleNamespace

    import orjson
    from faust.types import TP
    from intervaltree import IntervalTree

    from stream_app import core, state
    from stream_app.holes import Deliveries
    from stream_app.state_cache import StateCache

    hour = 3_600_000
    limits = state.Limits(horizon_ms=24 * hour, grace_ms=hour, max_events=128)
    tp, record = TP("clicks", 0), namedtuple("Record", "topic partition offset tp")
    d, cache = Deliveries(), StateCache(10**9)
    consumer = Consumer.__new__(Consumer)
    consumer.deliveries, consumer.assignment = d, lambda: {tp}
    consumer._acked, consumer._acked_index, consumer._gap, consumer._committed_offset = (
        {tp: []}, {tp: set()}, {tp: IntervalTree()}, {tp: None})
    consumer.app = SimpleNamespace(hole_topics={"clicks"}, states=cache)
    now = max(ts.values()) + 24 * hour

    def process(o):
        e = cache.get(b"u")
        value = orjson.dumps({"event_id": f"u-{o}", "user_id": "u", "type": "click", "ts": ts[o],
                              "category": "x", "item_id": f"i{o}"})
        r = core.ingest("click", b"u", value, lambda _k: e.state if e else None, limits, now,
                        24 * hour, record("clicks", 0, o, tp), d.read_before(tp, o))
        if r.state is not None:
            cache.put(0, b"u", r.state)
        return r.outcome

    def acknowledge(offsets):
        consumer._acked[tp].extend(offsets)
        consumer._acked_index[tp].update(offsets)

    return SimpleNamespace(tp=tp, d=d, cache=cache, consumer=consumer, process=process, acknowledge=acknowledge)


def test_a_hole_found_at_a_commit_caps_the_input_offsets_so_its_records_are_not_taken_for_duplicates():
    """An audit's sequence, by hand: user u's records 100..109 of clicks[0] are all handed over, but
    Faust's stream skipped 100..104; the agent applied 105..109 with their offsets. The next commit
    finds the hole (100, 105); the worker reads again from 100, and once 100 is acknowledged the hole
    settles. 101..104, read for the first time, are older than u's window by more than the grace:
    `late` dead letters. Before the cap, they were judged against the offset 108 and taken for
    duplicates: neither counted nor dead-lettered."""
    hour, t0 = 3_600_000, 1_700_000_000_000
    ts = {o: t0 + (o - 100) * hour for o in range(100, 110)} | {108: t0 + 40 * hour}
    w = _one_partition_by_hand(ts)
    tp, d, consumer, process = w.tp, w.d, w.consumer, w.process
    d.positioned(tp, 100)
    assert [d.delivered(tp, o) for o in range(100, 110)] == [None] * 10
    out = {o: process(o) for o in range(105, 110)}
    assert w.cache.get(b"u").state["in"] == {"clicks": 108}
    w.acknowledge(range(105, 110))  # by a flush
    assert consumer._new_offset(tp) is None and d.floor(tp) == 100  # the hole (100, 105), found
    assert w.cache.get(b"u").state["in"] == {"clicks": 99}  # capped in memory
    consumer._read_again(tp, 100)
    d.positioned(tp, 100)
    out[100] = process(100)
    w.acknowledge([100])
    consumer._new_offset(tp)
    assert d.floor(tp) is None  # settled once 100 was acknowledged
    out |= {o: process(o) for o in range(101, 105)}
    assert out == {105: "accepted", 106: "accepted", 107: "accepted", 108: "accepted", 109: "late",
                   100: "late", 101: "late", 102: "late", 103: "late", 104: "late"}


def test_records_a_restored_state_counted_before_are_duplicates_when_a_hole_makes_them_read_again():
    """The sequence of a rebalance trial's 91 `late` dead letters (bench/rebalance.py), by hand,
    with the hole found at a commit rather than by the fetcher (tests/test_write_behind.py has
    that one against the broker): the worker before counted user u's records 100..104 of
    clicks[0] and flushed its state, but committed only up to 100. This worker restores the
    state, is handed 100..109, and Faust's stream skips 100..102; the agent applies 105..109
    (103, 104 are known). A flush then may store no offset past 99, the commit finds the hole
    (100, 103) and caps the offsets in memory: neither goes below the 104 the state was restored
    with, so 100..102, read again after u's window moved past them, are duplicates. Before, both
    took u to 99, and they were `late` dead letters for events counted once."""
    from stream_app import state

    hour, t0 = 3_600_000, 1_700_000_000_000
    ts = {o: t0 + (o - 100) * hour for o in range(100, 105)} | {o: t0 + (o - 60) * hour for o in range(105, 110)}
    before = _one_partition_by_hand(ts)
    before.d.positioned(before.tp, 100)
    assert [before.process(o) for o in range(100, 105)] == ["accepted"] * 5
    stored = before.cache.take(0, {("clicks", 0): 104}).writes  # its flush: read through 104
    w = _one_partition_by_hand(ts)
    tp, d, consumer, process = w.tp, w.d, w.consumer, w.process
    w.cache.load(0, b"u", state.load(dict(stored)[b"u"]))
    d.positioned(tp, 100)
    assert [d.delivered(tp, o) for o in range(100, 110)] == [None] * 10
    out = {o: process(o) for o in range(103, 110)}
    assert w.cache.get(b"u").state["in"] == {"clicks": 109}
    w.acknowledge(range(103, 110))
    flushed = w.cache.take(0, consumer.input_caps(0, {}, {}))
    assert consumer.input_caps(0, {}, {}) == {("clicks", 0): 99}  # read through 99 only
    assert state.load(dict(flushed.writes)[b"u"])["in"] == {"clicks": 104}
    assert consumer._new_offset(tp) is None and d.floor(tp) == 100  # the hole (100, 103), found
    assert w.cache.get(b"u").state["in"] == {"clicks": 104}  # capped in memory, to what was known
    consumer._read_again(tp, 100)
    d.positioned(tp, 100)
    out |= {o: process(o) for o in range(100, 103)}
    assert out == {103: "duplicate", 104: "duplicate", 105: "accepted", 106: "accepted", 107: "accepted",
                   108: "accepted", 109: "accepted",
                   100: "duplicate_offset", 101: "duplicate_offset", 102: "duplicate_offset"}


def test_records_behind_a_hole_the_fetcher_skipped_are_handed_over_only_after_it():
    """A third worker's fetcher, restarted, skipped offsets 66..175 of browse[2] and handed over 176
    on first; in a backlog their events moved the users' event time on by hours, and the hole's
    records, read after them, were 256 `late` dead letters (bench/rebalance.py --workers 3 --kill).
    Now the records from 176 on are held back; the hole's records are read first, from 66, then
    those after it again. Where a hole holds no record, reading goes on from the first held back
    (Faust's seek: where commits go on from stays), and the partition is then known to carry
    transaction markers: a hole of one offset there (a marker) holds nothing back. Elsewhere it is
    held behind (a record skipped alone). A partition with two holes that hold records is read again
    from the first."""
    from types import SimpleNamespace
    from unittest import mock

    from faust.types import TP
    from intervaltree import IntervalTree

    from stream_app.holes import Deliveries

    browse, click, search, other = TP("browse", 2), TP("click", 2), TP("search", 2), TP("browse", 3)
    tps = (browse, click, search, other)
    consumer = Consumer.__new__(Consumer)
    consumer.deliveries = d = Deliveries()
    consumer.assignment = lambda: set(tps)
    consumer._given = lambda message: ("given", message.offset)
    consumer.app = SimpleNamespace(hole_topics={"browse", "click", "search"}, states=None, rebalancing=False,
                                   in_recovery=False, flow_control=SimpleNamespace(is_active=lambda: True))
    consumer.flow_active = True
    consumer._acked = {tp: [] for tp in tps}
    consumer._acked_index = {tp: set() for tp in tps}
    consumer._gap = {tp: IntervalTree() for tp in tps}
    consumer._read_offset, consumer.log = {}, SimpleNamespace(dev=lambda *args: None)
    # click's hole: an aborted transaction's records, say; search's: a transaction's marker
    consumer._holds_records = lambda tp, start, end: tp in (browse, other)
    sought = []

    async def seek(tp, offset):  # aiokafka's, under Faust's
        sought.append((tp.topic, offset))

    consumer._seek = seek

    def hand_over(tp, *offsets):
        out = []
        for o in offsets:
            got = consumer._hand_over(SimpleNamespace(tp=tp, topic=tp.topic, partition=tp.partition, offset=o))
            if asyncio.iscoroutine(got):
                got.close()
                got = "held"
            out.append(got)
        return out

    for tp, at in ((browse, 66), (click, 10), (search, 10), (other, 40)):
        d.positioned(tp, at)
    assert hand_over(browse, 176, 177) == ["held", "held"]
    assert hand_over(click, 20, 21) == ["held", "held"]
    assert hand_over(search, 11, 12) == ["held", "held"]  # a marker at 10, not known yet
    assert hand_over(other, 41, 50, 51) == ["held", "held", "held"]  # 40 and 42..49 skipped
    assert [d.held(tp) for tp in tps] == [176, 20, 11, 41]

    async def nothing_fetched(self, timeout):
        return {}, set()

    with mock.patch.object(faust_aiokafka.Consumer, "_wait_next_records", nothing_fetched):
        asyncio.run(consumer._wait_next_records(1.0))
    assert sorted(sought) == [("browse", 40), ("browse", 66), ("click", 20), ("search", 11)]  # the first holes
    assert consumer._read_offset == {browse: 66, click: 20, search: 11, other: 40}
    assert [d.held(tp) for tp in tps] == [None, None, None, None]
    assert hand_over(browse, *range(66, 178)) == [("given", o) for o in range(66, 178)]
    assert hand_over(click, 20, 21, 22) == [("given", 20), ("given", 21), ("given", 22)]
    assert hand_over(search, 11, 12, 14) == [("given", 11), ("given", 12), ("given", 14)]  # a marker at 13
    assert hand_over(other, 40, 41, 43) == [("given", 40), ("given", 41), "held"]  # one record skipped
    assert d.base(browse) == (66, True) and d.base(click) == (10, True)
    assert [d.floor(tp) for tp in (browse, click, search)] == [66, None, 13]  # 66 until acknowledged, 13 read

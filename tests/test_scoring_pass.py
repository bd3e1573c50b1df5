"""The scoring pass's bookkeeping without a broker: the scan that indexes a newly assigned
partition's users (scoring.index_new_partitions) against what runs while it yields to the event
loop, a batch's publication (scoring.publish) when a rebalance began or the producer fails, and
how long a paced pass pauses."""
import asyncio
import dataclasses
import logging
import time
from types import SimpleNamespace

import numpy as np
import pytest

from stream_app import core, scoring, state
from stream_app.model_runtime import LoadedModel
from stream_app.partitioning import partition_for
from stream_app.state_cache import StateCache


class Snapshot:
    """The users table as the scan reads it: ``items()`` from a snapshot taken when it starts,
    running ``meanwhile(key)`` before each item (what the event loop did between two chunks)."""

    def __init__(self, rows: dict, meanwhile):
        self.rows, self.meanwhile = rows, meanwhile

    def items(self):
        for key, raw in list(self.rows.items()):
            self.meanwhile(key)
            yield key, raw


def test_a_user_forgotten_while_the_scan_reads_its_snapshot_is_not_cached_again(monkeypatch):
    """A forget applied while the scan runs deletes the user, and its flush drops the entry from
    the cache; the snapshot still holds the old state. Before, the scan found the user there and
    not in the cache, and cached the old state again: the web view showed the forgotten user,
    and scoring wrote it back to the table."""
    n = scoring.settings.partitions
    keys = [k for k in (b"u%d" % i for i in range(200)) if partition_for(k, n) == 0][:3]
    cache = StateCache(10**9)

    def meanwhile(key):
        if key == keys[0]:  # while the first user is read, the last is forgotten and flushed
            cache.delete(0, keys[2])
            cache.settled(cache.take(0))

    monkeypatch.setattr(scoring.app, "states", cache)
    monkeypatch.setattr(scoring.app, "scorer", scoring.Pass())
    monkeypatch.setattr(scoring, "users", Snapshot({k: state.dump(state.new_state()) for k in keys}, meanwhile))
    monkeypatch.setattr(scoring, "owned_partitions", lambda: {0})
    asyncio.run(scoring.index_new_partitions())
    assert set(cache.entries) == set(keys[:2])
    assert cache.scan_seen is None and scoring.app.scorer.indexed == {0}


def test_a_user_changed_flushed_and_dropped_while_the_scan_runs_keeps_its_newest_state(monkeypatch):
    """An event changes a user while the scan yields; the flush writes it and the bound drops it
    from the cache (clean). The snapshot still holds the state before the event. Before, the scan
    cached that older state, and the user's next event was applied to it: the first one lost."""
    n = scoring.settings.partitions
    keys = [k for k in (b"u%d" % i for i in range(200)) if partition_for(k, n) == 0][:3]
    cache = StateCache(10**9)
    older, newer = state.new_state(), dict(state.new_state(), seq=1)

    def meanwhile(key):
        if key == keys[0]:
            cache.put(0, keys[2], newer)  # the event
            cache.settled(cache.take(0))  # the flush
            cache.max_bytes = 1
            assert cache.shrink() == 1  # dropped, clean, to respect the bound
            cache.max_bytes = 10**9

    monkeypatch.setattr(scoring.app, "states", cache)
    monkeypatch.setattr(scoring.app, "scorer", scoring.Pass())
    monkeypatch.setattr(scoring, "users", Snapshot({k: state.dump(older) for k in keys}, meanwhile))
    monkeypatch.setattr(scoring, "owned_partitions", lambda: {0})
    asyncio.run(scoring.index_new_partitions())
    assert set(cache.entries) == set(keys[:2])  # the third is read from the table when it is next needed


@pytest.mark.parametrize("room", [True, False], ids=["cache_has_room", "cache_full"])
def test_a_user_changed_before_the_scan_then_flushed_and_dropped_keeps_its_newest_state(monkeypatch, room):
    """An event applied after the assignment, before the scan starts (the agent runs first): the
    user is cached and dirty. While the scan yields, the flush writes it and the bound drops it;
    the snapshot, taken before that flush, holds the state before the event. Before, the scan
    knew only the users cached *during* it: with room it cached the older state (the event lost
    at the next flush), with the cache full it indexed the older state's idle facts (its newest
    event 3 days back, so the next idle pass compacted the user's current state)."""
    n = scoring.settings.partitions
    keys = [k for k in (b"u%d" % i for i in range(200)) if partition_for(k, n) == 0][:3]
    cache = StateCache(10**9)
    older, newer = None, None
    for i, ts in enumerate((T0, T0 + 3 * 86_400_000)):
        older = newer and state.load(state.dump(newer), scoring.LIMITS)  # apply changes its state
        _, newer = state.apply(newer, {"event_id": f"e{i}", "user_id": "u", "type": "click", "ts": ts,
                                       "item_id": "i", "category": "c"}, scoring.LIMITS, ts)
    cache.put(0, keys[2], newer)  # before the scan

    def meanwhile(key):
        if key == keys[0]:
            cache.settled(cache.take(0))  # the flush
            cache.max_bytes = 1
            assert cache.shrink() == 1  # dropped, clean
            cache.max_bytes = 10**9 if room else 1

    monkeypatch.setattr(scoring.app, "states", cache)
    monkeypatch.setattr(scoring.app, "scorer", scoring.Pass())
    monkeypatch.setattr(scoring, "users", Snapshot({k: state.dump(older) for k in keys}, meanwhile))
    monkeypatch.setattr(scoring, "owned_partitions", lambda: {0})
    asyncio.run(scoring.index_new_partitions())
    assert keys[2] not in cache.entries  # read from the table when it is next needed
    assert cache.facts[0][keys[2]] == state.idle_facts(newer) != state.idle_facts(older)


T0 = 978_307_200_000


def scored_batch(model, cache):
    """One pending user in ``cache`` (partition 0) and a pass's batch for it, its model run done."""
    st = None
    for i in range(3):
        _, st = state.apply(st, {"event_id": f"e{i}", "user_id": "u", "type": "click", "ts": T0 + i,
                                 "item_id": f"i{i}", "category": model.categories[0]}, scoring.LIMITS, T0 + i)
    cache.put(0, b"u", st)
    inputs = [core.snapshot(b"u", st, model, scoring.LIMITS.horizon_ms)]
    runs = core.plan(model, inputs, 8)
    outputs = asyncio.get_running_loop().create_future()
    outputs.set_result((model.run(runs), 0.0))  # (the runs' outputs, the model's seconds)
    return (inputs, {b"u": 0}, runs, outputs, 0.0), st


def test_a_batch_whose_model_run_ends_after_a_rebalance_began_publishes_nothing(monkeypatch, tiny_model_dir):
    """The rebalance's flush may have written and dropped the batch's users while the model ran;
    looking them up then reads them again from the table, and keeping a vector in them marks them
    changed in a partition the worker may no longer own. Before, only a new generation stopped
    the batch, and that comes at the assignment, after the flush."""
    model, cache = LoadedModel.load(tiny_model_dir), StateCache(10**9)
    looked_up = []
    monkeypatch.setattr(scoring.app, "states", cache)
    monkeypatch.setattr(scoring.app, "output_partitions", 1, raising=False)
    monkeypatch.setattr(scoring.app, "producer", SimpleNamespace(_ensure_producer=lambda: None))
    monkeypatch.setattr(scoring, "is_ready", lambda: False)  # rebalancing (Faust's on_rebalance_start)
    monkeypatch.setattr(scoring, "lookup", lambda p, key: looked_up.append(key))

    async def run():
        running, st = scored_batch(model, cache)
        return (await scoring.publish(running, model, scoring.app.consumer_generation_id))[0], st

    published, st = asyncio.run(run())
    assert published == 0 and looked_up == [] and state.is_pending(st)


def test_a_batch_the_producer_raises_on_leaves_its_users_waiting_for_a_vector(monkeypatch, tiny_model_dir, caplog):
    """A producer that raises (closed, timed out) is a batch the broker refused: logged, and its
    users pending again. Before, the exception ended the pass with the users marked scored, and
    they got no vector until their next event."""
    model, cache = LoadedModel.load(tiny_model_dir), StateCache(10**9)

    async def closed(*args, **kwargs):
        raise RuntimeError("ProducerClosed")

    monkeypatch.setattr(scoring.app, "states", cache)
    monkeypatch.setattr(scoring.app, "output_partitions", 1, raising=False)
    monkeypatch.setattr(scoring.app, "producer", SimpleNamespace(_ensure_producer=lambda: None))
    monkeypatch.setattr(scoring, "is_ready", lambda: True)
    monkeypatch.setattr(scoring, "lookup", lambda p, key: cache.get(key).state)
    monkeypatch.setattr(scoring, "send_batches", closed)

    async def run():
        running, st = scored_batch(model, cache)
        published, _ = await scoring.publish(running, model, scoring.app.consumer_generation_id)
        await asyncio.sleep(0)  # the batch's callbacks
        return published, st

    with caplog.at_level(logging.ERROR, logger="interest_stream.scoring"):
        published, st = asyncio.run(run())
    assert published == 1 and state.is_pending(st) and b"u" in cache.pending[0]
    assert [r.getMessage() for r in caplog.records] == [
        f"1 vectors to {scoring.settings.output_topic}[0] were not delivered (RuntimeError('ProducerClosed')); "
        "their users are scored again"]


MODEL_S = 0.05  # a batch's model run in the paced pass below


@pytest.mark.parametrize("backlog, paced", [(10**6, True), (0, False)])
def test_a_paced_pass_counts_the_models_run_in_its_share(monkeypatch, backlog, paced):
    """Six batches whose model runs take 0.05 s of CPU each (the scoring thread) and whose encoding takes
    next to nothing (the event loop). While input waits (a backlog above INTEREST_SCORE_PACE_BACKLOG)
    the pass pauses after each batch, counting as the batch's work its model run (published with the
    next batch) and not only the loop's part: the first pause counts no model run yet, the five
    after it one each (checked by the order of pauses and publications, not by the loop's part being
    short: that part is wall time, and a test process waiting for a core once made the first pause's
    0.05 s long). Its work is then at most INTEREST_SCORE_SHARE (0.2) of its time, so it lasts
    at least those five pauses, 5 * 0.05 / 0.2 = 1.25 s. Before, only the loop's part was counted,
    the model ran while the pass paused, and the pass took about 0.7 s (0.73 and 0.67 s in two runs).
    Without a backlog it runs at full speed: it never pauses. (Not a bound on its wall time: with
    three test processes and their brokers on 2 cores, its 0.3 s of CPU once took 1.33 s.)"""
    n = scoring.settings.partitions
    keys = [k for k in (b"u%d" % i for i in range(2000)) if partition_for(k, n) == 0][:6 * 4]
    cache = StateCache(10**9)
    runs, pauses = [], []

    def model_run(inputs):  # MODEL_S of the scoring thread's CPU, as ONNX Runtime takes it
        runs.append(len(inputs))
        t0 = time.thread_time()
        while time.thread_time() - t0 < MODEL_S:
            pass
        return [np.zeros((len(inputs), 1))]

    def pause(work_s, cycle_s, share):
        pauses.append(work_s)
        order.append(("pause", work_s))
        return real_pause(work_s, cycle_s, share)

    async def publish(running, model, generation):  # a batch's model run, counted as its work
        published, batch_work = await real_publish(running, model, generation)
        order.append(("publish", batch_work))
        return published, batch_work

    order = []
    real_pause, real_publish = scoring.pause, scoring.publish
    monkeypatch.setattr(scoring, "pause", pause)
    monkeypatch.setattr(scoring, "publish", publish)
    monkeypatch.setattr(scoring, "settings", dataclasses.replace(scoring.settings, score_batch=4, score_share=0.2))
    monkeypatch.setattr(scoring.app, "states", cache)
    monkeypatch.setattr(scoring.app, "output_partitions", 1, raising=False)
    monkeypatch.setattr(scoring.app, "producer", SimpleNamespace(_ensure_producer=lambda: None))
    monkeypatch.setattr(scoring.app.models, "model", SimpleNamespace(run=model_run), raising=False)
    monkeypatch.setattr(scoring, "is_ready", lambda: True)
    monkeypatch.setattr(scoring, "handed_over", lambda generation: False)
    monkeypatch.setattr(scoring, "owned_partitions", lambda: {0})
    monkeypatch.setattr(scoring, "lookup", lambda p, key: cache.get(key).state)
    monkeypatch.setattr(scoring, "backlog", lambda: backlog)
    monkeypatch.setattr(scoring.state, "is_pending", lambda st: True)
    monkeypatch.setattr(scoring.core, "snapshot", lambda key, st, model, horizon: key)
    monkeypatch.setattr(scoring.core, "plan", lambda model, inputs, batch: inputs)  # the runs: the inputs
    monkeypatch.setattr(scoring.core, "gather", lambda model, inputs, runs, outputs: outputs[0])
    monkeypatch.setattr(scoring.core, "publish", lambda inputs, probs, model, lookup: [])
    for key in keys:
        cache.put(0, key, state.new_state())  # waiting for a vector (is_pending above)
    t0 = time.perf_counter()
    asyncio.run(scoring.score_pass())  # publishes nothing (core.publish above): not under test here
    elapsed = time.perf_counter() - t0
    assert runs == [4] * 6  # the six batches the bounds are worked out for
    if paced:
        # the first pause before any model run is in; each later one after a run, its work counted
        assert [kind for kind, _ in order] == ["pause"] + ["publish", "pause"] * 5 + ["publish"]
        runs_work = [work for kind, work in order if kind == "publish"]
        assert all(work >= MODEL_S for work in runs_work)
        assert all(paused >= run for paused, run in zip(pauses[1:], runs_work))
        assert 5 * MODEL_S / 0.2 <= elapsed < 60
    else:
        assert pauses == []

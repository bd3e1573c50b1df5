"""Backfills: re-score a past event-time range into a separate topic, reproducibly.

``interest-stream replay --from ISO --to ISO [--output-topic T]`` reads the three input topics
from ``from - horizon - grace`` (found with offsets-for-times: the project's producers set each
record's timestamp to the event's ``ts``) to the end of each partition as of the start (a log is
in arrival order, so an event with ``ts < to`` may follow records stamped long after it; events
at or after ``to`` are read and skipped), with its own state and a consumer group of its own
(``<app id>.replay``, offsets never committed), so the live worker's offsets and tables are
untouched.

Determinism: records of all partitions are merged in the order (record timestamp, or ``ts`` for a
record sent long after its event; event ``ts``, topic, partition, offset; a record stamped at or after
``to`` where its partition has it), the live worker's order
(:mod:`stream_app.alignment`); a partition's records keep their offset order. A record is taken only
when every unfinished partition has offered its next one, so the order depends on what the topics
hold, never on fetch timing: two replays of the same range see the same events in the same order and
compute the same states (with the worker's own :mod:`stream_app.state` and :mod:`stream_app.events`
code). Scoring happens at event-time ticks, at ``from + k *
INTEREST_SCORE_INTERVAL_S`` (also before ``from``, so drift is warm) and at ``to`` (after the
last record): before the first event at or after a tick, every user with events since their last vector is scored (in
user-id order) with the one model version loaded at the start; vectors whose ``ts`` is in
``[from, to)`` are published, with an extra ``replay`` field naming the range. Dead letters are
counted, not written again: the live worker already did.

Events are applied and users scored by the live worker's own core (:mod:`stream_app.core`): the
same validation, state update, vector and drift against the user's previous vector.
"""
from __future__ import annotations

import datetime as dt
import heapq
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import orjson

from . import core, state
from .alignment import UsersWaiting, order_timestamp, tie_ts, value_ts
from .settings import InterestStreamError, Settings


class ReplayError(InterestStreamError):
    """A replay that cannot run (bad range, missing topics, no model)."""


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def parse_time(text: str, what: str) -> int:
    """ISO 8601 (a date, or a date and time; UTC unless an offset is given) -> epoch ms."""
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"{what}: {text!r} is not an ISO 8601 time (e.g. 2026-11-20T00:00:00Z)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    try:
        t = t.astimezone(dt.timezone.utc)
    except OverflowError:  # an offset that moves it out of years 1..9999
        raise ReplayError(f"{what}: {text!r} is out of range (years 1 to 9999 in UTC)") from None
    return (t - EPOCH) // dt.timedelta(milliseconds=1)  # exact, unlike timestamp() * 1000


# The tails of every deployment's own topic names: only INTEREST_TOPIC_PREFIX and INTEREST_APP_ID
# (in the changelogs' "<app id>-<table>-changelog", and Faust's "-repartition" topics) vary.
LIVE_SUFFIXES = {
    "events.click": "an input topic", "events.browse": "an input topic", "events.search": "an input topic",
    "events.dlq": "a dead-letter topic", "interest-control": "a control topic",
    "user-interests": "a live interest topic", "-changelog": "a table's changelog",
    "-repartition": "a Faust repartition topic",
}


BACKFILL_SUFFIX = "user-interests.backfill"  # every deployment's default --output-topic, after its prefix


def check_output_topic(s: Settings, topic: str) -> None:
    """A backfill goes to a topic of its own: never one the live deployment reads or writes, nor
    one named as any deployment's (another prefix's) own topics are."""
    from .settings import is_topic_name

    if not is_topic_name(topic):
        raise ReplayError(f"--output-topic {topic!r} is not a Kafka topic name (ASCII letters, digits, "
                          "'.', '_' and '-')")
    if topic.startswith("__"):  # Kafka's own: __consumer_offsets, __transaction_state, __cluster_metadata
        raise ReplayError(f"--output-topic {topic} is named as Kafka's internal topics are (starting with '__', "
                          f"as __consumer_offsets): a backfill must go to a topic of its own (default "
                          f"{s.backfill_topic})")
    own = {**{t: "an input topic" for t in s.input_topics.values()},
           s.output_topic: "the live interest topic", s.dlq_topic: "the dead-letter topic",
           s.control_topic: "the control topic"}
    what = own.get(topic) or ("an internal topic (a table's changelog)" if topic.startswith(f"{s.app_id}-") else None)
    if what:
        raise ReplayError(f"--output-topic {topic} is {what} of {s.app_id}: a backfill must go to a topic "
                          f"of its own (default {s.backfill_topic})")
    for suffix, what in LIVE_SUFFIXES.items():
        if topic.endswith(suffix):
            raise ReplayError(f"--output-topic {topic} ends in {suffix}, as {what} of a deployment does (with "
                              f"any INTEREST_TOPIC_PREFIX): a backfill must go to a topic of its own (default "
                              f"{s.backfill_topic})")
    if topic.endswith(BACKFILL_SUFFIX) and topic != s.backfill_topic:  # compacted, so nothing else would stop it
        raise ReplayError(f"--output-topic {topic} ends in {BACKFILL_SUFFIX}, as another deployment's (another "
                          f"INTEREST_TOPIC_PREFIX's) backfill topic does: this one's is {s.backfill_topic}")


def check_existing_output(s: Settings, topic: str) -> None:
    """An existing output topic must be compacted, as a backfill topic is (the latest vector per
    user): one that is not is someone's data, not a backfill this command made."""
    from .topics import POLICY, admin, topic_config

    client = admin(s)
    try:
        if topic not in client.list_topics():
            return  # created compacted (topics.ensure_output_topic)
        policy = topic_config(client, [topic], POLICY)[topic]
    finally:
        client.close()
    if "compact" not in policy.split(","):
        raise ReplayError(f"--output-topic {topic} exists and is not compacted (cleanup.policy={policy}): a "
                          f"backfill goes to a compacted topic, an existing one or a new one (created compacted; "
                          f"default {s.backfill_topic})")


def iso(ms: int) -> str:
    """UTC, to the millisecond when it has one: a `--to` of 05:47:00.500 was named 05:47:00, which
    a vector at 05:47:00.000 in the range seemed to be outside of."""
    t = EPOCH + dt.timedelta(milliseconds=ms)  # exact: ms / 1000 rounds 9999-12-31T23:59:59.999 up to 10000
    return t.isoformat(timespec="milliseconds" if ms % 1000 else "seconds").replace("+00:00", "Z")


@dataclass
class Plan:
    """What a replay reads: per input partition [start, end) offsets."""

    from_ms: int
    to_ms: int
    read_from_ms: int
    ranges: dict = field(default_factory=dict)  # TopicPartition -> (start, end)

    @property
    def events(self) -> int:
        return sum(max(0, e - s) for s, e in self.ranges.values())

    def describe(self, output_topic: str, model_version: str | None) -> str:
        lines = [
            f"replay {iso(self.from_ms)} .. {iso(self.to_ms)} (vectors with ts in [from, to))",
            f"reading from {iso(self.read_from_ms)} (from - the profile retention, or - horizon - grace if longer) "
            "to the current end of each partition",
        ]
        for tp in sorted(self.ranges, key=lambda tp: (tp.topic, tp.partition)):
            s, e = self.ranges[tp]
            lines.append(f"  {tp.topic}[{tp.partition}]  offsets {s}..{e}  ({max(0, e - s)} records)")
        lines.append(f"{self.events} records in all; output topic {output_topic}"
                     + (f"; model {model_version}" if model_version else ""))
        return "\n".join(lines)


def read_from_ms(s: Settings, from_ms: int) -> int:
    """Where a replay starts reading: the window at `from` needs the horizon, lateness the grace,
    and the long-term profile the events of the retention before it (as far as the input topics
    still hold them: reading starts at the earliest record not older than this)."""
    return max(0, from_ms - max(s.horizon_s + s.grace_s, s.profile_retention_s) * 1000)  # ts >= 0


def warmup_ms(s: Settings) -> int:
    """How long before `from` the replay scores already (the previous vector for drift): events
    older than this only build state."""
    return (s.horizon_s + s.grace_s) * 1000


def check_range(from_ms: int, to_ms: int) -> None:
    if to_ms <= from_ms:
        raise ReplayError(f"--to ({iso(to_ms)}) must be after --from ({iso(from_ms)})")


def plan(consumer, s: Settings, from_ms: int, to_ms: int) -> Plan:
    """What a replay of [from_ms, to_ms) reads (a range :func:`run` has checked: :func:`check_range`)."""
    from kafka import TopicPartition

    read_from = read_from_ms(s, from_ms)
    tps = []
    for topic in s.input_topics.values():
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise ReplayError(f"input topic {topic} does not exist")
        tps += [TopicPartition(topic, p) for p in sorted(parts)]
    begin = consumer.beginning_offsets(tps)
    end = consumer.end_offsets(tps)
    starts = consumer.offsets_for_times({tp: max(0, read_from) for tp in tps})
    p = Plan(from_ms, to_ms, read_from)
    for tp in tps:
        start = starts[tp].offset if starts[tp] is not None else end[tp]
        # to the end as of now: a partition's log is in arrival order, not ts order, so an
        # event with ts < to may follow records stamped long after it
        p.ranges[tp] = (max(start, begin[tp]), end[tp])
    return p


class Replayer:
    """The replay's own state: per-user states (with their previous vectors) and who is pending."""

    def __init__(self, s: Settings, model, from_ms: int, to_ms: int, emit, batch: int):
        self.s = s
        self.model = model
        self.from_ms, self.to_ms = from_ms, to_ms
        self.emit = emit  # (key bytes, vector dict) -> None
        self.batch = batch
        self.limits = state.Limits.from_settings(s)
        self.types = {name: etype for etype, name in s.input_topics.items()}
        self.users: dict[bytes, dict] = {}
        self.pending: dict[bytes, None] = {}  # insertion-ordered set
        # ticks at from + k * interval (also up to horizon + grace before `from`, warming up
        # drift; earlier events only build the state), and at `to`
        self.interval_ms = max(1, int(s.score_interval_s * 1000))
        self.next_tick = from_ms - (warmup_ms(s) // self.interval_ms) * self.interval_ms
        self.counts = {"accepted": 0, "duplicate": 0, "late": 0, "dead_letter": 0, "after_range": 0,
                       "vectors": 0}

    def add(self, topic: str, key: bytes | None, value: bytes | None, ts: int) -> None:
        """One record, in merged order; ``ts`` is its event time (the record timestamp for
        values that are not events)."""
        if ts >= self.to_ms:  # read only because a partition's log is not in ts order
            self.counts["after_range"] += 1
            return
        if ts >= self.next_tick:
            self.score()  # one tick suffices: ticks without new events score nobody
            self.next_tick += ((ts - self.next_tick) // self.interval_ms + 1) * self.interval_ms
        # the worker's clock only decides future_ts; a replay reads the past
        result = core.ingest(self.types[topic], key, value, self.users.get, self.limits,
                             int(time.time() * 1000), self.s.future_s * 1000)
        if result.state is not None:
            self.counts["accepted"] += 1
            self.users[key] = result.state
            self.pending[key] = None
        elif result.outcome in ("late", "duplicate"):
            self.counts[result.outcome] += 1
        else:
            self.counts["dead_letter"] += 1

    def score(self) -> None:
        """Score every pending user (sorted by key, so batches are reproducible)."""
        keys = sorted(self.pending)
        self.pending.clear()
        for i in range(0, len(keys), self.batch):
            chunk = [(k, self.users[k]) for k in keys[i : i + self.batch]]
            for key, vec, _ in core.score_states(chunk, self.model, self.limits.horizon_ms, self.batch):
                vec["replay"] = {"from": iso(self.from_ms), "to": iso(self.to_ms)}
                if self.from_ms <= vec["ts"] < self.to_ms:
                    self.emit(key, vec)
                    self.counts["vectors"] += 1

    def finish(self) -> None:
        """The tick at `to`, once every record of the range was read."""
        self.score()


BUFFERED = 20_000  # records read ahead per partition at most: a partition with more waits (paused)


def merged_records(consumer, ranges: dict, poll_ms: int = 500, buffered: int = BUFFERED,
                   after: int | None = None, allowed_ms: int | None = None):
    """``(ts, record)`` of every partition within its [start, end), ``ts`` the event's
    (:func:`stream_app.alignment.event_ts`), merged by (order timestamp, event ``ts``, topic,
    partition, offset) as the live worker's aligner applies them (:class:`stream_app.alignment.Aligner`,
    its ties by :func:`stream_app.alignment.message_event_ts`); a partition contributes in offset
    order. A record is chosen only when every unfinished partition has offered its next one, so the
    order never depends on timing, but for one thing: as the aligner does, a record goes after an
    older record of its own user (its key) read ahead in another topic's partition
    (:class:`stream_app.alignment.UsersWaiting`), which only a partition whose record timestamps run
    back can hold (a log stamped with ``ts`` and sent user by user); whether that record has been read
    ahead yet depends on the polls.
    Merged by the event's ``ts``, an event whose producer stamped it otherwise (a far-future ``ts``
    the worker dead-lettered as ``future_ts``) held back every later record of its partition until
    all the others had ended, and those were applied out of order, some as ``late``.

    The order timestamp is the record timestamp, or with ``allowed_ms`` (the window and its grace)
    the event's ``ts`` where the record timestamp is more than that after it: a historical event
    stamped when it was sent (:func:`stream_app.alignment.order_timestamp`, as the live worker
    orders). A record whose order timestamp is at or ``after`` (the range's end: from the project's
    producers, an event the replay skips) is merged as if it had the timestamp of the record before
    it in its partition, so that it holds nothing back either.

    A poll fetches from every partition not paused, so a sparse partition (searches, say) runs
    ahead in event time while the merge waits on a dense one: a partition holding ``buffered``
    records read ahead is paused until the merge has taken half of them."""
    live = {tp: e for tp, (s, e) in ranges.items() if e > s}
    buffers = {tp: deque() for tp in live}  # records read ahead, in offset order
    keys = {tp: deque() for tp in live}  # their merge keys (apart: a tuple a record costs the collector)
    stamps = {tp: deque() for tp in live}  # their events' ts (event_ts), parsed once with the key
    # partition p -> the users of its topics' partitions p, from a record of one that runs back (before
    # that no head can be held back, and nothing is kept: the merge of a log in ts order costs as before)
    waiting: dict[int, UsersWaiting] = {}
    position = {tp: ranges[tp][0] for tp in live}
    full: set = set()  # partitions paused for their buffer
    consumer.assign(list(live))
    for tp in live:
        consumer.seek(tp, ranges[tp][0])
    heap: list = []  # one head per partition: (merge key, event ts, topic, partition, offset, tp, record)
    last = dict.fromkeys(live, float("-inf"))  # each partition's last merge key
    heads: set = set()
    while True:
        for tp in list(live):
            if tp in heads:
                continue
            if buffers[tp]:
                key, ts, r = keys[tp].popleft(), stamps[tp].popleft(), buffers[tp].popleft()
                heapq.heappush(heap, (key, ts, r.topic, r.partition, r.offset, tp, r))
                heads.add(tp)
                if tp in full and len(buffers[tp]) <= buffered // 2:
                    full.discard(tp)
                    consumer.resume(tp)
            elif position[tp] >= live[tp]:
                del live[tp]  # finished
        if any(tp not in heads for tp in live):
            for tp, recs in consumer.poll(timeout_ms=poll_ms, max_records=5000).items():
                if tp not in live:
                    continue
                for r in recs:
                    if position[tp] <= r.offset < live[tp]:
                        ts = value_ts(r.value)
                        key = r.timestamp if allowed_ms is None else order_timestamp(r.timestamp, ts, allowed_ms)
                        key = key if after is None or key < after else last[tp]
                        users = waiting.get(tp.partition)
                        if users is None and key < last[tp]:
                            users = waiting[tp.partition] = _users_waiting(tp.partition, buffers, keys, heap)
                        last[tp] = key
                        buffers[tp].append(r)
                        keys[tp].append(key)
                        stamps[tp].append(tie_ts(ts, r.timestamp))
                        if users is not None:
                            users.add(tp, r.key, (key,))
                        position[tp] = r.offset + 1
            for tp in list(live):  # offsets without records (e.g. markers) at the end of a range
                if position[tp] < live[tp] and not buffers[tp] and consumer.position(tp) >= live[tp]:
                    position[tp] = live[tp]
                if position[tp] >= live[tp]:
                    consumer.pause(tp)
                elif len(buffers[tp]) >= buffered and tp not in full:
                    full.add(tp)
                    consumer.pause(tp)
            continue
        if not heap:
            return
        head = heapq.heappop(heap)
        if waiting:
            held = []  # heads with an older record of their user read ahead in another topic
            while (users := waiting.get(head[3])) is not None and users.held_back(head[5], head[6].key, head[0]):
                held.append(head)
                if not heap:
                    head = held.pop(0)  # every head held back: the oldest goes, as the aligner's
                    break
                head = heapq.heappop(heap)
            for h in held:
                heapq.heappush(heap, h)
            if head[3] in waiting:
                waiting[head[3]].taken(head[5], head[6].key)
        _, ts, *_, tp, r = head
        heads.discard(tp)
        yield ts, r


def _users_waiting(partition: int, buffers: dict, keys: dict, heap: list) -> UsersWaiting:
    """The users of what partition ``partition`` of each topic holds: its head in ``heap``, then what
    it read ahead, in offset order (each entry's first item its merge key)."""
    users = UsersWaiting()
    for head in heap:
        if head[3] == partition:
            users.add(head[5], head[6].key, head)
    for tp, buffered in buffers.items():
        if tp.partition == partition:
            for key, r in zip(keys[tp], buffered):
                users.add(tp, r.key, (key,))
    return users


def run(s: Settings, from_ms: int, to_ms: int, output_topic: str, model_dir: str, dry_run: bool = False,
        progress: bool = True, echo=print) -> dict:
    """Plan (and unless ``dry_run``, run) a replay; returns the counts. A model trained on another
    window than the settings keep is a warning on stderr, the worker's (one line)."""
    from kafka import KafkaConsumer

    from .backfill import BackfillWriter, Fenced, WriteFailed
    from .model_runtime import LoadedModel
    from .model_swap import window_mismatch
    from .topics import ensure_output_topic

    # the arguments first, then the broker: a reversed range or no model was a Kafka error without one
    check_output_topic(s, output_topic)
    check_range(from_ms, to_ms)
    if not model_dir:
        raise ReplayError("no model: give --model DIR or set INTEREST_MODEL_DIR")
    model = LoadedModel.load(model_dir, s.ort_threads)  # one version for the whole replay
    check_existing_output(s, output_topic)
    problem = window_mismatch(model.card, s.horizon_s, s.max_events, s.profile_retention_s)
    if problem:
        print(f"Warning: {problem}", file=sys.stderr)
    consumer = KafkaConsumer(group_id=f"{s.app_id}.replay", enable_auto_commit=False,
                             auto_offset_reset="earliest", **s.kafka_python_config())
    try:
        p = plan(consumer, s, from_ms, to_ms)
        echo(p.describe(output_topic, model.version))
        if dry_run:
            return {"planned": p.events}
        ensure_output_topic(s, output_topic)
        writer = BackfillWriter(s, output_topic)  # fences a replay still writing into it
        r = Replayer(s, model, from_ms, to_ms, lambda key, vec: writer.send(key, orjson.dumps(vec)), s.score_batch)
        from tqdm import tqdm

        n = 0
        try:
            with writer.guard.installed(), tqdm(total=p.events, unit="ev", unit_scale=True, disable=not progress,
                                                desc="replay", mininterval=1.0) as bar:
                for ts, rec in merged_records(consumer, p.ranges, after=to_ms, allowed_ms=r.limits.late_span_ms):
                    r.add(rec.topic, rec.key, rec.value, ts)
                    n += 1
                    if n % 1000 == 0:
                        bar.update(1000)
                        writer.tick()
                r.finish()
                bar.update(n % 1000)
            writer.finish()
        except BaseException as exc:
            aborted = writer.abort()
            left = (f"{writer.committed} vectors were committed to {output_topic}"
                    + (f" (the {aborted} of its open transaction were aborted)" if aborted else ""))
            if isinstance(exc, KeyboardInterrupt):  # click's "Aborted!" left a partial backfill unsaid
                raise ReplayError(f"interrupted after {n} of {p.events} records: {left}, a partial backfill; run "
                                  "the same replay again to complete it") from None
            if isinstance(exc, Fenced):
                raise ReplayError(f"{exc}; this replay stopped after {n} of {p.events} records: {left}, and the "
                                  "other replay's vectors follow them") from None
            if isinstance(exc, WriteFailed):
                raise ReplayError(f"{exc}; this replay stopped after {n} of {p.events} records: {left}") from None
            raise
        return {"read": n, **r.counts, "model_version": model.version, "output_topic": output_topic}
    finally:
        consumer.close()

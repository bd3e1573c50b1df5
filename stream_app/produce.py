"""Producing events to the input topics (``load jsonl``, ``simulate --rate``).

Every record is keyed by the user id, goes to the topic of its type, and carries the event's
``ts`` as its record timestamp, so Kafka's time-based retention and offsets-for-times follow
event time.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from array import array
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import orjson

from interest_core.event_check import Refusals, Rejected, check_fields
from interest_core.window import EVENT_TYPES, MAX_TS  # one input topic per type (Settings.input_topics)

from .events import too_large
from .settings import InterestStreamError, Settings


# kafka-python's default max_request_size (1 MiB), less 1 KiB for the record's key and framing: the
# producer refuses a longer line at send, after the lines before it went out (the worker's own
# limit for an event is 64 KiB: it dead-letters anything between that and this as too_large)
MAX_LINE_BYTES = 2**20 - 1024


class TooOldError(InterestStreamError):
    """Events older than the input topics' retention would be deleted on arrival."""


class Interrupted(InterestStreamError):
    """Ctrl-C while events were sent: how many went out before it (``sent``)."""

    def __init__(self, sent: int) -> None:
        super().__init__(f"interrupted: {sent} events were sent before it")
        self.sent = sent


class SendsUninterrupted:
    """Ctrl-C and SIGTERM held while kafka-python's producer is inside ``send``, and raised as
    the send returns (``with guard: prod.send(...)``, between :meth:`installed`'s start and end).

    Python raises a signal's KeyboardInterrupt at the next bytecode, wherever that is. Raised
    inside ``send`` between the ``acquire`` and the ``release`` of the lock in kafka-python 3.0's
    ``Future._add_cb_eb`` (which has no ``try``/``finally``), it left that lock held: the producer's
    sender thread blocked on it for ever when the batch completed, and ``close`` never returned
    (``bench/interrupt_send.py`` counts it; most likely why a simulator did not exit 30 s after
    SIGTERM in one freshness run). Raised after the record had joined a batch, the record went out
    uncounted (an interrupted load's count one short of what the topics held), or, in a batch not
    queued yet, never went out (a `forget` request, in a scratch check).
    Anywhere else (a pause between events, reading the log) the signal goes to its handler at once,
    as before. Signals reach only the main thread, so elsewhere this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.inside = False
        self.held: int | None = None
        self.previous: dict[int, object] = {}

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is threading.main_thread():
            # a handler not set from Python (None) cannot be put back, so that signal is left alone
            self.previous = {s: h for s in self.SIGNALS if (h := signal.getsignal(s)) is not None}
            for s in self.previous:
                signal.signal(s, self._arrived)
        try:
            yield self
        finally:
            for s, h in self.previous.items():
                signal.signal(s, h)
            self.previous = {}

    def __enter__(self):
        self.inside = True
        return self

    def __exit__(self, *exc) -> None:
        self.inside = False
        if self.held is not None:
            signum, self.held = self.held, None
            self._forward(signum, None)

    def _arrived(self, signum, frame) -> None:
        if self.inside:
            self.held = self.held or signum
        else:
            self._forward(signum, frame)

    def _forward(self, signum: int, frame) -> None:
        handler = self.previous.get(signum)
        if callable(handler):
            handler(signum, frame)  # Python's own for SIGINT raises KeyboardInterrupt; the CLI's SIGTERM does too
        elif handler == signal.SIG_DFL:  # the default: end the process as the signal would have
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)


# How long the events' producer (`load jsonl`, `simulate --rate`, the demo's stream) waits to fill
# a batch: Kafka Streams' default for its producers (StreamsConfig's linger.ms). A paced stream
# fills no batch, so every linger sends a batch of a few records to each of the 18 input
# partitions, and kafka-python's cost is per batch: at 5,000 events/s the simulator took 178 µs
# of CPU per event with 20 ms and 115 with 100 (57 of them its own simulation), the broker 27
# against 9.5 (medians, bench/producer_cpu.py). Each event reaches the broker at most this much
# later.
SEND_LINGER_MS = 100


def producer(settings: Settings, max_in_flight: int = 5, linger_ms: int = 20, **options):
    """The project's kafka-python producer; ``options`` are more of KafkaProducer's (a replay's
    transactional id)."""
    from kafka import KafkaProducer

    return KafkaProducer(
        acks="all", linger_ms=linger_ms, batch_size=256 * 1024, max_in_flight_requests_per_connection=max_in_flight,
        client_id="interest-stream-producer", **settings.kafka_python_config(), **options,
    )


def error_reason(exc: BaseException) -> str:
    """``Type: detail`` of a producer error, or ``Type`` alone when it carries no detail."""
    detail = exc.args[0] if exc.args and exc.args[0] not in (None, "") else None
    return type(exc).__name__ + (f": {detail}" if detail is not None else "")


class Deliveries:
    """The records a kafka-python producer did not deliver. Its ``flush`` does not say which sends
    failed (it logs them, or gives up with "Future not done" at a batch the broker refused), so
    each send's future reports here (``track``), and :meth:`finish` makes failures one error
    instead of a count of records that were never written."""

    def __init__(self) -> None:
        self.failed = 0
        self.first: BaseException | None = None

    def track(self, future) -> None:
        future.add_errback(self._failed)

    def _failed(self, exc: BaseException) -> None:
        self.failed += 1
        if self.first is None:
            self.first = exc

    def finish(self, prod, sent: int, what: str, topic: str, interrupted: bool = False) -> None:
        """Flush and close ``prod``; raise InterestStreamError if any of its ``sent`` records
        failed (``interrupted``: sent before a Ctrl-C), else what the flush raised, if anything."""
        from kafka.errors import KafkaError

        error = None
        try:
            prod.flush()
        except KafkaError as exc:
            error = exc
        finally:
            prod.close()  # waits for every send: each failed one has reported by now
        if self.failed:
            which = f"interrupted: {self.failed} of the {sent} {what} sent before it" if interrupted else \
                f"{self.failed} of {sent} {what}"
            raise InterestStreamError(f"{which} were not delivered to {topic} ({error_reason(self.first)})")
        if error is not None:
            raise error


def check_retention(first_ts: int, retention: dict[str, int], now_ms: int | None = None) -> None:
    """``first_ts`` must be within the shortest ``retention.ms`` of the input topics (topic ->
    its retention.ms, as the broker has it; -1 keeps records forever)."""
    kept = {topic: ms for topic, ms in retention.items() if ms >= 0}
    if not kept:
        return
    topic = min(kept, key=kept.get)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if first_ts < now_ms - kept[topic]:
        days = (now_ms - first_ts) / 86_400_000
        raise TooOldError(
            f"the log starts {days:.1f} days ago, but the input topic {topic} keeps "
            f"{kept[topic] / 86_400_000:.1f} days (its retention.ms={kept[topic]}): Kafka would delete these "
            "events right away. Raise the input topics' retention.ms (kafka-configs --alter), or pass --force "
            "to stream them anyway"
        )


PACE_SLICE_S = 1.0  # the longest single pause between two events


def _set(stop) -> bool:
    return stop is not None and stop.is_set()


def paced(events: Iterable[dict], rate: float | None, stop=None) -> Iterator[dict]:
    """``events``, event n at n / ``rate`` s after the first (None: at once), so nothing waits
    after the last one; ends early once ``stop`` (a threading.Event) is set. The pauses come in
    slices, since a pause of 1e10 s (`--rate 1e-10`) is beyond what sleep takes (OverflowError), and
    ``stop`` is heard."""
    t0 = time.monotonic()
    for n, ev in enumerate(events):
        while rate and (ahead := n / rate - (time.monotonic() - t0)) > 0.005 and not _set(stop):
            time.sleep(min(ahead, PACE_SLICE_S))
        if _set(stop):
            return
        yield ev


CLOCK_MARGIN_MS = 60_000  # how far the broker's clock may be behind the producer's


def record_timestamp(ts: int, now_ms: int, ahead_ms: int) -> int:
    """The record timestamp of an event: its ``ts`` (the contract), unless the topic would refuse
    that, more than ``ahead_ms`` (its ``message.timestamp.after.max.ms``, less a minute for the
    clocks) after ``now_ms``: then the time it is sent. The broker refuses such a record together
    with its whole batch (91 events of a 301-event log were not delivered: 90 valid ones and one
    25 hours ahead); sent, it reaches the worker, which dead-letters it as ``future_ts`` as the contract says."""
    return ts if ts <= now_ms + max(ahead_ms - CLOCK_MARGIN_MS, 0) else now_ms


def send_events(events: Iterable[dict], settings: Settings, rate: float | None = None,
                progress=None, wallclock_ts: bool = False, stop=None, topics_checked: bool = False) -> int:
    """Send events (contract schema) to their input topics; ``rate`` paces events/s.
    ``wallclock_ts`` stamps each event with the wall clock at sending (live simulation);
    ``stop`` is an optional threading.Event that ends the stream.
    Returns how many were sent; flushes before returning. Refuses missing input topics before
    sending anything (a partial load otherwise, or a 60 s wait for the first one missing), unless
    ``topics_checked``: the caller has just done so (`load jsonl`, before their retention)."""
    from .topics import input_ahead_limits, require_topics

    topics = settings.input_topics
    if not topics_checked:
        require_topics(settings, topics.values())
    ahead = input_ahead_limits(settings)
    prod = producer(settings, linger_ms=SEND_LINGER_MS)
    deliveries = Deliveries()
    sent = 0
    guard = SendsUninterrupted()
    try:
        with guard.installed():
            for ev in paced(events, rate, stop):
                if wallclock_ts:
                    ev["ts"] = int(time.time() * 1000)
                topic = topics[ev["type"]]
                value, ts = orjson.dumps(ev), record_timestamp(ev["ts"], int(time.time() * 1000), ahead[topic])
                with guard:  # an interrupt waits for the send, and finds the event counted
                    deliveries.track(prod.send(topic, key=ev["user_id"].encode(), value=value, timestamp_ms=ts))
                    sent += 1
                if progress is not None:
                    progress.update(1)
    except KeyboardInterrupt:  # click's "Aborted!" said nothing of the events already sent
        # what was sent goes out; the sends the broker refused are said, not counted as sent
        deliveries.finish(prod, sent, "events", "the input topics", interrupted=True)
        raise Interrupted(sent) from None
    except BaseException:
        prod.close()
        raise
    deliveries.finish(prod, sent, "events", "the input topics")
    return sent


def _numbered(path) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON) of each non-blank line; a line that is not JSON, or longer than
    the producer sends (MAX_LINE_BYTES), is an error naming it."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if len(line) > MAX_LINE_BYTES:
                raise InterestStreamError(f"{path}:{n}: an event of {len(line):,} bytes, more than the producer sends "
                                          f"({MAX_LINE_BYTES:,}; the worker's limit for an event is 64 KiB)")
            try:
                yield n, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InterestStreamError(f"{path}:{n}: not JSON ({exc})") from None


def read_jsonl(path) -> Iterator[dict]:
    for _, ev in _numbered(path):
        yield ev


def read_jsonl_by_ts(path) -> Iterator[dict]:
    """The events of a log :func:`check_log` has passed, in ``ts`` order, ties in the file's order.

    The worker needs each partition's records in event time across its three topics: it applies
    the head with the smallest record timestamp (the ``ts`` a project producer stamps), so a log
    sent user by user, each user's events in order, ran a user's searches ahead of the same user's
    older clicks, later in the click topic, which were then ``late`` (MovieLens sent so: 1,738 of
    11,639, before the aligner kept each user's order itself; it does so only among the records it
    has been given). One pass keeps each line's ``ts`` and offset (16 bytes an event, not the event), a
    stable sort orders them, and each line is read again where it starts."""
    ts, starts = array("q"), array("q")
    with open(path, "rb") as f:
        at = 0
        for line in f:
            if line.strip():
                ts.append(orjson.loads(line)["ts"])
                starts.append(at)
            at += len(line)
        for i in np.argsort(np.frombuffer(ts, dtype=np.int64), kind="stable"):
            f.seek(starts[i])
            yield orjson.loads(f.readline())


class LogCheck(NamedTuple):
    """What :func:`check_log` found: the events, the smallest ts, the events the worker will
    refuse (their dead letters' reasons, :class:`interest_core.event_check.Refusals`), and the
    events with a ts older than an event before them in the file (0: the log is in ts order)."""

    events: int
    first_ts: int | None
    refused: Refusals
    out_of_order: int = 0


def check_log(path) -> LogCheck:
    """Read a whole log before anything is sent. Every event must be an object with what sending
    it needs (a user id for the key, a type naming its topic, a ts for the record timestamp);
    InterestStreamError names the first line that lacks it, so a bad line in the middle of a log
    sends nothing rather than half of it. The rest of an event is the worker's to check: what it
    will refuse (``check_fields``, the worker's own check) is counted, to be said before the
    events are sent; those are sent too, and go to the dead letters."""
    n, first, newest, out_of_order = 0, None, None, 0
    refused = Refusals()
    for line_no, ev in _numbered(path):
        if not isinstance(ev, dict):
            raise InterestStreamError(f"{path}:{line_no}: an event must be a JSON object, got {type(ev).__name__}")
        user, etype, ts = ev.get("user_id"), ev.get("type"), ev.get("ts")
        if not isinstance(user, str) or not user:
            raise InterestStreamError(f"{path}:{line_no}: user_id must be a non-empty string, got {user!r}")
        if etype not in EVENT_TYPES:
            raise InterestStreamError(f"{path}:{line_no}: type must be one of {', '.join(EVENT_TYPES)}, "
                                      f"got {etype!r}")
        if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts <= MAX_TS:
            raise InterestStreamError(f"{path}:{line_no}: ts must be a non-negative integer (epoch ms), got {ts!r}")
        checked = too_large(orjson.dumps(ev)) or check_fields(ev)  # what send_events sends, as the worker checks it
        if isinstance(checked, Rejected):
            refused.add(line_no, checked)
        n += 1
        first = ts if first is None else min(first, ts)
        if newest is not None and ts < newest:
            out_of_order += 1
        else:
            newest = ts
    return LogCheck(n, first, refused, out_of_order)

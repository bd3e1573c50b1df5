"""The Faust app: topics, the ``users`` table, and the objects every part of the worker shares.

Start it with ``interest-stream worker`` or ``faust -A stream_app.app worker``. Settings come from
the environment (:mod:`stream_app.settings`), since Faust's ``-A`` needs a module-level app.

Data flow: raw message -> :mod:`stream_app.ingest` (validation and the user's state, in memory)
-> :mod:`stream_app.flush` (changed states to the ``users`` table once per ``INTEREST_FLUSH_S``,
then the input offsets become committable) ; :mod:`stream_app.scoring` turns users with new
events into interest vectors; :mod:`stream_app.control` applies forget requests;
:mod:`stream_app.web` answers HTTP. Each module registers its agents, timers and pages on ``app``.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from typing import TYPE_CHECKING

import faust
from aiohttp.web import AppRunner
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from kafka import KafkaConsumer

from . import metrics, state
from .alignment import RELEASE_EVERY, Aligner, message_event_ts, message_user
from .consumer import Consumer
from .events import MAX_DEAD_LETTER_BYTES
from .flush import LETTER_WAIT_S, Flusher
from .http_errors import json_errors
from .input_ends import END_REFRESH_S, InputEnds
from .local_state import holds_state_dir, lock_state_dir
from .logs import use_json
from .model_swap import ModelHolder
from .partitioning import partition_for
from .rerank import MAX_BODY_BYTES
from .settings import Settings
from .state_cache import StateCache
from .topics import LIMIT, TopicError, changelog_limit, check_existing, check_input_topics, partition_counts

if TYPE_CHECKING:
    from .ingest import Received

log = logging.getLogger("interest_stream")

settings = Settings.from_env()
settings.prepare_state_dir()
LIMITS = state.Limits.from_settings(settings)
FUTURE_MS = settings.future_s * 1000


def now_ms() -> int:
    """The worker's clock: used for future_ts, the dead letters' ``at`` and idle eviction only,
    never for windows (those follow the events' ``ts``)."""
    return int(time.time() * 1000)


def faust_credentials(s: Settings):
    """Faust/aiokafka credentials from the same environment variables as kafka-python's."""
    sec = s.security
    protocol = sec.get("security_protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    ssl_context = None
    if "SSL" in protocol:
        import ssl

        ssl_context = ssl.create_default_context(cafile=sec.get("ssl_cafile"))
        if sec.get("ssl_certfile"):
            ssl_context.load_cert_chain(sec["ssl_certfile"], sec.get("ssl_keyfile"))
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=sec.get("sasl_plain_username"),
            password=sec.get("sasl_plain_password"),
            mechanism=sec.get("sasl_mechanism", "PLAIN"),
            ssl_context=ssl_context,
        )
    return faust.SSLCredentials(ssl_context)


# CPython's cyclic GC runs a young collection every 700 net container allocations, and every
# full one walks every tracked container. The worker keeps hundreds of thousands of them alive
# for a long time (the decoded states' rows, the events held until their flush) and allocates
# several per event. bench/ingest.py (200,000 shuffled events, 20,000 users, commit db49f79's
# worker against itself in one run): the default thresholds gave 0.86 of the throughput with
# the GC off; these thresholds gave 1.04 of it in the next run. The worker's own data holds no
# reference cycles, so rarer collections cost only memory that reference counting frees anyway.
# At start the worker also freezes what exists then (modules, Faust's and the app's objects, which
# live as long as the process): no collection walks them again. With that and the rows as tuples
# (stream_app.state), throughput against commit 8f9dea9 in one run each (bench/ingest.py --old,
# 300,000 events, 20,000 users): 0.99 in order and 1.09 shuffled (runs differ by about 4 %).
GC_THRESHOLDS = (50_000, 20, 100)
# How long a thread holding the GIL runs before one that waits for it gets it (CPython: 5 ms).
# ONNX Runtime releases the GIL while it runs a batch in the scoring thread, and must take it
# back between sub-batches; at 5 ms it waited for the event loop's Python work most of that time,
# so inference and the loop hardly overlapped. bench/score_pass.py, live pass ÷ the model alone
# in one run: 0.798 at 5 ms, 0.871 at 1 ms, 0.913 at 0.5 ms, 0.962 at 0.2 ms (each its own run);
# ingestion at 0.5 ms: 1.04 of the worker at 5 ms (bench/ingest.py --old, one run); freshness at
# 4,500 events/s, back to back: p99 47 s at 0.5 ms against 54 s at 5 ms (a slow hour of the machine).
SWITCH_INTERVAL_S = 0.0005


class InterestApp(faust.App):
    """Faust's app plus what the write-behind state needs at start, at rebalances and at shutdown."""

    states: StateCache
    aligner: Aligner
    flusher: Flusher
    models: ModelHolder
    output_partitions: int  # of the output topic, read at start
    vector_sends: set  # batches of vectors the broker has not answered yet (stream_app.scoring)
    received: Received  # the input offsets the agent received (stream_app.ingest)
    fetch_max_wait_ms: int  # how long a fetch waits for data at most (stream_app.consumer.ConsumerThread)
    # set by `interest-stream worker`, whose create_topics has just checked every topic's config
    # and check_input_topics the input topics' partition counts: the start's check_existing and
    # check_input_topics (for `faust -A`, which runs neither) are then skipped
    topics_checked: bool = False

    def _new_transport(self):
        # Faust's consumer with a delivery that makes no tasks when it does not wait (stream_app.consumer)
        transport = super()._new_transport()
        if transport.Consumer is FaustConsumer:
            transport.Consumer = Consumer
        return transport

    def _new_web(self):
        # aiohttp decodes a request's Content-Encoding before any view runs: a br or zstd body was
        # its text/plain 400 naming a package to install, a truncated deflate body a request left
        # waiting for ever. Bodies arrive as sent; stream_app.rerank.decode_body decodes them.
        web = super()._new_web()
        # Faust's own runner (faust/web/drivers/aiohttp.py: Web.__init__), with decoding off
        web._runner = AppRunner(web.web_app, access_log=None, auto_decompress=False)
        return web

    async def on_first_start(self) -> None:
        # one worker per state directory, however it was started (before any table opens RocksDB)
        if not holds_state_dir(settings.state_dir):
            lock_state_dir(settings.state_dir)
        await super().on_first_start()
        gc.set_threshold(*GC_THRESHOLDS)
        gc.freeze()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        loop = asyncio.get_running_loop()
        # refuse input topics that are missing or not co-partitioned with the tables (unless
        # `interest-stream worker` has, with the same check)
        if not self.topics_checked:
            n = await loop.run_in_executor(None, check_input_topics, settings)
            if n != settings.partitions:
                raise TopicError(
                    f"input topics have {n} partitions but INTEREST_PARTITIONS={settings.partitions}; "
                    "the tables must be co-partitioned with the input topics"
                )
        # vectors go to the output topic's partition of their key (record batches, stream_app.scoring)
        counts = await loop.run_in_executor(None, partition_counts, settings,
                                            [settings.output_topic, settings.dlq_topic])
        out = counts[settings.output_topic]
        if out is None:
            raise TopicError(f"output topic {settings.output_topic} is missing; run `interest-stream topics create`")
        # without it every dead letter would wait in Faust's producer buffer while the offsets of
        # their messages are committed: lost at the next crash
        if counts[settings.dlq_topic] is None:
            raise TopicError(f"dead-letter topic {settings.dlq_topic} is missing; run `interest-stream topics create`")
        self.output_partitions = out
        # refused: a changelog or output topic that is not compacted loses states and vectors to
        # retention, an input topic that is compacted keeps only each user's newest event; warned of:
        # a limit below topics create's, in a deployment made before it raised them (the broker would
        # refuse large records)
        for warning in await loop.run_in_executor(None, self.topic_warnings):
            log.warning(warning)
        # local state ahead of its changelog is rebuilt from the changelog (before Faust recovers it);
        # the memory store keeps none
        if settings.store == "rocksdb://":
            from .local_state import rebuild_stale

            paths = {p: users.data.partition_path(p) for p in range(settings.partitions)}
            await loop.run_in_executor(None, rebuild_stale, settings, paths, users.changelog_topic.get_topic_name())
        # refuse to start without a readable model (ModelError names the path and the problem); the
        # one `interest-stream worker` loaded, if it did (ModelHolder.preloaded)
        await loop.run_in_executor(None, self.models.load_initial)

    def topic_warnings(self) -> list[str]:
        """:func:`check_existing`'s refusals and warnings, unless ``topics_checked``."""
        return [] if self.topics_checked else check_existing(settings)

    async def _consumer_wait_empty(self, consumer, logger) -> None:
        # Faust calls this at a rebalance and at shutdown, once no new events flow, to wait until
        # its streams acknowledged what they took: those are the cache's held events. Flushing
        # writes their states and acknowledges them (see stream_app.flush).
        from .ingest import apply_released  # messages still waiting for their topics to align

        apply_released(self.aligner.drain())
        # a batch of vectors the broker refuses makes its users wait for a vector again
        # (stream_app.scoring.on_vectors_sent): the last flush must write that, or the partitions'
        # next owner would score those users only after their next event
        sending = [fut for fut in self.vector_sends if not fut.done()]
        if sending:
            await asyncio.wait(sending, timeout=LETTER_WAIT_S)
        await self.flusher.flush("shutdown" if self.should_stop else "rebalance")
        await super()._consumer_wait_empty(consumer, logger)

    async def on_stop(self) -> None:
        await super().on_stop()
        self.received.delivered.close()  # the reader of input partitions' tails (stream_app.ingest)
        self.input_ends.close()  # the reader of their ends (stream_app.input_ends)
        if self.page_client is not None:  # stream_app.web.forwarder
            await self.page_client.close()


class InterestWorker(faust.Worker):
    """Faust's worker without the terminal spinner.

    With a log level of WARN or above and a spinner, Faust sets the root logger to DEBUG (for the
    spinner's handler), so every debug record of Faust and aiokafka is built: several records
    per event, measured at about 9% of the ingest CPU. The spinner only matters on a terminal.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)
        if settings.log_format == "json":
            use_json(logger)


app = InterestApp(
    settings.app_id,
    broker=[f"kafka://{h}" for h in settings.bootstrap_servers.split(",")],
    broker_credentials=faust_credentials(settings),
    store=settings.store,
    datadir=str(settings.state_dir),
    autodiscover=False,
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication,
    topic_allow_declare=True,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=settings.session_timeout_s,
    broker_heartbeat_interval=settings.heartbeat_s,
    broker_commit_interval=settings.commit_interval_s,
    producer_acks=-1,
    # a flush writes many changelog records at once; without linger each tends to go out in its
    # own produce request
    producer_linger=settings.linger_ms / 1000,
    producer_max_batch_size=256 * 1024,  # a flush's changelog batches: fewer, larger produce requests
    producer_max_request_size=MAX_DEAD_LETTER_BYTES,  # a dead letter of a huge key (stream_app.events)
    web_port=settings.web_port,
    web_bind=settings.web_host,
    canonical_url=settings.web_url,
    web_in_thread=False,
    # aiohttp's 1 MiB refuses valid re-ranks; its 404 and 405 were text/plain
    web_application_options={"client_max_size": MAX_BODY_BYTES, "middlewares": [json_errors]},
    # Faust's own /router and /table views: /table/users/{id}/ would serve a user's raw state
    # (search text included), and /router/{unknown}/ answers 500; the project routes itself
    web_router_enabled=False,
    web_tables_enabled=False,
    Worker=InterestWorker,
)

TOPIC_TYPES = {name: etype for etype, name in settings.input_topics.items()}
# bytes in, bytes out: orjson does the JSON, and raw user-id keys hash to the same partition
# as the producers' keys (a JSON-encoded key would not)
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
TABLE_RAW = {"key_type": bytes, "value_type": bytes}  # Faust picks the raw codec from bytes

inputs = app.topic(*settings.input_topics.values(), **RAW)
dlq = app.topic(settings.dlq_topic, **RAW)
# forget requests, co-partitioned with the table: the owner of the user gets them
control = app.topic(settings.control_topic, **RAW)


def send_letter(key: bytes | None, value: bytes):
    """A dead letter into Faust's send buffer; returns its future (a FutureMessage, done once the
    broker acknowledged it or sending failed)."""
    return dlq.send_soon(key=key, value=value)


users = app.Table(
    "users", partitions=settings.partitions, **TABLE_RAW,
    # when Faust creates the changelog (no `topics create`): the limit topics create gives it
    extra_topic_configs={LIMIT: str(changelog_limit(settings))},
    help="Per-user state: recent events, ids within window+grace, watermark, profile, last vector "
         "(written once per flush)",
)

app.fetch_max_wait_ms = settings.fetch_max_wait_ms
app.vector_sends = set()
app.states = StateCache(int(settings.state_cache_mb * 2**20), settings.max_state_bytes)
app.aligner = Aligner(tuple(settings.input_topics.values()), release_every=RELEASE_EVERY,
                      idle_s=settings.align_idle_ms / 1000, tie_key=message_event_ts, user=message_user)
app.flusher = Flusher(users, app.states, settings.control_topic,
                      producer=lambda: app.producer._ensure_producer(),  # aiokafka's, for record batches
                      consumer=lambda: app.consumer,
                      send_letter=send_letter)
app.models = ModelHolder(settings.model_dir, settings.ort_threads,
                         (settings.horizon_s, settings.max_events, settings.profile_retention_s))


@app.on_partitions_revoked.connect
async def forget_revoked(sender, revoked, **kwargs) -> None:
    """Revoked partitions were flushed and their acknowledged offsets committed
    (``_consumer_wait_empty``); their states leave memory, and so do the acknowledgements Faust
    could not commit. Faust dropped its records of the partitions before that flush
    (``Consumer.on_partitions_revoked``), and the flush's acknowledgements went into new ones. Those
    above a dead letter not delivered stay uncommitted (:meth:`stream_app.consumer.Consumer._new_offset`),
    and once the letter is dropped here nothing would stop a later commit from passing it: a
    partition back on this worker would commit them from a stale record, past the letter's event."""
    consumer = app.consumer
    for tp in revoked:
        consumer._acked.pop(tp, None)
        consumer._acked_index.pop(tp, None)
    gone = {tp.partition for tp in revoked if tp.topic in TOPIC_TYPES}
    app.states.drop_partitions(gone)
    app.flusher.unwritten -= gone  # their .unwritten files stay, for the next start (stream_app.flush)
    metrics.CACHE_BYTES.set(app.states.bytes)


def owned_inputs() -> list:
    """The input topics' partitions this worker actively owns (not standbys)."""
    return [tp for tp in app.assignor.assigned_actives() if tp.topic in TOPIC_TYPES]


def owned_partitions() -> set[int]:
    """The partition numbers of :func:`owned_inputs`."""
    return {tp.partition for tp in owned_inputs()}


def is_ready() -> bool:
    return not app.rebalancing and app.tables.recovery.completed.is_set() and not app.in_recovery


def fetch_position(tp) -> int | None:
    """aiokafka's position of ``tp``: the next offset its fetcher hands over, kept in memory (its
    ``position()`` coroutine waits for one). None while unknown (not assigned, not reset yet)."""
    try:
        state = app.consumer._thread._ensure_consumer()._subscription.subscription.assignment.state_value(tp)
        return state.position if state.has_valid_position else None
    except Exception:  # no consumer, subscription or assignment (starting, rebalancing)
        return None


app.page_client = None  # pages and explanations forwarded to their owners (stream_app.web.forwarder)
app.input_ends = InputEnds(lambda: KafkaConsumer(enable_auto_commit=False, **settings.kafka_python_config()))


@app.timer(END_REFRESH_S)
async def refresh_input_ends() -> None:
    """Ask the broker for the owned input partitions' end offsets (:mod:`stream_app.input_ends`)."""
    await app.input_ends.refresh(owned_inputs() if is_ready() else [])


def partition_lags():
    """(topic partition, messages behind its end) for each owned input partition with a known end and
    start (:func:`stream_app.metrics.lag`: from the offset after the last one read or the committed one,
    whichever is further; the fetch position while nothing was read). The end is the later of the
    one the consumer's fetches saw and the one :func:`refresh_input_ends` read."""
    consumer, asked = app.consumer, app.input_ends
    for tp in owned_inputs():
        try:
            fetched = consumer.highwater(tp)
        except Exception:  # not fetched yet
            fetched = None
        high = max((h for h in (fetched, asked.get(tp)) if h is not None), default=None)
        if high is None:
            continue
        behind = metrics.lag(high, read=consumer._read_offset.get(tp),  # last offset handed to the agent
                             committed=consumer._committed_offset.get(tp), position=fetch_position(tp))
        if behind is not None:
            yield tp, behind


def lookup_key(key: bytes) -> dict | None:
    """:func:`lookup` when only the key is at hand (the partition is computed on a cache miss)."""
    e = app.states.get(key)
    if e is not None:
        return e.state
    return lookup(partition_for(key, settings.partitions), key)


def lookup(partition: int, key: bytes) -> dict | None:
    """A user's current state: from the cache, else from the table (then cached). Reading the table
    needs no current event: without one Faust's store finds the key's partition database itself."""
    e = app.states.get(key)
    if e is not None:
        return e.state
    raw = users.get(key)
    if raw is None:
        return None
    st = state.load(raw, LIMITS)
    app.states.load(partition, key, st)
    return st


# agents, timers and pages register themselves on ``app`` when imported
from . import control as _control, idle as _idle, ingest as _ingest, scoring as _scoring, web as _web  # noqa: E402,F401

"""The Faust worker: app, topics, tables, the ingest agent, timers and web views.

Start it with ``interest-stream worker`` or ``faust -A stream_app.app worker``. Per-worker
settings come from the environment (:mod:`stream_app.settings`), since Faust's ``-A`` needs a
module-level app.

Data flow: raw message -> :func:`stream_app.events.validate` -> :func:`stream_app.state.apply`
-> ``users`` table; users with new events are listed in the ``pending`` table, which the
scoring timer (:mod:`stream_app.scoring`) turns into interest vectors.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

import faust
import orjson
from aiohttp.web import Response

from . import metrics, scoring, state, vectors as vector_math
from .events import Rejected, dead_letter, validate
from .logs import use_json
from .partitioning import partition_for
from .settings import Settings
from .topics import TopicError, check_input_topics

log = logging.getLogger("interest_stream")

settings = Settings.from_env()
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


class InterestApp(faust.App):
    async def on_first_start(self) -> None:
        await super().on_first_start()
        # refuse input topics that are missing or not co-partitioned with the tables
        loop = asyncio.get_running_loop()
        n = await loop.run_in_executor(None, check_input_topics, settings)
        if n != settings.partitions:
            raise TopicError(
                f"input topics have {n} partitions but INTEREST_PARTITIONS={settings.partitions}; "
                "the tables must be co-partitioned with the input topics"
            )
        # refuse to start without a readable model (ModelError names the path and the problem)
        holder = scoring.ModelHolder(settings.model_dir, settings.ort_threads,
                                     (settings.horizon_s, settings.max_events, settings.profile_retention_s))
        await loop.run_in_executor(None, holder.load_initial)
        scoring.set_holder(holder)


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
    datadir=settings.data_dir,
    autodiscover=False,
    topic_partitions=settings.partitions,
    topic_replication_factor=int(os.environ.get("INTEREST_REPLICATION", "1")),
    topic_allow_declare=True,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=settings.session_timeout_s,
    broker_heartbeat_interval=settings.heartbeat_s,
    broker_commit_interval=settings.commit_interval_s,
    producer_acks=-1,
    # every accepted event writes a changelog record; without linger each one tends to go out
    # in its own produce request
    producer_linger=settings.linger_ms / 1000,
    web_port=settings.web_port,
    web_bind=settings.web_host,
    canonical_url=os.environ.get("INTEREST_CANONICAL_URL") or f"http://127.0.0.1:{settings.web_port}",
    web_in_thread=False,
    Worker=InterestWorker,
)

TOPIC_TYPES = {name: etype for etype, name in settings.input_topics.items()}
# bytes in, bytes out: orjson does the JSON, and raw user-id keys hash to the same partition
# as the producers' keys (a JSON-encoded key would not)
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
TABLE_RAW = {"key_type": bytes, "value_type": bytes}  # Faust picks the raw codec from bytes

inputs = app.topic(*settings.input_topics.values(), **RAW)
dlq = app.topic(settings.dlq_topic, **RAW)
interests_topic = app.topic(settings.output_topic, **RAW)

users = app.Table(
    "users", partitions=settings.partitions, **TABLE_RAW,
    help="Per-user ingest state: recent events, ids within window+grace, event-time watermark",
)
pending = app.Table(
    "pending", partitions=settings.partitions, **TABLE_RAW,
    help="Users with events newer than their last interest vector (the scoring work list)",
)
vectors = app.Table(
    "vectors", partitions=settings.partitions, **TABLE_RAW,
    help="Each user's last published interest vector (for drift and GET /users)",
)
# Requests that change tables from outside the ingest agent (scoring results, evictions,
# forget) travel through this topic, co-partitioned with the tables, so every table write
# happens inside an agent on the owning partition. (Faust's RocksDB store cannot write
# outside an event context, and use_partitioner writes would land in the wrong local DB.)
control = app.topic(settings.control_topic, **RAW)


def reject(rejected: Rejected, topic: str, partition: int, offset: int, key, value) -> None:
    metrics.EVENTS.labels("dead_letter").inc()
    metrics.DEAD_LETTERS.labels(rejected.reason).inc()
    dlq.send_soon(
        key=key,
        value=dead_letter(rejected, topic, partition, offset, key, value, now_ms()),
    )


def process(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> str:
    """One input message through validation and the user's window; returns its outcome."""
    now = now_ms()
    result = validate(TOPIC_TYPES[topic], key, value, now, FUTURE_MS)
    if isinstance(result, Rejected):
        reject(result, topic, partition, offset, key, value)
        return result.reason
    outcome, new = state.apply(state.load(users.get(key)), result, LIMITS, now)
    if outcome == "late":
        reject(Rejected("late", "older than the user's window by more than the grace period"),
               topic, partition, offset, key, value)
        return "late"
    if outcome == "duplicate":
        metrics.EVENTS.labels("duplicate").inc()
        metrics.DUPLICATES.inc()
        return "duplicate"
    users[key] = state.dump(new)  # the one assignment of this event
    if key not in pending:
        pending[key] = b"1"
    metrics.EVENTS.labels("accepted").inc()
    return "accepted"


@app.agent(inputs)
async def ingest(stream):
    """Validate click/browse/search events into per-user windows; dead-letter the rest."""
    async for event in stream.events():
        m = event.message
        process(m.topic, m.partition, m.offset, m.key, m.value)


def owned_partitions() -> set[int]:
    """Input partitions this worker actively owns (not standbys)."""
    actives = app.assignor.assigned_actives()
    names = set(settings.input_topics.values())
    return {tp.partition for tp in actives if tp.topic in names}


def is_ready() -> bool:
    return (
        not app.rebalancing
        and app.tables.recovery.completed.is_set()
        and not app.in_recovery
    )


# -- web --------------------------------------------------------------------------------------
def json_response(body, status: int = 200) -> Response:
    return Response(body=orjson.dumps(body), status=status, content_type="application/json")


@app.page("/users/{user_id}")
@app.table_route(table=users, match_info="user_id")
async def user_view(web, request, user_id: str):
    key = user_id.encode()
    raw = users.get(key)
    if raw is None:
        return json_response({"error": "unknown user", "user_id": user_id}, status=404)
    body = {"user_id": user_id, **state.summary(state.load(raw), LIMITS.horizon_ms)}
    body["interests"] = latest_vector(key)
    return json_response(body)


def latest_vector(key: bytes):
    """The user's last published interest vector, or None."""
    raw = vectors.get(key)
    return orjson.loads(raw) if raw is not None else None


@app.page("/health")
async def health_view(web, request):
    body = {
        "ready": is_ready(),
        "model_version": scoring.model_version(),
        "partitions": sorted(owned_partitions()),
    }
    return json_response(body, status=200 if body["ready"] else 503)


@app.page("/metrics")
async def metrics_view(web, request):
    update_lag()
    return Response(body=metrics.render(), content_type="text/plain", charset="utf-8")


def partition_lags():
    """(topic partition, messages behind its end) for each owned input partition with a known end."""
    names = set(settings.input_topics.values())
    consumer = app.consumer
    for tp in app.assignor.assigned_actives():
        if tp.topic not in names:
            continue
        try:
            high = consumer.highwater(tp)
        except Exception:  # not fetched yet
            continue
        read = consumer._read_offset.get(tp)  # last offset handed to the agent
        if high is not None:
            yield tp, max(0, high - (0 if read is None else read + 1))


def update_lag() -> None:
    metrics.LAG.clear()
    for tp, lag in partition_lags():
        metrics.LAG.labels(tp.topic, str(tp.partition)).set(lag)


# -- control requests: every table write outside ingestion happens here ----------------------
def apply_control(key: bytes, value: bytes) -> str:
    """Apply one control request to the tables (inside the control agent's event)."""
    try:
        req = orjson.loads(value)
        op = req["op"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        log.error("ignored a malformed control request for key %r", key[:64] if key else key)
        return "malformed"
    if op == "scored":  # one or more users of this partition, scored in one batch
        items = req["items"] if "items" in req else [req | {"user": key.decode()}]
        for item in items:
            apply_scored(item["user"].encode(), item["seq"], item["vector"])
        return "scored"
    if op == "forget":
        forget_user(key)
        interests_topic.send_soon(key=key, value=None)  # tombstone on the compacted topic
        return "forgotten"
    if op == "evict":  # or compact: checked again here, an event may have arrived meanwhile
        raw = users.get(key)
        st = state.load(raw) if raw is not None else None
        action = state.idle_action(st, req["newest"], now_ms(), LIMITS) if st is not None else None
        if action == "evict":
            forget_user(key)
            metrics.EVICTED.inc()
            return "evicted"
        if action == "compact":
            users[key] = state.dump(state.compact(st))
            metrics.COMPACTED.inc()
            return "compacted"
        return "kept"
    log.error("ignored a control request with unknown op %r", op)
    return "malformed"


def apply_scored(key: bytes, seq: int, vector: dict) -> None:
    raw = users.get(key)
    if raw is None:  # forgotten or evicted since it was scored
        return
    vectors[key] = orjson.dumps(vector)
    if state.load(raw)["seq"] == seq and key in pending:
        del pending[key]


def forget_user(key: bytes) -> None:
    for table in (users, pending, vectors):
        if key in table:
            del table[key]  # a changelog tombstone: gone after restarts and on standbys


@app.agent(control)
async def control_agent(stream):
    """Apply scoring results, evictions and forget requests to the tables."""
    async for event in stream.events():
        apply_control(event.message.key, event.message.value)


def send_control(key: bytes, request: dict) -> None:
    control.send_soon(key=key, value=orjson.dumps(request))


# -- scoring --------------------------------------------------------------------------------
_inflight: dict[bytes, int] = {}  # user -> seq scored but not yet confirmed by the control agent


def users_to_score(owned: set[int]) -> list[bytes]:
    """Pending users on owned partitions, grouped by partition (their states load per batch)."""
    keys = [(partition_for(k, settings.partitions), k) for k in list(pending.keys())]
    return [k for p, k in sorted(keys) if p in owned]


def backlog() -> int:
    """Input messages waiting on this worker's partitions."""
    return sum(lag for _, lag in partition_lags())


async def score_pass() -> int:
    """Score every user with new events on the partitions this worker owns; returns how many.

    Inference must not starve consumption: while more than INTEREST_SCORE_PACE_BACKLOG input
    messages wait, the pass pauses after each batch so that it takes at most INTEREST_SCORE_SHARE
    of the time; otherwise it runs at full speed (fresher vectors)."""
    holder = scoring.holder()
    if holder is None or holder.model is None or not is_ready():
        return 0
    model = holder.model  # one model for the whole pass, even if a swap happens meanwhile
    todo = users_to_score(owned_partitions())
    loop = asyncio.get_running_loop()
    batch = settings.score_batch
    share = settings.score_share
    done = 0
    for i in range(0, len(todo), batch):
        if not is_ready():  # a rebalance started: the new owner scores these users
            break
        t_start = time.perf_counter()
        chunk = []
        for key in todo[i : i + batch]:
            raw = users.get(key)
            if raw is None:
                continue
            st = state.load(raw)
            if _inflight.get(key) != st["seq"]:
                chunk.append((key, st))
        if not chunk:
            continue
        windows = [state.window_events(st) for _, st in chunk]
        profiles = [state.profile(st) for _, st in chunk]
        t0 = time.perf_counter()
        # encoding and inference run in a thread: consumption goes on meanwhile
        probs = await loop.run_in_executor(None, model.predict, windows, profiles, batch)
        metrics.SCORE_LATENCY.observe(time.perf_counter() - t0)
        metrics.SCORE_BATCHES.inc()
        confirmations: dict[int, list] = {}  # partition -> scored items (one control message each)
        for (key, st), row in zip(chunk, probs):
            if key not in users:  # forgotten meanwhile
                continue
            prev = vectors.get(key)
            vec = vector_math.user_vector(key, st, row, model, LIMITS.horizon_ms,
                                          orjson.loads(prev) if prev is not None else None)
            interests_topic.send_soon(key=key, value=orjson.dumps(vec))
            confirmations.setdefault(partition_for(key, settings.partitions), []).append(
                {"user": key.decode(), "seq": st["seq"], "vector": vec})
            _inflight[key] = st["seq"]
            done += 1
        for items in confirmations.values():  # keyed by a user of that partition: same partition
            send_control(items[0]["user"].encode(), {"op": "scored", "items": items})
        metrics.SCORED_USERS.inc(len(chunk))
        spent = time.perf_counter() - t_start
        if share < 1 and backlog() > settings.pace_backlog:
            metrics.SCORE_PACED.inc()
            await asyncio.sleep(spent * (1 - share) / share)
        else:
            await asyncio.sleep(0)
    if len(_inflight) > 4 * max(1, len(todo)) + 10_000:
        _inflight.clear()  # confirmations done long ago; bound the memory
    return done


# Passes start every INTEREST_SCORE_INTERVAL_S from the start of the previous one (Faust's timer
# would wait a whole interval after a pass ends, so a long pass would stretch the cycle); a
# pass that overruns is followed by the next one at the next tick.
SCORE_TICK_S = min(1.0, settings.score_interval_s)
_next_pass = [0.0]


@app.timer(SCORE_TICK_S)
async def score_timer():
    """Publish interest vectors for users with new events (on owned partitions only)."""
    t0 = time.monotonic()
    if t0 < _next_pass[0]:
        return
    _next_pass[0] = t0 + settings.score_interval_s
    metrics.SCORING_ACTIVE.set(1)
    try:
        n = await score_pass()
    finally:
        metrics.SCORING_ACTIVE.set(0)
    if n:
        took = time.monotonic() - t0
        metrics.SCORE_PASS.observe(took)
        log.info("scored %d users in %.1f s", n, took)


@app.timer(settings.model_poll_s)
async def model_poll_timer():
    """Pick up a re-pointed INTEREST_MODEL_DIR; refuse a bad pair and keep serving."""
    holder = scoring.holder()
    if holder is not None:
        await asyncio.get_running_loop().run_in_executor(None, holder.poll)


EVICT_EVERY_S = float(os.environ.get("INTEREST_EVICT_EVERY_S", "60"))


@app.timer(EVICT_EVERY_S)
async def evict_timer():
    """Ask for the compaction of users idle longer than the horizon plus grace and the eviction
    of those idle longer than the profile retention (``state.idle_action``)."""
    if not is_ready():
        return
    owned = owned_partitions()
    now = now_ms()
    newest: dict[int, int] = {}
    seen: list[tuple[int, bytes, dict]] = []
    for i, (key, raw) in enumerate(list(users.items())):
        p = partition_for(key, settings.partitions)
        if p in owned:
            st = state.load(raw)
            newest[p] = max(newest.get(p, st["newest"]), st["newest"])
            seen.append((p, key, st))
        if i % 2000 == 1999:
            await asyncio.sleep(0)
    for p, key, st in seen:
        if state.idle_action(st, newest[p], now, LIMITS):
            send_control(key, {"op": "evict", "newest": newest[p]})

"""Prometheus metrics of one worker (served at ``GET /metrics``)."""
from __future__ import annotations

from prometheus_client import (
    CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest,
)

disable_created_metrics()  # no *_created series: they double the output and nobody graphs them

REGISTRY = CollectorRegistry()

EVENTS = Counter(
    "interest_events_total", "Input messages by outcome (accepted, duplicate, dead_letter)",
    ["outcome"], registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "interest_dead_letters_total", "Dead letters by reason", ["reason"], registry=REGISTRY,
)
DEAD_LETTERS_RESENT = Counter(
    "interest_dead_letters_resent_total", "Dead letters sent again because sending them failed",
    registry=REGISTRY,
)
CHANGELOG_FAILED = Counter(
    "interest_changelog_failures_total", "Flushes of a partition whose changelog records the broker did not take",
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "interest_duplicates_total", "Events whose event_id was already in the user's window",
    registry=REGISTRY,
)
DUPLICATES_BY_OFFSET = Counter(
    "interest_duplicates_by_offset_total", "Events read again (after a crash) whose event_id had left the user's "
    "state, known as duplicates by their input offset (stream_app.state.note_input); also in interest_duplicates_total",
    registry=REGISTRY,
)
EVICTED = Counter(
    "interest_users_evicted_total", "Idle users removed from state (idle longer than the profile retention)",
    registry=REGISTRY,
)
COMPACTED = Counter(
    "interest_users_compacted_total", "Idle users whose window rows were dropped (idle longer than horizon + grace)",
    registry=REGISTRY,
)
SCORE_BATCHES = Counter(
    "interest_scoring_batches_total", "ONNX Runtime batches run", registry=REGISTRY,
)
STATE_ROWS_TRIMMED = Counter(
    "interest_state_rows_trimmed_total",
    "Oldest rows dropped from user states larger than INTEREST_MAX_STATE_BYTES (their counts miss them)",
    registry=REGISTRY,
)
TOMBSTONES_FAILED = Counter(
    "interest_tombstones_failed_total", "Tombstones of forgotten users the output topic did not take",
    registry=REGISTRY,
)
VECTORS_FAILED = Counter(
    "interest_vectors_failed_total", "Vectors the output topic did not take (their users are scored again)",
    registry=REGISTRY,
)
SCORED_USERS = Counter(
    "interest_scored_users_total", "Interest vectors published", registry=REGISTRY,
)
SCORE_LATENCY = Histogram(
    "interest_scoring_batch_seconds", "Latency of one scoring batch (encode + inference)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
SCORING_ACTIVE = Gauge(
    "interest_scoring_active", "1 while a scoring pass runs, else 0", registry=REGISTRY,
)
SCORE_PASS = Histogram(
    "interest_scoring_pass_seconds", "Duration of a scoring pass (paced while input waits)",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160), registry=REGISTRY,
)
SCORE_PACED = Counter(
    "interest_scoring_paced_batches_total",
    "Scoring batches followed by a pause because input was waiting (INTEREST_SCORE_SHARE)",
    registry=REGISTRY,
)
LAG = Gauge(
    "interest_consumer_lag", "Messages behind the end of each owned input partition",
    ["topic", "partition"], registry=REGISTRY,
)
MODEL = Gauge(
    "interest_model_info", "The model version serving (value 1)", ["version"], registry=REGISTRY,
)
MODEL_REFUSED = Counter(
    "interest_model_refused_total", "Model pairs refused at load", registry=REGISTRY,
)

FLUSHES = Counter(
    "interest_flushes_total", "Flushes of changed user states to the table, by trigger "
    "(interval, cache_full, rebalance, shutdown, forget)", ["reason"], registry=REGISTRY,
)
FLUSH_SECONDS = Histogram(
    "interest_flush_seconds", "Duration of a flush (all partitions it covered)",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY,
)
CHANGELOG_RECORDS = Counter(
    "interest_state_records_total", "Records written to the users table (and its changelog) by flushes",
    registry=REGISTRY,
)
CHANGELOG_BYTES = Counter(
    "interest_state_bytes_total", "Bytes of user state written to the users table by flushes", registry=REGISTRY,
)
CACHE_BYTES = Gauge(
    "interest_state_cache_bytes", "Estimated memory of the cached user states and held events "
    "(bounded by INTEREST_STATE_CACHE_MB)", registry=REGISTRY,
)
CACHE_USERS = Gauge(
    "interest_state_cache_users", "User states cached in memory", registry=REGISTRY,
)
INGEST_STALLED = Gauge(
    "interest_ingest_stalled", "1 while reading waits for the changelog to take flushes (the state cache is full)",
    registry=REGISTRY,
)
CACHE_DROPPED = Counter(
    "interest_state_cache_dropped_total", "Clean user states dropped from memory to respect the bound",
    registry=REGISTRY,
)
ALIGN_WAITING = Gauge(
    "interest_align_waiting", "Input messages waiting for the other input topics of their partition "
    "(event-time alignment, stream_app.alignment)", registry=REGISTRY,
)
ALIGN_FORCED = Counter(
    "interest_align_forced_total", "Input messages applied before the other topics of their partition "
    "caught up (waited too long, or too many waiting)", registry=REGISTRY,
)
ALIGN_IDLED = Counter(
    "interest_align_idle_total", "Input messages applied after waiting INTEREST_ALIGN_IDLE_MS for a topic of "
    "their partition that had caught up (stream_app.alignment)", registry=REGISTRY,
)
INPUT_RUNNING_BACK = Counter(
    "interest_input_running_back_total", "Input records whose record timestamp is older than one before them in "
    "their partition by more than the window plus its grace: a producer that sends out of ts order, whose users' "
    "older events can then be late (stream_app.input_order)", ["topic"], registry=REGISTRY,
)
ALIGN_TAIL_READS = Counter(
    "interest_align_tail_reads_total", "Input partitions' tails read to find their last record, for a "
    "partition short of its end offset with the fetcher there (stream_app.delivered)", registry=REGISTRY,
)

for _reason in (
    "not_utf8", "not_json", "not_object", "too_large", "missing_key", "key_mismatch",
    "missing_field", "bad_type", "too_long", "unknown_type", "topic_mismatch", "future_ts", "late",
):
    DEAD_LETTERS.labels(_reason)
ACCEPTED = EVENTS.labels("accepted")  # the hot path's children, looked up once
DUPLICATE = EVENTS.labels("duplicate")
DEAD_LETTER = EVENTS.labels("dead_letter")
for _trigger in ("interval", "cache_full", "rebalance", "shutdown", "forget"):
    FLUSHES.labels(_trigger)


def lag(end: int, read: int | None = None, committed: int | None = None,
        position: int | None = None) -> int | None:
    """Messages behind ``end`` (the partition's next offset): those from the further of the offset
    after the last one ``read`` and the ``committed`` offset; each None when unknown. The consumer's
    fetch ``position`` counts only while nothing was read since the assignment: it runs a whole
    fetch ahead of what the agent received (up to a MiB of records per partition, in Faust's
    buffers), while before the first fetch it is where the consumer starts (the committed offset,
    or the first one there is). So a new consumer group on a partition whose records retention
    deleted, which has read and committed nothing, has nothing to read either. None while none of
    the three is known (a new group before the consumer found where it starts): the lag is not
    known yet, since retention may have deleted the records before ``end``."""
    if read is None and committed is None and position is None:
        return None
    nxt = (position or 0) if read is None else read + 1
    return max(0, end - max(nxt, committed or 0))


def render() -> bytes:
    return generate_latest(REGISTRY)

"""Every topic of a deployment, with its partitions and settings (`interest-stream topics create`).

Nothing in the project relies on broker auto-creation. The input topics, the control topic and
the tables' changelogs are co-partitioned (same partition count), so a user's events, state
and forget requests meet on the same partition number.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .events import MAX_DEAD_LETTER_BYTES
from .settings import DEFAULT_MAX_STATE_BYTES, InterestStreamError, Settings

# Faust table names; their changelog topics are "<app id>-<name>-changelog". (Before the
# write-behind state there were also "pending" and "vectors"; their topics are no longer used.)
TABLES = ("users",)
# One changelog record holds a user's whole state: every event id within the window plus the
# grace (stream_app.state), so a busy user's record outgrows the broker's default limit of about
# 1 MB (5,000 events a day with 128-character ids and categories: 1.4 MB). The broker refused such
# a record; the flush went on, the offsets were committed, and a restart restored the user
# without those events. 16 MiB holds about 57,000 such events (200,000 with short ids); a state
# larger than INTEREST_MAX_STATE_BYTES (1 KiB less by default) loses its oldest rows at the flush
# (stream_app.state.trim) instead of stalling its partition.
CHANGELOG_MAX_MESSAGE_BYTES = DEFAULT_MAX_STATE_BYTES + 2**10
LIMIT = "max.message.bytes"
POLICY = "cleanup.policy"
# Kafka 4 refuses a record whose timestamp is more than an hour ahead of the broker's clock (the
# broker's log.message.timestamp.after.max.ms, Long.MAX before 4.0). The project's producers set
# the record timestamp to the event's ts, and the contract takes events up to INTEREST_FUTURE_S
# (a day) ahead: `load jsonl` of an event 2 hours ahead ended in InvalidTimestampError. The input
# topics take what the worker takes (never less than Kafka's hour); the project's producers stamp
# an event further ahead with the time they send it (stream_app.produce.record_timestamp), for the
# worker to dead-letter, so none pins a segment past its retention for years.
AHEAD = "message.timestamp.after.max.ms"
KAFKA_AHEAD_MS = 3_600_000
# what each setting an existing topic may have too low is for (raised by `topics create`)
AT_LEAST = {LIMIT: "this worker's records may need",
            AHEAD: "ms (INTEREST_FUTURE_S) an event may be ahead of the clock"}
# A topic created a moment ago (`interest-stream worker` creates the missing ones, then checks every
# topic's config) may not be known yet to the broker a DescribeConfigs reaches, in a cluster of
# several: its configs come back empty, as for a topic the client may not describe. Those are asked
# again, DESCRIBE_TRIES times in all, DESCRIBE_PAUSE_S apart, before that is an error.
DESCRIBE_TRIES = 4
DESCRIBE_PAUSE_S = 0.5
# why each topic needs its cleanup.policy: what an existing topic with the other one would lose
POLICY_REASON = {"compact": "without compaction its records older than retention.ms are deleted",
                 "delete": "compaction keeps only each key's newest record"}


def changelog_limit(settings: Settings) -> int:
    """The changelog's ``max.message.bytes``: 16 MiB, or more when INTEREST_MAX_STATE_BYTES asks
    for larger states (a state, its key and the batch's header)."""
    return max(CHANGELOG_MAX_MESSAGE_BYTES, settings.max_state_bytes + 2**10)


class TopicError(InterestStreamError):
    """Topics are missing or inconsistent."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict
    # partition n of it holds the users of partition n of the input topics: the input topics, the
    # tables' changelogs, the control topic (a forget reaches the user's owner) and the live output
    # (scoring writes each partition's vectors to the same partition). The DLQ and the backfill are
    # keyed by the default partitioner, any count will do.
    co_partitioned: bool = False


def input_ahead_ms(settings: Settings) -> int:
    """The input topics' ``message.timestamp.after.max.ms``: the worker's future bound, at least
    Kafka's default hour."""
    return max(settings.future_s * 1000, KAFKA_AHEAD_MS)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    p = settings.partitions
    retention = {"retention.ms": str(settings.retention_ms), POLICY: "delete"}
    compact = {POLICY: "compact"}
    ahead = {AHEAD: str(input_ahead_ms(settings))}
    specs = [TopicSpec(t, p, retention | ahead, True) for t in settings.input_topics.values()]
    specs += [
        TopicSpec(settings.output_topic, p, dict(compact), True),
        TopicSpec(settings.backfill_topic, p, dict(compact)),
        TopicSpec(settings.dlq_topic, p, retention | {LIMIT: str(MAX_DEAD_LETTER_BYTES)}),
        TopicSpec(settings.control_topic, p, dict(retention), True),
    ]
    specs += [
        TopicSpec(settings.changelog_topic(t), p,
                  compact | {LIMIT: str(changelog_limit(settings))}, True) for t in TABLES
    ]
    return specs


def admin(settings: Settings):
    from kafka import KafkaAdminClient

    return KafkaAdminClient(client_id="interest-stream-admin", **settings.kafka_python_config())


def create_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> dict[str, str]:
    """Create the topics of ``specs`` (default: every topic of the deployment) that do not exist
    yet, with INTEREST_REPLICATION replicas, and raise the ``max.message.bytes`` and
    ``message.timestamp.after.max.ms`` of existing ones that are below their spec's (a deployment
    made before they were raised, :data:`AT_LEAST`); returns name ->
    'created' / 'exists' / 'raised'. Refuses, before anything is created, more replicas than
    brokers (when a topic is to be created: as Kafka Streams uses its replication.factor, so a
    broker that is down does not stop a worker whose topics exist), existing co-partitioned
    topics with another partition count than their spec's, and existing topics with another
    ``cleanup.policy`` (:func:`wrong_policies`)."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    specs = topic_specs(settings) if specs is None else specs
    result: dict[str, str] = {}
    client = admin(settings)
    try:
        existing = set(client.list_topics())
        present = [spec for spec in specs if spec.name in existing]
        if len(present) < len(specs):
            check_replication(settings, client)
        check_partitions(settings, client, [spec for spec in present if spec.co_partitioned])
        low = settle_configs(settings, client, present)
        raced = []
        for spec in specs:
            if spec.name in existing:
                result[spec.name] = "raised" if any(name == spec.name for name, _ in low) else "exists"
                continue
            try:
                client.create_topics(
                    [NewTopic(spec.name, spec.partitions, settings.replication, topic_configs=spec.config)]
                )
                result[spec.name] = "created"
            except TopicAlreadyExistsError:
                raced.append(spec)
                result[spec.name] = "exists"
        # made by another since the listing: its config, checked as an existing topic's (so every
        # topic's is once this returns, and `interest-stream worker` need not check them again)
        result.update(dict.fromkeys((name for name, _ in settle_configs(settings, client, raced)), "raised"))
    finally:
        client.close()
    return result


def check_partitions(settings: Settings, client, specs: list[TopicSpec]) -> None:
    """Existing co-partitioned topics must have their spec's partition count (INTEREST_PARTITIONS):
    the worker refuses to start on input topics that differ from each other or from the setting."""
    if not specs:
        return
    counts = {t["name"]: len(t["partitions"]) for t in client.describe_topics([spec.name for spec in specs])
              if not t.get("error_code")}  # (one deleted since it was listed has no count)
    _same_counts({name: counts[name] for name in settings.input_topics.values() if name in counts})
    wrong = {spec.name: counts[spec.name] for spec in specs
             if counts.get(spec.name, spec.partitions) != spec.partitions}
    if wrong:
        have = sorted(set(wrong.values()))
        listing = ", ".join(f"{t}={n}" for t, n in wrong.items())
        hint = f"set INTEREST_PARTITIONS={have[0]}" if len(have) == 1 else "recreate them"
        raise TopicError(f"existing topics have other partition counts than INTEREST_PARTITIONS="
                         f"{settings.partitions}: {listing}; they are co-partitioned by user with the "
                         f"input topics: {hint}")


def topic_configs(client, names, keys) -> dict[str, dict[str, str]]:
    """The values of the topic configs ``keys`` of each of ``names`` (existing topics), as the
    broker has them, in one DescribeConfigs request: name -> key -> value. A topic it does not
    describe (the client lacks DescribeConfigs on it, or it was deleted meanwhile, or it is too new
    for that broker: asked again, :data:`DESCRIBE_TRIES`) is a TopicError naming it: kafka-python
    leaves its config empty without a word."""
    from kafka.admin import ConfigResource, ConfigResourceType

    keys = list(keys)
    out, missing = {}, {name: keys[0] for name in names}  # name -> a key the broker did not give yet
    for attempt in range(DESCRIBE_TRIES):
        if not missing:
            break
        if attempt:
            time.sleep(DESCRIBE_PAUSE_S)
        described = client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name,
                                                            configs=dict.fromkeys(keys))
                                             for name in missing], config_filter="all").get("topic", {})
        for name in list(missing):
            values = {key: (described.get(name, {}).get(key) or {}).get("value") for key in keys}
            unread = [key for key, value in values.items() if value is None]
            if unread:
                missing[name] = unread[0]
            else:
                out[name] = values
                del missing[name]
    for name, key in missing.items():
        raise TopicError(f"cannot read {key} of topic {name}: the broker did not describe it (does "
                         "this client have DescribeConfigs on it?)")
    return out


def topic_config(client, names, key: str) -> dict[str, str]:
    """The value of the topic config ``key`` of each of ``names`` (:func:`topic_configs`)."""
    return {name: configs[key] for name, configs in topic_configs(client, names, [key]).items()}


def config_problems(client, specs: list[TopicSpec]) -> tuple[dict[str, tuple[str, str]],
                                                              dict[tuple[str, str], tuple[int, int]]]:
    """The existing topics of ``specs`` whose ``cleanup.policy`` (:func:`wrong_policies`) is not
    their spec's, or whose :data:`AT_LEAST` settings are below it (:func:`low_limits`), from one
    description."""
    keys = [POLICY, *AT_LEAST]
    have = topic_configs(client, [spec.name for spec in specs if spec.config.keys() & set(keys)], keys)
    return wrong_policies(have, specs), low_limits(have, specs)


def low_limits(have: dict[str, dict[str, str]], specs: list[TopicSpec]) -> dict[tuple[str, str], tuple[int, int]]:
    """The :data:`AT_LEAST` settings of existing topics of ``specs`` (in ``have``: name -> key ->
    value) that are below their spec's: (name, key) -> (the topic's, the spec's)."""
    wanted = {(spec.name, key): int(spec.config[key]) for spec in specs for key in AT_LEAST if key in spec.config}
    return {(name, key): (int(have[name][key]), want) for (name, key), want in wanted.items()
            if int(have[name][key]) < want}


def wrong_policies(have: dict[str, dict[str, str]], specs: list[TopicSpec]) -> dict[str, tuple[str, str]]:
    """Existing topics of ``specs`` whose ``cleanup.policy`` (in ``have``: name -> key -> value) is
    not their spec's: name -> (the topic's, the spec's). A compacted spec (the output, backfill and
    changelog topics) takes any policy that includes ``compact``; the others (input, DLQ, control)
    take no compaction."""
    wanted = {spec.name: spec.config[POLICY] for spec in specs if POLICY in spec.config}
    return {name: (have[name][POLICY], want) for name, want in wanted.items()
            if ("compact" in have[name][POLICY].split(",")) != (want == "compact")}


def settle_configs(settings: Settings, client, specs: list[TopicSpec]) -> dict[tuple[str, str], tuple[int, int]]:
    """Refuse the existing topics of ``specs`` whose ``cleanup.policy`` is not their spec's, and
    raise each :data:`AT_LEAST` setting below its spec's; returns those raised (:func:`low_limits`).
    No request for no specs."""
    wrong, low = config_problems(client, specs)
    refuse_policies(settings, wrong)
    if low:
        alter_limits(client, low)
    return low


def refuse_policies(settings: Settings, wrong: dict[str, tuple[str, str]]) -> None:
    """One line naming each topic of ``wrong`` (:func:`wrong_policies`), what it must be and the
    command that changes it."""
    if wrong:
        raise TopicError("; ".join(
            f"topic {name} has {POLICY}={have} but must be {want} ({POLICY_REASON[want]}): run `kafka-configs "
            f"--bootstrap-server {settings.bootstrap_servers} --alter --entity-type topics --entity-name {name} "
            f"--add-config {POLICY}={want}`" for name, (have, want) in wrong.items()))


def check_existing(settings: Settings) -> list[str]:
    """The worker's start (``faust -A stream_app.app worker`` runs no ``topics create``), with one
    admin client over the deployment's topics that exist: refuse those with another
    ``cleanup.policy`` than ``topics create`` gives (:func:`wrong_policies`); a warning for each
    whose ``max.message.bytes`` or ``message.timestamp.after.max.ms`` is below it (records above
    them are refused by the broker)."""
    client = admin(settings)
    try:
        existing = set(client.list_topics())
        present = [spec for spec in topic_specs(settings) if spec.name in existing]
        wrong, low = config_problems(client, present)
        refuse_policies(settings, wrong)
    finally:
        client.close()
    return [f"topic {name} has {key}={have}, below the {want} {AT_LEAST[key]}; "
            "run `interest-stream topics create` to raise it" for (name, key), (have, want) in low.items()]


def alter_limits(client, low: dict[tuple[str, str], tuple[int, int]]) -> None:
    """Set each setting of ``low`` ((topic, key) -> (the topic's, the spec's)) to its spec's value,
    one request for all (incremental changes: the topics' other settings stay)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    configs: dict[str, dict[str, str]] = {}
    for (name, key), (_, want) in low.items():
        configs.setdefault(name, {})[key] = str(want)
    results = client.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs=wanted)
                                    for name, wanted in configs.items()], incremental=True)
    failed = {name: result for name, result in results.get("topic", {}).items() if result != "OK"}
    if failed:
        raise TopicError("; ".join(
            f"cannot raise {', '.join(f'{key} to {want}' for key, want in configs[name].items())} of {name}: {result}"
            for name, result in failed.items()))


def partition_counts(settings: Settings, names) -> dict[str, int | None]:
    """Partition count per topic (None when the topic does not exist)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**settings.kafka_python_config())
    try:
        out = {}
        for name in names:
            parts = consumer.partitions_for_topic(name)
            out[name] = len(parts) if parts else None
        return out
    finally:
        consumer.close()


def require_topics(settings: Settings, names) -> None:
    """Refuse topics of ``names`` that do not exist, before anything is sent to them: a producer
    waits 60 s (its max_block_ms) for a missing topic's metadata, then stops with a timeout that
    blames the bootstrap servers."""
    missing = [t for t, n in partition_counts(settings, names).items() if n is None]
    if len(missing) == 1:
        raise TopicError(f"topic {missing[0]} does not exist; run `interest-stream topics create`")
    if missing:
        raise TopicError(f"topics {', '.join(missing)} do not exist; run `interest-stream topics create`")


def topic_values(settings: Settings, names, key: str) -> dict[str, int]:
    """The integer topic config ``key`` of each existing topic of ``names``, as the broker has it."""
    client = admin(settings)
    try:
        return {name: int(value) for name, value in topic_config(client, names, key).items()}
    finally:
        client.close()


def retention_ms(settings: Settings, names) -> dict[str, int]:
    """The ``retention.ms`` of each existing topic of ``names`` (-1: kept forever)."""
    return topic_values(settings, names, "retention.ms")


def input_ahead_limits(settings: Settings) -> dict[str, int]:
    """The ``message.timestamp.after.max.ms`` of each input topic as the broker has it (a topic made
    before `topics create` set it keeps Kafka's hour). A client that may not describe the topics
    takes Kafka's hour for each: the producers then stamp more events with the time they are sent
    (:func:`stream_app.produce.record_timestamp`), which only orders them earlier."""
    try:
        return topic_values(settings, settings.input_topics.values(), AHEAD)
    except TopicError:
        return dict.fromkeys(settings.input_topics.values(), KAFKA_AHEAD_MS)


def check_input_topics(settings: Settings) -> int:
    """The common partition count of the input topics; raises TopicError if they differ."""
    counts = partition_counts(settings, settings.input_topics.values())
    missing = [t for t, n in counts.items() if n is None]
    if missing:
        raise TopicError(
            f"input topics missing: {', '.join(missing)}; run `interest-stream topics create`"
        )
    _same_counts(counts)
    return next(iter(counts.values()))


def _same_counts(inputs: dict[str, int]) -> None:
    """The input topics' partition counts (topic -> count) must be one: they are co-partitioned."""
    if len(set(inputs.values())) > 1:
        listing = ", ".join(f"{t}={n}" for t, n in inputs.items())
        raise TopicError(f"input topics must have the same number of partitions (co-partitioned by user), got "
                         f"{listing}")


def ensure_output_topic(settings: Settings, name: str) -> str:
    """Create an interest topic (compacted, keyed by user) if missing; 'created' or 'exists'."""
    return create_topics(settings, [TopicSpec(name, settings.partitions, {POLICY: "compact"})])[name]


def check_replication(settings: Settings, client) -> None:
    """Every topic of the deployment is created with INTEREST_REPLICATION replicas (by `topics
    create`, the worker's start, and Faust for the changelogs): refuse more than there are brokers
    before any is created (the broker refuses the topic; Faust stops with a traceback)."""
    brokers = len(client.describe_cluster()["brokers"])
    if settings.replication > brokers:
        raise TopicError(f"INTEREST_REPLICATION={settings.replication} but the cluster has {brokers} "
                         f"broker{'s' if brokers != 1 else ''}: set INTEREST_REPLICATION <= {brokers}")

"""Configuration, built once from the environment (every setting documented in the README).

Each setting names its environment variable and default. Invalid values raise
:class:`ConfigError` naming the variable and the offending value, which the CLI prints
as a one-line error instead of a traceback.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from interest_core.errors import InterestStreamError
from interest_core.window import DEFAULT_GRACE_S, DEFAULT_HORIZON_S, DEFAULT_MAX_EVENTS, DEFAULT_PROFILE_RETENTION_S
from .alignment import MAX_WAIT_S as ALIGN_MAX_WAIT_S


class ConfigError(InterestStreamError, ValueError):
    """A setting from the environment or the command line has a bad value."""


def _plain(raw: str) -> str:
    """``raw`` for int() or float() as a number is written in a setting: Python's parsers also take
    digits of other scripts ('\u0665' is 5) and underscores ('5_000'), which no other reader of the
    environment (a shell, Docker, Kafka's own tools) would take for one."""
    if not raw.isascii() or "_" in raw:
        raise ValueError(raw)
    return raw


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int | None = None,
         why: str = "") -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(_plain(raw))
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}{why}, got {value}")
    return value


MAX_PORT = 65535
KAFKA_NAME = re.compile(r"[A-Za-z0-9._-]*")  # the characters Kafka allows in topic names
MAX_TOPIC_NAME = 249  # Kafka's longest topic name


def is_topic_name(name: str) -> bool:
    """A name Kafka takes for a topic (a --topic or an --output-topic given on the command line)."""
    return 0 < len(name) <= MAX_TOPIC_NAME and name not in (".", "..") and bool(KAFKA_NAME.fullmatch(name))


# The longest topic name Faust derives from the app id: its leader topic
# (faust.assignor.leader_assignor); the tables' changelogs ("<app id>-users-changelog") are shorter.
# The app (stream_app.app) has no agent without a topic and no group_by, so no other topics of Faust.
FAUST_LEADER_TOPIC = "{}-__assignor-__leader"


def _name_part(env: Mapping[str, str], name: str, default: str) -> str:
    """A setting that becomes part of topic names (and the consumer group)."""
    value = env.get(name) or default
    if not KAFKA_NAME.fullmatch(value):
        raise ConfigError(f"{name} may hold only ASCII letters, digits, '.', '_' and '-' "
                          f"(it becomes part of Kafka topic names), got {value!r}")
    return value


def _share(env: Mapping[str, str]) -> float:
    value = _float(env, "INTEREST_SCORE_SHARE", 0.2, minimum=0.01)
    if value > 1:
        raise ConfigError(f"INTEREST_SCORE_SHARE must be <= 1, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0,
           maximum: float | None = None, why: str = "") -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(_plain(raw))
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}{why}, got {value}")
    return value


MAX_LONG = 2**63 - 1  # Kafka's LONG configs (retention.ms)
MAX_INT32 = 2**31 - 1  # Kafka's INT32 fields and INT configs (partitions, max.message.bytes, max_wait_ms)
MAX_INT16 = 2**15 - 1  # Kafka's INT16 fields (a CreateTopics request's replication factor)
# The largest stored user state a flush writes: the changelog's max.message.bytes that `topics
# create` gives (stream_app.topics) less 1 KiB for the record's key and the batch's header.
# The newest INTEREST_MAX_EVENTS rows and the profile take at most about 0.5 MB, hence the minimum.
DEFAULT_MAX_STATE_BYTES = 16 * 2**20 - 2**10
MIN_MAX_STATE_BYTES = 2**20
# the changelog's max.message.bytes (this plus 1 KiB, stream_app.topics.changelog_limit) is a Kafka INT
MAX_MAX_STATE_BYTES = MAX_INT32 - 2**10
# Faust's request timeout (broker_request_timeout, its default: the app does not set it), which its
# aiokafka consumer is given as request_timeout_ms
FAUST_REQUEST_TIMEOUT_S = 90.0
# Faust refuses a session timeout above its request timeout
MAX_SESSION_TIMEOUT_S = FAUST_REQUEST_TIMEOUT_S
# A fetch is answered once the broker has waited up to fetch_max_wait_ms (an INT32 in the Fetch
# request; 3,000,000,000 was a struct.error in aiokafka's fetcher task, and a worker never ready).
# aiokafka's connection gives up on any request after request_timeout_ms (conn.py: wait_for), so
# a wait at or above it makes every fetch of an idle partition time out and the connection close:
# the smaller limit is the request timeout, less a second for the answer to arrive.
MAX_FETCH_MAX_WAIT_MS = int(FAUST_REQUEST_TIMEOUT_S * 1000) - 1000
# How long a message waits for a topic of its partition that has caught up (stream_app.alignment, as
# Kafka Streams' max.task.idle.ms, whose default is 0): at most the wait for a topic that is behind.
# A log streamed at full speed into a running worker by a producer at its defaults: a busy
# partition's batches go one per request, so a quiet partition's record, sent after them, overtakes
# them. With 0, beside a CPU-bound process, 2 of 6 runs of bench/live_eval.py --producer plain lost
# 270 and 204 events as `late`; with 500, none of 6. The cost is at most this much more wait before
# an event is applied, against vectors published every INTEREST_SCORE_INTERVAL_S (10 s).
DEFAULT_ALIGN_IDLE_MS = 500
MAX_ALIGN_IDLE_MS = int(ALIGN_MAX_WAIT_S * 1000)
# aiokafka holds the linger as float seconds (a call_later delay), so no field limits it; but the
# records that linger are Faust's own sends (dead letters above all), which a rebalance's or
# shutdown's last flush waits for only stream_app.flush.LETTER_WAIT_S (5 s), and which every Faust
# commit (producer.flush()) waits for: a longer linger leaves each recent dead letter uncommitted
# there (read again by the next owner) and holds commits back
MAX_LINGER_MS = 5_000
# ONNX Runtime's intra-op threads of the scoring session: one per core of a large host at most.
# Bounded only by a C int before, where a session with 100000 took memory without end and never
# came: creating one (tests/tiny_model.py's model, a busy 2-core host) took 0.1-0.5 s with 1-4
# threads, 1.5-3 s with 64, 4-11 s with 256, 42 s with 1024 and 59 s with 2000.
MAX_ORT_THREADS = 256


WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # a server listening on every address: this host's


def _bootstrap_servers(env: Mapping[str, str]) -> str:
    """KAFKA_BOOTSTRAP_SERVERS, parsed as kafka-python parses it, with ports in range, in ASCII
    digits."""
    from kafka.cluster import collect_hosts

    value = env.get("KAFKA_BOOTSTRAP_SERVERS") or "localhost:9092"
    try:
        hosts = collect_hosts(value, randomize=False)
    except ValueError:
        hosts = None
    if not hosts or any(not host or not 1 <= port <= MAX_PORT or not _port_written(entry, host)
                        for entry, (host, port, _) in zip(value.strip().split(","), hosts)):
        raise ConfigError(f"KAFKA_BOOTSTRAP_SERVERS must be host:port[,host:port...] with ports "
                          f"1..{MAX_PORT} in ASCII digits, got {value!r}")
    return value


PORT = re.compile(r":[0-9]+")  # the port after a bootstrap server's host


def _port_written(entry: str, host: str) -> bool:
    """Whether the port of one ``entry`` of KAFKA_BOOTSTRAP_SERVERS, if it has one, is written in
    ASCII digits: kafka-python (and aiokafka, yarl) read it with int(), which also takes '+9092',
    '9_092' and digits of other scripts ('\u0669\u0660\u0669\u0662' was port 9092). ``host`` is
    what kafka-python found in it (collect_hosts); the port follows it, after ']' for IPv6."""
    entry = re.sub("^.*://", "", entry).strip()  # as collect_hosts: the security protocol dropped
    rest = entry[len(host) + 2 * entry.startswith("["):]
    return not rest or bool(PORT.fullmatch(rest))


def _canonical_url(env: Mapping[str, str]) -> str:
    """INTEREST_CANONICAL_URL, an http(s) URL with a host and a port in range: other workers
    forward requests there, and would fail at each one (http://x:99999 was taken)."""
    from urllib.parse import urlsplit

    value = env.get("INTEREST_CANONICAL_URL") or ""
    if not value:
        return value
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 (raises ValueError for a port that is not a number in 0..65535)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.hostname or url.port == 0:
        raise ConfigError(f"INTEREST_CANONICAL_URL must be an http:// or https:// URL with a host (and a port "
                          f"1..{MAX_PORT}), got {value!r}")
    return value


def _room(part: str, topics: list[str]) -> tuple[int, str]:
    """The most characters ``part``, which starts each of ``topics``, may have for the longest of
    them to fit Kafka's limit, and what follows it in that topic."""
    longest = max(topics, key=len)
    return MAX_TOPIC_NAME - (len(longest) - len(part)), longest[len(part):]


def directory(env: Mapping[str, str], name: str, default: str) -> str:
    """A directory setting (INTEREST_DATA_DIR, the demo's INTEREST_DEMO_DIR, the local broker's
    INTEREST_KAFKA_HOME); empty is unset.
    Only spaces made a directory ' ' in the working directory, created without a word."""
    value = env.get(name) or default
    if not value.strip():
        raise ConfigError(f"{name} must be a directory path (unset or empty for {default}), got {value!r}")
    return value


def _heartbeat(env: Mapping[str, str], session_timeout_s: float) -> float:
    value = _float(env, "INTEREST_HEARTBEAT_S", 3.0, minimum=0.1)
    if value >= session_timeout_s:
        raise ConfigError(f"INTEREST_HEARTBEAT_S must be less than INTEREST_SESSION_TIMEOUT_S "
                          f"({session_timeout_s}), got {value}")
    return value


# Kafka client security settings passed through from the environment to every client the
# project makes (kafka-python admin/producers/consumers and Faust's aiokafka clients).
SECURITY_ENV = {
    "KAFKA_SECURITY_PROTOCOL": "security_protocol",  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    "KAFKA_SASL_MECHANISM": "sasl_mechanism",  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    "KAFKA_SASL_USERNAME": "sasl_plain_username",
    "KAFKA_SASL_PASSWORD": "sasl_plain_password",
    "KAFKA_SSL_CAFILE": "ssl_cafile",
    "KAFKA_SSL_CERTFILE": "ssl_certfile",
    "KAFKA_SSL_KEYFILE": "ssl_keyfile",
}


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


def _security(env: Mapping[str, str]) -> dict:
    """SECURITY_ENV's settings that are set; an unknown protocol or a file that is not there is
    refused here (a client would only time out, as if the broker could not be reached)."""
    out = {v: env[k] for k, v in SECURITY_ENV.items() if env.get(k)}
    protocol = out.get("security_protocol")
    if protocol is not None and protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}, got {protocol!r}")
    sasl = [k for k in ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD") if env.get(k)]
    if sasl and not (protocol or "").startswith("SASL_"):  # the clients would ignore them and not authenticate
        raise ConfigError(f"{sasl[0]} is set without KAFKA_SECURITY_PROTOCOL SASL_PLAINTEXT or SASL_SSL (the "
                          f"clients would ignore it), got {protocol or 'no protocol'}")
    for name in ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"):
        if env.get(name) and os.path.isdir(env[name]):  # "no such file" before
            raise ConfigError(f"{name}: {env[name]!r} is a directory; it must name a PEM file")
        if env.get(name) and not os.path.isfile(env[name]):
            raise ConfigError(f"{name}: no such file {env[name]!r}")
    _check_ssl_files(env)
    return out


class _Encrypted(Exception):
    pass


def _no_password():
    """OpenSSL asks for a key's password (even an empty one) only when the key is encrypted."""
    raise _Encrypted


def _check_ssl_files(env: Mapping[str, str]) -> None:
    """Each file loaded as the clients load it (kafka-python's and aiokafka's SSL contexts), so one
    OpenSSL cannot use is named here, not shown as a broker that cannot be reached."""
    import ssl

    cafile, certfile, keyfile = (env.get(f"KAFKA_SSL_{n}") for n in ("CAFILE", "CERTFILE", "KEYFILE"))
    if keyfile and not certfile:  # the clients would ignore it and connect without a client certificate
        raise ConfigError("KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE, the certificate it belongs to")
    key_name = "KAFKA_SSL_KEYFILE" if keyfile else "KAFKA_SSL_CERTFILE"
    checks = [("KAFKA_SSL_CAFILE", cafile, "no certificate in PEM form", "load_verify_locations", (cafile,)),
              ("KAFKA_SSL_CERTFILE", certfile, "no certificate in PEM form", "load_verify_locations", (certfile,)),
              (key_name, keyfile or certfile, "no private key in PEM form", "load_cert_chain",
               (certfile, keyfile, _no_password))]
    for name, path, what, method, args in checks:
        if not path:
            continue
        try:
            getattr(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), method)(*args)
        except _Encrypted:
            raise ConfigError(f"{name}: {path!r} holds an encrypted key, and no setting gives its password (the "
                              "clients would ask for it on a terminal)") from None
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                what = "the key is not the certificate's (KAFKA_SSL_CERTFILE)"
            because = f" ({exc.reason})" if exc.reason else ""  # none for a key it cannot read
            raise ConfigError(f"{name}: OpenSSL cannot use {path!r}: {what}{because}") from None
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read {path!r}: {exc.strerror or exc}") from None


# Kafka 4.1.1's broker, started by `kafka up` on this project's configuration, ran out of heap while
# starting at 128m and started at 192m (measured); the JVM itself refuses less than 4m
MIN_KAFKA_HEAP_MB = 192
JVM_SIZE = re.compile(r"([0-9]+)([kmgKMG])")  # (not IGNORECASE: then "k" matches the Kelvin sign)


def _kafka_heap(env: Mapping[str, str]) -> str:
    value = env.get("INTEREST_KAFKA_HEAP") or "512m"
    size = JVM_SIZE.fullmatch(value)
    if size is None:
        raise ConfigError(f"INTEREST_KAFKA_HEAP must be a JVM size such as 512m or 1g, got {value!r}")
    mb = int(size[1]) * {"k": 2**-10, "m": 1, "g": 2**10}[size[2].lower()]
    if mb < MIN_KAFKA_HEAP_MB:
        raise ConfigError(f"INTEREST_KAFKA_HEAP must be at least {MIN_KAFKA_HEAP_MB}m (the broker runs out of "
                          f"heap while starting below it), got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "localhost:9092"  # KAFKA_BOOTSTRAP_SERVERS
    topic_prefix: str = ""  # INTEREST_TOPIC_PREFIX: prefixes every topic and the app id
    app_id_base: str = "interest-stream"  # INTEREST_APP_ID (also the consumer group)
    partitions: int = 6  # INTEREST_PARTITIONS, for `topics create`
    retention_ms: int = 7 * 86_400_000  # INTEREST_RETENTION_MS of the input topics
    score_interval_s: float = 10.0  # INTEREST_SCORE_INTERVAL_S
    horizon_s: int = DEFAULT_HORIZON_S  # INTEREST_HORIZON_S
    max_events: int = DEFAULT_MAX_EVENTS  # INTEREST_MAX_EVENTS
    grace_s: int = DEFAULT_GRACE_S  # INTEREST_GRACE_S
    profile_retention_s: int = DEFAULT_PROFILE_RETENTION_S  # INTEREST_PROFILE_RETENTION_S
    future_s: int = 86_400  # events more than this ahead of the worker's clock are future_ts
    model_dir: str = ""  # INTEREST_MODEL_DIR (a symlink to a directory with model.onnx+model.json)
    model_poll_s: float = 10.0  # INTEREST_MODEL_POLL_S
    score_batch: int = 256  # INTEREST_SCORE_BATCH: users per scoring batch (cut into runs: LoadedModel.plan)
    ort_threads: int = 1  # INTEREST_ORT_THREADS: intra-op threads of the scoring session
    score_share: float = 0.2  # INTEREST_SCORE_SHARE: most of the time a pass's work takes while input waits
    pace_backlog: int = 5000  # INTEREST_SCORE_PACE_BACKLOG: input backlog above which passes are paced
    web_port: int = 6066  # INTEREST_WEB_PORT
    web_host: str = "0.0.0.0"  # INTEREST_WEB_HOST
    store: str = "rocksdb://"  # INTEREST_STORE: rocksdb:// for deployments, memory:// for tests
    # the table state; each deployment (app id) in its own subdirectory
    data_dir: str = "./interest-stream-data"  # INTEREST_DATA_DIR
    session_timeout_s: float = 30.0  # INTEREST_SESSION_TIMEOUT_S: consumer group session timeout
    heartbeat_s: float = 3.0  # INTEREST_HEARTBEAT_S
    commit_interval_s: float = 2.0  # INTEREST_COMMIT_INTERVAL_S: offset commit interval
    fetch_max_wait_ms: int = 100  # INTEREST_FETCH_MAX_WAIT_MS: longest a fetch waits for data (stream_app.consumer)
    align_idle_ms: int = DEFAULT_ALIGN_IDLE_MS  # INTEREST_ALIGN_IDLE_MS: a message's wait for a topic caught up
    # how long a command's Kafka client waits for the brokers
    bootstrap_timeout_s: float = 30.0  # INTEREST_BOOTSTRAP_TIMEOUT_S
    linger_ms: int = 10  # INTEREST_PRODUCER_LINGER_MS: batch changelog/output sends this long
    log_format: str = "text"  # INTEREST_LOG_FORMAT: text or json
    flush_s: float = 15.0  # INTEREST_FLUSH_S: changed user states reach the table (and its changelog) this often
    # decoded user states (and events waiting for a flush) kept in memory
    state_cache_mb: float = 512.0  # INTEREST_STATE_CACHE_MB
    max_state_bytes: int = DEFAULT_MAX_STATE_BYTES  # INTEREST_MAX_STATE_BYTES: the largest stored user state
    replication: int = 1  # INTEREST_REPLICATION: replication factor of every topic (stream_app.topics)
    canonical_url: str = ""  # INTEREST_CANONICAL_URL: how other workers reach this one (default: web_url)
    evict_every_s: float = 60.0  # INTEREST_EVICT_EVERY_S: how often idle users are compacted or evicted
    kafka_port: int = 9092  # INTEREST_KAFKA_PORT: the local development broker (`kafka up`, demo)
    kafka_controller_port: int = 0  # INTEREST_KAFKA_CONTROLLER_PORT (0: kafka_port + 1)
    kafka_heap: str = "512m"  # INTEREST_KAFKA_HEAP: -Xmx of the local development broker
    security: dict = field(default_factory=dict)  # KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* ...

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        log_format = env.get("INTEREST_LOG_FORMAT", "text") or "text"
        if log_format not in ("text", "json"):
            raise ConfigError(f"INTEREST_LOG_FORMAT must be 'text' or 'json', got {log_format!r}")
        store = env.get("INTEREST_STORE", "rocksdb://") or "rocksdb://"
        if store not in ("rocksdb://", "memory://"):
            raise ConfigError(f"INTEREST_STORE must be rocksdb:// or memory://, got {store!r}")
        canonical_url = _canonical_url(env)
        kafka_heap = _kafka_heap(env)
        session_timeout_s = _float(env, "INTEREST_SESSION_TIMEOUT_S", 30.0, minimum=1.0,
                                   maximum=MAX_SESSION_TIMEOUT_S, why=" (Faust's request timeout)")
        settings = cls(
            bootstrap_servers=_bootstrap_servers(env),
            topic_prefix=_name_part(env, "INTEREST_TOPIC_PREFIX", ""),
            app_id_base=_name_part(env, "INTEREST_APP_ID", "interest-stream"),
            partitions=_int(env, "INTEREST_PARTITIONS", 6, minimum=1, maximum=MAX_INT32,
                            why=" (an INT32 in Kafka's CreateTopics request)"),
            retention_ms=_int(env, "INTEREST_RETENTION_MS", 7 * 86_400_000, minimum=1, maximum=MAX_LONG),
            score_interval_s=_float(env, "INTEREST_SCORE_INTERVAL_S", 10.0, minimum=0.1),
            horizon_s=_int(env, "INTEREST_HORIZON_S", DEFAULT_HORIZON_S, minimum=1),
            max_events=_int(env, "INTEREST_MAX_EVENTS", DEFAULT_MAX_EVENTS, minimum=1),
            grace_s=_int(env, "INTEREST_GRACE_S", DEFAULT_GRACE_S, minimum=0),
            profile_retention_s=_int(env, "INTEREST_PROFILE_RETENTION_S", DEFAULT_PROFILE_RETENTION_S, minimum=1),
            future_s=_int(env, "INTEREST_FUTURE_S", 86_400, minimum=0, maximum=MAX_LONG // 1000,
                          why=" (the input topics' message.timestamp.after.max.ms, in ms, is a Kafka LONG)"),
            model_dir=env.get("INTEREST_MODEL_DIR", ""),
            model_poll_s=_float(env, "INTEREST_MODEL_POLL_S", 10.0, minimum=0.1),
            score_batch=_int(env, "INTEREST_SCORE_BATCH", 256, minimum=1),
            ort_threads=_int(env, "INTEREST_ORT_THREADS", 1, minimum=1, maximum=MAX_ORT_THREADS,
                             why=" (a thread per core of a large host; each more slows the scoring session's "
                                 "creation, a minute at 2000)"),
            score_share=_share(env),
            pace_backlog=_int(env, "INTEREST_SCORE_PACE_BACKLOG", 5000, minimum=0),
            web_port=_int(env, "INTEREST_WEB_PORT", 6066, minimum=1, maximum=MAX_PORT),
            web_host=env.get("INTEREST_WEB_HOST") or "0.0.0.0",
            store=store,
            data_dir=directory(env, "INTEREST_DATA_DIR", "./interest-stream-data"),
            session_timeout_s=session_timeout_s,
            heartbeat_s=_heartbeat(env, session_timeout_s),
            commit_interval_s=_float(env, "INTEREST_COMMIT_INTERVAL_S", 2.0, minimum=0.1),
            fetch_max_wait_ms=_int(env, "INTEREST_FETCH_MAX_WAIT_MS", 100, minimum=1, maximum=MAX_FETCH_MAX_WAIT_MS,
                                   why=" (a fetch must be answered within Faust's 90 s request timeout)"),
            align_idle_ms=_int(env, "INTEREST_ALIGN_IDLE_MS", DEFAULT_ALIGN_IDLE_MS, minimum=0,
                               maximum=MAX_ALIGN_IDLE_MS, why=" (the wait for a topic that is behind)"),
            bootstrap_timeout_s=_float(env, "INTEREST_BOOTSTRAP_TIMEOUT_S", 30.0, minimum=0.1),
            linger_ms=_int(env, "INTEREST_PRODUCER_LINGER_MS", 10, minimum=0, maximum=MAX_LINGER_MS,
                           why=" (the 5 s a rebalance or shutdown waits for the dead letters sent)"),
            log_format=log_format,
            flush_s=_float(env, "INTEREST_FLUSH_S", 15.0, minimum=0.05),
            state_cache_mb=_float(env, "INTEREST_STATE_CACHE_MB", 512.0, minimum=1.0),
            max_state_bytes=_int(env, "INTEREST_MAX_STATE_BYTES", DEFAULT_MAX_STATE_BYTES, minimum=MIN_MAX_STATE_BYTES,
                                 maximum=MAX_MAX_STATE_BYTES,
                                 why=" (the changelog's max.message.bytes, 1 KiB more, is a Kafka INT)"),
            replication=_int(env, "INTEREST_REPLICATION", 1, minimum=1, maximum=MAX_INT16,
                             why=" (an INT16 in Kafka's CreateTopics request)"),
            canonical_url=canonical_url,
            evict_every_s=_float(env, "INTEREST_EVICT_EVERY_S", 60.0, minimum=0.1),
            kafka_port=_int(env, "INTEREST_KAFKA_PORT", 9092, minimum=1, maximum=MAX_PORT),
            kafka_controller_port=_int(env, "INTEREST_KAFKA_CONTROLLER_PORT", 0, minimum=0, maximum=MAX_PORT),
            kafka_heap=kafka_heap,
            security=_security(env),
        )
        settings.check_names()
        return settings

    def check_names(self) -> None:
        """The prefix and the app id make every topic's name: refused here when one would be longer
        than Kafka's 249 characters (`topics create` made the shorter topics before the broker
        refused one, or made them all and the worker died with Faust's traceback at its leader
        topic), or when the app id is '.' or '..': Kafka refuses such topic names, and the worker's
        state (INTEREST_DATA_DIR/<app id>) was put in the data directory itself or its parent."""
        prefix, app_id = self.topic_prefix, self.app_id
        if app_id in (".", ".."):
            names = "INTEREST_TOPIC_PREFIX and INTEREST_APP_ID together" if prefix else "INTEREST_APP_ID"
            raise ConfigError(f"{names} may not make the app id '.' or '..' (not a Kafka topic name, nor a "
                              f"directory of its own in INTEREST_DATA_DIR), got {app_id!r}")
        room, rest = _room(prefix, self.prefixed_topics())
        if len(prefix) > room:
            raise ConfigError(f"INTEREST_TOPIC_PREFIX may be at most {room} characters (the topic "
                              f"<prefix>{rest} must fit Kafka's {MAX_TOPIC_NAME}), got {len(prefix)}")
        room, rest = _room(app_id, self.app_id_topics())
        if len(app_id) > room:
            names, got = "INTEREST_APP_ID", f"{len(app_id)}"
            if prefix:
                names = "INTEREST_TOPIC_PREFIX and INTEREST_APP_ID together"
                got = f"{len(prefix)} + {len(self.app_id_base)}"
            raise ConfigError(f"{names} may be at most {room} characters (Faust's topic <app id>"
                              f"{rest} must fit Kafka's {MAX_TOPIC_NAME}), got {got}")

    def prefixed_topics(self) -> list[str]:
        """The deployment's topics named by the prefix alone."""
        return [*self.input_topics.values(), self.output_topic, self.backfill_topic, self.dlq_topic,
                self.control_topic]

    def app_id_topics(self) -> list[str]:
        """The topics named by the app id: the tables' changelogs and Faust's leader topic."""
        from .topics import TABLES

        return [*(self.changelog_topic(t) for t in TABLES), self.leader_topic]

    def changelog_topic(self, table: str) -> str:
        """A table's changelog, as Faust names it (faust.tables.base)."""
        return f"{self.app_id}-{table}-changelog"

    @property
    def leader_topic(self) -> str:
        """Faust's leader topic of the app (faust.assignor.leader_assignor)."""
        return FAUST_LEADER_TOPIC.format(self.app_id)

    def controller_port_for(self, port: int) -> int:
        """The local broker's controller port beside its listener ``port``: the setting, or the next port."""
        if self.kafka_controller_port == port:  # the broker stopped with 37 lines of Java stack
            raise ConfigError(f"INTEREST_KAFKA_CONTROLLER_PORT {port} is the local broker's port too; the "
                              "controller needs a port of its own")
        if self.kafka_controller_port:
            return self.kafka_controller_port
        if port >= MAX_PORT:
            raise ConfigError(f"the local broker's port {port} leaves no next port for its controller; "
                              "set INTEREST_KAFKA_CONTROLLER_PORT")
        return port + 1

    # -- names ---------------------------------------------------------------------------
    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def app_id(self) -> str:
        return f"{self.topic_prefix}{self.app_id_base}"

    @property
    def input_topics(self) -> dict[str, str]:
        """Event type -> input topic name."""
        return {t: self.topic(f"events.{t}") for t in ("click", "browse", "search")}

    @property
    def output_topic(self) -> str:
        return self.topic("user-interests")

    @property
    def backfill_topic(self) -> str:
        """Default output of `replay`."""
        return self.topic("user-interests.backfill")

    @property
    def dlq_topic(self) -> str:
        return self.topic("events.dlq")

    @property
    def control_topic(self) -> str:
        return self.topic("interest-control")

    @property
    def state_dir(self) -> Path:
        """This deployment's local table state: ``INTEREST_DATA_DIR/<app id>``, so deployments
        with different prefixes never read each other's RocksDB offsets."""
        return Path(self.data_dir) / self.app_id

    def prepare_state_dir(self) -> Path:
        """Create :attr:`state_dir` (and its parents); ConfigError naming the path if that fails."""
        path = self.state_dir
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"INTEREST_DATA_DIR: cannot create {path}: {exc.strerror or exc}") from None
        if not os.access(path, os.W_OK):
            raise ConfigError(f"INTEREST_DATA_DIR: {path} is not writable")
        return path

    @property
    def web_url(self) -> str:
        """The URL other workers use to reach this one (stream_app.web.route forwards there), and
        the demo too: INTEREST_CANONICAL_URL, else the address the worker listens on
        (INTEREST_WEB_HOST; this host's own for 0.0.0.0 or ::). It was 127.0.0.1 whatever the web
        host: a worker listening on 127.0.0.2 gave the others an address where it did not listen."""
        if self.canonical_url:
            return self.canonical_url.rstrip("/")
        host = WILDCARD_HOSTS.get(self.web_host, self.web_host)
        return f"http://[{host}]:{self.web_port}" if ":" in host else f"http://{host}:{self.web_port}"

    # -- clients -------------------------------------------------------------------------
    def kafka_python_config(self) -> dict:
        """Keyword arguments for every kafka-python client the project makes."""
        return {"bootstrap_servers": self.bootstrap_servers.split(","),
                "bootstrap_timeout_ms": round(self.bootstrap_timeout_s * 1000), **self.security}

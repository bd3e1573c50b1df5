"""`interest-stream`: the one command-line entry point (click, as Faust uses it)."""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time

import click
import orjson

from interest_core.cli_types import EVENT_TS, LAST_DATE_MS, MAX_SPEEDUP, POSITIVE, SEED, SIM_USERS, SPEEDUP, FiniteRange

from .settings import InterestStreamError, Settings


class UserId(click.ParamType):
    """A user id as the contract has it: 1-128 characters of UTF-8 text. An argument the shell
    passed as bytes that are not UTF-8 (which Python keeps as surrogates) cannot be a message key."""

    name = "user id"

    def convert(self, value, param, ctx):
        from interest_core.window import STRING_LIMITS

        if value == "":
            self.fail("a user id cannot be empty", param, ctx)
        if len(value) > STRING_LIMITS["user_id"]:
            self.fail(f"a user id has at most {STRING_LIMITS['user_id']} characters, got {len(value)}", param, ctx)
        try:
            value.encode()
        except UnicodeEncodeError:  # shown as the shell's bytes, not as Python's surrogates
            self.fail(f"a user id is UTF-8 text, got the bytes {os.fsencode(value)!r}", param, ctx)
        return value


USER_ID = UserId()


def _topic_name(value: str | None) -> str | None:
    """A --topic Kafka could hold (``""`` read the default topic; a name Kafka refuses was said not
    to exist yet, to be made by `topics create`, which never makes it)."""
    from .settings import is_topic_name

    if value is not None and not is_topic_name(value):
        raise click.BadParameter(f"{value!r} is not a Kafka topic name (1-249 ASCII letters, digits, '.', '_' "
                                 "and '-')")
    return value


def _settings(bootstrap_servers: str | None = None) -> Settings:
    if bootstrap_servers:
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap_servers
    try:
        return Settings.from_env()
    except InterestStreamError as exc:
        raise click.ClickException(str(exc)) from None


bootstrap_option = click.option(
    "--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS", default=None,
    help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or localhost:9092).",
)


class Group(click.Group):
    """Turns the project's own errors into one-line messages instead of tracebacks."""

    def invoke(self, ctx):
        # SIGTERM (`timeout`, `kill`, a job scheduler's stop) unwinds a command as Ctrl-C does, through
        # its clean-up and its one line (a replay aborts its open transaction and says what it
        # committed, a load says how many events went); before, it ended the process on the spot,
        # saying nothing. The worker (Faust) and the demo put their own handlers in place of this one.
        main_thread = threading.current_thread() is threading.main_thread()  # (signal's own rule)
        terminated = []

        def on_sigterm(signum, frame):
            terminated.append(signum)
            signal.default_int_handler(signum, frame)  # KeyboardInterrupt, as Ctrl-C

        previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
        try:
            result = self._invoke(ctx)
            if terminated:  # a command that ends quietly on Ctrl-C (tail) was stopped all the same: it exited 0
                raise KeyboardInterrupt
            return result
        except (click.ClickException, KeyboardInterrupt) as exc:
            if not terminated:
                raise
            # a command SIGTERM cut short ends with status 143 (128 + 15), as the shell reports a
            # process the signal ended and as the demo does, so a scheduler tells a stop from a
            # failure (it was 1, click's status for an error); its own line stays
            if isinstance(exc, KeyboardInterrupt):  # a command with no line of its own
                exc = click.ClickException("stopped by SIGTERM")
            exc.exit_code = 128 + signal.SIGTERM
            raise exc from None
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)

    def _invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except InterestStreamError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            # an unreachable or refusing broker is a setting to fix, not a crash to debug
            from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, NodeNotReadyError

            if isinstance(exc, KafkaError):
                servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
                if isinstance(exc, (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError)):
                    raise click.ClickException(
                        f"Kafka at {servers}: {exc} (check KAFKA_BOOTSTRAP_SERVERS / --bootstrap-servers "
                        "or start one with `interest-stream kafka up`)"
                    ) from None
                # the broker answered and refused: its own reason, not the whole request it refused
                raise click.ClickException(
                    f"Kafka at {servers} refused: {type(exc).__name__}: {broker_reason(exc)}"
                ) from None
            raise


# The broker's error_message in kafka-python's "Request '...' failed with response '...'": the repr
# of a Python string, in double quotes when the message holds a quote ("Topic 'a_b' collides with
# existing topic: a.b", which '([^']+)' missed, and the whole request was printed)
BROKER_MESSAGE = re.compile(r"""error_message=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def broker_reason(exc: Exception) -> str:
    """The reason a broker gave for refusing a request (its error message, or the error's
    description when it gave none), or the error itself when it is not a refused request."""
    import ast

    text = str(exc)
    for literal in BROKER_MESSAGE.findall(text):
        message = ast.literal_eval(literal)
        if message:
            return message
    if "failed with response" in text:
        return getattr(exc, "description", None) or text
    return text


@click.group(cls=Group)
@click.version_option(package_name="interest-stream")
def main():
    """interest-stream: per-user interest vectors from click, browse and search streams."""


# -- kafka ------------------------------------------------------------------------------------
def _local_kafka(port: int | None = None, up: bool = False):
    """The local broker; its controller's port only for `up`, which starts it: `status` and `down`
    find it at the port it was started with (INTEREST_KAFKA_PORT=65535 without a controller port
    was refused there, for a next port they never use)."""
    from .kafka_local import LocalKafka, default_home

    s = _settings()
    port = port or s.kafka_port
    controller = {"controller_port": s.controller_port_for(port)} if up else {}
    return LocalKafka(home=default_home(), port=port, heap=s.kafka_heap, **controller)


@main.group(cls=Group)
def kafka():
    """A local single-node Apache Kafka (KRaft) for development."""


@kafka.command("up")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Broker port (default $INTEREST_KAFKA_PORT or 9092).")
def kafka_up(port):
    """Start the broker unless it runs already (fetches the jars on first use)."""
    k = _local_kafka(port, up=True)
    took = k.up()
    state = "already running" if took == 0 else f"started in {took:.1f}s"
    click.echo(f"kafka {state} at {k.bootstrap} (data in {k.home})")


@kafka.command("down")
@click.option("--purge", is_flag=True, help="Also delete the broker's data.")
def kafka_down(purge):
    """Stop the broker; keeps its data unless --purge."""
    k = _local_kafka()
    was = k.down(purge=purge)
    click.echo(("stopped" if was else "not running") + (", data purged" if purge else ""))


@kafka.command("status")
def kafka_status():
    """Say whether the broker runs and where."""
    k = _local_kafka()
    st = k.status()
    if st["running"]:
        click.echo(f"running: Kafka {st['version']} at {st['bootstrap_servers']}, pid {st['pid']}, "
                   f"data in {st['home']}")
    else:
        click.echo(f"not running (data dir {st['home']})")
        sys.exit(1)


# -- topics -----------------------------------------------------------------------------------
@main.group(cls=Group)
def topics():
    """The deployment's topics."""


@topics.command("create")
@bootstrap_option
def topics_create(bootstrap_servers):
    """Create every topic of the deployment with its partitions and settings."""
    from .topics import create_topics

    s = _settings(bootstrap_servers)
    for name, what in create_topics(s).items():
        click.echo(f"{what:8} {name}")


# -- producing --------------------------------------------------------------------------------
@main.group(cls=Group)
def load():
    """Turn a dataset into an event log, or stream a log to Kafka."""


@load.command("jsonl")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@bootstrap_option
@click.option("--rate", type=POSITIVE, default=None, help="Events per second (default: as fast as possible).")
@click.option("--force", is_flag=True, help="Stream even events older than the topics' retention.")
@click.option("--in-file-order", is_flag=True,
              help="Send the events in the file's order even where it is not ts order (the worker may then "
                   "dead-letter some as late).")
def load_jsonl(file, bootstrap_servers, rate, force, in_file_order):
    """Stream a JSONL event log to the input topics (record timestamp = ts), in ts order."""
    from tqdm import tqdm

    from .produce import Interrupted, check_log, check_retention, read_jsonl, read_jsonl_by_ts, send_events
    from .topics import require_topics, retention_ms

    if not os.path.isfile(file):  # a pipe would be empty the second time
        raise click.ClickException(f"{file} is not a regular file: the log is read twice (checked whole, then "
                                   "sent); save it to a file first")
    s = _settings(bootstrap_servers)
    n, first_ts, refused, out_of_order = check_log(file)  # the whole log, before anything is sent
    if not n:
        raise click.ClickException(f"{file} holds no events")
    require_topics(s, s.input_topics.values())  # before their retention and the progress bar
    if not force:
        check_retention(first_ts, retention_ms(s, s.input_topics.values()))  # the topics', not the setting's
    if refused.total:  # sent all the same: the dead letters keep them, with these reasons
        click.echo(f"warning: the worker will refuse {refused.total} of the {n} events of {file} (dead letters on "
                   f"{s.dlq_topic}): {refused}", err=True)
    by_ts = out_of_order and not in_file_order
    if by_ts:  # the worker orders a partition's three topics by record timestamp: a log out of order loses events
        click.echo(f"{out_of_order} of the {n} events of {file} come after a newer one: sent in ts order (ties in the "
                   "file's order), as the worker reads them; --in-file-order sends them as they are", err=True)
    with tqdm(unit="ev", desc="load") as bar:
        try:
            events = read_jsonl_by_ts(file) if by_ts else read_jsonl(file)
            n = send_events(events, s, rate=rate, progress=bar, topics_checked=True)
        except Interrupted as exc:
            which = f"the first {exc.sent} in ts order" if by_ts else f"its first {exc.sent}"
            raise click.ClickException(f"interrupted: {exc.sent} of the {n} events of {file} were sent ({which}), "
                                       "the rest were not") from None
    click.echo(f"sent {n} events")


# -- worker -----------------------------------------------------------------------------------
@main.command(context_settings={"ignore_unknown_options": True})
@bootstrap_option
@click.option("--loglevel", default="info", show_default=True)
@click.argument("faust_args", nargs=-1, type=click.UNPROCESSED)
def worker(bootstrap_servers, loglevel, faust_args):
    """Run the Faust worker (same as `faust -A stream_app.app worker`)."""
    from .model_runtime import ModelError
    from .model_swap import ModelHolder
    from .topics import check_input_topics, create_topics

    _check_faust_args(faust_args, loglevel)
    s = _settings(bootstrap_servers)
    # what this host decides first: a missing or bad model, a state directory in use or a taken port
    # left the deployment's eight topics created (under a mistyped prefix, eight strays), and behind
    # an unreachable broker the model's mistake went unsaid
    if not s.model_dir:
        raise click.ClickException(
            "INTEREST_MODEL_DIR is not set: the worker needs an exported model "
            "(model.onnx + model.json, see `interest-stream export`)"
        )
    try:  # refuse early with a clear message; the app serves this model (no second load)
        first_model = ModelHolder.load_first(s.model_dir, s.ort_threads)
    except ModelError as exc:  # "model at <path>: ..." named no setting
        raise click.ClickException(f"INTEREST_MODEL_DIR: {exc}") from None
    from .local_state import lock_state_dir

    lock_state_dir(s.prepare_state_dir())  # held until the process ends
    _check_listen(s)
    create_topics(s)  # refuses more replicas than brokers, and other partition counts, before creating
    n = check_input_topics(s)
    if n != s.partitions:
        raise click.ClickException(
            f"input topics have {n} partitions but INTEREST_PARTITIONS={s.partitions}; set "
            f"INTEREST_PARTITIONS={n} (tables must be co-partitioned with the input topics)"
        )
    from .app import app

    # checked above (create_topics: every topic's config; check_input_topics: the input topics'
    # partition counts): the app's start need not read them again
    app.topics_checked = True
    app.models.preloaded = first_model
    # JSON logs: --quiet keeps Faust's startup banner (terminal output, not a log record) out of
    # the stream, so every line parses
    quiet = ["--quiet"] if s.log_format == "json" else []
    sys.argv = ["interest-stream", *quiet, "worker", "--loglevel", loglevel, *faust_args]
    app.main()


# Faust's worker options that the settings own: given to Faust, they bypassed the checks above and
# the URL other workers are given (Faust rebuilds it from --web-port/--web-host, over
# INTEREST_CANONICAL_URL), or moved the state (--workdir changes the directory a relative
# INTEREST_DATA_DIR is read from, after it was prepared and locked)
SETTINGS_OWN = {"--web-port": "INTEREST_WEB_PORT", "-p": "INTEREST_WEB_PORT",
                "--web-host": "INTEREST_CANONICAL_URL", "-h": "INTEREST_CANONICAL_URL",
                "--web-bind": "INTEREST_WEB_HOST", "-b": "INTEREST_WEB_HOST",
                "--web-transport": "INTEREST_WEB_HOST / INTEREST_WEB_PORT",
                "--datadir": "INTEREST_DATA_DIR", "-D": "INTEREST_DATA_DIR",
                "--workdir": "INTEREST_DATA_DIR", "-W": "INTEREST_DATA_DIR"}


def _check_faust_args(faust_args, loglevel: str) -> None:
    for arg in faust_args:
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]  # (-p6067 is -p 6067)
        if name in SETTINGS_OWN:
            raise click.UsageError(f"worker {name}: set {SETTINGS_OWN[name]} instead (the worker's checks and "
                                   "the URL other workers are given follow the settings)")
    # the rest as Faust's own worker command parses them: an option it does not know, or a log level
    # it does not take, was its error only after the topics were created and the model loaded
    import faust.cli.worker  # noqa: F401 (registers the command)
    from faust.cli.base import cli as faust_cli

    try:
        faust_cli.commands["worker"].make_context("worker", ["--loglevel", loglevel, *faust_args])
    except click.ClickException as exc:
        raise click.UsageError(f"worker: {exc.format_message()}") from None


def _check_listen(s: Settings) -> None:
    """The web server's address, tried before Faust starts (which stops with a traceback there)."""
    import socket

    try:
        infos = socket.getaddrinfo(s.web_host, s.web_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Faust's server does
            sock.bind(address)
    except UnicodeError as exc:  # the IDNA codec's, for a name no resolver could be asked about
        raise click.ClickException(f"cannot listen on {s.web_host}:{s.web_port} (INTEREST_WEB_HOST / "
                                   f"INTEREST_WEB_PORT): not a host name ({exc.__cause__ or exc})") from None
    except OSError as exc:
        import errno

        hint = "; workers on one host need their own INTEREST_WEB_PORT" if exc.errno == errno.EADDRINUSE else ""
        raise click.ClickException(f"cannot listen on {s.web_host}:{s.web_port} (INTEREST_WEB_HOST / "
                                   f"INTEREST_WEB_PORT): {exc.strerror or exc}{hint}") from None


# -- reading ----------------------------------------------------------------------------------
def _consumer(s: Settings, **kw):
    from kafka import KafkaConsumer

    return KafkaConsumer(enable_auto_commit=False, **s.kafka_python_config(), **kw)


@main.command()
@bootstrap_option
@click.option("--user", type=USER_ID, default=None, help="Only this user's vectors.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest retained vector.")
@click.option("--max-messages", type=click.IntRange(min=1), default=None, help="Stop after this many.")
@click.option("--timeout", type=POSITIVE, default=None, help="Stop after this many idle seconds.")
@click.option("--topic", default=None, callback=lambda ctx, param, value: _topic_name(value),
              help="Read another interest topic (e.g. a backfill); committed records only.")
def tail(bootstrap_servers, user, from_beginning, max_messages, timeout, topic):
    """Print interest vectors as they arrive."""
    s = _settings(bootstrap_servers)
    topic = topic or s.output_topic
    # committed records only: a replay's backfill is written in transactions (stream_app.backfill), and
    # those of a replay that stopped are aborted
    consumer = _consumer(s, auto_offset_reset="earliest" if from_beginning else "latest",
                         isolation_level="read_committed",
                         consumer_timeout_ms=timeout * 1000 if timeout else float("inf"))  # 1e308 s: inf
    from kafka import TopicPartition

    parts = consumer.partitions_for_topic(topic)
    own = {s.output_topic, s.backfill_topic, s.dlq_topic, s.control_topic, *s.input_topics.values()}
    if not parts and topic not in own:  # which `topics create` never makes: it was the advice
        raise click.ClickException(f"topic {topic} does not exist (a replay's --output-topic exists once the "
                                   "replay wrote into it)")
    if not parts:
        raise click.ClickException(f"topic {topic} does not exist; run `interest-stream topics create`")
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    if user:
        from .partitioning import partition_for

        tps = [TopicPartition(topic, partition_for(user.encode(), len(parts)))]
    consumer.assign(tps)
    if from_beginning:
        consumer.seek_to_beginning(*tps)
    else:
        consumer.seek_to_end(*tps)
    n = 0
    try:
        for rec in consumer:
            try:
                key = rec.key.decode() if rec.key else None  # (a key that is not UTF-8 is no user id)
                if user and key != user:
                    continue
                line = format_vector(key, rec.value)
            except (ValueError, KeyError, TypeError, AttributeError):  # orjson's JSONDecodeError is a ValueError
                raise click.ClickException(
                    f"{rec.topic}[{rec.partition}]@{rec.offset} is not an interest vector: tail reads interest "
                    f"topics ({s.output_topic}, {s.backfill_topic} or a replay's --output-topic)") from None
            click.echo(line)
            n += 1
            if max_messages and n >= max_messages:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


def format_vector(key: str | None, value: bytes | None) -> str:
    if value is None:
        return f"{printable(key)}  (forgotten)"
    v = orjson.loads(value)
    top = ", ".join(f"{printable(c)} {v['interests'][c]:.2f}" for c in v["top"])
    return f"{printable(v['user_id']):>10}  events={v['events']:<4} drift={v['drift']:.3f}  top: {top}"


def printable(text: str | None) -> str | None:
    """``text`` with each control character escaped (``\\x1b``): an id or a category holding an
    ANSI sequence recoloured the terminal, and a pipe (click strips them) showed another id."""
    if text is None or text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _delivered_ends(s: Settings, tps: list) -> dict:
    """Per partition, the offset after the last record a consumer is given, read as the worker
    reads (read_uncommitted): what the worker will have received once it has read everything
    written so far (:mod:`stream_app.delivered`)."""
    from .delivered import delivered_ends

    reader = _consumer(s)
    try:
        return delivered_ends(reader, tps)
    finally:
        reader.close()


FORGET_ANSWER_S = 5.0  # how long a forget stopped during its request's flush waits for the broker's answer


@main.command()
@click.argument("user", type=USER_ID)
@bootstrap_option
@click.option("--timeout", type=POSITIVE, default=60.0, show_default=True, help="Seconds to wait for the tombstone.")
def forget(user, bootstrap_servers, timeout):
    """Delete one user's state everywhere, publish a tombstone and wait for it; says when the
    worker held no state for USER (a mistyped id?)."""
    from kafka import TopicPartition

    from .forget_answer import forget_report
    from .partitioning import partition_for
    from .produce import Deliveries, SendsUninterrupted, error_reason, producer
    from .topics import require_topics

    s = _settings(bootstrap_servers)
    # before anything is sent: a missing control topic made the request wait 60 s, whatever --timeout
    require_topics(s, [s.output_topic, *s.input_topics.values(), s.control_topic])
    key = user.encode()
    consumer = _consumer(s)
    parts = consumer.partitions_for_topic(s.output_topic)
    if not parts:
        raise click.ClickException(f"topic {s.output_topic} does not exist; run `interest-stream topics create`")
    tp = TopicPartition(s.output_topic, partition_for(key, len(parts)))
    consumer.assign([tp])
    consumer.seek_to_end(tp)
    consumer.position(tp)  # fix the start before asking, so the tombstone cannot be missed
    # the worker applies the request once it applied the user's events before these offsets
    clicks = s.input_topics["click"]
    n_in = len(consumer.partitions_for_topic(clicks) or ())
    if not n_in:
        raise click.ClickException(f"topic {clicks} does not exist; run `interest-stream topics create`")
    ends = _delivered_ends(s, [TopicPartition(t, partition_for(key, n_in)) for t in s.input_topics.values()])
    request = {"op": "forget", "ends": {t.topic: n for t, n in ends.items()}}
    prod, deliveries, guard = producer(s), Deliveries(), SendsUninterrupted()
    sent, stopped = None, False
    try:
        with guard.installed(), guard:  # a Ctrl-C waits for kafka-python's send (SendsUninterrupted)
            sent = prod.send(s.control_topic, key=key, value=orjson.dumps(request))
            deliveries.track(sent)
    except KeyboardInterrupt:
        if sent is None:  # nothing was sent
            prod.close()
            raise
        stopped = True  # the request is in the producer: it goes out, and the worker applies it
    except BaseException:
        prod.close()
        raise
    try:
        deliveries.finish(prod, 1, "forget requests", s.control_topic)  # before waiting for its tombstone
    except KeyboardInterrupt:  # during the flush: the request's own answer says whether it went out
        from kafka.errors import KafkaTimeoutError

        try:
            sent.get(timeout=FORGET_ANSWER_S)  # kafka-python 3.0.5 returns None, not done, once the wait ran out
        except KafkaTimeoutError:
            pass
        except Exception as exc:
            raise click.ClickException(f"interrupted: the forget request for {user} was not delivered to "
                                       f"{s.control_topic} ({error_reason(exc)})") from None
        if not sent.is_done:
            raise click.ClickException(
                f"interrupted before Kafka answered the forget request for {user}: it may still reach the worker "
                f"(`interest-stream tail --user {user} --from-beginning` shows its tombstone once it is applied)")
        stopped = True
    request_id = f"{sent.value.partition}@{sent.value.offset}"  # delivered: finish raised otherwise
    # a Ctrl-C once the request was sent stops only the wait for its tombstone (click's "Aborted!"
    # said nothing of the request, which the worker applies all the same)
    interrupted = click.ClickException(
        f"interrupted: the forget request for {user} was sent ({s.control_topic}[{sent.value.partition}]@"
        f"{sent.value.offset}); the worker forgets the user when it applies it, without this command waiting for "
        "the tombstone")
    deadline = time.monotonic() + timeout
    try:
        if stopped:
            raise interrupted
        while time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                for rec in recs:
                    if rec.key == key and rec.value is None:
                        line = forget_report(user, f"{tp.topic}[{tp.partition}]@{rec.offset}", rec.headers, request_id)
                        if line is not None:
                            click.echo(line)
                            return
    except KeyboardInterrupt:
        raise interrupted from None
    finally:
        consumer.close()
    raise click.ClickException(
        f"no tombstone for {user} within {timeout:.0f}s: is a worker running for {s.app_id}? (one still applying "
        "the user's earlier events, or whose changelog refuses the delete, says so in its log, and forgets the "
        "user once it can)"
    )


@main.command()
@click.option("--from", "from_", required=True, metavar="ISO8601",
              help="Start of the event-time range (inclusive), e.g. 2026-11-20T00:00:00Z.")
@click.option("--to", "to", required=True, metavar="ISO8601", help="End of the range (exclusive).")
@click.option("--output-topic", default=None,
              help="Topic for the vectors (default: <prefix>user-interests.backfill; created compacted if missing; "
                   "an existing one must be compacted, and no deployment's own topic).")
@click.option("--model", "model_dir", default=None,
              help="Model directory (default: $INTEREST_MODEL_DIR); its version is pinned for the whole replay.")
@click.option("--dry-run", is_flag=True, help="Say what would be read, read nothing, write nothing.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@bootstrap_option
def replay(from_, to, output_topic, model_dir, dry_run, progress, bootstrap_servers):
    """Re-score a past event-time range into a separate topic (a backfill), reproducibly."""
    from . import replay as rp
    from .model_runtime import ModelError

    s = _settings(bootstrap_servers)
    from_ms, to_ms = rp.parse_time(from_, "--from"), rp.parse_time(to, "--to")
    try:
        # (None only: an empty --output-topic replayed into the default backfill topic)
        counts = rp.run(s, from_ms, to_ms, s.backfill_topic if output_topic is None else output_topic,
                        model_dir or s.model_dir, dry_run=dry_run, progress=progress, echo=click.echo)
    except ModelError as exc:  # (only the load raises it) "model at <path>: ..." named neither
        raise click.ClickException(f"{'--model' if model_dir else 'INTEREST_MODEL_DIR'}: {exc}") from None
    if not dry_run:
        click.echo("replayed: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


# -- simulated users (file mode is models.simulate; --rate streams through stream_app.produce) --
@main.command("simulate")
@click.option("--users", type=SIM_USERS, default=1000, show_default=True, help="Simulated users.")
@click.option("--days", type=POSITIVE, default=7.0, show_default=True,
              help="Days of activity (file mode).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Event log to write (JSONL, sorted by ts); the truth goes to OUT.truth.jsonl.")
@click.option("--start-ms", type=EVENT_TS, default=None,
              help="Epoch ms of the first simulated moment (file mode default 2026-01-01T00:00Z; "
                   "streaming default: now).")
@click.option("--rate", type=POSITIVE, default=None,
              help="Stream to Kafka at R events per second instead of writing a file.")
@click.option("--speedup", type=SPEEDUP, default=60.0, show_default=True,
              help="With --rate: interest dynamics run this many times faster than the wall clock.")
@bootstrap_option
def simulate(users, days, seed, out, start_ms, rate, speedup, bootstrap_servers):
    """Synthetic users whose interests evolve: an event log plus its ground truth (OUT.truth.jsonl),
    or with --rate a live stream to Kafka with ts at wall-clock time."""
    from models.simulate import DAY_MS, DEFAULT_START_MS, iter_live_events, simulate_to_files

    if rate is not None:
        if out is not None:
            raise click.UsageError("--out writes a file; --rate streams to Kafka: give one of them")
        from .produce import send_events

        s = _settings(bootstrap_servers)  # one truth for the servers, named by any Kafka error
        start = start_ms if start_ms is not None else int(time.time() * 1000)
        # ts at wall-clock time: the simulated dynamics run at their own sped-up pace, only their order is kept
        n = send_events(iter_live_events(users, seed, speedup, start), s, rate=rate, wallclock_ts=True)
        click.echo(f"streamed {n} events", err=True)
        return
    if out is None:
        raise click.UsageError("give --out FILE (or --rate R to stream to Kafka)")
    start_ms = start_ms if start_ms is not None else DEFAULT_START_MS
    if days * DAY_MS > LAST_DATE_MS - start_ms:  # (in floats: a huge --days is no OverflowError)
        raise click.UsageError(f"--start-ms {start_ms} plus --days {days:g} ends after 9999-12-31T23:59:59.999Z "
                               f"(ts {LAST_DATE_MS}), the last ts that is a date: give an earlier start or fewer days")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):  # before the users are simulated
        raise click.BadParameter(f"{parent} is not a directory", param_hint="--out")
    try:
        stats = simulate_to_files(users, days, seed, out, start_ms, progress=True)
    except OSError as exc:
        raise click.ClickException(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {stats['events']} events of {users} users to {out} (truth: {out}.truth.jsonl)", err=True)


@main.command("demo")
@click.option("--seconds", type=FiniteRange(min=10), default=180, show_default=True,
              help="How long to stream and print vectors.")
@click.option("--users", type=SIM_USERS, default=300, show_default=True)
@click.option("--rate", type=FiniteRange(min=1), default=300, show_default=True, help="Events per second.")
@click.option("--speedup", type=FiniteRange(min=1, max=MAX_SPEEDUP), default=1440, show_default=True,
              help="Interest dynamics this many times faster than the wall clock (1440: a day a minute).")
@click.option("--follow", type=click.IntRange(min=0), default=4, show_default=True,
              help="Print every vector of this many users (at most --users).")
def demo_cmd(seconds, users, rate, speedup, follow):
    """The whole pipeline end to end on a local broker."""
    from .demo import demo

    demo(seconds, users, rate, speedup, follow)


def _attach_optional_commands() -> None:
    """The training-side verbs live in the models and export packages (torch loads lazily)."""
    from models import cli as models_cli

    for cmd in (models_cli.pretrain, models_cli.train, models_cli.evaluate, models_cli.evaluate_rerank):
        main.add_command(cmd)
    for name, cmd in models_cli.load.commands.items():
        load.add_command(cmd, name)
    from export.cli import export_cmd

    main.add_command(export_cmd, "export")


_attach_optional_commands()

if __name__ == "__main__":
    main()

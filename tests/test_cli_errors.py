"""Command-line errors that are the user's to fix: one line, no traceback."""

import os
import subprocess
import sys
import time

import click
import pytest

from conftest import ROOT
from stream_app.settings import ConfigError, Settings


def test_unreachable_broker_is_a_one_line_error_after_the_bootstrap_timeout():
    """No traceback when Kafka cannot be reached: what to check is named instead, as soon as
    INTEREST_BOOTSTRAP_TIMEOUT_S has passed (kafka-python's own default waits 30 s)."""
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", INTEREST_BOOTSTRAP_TIMEOUT_S="2")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "stream_app.cli", "tail"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert out.returncode == 1
    assert out.stderr.startswith("Error: Kafka at 127.0.0.1:1: ")
    assert "check KAFKA_BOOTSTRAP_SERVERS / --bootstrap-servers" in out.stderr
    assert "Traceback" not in out.stderr
    assert took < 20, f"answered after {took:.1f} s"


def test_simulate_names_the_bootstrap_servers_it_was_given():
    """`simulate --rate --bootstrap-servers` read its own copy of the environment: an unreachable
    broker was reported as the one KAFKA_BOOTSTRAP_SERVERS named, not the one it tried."""
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:2", INTEREST_BOOTSTRAP_TIMEOUT_S="1")
    out = subprocess.run([sys.executable, "-m", "stream_app.cli", "simulate", "--users", "2", "--rate", "5",
                          "--bootstrap-servers", "127.0.0.1:1"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("Error: Kafka at 127.0.0.1:1: KafkaTimeoutError: Unable to bootstrap from "
                                 "['127.0.0.1:1'] (check KAFKA_BOOTSTRAP_SERVERS"), out.stderr


@pytest.mark.parametrize("raw, expected", [
    (None, 30_000),
    ("2.5", 2_500),
    ("0", "INTEREST_BOOTSTRAP_TIMEOUT_S must be >= 0.1, got 0.0"),
    ("soon", "INTEREST_BOOTSTRAP_TIMEOUT_S must be a number, got 'soon'"),
    ("nan", "INTEREST_BOOTSTRAP_TIMEOUT_S must be a finite number, got 'nan'"),
    ("inf", "INTEREST_BOOTSTRAP_TIMEOUT_S must be a finite number, got 'inf'"),
    ("2_5", "INTEREST_BOOTSTRAP_TIMEOUT_S must be a number, got '2_5'"),  # float() took both
    ("\u0665", "INTEREST_BOOTSTRAP_TIMEOUT_S must be a number, got '\u0665'"),
])
def test_the_bootstrap_timeout_setting_reaches_every_kafka_python_client(raw, expected):
    env = {} if raw is None else {"INTEREST_BOOTSTRAP_TIMEOUT_S": raw}
    if isinstance(expected, int):
        assert Settings.from_env(env).kafka_python_config()["bootstrap_timeout_ms"] == expected
    else:
        with pytest.raises(ConfigError) as err:
            Settings.from_env(env)
        assert str(err.value) == expected


@pytest.mark.parametrize("args, message", [
    (["tail", "--timeout", "nan"], "Invalid value for '--timeout': 'nan' is not a finite number."),
    (["tail", "--timeout", "0"], "Invalid value for '--timeout': 0.0 is not in the range x>0."),
    (["tail", "--max-messages", "0"], "Invalid value for '--max-messages': 0 is not in the range x>=1."),
    (["forget", "u1", "--timeout", "inf"], "Invalid value for '--timeout': 'inf' is not a finite number."),
    (["simulate", "--users", "3", "--days", "inf", "--out", "s.jsonl"],
     "Invalid value for '--days': 'inf' is not a finite number."),
    (["simulate", "--users", "3", "--rate", "nan"], "Invalid value for '--rate': 'nan' is not a finite number."),
    # numpy's traceback ("expected non-negative integer"); the largest is torch's, as train's
    (["simulate", "--seed", "-1", "--out", "{dir}/s.jsonl"],
     "Invalid value for '--seed': -1 is not in the range 0<=x<=18446744073709551615."),
    # orjson's traceback ("Integer exceeds 64-bit range"); a negative ts was written
    (["simulate", "--start-ms", str(10**20), "--out", "{dir}/s.jsonl"],
     "Invalid value for '--start-ms': 100000000000000000000 is not in the range 0<=x<=253402300799999."),
    (["simulate", "--start-ms", "-1", "--out", "{dir}/s.jsonl"],
     "Invalid value for '--start-ms': -1 is not in the range 0<=x<=253402300799999."),
    (["simulate", "--start-ms", "253402300000000", "--days", "1", "--out", "{dir}/s.jsonl"],
     "Error: --start-ms 253402300000000 plus --days 1 ends after 9999-12-31T23:59:59.999Z (ts 253402300799999), "
     "the last ts that is a date: give an earlier start or fewer days"),
    # the shift schedule rounded to 0 ms and the simulator looped on it, sending nothing
    (["simulate", "--users", "5", "--rate", "50", "--speedup", "1e12"],
     "Invalid value for '--speedup': 1000000000000.0 is not in the range 0.001<=x<=86400.0."),
    (["simulate", "--users", "5", "--rate", "50", "--speedup", "1e-300"],  # an OverflowError traceback
     "Invalid value for '--speedup': 1e-300 is not in the range 0.001<=x<=86400.0."),
    (["demo", "--speedup", "1e12"],
     "Invalid value for '--speedup': 1000000000000.0 is not in the range 1<=x<=86400.0."),
    # an OverflowError traceback; 10^8 users were all built before the first event, without bound
    (["simulate", "--users", "99999999999999999999", "--days", "1", "--out", "{dir}/s.jsonl"],
     "Invalid value for '--users': 99999999999999999999 is not in the range 1<=x<=1000000."),
    (["demo", "--users", "1000001"], "Invalid value for '--users': 1000001 is not in the range 1<=x<=1000000."),
    (["load", "jsonl", "{log}", "--rate", "-5"], "Invalid value for '--rate': -5.0 is not in the range x>0."),
    (["demo", "--seconds", "inf"], "Invalid value for '--seconds': 'inf' is not a finite number."),
    (["evaluate-rerank", "{dir}", "--data", "{log}", "--out", "{dir}/r", "--weight", "nan"],
     "Invalid value for '--weight': 'nan' is not a finite number."),
])
def test_a_number_that_is_not_finite_or_out_of_range_is_a_usage_error(args, message, tmp_path):
    """Refused before anything runs: `--days inf` would never finish, `--timeout nan` was a traceback."""
    from click.testing import CliRunner

    from stream_app.cli import main

    log = tmp_path / "log.jsonl"
    log.write_text("{}\n")
    res = CliRunner().invoke(main, [a.format(log=log, dir=tmp_path) for a in args])
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_simulate_runs_to_the_last_date():
    """The span check lets a simulation end on 9999-12-31; its events stay within it."""
    import orjson
    from click.testing import CliRunner

    from stream_app.cli import main

    with CliRunner().isolated_filesystem():
        res = CliRunner().invoke(main, ["simulate", "--users", "3", "--days", "1", "--start-ms", "253402213599999",
                                        "--seed", str(2**64 - 1), "--out", "s.jsonl"])
        assert res.exit_code == 0, res.output
        ts = [orjson.loads(line)["ts"] for line in open("s.jsonl", "rb")]
    assert ts and 253402213599999 <= min(ts) and max(ts) <= 253402300799999


def test_a_simulation_of_no_event_writes_nothing(tmp_path):
    """Five users over 0.001 days made no event: simulate wrote an empty log (and truth) over the log
    at --out with exit 0, and every later command refused it ("no valid events")."""
    from click.testing import CliRunner

    from stream_app.cli import main

    log = tmp_path / "keep.jsonl"
    log.write_text("a log\n")
    res = CliRunner().invoke(main, ["simulate", "--users", "5", "--days", "0.001", "--seed", "0", "--out", str(log)])
    assert res.exit_code == 1
    assert res.output.endswith("Error: 5 users made no event in 0.001 days: nothing was written (give more days or "
                               "users)\n")
    assert log.read_text() == "a log\n" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.jsonl"]


@pytest.mark.parametrize("env, message", [
    ({"INTEREST_WEB_PORT": "70000"}, "INTEREST_WEB_PORT must be <= 65535, got 70000"),
    ({"INTEREST_KAFKA_PORT": "65536"}, "INTEREST_KAFKA_PORT must be <= 65535, got 65536"),
    ({"INTEREST_KAFKA_CONTROLLER_PORT": "99999"}, "INTEREST_KAFKA_CONTROLLER_PORT must be <= 65535, got 99999"),
])
def test_a_port_beyond_65535_is_a_one_line_error(env, message):
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value) == message


def test_the_local_brokers_controller_port():
    assert Settings.from_env({}).controller_port_for(9092) == 9093
    assert Settings.from_env({"INTEREST_KAFKA_CONTROLLER_PORT": "9999"}).controller_port_for(65535) == 9999
    with pytest.raises(ConfigError) as err:
        Settings.from_env({}).controller_port_for(65535)
    assert str(err.value) == ("the local broker's port 65535 leaves no next port for its controller; "
                              "set INTEREST_KAFKA_CONTROLLER_PORT")


def test_kafka_up_refuses_a_port_it_cannot_use_before_starting_anything(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from stream_app.cli import main

    monkeypatch.setenv("INTEREST_KAFKA_HOME", str(tmp_path / "kafka"))
    res = CliRunner().invoke(main, ["kafka", "up", "--port", "70000"])
    assert res.exit_code == 2 and "Invalid value for '--port': 70000 is not in the range 1<=x<=65535." in res.output
    res = CliRunner().invoke(main, ["kafka", "up", "--port", "65535"])
    assert res.exit_code == 1
    assert "Error: the local broker's port 65535 leaves no next port for its controller" in res.output
    assert not (tmp_path / "kafka").exists()  # nothing fetched, nothing started


def test_kafka_status_and_down_need_no_controller_port(tmp_path, monkeypatch):
    """They find the broker at the port it was started with: INTEREST_KAFKA_PORT=65535 (no next
    port for a controller) was refused by both, though only `up` gives the controller a port."""
    from click.testing import CliRunner

    from stream_app.cli import main

    monkeypatch.setenv("INTEREST_KAFKA_HOME", str(tmp_path / "kafka"))
    monkeypatch.setenv("INTEREST_KAFKA_PORT", "65535")
    res = CliRunner().invoke(main, ["kafka", "status"])
    assert (res.exit_code, res.output) == (1, f"not running (data dir {tmp_path / 'kafka'})\n")
    res = CliRunner().invoke(main, ["kafka", "down"])
    assert (res.exit_code, res.output) == (0, "not running\n")


@pytest.mark.parametrize("env, message", [
    ({"INTEREST_TOPIC_PREFIX": "team a/"},
     "INTEREST_TOPIC_PREFIX may hold only ASCII letters, digits, '.', '_' and '-' "
     "(it becomes part of Kafka topic names), got 'team a/'"),
    ({"INTEREST_APP_ID": "interest:stream"}, "INTEREST_APP_ID may hold only ASCII letters, digits, '.', '_' and '-' "
                                             "(it becomes part of Kafka topic names), got 'interest:stream'"),
])
def test_a_name_kafka_would_refuse_is_a_one_line_error(env, message):
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value) == message


@pytest.mark.parametrize("env, message", [
    # every topic was made (the longest 246 characters), then the worker died with Faust's traceback
    # at its leader topic: InvalidTopicError for <app id>-__assignor-__leader, 250 characters
    ({"INTEREST_TOPIC_PREFIX": "p" * 215},
     "INTEREST_TOPIC_PREFIX and INTEREST_APP_ID together may be at most 229 characters (Faust's topic "
     "<app id>-__assignor-__leader must fit Kafka's 249), got 215 + 15"),
    ({"INTEREST_APP_ID": "a" * 230},
     "INTEREST_APP_ID may be at most 229 characters (Faust's topic <app id>-__assignor-__leader must fit "
     "Kafka's 249), got 230"),
    ({"INTEREST_TOPIC_PREFIX": "p" * 227, "INTEREST_APP_ID": "a"},
     "INTEREST_TOPIC_PREFIX may be at most 226 characters (the topic <prefix>user-interests.backfill must fit "
     "Kafka's 249), got 227"),
])
def test_a_name_kafka_would_refuse_as_too_long_is_a_one_line_error(env, message):
    """`topics create` made the topics whose names fit (all 8 with a 215-character prefix, 7 with a
    224-character one: the changelog was refused, the whole request printed) before anything failed."""
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value) == message


@pytest.mark.parametrize("env", [{"INTEREST_TOPIC_PREFIX": "p" * 214}, {"INTEREST_APP_ID": "a" * 229},
                                 {"INTEREST_TOPIC_PREFIX": "p" * 226, "INTEREST_APP_ID": "a" * 3}])
def test_the_longest_names_fit_kafka_with_faust_s_own_topics(env):
    import faust

    from stream_app.settings import MAX_TOPIC_NAME
    from stream_app.topics import TABLES, topic_specs

    s = Settings.from_env(env)
    app = faust.App(s.app_id)  # the names Faust itself derives from the app id
    faust_names = [app._leader_assignor._leader_topic_name, *(app.Table(t)._changelog_topic_name() for t in TABLES)]
    assert sorted(faust_names) == sorted(s.app_id_topics())
    names = [spec.name for spec in topic_specs(s)] + faust_names
    assert max(len(n) for n in names) == MAX_TOPIC_NAME


def test_topics_create_refuses_a_name_too_long_before_asking_the_broker():
    from click.testing import CliRunner

    from stream_app.cli import main

    res = CliRunner().invoke(main, ["topics", "create"], env={"INTEREST_TOPIC_PREFIX": "p" * 224,
                                                             "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
                                                             "INTEREST_BOOTSTRAP_TIMEOUT_S": "0.1"})
    assert res.exit_code == 1
    assert res.output == ("Error: INTEREST_TOPIC_PREFIX and INTEREST_APP_ID together may be at most 229 characters "
                          "(Faust's topic <app id>-__assignor-__leader must fit Kafka's 249), got 224 + 15\n")


@pytest.mark.parametrize("env, message", [
    ({"INTEREST_APP_ID": ".."}, "INTEREST_APP_ID may not make the app id '.' or '..' (not a Kafka topic name, nor a "
                                "directory of its own in INTEREST_DATA_DIR), got '..'"),
    ({"INTEREST_APP_ID": "."}, "INTEREST_APP_ID may not make the app id '.' or '..' (not a Kafka topic name, nor a "
                               "directory of its own in INTEREST_DATA_DIR), got '.'"),
    ({"INTEREST_TOPIC_PREFIX": ".", "INTEREST_APP_ID": "."},
     "INTEREST_TOPIC_PREFIX and INTEREST_APP_ID together may not make the app id '.' or '..' (not a Kafka topic "
     "name, nor a directory of its own in INTEREST_DATA_DIR), got '..'"),
])
def test_an_app_id_of_dots_is_a_one_line_error(env, message):
    """INTEREST_APP_ID=.. put the worker's state in INTEREST_DATA_DIR's parent (<dir>/..)."""
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value) == message
    assert Settings.from_env({"INTEREST_TOPIC_PREFIX": ".", "INTEREST_APP_ID": "a"}).app_id == ".a"
    assert Settings.from_env({"INTEREST_APP_ID": "..."}).state_dir.name == "..."


def test_names_kafka_accepts():
    s = Settings.from_env({"INTEREST_TOPIC_PREFIX": "team-a.v2_", "INTEREST_APP_ID": "Interest_1"})
    assert s.topic("click") == "team-a.v2_click" and s.app_id == "team-a.v2_Interest_1"
    assert Settings.from_env({}).app_id == "interest-stream"


@pytest.mark.parametrize("env, message", [
    ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:notaport"},
     "KAFKA_BOOTSTRAP_SERVERS must be host:port[,host:port...] with ports 1..65535 in ASCII digits, got "
     "'127.0.0.1:notaport'"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "broker:99999"},
     "KAFKA_BOOTSTRAP_SERVERS must be host:port[,host:port...] with ports 1..65535 in ASCII digits, got "
     "'broker:99999'"),
    ({"INTEREST_SESSION_TIMEOUT_S": "3600"},
     "INTEREST_SESSION_TIMEOUT_S must be <= 90.0 (Faust's request timeout), got 3600.0"),
    ({"INTEREST_HEARTBEAT_S": "60"},
     "INTEREST_HEARTBEAT_S must be less than INTEREST_SESSION_TIMEOUT_S (30.0), got 60.0"),
    ({"INTEREST_RETENTION_MS": "99999999999999999999"},
     "INTEREST_RETENTION_MS must be <= 9223372036854775807, got 99999999999999999999"),
    # the broker's "Invalid value 9223372036854775807000 for configuration message.timestamp.after.max.ms"
    ({"INTEREST_FUTURE_S": "9223372036854775807"},
     "INTEREST_FUTURE_S must be <= 9223372036854775 (the input topics' message.timestamp.after.max.ms, in ms, "
     "is a Kafka LONG), got 9223372036854775807"),
    # `topics create`: a struct.error traceback (INT32 partitions, INT16 replication factor)
    ({"INTEREST_PARTITIONS": "3000000000"},
     "INTEREST_PARTITIONS must be <= 2147483647 (an INT32 in Kafka's CreateTopics request), got 3000000000"),
    ({"INTEREST_REPLICATION": "32768"},
     "INTEREST_REPLICATION must be <= 32767 (an INT16 in Kafka's CreateTopics request), got 32768"),
    # the broker refused max.message.bytes 3000001024 after the input, DLQ and control topics were made
    ({"INTEREST_MAX_STATE_BYTES": "3000000000"},
     "INTEREST_MAX_STATE_BYTES must be <= 2147482623 (the changelog's max.message.bytes, 1 KiB more, is a "
     "Kafka INT), got 3000000000"),
    ({"INTEREST_ALIGN_IDLE_MS": "2001"},
     "INTEREST_ALIGN_IDLE_MS must be <= 2000 (the wait for a topic that is behind), got 2001"),
    ({"INTEREST_PRODUCER_LINGER_MS": "3000000000"},
     "INTEREST_PRODUCER_LINGER_MS must be <= 5000 (the 5 s a rebalance or shutdown waits for the dead letters "
     "sent), got 3000000000"),
    # ONNX Runtime's TypeError ("incompatible function arguments") when the worker loads its model
    ({"INTEREST_ORT_THREADS": "3000000000"},
     "INTEREST_ORT_THREADS must be <= 256 (a thread per core of a large host; each more slows the scoring "
     "session's creation, a minute at 2000), got 3000000000"),
    # the worker's start and replay hung without a word, their memory growing, creating the session
    ({"INTEREST_ORT_THREADS": "257"},
     "INTEREST_ORT_THREADS must be <= 256 (a thread per core of a large host; each more slows the scoring "
     "session's creation, a minute at 2000), got 257"),
])
def test_a_setting_kafka_or_faust_would_refuse_later_is_a_one_line_error(env, message):
    """These ended in a traceback (a bootstrap port that is not a number; a session timeout Faust
    refuses once the worker runs), a worker the broker dropped from its group at every heartbeat
    (one beyond the session timeout: a rebalance a minute) or the broker's whole
    CreateTopicsRequest (a retention beyond a LONG)."""
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value) == message


def test_a_message_waits_half_a_second_for_a_topic_caught_up_unless_told_otherwise():
    """Kafka Streams' max.task.idle.ms is 0 by default; the worker's INTEREST_ALIGN_IDLE_MS is 500
    (stream_app.settings.DEFAULT_ALIGN_IDLE_MS gives the runs that chose it), and 0 turns it off."""
    assert Settings.from_env({}).align_idle_ms == 500
    assert Settings.from_env({"INTEREST_ALIGN_IDLE_MS": "0"}).align_idle_ms == 0
    assert Settings.from_env({"INTEREST_ALIGN_IDLE_MS": "2000"}).align_idle_ms == 2000


def test_the_largest_numeric_settings_kafka_and_the_clients_carry():
    from stream_app import flush
    from stream_app.settings import MAX_LINGER_MS
    from stream_app.topics import changelog_limit, topic_specs

    s = Settings.from_env({"INTEREST_PARTITIONS": str(2**31 - 1), "INTEREST_REPLICATION": str(2**15 - 1),
                           "INTEREST_MAX_STATE_BYTES": str(2**31 - 1 - 2**10), "INTEREST_PRODUCER_LINGER_MS": "5000",
                           "INTEREST_ORT_THREADS": "256"})
    assert changelog_limit(s) == 2**31 - 1  # the broker's INT max.message.bytes
    assert max(int(spec.config.get("max.message.bytes", 0)) for spec in topic_specs(s)) == 2**31 - 1
    assert s.linger_ms == MAX_LINGER_MS == flush.LETTER_WAIT_S * 1000  # the bound's reason, in the flush
    assert s.ort_threads == 256


def test_a_bad_bootstrap_server_is_refused_by_every_command():
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:notaport")
    out = subprocess.run([sys.executable, "-m", "stream_app.cli", "tail", "--timeout", "1"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr == ("Error: KAFKA_BOOTSTRAP_SERVERS must be host:port[,host:port...] with ports "
                          "1..65535 in ASCII digits, got '127.0.0.1:notaport'\n")


def test_bootstrap_servers_kafka_python_accepts():
    for ok in ("localhost:9092", "a:1,b:2", "[::1]:9092", "broker", "PLAINTEXT://a:9092", "::1", "[::1]",
               "a:1, b:2", "SSL://[::1]:9093,b"):
        assert Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": ok}).bootstrap_servers == ok


@pytest.mark.parametrize("raw", ["localhost:\u0669\u0660\u0669\u0662", "localhost:\uff19\uff10\uff19\uff12",
                                 "a:1,[::1]:\u0669\u0660\u0669\u0662", "SSL://b:\u0669", "localhost:+9092",
                                 "localhost:9_092", "localhost: 9092"])
def test_a_bootstrap_port_is_written_in_ascii_digits(raw):
    """kafka-python, aiokafka and yarl read each of these ports with int(): 9092 (or 9), where no
    other Kafka client would take it for a port."""
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": raw})
    assert str(err.value) == ("KAFKA_BOOTSTRAP_SERVERS must be host:port[,host:port...] with ports 1..65535 in "
                              f"ASCII digits, got {raw!r}")


@pytest.mark.parametrize("env, message", [
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"},
     "KAFKA_SECURITY_PROTOCOL must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, got 'TLS'"),
    ({"KAFKA_SECURITY_PROTOCOL": "ssl"},
     "KAFKA_SECURITY_PROTOCOL must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, got 'ssl'"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
     "KAFKA_SSL_CAFILE: no such file '/nonexistent/ca.pem'"),
    # the credentials were ignored without a word, and the clients connected unauthenticated
    ({"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"},
     "KAFKA_SASL_USERNAME is set without KAFKA_SECURITY_PROTOCOL SASL_PLAINTEXT or SASL_SSL (the clients would "
     "ignore it), got no protocol"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_MECHANISM": "PLAIN"},
     "KAFKA_SASL_MECHANISM is set without KAFKA_SECURITY_PROTOCOL SASL_PLAINTEXT or SASL_SSL (the clients would "
     "ignore it), got SSL"),
])
def test_a_security_setting_no_client_can_use_is_a_one_line_error(env, message):
    """kafka-python took an unknown protocol (or a lowercase one) for PLAINTEXT, where Faust used
    SSL, and a missing CA file showed as 'Unable to bootstrap' after the bootstrap timeout."""
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value) == message
    assert Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}).security == {"security_protocol": "SASL_SSL"}
    assert Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"}).security == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_plain_username": "u"}


@pytest.mark.parametrize("verb", [["status"], ["up", "--port", "65000"], ["down"]])
def test_a_kafka_home_under_a_file_is_a_one_line_error(verb, tmp_path, monkeypatch):
    """`kafka status` and `kafka up` were a NotADirectoryError traceback at the pid file."""
    from click.testing import CliRunner

    from stream_app.cli import main

    (tmp_path / "file").write_text("")
    for home in (tmp_path / "file", tmp_path / "file" / "kafka"):
        monkeypatch.setenv("INTEREST_KAFKA_HOME", str(home))
        res = CliRunner().invoke(main, ["kafka", *verb])
        assert res.exit_code == 1, res.output
        assert res.output == (f"Error: INTEREST_KAFKA_HOME: {tmp_path / 'file'} is not a directory (the broker's "
                              f"data, logs and pid file go in {home})\n")


def test_the_largest_stored_state_has_a_floor_the_newest_rows_fit_under():
    assert Settings.from_env({}).max_state_bytes == 16 * 2**20 - 2**10  # 1 KiB under the changelog's limit
    assert Settings.from_env({"INTEREST_MAX_STATE_BYTES": "1048576"}).max_state_bytes == 2**20
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"INTEREST_MAX_STATE_BYTES": "1048575"})
    assert str(err.value) == "INTEREST_MAX_STATE_BYTES must be >= 1048576, got 1048575"


TLS = ROOT / "tests" / "tls"  # a self-signed certificate and keys, for these checks only


@pytest.mark.parametrize("files, message", [
    ({"CAFILE": "README.md"},
     "KAFKA_SSL_CAFILE: OpenSSL cannot use '{tls}/README.md': no certificate in PEM form "
     "(NO_CERTIFICATE_OR_CRL_FOUND)"),
    ({"CAFILE": "key.pem"},
     "KAFKA_SSL_CAFILE: OpenSSL cannot use '{tls}/key.pem': no certificate in PEM form (NO_CERTIFICATE_OR_CRL_FOUND)"),
    ({"CERTFILE": "key.pem", "KEYFILE": "key.pem"},
     "KAFKA_SSL_CERTFILE: OpenSSL cannot use '{tls}/key.pem': no certificate in PEM form "
     "(NO_CERTIFICATE_OR_CRL_FOUND)"),
    ({"CERTFILE": "cert.pem"},  # the key is neither in it nor in KAFKA_SSL_KEYFILE
     "KAFKA_SSL_CERTFILE: OpenSSL cannot use '{tls}/cert.pem': no private key in PEM form"),
    ({"CERTFILE": "cert.pem", "KEYFILE": "encrypted-key.pem"},
     "KAFKA_SSL_KEYFILE: '{tls}/encrypted-key.pem' holds an encrypted key, and no setting gives its password (the "
     "clients would ask for it on a terminal)"),
    ({"CERTFILE": "cert.pem", "KEYFILE": "empty-password-key.pem"},
     "KAFKA_SSL_KEYFILE: '{tls}/empty-password-key.pem' holds an encrypted key, and no setting gives its password "
     "(the clients would ask for it on a terminal)"),
    ({"CERTFILE": "cert.pem", "KEYFILE": "other-key.pem"},
     "KAFKA_SSL_KEYFILE: OpenSSL cannot use '{tls}/other-key.pem': the key is not the certificate's "
     "(KAFKA_SSL_CERTFILE) (KEY_VALUES_MISMATCH)"),
    ({"KEYFILE": "key.pem"}, "KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE, the certificate it belongs to"),
    # a directory was "no such file" (a CA directory is not what the clients' ssl_cafile takes)
    ({"CAFILE": "."}, "KAFKA_SSL_CAFILE: '{tls}' is a directory; it must name a PEM file"),
    ({"CERTFILE": "."}, "KAFKA_SSL_CERTFILE: '{tls}' is a directory; it must name a PEM file"),
    ({"CERTFILE": "cert.pem", "KEYFILE": "."}, "KAFKA_SSL_KEYFILE: '{tls}' is a directory; it must name a PEM file"),
    ({"CAFILE": "missing.pem"}, "KAFKA_SSL_CAFILE: no such file '{tls}/missing.pem'"),
    ({"CERTFILE": "missing.pem"}, "KAFKA_SSL_CERTFILE: no such file '{tls}/missing.pem'"),
    ({"CERTFILE": "cert.pem", "KEYFILE": "missing.pem"}, "KAFKA_SSL_KEYFILE: no such file '{tls}/missing.pem'"),
])
def test_a_tls_file_openssl_cannot_use_is_named(files, message):
    """Each of these was reported, after the bootstrap timeout, as a broker that cannot be reached
    ('Unable to bootstrap'); a key without its certificate was ignored by the clients."""
    env = {"KAFKA_SECURITY_PROTOCOL": "SSL", **{f"KAFKA_SSL_{k}": str(TLS / v) for k, v in files.items()}}
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value) == message.format(tls=TLS)


@pytest.mark.parametrize("name, message", [
    ("CAFILE", "no certificate in PEM form (NO_CERTIFICATE_OR_CRL_FOUND)"),
    ("CERTFILE", "no certificate in PEM form (NO_CERTIFICATE_OR_CRL_FOUND)"),
    ("KEYFILE", "no private key in PEM form"),
])
def test_an_empty_tls_file_is_named(name, message, tmp_path):
    (tmp_path / "empty.pem").write_text("")
    env = {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": str(TLS / "cert.pem"),
           f"KAFKA_SSL_{name}": str(tmp_path / "empty.pem")}
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value) == f"KAFKA_SSL_{name}: OpenSSL cannot use {str(tmp_path / 'empty.pem')!r}: {message}"


def test_tls_files_openssl_can_use_are_passed_to_the_clients():
    env = {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(TLS / "cert.pem"),
           "KAFKA_SSL_CERTFILE": str(TLS / "cert.pem"), "KAFKA_SSL_KEYFILE": str(TLS / "key.pem")}
    assert Settings.from_env(env).security == {"security_protocol": "SSL", "ssl_cafile": str(TLS / "cert.pem"),
                                               "ssl_certfile": str(TLS / "cert.pem"),
                                               "ssl_keyfile": str(TLS / "key.pem")}


@pytest.mark.parametrize("raw, message", [
    ("512", "INTEREST_KAFKA_HEAP must be a JVM size such as 512m or 1g, got '512'"),
    ("\u0665\u0661\u0662m", "INTEREST_KAFKA_HEAP must be a JVM size such as 512m or 1g, got '\u0665\u0661\u0662m'"),
    ("0m", "INTEREST_KAFKA_HEAP must be at least 192m (the broker runs out of heap while starting below it), "
           "got '0m'"),
    ("196607k", "INTEREST_KAFKA_HEAP must be at least 192m (the broker runs out of heap while starting below "
                "it), got '196607k'"),
    ("196608\u212a", "INTEREST_KAFKA_HEAP must be a JVM size such as 512m or 1g, got '196608\u212a'"),  # Kelvin
])
def test_a_heap_the_local_broker_cannot_start_with_is_a_one_line_error(raw, message):
    """Arabic-Indic digits passed str.isdigit and reached the JVM, and so did 0m, each then an error
    from `kafka up` with the JVM's or the broker's last log lines."""
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"INTEREST_KAFKA_HEAP": raw})
    assert str(err.value) == message


def test_heaps_the_local_broker_starts_with():
    for ok in ("192m", "196608k", "1G", "512M"):
        assert Settings.from_env({"INTEREST_KAFKA_HEAP": ok}).kafka_heap == ok
    assert Settings.from_env({}).kafka_heap == "512m"


@pytest.mark.parametrize("args, message", [
    (["forget", ""], "Invalid value for 'USER': a user id cannot be empty"),
    (["tail", "--user", ""], "Invalid value for '--user': a user id cannot be empty"),
    (["forget", "u\udcff"], "Invalid value for 'USER': a user id is UTF-8 text, got the bytes b'u\\xff'"),
    (["tail", "--user", "u\udcff"], "Invalid value for '--user': a user id is UTF-8 text, got the bytes b'u\\xff'"),
    (["forget", "u" * 129], "Invalid value for 'USER': a user id has at most 128 characters, got 129"),
    (["tail", "--user", "u" * 129], "Invalid value for '--user': a user id has at most 128 characters, got 129"),
])
def test_a_user_id_no_event_can_carry_is_a_usage_error(args, message):
    """Refused before Kafka is asked. An empty id made `forget` wait out --timeout, then ask whether
    a worker runs, and `tail --user ""` printed every user's vectors; an argument that is not UTF-8
    (the bytes b'u\\xff', which Python keeps as 'u\\udcff') was a UnicodeEncodeError traceback at
    the message key; an id longer than the contract's 128 characters was dead-lettered as too_long,
    so no worker ever holds it."""
    from click.testing import CliRunner

    from stream_app.cli import main

    res = CliRunner().invoke(main, args, env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
                                              "INTEREST_BOOTSTRAP_TIMEOUT_S": "1"})
    assert res.exit_code == 2, res.output
    assert res.output.splitlines()[-1] == f"Error: {message}"


def test_a_web_host_that_is_not_a_host_name():
    """An empty label is refused by Python's IDNA codec before any resolver is asked: it was a
    UnicodeError traceback."""
    from stream_app.cli import _check_listen
    from stream_app.settings import Settings

    with pytest.raises(click.ClickException) as err:
        _check_listen(Settings.from_env({"INTEREST_WEB_HOST": "bad..host", "INTEREST_WEB_PORT": "6066"}))
    assert err.value.message == ("cannot listen on bad..host:6066 (INTEREST_WEB_HOST / INTEREST_WEB_PORT): "
                                 "not a host name (label empty or too long)")


def test_a_failed_demo_step_is_a_one_line_error(tmp_path):
    """The demo ended with a CalledProcessError traceback under the step's own error."""
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", INTEREST_BOOTSTRAP_TIMEOUT_S="1",
               INTEREST_MODEL_DIR=str(tmp_path), INTEREST_DEMO_DIR=str(tmp_path / "out"))
    out = subprocess.run([sys.executable, "-m", "stream_app.cli", "demo"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert lines[-2].startswith("Error: Kafka at 127.0.0.1:1: ")  # the step's own error
    assert lines[-1] == ("Error: the demo's step `interest-stream topics create` failed (exit code 1; "
                         "its error is above)")


def test_a_failed_demo_step_still_stops_the_broker_the_demo_started(tmp_path, monkeypatch):
    from stream_app import demo, kafka_local

    stopped = []

    class Broker:  # stands in for the broker the demo starts, at an address nothing answers
        bootstrap = "127.0.0.1:1"

        def __init__(self, **kw):
            pass

        def pid(self):
            return None

        def status(self):
            return {"running": False, "bootstrap_servers": self.bootstrap}

        def up(self):
            return 0.1

        def down(self):
            stopped.append(True)

    monkeypatch.setattr(kafka_local, "LocalKafka", Broker)
    monkeypatch.setattr(demo, "OUT", tmp_path / "out")
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("INTEREST_KAFKA_HOME", str(tmp_path / "kafka"))
    monkeypatch.setenv("INTEREST_BOOTSTRAP_TIMEOUT_S", "1")
    monkeypatch.setenv("INTEREST_MODEL_DIR", str(tmp_path))
    with pytest.raises(click.ClickException) as err:
        demo.demo(seconds=10, users=1, rate=1, speedup=1, follow=0)
    assert "`interest-stream topics create` failed" in err.value.message
    assert stopped == [True]


def test_the_demo_uses_the_local_broker_at_the_port_it_runs_on(tmp_path, monkeypatch):
    """A broker of the home already running on another port than INTEREST_KAFKA_PORT's (`kafka up
    --port`): the demo said it used it, and then talked to 127.0.0.1:9092."""
    from stream_app import demo, kafka_local

    class Broker:  # the home's broker, started with `kafka up --port 19999`
        bootstrap = "127.0.0.1:9092"  # the port the demo asks for

        def __init__(self, **kw):
            pass

        def pid(self):
            return 4242

        def answers(self):
            return False  # not on the port asked for

        def status(self):
            return {"running": True, "bootstrap_servers": "127.0.0.1:19999"}

        def up(self):
            raise AssertionError("the demo started a second broker")

    seen = {}

    def stop_at_the_model(env):
        seen.update(env)
        raise click.ClickException("stopped here")

    monkeypatch.setattr(kafka_local, "LocalKafka", Broker)
    monkeypatch.setattr(demo, "ensure_model", stop_at_the_model)
    monkeypatch.setattr(demo, "OUT", tmp_path / "out")
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(click.ClickException):
        demo.demo(seconds=10, users=1, rate=1, speedup=1, follow=0)
    assert seen["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:19999"


@pytest.mark.parametrize("raw", ["5_000", "\u0665", "\uff15"])  # int() took each: 5000, 5 and 5
def test_an_integer_setting_is_written_in_ascii_digits(raw):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"INTEREST_SCORE_BATCH": raw})
    assert str(err.value) == f"INTEREST_SCORE_BATCH must be an integer, got {raw!r}"
    # as the README says: spaces around the digits and a leading '+' are taken, in every number
    assert Settings.from_env({"INTEREST_SCORE_BATCH": " 5000 "}).score_batch == 5000
    assert Settings.from_env({"INTEREST_SCORE_BATCH": "+5"}).score_batch == 5
    assert Settings.from_env({"INTEREST_FLUSH_S": " +0.5 "}).flush_s == 0.5


@pytest.mark.parametrize("raw", [" ", "  \t"])
def test_a_data_directory_of_spaces_is_a_one_line_error(raw):
    """The state went to a directory named ' ' in the working directory, made without a word."""
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"INTEREST_DATA_DIR": raw})
    assert str(err.value) == ("INTEREST_DATA_DIR must be a directory path (unset or empty for "
                              f"./interest-stream-data), got {raw!r}")
    assert Settings.from_env({"INTEREST_DATA_DIR": ""}).data_dir == "./interest-stream-data"  # empty is unset


@pytest.mark.parametrize("raw", ["worker-1:6066", "http://x:99999", "http://:6066", "http://x:0", "http://x:port",
                                 "ftp://x:6066"])
def test_a_canonical_url_other_workers_cannot_reach_is_a_one_line_error(raw):
    """Only the scheme was checked: the port and the host were found wrong at each forwarded request."""
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"INTEREST_CANONICAL_URL": raw})
    assert str(err.value) == ("INTEREST_CANONICAL_URL must be an http:// or https:// URL with a host (and a port "
                              f"1..65535), got {raw!r}")


def test_canonical_urls_other_workers_can_reach():
    for ok in ("http://worker-1:6066", "https://w.example.com", "http://[::1]:6066/"):
        assert Settings.from_env({"INTEREST_CANONICAL_URL": ok}).canonical_url == ok


@pytest.mark.parametrize("args, option, setting", [
    (["--web-port", "6067"], "--web-port", "INTEREST_WEB_PORT"),
    (["-p6067"], "-p", "INTEREST_WEB_PORT"),
    (["--web-host=worker-1"], "--web-host", "INTEREST_CANONICAL_URL"),
    (["-b", "0.0.0.0"], "-b", "INTEREST_WEB_HOST"),
    (["--web-transport", "foo://"], "--web-transport", "INTEREST_WEB_HOST / INTEREST_WEB_PORT"),
    (["--workdir", "/nonexistent/x"], "--workdir", "INTEREST_DATA_DIR"),
])
def test_worker_options_the_settings_own_are_refused(args, option, setting):
    """Passed to Faust, they skipped the worker's start checks (a port in use, a host that does not
    resolve, a transport Faust does not know: tracebacks) and --web-port/--web-host replaced the URL
    other workers are given, INTEREST_CANONICAL_URL, without a word. Refused before Kafka is asked."""
    from click.testing import CliRunner

    from stream_app.cli import main

    res = CliRunner().invoke(main, ["worker", *args], env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert res.exit_code == 2, res.output
    assert res.output.splitlines()[-1] == (f"Error: worker {option}: set {setting} instead (the worker's checks and "
                                           "the URL other workers are given follow the settings)")


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "No such option: --bogus"),
    (["--loglevel", "loud"],
     "Invalid value for '--loglevel' / '-l': 'loud' is not one of 'crit', 'error', 'warn', 'info', 'debug'."),
    (["--", "extra"], "Got unexpected extra argument (extra)"),
])
def test_worker_options_faust_refuses_are_refused_before_kafka_is_asked(args, message):
    """Faust refused them only once the topics were created and the model loaded (and here, with
    no broker at the address, the error was about the broker)."""
    from click.testing import CliRunner

    from stream_app.cli import main

    res = CliRunner().invoke(main, ["worker", *args], env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert res.exit_code == 2, res.output
    assert res.output.splitlines()[-1] == f"Error: worker: {message}"


@pytest.mark.parametrize("topic", ["", "bad name!", "a" * 250, ".."])
def test_tail_of_a_topic_name_kafka_refuses_is_a_usage_error(topic):
    """`--topic ""` read the default topic; a name Kafka refuses "does not exist; run `interest-stream
    topics create`", which never makes it."""
    from click.testing import CliRunner

    from stream_app.cli import main

    res = CliRunner().invoke(main, ["tail", "--topic", topic], env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert res.exit_code == 2, res.output
    assert res.output.splitlines()[-1] == (f"Error: Invalid value for '--topic': {topic!r} is not a Kafka topic name "
                                           "(1-249 ASCII letters, digits, '.', '_' and '-')")


def test_tail_prints_control_characters_of_ids_escaped():
    """An id holding an ANSI sequence recoloured the terminal, and through a pipe (click strips
    them) printed as another id."""
    import orjson

    from stream_app.cli import format_vector

    vector = {"user_id": "\x1b[31mRED\x1b[0m", "events": 1, "drift": 0.0, "top": ["a\nb"], "interests": {"a\nb": 1.0}}
    assert format_vector("x", orjson.dumps(vector)) == ("\\x1b[31mRED\\x1b[0m  events=1    drift=0.000  top: a\\nb "
                                                         "1.00")
    assert format_vector("\x07bell", None) == "\\x07bell  (forgotten)"


def _configuration_rows() -> dict[str, tuple[str, str]]:
    """README's Configuration table: variable -> (default, meaning), for rows of one variable."""
    import re

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Configuration"):text.index("## How the worker counts")]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.split(" | ")]
        names = re.findall(r"`([A-Z_]+)`", cells[0]) if line.startswith("| `") else []
        if len(names) == 1:
            rows[names[0]] = (cells[1], cells[2])
    return rows


def _number(text: str) -> str:
    """A bound as the README writes it: 1 for the message's 1.0, 0.05 as it is."""
    return text.rstrip("0").rstrip(".") if "." in text else text


def test_the_readme_states_each_numeric_settings_default_and_bounds():
    """Each bound the code enforces (read from its refusals of -1 and of a huge number) of a setting
    with a row of its own (the local broker's row names four) is in the setting's row as 'at least' /
    'at most', and each numeric default is the row's default."""
    import re

    source = (ROOT / "stream_app" / "settings.py").read_text()
    attrs = dict((var, attr) for attr, var in re.findall(r"^    (\w+): \w+ = .*?#\s+([A-Z_]+)", source, re.M))
    defaults = Settings.from_env({})
    checked = 0
    for var, (default, meaning) in _configuration_rows().items():
        value = getattr(defaults, attrs.get(var, ""), None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert float(re.search(r"`([0-9.]+)`", default)[1]) == value, var
        for raw, word in (("-1", "at least"), ("99999999999999999999", "at most")):
            try:
                Settings.from_env({var: raw})
                continue
            except ConfigError as err:
                bound = re.match(rf"{var} must be [<>]= ([0-9.e+]+)", str(err))
            if bound:
                checked += 1
                stated = rf"{word} {re.escape(_number(bound[1]))}(?![0-9]|\.[0-9])"  # not 1 for 10 or 1.5
                assert re.search(stated, meaning, re.I), (var, word, bound[1])
    assert checked == 38  # every numeric setting's minimum (26), and the maxima (12)


@pytest.mark.parametrize("given, error", [
    ({"INTEREST_WEB_PORT": "abc"}, "INTEREST_WEB_PORT must be an integer, got 'abc'"),
    # fits alone, not beside the demo's own prefix (demo-<epoch s>., 16 characters)
    ({"INTEREST_APP_ID": "a" * 220}, "INTEREST_TOPIC_PREFIX and INTEREST_APP_ID together may be at most 229 characters "
                                     "(Faust's topic <app id>-__assignor-__leader must fit Kafka's 249), got 16 + 220"),
])
def test_the_demo_checks_its_settings_before_any_step(tmp_path, given, error):
    """With KAFKA_BOOTSTRAP_SERVERS set the settings were read only once the model was trained and
    exported: a bad INTEREST_WEB_PORT was named after 3-4 minutes of training, and an app id too
    long beside the demo's prefix still was after the first check (review)."""
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", INTEREST_DEMO_DIR=str(tmp_path / "out"), **given)
    env.pop("INTEREST_MODEL_DIR", None)  # so the demo would train
    out = subprocess.run([sys.executable, "-m", "stream_app.cli", "demo"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr == f"Error: {error}\n"


@pytest.mark.parametrize("given, expected", [
    ({}, {"INTEREST_SCORE_INTERVAL_S": "5", "INTEREST_COMMIT_INTERVAL_S": "1", "INTEREST_SESSION_TIMEOUT_S": "10"}),
    ({"INTEREST_SESSION_TIMEOUT_S": "20", "INTEREST_COMMIT_INTERVAL_S": "3", "INTEREST_SCORE_INTERVAL_S": "2"},
     {"INTEREST_SCORE_INTERVAL_S": "2", "INTEREST_COMMIT_INTERVAL_S": "3", "INTEREST_SESSION_TIMEOUT_S": "20"}),
    ({"INTEREST_COMMIT_INTERVAL_S": ""},  # empty: unset, as for the worker
     {"INTEREST_SCORE_INTERVAL_S": "5", "INTEREST_COMMIT_INTERVAL_S": "1", "INTEREST_SESSION_TIMEOUT_S": "10"}),
    ({"INTEREST_HEARTBEAT_S": "15"},  # the worker's default session timeout (30 s), not the demo's 10
     {"INTEREST_SCORE_INTERVAL_S": "5", "INTEREST_COMMIT_INTERVAL_S": "1", "INTEREST_SESSION_TIMEOUT_S": None}),
])
def test_the_demo_keeps_the_users_own_settings(given, expected, tmp_path, monkeypatch):
    """The demo set INTEREST_SESSION_TIMEOUT_S=10 and INTEREST_COMMIT_INTERVAL_S=1 over the user's
    values, so `INTEREST_HEARTBEAT_S=15 interest-stream demo` was refused for a session timeout
    the user never set."""
    from stream_app import demo

    seen = {}

    def stop_at_the_first_step(*args, env):
        seen.update(env)
        raise click.ClickException("stopped here")

    monkeypatch.setattr(demo, "run_cli", stop_at_the_first_step)
    monkeypatch.setattr(demo, "OUT", tmp_path / "out")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("INTEREST_MODEL_DIR", str(tmp_path))
    for name in (*expected, "INTEREST_HEARTBEAT_S"):
        monkeypatch.delenv(name, raising=False)
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(click.ClickException) as err:
        demo.demo(seconds=10, users=1, rate=1, speedup=1, follow=0)
    assert err.value.message == "stopped here"
    assert {name: seen.get(name) for name in expected} == expected


@pytest.mark.parametrize("raw", [" ", "  \t"])
def test_a_demo_directory_of_spaces_is_a_one_line_error_before_anything_starts(tmp_path, raw):
    """The demo's state went to a directory named ' ' in the working directory, made without a
    word; the setting is refused as INTEREST_DATA_DIR is, before any step."""
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", INTEREST_BOOTSTRAP_TIMEOUT_S="1",
               INTEREST_MODEL_DIR=str(tmp_path), INTEREST_DEMO_DIR=raw, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "stream_app.cli", "demo"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == (f"Error: INTEREST_DEMO_DIR must be a directory path (unset or empty for demo-out), "
                          f"got {raw!r}\n")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_demo_directory_is_unset(tmp_path):
    """Empty was the working directory itself: the demo's state went to ./state; now it is unset
    (demo-out), as an empty INTEREST_DATA_DIR is."""
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", INTEREST_BOOTSTRAP_TIMEOUT_S="1",
               INTEREST_MODEL_DIR=str(tmp_path), INTEREST_DEMO_DIR="", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "stream_app.cli", "demo"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.stderr.splitlines()[-1] == ("Error: the demo's step `interest-stream topics create` failed "
                                           "(exit code 1; its error is above)")
    assert [p.name for p in tmp_path.iterdir()] == ["demo-out"]
    assert [p.name for p in (tmp_path / "demo-out").iterdir()] == ["state"]


@pytest.mark.parametrize("signum, status, line", [
    ("SIGTERM", 143, "Error: stopped by SIGTERM"),
    ("SIGINT", 0, None),  # Ctrl-C is how tail is stopped
])
def test_tail_stopped_by_sigterm_exits_143(signum, status, line):
    """tail ends quietly on Ctrl-C, and so it did on SIGTERM: exit 0, where every other command
    SIGTERM cuts short exits 143. Its consumer (no broker) sends the signal once tail reads."""
    code = f"""
import os, signal, sys, time
import stream_app.cli as cli
class Consumer:
    def partitions_for_topic(self, topic): return {{0}}
    def assign(self, tps): pass
    def seek_to_end(self, *tps): pass
    def close(self): pass
    def __iter__(self):
        os.kill(os.getpid(), signal.{signum})
        time.sleep(30)
        return iter(())
cli._consumer = lambda s, **kw: Consumer()
sys.argv = ["interest-stream", "tail"]
cli.main()
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == status, proc.stderr
    assert proc.stderr.splitlines()[-1:] == ([line] if line else []) and "Traceback" not in proc.stderr


def test_a_demo_directory_that_cannot_be_made_is_a_one_line_error(tmp_path):
    """A file in the way was a FileExistsError traceback; a missing parent (FileNotFoundError)
    is now made, as INTEREST_DATA_DIR's are."""
    (tmp_path / "file").write_text("")
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", INTEREST_BOOTSTRAP_TIMEOUT_S="1",
               INTEREST_MODEL_DIR=str(tmp_path), INTEREST_DEMO_DIR=str(tmp_path / "file"))
    out = subprocess.run([sys.executable, "-m", "stream_app.cli", "demo"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr == f"Error: INTEREST_DEMO_DIR: cannot create {tmp_path / 'file'}: File exists\n"
    env["INTEREST_DEMO_DIR"] = str(tmp_path / "new" / "out")
    out = subprocess.run([sys.executable, "-m", "stream_app.cli", "demo"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert (tmp_path / "new" / "out").is_dir()
    assert out.stderr.splitlines()[-1] == ("Error: the demo's step `interest-stream topics create` failed "
                                           "(exit code 1; its error is above)")


@pytest.mark.parametrize("signum, status, line", [
    ("SIGTERM", 143, "Error: stopped by SIGTERM"),
    ("SIGINT", 1, "Aborted!"),  # Ctrl-C stays click's
])
def test_a_command_stopped_by_sigterm_exits_143_and_by_ctrl_c_1(signum, status, line, tmp_path):
    """A command SIGTERM (`timeout`, `kill`, a job scheduler's stop) cut short exited with status
    1, as for an error, so a scheduler could not tell a stop from a failure; it now ends with 143
    (128 + 15), as the demo does. A command with no line of its own for it says so. The simulation
    sends itself the signal once it has started; no broker is asked."""
    code = f"""
import os, signal, sys, time
import models.simulate
def simulate_to_files(*args, **kwargs):
    os.kill(os.getpid(), signal.{signum})
    time.sleep(30)
models.simulate.simulate_to_files = simulate_to_files
from stream_app.cli import main
sys.argv = ["interest-stream", "simulate", "--users", "3", "--days", "1", "--out", {str(tmp_path / "log.jsonl")!r}]
main()
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr.splitlines()[-1]) == (status, line), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--from", "2001-01-03", "--to", "2001-01-02"], "--to (2001-01-02T00:00:00Z) must be after --from "
                                                     "(2001-01-03T00:00:00Z)"),
    (["--from", "2001-01-01", "--to", "2001-01-02", "--model", ""],
     "no model: give --model DIR or set INTEREST_MODEL_DIR"),
])
def test_replay_checks_its_arguments_before_it_asks_kafka(args, message):
    """With no broker, a reversed range or no model was reported as Kafka that could not be reached
    (after the bootstrap timeout): what to fix was not said."""
    env = {k: v for k, v in os.environ.items() if k != "INTEREST_MODEL_DIR"}
    env.update(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", INTEREST_BOOTSTRAP_TIMEOUT_S="1")
    out = subprocess.run([sys.executable, "-m", "stream_app.cli", "replay", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stderr) == (1, f"Error: {message}\n")

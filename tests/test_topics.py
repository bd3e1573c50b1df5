"""`interest-stream topics create`: partitions, compaction, retention, prefix; no auto-creation."""
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from conftest import cli

pytestmark = pytest.mark.kafka


def test_topics_create(env):
    prefix = env["INTEREST_TOPIC_PREFIX"]
    env = dict(env, INTEREST_PARTITIONS="3", INTEREST_RETENTION_MS="86400000")
    out = cli(env, "topics", "create").stdout
    expected = [f"{prefix}{t}" for t in (
        "events.click", "events.browse", "events.search", "user-interests",
        "user-interests.backfill", "events.dlq",
        "interest-control", "interest-stream-users-changelog")]
    assert [line.split()[1] for line in out.splitlines()] == expected
    assert all(line.startswith("created") for line in out.splitlines())
    again = cli(env, "topics", "create").stdout
    assert all(line.startswith("exists") for line in again.splitlines())

    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(expected)}
        assert described == {t: 3 for t in expected}

        def config(topic, name):
            res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
            return res["topic"][topic][name]["value"]

        assert config(f"{prefix}user-interests", "cleanup.policy") == "compact"
        assert config(f"{prefix}user-interests.backfill", "cleanup.policy") == "compact"
        assert config(f"{prefix}interest-stream-users-changelog", "cleanup.policy") == "compact"
        assert config(f"{prefix}events.click", "cleanup.policy") == "delete"
        assert config(f"{prefix}events.click", "retention.ms") == "86400000"
        # events up to INTEREST_FUTURE_S (a day) ahead are the worker's to judge, not the broker's hour
        assert config(f"{prefix}events.click", "message.timestamp.after.max.ms") == "86400000"
        assert config(f"{prefix}events.dlq", "message.timestamp.after.max.ms") == "3600000"  # Kafka 4's default
        # the broker does not auto-create: an unknown topic stays unknown
        assert f"{prefix}nope" not in admin.list_topics()
    finally:
        admin.close()


def test_bad_setting_is_a_clear_error(env):
    proc = cli(dict(env, INTEREST_PARTITIONS="six"), "topics", "create", check=False)
    assert proc.returncode != 0
    assert "INTEREST_PARTITIONS must be an integer, got 'six'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_name_the_broker_refuses_is_its_reason_in_one_line(env):
    """A broker message holding a quote is in double quotes in kafka-python's error, which the CLI's
    error_message='...' missed: the whole CreateTopics request and response were printed."""
    prefix = env["INTEREST_TOPIC_PREFIX"]  # t<n>-<hex>.
    cli(env, "topics", "create")
    other = prefix[:-1] + "_"  # Kafka's metrics take '.' and '_' for the same character
    out = cli(dict(env, INTEREST_TOPIC_PREFIX=other), "topics", "create", check=False)
    assert out.returncode == 1
    assert out.stderr == (f"Error: Kafka at {env['KAFKA_BOOTSTRAP_SERVERS']} refused: InvalidTopicError: Topic "
                          f"'{other}events.click' collides with existing topic: {prefix}events.click\n")


def test_topics_create_raises_the_limits_of_a_deployment_made_before(env):
    """The DLQ and the changelog made before `topics create` raised their max.message.bytes keep
    the broker's 1 MB, which refuses large dead letters and busy users' states, and an input topic
    made before it took events a day ahead keeps Kafka 4's hour: topics create raises them, and
    leaves their other settings alone."""
    from kafka.admin import NewTopic

    prefix = env["INTEREST_TOPIC_PREFIX"]
    click, dlq, changelog = f"{prefix}events.click", f"{prefix}events.dlq", f"{prefix}interest-stream-users-changelog"
    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        parts = int(env["INTEREST_PARTITIONS"])  # co-partitioned
        admin.create_topics([NewTopic(click, parts, 1, topic_configs={"retention.ms": "7200000"}),
                             NewTopic(dlq, 6, 1, topic_configs={"retention.ms": "3600000"}),
                             NewTopic(changelog, parts, 1, topic_configs={"cleanup.policy": "compact"})])
        out = cli(env, "topics", "create").stdout.splitlines()
        assert [line for line in out if not line.startswith("created")] == [
            f"raised   {click}", f"raised   {dlq}", f"raised   {changelog}"]

        def config(topic, name):
            res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
            return res["topic"][topic][name]["value"]

        assert config(dlq, "max.message.bytes") == "4194304"
        assert config(changelog, "max.message.bytes") == "16777216"
        assert config(click, "message.timestamp.after.max.ms") == "86400000"
        assert config(dlq, "retention.ms") == "3600000"  # kept: the change is incremental
        assert config(click, "retention.ms") == "7200000"
        assert config(changelog, "cleanup.policy") == "compact"
        again = cli(env, "topics", "create").stdout.splitlines()
        assert all(line.startswith("exists") for line in again)
    finally:
        admin.close()


def test_a_limit_the_broker_will_not_raise_is_a_clear_error():
    from stream_app.topics import TopicError, alter_limits

    ahead = "message.timestamp.after.max.ms"

    class Client:
        def alter_configs(self, resources, incremental):
            assert incremental and [(r.name, r.configs) for r in resources] == [
                ("a", {"max.message.bytes": "4194304"}),
                ("b", {"max.message.bytes": "16777216", ahead: "86400000"})]  # one resource a topic
            return {"topic": {"a": "OK", "b": "[Error 29] TopicAuthorizationFailedError: denied"}}

    with pytest.raises(TopicError) as err:
        alter_limits(Client(), {("a", "max.message.bytes"): (1048588, 4194304),
                                ("b", "max.message.bytes"): (1048588, 16777216), ("b", ahead): (3600000, 86400000)})
    assert str(err.value) == ("cannot raise max.message.bytes to 16777216, message.timestamp.after.max.ms to "
                              "86400000 of b: [Error 29] TopicAuthorizationFailedError: denied")


def test_the_changelog_takes_the_largest_state_the_worker_writes():
    """16 MiB by default and for smaller states; a state of INTEREST_MAX_STATE_BYTES plus 1 KiB
    (its key and the batch's header) when that is larger, so `topics create` and the start's
    check ask for what the flush will write."""
    from stream_app.settings import Settings
    from stream_app.topics import topic_specs

    def changelog_limit(env):
        [spec] = [spec for spec in topic_specs(Settings.from_env(env)) if spec.name.endswith("-changelog")]
        return int(spec.config["max.message.bytes"])

    assert changelog_limit({}) == 16 * 2**20
    assert changelog_limit({"INTEREST_MAX_STATE_BYTES": str(2**20)}) == 16 * 2**20
    assert changelog_limit({"INTEREST_MAX_STATE_BYTES": str(32 * 2**20)}) == 32 * 2**20 + 2**10


def test_topics_create_refuses_more_replicas_than_brokers_before_creating_anything(env):
    """INTEREST_REPLICATION was ignored: every topic was created with one replica (the changelog
    Faust would have made with INTEREST_REPLICATION too), without a word."""
    prefix = env["INTEREST_TOPIC_PREFIX"]
    proc = cli(dict(env, INTEREST_REPLICATION="2"), "topics", "create", check=False)
    assert proc.returncode == 1
    assert proc.stderr == "Error: INTEREST_REPLICATION=2 but the cluster has 1 broker: set INTEREST_REPLICATION <= 1\n"
    assert proc.stdout == ""
    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        assert [t for t in admin.list_topics() if t.startswith(prefix)] == []
    finally:
        admin.close()


def test_topics_are_created_with_the_replication_setting(monkeypatch):
    """One broker here: the NewTopic requests a three-broker cluster would get."""
    from stream_app import topics
    from stream_app.settings import Settings

    made = []

    class Admin:
        def describe_cluster(self):
            return {"brokers": [{"node_id": n} for n in range(3)]}

        def list_topics(self):
            return []

        def create_topics(self, new):
            made.extend(new)

        def close(self):
            pass

    monkeypatch.setattr(topics, "admin", lambda settings: Admin())
    s = Settings.from_env({"INTEREST_REPLICATION": "3", "INTEREST_TOPIC_PREFIX": "x-"})
    assert set(topics.create_topics(s).values()) == {"created"}
    assert {t.name: t.replication_factor for t in made} == {spec.name: 3 for spec in topics.topic_specs(s)}
    made.clear()
    assert topics.ensure_output_topic(s, "x-mine.backfill") == "created"  # replay's --output-topic
    assert [(t.name, t.replication_factor) for t in made] == [("x-mine.backfill", 3)]
    with pytest.raises(topics.TopicError) as err:
        topics.create_topics(Settings.from_env({"INTEREST_REPLICATION": "4"}))
    assert str(err.value) == "INTEREST_REPLICATION=4 but the cluster has 3 brokers: set INTEREST_REPLICATION <= 3"


def test_the_brokers_are_counted_only_when_a_topic_is_to_be_created(monkeypatch):
    """Every topic exists: a broker of three that is down (two answer) does not stop `topics
    create`, a worker's start or a replay, as it did once the check ran before each of them."""
    from stream_app import topics
    from stream_app.settings import Settings

    s = Settings.from_env({"INTEREST_REPLICATION": "3"})
    names = [spec.name for spec in topics.topic_specs(s)]

    class Admin:
        def describe_cluster(self):
            return {"brokers": [{"node_id": 0}, {"node_id": 1}]}

        def list_topics(self):
            return names

        def describe_topics(self, wanted):
            return [{"name": n, "error_code": 0, "partitions": [{}] * s.partitions} for n in wanted]

        def describe_configs(self, resources, config_filter):
            self.described.append(sorted(r.name for r in resources))
            return {"topic": {r.name: {topics.POLICY: {"value": specs[r.name].config.get(topics.POLICY, "delete")},
                                       topics.LIMIT: {"value": specs[r.name].config.get(topics.LIMIT, "1048588")},
                                       topics.AHEAD: {"value": specs[r.name].config.get(topics.AHEAD, "3600000")}}
                              for r in resources}}

        def close(self):
            pass

    specs = {spec.name: spec for spec in topics.topic_specs(s)}
    client = Admin()
    client.described = []
    monkeypatch.setattr(topics, "admin", lambda settings: client)
    assert set(topics.create_topics(s).values()) == {"exists"}
    assert client.described == [sorted(names)]  # one DescribeConfigs for the policies and the limits
    names.remove(s.dlq_topic)  # one to create: the brokers are counted
    with pytest.raises(topics.TopicError) as err:
        topics.create_topics(s)
    assert str(err.value) == "INTEREST_REPLICATION=3 but the cluster has 2 brokers: set INTEREST_REPLICATION <= 2"


def test_topics_create_refuses_other_partition_counts(env):
    """On the 6-partition topics of INTEREST_PARTITIONS=6, INTEREST_PARTITIONS=3 printed "exists"
    for each and ended well; the worker refused them later."""
    prefix = env["INTEREST_TOPIC_PREFIX"]
    cli(dict(env, INTEREST_PARTITIONS="6"), "topics", "create")
    proc = cli(dict(env, INTEREST_PARTITIONS="3"), "topics", "create", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    names = [f"{prefix}{t}" for t in ("events.click", "events.browse", "events.search", "user-interests",
                                      "interest-control", "interest-stream-users-changelog")]
    assert proc.stderr == ("Error: existing topics have other partition counts than INTEREST_PARTITIONS=3: "
                           + ", ".join(f"{t}=6" for t in names)
                           + "; they are co-partitioned by user with the input topics: set INTEREST_PARTITIONS=6\n")
    again = cli(dict(env, INTEREST_PARTITIONS="6"), "topics", "create").stdout.splitlines()
    assert all(line.startswith("exists") for line in again)


def wrong_policy_topics(env) -> dict[str, str]:
    """The changelog, the output, an input and the DLQ made by hand with the other cleanup.policy
    (co-partitioned ones with INTEREST_PARTITIONS partitions): topic -> the policy it must have."""
    from kafka.admin import NewTopic

    prefix, n = env["INTEREST_TOPIC_PREFIX"], int(env["INTEREST_PARTITIONS"])
    made = {f"{prefix}interest-stream-users-changelog": ("delete", "compact"),
            f"{prefix}user-interests": ("delete", "compact"),
            f"{prefix}events.click": ("compact", "delete"),
            f"{prefix}events.dlq": ("compact,delete", "delete")}
    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        admin.create_topics([NewTopic(t, n, 1, topic_configs={"cleanup.policy": have})
                             for t, (have, _) in made.items()])
    finally:
        admin.close()
    return made


def policy_error(env, made) -> str:
    reason = {"compact": "without compaction its records older than retention.ms are deleted",
              "delete": "compaction keeps only each key's newest record"}
    ordered = sorted(made, key=lambda t: ["events.click", "user-interests", "events.dlq", "interest-stream-users"
                                          "-changelog"].index(t[len(env["INTEREST_TOPIC_PREFIX"]):]))
    return "; ".join(f"topic {t} has cleanup.policy={made[t][0]} but must be {made[t][1]} ({reason[made[t][1]]}): run "
                     f"`kafka-configs --bootstrap-server {env['KAFKA_BOOTSTRAP_SERVERS']} --alter --entity-type topics "
                     f"--entity-name {t} --add-config cleanup.policy={made[t][1]}`" for t in ordered)


def test_topics_create_refuses_existing_topics_with_another_cleanup_policy(env):
    """A changelog or output topic made by hand with cleanup.policy=delete (states and vectors
    older than retention.ms deleted: lost at the next restore, a forget's tombstone leaves older
    vectors), an input topic made compact (each user's newest event kept) printed "exists" and
    ended well. Refused now, naming each topic, before anything is created."""
    prefix = env["INTEREST_TOPIC_PREFIX"]
    made = wrong_policy_topics(env)
    proc = cli(env, "topics", "create", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"Error: {policy_error(env, made)}\n"
    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        assert sorted(t for t in admin.list_topics() if t.startswith(prefix)) == sorted(made)
    finally:
        admin.close()


def test_the_worker_refuses_existing_topics_with_another_cleanup_policy(env, workers):
    """`faust -A stream_app.app worker` runs no topics create: its start checks the policies."""
    from kafka.admin import NewTopic

    made = wrong_policy_topics(env)
    prefix, n = env["INTEREST_TOPIC_PREFIX"], int(env["INTEREST_PARTITIONS"])
    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        admin.create_topics([NewTopic(f"{prefix}{t}", n, 1) for t in ("events.browse", "events.search",
                                                                       "interest-control")])
    finally:
        admin.close()
    w = workers(start=False)
    w.start(wait=False)
    assert w.proc.wait(60) != 0
    assert policy_error(env, made) in w.log(200)


def test_a_topic_the_broker_does_not_describe_is_named(monkeypatch):
    """kafka-python leaves the config of a topic the broker refused to describe (no DescribeConfigs
    on it, or deleted meanwhile) empty without a word: `load jsonl`'s retention check ended in a
    KeyError traceback."""
    from stream_app import topics
    from stream_app.topics import TopicError, topic_config

    class Admin:
        asked: list = []

        def describe_configs(self, resources, config_filter):
            self.asked.append([r.name for r in resources])
            return {"topic": {"t.a": {"retention.ms": {"value": "-1"}}, "t.b": {}}}

    monkeypatch.setattr(topics, "DESCRIBE_PAUSE_S", 0.0)
    assert topic_config(Admin(), ["t.a"], "retention.ms") == {"t.a": "-1"}
    with pytest.raises(TopicError) as err:
        topic_config(Admin(), ["t.a", "t.b"], "retention.ms")
    assert str(err.value) == ("cannot read retention.ms of topic t.b: the broker did not describe it (does this "
                              "client have DescribeConfigs on it?)")
    # asked again for the one it did not describe (it may be too new for that broker), then named
    assert Admin.asked == [["t.a"], ["t.a", "t.b"], *[["t.b"]] * (topics.DESCRIBE_TRIES - 1)]


def test_a_topic_too_new_for_the_broker_asked_is_described_when_it_knows_it(monkeypatch):
    """`interest-stream worker` creates the missing topics and then checks every topic's config: in
    a cluster of several brokers, the one asked may not know a topic created a moment ago, and
    answers with no configs, which stopped the worker with "cannot read cleanup.policy"."""
    from stream_app import topics

    class Admin:
        asked = 0

        def describe_configs(self, resources, config_filter):
            Admin.asked += 1
            known = ["t.old"] if Admin.asked == 1 else ["t.old", "t.new"]
            return {"topic": {r.name: {key: {"value": f"{r.name}:{key}"} for key in r.configs} if r.name in known
                              else {} for r in resources}}

    monkeypatch.setattr(topics, "DESCRIBE_PAUSE_S", 0.0)
    assert topics.topic_configs(Admin(), ["t.old", "t.new"], [topics.POLICY, topics.LIMIT]) == {
        "t.old": {topics.POLICY: "t.old:cleanup.policy", topics.LIMIT: "t.old:max.message.bytes"},
        "t.new": {topics.POLICY: "t.new:cleanup.policy", topics.LIMIT: "t.new:max.message.bytes"}}
    assert Admin.asked == 2


def test_a_topic_made_by_another_meanwhile_has_its_config_checked(monkeypatch):
    """A topic missing at the listing but made by another before this one (TopicAlreadyExists)
    was "exists" unchecked: only the worker's start checked it again, with a second listing and
    DescribeConfigs. Now create_topics checks it as an existing one."""
    from kafka.errors import TopicAlreadyExistsError

    from stream_app import topics
    from stream_app.settings import Settings

    s = Settings.from_env({"INTEREST_TOPIC_PREFIX": "race."})

    class Admin:
        def describe_cluster(self):
            return {"brokers": [{"node_id": 0}]}

        def list_topics(self):
            return []

        def create_topics(self, new):
            if new[0].name == s.output_topic:
                raise TopicAlreadyExistsError()

        def describe_configs(self, resources, config_filter):
            return {"topic": {r.name: {topics.POLICY: {"value": "delete"}, topics.LIMIT: {"value": "1048588"},
                                       topics.AHEAD: {"value": "3600000"}} for r in resources}}

        def close(self):
            pass

    monkeypatch.setattr(topics, "admin", lambda settings: Admin())
    with pytest.raises(topics.TopicError) as err:
        topics.create_topics(s)
    assert str(err.value) == (
        "topic race.user-interests has cleanup.policy=delete but must be compact (without compaction its records "
        "older than retention.ms are deleted): run `kafka-configs --bootstrap-server localhost:9092 --alter "
        "--entity-type topics --entity-name race.user-interests --add-config cleanup.policy=compact`")


def test_the_start_checks_the_topics_unless_interest_stream_worker_has(monkeypatch):
    """`interest-stream worker` listed the topics and described their configs twice at start: in
    create_topics, then in the app's check_existing. The app skips its check when the command
    says it has checked them; `faust -A stream_app.app worker` does not, so its start checks."""
    from stream_app import app as app_module

    checked = []
    monkeypatch.setattr(app_module, "check_existing", lambda settings: checked.append(settings) or ["warned"])
    assert app_module.app.topics_checked is False  # as `faust -A` has it
    assert app_module.app.topic_warnings() == ["warned"] and checked == [app_module.settings]
    monkeypatch.setattr(app_module.app, "topics_checked", True)
    assert app_module.app.topic_warnings() == [] and len(checked) == 1


def test_interest_stream_worker_tells_the_app_it_has_checked_the_topics(tmp_path, monkeypatch):
    """What the command does before Faust runs, with fakes (no broker): create_topics, then the app
    started with topics_checked set."""
    import sys

    from click.testing import CliRunner

    from stream_app import cli, local_state, model_runtime, topics
    from stream_app import app as app_module

    seen = []
    monkeypatch.setattr(topics, "create_topics", lambda settings: seen.append("create_topics") or {})
    monkeypatch.setattr(topics, "check_input_topics", lambda settings: settings.partitions)
    monkeypatch.setattr(model_runtime.LoadedModel, "load", staticmethod(lambda *a, **kw: None))
    monkeypatch.setattr(local_state, "lock_state_dir", lambda path: None)
    monkeypatch.setattr(cli, "_check_listen", lambda settings: None)
    monkeypatch.setattr(app_module.app, "topics_checked", False)
    monkeypatch.setattr(app_module.app.models, "preloaded", None)  # the command's model, handed over
    monkeypatch.setattr(app_module.app, "main", lambda: seen.append(app_module.app.topics_checked))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setenv("INTEREST_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("INTEREST_DATA_DIR", str(tmp_path / "state"))
    res = CliRunner().invoke(cli.main, ["worker"])
    assert res.exit_code == 0, res.output
    assert seen == ["create_topics", True]


def test_the_start_warns_of_input_topics_that_refuse_events_a_day_ahead(monkeypatch):
    """Input topics made before `topics create` set message.timestamp.after.max.ms keep Kafka 4's
    hour: the worker's start says so, naming the setting and the command that raises it."""
    from stream_app import topics
    from stream_app.settings import Settings

    s = Settings.from_env({"INTEREST_FUTURE_S": "7200"})
    specs = {spec.name: spec for spec in topics.topic_specs(s)}

    class Admin:
        def list_topics(self):
            return list(specs)

        def describe_configs(self, resources, config_filter):
            return {"topic": {r.name: {topics.POLICY: {"value": specs[r.name].config[topics.POLICY]},
                                       topics.LIMIT: {"value": specs[r.name].config.get(topics.LIMIT, "1048588")},
                                       topics.AHEAD: {"value": "3600000"}} for r in resources}}

        def close(self):
            pass

    monkeypatch.setattr(topics, "admin", lambda settings: Admin())
    assert topics.check_existing(s) == [
        f"topic events.{t} has message.timestamp.after.max.ms=3600000, below the 7200000 ms (INTEREST_FUTURE_S) an "
        "event may be ahead of the clock; run `interest-stream topics create` to raise it"
        for t in ("click", "browse", "search")]
    short = Settings.from_env({"INTEREST_FUTURE_S": "60"})  # never below Kafka's hour
    assert {spec.config.get(topics.AHEAD) for spec in topics.topic_specs(short)} == {"3600000", None}
    assert topics.check_existing(short) == []

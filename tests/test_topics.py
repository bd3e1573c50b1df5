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
        # the broker does not auto-create: an unknown topic stays unknown
        assert f"{prefix}nope" not in admin.list_topics()
    finally:
        admin.close()


def test_bad_setting_is_a_clear_error(env):
    proc = cli(dict(env, INTEREST_PARTITIONS="six"), "topics", "create", check=False)
    assert proc.returncode != 0
    assert "INTEREST_PARTITIONS must be an integer, got 'six'" in proc.stderr
    assert "Traceback" not in proc.stderr

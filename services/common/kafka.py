"""Kafka plumbing shared by the services: topic creation and producers (confluent-kafka)."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from services.common.settings import KafkaSettings, StreamSettings

log = logging.getLogger(__name__)


def all_topics(settings: KafkaSettings, stream: StreamSettings | None = None) -> list[str]:
    """Every topic fraudscore uses, the stream's internal terminal-events topic included.

    `stream` defaults to the environment's StreamSettings: the internal topic's name may be
    overridden there and is derived from the transactions topic otherwise.
    """
    stream = stream if stream is not None else StreamSettings()
    return [
        settings.transactions_topic,
        settings.labels_topic,
        settings.dlq_topic,
        settings.scores_topic,
        stream.terminal_topic(settings.transactions_topic),
    ]


def ensure_topics(
    settings: KafkaSettings, topics: list[str] | None = None, timeout_s: float = 30.0
) -> None:
    """Create the topics that do not exist yet (partitions/replication from settings)."""
    admin = AdminClient(settings.client_config())
    wanted = topics if topics is not None else all_topics(settings)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            existing = set(admin.list_topics(timeout=5).topics)
            break
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    missing = [t for t in wanted if t not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [NewTopic(t, settings.partitions, settings.replication_factor) for t in missing]
    )
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            log.info("created topic %s (%s partitions)", topic, settings.partitions)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def make_producer(settings: KafkaSettings, **overrides: str | int | float) -> Producer:
    conf: dict[str, str | int | float | bool] = {
        **settings.client_config(),
        "linger.ms": 5,
        "enable.idempotence": False,
        "acks": "all",
    }
    conf.update(overrides)
    return Producer(conf)

"""Simulated transactions and labels go through a real broker intact, keyed by card."""

from __future__ import annotations

import argparse
import time
import uuid
from collections import defaultdict

import pandas as pd
import pytest
from confluent_kafka import Consumer

from services.common.settings import KafkaSettings
from services.proto.fraudscore.v1 import transaction_pb2
from services.simulator import cli, generate, producer

pytestmark = pytest.mark.integration

CONFIG = generate.SimConfig(n_customers=300, n_terminals=500, n_days=10, seed=11)

Received = dict[str, list[tuple[bytes, bytes]]]


def _consume(settings: KafkaSettings, expected: dict[str, int]) -> Received:
    """Everything on the given topics from the beginning; one group join for all of them."""
    consumer = Consumer(
        {
            **settings.client_config(),
            "group.id": f"sim-test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe(list(expected))
    received: Received = defaultdict(list)

    def read(timeout: float) -> None:
        for msg in consumer.consume(num_messages=1000, timeout=timeout):
            assert msg.error() is None, msg.error()
            key, value, topic = msg.key(), msg.value(), msg.topic()
            assert key is not None and value is not None and topic is not None
            received[topic].append((key, value))

    deadline = time.monotonic() + 60
    try:
        while any(len(received[t]) < n for t, n in expected.items()):
            assert time.monotonic() < deadline, {t: len(v) for t, v in received.items()}
            read(0.5)
        read(1.0)  # a grace read, so a duplicate delivery would show up
    finally:
        consumer.close()
    return received


def _assert_transactions_arrived(df: pd.DataFrame, received: list[tuple[bytes, bytes]]) -> None:
    decoded: dict[str, transaction_pb2.Transaction] = {}
    for key, value in received:
        txn = transaction_pb2.Transaction.FromString(value)
        assert txn.transaction_id not in decoded, f"{txn.transaction_id} delivered twice"
        assert key == txn.card_id.encode()
        decoded[txn.transaction_id] = txn
    assert set(decoded) == set(df["transaction_id"])
    for row in df.to_dict("records"):
        assert decoded[row["transaction_id"]] == producer.to_proto(row)


def _assert_labels_arrived(labels: pd.DataFrame, received: list[tuple[bytes, bytes]]) -> None:
    decoded: dict[str, transaction_pb2.FraudLabel] = {}
    for key, value in received:
        label = transaction_pb2.FraudLabel.FromString(value)
        assert label.transaction_id not in decoded, f"{label.transaction_id} delivered twice"
        assert key == label.card_id.encode()
        decoded[label.transaction_id] = label
    assert set(decoded) == set(labels["transaction_id"])
    for row in labels.to_dict("records"):
        assert decoded[row["transaction_id"]] == producer.label_to_proto(row)


def test_transactions_and_labels_arrive_once_keyed_by_card(fresh_topics: KafkaSettings) -> None:
    history = generate.simulate(CONFIG)
    df = history.head(600)
    labels = generate.labels_for(history, seed=CONFIG.seed)
    assert len(labels) > 0

    assert producer.produce_transactions(fresh_topics, df, rate=None) == len(df)
    assert producer.produce_labels(fresh_topics, labels, rate=None) == len(labels)

    received = _consume(
        fresh_topics,
        {fresh_topics.transactions_topic: len(df), fresh_topics.labels_topic: len(labels)},
    )
    _assert_transactions_arrived(df, received[fresh_topics.transactions_topic])
    _assert_labels_arrived(labels, received[fresh_topics.labels_topic])


def test_cli_publishes_to_the_configured_broker(
    fresh_topics: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fresh_topics.bootstrap_servers is not None
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", fresh_topics.bootstrap_servers)
    monkeypatch.setenv("KAFKA_TRANSACTIONS_TOPIC", fresh_topics.transactions_topic)
    monkeypatch.setenv("KAFKA_LABELS_TOPIC", fresh_topics.labels_topic)
    parser = argparse.ArgumentParser(prog="fraudctl")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["simulate", "--customers", "60", "--terminals", "90", "--days", "3", "--seed", "2",
         "--start", "2026-02-01", "--kafka", "--labels", "--rate", "2000"]
    )  # fmt: skip
    assert args.func(args) == 0

    config = generate.SimConfig(n_customers=60, n_terminals=90, n_days=3, seed=2, start=args.start)
    df = generate.simulate(config)
    labels = generate.labels_for(df, seed=2)
    received = _consume(
        fresh_topics,
        {fresh_topics.transactions_topic: len(df), fresh_topics.labels_topic: len(labels)},
    )
    _assert_transactions_arrived(df, received[fresh_topics.transactions_topic])
    _assert_labels_arrived(labels, received[fresh_topics.labels_topic])

"""Protobuf encoding and the producing loop (pacing, retries, delivery errors) without a broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest

from services.common import events
from services.common.settings import KafkaSettings
from services.proto.fraudscore.v1 import transaction_pb2
from services.simulator import producer
from services.simulator.generate import SimConfig, labels_for, simulate

SETTINGS = KafkaSettings(
    bootstrap_servers="unused:9092", transactions_topic="tx-t", labels_topic="labels-t"
)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return simulate(SimConfig(n_customers=300, n_terminals=500, n_days=20, seed=9))


class _Delivered:
    def __init__(self, topic: str, error: str | None) -> None:
        self._topic = topic
        self.error = error

    def topic(self) -> str:
        return self._topic


class FakeProducer:
    """Acknowledges on poll/flush like librdkafka; can fail deliveries or fill its queue."""

    def __init__(self, fail_at: int | None = None, full_once_at: int | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.pending: list[tuple[Callable[[Any, Any], None], str]] = []
        self.fail_at = fail_at
        self.full_once_at = full_once_at
        self.flushed = False

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        if self.full_once_at is not None and len(self.sent) == self.full_once_at:
            self.full_once_at = None
            raise BufferError("queue full")
        assert value is not None and key is not None and on_delivery is not None
        self.sent.append((topic, key, value))
        self.pending.append((on_delivery, topic))

    def poll(self, timeout: float = 0) -> int:
        served = 0
        for callback, topic in self.pending:
            index = len(self.sent) - len(self.pending) + served
            error = "MSG_TIMED_OUT" if index == self.fail_at else None
            callback(error, _Delivered(topic, error))
            served += 1
        self.pending.clear()
        return served

    def flush(self, timeout: float = 0) -> int:
        self.flushed = True
        self.poll()
        return 0


def test_transaction_proto_carries_every_field(frame: pd.DataFrame) -> None:
    row = frame.iloc[5]
    txn = producer.to_proto(row)
    assert txn.transaction_id == row["transaction_id"]
    assert txn.card_id == row["card_id"]
    assert txn.terminal_id == row["terminal_id"]
    assert txn.amount_minor == row["amount_minor"]
    assert txn.currency == "EUR"
    assert txn.event_time.ToMilliseconds() == row["event_ms"]
    assert txn.channel == row["channel"]
    assert txn.merchant_category_code == row["merchant_category_code"]
    assert txn.country == row["country"]


def test_to_proto_accepts_a_plain_mapping() -> None:
    txn = producer.to_proto(
        {
            "transaction_id": "t1",
            "card_id": "card-000001",
            "terminal_id": "term-000002",
            "amount_minor": 1999,
            "currency": "EUR",
            "event_ms": 1_767_225_600_123,
            "channel": transaction_pb2.CHANNEL_ECOMMERCE,
            "merchant_category_code": "5732",
            "country": "DE",
        }
    )
    assert txn.event_time.seconds == 1_767_225_600
    assert txn.event_time.nanos == 123_000_000
    assert txn.channel == transaction_pb2.CHANNEL_ECOMMERCE


def test_every_simulated_transaction_passes_validation(frame: pd.DataFrame) -> None:
    for row in frame.to_dict("records"):
        valid = events.validate(producer.to_proto(row))
        assert valid.event_ms == row["event_ms"]
        assert valid.amount == pytest.approx(row["amount_minor"] / 100)


def test_label_proto_carries_every_field(frame: pd.DataFrame) -> None:
    row = labels_for(frame, seed=9).iloc[0]
    label = producer.label_to_proto(row)
    assert label.transaction_id == row["transaction_id"]
    assert label.card_id == row["card_id"]
    assert label.terminal_id == row["terminal_id"]
    assert label.is_fraud is True
    assert label.transaction_time.ToMilliseconds() == row["transaction_ms"]
    assert label.reported_at.ToMilliseconds() == row["reported_ms"]


def test_transactions_are_keyed_by_card_and_flushed(frame: pd.DataFrame) -> None:
    fake = FakeProducer()
    sent = producer.produce_transactions(SETTINGS, frame.head(50), rate=None, producer=fake)
    assert sent == 50
    assert fake.flushed
    for (topic, key, value), (_, row) in zip(fake.sent, frame.head(50).iterrows(), strict=True):
        assert topic == "tx-t"
        assert key == row["card_id"].encode()
        assert transaction_pb2.Transaction.FromString(value) == producer.to_proto(row)


def test_labels_go_to_the_labels_topic(frame: pd.DataFrame) -> None:
    labels = labels_for(frame, seed=9)
    fake = FakeProducer()
    assert producer.produce_labels(SETTINGS, labels, producer=fake) == len(labels)
    assert {topic for topic, _, _ in fake.sent} == {"labels-t"}
    decoded = [transaction_pb2.FraudLabel.FromString(v) for _, _, v in fake.sent]
    assert [d.transaction_id for d in decoded] == labels["transaction_id"].tolist()


def test_rate_throttles_the_send_loop(frame: pd.DataFrame) -> None:
    started = time.monotonic()
    producer.produce_transactions(SETTINGS, frame.head(41), rate=200.0, producer=FakeProducer())
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 1.0


def test_a_failed_delivery_raises(frame: pd.DataFrame) -> None:
    with pytest.raises(producer.DeliveryError, match="MSG_TIMED_OUT"):
        producer.produce_transactions(SETTINGS, frame.head(20), producer=FakeProducer(fail_at=7))


def test_a_full_local_queue_is_drained_and_the_message_retried(frame: pd.DataFrame) -> None:
    fake = FakeProducer(full_once_at=10)
    assert producer.produce_transactions(SETTINGS, frame.head(20), producer=fake) == 20
    ids = [transaction_pb2.Transaction.FromString(v).transaction_id for _, _, v in fake.sent]
    assert ids == frame.head(20)["transaction_id"].tolist()


def test_missing_columns_are_reported(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="country"):
        producer.produce_transactions(
            SETTINGS, frame.drop(columns=["country"]), producer=FakeProducer()
        )

"""Publish simulated transactions and fraud labels to Kafka as protobuf.

Kafka key: the card token (so one card's events stay ordered in one partition); value: the
serialized `Transaction` / `FraudLabel`. Message timestamps are left to the producer (now):
stamping replayed history with its event time would let a broker's time-based retention delete
it on arrival.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np
import pandas as pd
from confluent_kafka import KafkaError, Message, Producer
from opentelemetry import trace

from services.common.kafka import make_producer
from services.common.settings import KafkaSettings
from services.common.telemetry import KafkaHeaders, kafka_headers
from services.proto.fraudscore.v1 import transaction_pb2

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 60.0
#: Messages per `simulator.publish` span (they share its trace context).
PUBLISH_SPAN_MESSAGES = 500


class Row(Protocol):
    """A DataFrame row (`pd.Series`) or any mapping of column name to value."""

    def __getitem__(self, key: str, /) -> Any: ...


class ProducerLike(Protocol):
    """The part of confluent_kafka.Producer used here (a fake stands in for it in unit tests)."""

    def produce(
        self,
        topic: str,
        value: bytes | None = ...,
        key: bytes | None = ...,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = ...,
        headers: KafkaHeaders | None = ...,
    ) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


class DeliveryError(RuntimeError):
    """The broker did not accept a message."""


def _transaction(
    transaction_id: str,
    card_id: str,
    terminal_id: str,
    amount_minor: int,
    currency: str,
    event_ms: int,
    channel: int,
    merchant_category_code: str,
    country: str,
) -> transaction_pb2.Transaction:
    txn = transaction_pb2.Transaction(
        transaction_id=transaction_id,
        card_id=card_id,
        terminal_id=terminal_id,
        amount_minor=amount_minor,
        currency=currency,
        channel=transaction_pb2.Channel.ValueType(channel),
        merchant_category_code=merchant_category_code,
        country=country,
    )
    txn.event_time.seconds = event_ms // 1000
    txn.event_time.nanos = (event_ms % 1000) * 1_000_000
    return txn


def _label(
    transaction_id: str,
    card_id: str,
    terminal_id: str,
    is_fraud: bool,
    transaction_ms: int,
    reported_ms: int,
) -> transaction_pb2.FraudLabel:
    label = transaction_pb2.FraudLabel(
        transaction_id=transaction_id,
        card_id=card_id,
        terminal_id=terminal_id,
        is_fraud=is_fraud,
    )
    label.reported_at.seconds = reported_ms // 1000
    label.reported_at.nanos = (reported_ms % 1000) * 1_000_000
    label.transaction_time.seconds = transaction_ms // 1000
    label.transaction_time.nanos = (transaction_ms % 1000) * 1_000_000
    return label


def to_proto(row: Row) -> transaction_pb2.Transaction:
    """A `Transaction` from one simulated row (a mapping or a DataFrame row)."""
    return _transaction(
        str(row["transaction_id"]),
        str(row["card_id"]),
        str(row["terminal_id"]),
        int(row["amount_minor"]),
        str(row["currency"]),
        int(row["event_ms"]),
        int(row["channel"]),
        str(row["merchant_category_code"]),
        str(row["country"]),
    )


def label_to_proto(row: Row) -> transaction_pb2.FraudLabel:
    """A `FraudLabel` from one row of `labels_for`."""
    return _label(
        str(row["transaction_id"]),
        str(row["card_id"]),
        str(row["terminal_id"]),
        bool(row["is_fraud"]),
        int(row["transaction_ms"]),
        int(row["reported_ms"]),
    )


def _columns(df: pd.DataFrame, names: tuple[str, ...]) -> Iterator[tuple[Any, ...]]:
    # tolist() hands back Python ints/strs: protobuf setters are much faster on those than numpy.
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise ValueError(f"missing columns: {missing}")
    return zip(*(np.asarray(df[n]).tolist() for n in names), strict=True)


_TRANSACTION_FIELDS = (
    "transaction_id",
    "card_id",
    "terminal_id",
    "amount_minor",
    "currency",
    "event_ms",
    "channel",
    "merchant_category_code",
    "country",
)
_LABEL_FIELDS = (
    "transaction_id",
    "card_id",
    "terminal_id",
    "is_fraud",
    "transaction_ms",
    "reported_ms",
)


def produce_transactions(
    settings: KafkaSettings,
    df: pd.DataFrame,
    rate: float | None = None,
    producer: Producer | ProducerLike | None = None,
    tracer: trace.Tracer | None = None,
) -> int:
    """Publish every row of `df` to the transactions topic; returns the count delivered.

    `rate` throttles to that many events per second (None: as fast as the producer takes them).
    Flushes before returning; raises DeliveryError if any message was not delivered. `tracer`
    (default: the global provider's) traces the publishes; see `_PublishSpans`.
    """
    messages = (
        (values[1], _transaction(*values).SerializeToString())
        for values in _columns(df, _TRANSACTION_FIELDS)
    )
    return _produce(settings, settings.transactions_topic, messages, rate, producer, tracer)


def produce_labels(
    settings: KafkaSettings,
    labels: pd.DataFrame,
    rate: float | None = None,
    producer: Producer | ProducerLike | None = None,
) -> int:
    """Publish every row of `labels` to the labels topic; same contract as produce_transactions."""
    messages = (
        (values[1], _label(*values).SerializeToString())
        for values in _columns(labels, _LABEL_FIELDS)
    )
    return _produce(settings, settings.labels_topic, messages, rate, producer)


class _Deliveries:
    """Counts acknowledgements and keeps the first failure to raise it in the caller's thread."""

    def __init__(self) -> None:
        self.delivered = 0
        self.failures = 0
        self.first_error: str | None = None

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failures += 1
        if self.first_error is None:
            self.first_error = f"{msg.topic()}: {err}"

    def check(self) -> None:
        if self.first_error is not None:
            raise DeliveryError(
                f"{self.failures} message(s) not delivered, first: {self.first_error}"
            )


class _PublishSpans:
    """One `simulator.publish` span per PUBLISH_SPAN_MESSAGES messages, whose context every
    message of that group carries in its headers (W3C traceparent), so the stream's span for
    them joins the same trace. A span per message would cost more than producing it. Without a
    recording tracer (no OTLP endpoint) no span is kept and no header is added."""

    def __init__(self, tracer: trace.Tracer | None, topic: str) -> None:
        self.tracer = tracer if tracer is not None else trace.get_tracer("fraudscore.simulator")
        self.topic = topic
        self.span: trace.Span | None = None
        self.count = 0
        self.headers: KafkaHeaders = []

    def next_headers(self) -> KafkaHeaders:
        if self.span is None or self.count >= PUBLISH_SPAN_MESSAGES:
            self.end()
            span = self.tracer.start_span(
                "simulator.publish",
                kind=trace.SpanKind.PRODUCER,
                attributes={"messaging.destination.name": self.topic},
            )
            self.span = span
            self.headers = (
                kafka_headers(trace.set_span_in_context(span)) if span.is_recording() else []
            )
        self.count += 1
        return self.headers

    def end(self) -> None:
        if self.span is not None:
            self.span.set_attribute("messaging.batch.message_count", self.count)
            self.span.end()
        self.span = None
        self.count = 0


def _produce(
    settings: KafkaSettings,
    topic: str,
    messages: Iterable[tuple[str, bytes]],
    rate: float | None,
    producer: Producer | ProducerLike | None,
    tracer: trace.Tracer | None = None,
) -> int:
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive (or None for unthrottled)")
    client: Producer | ProducerLike = producer if producer is not None else make_producer(settings)
    deliveries = _Deliveries()
    spans = _PublishSpans(tracer, topic)
    started = time.monotonic()
    sent = 0
    try:
        for key, value in messages:
            if rate is not None:
                # Paced against the start, not the previous send: sleep overshoot never adds up.
                ahead = started + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            headers = spans.next_headers()
            while True:
                try:
                    if headers:
                        client.produce(
                            topic,
                            value=value,
                            key=key.encode(),
                            on_delivery=deliveries,
                            headers=headers,
                        )
                    else:
                        client.produce(topic, value=value, key=key.encode(), on_delivery=deliveries)
                    break
                except BufferError:
                    # The local queue is full: let librdkafka drain it, then retry this message.
                    client.poll(0.1)
            sent += 1
            client.poll(0)
            deliveries.check()
    finally:
        spans.end()
    remaining = client.flush(FLUSH_TIMEOUT_S)
    deliveries.check()
    if remaining:
        raise DeliveryError(f"{remaining} message(s) still queued for {topic} after flush")
    log.info("produced %s messages to %s in %.1fs", sent, topic, time.monotonic() - started)
    return deliveries.delivered

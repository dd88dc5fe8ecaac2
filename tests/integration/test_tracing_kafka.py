"""W3C trace context rides in Kafka message headers, so a consumer's span joins the producer's
trace (services.common.telemetry.kafka_headers / context_from_kafka_headers)."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Message
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import kafka, telemetry
from services.common.settings import KafkaSettings

pytestmark = pytest.mark.integration


@pytest.fixture()
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def consume_one(settings: KafkaSettings, topic: str, timeout_s: float = 60) -> Message:
    consumer = Consumer(
        {
            **settings.client_config(),
            "group.id": f"trace-test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None:
                assert msg.error() is None, msg.error()
                return msg
    finally:
        consumer.close()
    raise AssertionError(f"nothing on {topic} after {timeout_s}s")


def test_consumer_span_joins_the_producer_trace_through_message_headers(
    fresh_topics: KafkaSettings, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("tests.tracing_kafka")
    producer = kafka.make_producer(fresh_topics)
    with tracer.start_as_current_span("publish") as publish:
        headers = telemetry.kafka_headers()
        producer.produce(
            fresh_topics.transactions_topic, key=b"card-1", value=b"payload", headers=headers
        )
    assert producer.flush(10) == 0
    assert [key for key, _ in headers] == ["traceparent"]

    msg = consume_one(fresh_topics, fresh_topics.transactions_topic)
    parent = telemetry.context_from_kafka_headers(msg.headers())
    with tracer.start_as_current_span("consume", context=parent):
        pass

    by_name = {span.name: span for span in exporter.get_finished_spans()}
    consume = by_name["consume"]
    assert consume.context.trace_id == publish.get_span_context().trace_id
    assert consume.parent is not None
    assert consume.parent.span_id == publish.get_span_context().span_id


def test_faust_style_header_mapping_carries_the_same_context(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, _ = spans
    tracer = provider.get_tracer("tests.tracing_kafka")
    with tracer.start_as_current_span("publish") as publish:
        headers = dict(telemetry.kafka_headers())
    with tracer.start_as_current_span(
        "consume", context=telemetry.context_from_kafka_headers(headers)
    ) as consume:
        assert consume.get_span_context().trace_id == publish.get_span_context().trace_id


def test_message_without_trace_headers_starts_a_new_trace(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("tests.tracing_kafka")
    assert telemetry.kafka_headers() == []  # no span, nothing to propagate
    for headers in (None, [], [("other", b"x")]):
        with tracer.start_as_current_span(
            "consume", context=telemetry.context_from_kafka_headers(headers)
        ):
            pass
    assert all(span.parent is None for span in exporter.get_finished_spans())

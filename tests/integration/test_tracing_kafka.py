"""W3C trace context rides in Kafka message headers, so a consumer's span joins the producer's
trace (services.common.telemetry.kafka_headers / context_from_kafka_headers)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message
from helpers.otlp import Collector, running_collector
from helpers.stream import Worker
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import kafka, telemetry
from services.common.settings import (
    FeastSettings,
    KafkaSettings,
    RedisSettings,
    StreamSettings,
    TelemetrySettings,
)
from services.dev.stack import child_env

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


# --- One trace from the simulator's publish to the stream worker's feature update -------------


@pytest.fixture()
def collector() -> Iterator[tuple[Collector, str]]:
    with running_collector() as running:
        yield running


def test_one_trace_shows_the_simulator_publish_and_the_stream_feature_update(
    fresh_topics: KafkaSettings,
    redis_settings: RedisSettings,
    feast_settings: FeastSettings,
    feature_repo_dir: Path,
    collector: tuple[Collector, str],
    tmp_path: Path,
) -> None:
    import pandas as pd

    from services.simulator import producer

    received, endpoint = collector
    provider = telemetry.build_tracer_provider(
        "fraudscore-simulator", TelemetrySettings(exporter_otlp_endpoint=endpoint)
    )
    prefix = f"trace-{uuid.uuid4().hex[:6]}-"
    n = producer.PUBLISH_SPAN_MESSAGES + 20  # two publish spans, so a batch may link both
    frame = pd.DataFrame(
        {
            "transaction_id": [f"{prefix}x{i}" for i in range(n)],
            "card_id": [f"{prefix}c{i % 17}" for i in range(n)],
            "terminal_id": [f"{prefix}t{i % 5}" for i in range(n)],
            "amount_minor": [1000 + i for i in range(n)],
            "currency": ["EUR"] * n,
            "event_ms": [1_767_225_600_000 + i * 1000 for i in range(n)],
            "channel": [1] * n,
            "merchant_category_code": ["5411"] * n,
            "country": ["NL"] * n,
        }
    )
    assert (
        producer.produce_transactions(fresh_topics, frame, tracer=provider.get_tracer("tests")) == n
    )
    provider.force_flush()
    publishes = received.named("simulator.publish")
    assert len(publishes) == 2
    publish_ids = {(s.trace_id, s.span_id) for s in publishes}

    stream = StreamSettings(
        app_id=f"trace-test-{uuid.uuid4().hex[:8]}",
        data_dir=tmp_path / "stream-data",
        web_port=0,
        metrics_port=0,
        setup_on_start=False,
    )
    feast = feast_settings.model_copy(update={"work_dir": feature_repo_dir})
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env = child_env(fresh_topics, redis_settings, feast, stream, environ=environ)
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    worker = Worker(env, tmp_path / "worker.log", stream.metrics_port)
    try:
        deadline = time.monotonic() + 120
        linked: set[tuple[bytes, bytes]] = set()
        while time.monotonic() < deadline and linked != publish_ids:
            worker.check_alive()
            linked = set()
            for span in received.named("stream.transactions"):
                linked.add((span.trace_id, span.parent_span_id))
                linked.update(span.links)
            linked &= publish_ids
            time.sleep(0.5)
    finally:
        worker.stop()
    tail = worker.tail()
    assert linked == publish_ids, tail
    batch_spans = received.named("stream.transactions")
    assert {s.service for s in batch_spans} == {"fraudscore-stream"}
    # A batch span is a child of a publish span: the same trace, publish -> feature update.
    children = [s for s in batch_spans if (s.trace_id, s.parent_span_id) in publish_ids]
    assert children, batch_spans
    # The terminal agent's batch joins the card batch's trace through the forwarded headers.
    terminal_deadline = time.monotonic() + 30
    while time.monotonic() < terminal_deadline and not received.named("stream.terminals"):
        time.sleep(0.2)
    batch_ids = {(s.trace_id, s.span_id) for s in batch_spans}
    terminal_spans = received.named("stream.terminals")
    assert any((s.trace_id, s.parent_span_id) in batch_ids for s in terminal_spans), tail

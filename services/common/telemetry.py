"""OpenTelemetry tracing: OTLP/gRPC export (to Jaeger or a collector) when an endpoint is set,
and W3C trace context carried in Kafka message headers, so one trace can follow a transaction
from its producer through the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from services.common.settings import TelemetrySettings

log = logging.getLogger(__name__)


def build_tracer_provider(service_name: str, settings: TelemetrySettings) -> TracerProvider:
    """A provider exporting over OTLP/gRPC to `settings.exporter_otlp_endpoint`, not installed.

    Tests and embedders use it directly (a process can install only one global provider).
    """
    if not settings.exporter_otlp_endpoint:
        raise ValueError("OTEL_EXPORTER_OTLP_ENDPOINT is not set")
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name or service_name})
    )
    exporter = OTLPSpanExporter(endpoint=settings.exporter_otlp_endpoint, insecure=True)
    # A payment burst produces thousands of spans a second; the default queue (2048) drops them.
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=settings.max_queue_size,
            max_export_batch_size=min(4096, settings.max_queue_size),
            schedule_delay_millis=500,
        )
    )
    return provider


def configure_tracing(service_name: str, settings: TelemetrySettings | None = None) -> bool:
    """Install a tracer provider exporting over OTLP; False (spans are no-ops) without endpoint."""
    settings = settings or TelemetrySettings()
    if not settings.exporter_otlp_endpoint:
        return False
    trace.set_tracer_provider(build_tracer_provider(service_name, settings))
    log.info("tracing to %s as %s", settings.exporter_otlp_endpoint, service_name)
    return True


#: Kafka headers as confluent-kafka's `produce(headers=...)` takes them; faust gives a mapping.
KafkaHeaders = list[tuple[str, str | bytes | None]]


def kafka_headers(context: otel_context.Context | None = None) -> KafkaHeaders:
    """The current (or given) span's W3C trace context as Kafka headers (`traceparent`, ...).

    Empty outside any span, so untraced producers add nothing to their messages.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    headers: KafkaHeaders = [(key, value.encode()) for key, value in carrier.items()]
    return headers


def context_from_kafka_headers(
    headers: Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None,
) -> otel_context.Context:
    """The trace context a producer put in a message's headers, to parent the consumer's span.

    Without trace headers this is an empty context: the consumer's span starts a new trace.
    """
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    carrier: dict[str, str] = {}
    for key, value in items:
        if value is None:
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        carrier[key.lower()] = text
    return propagate.extract(carrier)


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()

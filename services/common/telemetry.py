"""OpenTelemetry tracing: OTLP/gRPC export (to Jaeger or a collector) when an endpoint is set."""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from services.common.settings import TelemetrySettings

log = logging.getLogger(__name__)


def configure_tracing(service_name: str, settings: TelemetrySettings | None = None) -> bool:
    """Install a tracer provider exporting over OTLP; False (spans are no-ops) without endpoint."""
    settings = settings or TelemetrySettings()
    if not settings.exporter_otlp_endpoint:
        return False
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
    trace.set_tracer_provider(provider)
    log.info("tracing to %s as %s", settings.exporter_otlp_endpoint, service_name)
    return True


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()

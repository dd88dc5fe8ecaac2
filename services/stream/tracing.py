"""One span per consumed batch, joined to the producers' traces through Kafka headers.

A batch holds messages from many publishes: the span's parent is the first traced message's
context (so that trace shows publish -> feature update end to end) and every other distinct
producer context is a link. Without an SDK tracer provider (no OTLP endpoint) nothing is
parsed or created: the cost is one isinstance check per batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Link

from services.common import telemetry

#: Links per span: a batch of 500 from 500 publishes would otherwise bloat every span.
MAX_LINKS = 32
_TRACEPARENT = "traceparent"


def enabled() -> bool:
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def _traceparent(headers: Any) -> bytes | str | None:
    items = headers.items() if hasattr(headers, "items") else (headers or ())
    for key, value in items:
        if key.lower() == _TRACEPARENT:
            return value
    return None


@contextlib.contextmanager
def batch_span(name: str, batch: Sequence[Any]) -> Iterator[trace.Span | None]:
    """`name` span around a batch's handling (None when tracing is off)."""
    if not enabled():
        yield None
        return
    # Many messages of one publish share a traceparent: extract each distinct one once.
    distinct: dict[bytes | str, None] = {}
    for record in batch:
        value = _traceparent(getattr(record, "headers", None))
        if value:
            distinct.setdefault(value, None)
    contexts = [telemetry.context_from_kafka_headers([(_TRACEPARENT, v)]) for v in distinct]
    span_contexts = [trace.get_current_span(c).get_span_context() for c in contexts]
    valid = [(c, sc) for c, sc in zip(contexts, span_contexts, strict=True) if sc.is_valid]
    parent = valid[0][0] if valid else None
    links = [Link(sc) for _, sc in valid[1 : 1 + MAX_LINKS]]
    tracer = trace.get_tracer("fraudscore.stream")
    with tracer.start_as_current_span(
        name,
        context=parent,
        links=links,
        attributes={
            "messaging.batch.message_count": len(batch),
            "fraudscore.producer_traces": len(valid),
        },
    ) as span:
        yield span


def forward_headers() -> list[tuple[str, bytes]] | None:
    """The current span's context for messages this batch sends on (None when tracing is off)."""
    if not enabled():
        return None
    headers = [
        (key, value.encode() if isinstance(value, str) else value)
        for key, value in telemetry.kafka_headers()
        if value is not None
    ]
    return headers or None

"""Prometheus metrics of the stream processor (scraped from `StreamSettings.metrics_port`)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

EVENTS = Counter(
    "fraudscore_stream_events_total",
    "Messages consumed, by kind (transaction, label).",
    ["kind"],
)
TRANSACTIONS = Counter(
    "fraudscore_stream_transactions_total",
    "Valid transactions by outcome: applied, duplicate (redelivery), late (beyond lateness).",
    ["outcome"],
)
TERMINAL_EVENTS = Counter(
    "fraudscore_stream_terminal_events_total",
    "Terminal events (forwarded transactions and labels) by kind and outcome: applied, "
    "duplicate, late, ignored (a not-fraud label).",
    ["kind", "outcome"],
)
APPLIED_ONLINE = Counter(
    "fraudscore_stream_applied_online_total",
    "Applied events whose resulting state is in the online store, by view (card, terminal); "
    "behind the applied counters while a batch is being written.",
    ["view"],
)
LAST_APPLIED = Gauge(
    "fraudscore_stream_last_applied_timestamp_seconds",
    "Unix time of the last batch whose states reached the online store, by view (card, "
    "terminal): `time() - this` while the consumer lag is above 0 is how long the online "
    "features have been standing still.",
    ["view"],
)
DLQ = Counter(
    "fraudscore_stream_dlq_total",
    # By field, not by reason text: reasons can embed values, fields are a closed set.
    "Messages sent to the dead-letter topic, by kind and offending field.",
    ["kind", "field"],
)
WRITE_SECONDS = Histogram(
    "fraudscore_stream_batch_write_seconds",
    "Time to write one batch, by sink (offline, online, labels).",
    ["sink"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
LOAD_SECONDS = Histogram(
    "fraudscore_stream_state_load_seconds",
    "Time to read the cache-missing card states of one batch from the online store.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
BATCH_SIZE = Histogram(
    "fraudscore_stream_batch_size",
    "Messages per processed batch.",
    ["kind"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
BATCH_RETRIES = Counter(
    "fraudscore_stream_batch_retries_total",
    "Batches that failed outside the store calls and were retried whole.",
    ["kind"],
)
CONSUMER_LAG = Gauge(
    "fraudscore_stream_consumer_lag",
    # Not from the broker's lag APIs (tansu reports end offsets and group lag wrongly): the high
    # watermark comes with every fetch response and the position is this worker's own.
    "Messages behind, per topic and partition: the high watermark of the consumer's last fetch "
    "minus the next offset after the newest processed (written and acked) message. Updated "
    "after each batch, so an idle partition keeps its last value (0 once caught up); a broker "
    "that under-reports the high watermark makes it read low, never negative.",
    ["topic", "partition"],
)
WRITE_ERRORS = Counter(
    "fraudscore_stream_write_errors_total",
    "Failed store reads/writes (each is retried until it succeeds).",
    ["sink"],
)


def serve(port: int) -> None:
    """Expose /metrics on `port`; 0 disables it."""
    if port <= 0:
        return
    start_http_server(port)
    log.info("metrics on :%s/metrics", port)

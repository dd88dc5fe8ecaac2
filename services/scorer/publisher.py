"""Publishes every score to the `scores` topic, never at the expense of a Score call.

`ScorePublisher` is an `on_scored` hook. It hands each ScoreRecord to librdkafka's in-memory
queue (`produce` does no I/O) and returns; a background thread serves delivery reports. When
the broker is down or slow the queue fills up and further scores are dropped and counted rather
than making a payment wait: the topic is for monitoring and training, the answer is what
matters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from services.common.settings import KafkaSettings
from services.scorer.outcome import ScoreOutcome

log = logging.getLogger(__name__)

#: At most one "dropping scores" warning per this many seconds: a dead broker at 1,000/s
#: must not turn into 1,000 log lines/s.
_WARN_EVERY_S = 10.0


class ScorePublisher:
    """Non-blocking producer of ScoreRecord messages (Kafka key: card_id)."""

    def __init__(
        self,
        settings: KafkaSettings,
        queue_max: int = 100_000,
        producer: Producer | None = None,
        on_dropped: Callable[[], None] | None = None,
    ) -> None:
        """`on_dropped()` is called once per record given up on (e.g. a metric's `inc`)."""
        self.topic = settings.scores_topic
        self.producer = producer or Producer(
            {
                **settings.client_config(),
                "linger.ms": 5,
                "queue.buffering.max.messages": queue_max,
                # Records older than this are given up on: a long outage must not grow memory.
                "message.timeout.ms": 30_000,
                # One broker ack is enough for monitoring data, and it keeps the queue short.
                "acks": 1,
                # librdkafka's own complaints (one per reconnect) go through logging, not stderr.
                "logger": logging.getLogger("fraudscore.scores.rdkafka"),
            }
        )
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self._on_dropped = on_dropped
        self._last_warning = 0.0
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="scores-publisher", daemon=True)
        self._poller.start()

    def __call__(self, outcome: ScoreOutcome) -> None:
        try:
            self.producer.produce(
                self.topic,
                key=outcome.card_id.encode(),
                value=outcome.to_record().SerializeToString(),
                on_delivery=self._delivered,
            )
        except BufferError:
            self.dropped += 1
            self._count_drop()
            self._warn("scores queue full (broker down or slow?): %s scores dropped so far")

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.sent += 1
        else:
            self.failed += 1
            self._count_drop()
            self._warn("score records not delivered: %s so far (last: %s)", err)

    def _count_drop(self) -> None:
        if self._on_dropped is not None:
            self._on_dropped()

    def _warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            log.warning(message, self.dropped + self.failed, *args)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (up to `timeout_s`), then stop."""
        self._stop.set()
        self._poller.join(timeout_s)
        left = self.producer.flush(timeout_s)
        if left:
            log.warning("%s score records not delivered at shutdown", left)

"""The monitor process: consume the `scores` topic into the window, evaluate every interval.

`run_once` reads what the topic holds and returns one snapshot (the drained point is "no new
record for MONITOR_IDLE_S", since broker-reported end offsets are not trusted); `run_forever`
keeps consuming and republishes the gauges (and the report, if asked) every MONITOR_INTERVAL_S.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, TopicPartition
from google.protobuf.message import DecodeError

from services.common.settings import KafkaSettings, MonitorSettings
from services.monitor import report
from services.monitor.drift import DriftSnapshot, Observation, ReferenceStore, Window, evaluate
from services.monitor.metrics import MonitorMetrics
from services.proto.fraudscore.v1 import scorer_pb2

log = logging.getLogger(__name__)

_BATCH = 1000


class MonitorError(RuntimeError):
    pass


class ScoreMonitor:
    """Window + references + metrics; fed raw ScoreRecord bytes."""

    def __init__(self, settings: MonitorSettings, metrics: MonitorMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or MonitorMetrics()
        self.window = Window(settings.window_size)
        self.references = ReferenceStore(settings.model_dir)

    def ingest(self, payload: bytes) -> bool:
        try:
            record = scorer_pb2.ScoreRecord.FromString(payload)
        except DecodeError:
            self.metrics.invalid.inc()
            return False
        self.window.add(
            Observation(
                model_version=record.model_version,
                score=record.score,
                fallback=record.fallback_used,
                features=dict(record.features),
            )
        )
        self.metrics.observe(record.score, record.fallback_used)
        return True

    def evaluate(self) -> DriftSnapshot:
        snapshot = evaluate(self.window, self.references, self.settings.min_records)
        self.metrics.publish(snapshot)
        return snapshot


def make_consumer(kafka: KafkaSettings, settings: MonitorSettings) -> Consumer:
    return Consumer(
        {
            **kafka.client_config(),
            "group.id": settings.group_id,
            # A new monitor group starts from the oldest retained score, never "latest".
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "session.timeout.ms": kafka.session_timeout_ms,
        }
    )


def _consume(consumer: Consumer, monitor: ScoreMonitor, timeout_s: float) -> int:
    taken = 0
    for msg in consumer.consume(num_messages=_BATCH, timeout=timeout_s):
        error = msg.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("scores topic: %s", error)
            continue
        value = msg.value()
        if value is not None and monitor.ingest(value):
            taken += 1
        elif value is not None:
            log.warning("skipped a message that is not a ScoreRecord at offset %s", msg.offset())
    return taken


def run_once(
    kafka: KafkaSettings, settings: MonitorSettings, monitor: ScoreMonitor | None = None
) -> DriftSnapshot:
    monitor = monitor or ScoreMonitor(settings)
    consumer = make_consumer(kafka, settings)
    assigned = threading.Event()

    def on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            assigned.set()

    consumer.subscribe([kafka.scores_topic], on_assign=on_assign)
    started = time.monotonic()
    last_activity = started
    total = 0
    try:
        while True:
            taken = _consume(consumer, monitor, 0.5)
            now = time.monotonic()
            if not assigned.is_set():
                if now - started > settings.join_timeout_s:
                    raise MonitorError(
                        f"no partition of {kafka.scores_topic!r} assigned to group "
                        f"{settings.group_id!r} within {settings.join_timeout_s:.0f} s "
                        "(does the topic exist? another monitor in the same group?)"
                    )
                last_activity = now
                continue
            if taken:
                total += taken
                last_activity = now
            elif now - last_activity >= settings.idle_s:
                break
    finally:
        consumer.close()
    log.info("consumed %s score records from %s", total, kafka.scores_topic)
    return monitor.evaluate()


def write_report(path: Path, snapshot: DriftSnapshot, topic: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(report.render(snapshot, topic))
    tmp.replace(path)


def run_forever(
    kafka: KafkaSettings,
    settings: MonitorSettings,
    stop: threading.Event,
    report_path: Path | None = None,
    monitor: ScoreMonitor | None = None,
) -> None:
    monitor = monitor or ScoreMonitor(settings)
    consumer = make_consumer(kafka, settings)
    consumer.subscribe([kafka.scores_topic])
    next_evaluation = time.monotonic() + settings.interval_s
    try:
        while not stop.is_set():
            _consume(consumer, monitor, 0.5)
            if time.monotonic() >= next_evaluation:
                next_evaluation = time.monotonic() + settings.interval_s
                snapshot = monitor.evaluate()
                _log_snapshot(snapshot)
                if report_path is not None:
                    write_report(report_path, snapshot, kafka.scores_topic)
    finally:
        consumer.close()


def _log_snapshot(snapshot: DriftSnapshot) -> None:
    worst = snapshot.features[0] if snapshot.features else None
    log.info(
        "window %s records, fallback share %s, model %s, score PSI %s, worst feature %s",
        snapshot.records,
        snapshot.fallback_share,
        snapshot.model_version,
        snapshot.score_psi,
        f"{worst.name}={worst.psi:.3f}" if worst else None,
    )

"""The monitor over the real broker: ScoreRecords with one drifted feature in, PSI and a report
out; and the long-running mode's /metrics."""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from services.cli import main
from services.common.broker import free_port
from services.common.kafka import make_producer
from services.common.model_registry import ModelRegistry
from services.common.settings import KafkaSettings, MonitorSettings
from services.monitor import reference, service
from services.monitor.metrics import MonitorMetrics
from services.proto.fraudscore.v1 import scorer_pb2

pytestmark = pytest.mark.integration

FEATURES = ("amount", "count_1h", "terminal_risk")
MODEL_RECORDS = 1500
FALLBACK_RECORDS = 300


def _columns(rng: np.random.Generator, n: int, amount_shift: float) -> dict[str, np.ndarray]:
    return {
        "amount": rng.lognormal(3.5 + amount_shift, 0.8, n),
        "count_1h": rng.poisson(2.0, n).astype(float),
        "terminal_risk": np.where(rng.random(n) < 0.3, np.nan, rng.beta(1, 9, n)),
    }


def _registry_with_reference(root: Path) -> str:
    rng = np.random.default_rng(1)
    train = pd.DataFrame(_columns(rng, 20_000, 0.0))
    registry = ModelRegistry(root)
    record = registry.register("model", {"features": list(FEATURES)})
    reference.save(reference.build_reference(train, rng.beta(1, 30, 20_000)), record.directory)
    registry.promote(record.version)
    return record.version


def _publish(settings: KafkaSettings, version: str) -> None:
    rng = np.random.default_rng(2)
    cols = _columns(rng, MODEL_RECORDS, amount_shift=1.0)  # amounts e^1 ~ 2.7x larger
    scores = rng.beta(1, 30, MODEL_RECORDS)
    producer = make_producer(settings)
    for i in range(MODEL_RECORDS):
        record = scorer_pb2.ScoreRecord(
            transaction_id=f"t{i}",
            card_id=f"c{i % 97}",
            score=float(scores[i]),
            model_version=version,
            # As the scorer does it: unknown (NaN) features are left out of the map.
            features={k: float(v[i]) for k, v in cols.items() if not np.isnan(v[i])},
        )
        producer.produce(
            settings.scores_topic, key=record.card_id.encode(), value=record.SerializeToString()
        )
    for i in range(FALLBACK_RECORDS):
        record = scorer_pb2.ScoreRecord(
            transaction_id=f"f{i}",
            card_id=f"c{i % 97}",
            score=0.5,
            model_version=version,
            fallback_used=True,
            fallback_reason="breaker_open",
        )
        producer.produce(
            settings.scores_topic, key=record.card_id.encode(), value=record.SerializeToString()
        )
    producer.produce(settings.scores_topic, key=b"junk", value=b"\xff\xff not a ScoreRecord")
    assert producer.flush(30) == 0


def _monitor_settings(model_dir: Path, **overrides: object) -> MonitorSettings:
    settings = MonitorSettings(
        model_dir=model_dir,
        group_id=f"monitor-test-{uuid.uuid4().hex[:8]}",
        min_records=500,
        idle_s=3.0,
        join_timeout_s=60.0,
    )
    return settings.model_copy(update=overrides)


def test_once_finds_the_drifted_feature_and_only_it(
    fresh_topics: KafkaSettings, tmp_path: Path
) -> None:
    version = _registry_with_reference(tmp_path / "models")
    _publish(fresh_topics, version)
    registry = CollectorRegistry()
    monitor = service.ScoreMonitor(_monitor_settings(tmp_path / "models"), MonitorMetrics(registry))

    snapshot = service.run_once(fresh_topics, monitor.settings, monitor)

    assert snapshot.records == MODEL_RECORDS + FALLBACK_RECORDS
    assert snapshot.model_version == version and snapshot.model_records == MODEL_RECORDS
    assert snapshot.fallback_share == pytest.approx(FALLBACK_RECORDS / snapshot.records)
    psi = {d.name: d.psi for d in snapshot.features}
    assert set(psi) == set(FEATURES)
    assert psi["amount"] > 0.25
    assert psi["count_1h"] < 0.1 and psi["terminal_risk"] < 0.1
    assert snapshot.score_psi is not None and snapshot.score_psi < 0.1
    assert (
        registry.get_sample_value("fraudscore_feature_psi", {"feature": "amount"}) == psi["amount"]
    )
    assert registry.get_sample_value("fraudscore_monitor_invalid_records_total") == 1
    assert (
        registry.get_sample_value("fraudscore_monitor_records_total", {"path": "fallback"})
        == FALLBACK_RECORDS
    )


def test_fraudctl_monitor_once_writes_the_report(
    fresh_topics: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = _registry_with_reference(tmp_path / "models")
    _publish(fresh_topics, version)
    assert fresh_topics.bootstrap_servers is not None
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": fresh_topics.bootstrap_servers,
        "KAFKA_SCORES_TOPIC": fresh_topics.scores_topic,
        "KAFKA_SESSION_TIMEOUT_MS": str(fresh_topics.session_timeout_ms),
        "MONITOR_MODEL_DIR": str(tmp_path / "models"),
        "MONITOR_GROUP_ID": f"monitor-cli-{uuid.uuid4().hex[:8]}",
        "MONITOR_IDLE_S": "3",
        "MONITOR_MIN_RECORDS": "500",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "reports" / "drift.md"

    assert main(["monitor", "--once", "--report", str(out)]) == 0

    text = out.read_text()
    assert f"| serving model version | {version} |" in text
    assert f"| its model-scored records | {MODEL_RECORDS} |" in text
    amount_row = next(line for line in text.splitlines() if line.startswith("| amount |"))
    assert "**act**" in amount_row
    assert "1 of 3 features beyond 0.1" in text


def test_running_monitor_serves_psi_on_metrics(fresh_topics: KafkaSettings, tmp_path: Path) -> None:
    version = _registry_with_reference(tmp_path / "models")
    _publish(fresh_topics, version)
    port = free_port()
    settings = _monitor_settings(tmp_path / "models", interval_s=1.0, metrics_port=port)
    monitor = service.ScoreMonitor(settings)
    monitor.metrics.serve(port)
    report_path = tmp_path / "live.md"
    stop = threading.Event()
    worker = threading.Thread(
        target=service.run_forever, args=(fresh_topics, settings, stop, report_path, monitor)
    )
    worker.start()
    try:
        deadline = time.monotonic() + 60
        body = ""
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
                body = resp.read().decode()
            if 'fraudscore_feature_psi{feature="amount"}' in body and report_path.exists():
                break
            time.sleep(0.5)
        assert 'fraudscore_feature_psi{feature="amount"}' in body, body[-2000:]
    finally:
        stop.set()
        worker.join(30)
    assert not worker.is_alive()
    assert "fraudscore_score_psi" in body and "fraudscore_monitor_fallback_share" in body
    assert "| amount |" in report_path.read_text()

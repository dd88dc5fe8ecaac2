"""The child-process plumbing of the local stack: environment and /metrics samples."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from services.common.settings import KafkaSettings, StreamSettings
from services.dev.stack import child_env, parse_metrics, sample_key


def test_child_env_is_the_base_environment_overridden_by_the_settings() -> None:
    base = {"PATH": "/bin", "STREAM_APP_ID": "stale", "KAFKA_BOOTSTRAP_SERVERS": "old:9092"}
    env = child_env(
        KafkaSettings(bootstrap_servers="broker:9092"),
        StreamSettings(app_id="fresh", metrics_port=0),
        environ=base,
    )
    assert env["PATH"] == "/bin"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "broker:9092"
    assert env["STREAM_APP_ID"] == "fresh"
    assert env["STREAM_METRICS_PORT"] == "0"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert base["STREAM_APP_ID"] == "stale"  # the caller's mapping is not changed


def test_sample_keys_match_what_prometheus_client_exposes() -> None:
    registry = CollectorRegistry()
    events = Counter("fraudscore_stream_events", "events", ["kind"], registry=registry)
    events.labels(kind="transaction").inc(3)
    events.labels(kind="label").inc()
    lag = Gauge("fraudscore_stream_lag", "lag", ["topic", "partition"], registry=registry)
    lag.labels(topic="transactions", partition="2").set(7.5)
    Gauge("fraudscore_stream_up", "up", registry=registry).set(1)

    sample = parse_metrics(generate_latest(registry).decode())

    assert sample[sample_key("fraudscore_stream_events_total", kind="transaction")] == 3.0
    assert sample[sample_key("fraudscore_stream_events_total", kind="label")] == 1.0
    key = sample_key("fraudscore_stream_lag", topic="transactions", partition="2")
    assert sample[key] == 7.5
    assert sample[sample_key("fraudscore_stream_up")] == 1.0

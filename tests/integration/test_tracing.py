"""Traces leave the scorer over OTLP/gRPC: a Score span with its feature_fetch and predict
children, received by an in-process OTLP collector exactly as Jaeger would receive them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from helpers.otlp import Collector, running_collector
from opentelemetry.sdk.trace import TracerProvider

from services.bench import world
from services.common import feast_repo, features, telemetry
from services.common.broker import free_port
from services.common.settings import RedisSettings, ScorerSettings, TelemetrySettings
from services.dev.stack import wait_serving
from services.proto.fraudscore.v1 import scorer_pb2, scorer_pb2_grpc, transaction_pb2
from services.scorer.online_features import FeastFeatureReader
from services.scorer.server import create_server

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMES = list(features.FEATURE_NAMES)


def promoted_model(root: Path) -> str:
    return world.promote_model(root, seed=3)


def scorer_alive(proc: subprocess.Popen[bytes]) -> Callable[[], None]:
    def check() -> None:
        assert proc.poll() is None, "the scorer exited early"

    return check


@pytest.fixture()
def collector() -> Iterator[tuple[Collector, str]]:
    with running_collector() as running:
        yield running


def transaction(transaction_id: str, card_id: str) -> transaction_pb2.Transaction:
    return transaction_pb2.Transaction(
        transaction_id=transaction_id,
        card_id=card_id,
        terminal_id="term-trace",
        amount_minor=4_200,
        currency="EUR",
        event_time=Timestamp(seconds=1_767_268_800),
    )


def assert_score_trace(collector: Collector, service: str, model_version: str) -> None:
    """One Score span, parent of one feature_fetch and one predict span, in the same trace."""
    (score,) = collector.wait_for("Score", timeout_s=10)
    (fetch,) = collector.wait_for("feature_fetch", timeout_s=5)
    (predict,) = collector.wait_for("predict", timeout_s=5)
    assert score.service == service
    assert score.parent_span_id == b""  # a root span: nothing upstream sent a trace context
    for child in (fetch, predict):
        assert child.trace_id == score.trace_id
        assert child.parent_span_id == score.span_id
    assert score.attributes["model_version"] == model_version
    assert score.attributes["fallback_used"] is False
    assert score.attributes["breaker_state"] == "closed"
    assert collector.named("fallback") == []


def test_fraudctl_serve_exports_score_span_with_feature_fetch_and_predict_children(
    collector: tuple[Collector, str],
    feature_repo_dir: Path,
    redis_settings: RedisSettings,
    tmp_path: Path,
) -> None:
    received, endpoint = collector
    # A copy of the applied repo: the scorer re-prepares its work dir, the shared one stays put.
    work_dir = tmp_path / "repo"
    shutil.copytree(feature_repo_dir, work_dir)
    version = promoted_model(tmp_path / "models")
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "KAFKA_"))  # no score publishing, no stray exporter
    }
    env.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_SERVICE_NAME": "scorer-under-test",
            "SCORER_ADDRESS": f"127.0.0.1:{port}",
            "SCORER_METRICS_PORT": "0",
            "SCORER_MODEL_DIR": str(tmp_path / "models"),
            "SCORER_BUDGET_MS": "1000",
            "FEAST_WORK_DIR": str(work_dir),
            "FEAST_PROJECT": feast_repo.open_store(feature_repo_dir).project,
            "REDIS_HOST": redis_settings.host,
            "REDIS_PORT": str(redis_settings.port),
        }
    )
    log_path = tmp_path / "scorer.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_serving(f"127.0.0.1:{port}", 150, alive=scorer_alive(proc))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = scorer_pb2_grpc.FraudScorerStub(channel).Score(
                scorer_pb2.ScoreRequest(transaction=transaction("t-trace", "card-trace")),
                timeout=5,
            )
        assert reply.model_version == f"lgbm-{version}"
        assert reply.fallback_used is False
        # SIGTERM: serve() shuts the tracer provider down, which flushes the batch processor.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "tracing to" in log_path.read_text()
    assert_score_trace(received, "scorer-under-test", reply.model_version)


def in_process_scorer(
    service: str, endpoint: str, feature_repo_dir: Path, tmp_path: Path
) -> tuple[TracerProvider, grpc.Server, int]:
    """A scorer in this process, on the Feast reader, exporting its spans to `endpoint`."""
    provider = telemetry.build_tracer_provider(
        service, TelemetrySettings(exporter_otlp_endpoint=endpoint)
    )
    promoted_model(tmp_path / "models")
    reader = FeastFeatureReader(feast_repo.open_store(feature_repo_dir))
    reader.warm_up()
    settings = ScorerSettings(
        model_dir=tmp_path / "models", metrics_port=0, max_workers=2, budget_ms=1000
    )
    server, port = create_server(
        "127.0.0.1:0",
        settings,
        feature_reader=reader,
        watch_registry=False,
        tracer=provider.get_tracer("tests.tracing"),
    )
    return provider, server, port


def test_in_process_scorer_with_an_explicit_provider_exports_the_score_trace(
    collector: tuple[Collector, str],
    feature_repo_dir: Path,
    tmp_path: Path,
) -> None:
    received, endpoint = collector
    provider, server, port = in_process_scorer(
        "scorer-in-process", endpoint, feature_repo_dir, tmp_path
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = scorer_pb2_grpc.FraudScorerStub(channel).Score(
                scorer_pb2.ScoreRequest(transaction=transaction("t-trace-2", "card-trace-2")),
                timeout=5,
            )
    finally:
        server.stop(0).wait()
    assert provider.force_flush(10_000)
    provider.shutdown()
    assert_score_trace(received, "scorer-in-process", reply.model_version)


def test_no_endpoint_leaves_tracing_off() -> None:
    assert telemetry.configure_tracing("fraudscore-test", TelemetrySettings()) is False
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        telemetry.build_tracer_provider("fraudscore-test", TelemetrySettings())


def test_a_callers_traceparent_makes_the_score_span_a_child_of_its_trace(
    collector: tuple[Collector, str],
    feature_repo_dir: Path,
    tmp_path: Path,
) -> None:
    received, endpoint = collector
    provider, server, port = in_process_scorer(
        "scorer-traced-caller", endpoint, feature_repo_dir, tmp_path
    )
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    caller_span = "00f067aa0ba902b7"
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scorer_pb2_grpc.FraudScorerStub(channel)
            stub.Score(
                scorer_pb2.ScoreRequest(transaction=transaction("t-trace-3", "card-trace-3")),
                timeout=5,
                metadata=(("traceparent", f"00-{trace_id}-{caller_span}-01"),),
            )
            # Without a traceparent the next call starts a trace of its own.
            stub.Score(
                scorer_pb2.ScoreRequest(transaction=transaction("t-trace-4", "card-trace-4")),
                timeout=5,
            )
    finally:
        server.stop(0).wait()
    assert provider.force_flush(10_000)
    provider.shutdown()
    scores = received.wait_for("Score", timeout_s=10)
    deadline = time.monotonic() + 5
    while len(scores) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        scores = received.named("Score")
    joined = [s for s in scores if s.trace_id == bytes.fromhex(trace_id)]
    assert len(joined) == 1
    assert joined[0].parent_span_id == bytes.fromhex(caller_span)
    children = [s for s in received.spans if s.parent_span_id == joined[0].span_id]
    assert {c.name for c in children} == {"feature_fetch", "predict"}
    assert all(c.trace_id == bytes.fromhex(trace_id) for c in children)
    (own,) = [s for s in scores if s.trace_id != bytes.fromhex(trace_id)]
    assert own.parent_span_id == b""

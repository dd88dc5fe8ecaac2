"""`python -m services.scorer` serves from environment settings and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import feast_repo, features
from services.common.broker import free_port
from services.common.model_registry import ModelRegistry
from services.common.settings import RedisSettings
from services.proto.fraudscore.v1 import scorer_pb2, scorer_pb2_grpc, transaction_pb2

pytestmark = pytest.mark.integration

NAMES = list(features.FEATURE_NAMES)
REPO_ROOT = Path(__file__).resolve().parents[2]


def promoted_model(root: Path) -> str:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.random((300, len(NAMES))), columns=NAMES)
    frame["amount"] = rng.uniform(1, 2_000, 300)
    params = {"objective": "binary", "verbose": -1, "min_data_in_leaf": 5}
    booster = lgb.train(params, lgb.Dataset(frame, label=(frame["amount"] > 1_000).astype(int)), 10)
    registry = ModelRegistry(root)
    record = registry.register(booster.model_to_string(), {"feature_names": NAMES})
    registry.promote(record.version)
    return record.version


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the scorer exited early"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"scorer not listening on {port} after {timeout_s}s")


def wait_serving(channel: grpc.Channel, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the scorer exited early"
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise AssertionError("scorer never reported SERVING")


def test_module_entry_point_serves_exports_metrics_and_stops_on_sigterm(
    feature_repo_dir: Path, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    # A copy of the applied repo: the scorer re-prepares its work dir, the shared one stays put.
    work_dir = tmp_path / "repo"
    shutil.copytree(feature_repo_dir, work_dir)
    version = promoted_model(tmp_path / "models")
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "SCORER_ADDRESS": f"127.0.0.1:{port}",
        "SCORER_METRICS_PORT": str(metrics_port),
        "SCORER_MODEL_DIR": str(tmp_path / "models"),
        "SCORER_BUDGET_MS": "1000",
        "FEAST_WORK_DIR": str(work_dir),
        "FEAST_PROJECT": feast_repo.open_store(feature_repo_dir).project,
        "REDIS_HOST": redis_settings.host,
        "REDIS_PORT": str(redis_settings.port),
    }
    log_path = tmp_path / "scorer.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.scorer"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        # Connect only once the port is open: a refused channel backs off for seconds.
        wait_listening(proc, port, timeout_s=120)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_serving(channel, proc, timeout_s=30)
            txn = transaction_pb2.Transaction(
                transaction_id="t-cli",
                card_id="card-cli",
                terminal_id="term-1",
                amount_minor=4_200,
                currency="EUR",
                event_time=Timestamp(seconds=1_767_268_800),
            )
            reply = scorer_pb2_grpc.FraudScorerStub(channel).Score(
                scorer_pb2.ScoreRequest(transaction=txn), timeout=5
            )
        assert reply.model_version == f"lgbm-{version}"
        assert reply.fallback_used is False
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            body = r.read().decode()
        assert 'fraudscore_decisions_total{decision="approve"} 1.0' in body
        assert f'fraudscore_model_info{{version="lgbm-{version}"}} 1.0' in body

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "scorer stopped" in log_path.read_text()

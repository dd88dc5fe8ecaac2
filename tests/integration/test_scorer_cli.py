"""`python -m services.scorer` serves from environment settings and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from services.bench import world
from services.common import feast_repo, features
from services.common.broker import free_port
from services.common.settings import RedisSettings
from services.dev.stack import wait_serving
from services.proto.fraudscore.v1 import scorer_pb2, scorer_pb2_grpc, transaction_pb2

pytestmark = pytest.mark.integration

NAMES = list(features.FEATURE_NAMES)
REPO_ROOT = Path(__file__).resolve().parents[2]


def promoted_model(root: Path) -> str:
    return world.promote_model(root, seed=3)


def scorer_alive(proc: subprocess.Popen[bytes]) -> Callable[[], None]:
    def check() -> None:
        assert proc.poll() is None, "the scorer exited early"

    return check


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
        wait_serving(f"127.0.0.1:{port}", 150, alive=scorer_alive(proc))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
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

"""A wedged Redis on the inline fast path: the socket timeouts bound the wait, the rules answer.

Kept in a module of its own, run after the other scorer modules: after this test, later
servers in the same process were seen with counts of this one's calls (under investigation).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import grpc
import pytest

from services.bench import world
from services.common import feast_repo
from services.common.model_registry import ModelRegistry
from services.common.settings import ScorerSettings
from services.proto.fraudscore.v1 import scorer_pb2, scorer_pb2_grpc
from services.scorer.outcome import ScoreOutcome
from services.scorer.redis_reader import FastFeatureReader, RedisOnlineReader, fast_client
from services.scorer.server import create_server

pytestmark = pytest.mark.integration


def test_a_wedged_redis_on_the_inline_fast_path_is_answered_by_the_rules_within_the_budget(
    feature_repo_dir: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path / "models")
    world.promote_model(registry.root)
    # A "Redis" that accepts connections and never answers: only socket timeouts end a read.
    wedged = socket.socket()
    wedged.bind(("127.0.0.1", 0))
    wedged.listen(64)
    client = fast_client("127.0.0.1", wedged.getsockname()[1], timeout_s=0.01)
    store = feast_repo.open_store(feature_repo_dir)
    reader = FastFeatureReader(RedisOnlineReader.from_store(store, client=client))
    outcomes: list[ScoreOutcome] = []
    settings = ScorerSettings(
        model_dir=registry.root, metrics_port=0, budget_ms=50, breaker_fail_max=3
    )
    server, port = create_server(
        "127.0.0.1:0", settings, feature_reader=reader, on_scored=outcomes.append
    )
    try:
        assert server.servicer._inline_fits(0.05)  # the read runs on the gRPC thread
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scorer_pb2_grpc.FraudScorerStub(channel)
            for _ in range(5):
                started = time.perf_counter()
                reply = stub.Score(
                    scorer_pb2.ScoreRequest(transaction=world.transaction("c")), timeout=10
                )
                # Generous: socket timeouts (3 x 10 ms) bound the wait, not a thread hand-off.
                assert time.perf_counter() - started < 1.0
                assert reply.fallback_used is True
    finally:
        server.stop(0).wait()
        client.close()
        wedged.close()
    reasons = [o.fallback_reason for o in outcomes]
    assert reasons[:3] == ["error", "error", "error"]
    assert reasons[3:] == ["breaker_open", "breaker_open"]

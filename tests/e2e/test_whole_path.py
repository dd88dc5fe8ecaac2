"""The whole path on real services: simulate -> Kafka -> stream -> Feast/Redis -> train -> serve.

Every service runs as its own process, configured only through the environment, as in
production; only the broker is shared with the rest of the session.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from services.common import feast_repo, features
from services.common.broker import free_port
from services.common.model_registry import ModelRegistry
from services.common.settings import (
    FeastSettings,
    KafkaSettings,
    RedisSettings,
    ScorerSettings,
    StreamSettings,
    TrainingSettings,
)
from services.dev.stack import LocalStack
from services.proto.fraudscore.v1 import scorer_pb2, scorer_pb2_grpc, transaction_pb2
from services.simulator import generate, producer
from training.pipeline import run_training

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    kafka_settings: KafkaSettings,
    redis_settings: RedisSettings,
) -> Iterator[LocalStack]:
    run_dir = tmp_path_factory.mktemp("e2e")
    run_id = uuid.uuid4().hex[:8]
    topics = {
        "transactions_topic": f"transactions-e2e-{run_id}",
        "labels_topic": f"fraud-labels-e2e-{run_id}",
        "dlq_topic": f"transactions.dlq-e2e-{run_id}",
        "scores_topic": f"scores-e2e-{run_id}",
    }
    local = LocalStack(
        run_dir=run_dir,
        kafka=kafka_settings.model_copy(update=topics),
        redis=redis_settings,
        feast=FeastSettings(work_dir=run_dir / "feature_repo", project=f"e2e_{run_id}"),
        stream=StreamSettings(
            app_id=f"e2e-{run_id}", data_dir=run_dir / "stream", metrics_port=0, web_port=0
        ),
        scorer=ScorerSettings(address="127.0.0.1:0", model_dir=run_dir / "models", metrics_port=0),
    )
    try:
        local.start_infrastructure()
        local.start_stream()
        yield local
    finally:
        local.stop()
        local.teardown_online_store()


@pytest.fixture(scope="module")
def trained(stack: LocalStack) -> tuple[LocalStack, str, datetime]:
    """Replay 28 days of simulated history through Kafka, then train from the offline store."""
    now = datetime.now(UTC).replace(microsecond=0)
    config = generate.SimConfig(
        n_customers=150, n_terminals=300, n_days=28, start=now - timedelta(days=28), seed=3
    )
    history = generate.simulate(config)
    now_ms = int(now.timestamp() * 1000)
    history = history[history["event_ms"] < now_ms]
    labels = generate.labels_for(history, seed=3)
    labels = labels[labels["reported_ms"] <= now_ms]
    producer.produce_transactions(stack.kafka, history, rate=None)
    producer.produce_labels(stack.kafka, labels, rate=None)
    stack.wait_for_offline(len(history), len(labels), timeout_s=180)

    result = run_training(
        stack.feast,
        stack.redis,
        TrainingSettings(model_dir=stack.scorer.model_dir, train_days=7, delay_days=7, test_days=7),
        cutoff_ms=now_ms,
    )
    champion = ModelRegistry(stack.scorer.model_dir).champion()
    assert champion is not None, f"training promoted nothing: {result}"
    assert champion.metadata["feature_names"] == list(features.FEATURE_NAMES)
    busiest_card = str(history["card_id"].value_counts().index[0])
    return stack, busiest_card, now


def _transaction(card_id: str, when: datetime, amount_minor: int) -> transaction_pb2.Transaction:
    ts = Timestamp()
    ts.FromDatetime(when)
    return transaction_pb2.Transaction(
        transaction_id=f"e2e-{uuid.uuid4().hex}",
        card_id=card_id,
        terminal_id="term-000001",
        amount_minor=amount_minor,
        currency="EUR",
        event_time=ts,
        channel=transaction_pb2.CHANNEL_CARD_PRESENT,
        merchant_category_code="5411",
        country="FR",
    )


def test_known_card_gets_a_model_score(trained: tuple[LocalStack, str, datetime]) -> None:
    stack, card_id, now = trained
    address = stack.start_scorer()
    with grpc.insecure_channel(address) as channel:
        stub = scorer_pb2_grpc.FraudScorerStub(channel)
        reply = stub.Score(
            scorer_pb2.ScoreRequest(transaction=_transaction(card_id, now, 4_250)), timeout=5
        )
    champion = ModelRegistry(stack.scorer.model_dir).champion()
    assert champion is not None
    assert reply.fallback_used is False
    assert reply.model_version == f"lgbm-{champion.version}"
    assert 0.0 <= reply.score <= 1.0
    assert reply.decision != scorer_pb2.DECISION_UNSPECIFIED
    assert len(reply.reasons) > 0


def test_unreachable_feature_store_still_gets_an_answer(
    trained: tuple[LocalStack, str, datetime], tmp_path: Path
) -> None:
    stack, card_id, now = trained
    # A second scorer whose Redis is a closed port: the feature store is down for it.
    broken = LocalStack(
        run_dir=tmp_path,
        kafka=stack.kafka,
        redis=stack.redis.model_copy(update={"port": free_port()}),
        feast=stack.feast.model_copy(update={"work_dir": tmp_path / "feature_repo"}),
        stream=stack.stream,
        scorer=stack.scorer.model_copy(update={"address": "127.0.0.1:0"}),
    )
    try:
        # Same definitions and registry, pointed at the dead Redis.
        repo_dir = feast_repo.prepare(broken.feast, broken.redis)
        assert stack.repo_dir is not None
        shutil.copy2(stack.repo_dir / "data" / "registry.db", repo_dir / "data" / "registry.db")
        address = broken.start_scorer()
        with grpc.insecure_channel(address) as channel:
            stub = scorer_pb2_grpc.FraudScorerStub(channel)
            replies = [
                stub.Score(
                    scorer_pb2.ScoreRequest(transaction=_transaction(card_id, now, 4_250)),
                    timeout=5,
                )
                for _ in range(3)
            ]
    finally:
        broken.stop()
    assert all(r.fallback_used for r in replies)
    assert all(r.model_version.startswith("rules-") for r in replies)
    assert all(0.0 <= r.score <= 1.0 for r in replies)

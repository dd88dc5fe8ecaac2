"""ScoreBatch, the bearer token, TLS and the `scores` topic, over real gRPC, Redis, Feast, Kafka."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from confluent_kafka import Consumer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.bench import world
from services.common import feast_repo, features
from services.common.broker import free_port
from services.common.model_registry import ModelRegistry
from services.common.settings import KafkaSettings, ScorerSettings
from services.proto.fraudscore.v1 import scorer_pb2, scorer_pb2_grpc
from services.scorer.interceptors import INVALID_FIELD_KEY
from services.scorer.model import LoadedModel
from services.scorer.online_features import FeatureReader
from services.scorer.outcome import ScoreOutcome
from services.scorer.publisher import ScorePublisher
from services.scorer.redis_reader import FastFeatureReader
from services.scorer.server import ScorerServer, create_server

pytestmark = pytest.mark.integration

PAN = "4111111111111111"
#: Tests that count calls require a token, so a stray client (another test's load generator
#: still aiming at a port the OS has since handed to this server) cannot add to the counts.
TOKEN = "count-only-my-calls"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
Start = Callable[..., tuple[ScorerServer, int]]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    registry = ModelRegistry(tmp_path_factory.mktemp("models"))
    record = registry.register(world.train_model_text(), world.model_metadata())
    registry.promote(record.version, "test champion")
    return registry


@pytest.fixture(scope="module")
def reader(feature_repo_dir: Path) -> FastFeatureReader:
    return FastFeatureReader.from_store(feast_repo.open_store(feature_repo_dir), timeout_s=1.0)


@pytest.fixture()
def start(registry: ModelRegistry) -> Iterator[Start]:
    servers: list[ScorerServer] = []

    def start(
        feature_reader: FeatureReader,
        on_scored: Callable[[ScoreOutcome], None] | None = None,
        address: str = "127.0.0.1:0",
        **overrides: object,
    ) -> tuple[ScorerServer, int]:
        overrides.setdefault("budget_ms", 2000)
        overrides.setdefault("batch_budget_ms", 5000)
        settings = ScorerSettings(
            model_dir=registry.root,
            metrics_port=0,
            max_workers=4,
            **overrides,  # type: ignore[arg-type]
        )
        server, port = create_server(
            address, settings, feature_reader=feature_reader, on_scored=on_scored
        )
        servers.append(server)
        return server, port

    yield start
    for server in servers:
        server.stop(0).wait()


def stub_for(port: int) -> tuple[grpc.Channel, scorer_pb2_grpc.FraudScorerStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, scorer_pb2_grpc.FraudScorerStub(channel)


def test_a_batch_is_scored_in_order_like_single_calls(
    start: Start, reader: FastFeatureReader, feature_repo_dir: Path
) -> None:
    store = feast_repo.open_store(feature_repo_dir)
    busy = f"busy-{uuid.uuid4().hex[:8]}"
    state = world.card_history(np.random.default_rng(1), world.NIGHT_MS, busy=True)
    world.push_states(store, {busy: state})
    outcomes: list[ScoreOutcome] = []
    _, port = start(reader, on_scored=outcomes.append)
    channel, stub = stub_for(port)
    with channel:
        txns = [
            world.transaction(busy, 150_000),
            world.transaction(f"new-{uuid.uuid4().hex[:8]}", 1_250),
            world.transaction(busy, 900),
        ]
        batch = stub.ScoreBatch(scorer_pb2.ScoreBatchRequest(transactions=txns), timeout=10)
        singles = [stub.Score(scorer_pb2.ScoreRequest(transaction=t), timeout=10) for t in txns]

    assert [r.transaction_id for r in batch.responses] == [t.transaction_id for t in txns]
    for got, single in zip(batch.responses, singles, strict=True):
        assert got.fallback_used is False
        assert got.score == pytest.approx(single.score, abs=1e-12)
        assert got.decision == single.decision
        assert [r.code for r in got.reasons] == [r.code for r in single.reasons]
    assert outcomes[0].features == features.all_features(state, 1_500.0, world.NIGHT_MS)
    assert outcomes[0].card_id == busy


def test_an_empty_batch_gets_an_empty_answer(start: Start, reader: FastFeatureReader) -> None:
    _, port = start(reader)
    channel, stub = stub_for(port)
    with channel:
        reply = stub.ScoreBatch(scorer_pb2.ScoreBatchRequest(), timeout=10)
    assert list(reply.responses) == []


def test_an_invalid_item_fails_the_batch_naming_its_index_and_field(
    start: Start, reader: FastFeatureReader
) -> None:
    _, port = start(reader)
    channel, stub = stub_for(port)
    cases = [
        ([world.transaction("c1"), world.transaction("c2", amount_minor=0)], "transactions[1]."),
        ([world.transaction(PAN)], "transactions[0].card_id"),
        ([world.transaction("c") for _ in range(1001)], "transactions"),
    ]
    with channel:
        for txns, field in cases:
            with pytest.raises(grpc.RpcError) as info:
                stub.ScoreBatch(scorer_pb2.ScoreBatchRequest(transactions=txns), timeout=10)
            err = info.value
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in err.details()
            assert PAN not in err.details()
            trailer = dict(err.trailing_metadata())[INVALID_FIELD_KEY]
            assert trailer.startswith(field.rstrip("."))


class RefusingReader:
    def read_state(self, card_id: str) -> features.CardState | None:
        raise ConnectionError("connection refused")


def test_a_failing_feature_store_answers_the_whole_batch_with_the_rules(start: Start) -> None:
    _, port = start(RefusingReader())
    channel, stub = stub_for(port)
    with channel:
        txns = [world.transaction(f"c{i}") for i in range(5)]
        reply = stub.ScoreBatch(scorer_pb2.ScoreBatchRequest(transactions=txns), timeout=10)
    assert len(reply.responses) == 5
    assert all(r.fallback_used and r.model_version == "rules-v1" for r in reply.responses)


def test_a_token_is_required_for_scoring_but_not_for_health(
    start: Start, reader: FastFeatureReader
) -> None:
    _, port = start(reader, auth_token="s3cret-token")
    channel, stub = stub_for(port)
    request = scorer_pb2.ScoreRequest(transaction=world.transaction("c"))
    with channel:
        wrong = [(), (("authorization", "Bearer wrong"),), (("authorization", "s3cret-token"),)]
        for metadata in wrong:
            with pytest.raises(grpc.RpcError) as info:
                stub.Score(request, timeout=10, metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "s3cret" not in (info.value.details() or "")
        good = (("authorization", "Bearer s3cret-token"),)
        assert stub.Score(request, timeout=10, metadata=good).transaction_id
        batch = scorer_pb2.ScoreBatchRequest(transactions=[request.transaction])
        assert len(stub.ScoreBatch(batch, timeout=10, metadata=good).responses) == 1
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_with_a_certificate_the_scorer_speaks_tls_only(
    start: Start, reader: FastFeatureReader, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    _, port = start(reader, tls_cert_file=cert, tls_key_file=key, auth_token="tok")
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=cert.read_bytes()),
        grpc.access_token_call_credentials("tok"),
    )
    request = scorer_pb2.ScoreRequest(transaction=world.transaction("c"))
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        reply = scorer_pb2_grpc.FraudScorerStub(channel).Score(request, timeout=10)
    assert reply.transaction_id == request.transaction.transaction_id
    with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
        with pytest.raises(grpc.RpcError) as info:
            scorer_pb2_grpc.FraudScorerStub(plain).Score(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def consume(settings: KafkaSettings, expected: int, timeout_s: float = 30.0) -> list[bytes]:
    consumer = Consumer(
        {
            **settings.client_config(),
            "group.id": f"scores-test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.session_timeout_ms,
        }
    )
    consumer.subscribe([settings.scores_topic])
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(values) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and msg.value() is not None:
                values.append(msg.value())  # type: ignore[arg-type]
    finally:
        consumer.close()
    return values


def test_every_score_is_published_to_the_scores_topic(
    start: Start, reader: FastFeatureReader, fresh_topics: KafkaSettings
) -> None:
    publisher = ScorePublisher(fresh_topics)
    _, port = start(reader, on_scored=publisher)
    channel, stub = stub_for(port)
    card = f"pub-{uuid.uuid4().hex[:8]}"
    with channel:
        single = world.transaction(card, 150_000)
        stub.Score(scorer_pb2.ScoreRequest(transaction=single), timeout=10)
        batch = [world.transaction(card, 2_000), world.transaction(card, 3_000)]
        stub.ScoreBatch(scorer_pb2.ScoreBatchRequest(transactions=batch), timeout=10)
    publisher.close()

    records = [scorer_pb2.ScoreRecord.FromString(v) for v in consume(fresh_topics, 3)]
    by_id = {r.transaction_id: r for r in records}
    assert set(by_id) == {t.transaction_id for t in (single, *batch)}
    first = by_id[single.transaction_id]
    assert first.card_id == card
    assert first.model_version.startswith("lgbm-")
    assert first.fallback_used is False and first.fallback_reason == ""
    assert 0.0 <= first.score <= 1.0
    assert first.features["amount"] == 1_500.0
    assert first.event_time.ToMilliseconds() == world.NIGHT_MS
    assert publisher.sent == 3 and publisher.dropped == 0


def test_a_dead_broker_never_fails_a_score(start: Start, reader: FastFeatureReader) -> None:
    dead = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    publisher = ScorePublisher(dead, queue_max=2)
    _, port = start(reader, on_scored=publisher)
    channel, stub = stub_for(port)
    with channel:
        replies = [
            stub.Score(scorer_pb2.ScoreRequest(transaction=world.transaction("c")), timeout=10)
            for _ in range(5)
        ]
    publisher.close(0)
    assert all(r.fallback_used is False for r in replies)
    assert publisher.dropped == 3


def test_dropped_score_records_are_counted_and_logged_once_per_interval(
    start: Start, reader: FastFeatureReader, caplog: pytest.LogCaptureFixture
) -> None:
    dead = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    server, port = start(reader, auth_token=TOKEN)
    publisher = ScorePublisher(
        dead, queue_max=2, on_dropped=server.metrics.score_records_dropped.inc
    )
    server.servicer.on_scored = publisher
    channel, stub = stub_for(port)
    with caplog.at_level("WARNING", logger="services.scorer.publisher"), channel:
        for _ in range(6):
            stub.Score(
                scorer_pb2.ScoreRequest(transaction=world.transaction("c")),
                timeout=10,
                metadata=AUTH,
            )
    publisher.close(0)
    assert publisher.dropped == 4
    dropped = server.metrics.registry.get_sample_value("fraudscore_score_records_dropped_total")
    assert dropped == 4.0
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: a dead broker is one line per interval


def test_a_batch_is_one_observation_of_the_batch_histogram(
    start: Start, reader: FastFeatureReader
) -> None:
    server, port = start(reader, auth_token=TOKEN)
    sample = server.metrics.registry.get_sample_value

    def singles() -> float:
        return sample("fraudscore_score_latency_seconds_count", {"path": "model"}) or 0.0

    def decisions() -> float:
        return sum(
            sample("fraudscore_decisions_total", {"decision": d}) or 0.0
            for d in ("approve", "review", "decline")
        )

    def batches() -> tuple[float, float]:
        count = sample("fraudscore_score_batch_latency_seconds_count") or 0.0
        return count, sample("fraudscore_score_batch_size_sum") or 0.0

    channel, stub = stub_for(port)
    with channel:
        # Deltas, not absolutes: the figures must move by exactly this test's calls.
        before, decided, (calls, items) = singles(), decisions(), batches()
        txns = [world.transaction(f"b-{i}", 1_000) for i in range(5)]
        stub.ScoreBatch(scorer_pb2.ScoreBatchRequest(transactions=txns), timeout=10, metadata=AUTH)
        assert batches() == (calls + 1, items + 5)
        # The batch's items are not single calls: the per-call histogram does not move ...
        assert singles() == before
        # ... while every answer, batch items included, is a decision.
        assert decisions() >= decided + 5
        stub.Score(
            scorer_pb2.ScoreRequest(transaction=world.transaction("s")), timeout=10, metadata=AUTH
        )
        assert singles() >= before + 1
        assert batches() == (calls + 1, items + 5)


def test_a_shadow_model_scores_off_the_request_path_into_the_scores_topic(
    start: Start,
    reader: FastFeatureReader,
    registry: ModelRegistry,
    fresh_topics: KafkaSettings,
) -> None:
    challenger = registry.register(world.train_model_text(seed=9), world.model_metadata())
    publisher = ScorePublisher(fresh_topics)
    threads: list[str] = []

    def publish(outcome: ScoreOutcome) -> None:
        threads.append(threading.current_thread().name)
        publisher(outcome)

    _, plain_port = start(reader, auth_token=TOKEN)
    server, port = start(
        reader, on_scored=publish, shadow_model_version=challenger.version, auth_token=TOKEN
    )
    assert server.shadow is not None and server.shadow.model is not None
    txns = [world.transaction(f"shadow-{i}", 10_000 * (i + 1)) for i in range(4)]
    plain_channel, plain_stub = stub_for(plain_port)
    channel, stub = stub_for(port)
    with channel, plain_channel:
        replies = [
            stub.Score(scorer_pb2.ScoreRequest(transaction=t), timeout=10, metadata=AUTH)
            for t in txns
        ]
        expected = [
            plain_stub.Score(scorer_pb2.ScoreRequest(transaction=t), timeout=10, metadata=AUTH)
            for t in txns
        ]
    # The caller's answer is the champion's, exactly as without a shadow.
    assert replies == expected
    server.stop(5).wait()
    publisher.close()
    assert set(threads) == {"shadow-scorer"}

    records = [scorer_pb2.ScoreRecord.FromString(v) for v in consume(fresh_topics, len(txns))]
    assert sorted(r.transaction_id for r in records) == sorted(t.transaction_id for t in txns)
    challenger_model = LoadedModel.load(registry.get(challenger.version))
    for record in records:
        assert record.model_version != f"lgbm-{challenger.version}"
        assert record.shadow_model_version == f"lgbm-{challenger.version}"
        assert record.HasField("shadow_score")
        vector = features.feature_vector(dict(record.features) | _nan_features(record))
        assert record.shadow_score == pytest.approx(challenger_model.predict(vector), abs=1e-12)
    assert server.metrics.registry.get_sample_value("fraudscore_shadow_scored_total") == 4.0


def _nan_features(record: scorer_pb2.ScoreRecord) -> dict[str, float]:
    # Records leave NaN (unknown) features out; the model saw them as NaN.
    return {n: float("nan") for n in features.FEATURE_NAMES if n not in record.features}

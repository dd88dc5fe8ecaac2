"""The scorer over a real gRPC channel, with real Redis + Feast and a real LightGBM model."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from feast.data_source import PushMode
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import feast_repo, features
from services.common.broker import free_port
from services.common.features import CardState, apply_transaction
from services.common.model_registry import ModelRegistry
from services.common.settings import FeastSettings, RedisSettings, ScorerSettings
from services.proto.fraudscore.v1 import scorer_pb2, scorer_pb2_grpc, transaction_pb2
from services.scorer.interceptors import INVALID_FIELD_KEY
from services.scorer.online_features import FeastFeatureReader, FeatureReader
from services.scorer.outcome import ScoreOutcome
from services.scorer.registry import ModelHolder
from services.scorer.server import SERVICE_NAME, ScorerServer, create_server

pytestmark = pytest.mark.integration

NAMES = list(features.FEATURE_NAMES)
NIGHT_MS = 1_767_232_800_000  # 2026-01-01 02:00 UTC
PAN = "4111111111111111"


def synthetic_rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Model inputs from real card states; fraud = a burst of spend or a large night payment."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for i in range(n):
        state = CardState()
        t0 = NIGHT_MS + int(rng.integers(0, 86_400_000))
        burst = rng.random() < 0.3
        history = int(rng.integers(6, 12)) if burst else int(rng.integers(0, 3))
        for j in reversed(range(history)):  # oldest first: older than the lateness is dropped
            apply_transaction(state, f"h{i}-{j}", t0 - (j + 1) * 90_000, 50.0, 300_000)
        amount = float(rng.uniform(900, 3_000) if rng.random() < 0.3 else rng.uniform(5, 200))
        feats = features.all_features(state, amount, t0)
        rows.append(feats)
        labels.append(int(burst or (amount > 800 and feats["is_night"] == 1.0)))
    return pd.DataFrame(rows, columns=NAMES), np.asarray(labels)


def train_model_text(seed: int = 0) -> str:
    frame, labels = synthetic_rows(300, seed)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 8, "min_data_in_leaf": 5}
    return lgb.train(params, lgb.Dataset(frame, label=labels), num_boost_round=20).model_to_string()


@pytest.fixture(scope="module")
def model_text() -> str:
    return train_model_text()


@pytest.fixture()
def registry(tmp_path: Path, model_text: str) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "models")
    record = registry.register(model_text, {"feature_names": NAMES})
    registry.promote(record.version, "test champion")
    return registry


@pytest.fixture(scope="module")
def feast_reader(feature_repo_dir: Path) -> FeastFeatureReader:
    reader = FeastFeatureReader(feast_repo.open_store(feature_repo_dir))
    reader.warm_up()
    return reader


@dataclass
class Running:
    server: ScorerServer
    channel: grpc.Channel
    stub: scorer_pb2_grpc.FraudScorerStub

    def score(
        self, txn: transaction_pb2.Transaction, timeout: float = 5
    ) -> scorer_pb2.ScoreResponse:
        return self.stub.Score(scorer_pb2.ScoreRequest(transaction=txn), timeout=timeout)


ServerFactory = Callable[..., Running]


@pytest.fixture()
def start_scorer(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start scorers bound to 127.0.0.1:0; each is stopped and its channel closed afterwards."""
    started: list[Running] = []

    def start(
        reader: FeatureReader,
        registry: ModelRegistry | None = None,
        on_scored: Callable[[ScoreOutcome], None] | None = None,
        tracer: trace.Tracer | None = None,
        **overrides: object,
    ) -> Running:
        model_dir = registry.root if registry else tmp_path / "empty-models"
        # A roomy budget unless a test is about the budget: a busy CI box must not flip paths.
        overrides.setdefault("budget_ms", 1000)
        settings = ScorerSettings(model_dir=model_dir, metrics_port=0, max_workers=4, **overrides)  # type: ignore[arg-type]
        server, port = create_server(
            "127.0.0.1:0", settings, feature_reader=reader, on_scored=on_scored, tracer=tracer
        )
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        running = Running(server, channel, scorer_pb2_grpc.FraudScorerStub(channel))
        started.append(running)
        return running

    yield start
    for running in started:
        running.channel.close()
        running.server.stop(0).wait()


def transaction(
    card_id: str, amount_minor: int = 150_000, event_ms: int = NIGHT_MS, **overrides: object
) -> transaction_pb2.Transaction:
    fields: dict[str, object] = {
        "transaction_id": f"t-{uuid.uuid4().hex[:8]}",
        "card_id": card_id,
        # A terminal no other test writes: the project's Redis is shared across the run.
        "terminal_id": f"term-{uuid.uuid4().hex[:8]}",
        "amount_minor": amount_minor,
        "currency": "EUR",
        "event_time": Timestamp(seconds=event_ms // 1000),
        "channel": transaction_pb2.CHANNEL_ECOMMERCE,
    }
    fields.update(overrides)
    return transaction_pb2.Transaction(**fields)  # type: ignore[arg-type]


def push_state(feature_repo_dir: Path, card_id: str, state: CardState) -> None:
    store = feast_repo.open_store(feature_repo_dir)
    frame = pd.DataFrame(
        [
            {
                "card_id": card_id,
                "event_timestamp": pd.Timestamp(state.last_event_ms, unit="ms", tz="UTC"),
                **features.to_list_row(state),
            }
        ]
    )
    store.push(feast_repo.PUSH_SOURCE, frame, to=PushMode.ONLINE)


def busy_card(now_ms: int) -> CardState:
    state = CardState()
    for i in reversed(range(8)):  # oldest first: older than the lateness is dropped
        apply_transaction(state, f"b{i}", now_ms - (i + 1) * 60_000, 45.0 + i, 300_000)
    return state


def test_model_scores_a_known_card_from_the_features_stored_for_it(
    start_scorer: ServerFactory,
    registry: ModelRegistry,
    feast_reader: FeastFeatureReader,
    feature_repo_dir: Path,
) -> None:
    card = f"card-{uuid.uuid4().hex[:8]}"
    state = busy_card(NIGHT_MS)
    push_state(feature_repo_dir, card, state)
    outcomes: list[ScoreOutcome] = []
    scorer = start_scorer(feast_reader, registry, on_scored=outcomes.append, budget_ms=2000)

    txn = transaction(card, amount_minor=150_000)
    reply = scorer.score(txn)

    assert reply.transaction_id == txn.transaction_id
    assert reply.fallback_used is False
    assert reply.model_version == f"lgbm-{registry.champion_version()}"
    assert 0.0 <= reply.score <= 1.0
    assert reply.reasons and all(r.contribution > 0 for r in reply.reasons)
    assert reply.reasons[0].description == features.FEATURE_DESCRIPTIONS[reply.reasons[0].code]
    expected = features.all_features(state, 1_500.0, NIGHT_MS)
    assert outcomes[0].features == expected
    assert expected["card_count_1h"] == 8.0
    # A risky burst at night: the model should not approve it outright.
    assert reply.decision != scorer_pb2.DECISION_APPROVE


def test_unknown_card_is_scored_by_the_model_with_an_empty_history(
    start_scorer: ServerFactory, registry: ModelRegistry, feast_reader: FeastFeatureReader
) -> None:
    outcomes: list[ScoreOutcome] = []
    scorer = start_scorer(feast_reader, registry, on_scored=outcomes.append, budget_ms=2000)
    reply = scorer.score(transaction(f"new-{uuid.uuid4().hex[:8]}", 1_250))
    assert reply.fallback_used is False
    assert outcomes[0].features is not None
    assert outcomes[0].features["card_count_24h"] == 0.0


def test_invalid_requests_get_invalid_argument_naming_the_field(
    start_scorer: ServerFactory, registry: ModelRegistry, feast_reader: FeastFeatureReader
) -> None:
    scorer = start_scorer(feast_reader, registry)
    cases = [
        (transaction("card-1", transaction_id=""), "transaction_id"),
        (transaction("card-1", currency=""), "currency"),
        (transaction("card-1", amount_minor=0), "amount_minor"),
        (transaction(PAN), "card_id"),
    ]
    for txn, field in cases:
        with pytest.raises(grpc.RpcError) as info:
            scorer.score(txn)
        err = info.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in err.details()
        assert PAN not in err.details()
        assert (INVALID_FIELD_KEY, field) in tuple(err.trailing_metadata())


def unreachable_reader(feature_repo_dir: Path, tmp_path: Path) -> FeastFeatureReader:
    """The applied repo, copied, with its online store pointed at a closed Redis port."""
    copy = tmp_path / "unreachable_repo"
    shutil.copytree(feature_repo_dir, copy)
    project = feast_repo.open_store(feature_repo_dir).project
    feast_repo.prepare(
        FeastSettings(work_dir=copy, project=project), RedisSettings(port=free_port())
    )
    return FeastFeatureReader(feast_repo.open_store(copy))


def test_unreachable_feature_store_falls_back_and_opens_the_breaker(
    start_scorer: ServerFactory,
    registry: ModelRegistry,
    feature_repo_dir: Path,
    tmp_path: Path,
) -> None:
    reader = unreachable_reader(feature_repo_dir, tmp_path)
    outcomes: list[ScoreOutcome] = []
    # redis-py retries a refused connection with backoff for seconds: the budget cuts that short.
    scorer = start_scorer(
        reader,
        registry,
        on_scored=outcomes.append,
        budget_ms=50,
        breaker_fail_max=3,
        breaker_reset_s=60,
    )
    server = scorer.server
    for _ in range(5):
        reply = scorer.score(transaction("card-x"))
        assert reply.fallback_used is True
        assert reply.model_version == "rules-v1"
        assert {r.code for r in reply.reasons} >= {"AMOUNT_HIGH", "CARD_NOT_PRESENT_HIGH"}
    assert [o.fallback_reason for o in outcomes][-2:] == ["breaker_open", "breaker_open"]
    assert server.guarded.state == "open"
    gauge = server.metrics.registry.get_sample_value("fraudscore_breaker_state")
    assert gauge == 2.0
    opened = server.metrics.registry.get_sample_value(
        "fraudscore_fallbacks_total", {"reason": "breaker_open"}
    )
    assert opened == 2.0


class FailingReader:
    """A feature store that refuses every read at once."""

    def read_state(self, card_id: str) -> CardState | None:
        raise ConnectionError("connection refused")


class HangingReader:
    """A feature store that stops answering (a wedged Redis) until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def read_state(self, card_id: str) -> CardState | None:
        self.release.wait(10)
        return None


def test_once_open_the_breaker_answers_without_waiting_for_the_budget(
    start_scorer: ServerFactory, registry: ModelRegistry
) -> None:
    reader = HangingReader()
    outcomes: list[ScoreOutcome] = []
    scorer = start_scorer(
        reader, registry, on_scored=outcomes.append, budget_ms=150, breaker_fail_max=2
    )
    try:
        latencies = []
        for _ in range(4):
            started = time.perf_counter()
            reply = scorer.score(transaction("c"))
            latencies.append(time.perf_counter() - started)
            assert reply.fallback_used is True
        assert [o.fallback_reason for o in outcomes] == [
            "timeout",
            "timeout",
            "breaker_open",
            "breaker_open",
        ]
        assert min(latencies[:2]) >= 0.15
        assert max(latencies[2:]) < 0.1
    finally:
        reader.release.set()


def test_a_short_client_deadline_is_answered_by_the_rules_in_time(
    start_scorer: ServerFactory, registry: ModelRegistry
) -> None:
    reader = HangingReader()
    outcomes: list[ScoreOutcome] = []
    scorer = start_scorer(reader, registry, on_scored=outcomes.append, budget_ms=5000)
    try:
        # Shorter than the budget, so the caller's deadline bounds the path; 2 s, not 0.5 s:
        # the reserve for the reply is a tenth of it, and 55 ms once fell short on a CI host
        # where a scheduling stall delayed the answer past the deadline.
        reply = scorer.score(transaction("c"), timeout=2.0)
        assert reply.fallback_used is True
        assert outcomes[0].fallback_reason == "timeout"
        # The caller's short deadline says nothing about the feature store's health.
        assert scorer.server.guarded.breaker.fail_counter == 0
    finally:
        reader.release.set()


def health_status(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


def test_health_is_not_serving_until_a_model_loads(
    start_scorer: ServerFactory, tmp_path: Path, model_text: str, feast_reader: FeastFeatureReader
) -> None:
    registry = ModelRegistry(tmp_path / "later")
    scorer = start_scorer(feast_reader, registry)
    for service in ("", SERVICE_NAME):
        assert health_status(scorer.channel, service) == health_pb2.HealthCheckResponse.NOT_SERVING
    # Without a model the rules still answer.
    assert scorer.score(transaction("c")).fallback_used is True

    record = registry.register(model_text, {"feature_names": NAMES})
    registry.promote(record.version)
    assert scorer.server.model_holder.refresh() is True
    for service in ("", SERVICE_NAME):
        assert health_status(scorer.channel, service) == health_pb2.HealthCheckResponse.SERVING
    assert scorer.score(transaction("c")).model_version == f"lgbm-{record.version}"


def test_reflection_lists_the_scorer_and_health_services(
    start_scorer: ServerFactory, registry: ModelRegistry, feast_reader: FeastFeatureReader
) -> None:
    scorer = start_scorer(feast_reader, registry)
    stub = reflection_pb2_grpc.ServerReflectionStub(scorer.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_promotions_swap_models_live_but_broken_artifacts_are_refused(
    start_scorer: ServerFactory,
    registry: ModelRegistry,
    feast_reader: FeastFeatureReader,
) -> None:
    scorer = start_scorer(feast_reader, registry, registry_poll_s=0.05, budget_ms=2000)
    holder: ModelHolder = scorer.server.model_holder
    first = registry.champion_version()
    assert scorer.score(transaction("c")).model_version == f"lgbm-{first}"

    second = registry.register(train_model_text(seed=1), {"feature_names": NAMES})
    registry.promote(second.version)
    wait_for(lambda: holder.current is not None and holder.current.version == second.version)
    assert scorer.score(transaction("c")).model_version == f"lgbm-{second.version}"

    garbage = registry.register("this is not a LightGBM model", {"feature_names": NAMES})
    wrong_features = registry.register(train_model_text(), {"feature_names": NAMES[::-1]})
    for broken in (garbage, wrong_features):
        registry.promote(broken.version, "broken on purpose")
        wait_for(lambda v=broken.version: v in holder.refused)  # type: ignore[misc]
        reply = scorer.score(transaction("c"))
        assert reply.model_version == f"lgbm-{second.version}"
        assert reply.fallback_used is False
    info = scorer.server.metrics.registry.get_sample_value(
        "fraudscore_model_info", {"version": f"lgbm-{second.version}"}
    )
    assert info == 1.0
    sample = scorer.server.metrics.registry.get_sample_value
    # The alert for operators: refusals by reason, and "the newest promotion is not serving".
    assert sample("fraudscore_model_refused_total", {"reason": "unreadable"}) == 1.0
    assert sample("fraudscore_model_refused_total", {"reason": "feature_mismatch"}) == 1.0
    assert sample("fraudscore_model_alert") == 1.0
    third = registry.register(train_model_text(seed=2), {"feature_names": NAMES})
    registry.promote(third.version)
    wait_for(lambda: holder.current is not None and holder.current.version == third.version)
    wait_for(lambda: sample("fraudscore_model_alert") == 0.0)
    assert sample("fraudscore_model_refused_total", {"reason": "unreadable"}) == 1.0


def test_each_score_is_one_trace_with_feature_fetch_and_predict_or_fallback_children(
    start_scorer: ServerFactory,
    registry: ModelRegistry,
    feast_reader: FeastFeatureReader,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    scorer = start_scorer(feast_reader, registry, tracer=tracer)
    scorer.score(transaction("card-traced"))
    broken = start_scorer(FailingReader(), registry, tracer=tracer)
    broken.score(transaction("card-traced"))

    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.name == "Score"]
    assert len(roots) == 2
    children = {
        root.context.trace_id: sorted(
            s.name for s in spans if s.parent and s.parent.span_id == root.context.span_id
        )
        for root in roots
    }
    model_root, fallback_root = roots
    assert children[model_root.context.trace_id] == ["feature_fetch", "predict"]
    assert children[fallback_root.context.trace_id] == ["fallback", "feature_fetch"]
    assert model_root.attributes is not None and fallback_root.attributes is not None
    assert model_root.attributes["fallback_used"] is False
    assert str(model_root.attributes["model_version"]).startswith("lgbm-")
    assert model_root.attributes["breaker_state"] == "closed"
    assert fallback_root.attributes["fallback_used"] is True
    assert fallback_root.attributes["model_version"] == "rules-v1"

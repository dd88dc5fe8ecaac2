"""Whatever a caller sends, the scorer answers OK or INVALID_ARGUMENT: never INTERNAL/UNKNOWN."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.bench import world
from services.common import feast_repo
from services.common.model_registry import ModelRegistry
from services.common.settings import ScorerSettings
from services.proto.fraudscore.v1 import scorer_pb2, scorer_pb2_grpc, transaction_pb2
from services.scorer.redis_reader import FastFeatureReader
from services.scorer.server import create_server

pytestmark = pytest.mark.integration

ACCEPTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}

# No lone surrogates: a Python str that is not UTF-8 cannot even leave the client.
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


def luhn_complete(digits: str) -> str:
    """`digits` plus the check digit that makes it pass Luhn, like a real card number."""
    for check in "0123456789":
        candidate = digits + check
        total = 0
        for i, ch in enumerate(reversed(candidate)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return candidate
    raise AssertionError("unreachable")


pans = st.from_regex(r"\A[0-9]{12,18}\Z").map(luhn_complete)
card_ids = st.one_of(texts, pans, st.from_regex(r"\Acard-[0-9]{1,6}\Z"), st.just(""))
amounts = st.one_of(
    st.sampled_from([0, -1, 1, 2**63 - 1, -(2**63), 10**15]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=1, max_value=500_000),
)
currencies = st.one_of(st.sampled_from(["EUR", "USD", "JPY", "KWD", "eur", "", "XXX"]), texts)
timestamps = st.one_of(
    st.none(),
    st.builds(
        Timestamp,
        seconds=st.one_of(
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.integers(min_value=1, max_value=4_102_444_800),
            st.sampled_from([0, -1, 1, 253_402_300_799, 253_402_300_800, 10**11, 2**62]),
        ),
        nanos=st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(0, 999_999_999)),
    ),
)


@st.composite
def transactions(draw: st.DrawFn) -> transaction_pb2.Transaction:
    txn = transaction_pb2.Transaction()
    if draw(st.booleans()):
        txn.transaction_id = draw(texts)
    if draw(st.integers(0, 9)) > 0:
        txn.card_id = draw(card_ids)
    if draw(st.integers(0, 9)) > 0:
        txn.terminal_id = draw(texts)
    if draw(st.integers(0, 9)) > 0:
        txn.amount_minor = draw(amounts)
    if draw(st.integers(0, 9)) > 0:
        txn.currency = draw(currencies)
    stamp = draw(timestamps)
    if stamp is not None:
        txn.event_time.CopyFrom(stamp)
    txn.channel = draw(st.integers(-(2**31), 2**31 - 1))  # type: ignore[assignment]
    txn.merchant_category_code = draw(texts)
    txn.country = draw(texts)
    return txn


@st.composite
def nearly_valid(draw: st.DrawFn) -> transaction_pb2.Transaction:
    """A valid transaction with one or two fields drawn wild: the edge cases get past the
    first checks, where a fully random message would be refused on its first field."""
    txn = world.transaction(
        draw(st.from_regex(r"\Acard-[0-9]{1,4}\Z")),
        amount_minor=draw(
            st.one_of(
                st.integers(1, 100_000_000),
                st.sampled_from([1, 49_999, 50_000, 100_000, 500_000, 99_999_999]),
            )
        ),
        event_ms=draw(st.integers(1, 4_102_444_800_000)),
        channel=draw(st.sampled_from([0, 1, 2, 3, 4])),
    )
    wild = draw(transactions())
    for name in draw(st.lists(st.sampled_from(WILD_FIELDS), min_size=1, max_size=2)):
        if name == "event_time" and not wild.HasField("event_time"):
            txn.ClearField("event_time")
        else:
            setattr(txn, name, getattr(wild, name)) if name != "event_time" else (
                txn.event_time.CopyFrom(wild.event_time)
            )
    return txn


WILD_FIELDS = ["card_id", "amount_minor", "currency", "event_time", "channel", "terminal_id"]

requests = st.one_of(
    st.builds(scorer_pb2.ScoreRequest),  # no transaction at all
    st.builds(scorer_pb2.ScoreRequest, transaction=transactions()),
    # Weighted towards nearly valid ones: they reach the feature read, the model and the rules.
    *[st.builds(scorer_pb2.ScoreRequest, transaction=nearly_valid())] * 4,
)


@pytest.fixture(scope="module")
def stub(
    feature_repo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[scorer_pb2_grpc.FraudScorerStub]:
    registry = ModelRegistry(tmp_path_factory.mktemp("models"))
    record = registry.register(world.train_model_text(), world.model_metadata())
    registry.promote(record.version)
    reader = FastFeatureReader.from_store(feast_repo.open_store(feature_repo_dir), timeout_s=1.0)
    settings = ScorerSettings(
        model_dir=registry.root, metrics_port=0, max_workers=4, budget_ms=2000
    )
    server, port = create_server("127.0.0.1:0", settings, feature_reader=reader)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield scorer_pb2_grpc.FraudScorerStub(channel)
    channel.close()
    server.stop(0).wait()


def at(seconds: int, nanos: int = 0, amount_minor: int = 50_000) -> scorer_pb2.ScoreRequest:
    txn = world.transaction("card-0", amount_minor)
    txn.event_time.CopyFrom(Timestamp(seconds=seconds, nanos=nanos))
    return scorer_pb2.ScoreRequest(transaction=txn)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests)
# Found by this test: a date past year 9999 once crashed the rules' night-time check.
@example(request=at(253_402_300_800))
@example(request=at(2**62))
@example(request=at(1, nanos=-(2**31)))
@example(request=at(253_402_300_799, nanos=999_999_999))
def test_random_requests_are_answered_or_refused_as_invalid_never_failed(
    stub: scorer_pb2_grpc.FraudScorerStub, request: scorer_pb2.ScoreRequest
) -> None:
    try:
        reply = stub.Score(request, timeout=10)
    except grpc.RpcError as err:
        assert err.code() in ACCEPTED, (err.code(), err.details())
        return
    assert 0.0 <= reply.score <= 1.0
    assert reply.transaction_id == request.transaction.transaction_id


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(transactions(), max_size=20))
def test_random_batches_are_answered_or_refused_as_invalid_never_failed(
    stub: scorer_pb2_grpc.FraudScorerStub, batch: list[transaction_pb2.Transaction]
) -> None:
    try:
        reply = stub.ScoreBatch(scorer_pb2.ScoreBatchRequest(transactions=batch), timeout=10)
    except grpc.RpcError as err:
        assert err.code() in ACCEPTED, (err.code(), err.details())
        return
    assert len(reply.responses) == len(batch)

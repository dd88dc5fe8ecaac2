"""Batch validation, score records and stored-value decoding, without any service."""

from __future__ import annotations

import math

import pytest
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from services.bench import world
from services.proto.fraudscore.v1 import scorer_pb2
from services.scorer.errors import InvalidInput
from services.scorer.outcome import Reason, ScoreOutcome
from services.scorer.redis_reader import decode_value
from services.scorer.servicer import validate, validate_batch


def test_batch_validation_names_the_first_bad_item_by_index() -> None:
    request = scorer_pb2.ScoreBatchRequest(
        transactions=[world.transaction("a"), world.transaction("b", currency="ZZZ")]
    )
    with pytest.raises(InvalidInput) as info:
        validate_batch(request, max_items=10)
    assert info.value.field == "transactions[1].currency"


def test_a_batch_over_the_limit_is_refused_before_any_item_is_looked_at() -> None:
    request = scorer_pb2.ScoreBatchRequest(transactions=[world.transaction("a")] * 3)
    with pytest.raises(InvalidInput) as info:
        validate_batch(request, max_items=2)
    assert info.value.field == "transactions"


def test_a_date_past_year_9999_is_invalid_not_an_internal_error() -> None:
    txn = world.transaction("a")
    txn.event_time.seconds = 253_402_300_800
    with pytest.raises(InvalidInput) as info:
        validate(scorer_pb2.ScoreRequest(transaction=txn))
    assert info.value.field == "event_time"


def test_a_score_record_carries_the_card_the_inputs_and_the_decision() -> None:
    outcome = ScoreOutcome(
        transaction_id="t1",
        score=0.7,
        decision=scorer_pb2.DECISION_REVIEW,
        model_version="lgbm-1",
        reasons=[Reason("amount", "transaction amount", 0.4)],
        fallback_used=False,
        features={"amount": 12.5, "card_seconds_since_last": math.nan},
        card_id="card-9",
        event_ms=1_767_232_800_123,
    )
    record = outcome.to_record(scored_at_s=1_767_232_801.5)
    assert record.card_id == "card-9"
    assert dict(record.features) == {"amount": 12.5}  # unknown (NaN) is left out
    assert record.decision == scorer_pb2.DECISION_REVIEW
    assert record.event_time.ToMilliseconds() == 1_767_232_800_123
    assert record.scored_at.ToMilliseconds() == 1_767_232_801_500
    assert [r.code for r in record.reasons] == ["amount"]


def test_stored_values_decode_as_feast_returns_them() -> None:
    assert decode_value(None) is None
    assert decode_value(b"") is None
    assert decode_value(ValueProto(int64_val=5).SerializeToString()) == 5
    listed = ValueProto()
    listed.double_list_val.val.extend([1.5, 2.5])
    assert decode_value(listed.SerializeToString()) == [1.5, 2.5]
    assert decode_value(ValueProto().SerializeToString()) is None

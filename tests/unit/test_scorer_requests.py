"""Request validation and the score -> decision mapping of the scorer."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from services.proto.fraudscore.v1 import scorer_pb2, transaction_pb2
from services.scorer.errors import InvalidInput
from services.scorer.outcome import decide
from services.scorer.servicer import validate

PAN = "4111111111111111"  # the classic Visa test number: 16 digits, Luhn-valid


def request(**overrides: object) -> scorer_pb2.ScoreRequest:
    fields: dict[str, object] = {
        "transaction_id": "t-1",
        "card_id": "card-42",
        "terminal_id": "term-1",
        "amount_minor": 1999,
        "currency": "EUR",
        "event_time": Timestamp(seconds=1_767_268_800),
    }
    fields.update(overrides)
    return scorer_pb2.ScoreRequest(transaction=transaction_pb2.Transaction(**fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (0.0, scorer_pb2.DECISION_APPROVE),
        (0.4999, scorer_pb2.DECISION_APPROVE),
        (0.5, scorer_pb2.DECISION_REVIEW),
        (0.8999, scorer_pb2.DECISION_REVIEW),
        (0.9, scorer_pb2.DECISION_DECLINE),
        (1.0, scorer_pb2.DECISION_DECLINE),
    ],
)
def test_thresholds_are_inclusive(score: float, expected: int) -> None:
    assert decide(score, review_threshold=0.5, decline_threshold=0.9) == expected


def test_valid_request_yields_major_units_and_event_ms() -> None:
    txn = validate(request())
    assert txn.amount == pytest.approx(19.99)
    assert txn.event_ms == 1_767_268_800_000


def test_pan_like_card_id_is_refused_without_echoing_it() -> None:
    with pytest.raises(InvalidInput) as info:
        validate(request(card_id=PAN))
    assert info.value.field == "card_id"
    assert PAN not in str(info.value)


def test_card_token_of_digits_failing_luhn_is_accepted() -> None:
    assert validate(request(card_id="4111111111111112")).card_id == "4111111111111112"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"transaction_id": ""}, "transaction_id"),
        ({"card_id": ""}, "card_id"),
        ({"amount_minor": 0}, "amount_minor"),
        ({"currency": "XXX"}, "currency"),
        ({"event_time": Timestamp()}, "event_time"),
    ],
)
def test_missing_or_bad_fields_are_named(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate(request(**overrides))
    assert info.value.field == field


def test_request_without_a_transaction_names_it() -> None:
    with pytest.raises(InvalidInput) as info:
        validate(scorer_pb2.ScoreRequest())
    assert info.value.field == "transaction"

"""The rules-v1 fallback: which rules fire, how they add up, and what they report."""

from __future__ import annotations

from services.proto.fraudscore.v1 import transaction_pb2
from services.scorer import fallback
from services.scorer.fallback import FallbackInput

NOON_MS = 1_767_268_800_000  # 2026-01-01 12:00 UTC
NIGHT_MS = 1_767_232_800_000  # 2026-01-01 02:00 UTC


def codes(tx: FallbackInput) -> list[str]:
    return [r.code for r in fallback.score(tx)[1]]


def test_small_daytime_card_present_payment_scores_the_base_and_no_reasons() -> None:
    score, reasons = fallback.score(
        FallbackInput(25.0, NOON_MS, transaction_pb2.CHANNEL_CARD_PRESENT)
    )
    assert score == fallback.BASE_SCORE
    assert reasons == []


def test_high_and_very_high_amounts_are_exclusive_tiers() -> None:
    assert codes(FallbackInput(999.99, NOON_MS)) == []
    assert codes(FallbackInput(1_000.0, NOON_MS)) == ["AMOUNT_HIGH"]
    assert codes(FallbackInput(5_000.0, NOON_MS)) == ["AMOUNT_VERY_HIGH"]


def test_night_and_card_not_present_add_to_a_high_amount() -> None:
    tx = FallbackInput(600.0, NIGHT_MS, transaction_pb2.CHANNEL_ECOMMERCE)
    score, reasons = fallback.score(tx)
    assert [r.code for r in reasons] == ["NIGHT_HIGH_AMOUNT", "CARD_NOT_PRESENT_HIGH"]
    assert score == round(fallback.BASE_SCORE + 0.25 + 0.20, 6)
    assert codes(FallbackInput(600.0, NOON_MS, transaction_pb2.CHANNEL_CARD_PRESENT)) == []


def test_score_is_capped_below_one_when_every_signal_fires() -> None:
    feats = {
        "card_count_1h": 9.0,
        "card_count_24h": 10.0,
        "card_amount_sum_24h": 100.0,
        "card_seconds_since_last": 3.0,
    }
    tx = FallbackInput(9_000.0, NIGHT_MS, transaction_pb2.CHANNEL_MOTO, feats)
    score, reasons = fallback.score(tx)
    assert score == fallback.MAX_SCORE
    assert reasons[0].code == "AMOUNT_VERY_HIGH"  # heaviest first
    assert {r.code for r in reasons} >= {"VELOCITY_1H", "RAPID_REPEAT", "SPEND_SPIKE"}


def test_feature_rules_stay_silent_without_features_or_with_unknown_values() -> None:
    assert codes(FallbackInput(300.0, NOON_MS)) == []
    unknown = {"card_seconds_since_last": float("nan"), "card_count_24h": 0.0}
    assert codes(FallbackInput(300.0, NOON_MS, card_features=unknown)) == []


def test_spend_spike_compares_with_the_cards_24h_average() -> None:
    feats = {"card_count_24h": 4.0, "card_amount_sum_24h": 200.0}  # average 50
    assert "SPEND_SPIKE" in codes(FallbackInput(250.0, NOON_MS, card_features=feats))
    assert "SPEND_SPIKE" not in codes(FallbackInput(240.0, NOON_MS, card_features=feats))


def test_rules_version_is_what_the_scorer_reports() -> None:
    assert fallback.RULES_VERSION == "rules-v1"

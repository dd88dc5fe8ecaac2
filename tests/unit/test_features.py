"""The shared feature logic: exactly-once folding, windows finished at read time."""

from __future__ import annotations

import math

from services.common import features
from services.common.features import CardState, Outcome, apply_transaction, card_features

LATE = 300_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a Thursday


def test_first_transaction_has_no_history() -> None:
    feats = card_features(None, T0)
    assert feats["card_count_1h"] == 0
    assert feats["card_amount_sum_24h"] == 0
    assert math.isnan(feats["card_seconds_since_last"])


def test_counts_and_sums_within_windows() -> None:
    state = CardState()
    assert apply_transaction(state, "a", T0, 10.0, LATE) is Outcome.APPLIED
    assert apply_transaction(state, "b", T0 + 20 * 60_000, 5.5, LATE) is Outcome.APPLIED
    feats = card_features(state, T0 + 30 * 60_000)
    assert feats["card_count_1h"] == 2
    assert feats["card_amount_sum_1h"] == 15.5
    assert feats["card_count_24h"] == 2
    assert feats["card_seconds_since_last"] == 600.0


def test_idle_card_shows_no_stale_hourly_count() -> None:
    state = CardState()
    apply_transaction(state, "a", T0, 10.0, LATE)
    feats = card_features(state, T0 + 25 * 3600_000)
    assert feats["card_count_1h"] == 0
    assert feats["card_count_24h"] == 0
    assert feats["card_seconds_since_last"] == 25 * 3600


def test_one_hour_window_drops_tiles_older_than_an_hour() -> None:
    state = CardState()
    apply_transaction(state, "a", T0, 1.0, LATE)
    apply_transaction(state, "b", T0 + 59 * 60_000, 2.0, LATE)
    assert card_features(state, T0 + 59 * 60_000)["card_count_1h"] == 2
    assert card_features(state, T0 + 61 * 60_000)["card_count_1h"] == 1


def test_redelivered_transaction_is_counted_once() -> None:
    state = CardState()
    apply_transaction(state, "a", T0, 10.0, LATE)
    assert apply_transaction(state, "a", T0, 10.0, LATE) is Outcome.DUPLICATE
    assert card_features(state, T0 + 1)["card_count_1h"] == 1


def test_event_later_than_allowed_lateness_is_not_counted() -> None:
    state = CardState()
    apply_transaction(state, "a", T0 + 3600_000, 10.0, LATE)
    assert apply_transaction(state, "old", T0, 99.0, LATE) is Outcome.LATE
    assert apply_transaction(state, "slightly", T0 + 3600_000 - 60_000, 1.0, LATE) is (
        Outcome.APPLIED
    )
    assert card_features(state, T0 + 3600_000 + 1)["card_amount_sum_1h"] == 11.0


def test_state_round_trips_through_a_feast_row() -> None:
    state = CardState()
    for i in range(50):
        apply_transaction(state, f"t{i}", T0 + i * 997_000, 1.25 * i, LATE)
    restored = features.from_row(features.to_row(state))
    assert restored is not None
    now = T0 + 50 * 997_000
    assert card_features(restored, now) == card_features(state, now) or _nan_equal(
        card_features(restored, now), card_features(state, now)
    )
    assert restored.recent == state.recent
    assert features.from_row({name: None for name in features.STATE_COLUMNS}) is None


def test_old_tiles_are_pruned_so_state_stays_bounded() -> None:
    state = CardState()
    for day in range(100):
        apply_transaction(state, f"t{day}", T0 + day * 86_400_000, 1.0, LATE)
    assert len(state.tiles["d"]) <= features.DAY.keep + 1
    assert len(state.tiles["m"]) <= features.MINUTE.keep + 1
    assert len(state.recent) == 1


def test_feature_vector_follows_the_model_order() -> None:
    feats = features.all_features(None, 12.5, T0)
    vector = features.feature_vector(feats)
    assert len(vector) == len(features.FEATURE_NAMES)
    assert vector[features.FEATURE_NAMES.index("amount")] == 12.5
    assert set(features.FEATURE_DESCRIPTIONS) == set(features.FEATURE_NAMES)


def test_transaction_features_use_utc_calendar() -> None:
    saturday_night = T0 + 2 * 86_400_000 + 3 * 3600_000  # Sat 03:00Z
    feats = features.transaction_features(5.0, saturday_night)
    assert feats == {"amount": 5.0, "hour_of_day": 3.0, "is_weekend": 1.0, "is_night": 1.0}


def _nan_equal(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )

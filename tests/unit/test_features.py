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


def test_every_window_has_count_sum_and_mean_finished_at_read_time() -> None:
    state = CardState()
    apply_transaction(state, "old", T0, 30.0, LATE)
    apply_transaction(state, "week", T0 + 20 * 86_400_000, 10.0, LATE)
    apply_transaction(state, "now", T0 + 26 * 86_400_000, 20.0, LATE)
    feats = card_features(state, T0 + 26 * 86_400_000 + 5 * 60_000)
    assert (feats["card_count_10m"], feats["card_amount_mean_10m"]) == (1, 20.0)
    assert (feats["card_count_7d"], feats["card_amount_sum_7d"]) == (2, 30.0)
    assert (feats["card_count_30d"], feats["card_amount_mean_30d"]) == (3, 20.0)
    idle = card_features(state, T0 + 26 * 86_400_000 + 20 * 60_000)
    assert idle["card_count_10m"] == 0
    assert math.isnan(idle["card_amount_mean_10m"])


def test_distinct_terminals_over_a_day_are_bounded_per_hour() -> None:
    state = CardState()
    for i in range(features.MAX_TERMINALS_PER_TILE + 5):
        apply_transaction(state, f"a{i}", T0 + i, 1.0, LATE, terminal_id=f"t{i}")
    apply_transaction(state, "again", T0 + 3600_000, 1.0, LATE, terminal_id="t0")
    apply_transaction(state, "new", T0 + 3600_001, 1.0, LATE, terminal_id="fresh")
    feats = card_features(state, T0 + 3600_002)
    assert feats["card_distinct_terminals_24h"] == features.MAX_TERMINALS_PER_TILE + 1
    assert card_features(state, T0 + 24 * 3600_000)["card_distinct_terminals_24h"] == 2
    restored = features.from_row(features.to_row(state))
    assert restored is not None and restored.terminals == state.terminals


def test_amount_zscore_uses_the_30_day_mean_and_spread() -> None:
    state = CardState()
    assert math.isnan(features.amount_zscore(None, 10.0, T0))
    apply_transaction(state, "a", T0, 10.0, LATE)
    # One amount (or equal ones) has no spread: NaN, not 0 or infinity.
    assert math.isnan(features.amount_zscore(state, 99.0, T0 + 1))
    apply_transaction(state, "b", T0 + 1000, 30.0, LATE)
    # mean 20, population standard deviation 10
    assert features.amount_zscore(state, 50.0, T0 + 2000) == 3.0
    assert math.isnan(features.amount_zscore(state, 50.0, T0 + 31 * 86_400_000))


def test_terminal_risk_counts_frauds_from_when_their_labels_arrive() -> None:
    state = features.TerminalState()
    apply = features.apply_terminal_transaction
    assert apply(state, "a", T0, LATE) is Outcome.APPLIED
    assert apply(state, "b", T0 + 1000, LATE) is Outcome.APPLIED
    assert apply(state, "b", T0 + 1000, LATE) is Outcome.DUPLICATE
    before = features.terminal_features(state, T0 + 2000)
    assert (before["terminal_count_1d"], before["terminal_risk_1d"]) == (2, 0.0)
    assert features.apply_terminal_label(state, "a", T0, True) is Outcome.APPLIED
    assert features.apply_terminal_label(state, "a", T0, True) is Outcome.DUPLICATE
    assert features.apply_terminal_label(state, "b", T0 + 1000, False) is Outcome.IGNORED
    after = features.terminal_features(state, T0 + 2000)
    assert (after["terminal_count_1d"], after["terminal_risk_1d"]) == (2, 0.5)
    # The fraud stays with its transaction's day: gone from the 1 d window after a day, still
    # in the 7 d one.
    later = features.terminal_features(state, T0 + 2 * 86_400_000)
    assert later["terminal_count_1d"] == 0
    assert math.isnan(later["terminal_risk_1d"])
    assert later["terminal_risk_7d"] == 0.5
    restored = features.terminal_from_row(features.terminal_to_row(state))
    assert restored is not None
    assert features.terminal_to_row(restored) == features.terminal_to_row(state)


def test_amount_ratio_compares_with_the_cards_mean_before_the_transaction() -> None:
    assert all(math.isnan(v) for v in features.amount_ratios(None, 50.0, T0).values())
    state = CardState()
    apply_transaction(state, "a", T0, 10.0, LATE)
    apply_transaction(state, "b", T0 + 1000, 30.0, LATE)
    ratios = features.amount_ratios(state, 50.0, T0 + 2000)
    assert ratios == {
        "card_amount_ratio_24h": 2.5,
        "card_amount_ratio_7d": 2.5,
        "card_amount_ratio_30d": 2.5,
    }
    # Two days on, the day-old spend has left the 24 h window but not the 7 d one.
    later = features.amount_ratios(state, 50.0, T0 + 2 * 86_400_000)
    assert math.isnan(later["card_amount_ratio_24h"])
    assert later["card_amount_ratio_7d"] == 2.5


def test_amount_cv_is_the_spread_of_the_cards_amounts_over_their_mean() -> None:
    assert all(math.isnan(v) for v in features.amount_cvs(None, T0).values())
    state = CardState()
    apply_transaction(state, "a", T0, 10.0, LATE)
    # One amount has no spread.
    assert math.isnan(features.amount_cvs(state, T0 + 1)["card_amount_cv_30d"])
    apply_transaction(state, "b", T0 + 1000, 30.0, LATE)
    # mean 20, population standard deviation 10
    assert features.amount_cvs(state, T0 + 2000) == {
        "card_amount_cv_7d": 0.5,
        "card_amount_cv_30d": 0.5,
    }
    assert math.isnan(features.amount_cvs(state, T0 + 8 * 86_400_000)["card_amount_cv_7d"])


DAY_MS = 86_400_000


def _terminal_with_history() -> features.TerminalState:
    """Day 0: 4 transactions, one fraud (labelled on day 2); day 3: 2 transactions, both fraud
    (labelled on day 5); day 9: 1 transaction."""
    state = features.TerminalState()
    apply = features.apply_terminal_transaction
    for i in range(4):
        apply(state, f"d0-{i}", T0 + i * 1000, LATE)
    apply(state, "d2", T0 + 2 * DAY_MS, LATE)
    features.apply_terminal_label(state, "d0-0", T0, True)
    for i in range(2):
        apply(state, f"d3-{i}", T0 + 3 * DAY_MS + i, LATE)
    for i in range(2):
        features.apply_terminal_label(state, f"d3-{i}", T0 + 3 * DAY_MS + i, True)
    apply(state, "d9", T0 + 9 * DAY_MS, LATE)
    return state


def test_known_frauds_are_counted_raw_and_dated() -> None:
    feats = features.terminal_features(_terminal_with_history(), T0 + 9 * DAY_MS + 5)
    assert feats["terminal_known_frauds_30d"] == 3
    assert feats["terminal_known_frauds_7d"] == 2  # day 3 only: day 0 is 9 days back
    assert feats["terminal_known_frauds_1d"] == 0
    assert feats["terminal_days_since_last_fraud"] == 6
    assert feats["terminal_days_since_first_fraud"] == 9
    empty = features.terminal_features(features.TerminalState(), T0)
    assert empty["terminal_known_frauds_30d"] == 0
    assert math.isnan(empty["terminal_days_since_last_fraud"])
    assert math.isnan(empty["terminal_days_since_first_fraud"])
    # After 30 days the frauds leave the recency window.
    gone = features.terminal_features(_terminal_with_history(), T0 + 33 * DAY_MS)
    assert math.isnan(gone["terminal_days_since_last_fraud"])


def test_delayed_windows_end_label_delay_days_before_the_read() -> None:
    state = _terminal_with_history()
    delay = features.LABEL_DELAY_DAYS
    # Read on day 9: the delayed 1 d window is day 9 - 7 = 2 (one genuine transaction).
    on_day_9 = features.terminal_features(state, T0 + 9 * DAY_MS + 5)
    assert delay == 7
    assert (on_day_9["terminal_delayed_count_1d"], on_day_9["terminal_delayed_risk_1d"]) == (1, 0)
    # The delayed 7 d window, days (9 - 14, 2]: days 0 and 2, 5 transactions, 1 fraud.
    assert on_day_9["terminal_delayed_count_7d"] == 5
    assert on_day_9["terminal_delayed_risk_7d"] == 0.2
    # Day 10: the delayed 1 d window is day 3, both of its transactions fraud.
    on_day_10 = features.terminal_features(state, T0 + 10 * DAY_MS)
    assert on_day_10["terminal_delayed_risk_1d"] == 1.0
    # Before any transaction is 7 days old, the delayed windows are empty.
    early = features.terminal_features(state, T0 + 3 * DAY_MS + 5)
    assert early["terminal_delayed_count_30d"] == 0
    assert math.isnan(early["terminal_delayed_risk_30d"])
    # 37 days on, the day-0 tile is still inside the delayed 30 d window (t - 37 d, t - 7 d].
    state_later = _terminal_with_history()
    features.apply_terminal_transaction(state_later, "d36", T0 + 36 * DAY_MS, LATE)
    late = features.terminal_features(state_later, T0 + 36 * DAY_MS + 1)
    assert late["terminal_delayed_count_30d"] == 8
    assert late["terminal_delayed_risk_30d"] == 0.375
    # A label arriving then for a day-1 transaction is still counted.
    assert features.apply_terminal_label(state_later, "day1", T0 + DAY_MS, True) is Outcome.APPLIED


def test_label_for_a_transaction_older_than_every_window_is_late() -> None:
    state = features.TerminalState()
    features.apply_terminal_transaction(state, "now", T0 + 40 * 86_400_000, LATE)
    assert features.apply_terminal_label(state, "ancient", T0, True) is Outcome.LATE
    assert state.frauds == {}


def test_feature_names_are_described_and_unique() -> None:
    assert len(set(features.FEATURE_NAMES)) == len(features.FEATURE_NAMES)
    assert set(features.FEATURE_DESCRIPTIONS) == set(features.FEATURE_NAMES)
    assert not set(features.STATE_COLUMNS) & set(features.TERMINAL_STATE_COLUMNS)

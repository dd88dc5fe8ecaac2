"""The shared feature logic: exactly-once folding, windows finished at read time."""

from __future__ import annotations

import math

from services.common import features
from services.common.features import CardState, Outcome, apply_transaction, card_features
from services.common.history import CardHistory

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
    assert len(state.tiles["d"].idx) <= features.DAY.keep + 1
    assert len(state.tiles["m"].idx) <= features.MINUTE.keep + 1
    assert len(state.recent) == 1


def test_history_rows_and_copies_keep_the_state_they_were_taken_at() -> None:
    """`apply_transaction` changes a state's arrays in place: the history (`CardHistory`)
    copies each row as it is appended, and a copy of the state is independent of it. Folding on
    (into the newest tile, a new one, an earlier one, past the retained range) must change
    neither."""
    late = 2 * 86_400_000
    state = CardState()
    offsets = [0, 1000, 61_000, 30_000, 3_600_000, 3_000_000, 2 * 86_400_000, 40 * 86_400_000]
    history = CardHistory()
    frozen, copies = [], []
    for i, offset in enumerate(offsets):
        apply_transaction(state, f"t{i}", T0 + offset, 10.0 + i, late, terminal_id=f"p{i % 3}")
        history.complete(history.append("c", T0 + offset, state), state)
        frozen.append(features.to_list_row(state))
        copies.append(state.copy())
    assert [row for _, _, row in history.rows()] == frozen
    for copy, row in zip(copies, frozen, strict=True):
        apply_transaction(copy, "more", T0 + 41 * 86_400_000, 1.0, late, terminal_id="q")
        restored = features.from_row(row)
        assert restored is not None and features.to_list_row(restored) == row
        # A state read from a row shares nothing with the row it came from.
        from_arrays = features.from_row(features.to_row(restored))
        assert from_arrays is not None
        apply_transaction(from_arrays, "again", T0 + 41 * 86_400_000, 1.0, late, terminal_id="q")
        assert features.to_list_row(restored) == row
    assert [row for _, _, row in history.rows()] == frozen
    assert features.to_list_row(state) == frozen[-1]


def test_out_of_order_events_fold_into_the_same_tiles_as_in_order() -> None:
    in_order, shuffled = CardState(), CardState()
    offsets = [i * 47_000 for i in range(120)]  # 94 minutes: some minute tiles expire
    for i, offset in enumerate(offsets):
        apply_transaction(in_order, f"t{i}", T0 + offset, float(i), 600_000)
    # Each pair swapped: every other event is up to a minute late, within the lateness.
    for i in [j ^ 1 for j in range(len(offsets))]:
        apply_transaction(shuffled, f"t{i}", T0 + offsets[i], float(i), 600_000)
    assert features.to_row(shuffled) == features.to_row(in_order)


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
    assert restored is not None
    assert (restored.term_hours, restored.term_ids) == (state.term_hours, state.term_ids)


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
    assert apply(state, T0) is Outcome.APPLIED
    assert apply(state, T0 + 1000) is Outcome.APPLIED
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
    assert features.claim_terminal_source(state, 3, 17, T0, state.last_event_ms)
    restored = features.terminal_from_row(features.terminal_to_row(state))
    assert restored is not None
    assert features.terminal_to_row(restored) == features.terminal_to_row(state)
    assert (restored.sources, restored.frauds) == ({3: 17}, {"a": T0})


def test_terminal_claims_each_source_record_once_per_partition() -> None:
    """A terminal remembers one offset per transactions-topic partition, not transaction ids:
    a record at or below the newest one claimed from its partition is a replay."""
    state = features.TerminalState()

    def claim(partition: int, offset: int) -> bool:
        # As the stream does: claim, then count (a replay's event time is then not newer).
        ms = T0 + offset * 1000
        claimed = features.claim_terminal_source(state, partition, offset, ms, state.last_event_ms)
        if claimed:
            features.apply_terminal_transaction(state, ms)
        return claimed

    assert [claim(0, offset) for offset in (5, 6, 9)] == [True, True, True]
    assert [claim(0, offset) for offset in (9, 6, 0)] == [False, False, False]
    # Partitions are independent: partition 1 starts from nothing, whatever partition 0 saw.
    assert claim(1, 2) and claim(0, 10)
    assert state.sources == {0: 10, 1: 2}
    row = features.terminal_to_row(state)
    assert (row["t_src_partition"], row["t_src_offset"]) == ([0, 1], [10, 2])
    restored = features.terminal_from_row(row)
    assert restored is not None and restored.sources == state.sources
    assert not features.claim_terminal_source(restored, 1, 2, T0 + 2000, restored.last_event_ms)


def test_a_recreated_transactions_topic_is_not_taken_for_replays() -> None:
    """Offsets restart at 0 when the topic is created again. A low offset whose transaction is
    newer than anything the terminal counted cannot be a replay (a replay was counted before):
    it is claimed, and the partition's count restarts from it."""
    state = features.TerminalState()

    def claim(offset: int, ms: int) -> bool:
        return features.claim_terminal_source(state, 0, offset, ms, state.last_event_ms)

    for offset in range(100, 110):
        ms = T0 + offset * 1000
        assert claim(offset, ms)
        features.apply_terminal_transaction(state, ms)
    newest = state.last_event_ms
    # A replay of an old record: not newer than the terminal's newest.
    assert not claim(105, T0 + 105_000)
    # The new topic's first records: offsets from 0, times after the terminal's newest.
    assert claim(0, newest + 1)
    assert state.sources == {0: 0}
    features.apply_terminal_transaction(state, newest + 1)
    assert claim(1, newest + 2)
    # ... and a replay of those is a replay again.
    assert not claim(0, newest + 1)


def test_terminal_tiles_and_frauds_expire_as_the_hours_go_by() -> None:
    """Pruning runs only when the newest hour changes; what it keeps is what pruning after
    every event kept: the retained hour and day tiles, and the frauds in retained days."""
    state = features.TerminalState()
    for minute in range(0, 60 * 24 * 60, 7):
        ms = T0 + minute * 60_000
        assert features.apply_terminal_transaction(state, ms) is Outcome.APPLIED
        if minute % 1440 < 7:  # a fraud on each day's first transaction
            features.apply_terminal_label(state, f"x{minute}", ms, True)
    last_hour = state.last_event_ms // features.HOUR.ms
    last_day = state.last_event_ms // features.TERMINAL_DAY.ms
    assert state.tiles["h"].idx[0] == last_hour - features.HOUR.keep + 1
    assert state.tiles["d"].idx[0] == last_day - features.TERMINAL_DAY.keep + 1
    assert len(state.frauds) == features.TERMINAL_DAY.keep
    assert min(state.frauds.values()) // features.TERMINAL_DAY.ms == state.tiles["d"].idx[0]


def test_terminal_counts_older_transactions_in_their_tiles_except_pruned_ones() -> None:
    """A terminal counts every transaction its card counted, in whatever order they come: one
    hours behind the newest lands in its hour and day; one more than a day behind only in its
    day (its hour tile is pruned and stays so); one before every retained day tile is LATE.
    The state equals that of counting the same transactions in time order."""
    hour_ms = features.HOUR.ms
    newest = T0 + 40 * DAY_MS
    times = [newest, newest - 5 * hour_ms, newest - 2 * DAY_MS, newest - 3 * hour_ms - 1]
    state = features.TerminalState()
    assert [features.apply_terminal_transaction(state, ms) for ms in times] == [
        Outcome.APPLIED
    ] * len(times)
    in_order = features.TerminalState()
    for ms in sorted(times):
        features.apply_terminal_transaction(in_order, ms)
    assert features.terminal_to_row(state) == features.terminal_to_row(in_order)
    assert state.last_event_ms == newest
    assert features.terminal_features(state, newest + 1)["terminal_count_1d"] == 3
    assert features.terminal_features(state, newest + 1)["terminal_count_7d"] == 4
    assert newest // hour_ms - 2 * DAY_MS // hour_ms not in state.tiles["h"].idx
    gone = newest - features.TERMINAL_DAY.keep * DAY_MS
    assert features.apply_terminal_transaction(state, gone) is Outcome.LATE
    assert features.terminal_to_row(state) == features.terminal_to_row(in_order)
    oldest_kept = (newest // DAY_MS - features.TERMINAL_DAY.keep + 1) * DAY_MS
    assert features.apply_terminal_transaction(state, oldest_kept) is Outcome.APPLIED
    assert state.tiles["d"].idx[0] == oldest_kept // DAY_MS


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
        apply(state, T0 + i * 1000)
    apply(state, T0 + 2 * DAY_MS)
    features.apply_terminal_label(state, "d0-0", T0, True)
    for i in range(2):
        apply(state, T0 + 3 * DAY_MS + i)
    for i in range(2):
        features.apply_terminal_label(state, f"d3-{i}", T0 + 3 * DAY_MS + i, True)
    apply(state, T0 + 9 * DAY_MS)
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
    features.apply_terminal_transaction(state_later, T0 + 36 * DAY_MS)
    late = features.terminal_features(state_later, T0 + 36 * DAY_MS + 1)
    assert late["terminal_delayed_count_30d"] == 8
    assert late["terminal_delayed_risk_30d"] == 0.375
    # A label arriving then for a day-1 transaction is still counted.
    assert features.apply_terminal_label(state_later, "day1", T0 + DAY_MS, True) is Outcome.APPLIED


def test_label_for_a_transaction_older_than_every_window_is_late() -> None:
    state = features.TerminalState()
    features.apply_terminal_transaction(state, T0 + 40 * 86_400_000)
    assert features.apply_terminal_label(state, "ancient", T0, True) is Outcome.LATE
    assert state.frauds == {}


def test_feature_names_are_described_and_unique() -> None:
    assert len(set(features.FEATURE_NAMES)) == len(features.FEATURE_NAMES)
    assert set(features.FEATURE_DESCRIPTIONS) == set(features.FEATURE_NAMES)
    assert not set(features.STATE_COLUMNS) & set(features.TERMINAL_STATE_COLUMNS)

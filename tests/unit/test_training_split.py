"""The handbook split: day-aligned periods, labels as known then, known compromised cards out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training import split

DAY = split.DAY_MS
D0 = 20_454 * DAY  # 2026-01-01T00:00Z


def window() -> split.SplitWindow:
    # Data from day 0 to the middle of day 25: the test period ends with day 25.
    return split.choose_window(D0 + 3_600_000, D0 + 25 * DAY + DAY // 2, 7, 7, 7, 1)


def test_latest_window_ends_with_the_last_data_day() -> None:
    w = window()
    assert w.test_end_ms == D0 + 26 * DAY
    assert w.test_start_ms == D0 + 19 * DAY
    assert w.train_end_ms == D0 + 12 * DAY
    assert w.validation_start_ms == D0 + 11 * DAY
    assert w.train_start_ms == D0 + 5 * DAY
    assert w.as_metadata()["test_start"] == "2026-01-20T00:00:00+00:00"


def test_too_little_data_is_refused_with_the_days_needed() -> None:
    with pytest.raises(split.InsufficientData, match="needs 21"):
        split.choose_window(D0 + 10 * DAY, D0 + 25 * DAY, 7, 7, 7, 1)
    with pytest.raises(ValueError, match="validation_days"):
        split.choose_window(D0, D0 + 25 * DAY, 7, 7, 7, 7)


def frame(rows: list[tuple[str, int, int, float]]) -> pd.DataFrame:
    """(card, event_ms, final label, label_reported_ms or NaN)"""
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(len(rows))],
            "card_id": [r[0] for r in rows],
            "event_ms": np.array([r[1] for r in rows], dtype=np.int64),
            "label": np.array([r[2] for r in rows], dtype=np.int64),
            "label_reported_ms": np.array([r[3] for r in rows], dtype=np.float64),
        }
    )


def test_period_boundaries_are_half_open() -> None:
    w = window()
    data = frame(
        [
            ("a", w.train_start_ms - 1, 0, np.nan),
            ("a", w.train_start_ms, 0, np.nan),
            ("a", w.train_end_ms - 1, 0, np.nan),
            ("a", w.train_end_ms, 0, np.nan),  # delay period: in neither set
            ("b", w.test_start_ms - 1, 0, np.nan),
            ("b", w.test_start_ms, 0, np.nan),
            ("b", w.test_end_ms - 1, 0, np.nan),
            ("b", w.test_end_ms, 0, np.nan),
        ]
    )
    assert list(split.train_set(data, w)["transaction_id"]) == ["t1", "t2"]
    assert list(split.eval_set(data, w)["transaction_id"]) == ["t5", "t6"]


def test_training_labels_are_those_known_when_the_test_period_starts() -> None:
    w = window()
    data = frame(
        [
            ("a", w.train_start_ms + 1, 1, float(w.train_end_ms)),
            ("b", w.train_start_ms + 2, 1, float(w.test_start_ms + 1)),  # reported too late
        ]
    )
    assert list(split.train_set(data, w)["label"]) == [1, 0]


def test_cards_known_compromised_a_delay_earlier_leave_the_test_days() -> None:
    w = window()
    data = frame(
        [
            ("known", w.train_start_ms + DAY, 1, float(w.train_end_ms)),
            ("known", w.test_start_ms + 10, 1, float(w.test_end_ms)),
            # Fraud on the delay period's first day: known from test day 1 on, not on day 0.
            ("delayed", w.train_end_ms + DAY // 2, 1, float(w.test_start_ms)),
            ("delayed", w.test_start_ms + 20, 1, float(w.test_end_ms)),
            ("delayed", w.test_start_ms + DAY + 20, 1, float(w.test_end_ms)),
            ("fresh", w.test_start_ms + DAY + 30, 1, float(w.test_end_ms)),
        ]
    )
    kept = split.eval_set(data, w)
    assert list(kept["transaction_id"]) == ["t3", "t5"]

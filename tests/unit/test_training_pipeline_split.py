"""`pipeline.split_dataset` gives exactly `split.train_set` and `split.eval_set`, while freeing
the dataset it is handed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from training import pipeline, split

DAY = split.DAY_MS
T0 = 1_767_225_600_000


def _dataset(seed: int) -> tuple[pd.DataFrame, split.SplitWindow]:
    window = split.choose_window(T0, T0 + 21 * DAY - 1, 7, 7, 7, 2)
    rng = np.random.default_rng(seed)
    n = 4_000
    events = np.sort(T0 + rng.integers(0, 21 * DAY, n))
    labels = (rng.random(n) < 0.05).astype(np.int64)
    reported = np.where(labels == 1, events + rng.integers(0, 10 * DAY, n), np.nan)
    frame = pd.DataFrame(
        {
            "transaction_id": pd.array([f"t{i:05d}" for i in range(n)], pd.ArrowDtype(pa.string())),
            "card_id": pd.array(
                [f"c{c:03d}" for c in rng.integers(0, 150, n)], pd.ArrowDtype(pa.string())
            ),
            "event_ms": events,
            "amount": rng.random(n),
            "label_reported_ms": reported,
            "label": labels,
        }
    )
    return frame, window


def test_split_dataset_equals_the_split_functions() -> None:
    frame, window = _dataset(seed=5)
    expected_train = split.train_set(frame, window)
    expected_test = split.eval_set(frame, window)
    # Cards known compromised in the training period are left out of the test days.
    assert len(expected_test) < int((frame["event_ms"] >= window.test_start_ms).sum())
    holder = [frame.copy()]
    train_rows, test_rows, in_test = pipeline.split_dataset(holder, window)
    assert holder == []
    pd.testing.assert_frame_equal(train_rows, expected_train)
    pd.testing.assert_frame_equal(test_rows, expected_test)
    assert in_test == int((frame["event_ms"] >= window.test_start_ms).sum())


def test_an_unordered_dataset_is_split_the_plain_way() -> None:
    frame, window = _dataset(seed=6)
    shuffled = frame.sample(frac=1.0, random_state=1)
    train_rows, test_rows, _ = pipeline.split_dataset([shuffled.copy()], window)
    pd.testing.assert_frame_equal(train_rows, split.train_set(shuffled, window))
    pd.testing.assert_frame_equal(test_rows, split.eval_set(shuffled, window))

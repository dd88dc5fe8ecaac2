"""The train / delay / test split of the Fraud Detection Handbook, by event time.

Training rows come from [train_start, train_end), the delay period after it is skipped (its
labels are not known yet when a model would be trained), then come the test days. Training
labels are those known when the test period starts; test labels are final. As in the
handbook's `get_train_test_set`, each test day leaves out the cards already known to be
compromised `delay` days earlier: their later frauds would be caught by investigators anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

DAY_MS = 86_400_000


class InsufficientData(ValueError):
    """The offline store does not span the configured train + delay + test days."""


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC).isoformat()


@dataclass(frozen=True)
class SplitWindow:
    """Day-aligned period boundaries, epoch ms; every interval is half-open."""

    train_start_ms: int
    validation_start_ms: int
    train_end_ms: int
    test_start_ms: int
    test_end_ms: int

    @property
    def test_days(self) -> int:
        return (self.test_end_ms - self.test_start_ms) // DAY_MS

    def as_metadata(self) -> dict[str, Any]:
        fields = (
            "train_start_ms",
            "validation_start_ms",
            "train_end_ms",
            "test_start_ms",
            "test_end_ms",
        )
        out: dict[str, Any] = {}
        for name in fields:
            ms = int(getattr(self, name))
            out[name] = ms
            out[name.removesuffix("_ms")] = iso(ms)
        return out


def choose_window(
    first_event_ms: int,
    last_event_ms: int,
    train_days: int,
    delay_days: int,
    test_days: int,
    validation_days: int,
) -> SplitWindow:
    """The latest window that fits the data: the test period ends with the last data day."""
    if train_days <= 0 or test_days <= 0 or delay_days < 0:
        raise ValueError("train_days and test_days must be positive, delay_days >= 0")
    if not 0 <= validation_days < train_days:
        raise ValueError(
            f"validation_days ({validation_days}) must be >= 0 and < train_days ({train_days})"
        )
    test_end = (last_event_ms // DAY_MS + 1) * DAY_MS
    test_start = test_end - test_days * DAY_MS
    train_end = test_start - delay_days * DAY_MS
    train_start = train_end - train_days * DAY_MS
    first_day = first_event_ms // DAY_MS * DAY_MS
    if train_start < first_day:
        have = (test_end - first_day) // DAY_MS
        need = train_days + delay_days + test_days
        raise InsufficientData(
            f"the offline store spans {have} day(s) ({iso(first_day)} .. {iso(test_end)}); "
            f"training needs {need} (train {train_days} + delay {delay_days} + test {test_days})"
        )
    return SplitWindow(
        train_start_ms=train_start,
        validation_start_ms=train_end - validation_days * DAY_MS,
        train_end_ms=train_end,
        test_start_ms=test_start,
        test_end_ms=test_end,
    )


def _between(frame: pd.DataFrame, start_ms: int, end_ms: int) -> pd.Series:
    return (frame["event_ms"] >= start_ms) & (frame["event_ms"] < end_ms)


def train_set(dataset: pd.DataFrame, window: SplitWindow) -> pd.DataFrame:
    """Rows of the training period, labelled with what was known when testing starts.

    `dataset` carries `label_reported_ms` (when the fraud label arrived, NaN if never), so
    labels can be taken as of an earlier cutoff without a second feature join.
    """
    # Boolean indexing already copies; a second .copy() doubled the peak memory at 10M rows.
    rows = dataset[_between(dataset, window.train_start_ms, window.train_end_ms)]
    known = rows["label_reported_ms"].notna() & (rows["label_reported_ms"] <= window.test_start_ms)
    with pd.option_context("mode.chained_assignment", None):
        rows["label"] = known.astype(np.int64)
    return rows


def eval_set(dataset: pd.DataFrame, window: SplitWindow) -> pd.DataFrame:
    """Test-period rows with final labels, minus cards already known to be compromised.

    Test day d drops the cards with a fraud among the transactions in
    [train_start, train_end + d days): the handbook's `known_defrauded_customers`.
    """
    frauds = dataset[dataset["label"] == 1]
    parts = []
    for day in range(window.test_days):
        day_start = window.test_start_ms + day * DAY_MS
        known_until = window.train_end_ms + day * DAY_MS
        known = frauds.loc[_between(frauds, window.train_start_ms, known_until), "card_id"]
        rows = dataset[_between(dataset, day_start, day_start + DAY_MS)]
        parts.append(rows[~rows["card_id"].isin(set(known))])
    if not parts:
        return dataset.iloc[0:0].copy()
    return pd.concat(parts)

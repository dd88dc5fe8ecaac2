"""Fraud labels: one per fraud, reported days later with a skewed, deterministic delay."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.simulator.config import DAY_MS
from services.simulator.generate import SimConfig, labels_for, simulate

CONFIG = SimConfig(n_customers=500, n_terminals=800, n_days=30, seed=3)


@pytest.fixture(scope="module")
def transactions() -> pd.DataFrame:
    return simulate(CONFIG)


def test_labels_exist_only_for_frauds_once_each(transactions: pd.DataFrame) -> None:
    labels = labels_for(transactions, seed=3)
    frauds = transactions[transactions["is_fraud"]]
    assert len(labels) == len(frauds) > 0
    assert set(labels["transaction_id"]) == set(frauds["transaction_id"])
    assert labels["transaction_id"].is_unique
    assert labels["is_fraud"].all()
    merged = labels.merge(transactions, on="transaction_id", suffixes=("", "_tx"))
    assert (merged["card_id"] == merged["card_id_tx"]).all()
    assert (merged["terminal_id"] == merged["terminal_id_tx"]).all()
    assert (merged["transaction_ms"] == merged["event_ms"]).all()


def test_labels_arrive_after_the_transaction_within_the_delay_bounds(
    transactions: pd.DataFrame,
) -> None:
    labels = labels_for(transactions, seed=3, min_delay_days=2, max_delay_days=10)
    delay_days = (labels["reported_ms"] - labels["transaction_ms"]) / DAY_MS
    assert (delay_days >= 2).all()
    assert (delay_days < 10).all()
    assert labels["reported_ms"].is_monotonic_increasing


def test_delays_are_right_skewed(transactions: pd.DataFrame) -> None:
    labels = labels_for(transactions, seed=3)
    delay_days = (labels["reported_ms"] - labels["transaction_ms"]) / DAY_MS
    assert 1 <= delay_days.min()
    assert delay_days.max() < 30
    # Most reports come in the first weeks, a thin tail towards the window's end.
    assert delay_days.median() < 15.5
    assert delay_days.mean() > delay_days.median()
    assert (delay_days < 7).mean() > 0.25


def test_delays_are_deterministic_by_seed_and_independent_of_the_frame(
    transactions: pd.DataFrame,
) -> None:
    full = labels_for(transactions, seed=3).set_index("transaction_id")
    subset = transactions.iloc[len(transactions) // 2 :]
    part = labels_for(subset, seed=3).set_index("transaction_id")
    pd.testing.assert_series_equal(
        part["reported_ms"], full.loc[part.index, "reported_ms"], check_names=False
    )
    other = labels_for(transactions, seed=4).set_index("transaction_id")
    assert not np.array_equal(
        other.loc[full.index, "reported_ms"].to_numpy(), full["reported_ms"].to_numpy()
    )


def test_no_frauds_give_an_empty_label_frame(transactions: pd.DataFrame) -> None:
    labels = labels_for(transactions[~transactions["is_fraud"]], seed=3)
    assert labels.empty
    assert list(labels.columns) == [
        "transaction_id",
        "card_id",
        "terminal_id",
        "is_fraud",
        "transaction_ms",
        "reported_ms",
    ]

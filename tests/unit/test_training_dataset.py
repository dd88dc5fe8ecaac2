"""Dataset assembly: state strictly before each transaction, labels only as known at the cutoff.

The point-in-time join is Feast's job (covered by tests/integration/test_training.py); here a
pandas `merge_asof` over the same card_state rows stands in for it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from services.common import features
from training import dataset

T0 = 1_767_225_600_000
MIN = 60_000
LATENESS = 300_000


def transactions(rows: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    """(transaction_id, card_id, event_ms, amount)"""
    return pd.DataFrame(rows, columns=["transaction_id", "card_id", "event_ms", "amount"])


def history(txs: pd.DataFrame) -> pd.DataFrame:
    """What the stream writes: the card state after each transaction, at its event time."""
    states: dict[str, features.CardState] = {}
    rows = []
    for tx in txs.sort_values("event_ms").itertuples():
        state = states.setdefault(tx.card_id, features.CardState())
        features.apply_transaction(state, tx.transaction_id, tx.event_ms, tx.amount, LATENESS)
        rows.append(
            {
                "card_id": tx.card_id,
                "event_timestamp": pd.Timestamp(tx.event_ms, unit="ms", tz="UTC"),
                **features.to_row(state),
            }
        )
    return pd.DataFrame(rows)


def point_in_time(state_rows: pd.DataFrame) -> dataset.FetchStates:
    def fetch(entities: pd.DataFrame) -> pd.DataFrame:
        joined = pd.merge_asof(
            entities.sort_values("event_timestamp"),
            state_rows.sort_values("event_timestamp"),
            on="event_timestamp",
            by="card_id",
        )
        # Like Feast may: rows without any earlier state are not returned at all.
        return joined[joined["last_event_ms"].notna()]

    return fetch


def no_labels() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": pd.Series([], dtype=object),
            "is_fraud": pd.Series([], dtype=bool),
            "reported_ms": pd.Series([], dtype=np.int64),
        }
    )


TXS = transactions(
    [
        ("t1", "c1", T0, 100.0),
        ("t2", "c1", T0 + MIN, 7.0),
        ("t3", "c1", T0 + 2 * MIN, 900.0),
        ("t4", "c2", T0 + 3 * MIN, 5.0),
    ]
)


def test_own_amount_never_reaches_its_card_aggregates() -> None:
    frame, stats = dataset.assemble(TXS, no_labels(), T0 + 10 * MIN, point_in_time(history(TXS)))
    by_id = frame.set_index("transaction_id")
    assert by_id.loc["t1", "card_count_1h"] == 0
    assert by_id.loc["t1", "card_amount_sum_1h"] == 0
    assert math.isnan(by_id.loc["t1", "card_seconds_since_last"])
    assert by_id.loc["t2", "card_count_1h"] == 1
    assert by_id.loc["t2", "card_amount_sum_1h"] == 100.0
    assert by_id.loc["t2", "card_seconds_since_last"] == 60.0
    assert by_id.loc["t3", "card_amount_sum_24h"] == 107.0
    assert by_id.loc["t3", "amount"] == 900.0
    # The first transaction of each card has no earlier state: Feast-style drops are counted
    # and the rows kept.
    assert stats.rows == 4
    assert stats.feast_dropped == 2
    assert stats.no_history == 2
    assert list(frame.columns[:3]) == ["transaction_id", "card_id", "event_ms"]
    assert list(frame.columns[3 : 3 + len(features.FEATURE_NAMES)]) == list(features.FEATURE_NAMES)


def test_labels_reported_after_the_cutoff_are_not_used() -> None:
    cutoff = T0 + 60 * MIN
    labels = pd.DataFrame(
        {
            "transaction_id": ["t1", "t2", "t3", "t3", "t4"],
            "is_fraud": [True, True, False, True, True],
            "reported_ms": [cutoff - 1, cutoff + 1, cutoff - 5, cutoff, cutoff + 2],
        }
    )
    frame, stats = dataset.assemble(TXS, labels, cutoff, point_in_time(history(TXS)))
    by_id = frame.set_index("transaction_id")
    assert by_id["label"].to_dict() == {"t1": 1, "t2": 0, "t3": 1, "t4": 0}
    # The fraud label's arrival is kept, so a split can relabel at an earlier cutoff.
    assert by_id.loc["t3", "label_reported_ms"] == cutoff
    assert stats.positives == 2


def test_window_and_repeated_transaction_ids() -> None:
    repeated = pd.concat([TXS, TXS.iloc[[1]]], ignore_index=True)
    frame, stats = dataset.assemble(
        repeated,
        no_labels(),
        T0 + 10 * MIN,
        point_in_time(history(TXS)),
        start_ms=T0 + MIN,
        end_ms=T0 + 3 * MIN,
    )
    assert list(frame["transaction_id"]) == ["t2", "t3"]
    assert stats.duplicate_transactions == 1

"""Dataset assembly: state strictly before each transaction, labels only as known at the cutoff.

The point-in-time join is Feast's job (covered by tests/integration/test_training.py); here a
pandas `merge_asof` over the same card_state and terminal_state rows stands in for it.
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


def transactions(rows: list[tuple[str, str, str, int, float]]) -> pd.DataFrame:
    """(transaction_id, card_id, terminal_id, event_ms, amount)"""
    return pd.DataFrame(
        rows, columns=["transaction_id", "card_id", "terminal_id", "event_ms", "amount"]
    )


def history(
    txs: pd.DataFrame, labels: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the stream writes: the card state after each transaction at its event time, and the
    terminal state after each transaction (at its event time) and each fraud label (at its
    reported time); at the same millisecond transactions go first."""
    cards: dict[str, features.CardState] = {}
    terminals: dict[str, features.TerminalState] = {}
    card_rows, terminal_rows = [], []
    timeline = [(tx.event_ms, 0, tx) for tx in txs.itertuples()]
    if labels is not None:
        timeline += [(lb.reported_ms, 1, lb) for lb in labels.itertuples()]
    for stamp, kind, item in sorted(timeline, key=lambda e: (e[0], e[1])):
        terminal = terminals.setdefault(item.terminal_id, features.TerminalState())
        if kind == 1:
            features.apply_terminal_label(
                terminal, item.transaction_id, item.transaction_ms, item.is_fraud
            )
        else:
            state = cards.setdefault(item.card_id, features.CardState())
            features.apply_transaction(
                state, item.transaction_id, stamp, item.amount, LATENESS, item.terminal_id
            )
            features.apply_terminal_transaction(terminal, stamp)
            card_rows.append(
                {
                    "card_id": item.card_id,
                    "event_timestamp": pd.Timestamp(stamp, unit="ms", tz="UTC"),
                    **features.to_list_row(state),
                }
            )
        terminal_rows.append(
            {
                "terminal_id": item.terminal_id,
                "event_timestamp": pd.Timestamp(stamp, unit="ms", tz="UTC"),
                **features.terminal_to_list_row(terminal),
            }
        )
    return pd.DataFrame(card_rows), pd.DataFrame(terminal_rows)


def point_in_time(rows: tuple[pd.DataFrame, pd.DataFrame]) -> dataset.FetchStates:
    card_rows, terminal_rows = rows

    def fetch(entities: pd.DataFrame) -> pd.DataFrame:
        joined = pd.merge_asof(
            entities.sort_values("event_timestamp"),
            card_rows.sort_values("event_timestamp"),
            on="event_timestamp",
            by="card_id",
        )
        joined = pd.merge_asof(
            joined.sort_values("event_timestamp"),
            terminal_rows.sort_values("event_timestamp"),
            on="event_timestamp",
            by="terminal_id",
        )
        # Like Feast may: rows without any earlier state are not returned at all.
        return joined[joined["last_event_ms"].notna() | joined["t_last_event_ms"].notna()]

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
        ("t1", "c1", "m1", T0, 100.0),
        ("t2", "c1", "m1", T0 + MIN, 7.0),
        ("t3", "c1", "m2", T0 + 2 * MIN, 900.0),
        ("t4", "c2", "m1", T0 + 3 * MIN, 5.0),
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
    assert by_id.loc["t3", "card_distinct_terminals_24h"] == 1
    assert by_id.loc["t4", "terminal_count_1d"] == 2
    # The first transaction of each card has no earlier card state, t1 and t3 none of their
    # terminal; a row with no state at all (t1) is dropped Feast-style, counted and kept.
    assert stats.rows == 4
    assert stats.feast_dropped == 1
    assert stats.no_history == 2
    assert stats.no_terminal_history == 2
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


def test_own_amount_and_own_label_never_reach_its_features() -> None:
    txs = transactions(
        [
            ("a", "c9", "m9", T0, 50.0),
            ("b", "c9", "m9", T0 + 60 * MIN, 5_000.0),
            ("c", "c8", "m9", T0 + 120 * MIN, 70.0),
            ("d", "c7", "m9", T0 + 180 * MIN, 30.0),
        ]
    )
    # Every transaction turns out fraud. a's label arrives before b; b's between c and d;
    # c's at exactly d's time (known *after* d was scored); d's after everything.
    labels = pd.DataFrame(
        {
            "transaction_id": ["a", "b", "c", "d"],
            "terminal_id": ["m9"] * 4,
            "is_fraud": [True] * 4,
            "transaction_ms": txs["event_ms"].to_list(),
            "reported_ms": [T0 + 30 * MIN, T0 + 150 * MIN, T0 + 180 * MIN, T0 + 240 * MIN],
        }
    )
    frame, _ = dataset.assemble(txs, labels, T0 + 300 * MIN, point_in_time(history(txs, labels)))
    by_id = frame.set_index("transaction_id")
    b = by_id.loc["b"]
    # b's own 5,000 is in none of its card aggregates; its z-score has no spread to use.
    assert (b["card_count_30d"], b["card_amount_sum_30d"], b["card_amount_mean_30d"]) == (
        1,
        50.0,
        50.0,
    )
    assert math.isnan(b["card_amount_zscore_30d"])
    # b sees a counted and a's label (reported before b), but not itself.
    assert (b["terminal_count_1d"], b["terminal_risk_1d"]) == (1, 1.0)
    # c: a and b counted, b's label not known yet.
    assert (by_id.loc["c", "terminal_count_1d"], by_id.loc["c", "terminal_risk_1d"]) == (2, 0.5)
    # d: b's label known; c's arrives at d's own millisecond, after d was scored.
    d = by_id.loc["d"]
    assert (d["terminal_count_1d"], d["terminal_risk_30d"]) == (3, round(2 / 3, 6))
    assert by_id["label"].to_dict() == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_a_skipped_period_keeps_only_its_known_frauds() -> None:
    cutoff = T0 + 10 * MIN
    # t2's fraud label is known at the cutoff; t3's arrives after it.
    labels = pd.DataFrame(
        {
            "transaction_id": ["t2", "t3"],
            "is_fraud": [True, True],
            "reported_ms": [cutoff - 1, cutoff + 1],
        }
    )
    fetch = point_in_time(history(TXS))
    whole, whole_stats = dataset.assemble(TXS, labels, cutoff, fetch)
    skip = (T0 + MIN, T0 + 3 * MIN)
    frame, stats = dataset.assemble_rows(
        TXS, labels, cutoff, dataset.rows_from_states(fetch), skip=skip
    )
    in_skip = (whole["event_ms"] >= skip[0]) & (whole["event_ms"] < skip[1])
    expected = whole[~in_skip | (whole["label"] == 1)].reset_index(drop=True)
    assert in_skip.sum() >= 2 and len(frame) < len(whole)
    # The known fraud of the skipped period stays (t2); the others go.
    assert list(
        expected.loc[expected["event_ms"].between(*skip, inclusive="left"), "transaction_id"]
    ) == ["t2"]
    pd.testing.assert_frame_equal(frame, expected)
    assert stats.skipped == len(whole) - len(frame) == whole_stats.rows - stats.rows

"""Champion/challenger decisions, CLI argument helpers and the offline half of the backfill."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
import pytest

from services.common import features, offline_store
from training import backfill, cli, promote

T0 = 1_767_225_600_000


def ap(value: float) -> dict[str, float]:
    return {"average_precision": value}


def test_first_model_is_promoted_without_a_champion() -> None:
    decision = promote.decide(ap(0.1), None, 0.0)
    assert decision.promote
    assert decision.reason == "no champion yet"


@pytest.mark.parametrize(
    ("challenger", "tolerance", "promoted"),
    [(0.60, 0.0, True), (0.59, 0.0, False), (0.58, 0.02, True), (0.57, 0.02, False)],
)
def test_challenger_needs_the_champion_ap_minus_tolerance(
    challenger: float, tolerance: float, promoted: bool
) -> None:
    champion = promote.ChampionScore("v1", ap(0.60))
    decision = promote.decide(ap(challenger), champion, tolerance)
    assert decision.promote is promoted
    assert "v1" in decision.reason


def test_a_champion_that_cannot_be_scored_does_not_block_a_challenger() -> None:
    champion = promote.ChampionScore("v1", None, "it was trained on other features")
    decision = promote.decide(ap(0.2), champion, 0.0)
    assert decision.promote
    assert "other features" in decision.reason


def test_metadata_stays_strict_json() -> None:
    safe = promote.json_safe({"m": {"brier": float("nan"), "ap": 0.5}, "l": [float("inf")]})
    assert json.loads(json.dumps(safe, allow_nan=False)) == {
        "m": {"brier": None, "ap": 0.5},
        "l": [None],
    }


def test_cutoff_without_offset_is_utc() -> None:
    assert cli.parse_time_ms("2026-01-01T00:00:00") == T0
    assert cli.parse_time_ms("2026-01-01T01:00:00+01:00") == T0


def test_labels_are_found_next_to_the_transactions_file(tmp_path: Path) -> None:
    transactions = tmp_path / "history.parquet"
    assert cli.sibling_labels(transactions) is None
    (tmp_path / "history.labels.parquet").touch()
    assert cli.sibling_labels(transactions) == tmp_path / "history.labels.parquet"


def test_backfill_writes_the_stream_layout_offline(tmp_path: Path) -> None:
    offline_store.init(tmp_path)
    txs = pd.DataFrame(
        {
            "transaction_id": ["a", "b", "a", "c"],
            "card_id": ["c1", "c1", "c1", "c2"],
            "terminal_id": ["t1", "t1", "t1", "t2"],
            "amount_minor": [1999, 500, 1999, 1200],
            "currency": ["EUR", "EUR", "EUR", "JPY"],
            # Out of order on input: the replay sorts by event time; "a" comes twice.
            "event_ms": [T0 + 60_000, T0, T0 + 61_000, T0 + 5],
        }
    )
    labels = pd.DataFrame(
        {
            "transaction_id": ["a"],
            "card_id": ["c1"],
            "terminal_id": ["t1"],
            "is_fraud": [True],
            "transaction_ms": [T0 + 60_000],
            "reported_ms": [T0 + 86_400_000],
        }
    )
    stats = backfill.backfill(tmp_path, txs, labels, online=False)
    assert (stats.applied, stats.duplicates, stats.cards, stats.online_cards) == (3, 1, 2, 0)

    logged = offline_store.read(
        tmp_path / offline_store.TRANSACTIONS_DIR, offline_store.TRANSACTIONS_SCHEMA
    ).to_pandas()
    # Parts come from one replay worker per card group: time order holds within each part.
    logged = logged.sort_values("event_timestamp", kind="stable")
    assert list(logged["transaction_id"]) == ["b", "c", "a"]
    assert list(logged["amount"]) == [5.0, 1200.0, 19.99]

    states = offline_store.read(
        tmp_path / offline_store.CARD_STATE_DIR, offline_store.CARD_STATE_SCHEMA
    )
    c1_rows = [row for row in states.to_pylist() if row["card_id"] == "c1"]
    last = max(c1_rows, key=lambda row: row["last_event_ms"])
    state = features.from_row(last)
    assert state is not None
    assert last["card_id"] == "c1"
    assert features.card_features(state, T0 + 120_000)["card_amount_sum_1h"] == 24.99

    label_log = offline_store.read(tmp_path / offline_store.LABELS_DIR, offline_store.LABELS_SCHEMA)
    reported = pc.cast(label_log["reported_at"], "int64").to_pylist()
    assert reported == [(T0 + 86_400_000) * 1000]

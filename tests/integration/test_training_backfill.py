"""The backfill writes the same offline rows whatever the number of worker processes and
wherever its part files are cut (same-millisecond stamps included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from services.common import offline_store
from training import backfill

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000
MIN = 60_000


def _world(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    # Coarse event times: many events share a millisecond, across cards and on one card.
    events = T0 + rng.integers(0, 3 * 24 * 60, n) * MIN
    txs = pd.DataFrame(
        {
            "transaction_id": [f"bf-{i:06d}" for i in range(n)],
            "card_id": [f"card-{c:03d}" for c in rng.integers(0, 60, n)],
            "terminal_id": [f"term-{t:03d}" for t in rng.integers(0, 25, n)],
            "amount_minor": rng.integers(1, 50_000, n),
            "currency": rng.choice(["EUR", "JPY", "KWD"], n),
            "event_ms": events,
        }
    )
    # A redelivered transaction (a duplicate) and a transaction without a terminal.
    resent = txs.iloc[[5]].assign(event_ms=txs.iloc[5]["event_ms"] + 1_000)
    no_terminal = txs.iloc[[7]].assign(transaction_id="bf-noterm", terminal_id="")
    txs = pd.concat([txs, resent, no_terminal], ignore_index=True)
    frauds = txs.iloc[:n:7]
    labels = pd.DataFrame(
        {
            "transaction_id": frauds["transaction_id"].to_numpy(),
            "card_id": frauds["card_id"].to_numpy(),
            "terminal_id": frauds["terminal_id"].to_numpy(),
            "is_fraud": rng.random(len(frauds)) < 0.8,
            "transaction_ms": frauds["event_ms"].to_numpy(),
            # Reported on the minute too: labels and transactions share milliseconds.
            "reported_ms": frauds["event_ms"].to_numpy() + rng.integers(0, 2 * 24 * 60) * MIN,
        }
    )
    # A repeated label.
    labels = pd.concat([labels, labels.iloc[[0]]], ignore_index=True)
    return txs, labels


def _offline(repo_dir: Path) -> dict[str, pa.Table]:
    """Every offline dataset, its rows in a fixed order (part files do not matter)."""
    out = {}
    for rel, schema in offline_store.DATASETS.items():
        table = offline_store.read(repo_dir / rel, schema)
        keys = [schema.names[0], "event_timestamp"]
        if rel == offline_store.LABELS_DIR:
            keys = ["transaction_id", "reported_at"]
        out[str(rel)] = table.sort_by([(k, "ascending") for k in keys])
    return out


def _run(
    tmp_path: Path, name: str, workers: int, txs: pd.DataFrame, labels: pd.DataFrame
) -> tuple[dict[str, pa.Table], backfill.BackfillStats]:
    repo_dir = tmp_path / name
    offline_store.init(repo_dir)
    stats = backfill.backfill(repo_dir, txs, labels, online=False, workers=workers)
    return _offline(repo_dir), stats


def test_parallel_backfill_writes_what_a_serial_one_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    txs, labels = _world(3_000, seed=3)
    whole, whole_stats = _run(tmp_path, "whole", 1, txs, labels)
    # Small parts: many cuts, some of them inside runs of same-millisecond events.
    monkeypatch.setattr(backfill, "PART_ROWS", 97)
    serial, serial_stats = _run(tmp_path, "serial", 1, txs, labels)
    parallel, parallel_stats = _run(tmp_path, "parallel", 3, txs, labels)

    assert serial_stats.parts > whole_stats.parts
    assert parallel_stats.duplicates == 1
    for stats in (serial_stats, parallel_stats):
        assert {**stats.as_dict(), "parts": 0} == {**whole_stats.as_dict(), "parts": 0}
    for rel, table in whole.items():
        assert table.num_rows > 0, rel
        assert serial[rel].equals(table), rel
        assert parallel[rel].equals(table), rel
    # Same-millisecond states of one card are told apart by their stamps.
    cards = whole[str(offline_store.CARD_STATE_DIR)]
    stamps = pd.DataFrame(
        {
            "card": cards["card_id"].to_numpy(zero_copy_only=False),
            "ts": cards["event_timestamp"].cast(pa.int64()).to_numpy(),
        }
    )
    assert not stamps.duplicated().any()
    assert (stamps["ts"] % 1000 > 0).any()


def test_amounts_are_to_major_bit_for_bit() -> None:
    from services.common import currency

    minor = np.array([1, 1999, 7, 123_456_789, 0, 5], dtype=np.int64)
    codes = np.array(["EUR", "EUR", "KWD", "JPY", "CLP", "TND"], dtype=object)
    got = backfill._amounts(minor, codes)
    expected = [currency.to_major(int(m), str(c)) for m, c in zip(minor, codes, strict=True)]
    assert got.tolist() == expected
    with pytest.raises(currency.UnknownCurrency):
        backfill._amounts(minor[:1], np.array(["XXX"], dtype=object))

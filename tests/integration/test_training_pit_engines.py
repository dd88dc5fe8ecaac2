"""The fast point-in-time engine returns exactly what Feast's get_historical_features returns,
for card state and for terminal state (with fraud labels arriving days after transactions)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.common import feast_repo, features
from services.common.settings import FeastSettings, RedisSettings
from training import backfill, dataset

T0 = 1_767_225_600_000


def _labels(txns: pd.DataFrame, seed: int) -> pd.DataFrame:
    """A fraud label for every 20th transaction, reported 1 to 5 days later."""
    rng = np.random.default_rng(seed)
    frauds = txns.iloc[::20]
    return pd.DataFrame(
        {
            "transaction_id": frauds["transaction_id"].to_numpy(),
            "card_id": frauds["card_id"].to_numpy(),
            "terminal_id": frauds["terminal_id"].to_numpy(),
            "is_fraud": True,
            "transaction_ms": frauds["event_ms"].to_numpy(),
            "reported_ms": frauds["event_ms"].to_numpy()
            + rng.integers(86_400_000, 5 * 86_400_000, len(frauds)),
        }
    )


def _transactions(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cards = rng.integers(0, 40, n)
    events = np.sort(T0 + rng.integers(0, 10 * 86_400_000, n))
    return pd.DataFrame(
        {
            "transaction_id": [f"pit-{i:06d}" for i in range(n)],
            "card_id": [f"card-{c:03d}" for c in cards],
            "terminal_id": [f"term-{t:03d}" for t in rng.integers(0, 30, n)],
            "amount_minor": rng.integers(100, 30_000, n),
            "currency": "EUR",
            "event_ms": events,
        }
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_settings: RedisSettings) -> Path:
    settings = FeastSettings(
        work_dir=tmp_path_factory.mktemp("pit_repo"), project=f"pit_{uuid.uuid4().hex[:10]}"
    )
    repo_dir = feast_repo.prepare_and_apply(settings, redis_settings)
    txns = _transactions(1_500, seed=11)
    # Two transactions at the same millisecond on one card, and one card seen only once.
    txns.loc[10, ["card_id", "event_ms"]] = [txns.loc[9, "card_id"], txns.loc[9, "event_ms"]]
    txns.loc[20, "card_id"] = "card-lonely"
    # A terminal seen once, so some rows have card state but no terminal state.
    txns.loc[30, "terminal_id"] = "term-lonely"
    txns = txns.sort_values("event_ms")
    backfill.backfill(repo_dir, txns, _labels(txns, seed=12), online=False)
    return repo_dir


def test_asof_engine_matches_feast_for_every_transaction(repo: Path) -> None:
    txns = dataset.read_transactions(repo)
    entities = dataset.entity_rows(txns)
    by_feast = dataset.feast_fetch(repo)(entities).set_index("transaction_id")
    by_asof = dataset.asof_fetch(repo)(entities).set_index("transaction_id")

    assert set(by_asof.index) == set(by_feast.index)
    assert len(by_asof) < len(entities), "first transactions of a card have no state before them"
    mismatches = []
    terminal_only = card_only = 0
    for tid in by_feast.index:
        fa, fb = by_feast.loc[tid].to_dict(), by_asof.loc[tid].to_dict()
        ca, cb = features.from_row(fa), features.from_row(fb)
        ta, tb = features.terminal_from_row(fa), features.terminal_from_row(fb)
        terminal_only += ca is None
        card_only += ta is None
        same_card = (ca is None and cb is None) or (
            ca is not None and cb is not None and features.to_row(ca) == features.to_row(cb)
        )
        same_terminal = (ta is None and tb is None) or (
            ta is not None
            and tb is not None
            and features.terminal_to_row(ta) == features.terminal_to_row(tb)
        )
        if not (same_card and same_terminal):
            mismatches.append(tid)
    assert mismatches == []
    assert terminal_only > 0 and card_only > 0, "both one-sided cases are covered"


def test_datasets_from_both_engines_are_identical(repo: Path) -> None:
    cutoff = T0 + 11 * 86_400_000
    fast, fast_stats = dataset.build_dataset(repo, cutoff, engine="asof")
    slow, slow_stats = dataset.build_dataset(repo, cutoff, engine="feast")
    pd.testing.assert_frame_equal(fast.reset_index(drop=True), slow.reset_index(drop=True))
    assert fast_stats == slow_stats
    assert fast_stats.positives > 0
    assert fast["terminal_risk_30d"].max() > 0, "labels reach terminal risk"

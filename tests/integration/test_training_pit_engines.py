"""The fast point-in-time engine returns exactly what Feast's get_historical_features returns."""

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
    backfill.backfill(repo_dir, txns.sort_values("event_ms"), None, online=False)
    return repo_dir


def test_asof_engine_matches_feast_for_every_transaction(repo: Path) -> None:
    txns = dataset.read_transactions(repo)
    entities = dataset.entity_rows(txns)
    by_feast = dataset.feast_fetch(repo)(entities).set_index("transaction_id")
    by_asof = dataset.asof_fetch(repo)(entities).set_index("transaction_id")

    assert set(by_asof.index) == set(by_feast.index)
    assert len(by_asof) < len(entities), "first transactions of a card have no state before them"
    mismatches = []
    for tid in by_feast.index:
        fa = features.from_row(by_feast.loc[tid].to_dict())
        fb = features.from_row(by_asof.loc[tid].to_dict())
        assert fa is not None and fb is not None
        if features.to_row(fa) != features.to_row(fb):
            mismatches.append(tid)
    assert mismatches == []


def test_datasets_from_both_engines_are_identical(repo: Path) -> None:
    cutoff = T0 + 11 * 86_400_000
    fast, fast_stats = dataset.build_dataset(repo, cutoff, engine="asof")
    slow, slow_stats = dataset.build_dataset(repo, cutoff, engine="feast")
    pd.testing.assert_frame_equal(fast.reset_index(drop=True), slow.reset_index(drop=True))
    assert fast_stats == slow_stats

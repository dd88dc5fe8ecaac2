"""The Dask path on a local cluster (2 worker processes): the dataset built over the part files
of the offline store has exactly the local path's rows and stats, a run with
TRAINING_ENGINE=dask builds, splits and fits in partitions with the local path's split and row
counts, early-stops through LightGBM's Dask interface, registers the model, and it scores
sensibly; a validation curve that peaks early keeps only the trees up to the peak."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from services.common import features, offline_store
from services.common.model_registry import ModelRegistry
from services.common.settings import FeastSettings, RedisSettings, TrainingSettings
from services.simulator.config import SimConfig
from services.simulator.generate import labels_for, simulate
from training import backfill, dask_train, dataset, pipeline, split, train

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class World:
    feast: FeastSettings
    repo_dir: Path
    cutoff_ms: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_settings: RedisSettings) -> World:
    feast = FeastSettings(
        work_dir=tmp_path_factory.mktemp("dask_repo"), project=f"dask_{uuid.uuid4().hex[:10]}"
    )
    repo_dir = pipeline.ensure_repo(feast, redis_settings)
    frame = simulate(SimConfig(n_customers=1000, n_terminals=2000, n_days=22, radius=11.0, seed=3))
    labels = labels_for(frame, seed=3)
    # Small parts, so the transaction log has several files and the dataset several partitions.
    original = backfill.PART_ROWS
    backfill.PART_ROWS = 10_000
    try:
        backfill.backfill(repo_dir, frame, labels, online=False)
    finally:
        backfill.PART_ROWS = original
    # A part of the transaction log written twice (a re-run backfill): its ids are duplicates
    # that both paths must keep once and count.
    folder = repo_dir / offline_store.TRANSACTIONS_DIR
    parts = sorted(folder.glob("part-*.parquet"))
    shutil.copy(parts[len(parts) // 2], folder / "part-9999999999999999999-copy.parquet")
    return World(feast, repo_dir, int(frame["event_ms"].max()) + 1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as local:
        yield local


def test_dataset_partitions_hold_exactly_the_local_rows(
    world: World, cluster: LocalCluster
) -> None:
    start = world.cutoff_ms - 15 * 86_400_000
    local, stats = dataset.build_dataset(world.repo_dir, world.cutoff_ms, start_ms=start)
    parts = dask_train.dataset_partitions(world.repo_dir, world.cutoff_ms, start_ms=start)
    files = list((world.repo_dir / offline_store.TRANSACTIONS_DIR).glob("part-*.parquet"))
    assert parts.npartitions > 2 and len(files) > 2
    with Client(cluster):
        distributed = parts.compute()
    key = ["transaction_id"]
    pd.testing.assert_frame_equal(
        distributed.sort_values(key).reset_index(drop=True),
        local.sort_values(key).reset_index(drop=True),
    )
    assert stats.rows == len(distributed) > 10_000
    assert stats.positives > 0


def test_partition_stats_are_the_local_datasets(world: World, cluster: LocalCluster) -> None:
    window = _window(world)
    skip = (window.train_end_ms, window.test_start_ms)
    _, local = dataset.build_dataset(
        world.repo_dir, world.cutoff_ms, start_ms=window.train_start_ms, skip=skip
    )
    partitions = dask_train.build_partitions(
        world.repo_dir, world.cutoff_ms, start_ms=window.train_start_ms, skip=skip
    )
    with Client(cluster) as client:
        parts = dask_train.split_partitions(client, partitions, window)
    assert parts.stats == local
    # Real numbers, not placeholders: the world has all of these.
    assert local.duplicate_transactions > 1000
    assert local.no_history > 0 and local.no_terminal_history > 0 and local.feast_dropped > 0
    assert local.skipped > 1000


def _window(world: World) -> split.SplitWindow:
    events = dataset.read_event_ms(world.repo_dir)
    defaults = TrainingSettings()
    return split.choose_window(
        int(events.min()),
        int(events.max()),
        defaults.train_days,
        defaults.delay_days,
        defaults.test_days,
        defaults.validation_days,
    )


def test_a_dask_run_splits_like_the_local_run_and_early_stops(
    world: World, cluster: LocalCluster, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    base = TrainingSettings(
        num_boost_round=60,
        # A tiny world split over two workers: the default leaf size is for a real week's data.
        min_data_in_leaf=20,
        early_stopping_rounds=10,
    )
    local_settings = base.model_copy(update={"model_dir": tmp_path / "local"})
    local = pipeline.run_training(
        world.feast, redis_settings, local_settings, cutoff_ms=world.cutoff_ms
    )
    settings = base.model_copy(
        update={
            "model_dir": tmp_path / "models",
            "engine": "dask",
            "dask_scheduler": cluster.scheduler_address,
        }
    )
    result = pipeline.run_training(world.feast, redis_settings, settings, cutoff_ms=world.cutoff_ms)
    assert result.promoted, result.reason
    assert result.metadata["hyperparameters"]["engine"] == "dask"
    # The same split: the same rows trained on and tested on, the same exclusions and stats.
    assert result.metadata["rows"] == local.metadata["rows"]
    assert result.metadata["rows"]["test_excluded_known_compromised"] > 0
    assert result.window == local.window
    best = result.metadata["best_iteration"]
    assert 1 <= best <= 60
    assert result.metadata["early_stopped"] == (best + 10 <= 60)
    assert 0 < result.metadata["hyperparameters"]["validation_average_precision"] <= 1
    assert result.metrics["auc_roc"] > 0.7
    registry = ModelRegistry(settings.model_dir)
    champion = registry.champion()
    assert champion is not None and champion.version == result.version
    assert champion.metadata["rows"]["train"] == local.metadata["rows"]["train"]


def _drifting_rows(seed: int) -> pd.DataFrame:
    """Fraud is feature 0 above a cut; on the training days (not the validation days) many
    rows with a high feature 1 carry the wrong label. The first trees learn the cut, later
    ones the training days' quirk: the validation AP peaks within a few rounds, then falls."""
    rng = np.random.default_rng(seed)
    n_fit, n_valid = 8000, 4000
    n = n_fit + n_valid
    x = rng.normal(size=(n, len(features.FEATURE_NAMES)))
    label = (x[:, 0] > 1.3).astype(np.int64)
    quirk = (x[:, 1] > 0.8) & (rng.random(n) < 0.4) & (np.arange(n) < n_fit)
    label[quirk] = 1 - label[quirk]
    frame = pd.DataFrame(x, columns=list(features.FEATURE_NAMES))
    frame["label"] = label
    frame["event_ms"] = np.where(np.arange(n) < n_fit, 0, 1_000)
    return frame


def test_early_stopping_on_dask_keeps_only_the_trees_up_to_the_validation_peak(
    cluster: LocalCluster,
) -> None:
    rows = _drifting_rows(seed=1)
    settings = TrainingSettings(
        num_boost_round=120,
        early_stopping_rounds=15,
        learning_rate=0.3,
        num_leaves=15,
        min_data_in_leaf=20,
    )
    valid = rows[rows["event_ms"] >= 1_000]
    with Client(cluster) as client:
        parts = dd.from_pandas(rows, npartitions=4)
        trained = dask_train.train_partitions(client, parts, settings, validation_start_ms=1_000)
        # What early stopping looked at: all rounds fitted on the days before validation.
        probe = dask_train.train_partitions(
            client, parts[parts["event_ms"] < 1_000], settings, validation_start_ms=None
        )
    best = trained.best_iteration
    assert trained.early_stopped
    assert 1 <= best < settings.num_boost_round - settings.early_stopping_rounds
    # The final model holds the chosen trees and no more, so its predictions use only them.
    assert trained.booster.current_iteration() == best
    assert trained.booster.num_trees() == best
    curve = dask_train.validation_curve(
        probe.booster, train.matrix(valid), valid["label"].to_numpy(np.int64)
    )
    assert len(curve) == settings.num_boost_round
    # Data-parallel trees depend on which worker got which partition, so a second fit is not
    # the probe's tree for tree; but its curve too peaks within the first rounds and falls,
    # and the chosen round's validation AP beats keeping all the rounds.
    assert max(curve[:10]) == max(curve) > curve[-1] + 0.01
    assert best <= 10
    assert trained.params["validation_average_precision"] > curve[-1] + 0.01

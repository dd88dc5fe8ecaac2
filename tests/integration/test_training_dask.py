"""The Dask path on a local cluster (2 worker processes): the dataset built over the part files
of the offline store has exactly the local path's rows, and a run with TRAINING_ENGINE=dask
trains through LightGBM's Dask interface, registers the model, and it scores sensibly."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from distributed import Client, LocalCluster

from services.common import offline_store
from services.common.model_registry import ModelRegistry
from services.common.settings import FeastSettings, RedisSettings, TrainingSettings
from services.simulator.config import SimConfig
from services.simulator.generate import labels_for, simulate
from training import backfill, dask_train, dataset, pipeline

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


def test_a_dask_run_trains_registers_and_scores_well(
    world: World, cluster: LocalCluster, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    settings = TrainingSettings(
        model_dir=tmp_path / "models",
        engine="dask",
        dask_scheduler=cluster.scheduler_address,
        num_boost_round=60,
        # A tiny world split over two workers: the default leaf size is for a real week's data.
        min_data_in_leaf=20,
    )
    result = pipeline.run_training(world.feast, redis_settings, settings, cutoff_ms=world.cutoff_ms)
    assert result.promoted, result.reason
    assert result.metadata["hyperparameters"]["engine"] == "dask"
    assert result.metadata["best_iteration"] == 60
    assert result.metrics["auc_roc"] > 0.7
    registry = ModelRegistry(settings.model_dir)
    champion = registry.champion()
    assert champion is not None and champion.version == result.version

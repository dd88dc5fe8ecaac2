"""Training on a Dask cluster, for data that outgrows one machine (TRAINING_ENGINE=dask).

* `dataset_partitions`: the dataset as a dask DataFrame built on the workers: the transaction
  log is read one part file per partition (`dask.dataframe.read_parquet`), and each partition
  is joined to the card and terminal state and finished by the same code as the local path
  (`dataset.assemble_rows` with `dataset.asof_rows`), so a row is the same wherever it is built.
  The workers read the offline store themselves: it must be on storage they all see.
* `train_model`: LightGBM's own Dask estimator (`lightgbm.dask.DaskLGBMClassifier`, data-parallel
  trees over the workers' partitions) with the local path's parameters. LightGBM's Dask
  interface does not do early stopping, so it runs `num_boost_round` rounds.

The scheduler is `TRAINING_DASK_SCHEDULER`; unset, a LocalCluster of this machine's cores.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from services.common import features, offline_store
from services.common.settings import TrainingSettings
from training import dataset, train
from training.train import TrainedModel, TrainingError

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client

log = logging.getLogger(__name__)

#: Columns of a dataset partition (what `dataset.build_dataset` returns).
COLUMNS: tuple[str, ...] = (
    *dataset.ID_COLUMNS,
    *features.FEATURE_NAMES,
    "label_reported_ms",
    "label",
)


@contextmanager
def connect(settings: TrainingSettings) -> Iterator[Client]:
    """A client of the configured scheduler, or of a LocalCluster when none is set."""
    from distributed import Client, LocalCluster

    if settings.dask_scheduler:
        with Client(settings.dask_scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=max(1, len(os.sched_getaffinity(0))),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _meta() -> pd.DataFrame:
    columns: dict[str, Any] = {
        **{name: pd.Series(dtype=dtype) for name, dtype in dataset.ID_DTYPES.items()},
        "event_ms": pd.Series(dtype=np.int64),
    }
    for name in features.FEATURE_NAMES:
        columns[name] = pd.Series(dtype=np.float64)
    columns["label_reported_ms"] = pd.Series(dtype=np.float64)
    columns["label"] = pd.Series(dtype=np.int64)
    return pd.DataFrame(columns)


def _partition_rows(
    transactions: pd.DataFrame,
    repo_dir: str,
    labels: pd.DataFrame,
    cutoff_ms: int,
    start_ms: int | None,
    end_ms: int | None,
) -> pd.DataFrame:
    frame, _ = dataset.assemble_rows(
        transactions.reset_index(drop=True),
        labels,
        cutoff_ms,
        dataset.asof_rows(Path(repo_dir)),
        start_ms=start_ms,
        end_ms=end_ms,
    )
    return frame[list(COLUMNS)]


def dataset_partitions(
    repo_dir: Path, cutoff_ms: int, start_ms: int | None = None, end_ms: int | None = None
) -> dd.DataFrame:
    """The rows of `dataset.build_dataset(repo_dir, cutoff_ms, start_ms, end_ms)` as a dask
    DataFrame: the transaction log is read one part file per partition, then shuffled by id so
    a transaction id repeated across part files (a re-run backfill) is kept once, as the local
    path keeps it; each partition's rows are then joined and finished on its worker.
    """
    import dask.dataframe as dd

    if end_ms is None:
        end_ms = cutoff_ms + 1
    folder = repo_dir / offline_store.TRANSACTIONS_DIR
    files = [str(p) for p in sorted(folder.glob("part-*.parquet"))]
    transactions = dd.read_parquet(
        files, columns=["transaction_id", "card_id", "terminal_id", "amount", "event_ms"]
    )
    unique = transactions.drop_duplicates(
        subset="transaction_id", split_out=transactions.npartitions
    )
    # Labels are few (frauds only): every partition gets all of them.
    labels = dataset.read_labels(repo_dir)
    return unique.map_partitions(
        _partition_rows,
        str(repo_dir),
        labels,
        cutoff_ms,
        start_ms,
        end_ms,
        meta=_meta(),
        align_dataframes=False,
    )


def _both_classes(labels: np.ndarray) -> bool:
    return bool(labels.size) and 0 < int(labels.sum()) < labels.size


def train_model(
    client: Client, rows: dd.DataFrame | pd.DataFrame, settings: TrainingSettings
) -> TrainedModel:
    """Fit on the workers; `rows` has FEATURE_NAMES and label (a pandas frame is split into
    one partition per worker first)."""
    import dask.dataframe as dd
    from lightgbm.dask import DaskLGBMClassifier

    workers = max(1, len(client.scheduler_info()["workers"]))
    if isinstance(rows, pd.DataFrame):
        rows = dd.from_pandas(rows[[*features.FEATURE_NAMES, "label"]], npartitions=workers)
    counts = rows["label"].value_counts().compute()
    positives = int(counts.get(1, 0))
    total = int(counts.sum())
    if positives == 0:
        raise TrainingError("no fraud labels in the training period: nothing to learn from")
    if positives == total:
        raise TrainingError("only fraud labels in the training period")
    weight = settings.scale_pos_weight
    if weight is None:
        weight = math.sqrt((total - positives) / positives)
    params = train.lgb_params(settings, weight)
    # Each worker's LightGBM uses the worker's own threads.
    params.pop("num_threads", None)
    model = DaskLGBMClassifier(client=client, n_estimators=settings.num_boost_round, **params)
    x = rows[list(features.FEATURE_NAMES)].to_dask_array(lengths=True)
    y = rows["label"].to_dask_array(lengths=True)
    log.info(
        "dask: training on %s rows (%s frauds) over %s workers, %s rounds",
        total,
        positives,
        workers,
        settings.num_boost_round,
    )
    model.fit(x, y, feature_name=list(features.FEATURE_NAMES))
    booster = model.booster_
    return TrainedModel(
        booster=booster,
        best_iteration=int(booster.current_iteration()),
        params={**params, "engine": "dask", "workers": workers},
        early_stopped=False,
    )


def fit(
    train_rows: pd.DataFrame, settings: TrainingSettings, validation_start_ms: int
) -> TrainedModel:
    """`train.train_model`'s signature on the configured cluster (the pipeline's hook)."""
    del validation_start_ms  # no early stopping on LightGBM's Dask interface
    with connect(settings) as client:
        return train_model(client, train_rows, settings)

"""Training on a Dask cluster, for data that outgrows one machine (TRAINING_ENGINE=dask).

* `dataset_partitions` / `build_partitions`: the dataset as a dask DataFrame built on the
  workers: the transaction log is read one part file per partition (`dask.dataframe.read_parquet`),
  and each partition is joined to the card and terminal state and finished by the same code as
  the local path (`dataset.assemble_rows` with `dataset.asof_rows`), so a row is the same
  wherever it is built; each partition also reports its `DatasetStats`, summed into the run's.
  The workers read the offline store themselves: it must be on storage they all see.
* `split_partitions`: the handbook split of `pipeline.split_dataset` on the cluster: training
  rows stay partitions; only the test period's rows (and the frauds that tell which cards were
  already known compromised) are brought here, for evaluation.
* `train_partitions`: LightGBM's own Dask estimator (`lightgbm.dask.DaskLGBMClassifier`,
  data-parallel trees over the workers' partitions) with the local path's parameters and its
  early stopping, done outside LightGBM (its Dask interface has none, LightGBM issues #3712 and
  #4189): a probe fit of `num_boost_round` rounds on the training period before the validation
  days, the validation days' average precision after every round, the local path's patience
  rule over that curve (`early_stopping_round`), then the refit on the whole training period
  with the chosen rounds, as `train.train_model` does.

The scheduler is `TRAINING_DASK_SCHEDULER`; unset, a LocalCluster of this machine's cores.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sklearn import metrics as skm

from services.common import features, offline_store
from services.common.settings import TrainingSettings
from training import dataset, split, train
from training.dataset import DatasetStats
from training.train import TrainedModel, TrainingError

if TYPE_CHECKING:
    import dask.dataframe as dd
    import lightgbm as lgb
    from distributed import Client

log = logging.getLogger(__name__)

#: Columns of a dataset partition (what `dataset.build_dataset` returns).
COLUMNS: tuple[str, ...] = (
    *dataset.ID_COLUMNS,
    *features.FEATURE_NAMES,
    "label_reported_ms",
    "label",
)

#: Training rows brought to the client for the drift reference (`reference.build_reference`):
#: its quantile bins need a sample, not the whole training period.
REFERENCE_SAMPLE_ROWS = 200_000


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
    skip: tuple[int, int] | None,
) -> tuple[pd.DataFrame, DatasetStats, int]:
    """One partition's rows, its stats and how many (deduplicated) transactions it read."""
    frame, stats = dataset.assemble_rows(
        transactions.reset_index(drop=True),
        labels,
        cutoff_ms,
        dataset.asof_rows(Path(repo_dir)),
        start_ms=start_ms,
        end_ms=end_ms,
        skip=skip,
    )
    return frame[list(COLUMNS)], stats, len(transactions)


@dataclass(frozen=True)
class Partitions:
    """The dataset on the cluster, not yet computed: each partition's rows and its report."""

    #: Per partition: its rows (a pandas frame of COLUMNS), as dask Delayed.
    parts: list[Any]
    #: Per partition: (DatasetStats, deduplicated transactions read), as dask Delayed.
    reports: list[Any]
    #: Transactions in the log's part files, repeated ids included.
    logged: int
    cutoff_ms: int
    start_ms: int | None
    end_ms: int | None

    @property
    def frame(self) -> dd.DataFrame:
        return _frame(self.parts)


def _frame(parts: Sequence[Any]) -> dd.DataFrame:
    import dask.dataframe as dd

    return dd.from_delayed(list(parts), meta=_meta(), verify_meta=False)


def build_partitions(
    repo_dir: Path,
    cutoff_ms: int,
    start_ms: int | None = None,
    end_ms: int | None = None,
    skip: tuple[int, int] | None = None,
) -> Partitions:
    """The rows of `dataset.build_dataset(repo_dir, cutoff_ms, start_ms, end_ms, skip=skip)`
    as a dask DataFrame: the transaction log is read one part file per partition, then
    shuffled by id so a transaction id repeated across part files (a re-run backfill) is kept
    once, as the local path keeps it; each partition's rows are then joined and finished on
    its worker, which also reports the partition's `DatasetStats` (see `partition_stats`).
    """
    import dask
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
    # Labels are few (frauds only): every partition gets all of them, sent once.
    labels = dask.delayed(dataset.read_labels(repo_dir), pure=True)
    built = [
        dask.delayed(_partition_rows, nout=3, pure=True)(
            part, str(repo_dir), labels, cutoff_ms, start_ms, end_ms, skip
        )
        for part in unique.to_delayed()
    ]
    # Footers only: the count of logged rows, duplicates included, without reading the rows.
    logged = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return Partitions(
        parts=[b[0] for b in built],
        reports=[dask.delayed(tuple)([b[1], b[2]]) for b in built],
        logged=logged,
        cutoff_ms=cutoff_ms,
        start_ms=start_ms,
        end_ms=end_ms,
    )


def dataset_partitions(
    repo_dir: Path, cutoff_ms: int, start_ms: int | None = None, end_ms: int | None = None
) -> dd.DataFrame:
    """`build_partitions`' dask DataFrame alone."""
    return build_partitions(repo_dir, cutoff_ms, start_ms, end_ms).frame


def partition_stats(
    partitions: Partitions, reports: Sequence[tuple[DatasetStats, int]]
) -> DatasetStats:
    """The whole dataset's `DatasetStats` from the computed per-partition reports: the local
    path's numbers (duplicates are the logged rows the shuffle dropped)."""
    stats = [r[0] for r in reports]
    return DatasetStats(
        rows=sum(s.rows for s in stats),
        positives=sum(s.positives for s in stats),
        feast_dropped=sum(s.feast_dropped for s in stats),
        no_history=sum(s.no_history for s in stats),
        no_terminal_history=sum(s.no_terminal_history for s in stats),
        duplicate_transactions=partitions.logged - sum(r[1] for r in reports),
        cutoff_ms=partitions.cutoff_ms,
        start_ms=partitions.start_ms,
        end_ms=partitions.end_ms,
        skipped=sum(s.skipped for s in stats),
    )


@dataclass(frozen=True)
class SplitPartitions:
    """The handbook split with the training rows left on the cluster."""

    #: Training-period rows labelled as known when testing starts (`split.train_set`), persisted.
    train: dd.DataFrame
    #: `split.eval_set`: the test rows, here.
    test: pd.DataFrame
    #: Rows in the test period before the known-compromised cards were left out.
    in_test_period: int
    stats: DatasetStats


def split_partitions(
    client: Client, partitions: Partitions, window: split.SplitWindow
) -> SplitPartitions:
    """`pipeline.split_dataset` over the partitions: the dataset is built once on the workers
    (persisted, with its stats), the training rows stay there, and only the test period's rows
    and the frauds before it are computed here: `split.eval_set` on them gives the local path's
    test rows exactly (it reads nothing else of the dataset)."""
    import dask

    # Rows and reports in one graph: each partition is built once for both.
    persisted = dask.persist(*partitions.parts, *partitions.reports)
    count = len(partitions.parts)
    data = _frame(persisted[:count])
    reports = list(persisted[count:])
    stats = partition_stats(partitions, client.compute(reports, sync=True))
    train_rows = data.map_partitions(split.train_set, window, meta=_meta())
    needed = data[(data["label"] == 1) | (data["event_ms"] >= window.test_start_ms)]
    # Persisted before the dataset is released: the training rows are all the fit needs.
    train_rows = client.persist(train_rows)
    local = needed.compute()
    del data, reports
    local = local.sort_values(["event_ms", "transaction_id"], kind="stable").reset_index(drop=True)
    in_test_period = int((local["event_ms"].to_numpy(np.int64) >= window.test_start_ms).sum())
    return SplitPartitions(
        train=train_rows,
        test=split.eval_set(local, window),
        in_test_period=in_test_period,
        stats=stats,
    )


def early_stopping_round(scores: Sequence[float], patience: int) -> tuple[int, bool]:
    """(rounds to keep, whether the patience ran out) for a validation curve to maximise:
    `lightgbm.early_stopping`'s rule (the local path's) replayed over a recorded curve.

    The best round is the first with the highest score (a later one counts only if strictly
    better); training stops at the first round `patience` rounds after the best.
    """
    best, best_round = -math.inf, 0
    for i, score in enumerate(scores):
        if score > best:
            best, best_round = score, i
        elif i - best_round >= patience:
            return best_round + 1, True
    return best_round + 1, False


def validation_curve(
    booster: lgb.Booster, x: np.ndarray, y: np.ndarray, patience: int | None = None
) -> list[float]:
    """Average precision of the model after every round on (x, y); stops `patience` rounds
    after the best, as early stopping would, since later rounds cannot be chosen.

    One tree's raw score is added per round, so scoring all rounds costs one full prediction.
    """
    raw = np.zeros(len(y), dtype=np.float64)
    scores: list[float] = []
    best_round, best = 0, -math.inf
    for i in range(booster.current_iteration()):
        raw += np.asarray(
            booster.predict(x, start_iteration=i, num_iteration=1, raw_score=True),
            dtype=np.float64,
        )
        # Ranks only: the raw score orders rows as the probability does.
        scores.append(float(skm.average_precision_score(y, raw)))
        if scores[-1] > best:
            best, best_round = scores[-1], i
        elif patience is not None and i - best_round >= patience:
            break
    return scores


def _both_classes(labels: np.ndarray) -> bool:
    return bool(labels.size) and 0 < int(labels.sum()) < labels.size


def _fit(client: Client, rows: dd.DataFrame, params: dict[str, Any], rounds: int) -> lgb.Booster:
    from lightgbm.dask import DaskLGBMClassifier

    # LightGBM rejects an empty part; a filter (the validation days, the training period)
    # can leave partitions empty.
    lengths = [int(n) for n in rows.map_partitions(len).compute()]
    keep = [i for i, n in enumerate(lengths) if n]
    rows = client.persist(rows.partitions[keep])
    sizes = [lengths[i] for i in keep]
    model = DaskLGBMClassifier(client=client, n_estimators=rounds, **params)
    x = rows[list(features.FEATURE_NAMES)].to_dask_array(lengths=sizes)
    y = rows["label"].to_dask_array(lengths=sizes)
    model.fit(x, y, feature_name=list(features.FEATURE_NAMES))
    return model.booster_


def train_partitions(
    client: Client,
    rows: dd.DataFrame | pd.DataFrame,
    settings: TrainingSettings,
    validation_start_ms: int | None = None,
) -> TrainedModel:
    """Fit on the workers; `rows` has FEATURE_NAMES, label and event_ms (a pandas frame is
    split into one partition per worker first). Rows from validation_start_ms on choose the
    number of rounds (None: no early stopping, num_boost_round rounds)."""
    import dask.dataframe as dd

    workers = max(1, len(client.scheduler_info()["workers"]))
    if isinstance(rows, pd.DataFrame):
        columns = [*features.FEATURE_NAMES, "label", "event_ms"]
        rows = dd.from_pandas(rows[[c for c in columns if c in rows]], npartitions=workers)
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

    rounds = settings.num_boost_round
    early_stopped = False
    validation_ap: float | None = None
    if validation_start_ms is not None:
        held_out = rows["event_ms"] >= validation_start_ms
        # The validation days are a few of the training week's: small enough to score here.
        valid = rows[held_out][[*features.FEATURE_NAMES, "label"]].compute()
        y_valid = valid["label"].to_numpy(np.int64)
        fit_positives = positives - int(y_valid.sum())
        fit_total = total - len(y_valid)
        if _both_classes(y_valid) and 0 < fit_positives < fit_total:
            log.info(
                "dask: probe fit on %s rows (%s frauds), %s rounds, validation %s rows",
                fit_total,
                fit_positives,
                settings.num_boost_round,
                len(y_valid),
            )
            probe = _fit(client, rows[~held_out], params, settings.num_boost_round)
            curve = validation_curve(
                probe, train.matrix(valid), y_valid, settings.early_stopping_rounds
            )
            rounds, early_stopped = early_stopping_round(curve, settings.early_stopping_rounds)
            validation_ap = curve[rounds - 1]
            log.info(
                "dask: early stopping chose %s of %s rounds (validation AP %.4f)%s",
                rounds,
                settings.num_boost_round,
                validation_ap,
                ", patience ran out" if early_stopped else "",
            )
        else:
            log.warning(
                "validation days lack fraud or genuine rows: no early stopping, %s rounds",
                rounds,
            )
    log.info(
        "dask: training on %s rows (%s frauds) over %s workers, %s rounds",
        total,
        positives,
        workers,
        rounds,
    )
    booster = _fit(client, rows, params, rounds)
    extra: dict[str, Any] = {"engine": "dask", "workers": workers}
    if validation_ap is not None:
        extra["validation_average_precision"] = validation_ap
    return TrainedModel(
        booster=booster,
        best_iteration=int(booster.current_iteration()),
        params={**params, **extra},
        early_stopped=early_stopped,
    )


def reference_sample(rows: dd.DataFrame, total: int, seed: int) -> pd.DataFrame:
    """About REFERENCE_SAMPLE_ROWS training rows (all of them when fewer), for the drift
    reference's bins."""
    if total <= REFERENCE_SAMPLE_ROWS:
        return rows.compute()
    return rows.sample(frac=REFERENCE_SAMPLE_ROWS / total, random_state=seed).compute()

"""One training run: dataset from the offline store, split, train, evaluate, champion/challenger.

`run_training` is what `fraudctl train`, the demo and the end-to-end tests call. It raises
`TrainingError` (or `InsufficientData`) when no model can be trained; the champion is only
ever replaced at the very end, after a challenger has been registered whole.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from services.common import feast_repo, features
from services.common.model_registry import ModelRecord, ModelRegistry
from services.common.settings import FeastSettings, RedisSettings, TrainingSettings
from services.monitor import reference
from training import dask_train, dataset, evaluate, promote, report, split, train
from training.train import TrainingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingResult:
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, float]
    champion_version: str | None
    champion_metrics: dict[str, float] | None
    window: split.SplitWindow
    metadata: dict[str, Any] = field(repr=False)
    #: report.md in the version's registry folder.
    report_path: Path | None = None


def ensure_repo(
    feast_settings: FeastSettings, redis_settings: RedisSettings, force_apply: bool = False
) -> Path:
    """Prepare the Feast repo; `feast apply` (~11 s) only when it has no registry yet."""
    repo_dir = feast_repo.prepare(feast_settings, redis_settings)
    if force_apply or not (repo_dir / "data" / "registry.db").exists():
        feast_repo.apply(repo_dir)
    return repo_dir


def split_dataset(
    holder: list[pd.DataFrame], window: split.SplitWindow
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(`split.train_set`, `split.eval_set`, rows in the test period) of the dataset in
    `holder`, which is emptied: the dataset is freed as soon as it is no longer needed.

    The dataset is in event-time order, so the training period is a prefix of it: the training
    rows are taken from it, then the rest (plus the training period's frauds, which tell
    `eval_set` the cards already known compromised) replaces the whole before the test rows
    are taken. At most the dataset and half of it more are in memory at once, instead of the
    dataset and both splits with their copies.
    """
    data = holder.pop()
    events = data["event_ms"].to_numpy(np.int64)
    in_test_period = int((events >= window.test_start_ms).sum())
    if len(events) > 1 and bool((events[1:] < events[:-1]).any()):
        return split.train_set(data, window), split.eval_set(data, window), in_test_period
    end = int(np.searchsorted(events, window.train_end_ms, side="left"))
    train_rows = split.train_set(data.iloc[:end], window)
    head = data.iloc[:end]
    rest = pd.concat([head[head["label"].to_numpy() == 1], data.iloc[end:]])
    del data, head, events
    return train_rows, split.eval_set(rest, window), in_test_period


@dataclass(frozen=True)
class _Fitted:
    """Steps 1 and 2 of a run, whichever engine did them."""

    trained: train.TrainedModel
    #: `split.eval_set`'s rows (with both classes: checked before fitting).
    test_rows: pd.DataFrame
    #: Rows in the test period before the known-compromised cards were left out.
    in_test_period: int
    stats: dataset.DatasetStats
    train_count: int
    train_positives: int
    #: Training rows the drift reference is binned over: all of them locally, a sample on Dask.
    reference_rows: pd.DataFrame


def _check_test_labels(labels: pd.Series) -> None:
    if labels.empty or labels.nunique() < 2:
        raise TrainingError(
            f"the test period has {int(labels.sum())} fraud and "
            f"{int((labels == 0).sum())} genuine rows: both are needed to evaluate"
        )


def _fit_locally(
    repo_dir: Path,
    cutoff_ms: int,
    window: split.SplitWindow,
    s: TrainingSettings,
    started: float,
) -> _Fitted:
    log.info("step 1/4: dataset (point-in-time join of the window's transactions)")
    data, stats = dataset.build_dataset(
        repo_dir,
        cutoff_ms,
        start_ms=window.train_start_ms,
        end_ms=min(window.test_end_ms, cutoff_ms + 1),
        engine=s.pit_engine,
        # The delay days are neither trained nor tested on: only their frauds are needed.
        skip=(window.train_end_ms, window.test_start_ms),
    )
    # Arrow's allocator keeps what the join freed unless asked to give it back.
    pa.default_memory_pool().release_unused()
    # Handed over in a list so that split_dataset holds the only reference and can free it.
    holder = [data]
    del data
    train_rows, test_rows, in_test_period = split_dataset(holder, window)
    _check_test_labels(test_rows["label"])
    train_positives = int(train_rows["label"].sum())
    log.info(
        "step 2/4: training on %s rows (%s frauds) after %.1f s",
        len(train_rows),
        train_positives,
        time.perf_counter() - started,
    )
    trained = train.train_model(train_rows, s, window.validation_start_ms)
    return _Fitted(
        trained=trained,
        test_rows=test_rows,
        in_test_period=in_test_period,
        stats=stats,
        train_count=len(train_rows),
        train_positives=train_positives,
        reference_rows=train_rows,
    )


def _fit_on_dask(
    repo_dir: Path,
    cutoff_ms: int,
    window: split.SplitWindow,
    s: TrainingSettings,
    started: float,
) -> _Fitted:
    """Steps 1 and 2 on the cluster: the dataset is built, split and fitted on in partitions;
    only the test rows, the validation days and a sample for the drift reference come here."""
    if s.pit_engine != "asof":
        log.warning("the dask engine joins with 'asof' (pit_engine %r is local only)", s.pit_engine)
    with dask_train.connect(s) as client:
        log.info("step 1/4: dataset on the cluster (point-in-time join per partition)")
        partitions = dask_train.build_partitions(
            repo_dir,
            cutoff_ms,
            start_ms=window.train_start_ms,
            end_ms=min(window.test_end_ms, cutoff_ms + 1),
            skip=(window.train_end_ms, window.test_start_ms),
        )
        parts = dask_train.split_partitions(client, partitions, window)
        stats = parts.stats
        log.info(
            "dataset: %s rows, %s positives, %s without card history, %s without terminal "
            "history, %s without any, %s duplicates",
            stats.rows,
            stats.positives,
            stats.no_history,
            stats.no_terminal_history,
            stats.feast_dropped,
            stats.duplicate_transactions,
        )
        _check_test_labels(parts.test["label"])
        counts = parts.train["label"].value_counts().compute()
        train_count, train_positives = int(counts.sum()), int(counts.get(1, 0))
        log.info(
            "step 2/4: training on %s rows (%s frauds) in %s partitions after %.1f s",
            train_count,
            train_positives,
            parts.train.npartitions,
            time.perf_counter() - started,
        )
        trained = dask_train.train_partitions(client, parts.train, s, window.validation_start_ms)
        sample = dask_train.reference_sample(
            parts.train[list(features.FEATURE_NAMES)], train_count, s.seed
        )
    return _Fitted(
        trained=trained,
        test_rows=parts.test,
        in_test_period=parts.in_test_period,
        stats=stats,
        train_count=train_count,
        train_positives=train_positives,
        reference_rows=sample,
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def run_training(
    feast_settings: FeastSettings,
    redis_settings: RedisSettings,
    training_settings: TrainingSettings,
    cutoff_ms: int | None = None,
) -> TrainingResult:
    """Train a challenger on the latest window that fits the data as known at `cutoff_ms`.

    cutoff_ms defaults to now (or to the last logged event, if the data lies in the future).
    """
    s = training_settings
    repo_dir = ensure_repo(feast_settings, redis_settings)
    events = dataset.read_event_ms(repo_dir)
    if cutoff_ms is None:
        cutoff_ms = max(_now_ms(), int(events.max()) if len(events) else 0)
    events = events[events <= cutoff_ms]
    if events.empty:
        raise TrainingError(
            f"no transactions in the offline store at {repo_dir} up to the cutoff: run the "
            "stream for a while or `fraudctl train --backfill transactions.parquet`"
        )
    window = split.choose_window(
        int(events.min()),
        int(events.max()),
        s.train_days,
        s.delay_days,
        s.test_days,
        s.validation_days,
    )
    log.info(
        "window: train %s .. %s, test %s .. %s, labels as of %s",
        split.iso(window.train_start_ms),
        split.iso(window.train_end_ms),
        split.iso(window.test_start_ms),
        split.iso(window.test_end_ms),
        split.iso(cutoff_ms),
    )
    started = time.perf_counter()
    build = _fit_on_dask if s.engine == "dask" else _fit_locally
    fitted = build(repo_dir, cutoff_ms, window, s, started)
    trained, test_rows, stats = fitted.trained, fitted.test_rows, fitted.stats
    test_labels = test_rows["label"]
    log.info("step 3/4: evaluating on %s test rows", len(test_rows))
    scores = train.predict(trained.booster, test_rows)
    metrics = evaluate.evaluate(test_labels, scores, test_rows["card_id"], test_rows["event_ms"])
    log.info(
        "challenger: AUC %.4f, AP %.4f, CP@100 %.4f",
        metrics["auc_roc"],
        metrics["average_precision"],
        metrics["card_precision_at_100"],
    )

    registry = ModelRegistry(s.model_dir)
    champion = promote.score_champion(registry, test_rows)
    decision = promote.decide(metrics, champion, s.promotion_tolerance)
    metadata: dict[str, Any] = {
        "feature_names": list(features.FEATURE_NAMES),
        "feature_service": feast_repo.FEATURE_SERVICE,
        "metrics": metrics,
        "champion_version": champion.version if champion else None,
        "champion_metrics": champion.metrics if champion else None,
        "window": {**window.as_metadata(), "cutoff_ms": cutoff_ms, "cutoff": split.iso(cutoff_ms)},
        "rows": {
            "dataset": stats.rows,
            "delay_days_skipped": stats.skipped,
            "train": fitted.train_count,
            "train_positives": fitted.train_positives,
            "test": len(test_rows),
            "test_positives": int(test_labels.sum()),
            "test_excluded_known_compromised": fitted.in_test_period - len(test_rows),
            "feast_dropped": stats.feast_dropped,
            "no_history": stats.no_history,
            "no_terminal_history": stats.no_terminal_history,
            "duplicate_transactions": stats.duplicate_transactions,
        },
        "hyperparameters": {
            **trained.params,
            "num_boost_round": s.num_boost_round,
            "early_stopping_rounds": s.early_stopping_rounds,
            "validation_days": s.validation_days,
            "train_days": s.train_days,
            "delay_days": s.delay_days,
            "test_days": s.test_days,
        },
        "best_iteration": trained.best_iteration,
        "early_stopped": trained.early_stopped,
        "code_version": promote.code_version(),
        "library_versions": promote.library_versions(),
        "created_at": datetime.now(UTC).isoformat(),
        "report": report.REPORT_NAME,
        "report_dir": str(s.report_dir) if s.report_dir is not None else None,
    }
    log.info("step 4/4: report and champion/challenger decision")
    registry.root.mkdir(parents=True, exist_ok=True)
    # Drawn before registering: a report that cannot be written fails the run with the
    # registry untouched, and a registered version always has its report.
    staging = Path(tempfile.mkdtemp(dir=registry.root, prefix=".report."))
    # The monitor's drift baseline: the training window as this model saw it and scored it.
    drift_reference = reference.build_reference(
        fitted.reference_rows.loc[:, list(features.FEATURE_NAMES)].reset_index(drop=True),
        train.predict(trained.booster, fitted.reference_rows),
    )
    try:
        _write_report(staging, test_labels.to_numpy(), scores, metrics, trained, champion, metadata)

        def attach(record: ModelRecord) -> None:
            for name in (report.REPORT_NAME, *report.PLOTS):
                os.replace(staging / name, record.directory / name)
            reference.save(drift_reference, record.directory)
            if s.report_dir is not None:
                report.copy_report(record.directory, s.report_dir / record.version)

        record = promote.register_and_decide(
            registry, trained.model_text(), metadata, decision, attach=attach
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("run done in %.1f s; report %s", time.perf_counter() - started, record.directory)
    return TrainingResult(
        version=record.version,
        promoted=decision.promote,
        reason=decision.reason,
        metrics=metrics,
        champion_version=champion.version if champion else None,
        champion_metrics=champion.metrics if champion else None,
        window=window,
        metadata=record.metadata,
        report_path=record.directory / report.REPORT_NAME,
    )


def _write_report(
    directory: Path,
    labels: Any,
    scores: Any,
    metrics: dict[str, float],
    trained: train.TrainedModel,
    champion: promote.ChampionScore | None,
    metadata: dict[str, Any],
) -> Path:
    compared = None
    problem = None
    if champion is not None and champion.metrics is not None and champion.scores is not None:
        compared = report.ScoredModel(
            f"champion {champion.version}", champion.scores, champion.metrics
        )
    elif champion is not None:
        problem = f"champion {champion.version} not comparable: {champion.problem}"
    rows = metadata["rows"]
    window = metadata["window"]
    summary = {
        "created": metadata["created_at"],
        "training period": f"{window['train_start']} .. {window['train_end']}",
        "test period": f"{window['test_start']} .. {window['test_end']}",
        "labels as of": window["cutoff"],
        "training rows (frauds)": f"{rows['train']} ({rows['train_positives']})",
        "test rows (frauds)": f"{rows['test']} ({rows['test_positives']})",
        "rows without card / terminal history": (
            f"{rows['no_history']} / {rows['no_terminal_history']}"
        ),
        "feature service": metadata["feature_service"],
        "boosting rounds": trained.best_iteration,
        "code version": metadata["code_version"],
    }
    return report.write_report(
        directory,
        labels,
        report.ScoredModel("challenger", scores, metrics),
        trained.importance(),
        champion=compared,
        champion_problem=problem,
        summary=summary,
    )

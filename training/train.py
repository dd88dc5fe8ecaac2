"""LightGBM on the training period: early stopping on its last days, then a refit on all of it.

The held-out days pick the number of rounds; the final model is then fitted on the whole
training period with that many rounds, so the most recent days (closest to what the model
will score) are not thrown away.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from services.common import features
from services.common.settings import TrainingSettings

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot produce a model from this data."""


@dataclass(frozen=True)
class TrainedModel:
    booster: lgb.Booster
    best_iteration: int
    params: dict[str, Any]
    #: The validation days' patience ran out before `num_boost_round` (both engines).
    early_stopped: bool

    def model_text(self) -> str:
        return str(self.booster.model_to_string())

    def importance(self) -> dict[str, float]:
        """Total gain per feature over all trees."""
        gains = self.booster.feature_importance(importance_type="gain")
        names = self.booster.feature_name()
        return {str(n): float(g) for n, g in zip(names, gains, strict=True)}


def progress(every: int, what: str) -> Callable[[lgb.callback.CallbackEnv], None]:
    """A LightGBM callback logging every `every` rounds (and the last) with its share done
    and the validation metric, so a long fit shows it is moving."""

    def log_round(env: lgb.callback.CallbackEnv) -> None:
        done = env.iteration - env.begin_iteration + 1
        total = env.end_iteration - env.begin_iteration
        if every <= 0 or (done % every and done != total):
            return
        scores = "".join(
            f", {data} {metric} {value:.4f}"
            for data, metric, value, *_ in (env.evaluation_result_list or [])
        )
        log.info(
            "%s: round %s of at most %s (%.0f%%)%s", what, done, total, 100 * done / total, scores
        )

    # After early stopping's own bookkeeping (order 30) has seen the round.
    log_round.order = 40  # type: ignore[attr-defined]
    return log_round


def matrix(frame: pd.DataFrame) -> np.ndarray:
    """The model input in FEATURE_NAMES order (what the scorer builds with feature_vector)."""
    return frame[list(features.FEATURE_NAMES)].to_numpy(dtype=np.float64)


def predict(booster: lgb.Booster, frame: pd.DataFrame) -> np.ndarray:
    return np.asarray(booster.predict(matrix(frame)), dtype=np.float64)


def lgb_params(settings: TrainingSettings, scale_pos_weight: float) -> dict[str, Any]:
    return {
        "objective": "binary",
        "metric": "average_precision",
        "learning_rate": settings.learning_rate,
        "num_leaves": settings.num_leaves,
        "min_data_in_leaf": settings.min_data_in_leaf,
        "max_bin": settings.max_bin,
        "feature_fraction": settings.feature_fraction,
        "scale_pos_weight": scale_pos_weight,
        "seed": settings.seed,
        "deterministic": True,
        # Row-wise histograms are chosen by timing otherwise; fixing it keeps runs identical.
        "force_row_wise": True,
        "num_threads": 2,
        "verbosity": -1,
    }


def _both_classes(labels: np.ndarray) -> bool:
    return bool(labels.size) and 0 < int(labels.sum()) < labels.size


def train_model(
    train: pd.DataFrame, settings: TrainingSettings, validation_start_ms: int
) -> TrainedModel:
    """Fit on `train` (FEATURE_NAMES + label + event_ms); rows from validation_start_ms on
    choose the number of rounds."""
    y = train["label"].to_numpy(np.int64)
    positives = int(y.sum())
    if positives == 0:
        raise TrainingError("no fraud labels in the training period: nothing to learn from")
    if positives == len(y):
        raise TrainingError("only fraud labels in the training period")
    weight = settings.scale_pos_weight
    if weight is None:
        weight = math.sqrt((len(y) - positives) / positives)
    params = lgb_params(settings, weight)
    x = matrix(train)
    names = list(features.FEATURE_NAMES)

    held_out = train["event_ms"].to_numpy(np.int64) >= validation_start_ms
    rounds = settings.num_boost_round
    early_stopped = False
    if _both_classes(y[held_out]) and _both_classes(y[~held_out]):
        fit = lgb.Dataset(x[~held_out], y[~held_out], feature_name=names, free_raw_data=False)
        valid = lgb.Dataset(x[held_out], y[held_out], reference=fit)
        probe = lgb.train(
            params,
            fit,
            num_boost_round=settings.num_boost_round,
            valid_sets=[valid],
            valid_names=["validation"],
            callbacks=[
                lgb.early_stopping(settings.early_stopping_rounds, verbose=False),
                progress(settings.progress_every, "early-stopping fit"),
            ],
        )
        rounds = max(1, int(probe.best_iteration or settings.num_boost_round))
        early_stopped = probe.current_iteration() < settings.num_boost_round
        log.info("early stopping chose %s of %s rounds", rounds, settings.num_boost_round)
    else:
        log.warning(
            "validation days lack fraud or genuine rows: no early stopping, %s rounds", rounds
        )
    booster = lgb.train(
        params,
        lgb.Dataset(x, y, feature_name=names),
        num_boost_round=rounds,
        callbacks=[progress(settings.progress_every, "final fit")],
    )
    return TrainedModel(
        booster=booster, best_iteration=rounds, params=params, early_stopped=early_stopped
    )

"""The Dask path's early stopping, replayed outside LightGBM: the same patience rule and the
same validation metric as `lightgbm.early_stopping` on the local path."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from training import dask_train

PARAMS = {
    "objective": "binary",
    "metric": "average_precision",
    "learning_rate": 0.3,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "seed": 42,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 1,
    "verbosity": -1,
}


def _data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training rows whose labels carry a quirk the validation rows lack: a curve that rises,
    peaks and falls, so the patience rule has something to decide."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(6000, 6))
    y = (x[:, 0] + 0.5 * rng.normal(size=6000) > 1.3).astype(np.int64)
    quirk = (x[:, 1] > 0.8) & (rng.random(6000) < 0.3)
    y_fit = y.copy()
    y_fit[quirk] = 1 - y_fit[quirk]
    return x[:4000], y_fit[:4000], x[4000:], y[4000:]


def _train_watched(
    x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, rounds: int, *callbacks: Any
) -> tuple[lgb.Booster, list[float]]:
    """LightGBM's own fit with the validation rows watched: the booster and its validation
    average precision after every round, as LightGBM computed it."""
    fit = lgb.Dataset(x, y, free_raw_data=False)
    recorded: dict[str, dict[str, list[float]]] = {}
    booster = lgb.train(
        PARAMS,
        fit,
        num_boost_round=rounds,
        valid_sets=[lgb.Dataset(xv, yv, reference=fit)],
        valid_names=["validation"],
        callbacks=[lgb.record_evaluation(recorded), *callbacks],
    )
    return booster, recorded["validation"]["average_precision"]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("patience", [3, 10])
def test_the_patience_rule_picks_lightgbms_early_stopping_round(seed: int, patience: int) -> None:
    x, y, xv, yv = _data(seed)
    _, curve = _train_watched(x, y, xv, yv, 80)
    stopped, _ = _train_watched(x, y, xv, yv, 80, lgb.early_stopping(patience, verbose=False))
    rounds, ran_out = dask_train.early_stopping_round(curve, patience)
    assert rounds == stopped.best_iteration
    assert ran_out == (stopped.current_iteration() < 80)


def test_the_validation_curve_is_lightgbms_average_precision_after_every_round() -> None:
    x, y, xv, yv = _data(4)
    booster, recorded = _train_watched(x, y, xv, yv, 40)
    curve = dask_train.validation_curve(booster, xv, yv)
    assert curve == pytest.approx(recorded, abs=1e-9)


def test_the_validation_curve_stops_where_early_stopping_would() -> None:
    x, y, xv, yv = _data(1)
    booster = lgb.train(PARAMS, lgb.Dataset(x, y), num_boost_round=60)
    full = dask_train.validation_curve(booster, xv, yv)
    short = dask_train.validation_curve(booster, xv, yv, patience=5)
    rounds, ran_out = dask_train.early_stopping_round(full, 5)
    assert ran_out
    # Scored up to and including the round where the patience ran out, and no further.
    assert len(short) == rounds + 5
    assert short == full[: len(short)]
    assert dask_train.early_stopping_round(short, 5) == (rounds, True)


def test_the_first_of_equal_best_rounds_is_kept() -> None:
    assert dask_train.early_stopping_round([0.5, 0.7, 0.7, 0.6], 2) == (2, True)
    assert dask_train.early_stopping_round([0.5, 0.7, 0.7], 2) == (2, False)


def test_a_curve_that_keeps_rising_keeps_every_round() -> None:
    assert dask_train.early_stopping_round([0.1, 0.2, 0.3, 0.4], 1) == (4, False)

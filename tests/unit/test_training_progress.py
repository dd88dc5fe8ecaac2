"""LightGBM progress: a log line every N rounds and at the last one, with the share done."""

from __future__ import annotations

import logging

import lightgbm as lgb
import numpy as np
import pytest

from training import train


def fit(rounds: int, every: int, valid: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] > 0.5).astype(np.int64)
    data = lgb.Dataset(x, y)
    params = {"objective": "binary", "verbosity": -1, "num_threads": 1, "metric": "auc"}
    lgb.train(
        params,
        data,
        num_boost_round=rounds,
        valid_sets=[lgb.Dataset(x, y, reference=data)] if valid else None,
        valid_names=["validation"] if valid else None,
        callbacks=[train.progress(every, "fit")],
    )


def test_progress_logs_every_n_rounds_and_the_last(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="training.train"):
        fit(rounds=22, every=5, valid=False)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"fit: round {n} of at most 22 ({100 * n / 22:.0f}%)" for n in (5, 10, 15, 20, 22)
    ]


def test_progress_shows_the_validation_metric_and_can_be_silenced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="training.train"):
        fit(rounds=4, every=2, valid=True)
        fit(rounds=4, every=0, valid=True)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[1].startswith("fit: round 4 of at most 4 (100%), validation auc ")

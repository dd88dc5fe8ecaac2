"""The training reference: quantile bins, constant and NaN columns, round trip via the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.common.model_registry import ModelRegistry
from services.monitor import psi, reference


def test_quantile_bins_split_the_training_values_evenly() -> None:
    values = np.arange(1000, dtype=float)
    bins = reference.make_bins(values, bins=10)
    assert len(bins.cuts) == 9
    assert bins.proportions[:-1] == pytest.approx([0.1] * 10)
    assert bins.proportions[-1] == 0.0  # no NaN
    assert psi.psi_against(bins, values) == pytest.approx(0.0)


def test_nan_gets_its_own_bin() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, np.nan, np.nan, np.nan, np.nan])
    bins = reference.make_bins(values, bins=4)
    assert bins.proportions[-1] == pytest.approx(0.5)
    assert sum(bins.proportions) == pytest.approx(1.0)
    # More unknowns in production is drift.
    assert psi.psi_against(bins, [np.nan] * 8) > psi.ACT


def test_a_constant_column_detects_drift_in_both_directions() -> None:
    bins = reference.make_bins(np.full(100, 5.0))
    assert bins.cuts[1] == 5.0 and bins.cuts[0] < 5.0
    assert bins.proportions == (0.0, 1.0, 0.0, 0.0)
    assert psi.psi_against(bins, np.full(100, 5.0)) == pytest.approx(0.0)
    assert psi.psi_against(bins, np.full(100, 6.0)) > psi.ACT
    assert psi.psi_against(bins, np.full(100, 4.0)) > psi.ACT


def test_an_all_nan_column_has_an_empty_numeric_bin() -> None:
    bins = reference.make_bins(np.full(10, np.nan))
    assert bins.cuts == ()
    assert bins.proportions == (0.0, 1.0)


def test_tied_values_collapse_duplicate_cuts() -> None:
    values = np.array([0.0] * 70 + [1.0] * 20 + [2.0] * 10)
    bins = reference.make_bins(values, bins=10)
    assert list(bins.cuts) == sorted(set(bins.cuts))
    assert bins.counts(values).sum() == 100
    assert psi.psi_against(bins, values) == pytest.approx(0.0)


def test_infinities_land_in_the_outer_bins_and_cuts_stay_finite() -> None:
    values = np.array([-np.inf, 1.0, 2.0, 3.0, np.inf])
    bins = reference.make_bins(values, bins=2)
    assert all(np.isfinite(bins.cuts))
    assert sum(bins.proportions) == pytest.approx(1.0)


def _frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1, n),
            "count_1h": rng.poisson(1.5, n).astype(float),
            "seconds_since_last": np.where(rng.random(n) < 0.2, np.nan, rng.exponential(600, n)),
        }
    )


def test_build_save_load_round_trip_in_a_registry_version(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    features = _frame(rng, 5000)
    scores = rng.beta(1, 20, 5000)
    ref = reference.build_reference(features, scores)
    registry = ModelRegistry(tmp_path / "models")
    record = registry.register("model text", {"features": list(features.columns)})
    path = reference.save(ref, record.directory)
    assert path == record.directory / "reference.json"
    loaded = reference.load(registry.get(record.version).directory)
    assert loaded == ref
    assert set(loaded.features) == {"amount", "count_1h", "seconds_since_last"}
    assert loaded.rows == 5000
    assert loaded.score_quantiles[0.5] == pytest.approx(np.quantile(scores, 0.5))
    # The same population again is stable; a shifted one is not.
    again = _frame(np.random.default_rng(4), 5000)
    assert psi.psi_against(loaded.features["amount"], again["amount"]) < psi.WATCH
    assert psi.psi_against(loaded.features["amount"], again["amount"] * 3) > psi.ACT


def test_load_of_a_version_without_reference_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        reference.load(tmp_path)


def test_build_reference_refuses_mismatched_or_empty_inputs() -> None:
    with pytest.raises(ValueError, match="scores"):
        reference.build_reference(pd.DataFrame({"a": [1.0, 2.0]}), np.array([0.1]))
    with pytest.raises(ValueError, match="empty"):
        reference.build_reference(pd.DataFrame({"a": []}), np.array([]))


def test_bins_refuse_inconsistent_lengths() -> None:
    with pytest.raises(ValueError):
        reference.Bins((1.0,), (1.0,))

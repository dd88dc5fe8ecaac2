"""PSI: known values, empty bins, thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.monitor import psi
from services.monitor.reference import Bins


def test_identical_distributions_have_zero_psi() -> None:
    assert psi.psi([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]) == 0.0


def test_psi_matches_the_formula_on_known_values() -> None:
    # (0.25-0.5)*ln(0.25/0.5) + (0.75-0.5)*ln(0.75/0.5)
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert psi.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected, rel=1e-12)
    assert psi.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.2746530722, rel=1e-9)


def test_psi_is_symmetric_in_its_arguments() -> None:
    a, b = [0.2, 0.3, 0.5], [0.4, 0.4, 0.2]
    assert psi.psi(a, b) == pytest.approx(psi.psi(b, a))


def test_an_empty_bin_counts_as_epsilon_so_psi_stays_finite() -> None:
    value = psi.psi([0.5, 0.5, 0.0], [0.5, 0.4, 0.1])
    eps = psi.EPSILON
    expected = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.1 - eps) * math.log(0.1 / eps)
    assert value == pytest.approx(expected, rel=1e-12)
    assert psi.psi([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == 0.0


def test_mismatched_bins_are_refused() -> None:
    with pytest.raises(ValueError, match="bins differ"):
        psi.psi([0.5, 0.5], [1.0])


def test_psi_against_reference_bins_counts_values_and_nan() -> None:
    # Bins: (-inf, 1], (1, 2], (2, inf), NaN
    bins = Bins(cuts=(1.0, 2.0), proportions=(0.25, 0.25, 0.25, 0.25))
    same = [0.0, 1.5, 3.0, np.nan]
    assert psi.psi_against(bins, same) == pytest.approx(0.0)
    shifted = [3.0, 3.0, 3.0, np.nan]
    expected = psi.psi([0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.75, 0.25])
    assert psi.psi_against(bins, shifted) == pytest.approx(expected)


def test_psi_against_needs_values() -> None:
    with pytest.raises(ValueError):
        psi.psi_against(Bins((1.0,), (0.5, 0.5, 0.0)), [])


@pytest.mark.parametrize(
    ("value", "verdict"),
    [
        (0.0, psi.Drift.STABLE),
        (0.099, psi.Drift.STABLE),
        (0.1, psi.Drift.WATCH),
        (0.25, psi.Drift.WATCH),
        (0.26, psi.Drift.ACT),
        (3.0, psi.Drift.ACT),
    ],
)
def test_thresholds_follow_the_runbook(value: float, verdict: psi.Drift) -> None:
    assert psi.classify(value) is verdict

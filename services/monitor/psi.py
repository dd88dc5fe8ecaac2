"""Population Stability Index: how far a distribution moved from its reference.

    PSI = sum over bins of (actual - expected) * ln(actual / expected)

Both sides are bin shares. A share of 0 makes the log infinite, so empty bins are counted as
EPSILON: one bin a distribution newly fills then adds a large but finite term. Rule of thumb,
also in docs/operations.md: < 0.1 stable, 0.1-0.25 watch, > 0.25 act.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import numpy.typing as npt

from services.monitor.reference import Bins

EPSILON = 1e-4
WATCH = 0.1
ACT = 0.25


class Drift(StrEnum):
    STABLE = "stable"
    WATCH = "watch"
    ACT = "act"


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike, epsilon: float = EPSILON) -> float:
    """PSI of two share vectors over the same bins (each summing to 1)."""
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    if e.shape != a.shape:
        raise ValueError(f"bins differ: {e.shape} vs {a.shape}")
    e = np.maximum(e, epsilon)
    a = np.maximum(a, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def shares(counts: npt.ArrayLike) -> npt.NDArray[np.float64]:
    c = np.asarray(counts, dtype=float)
    total = c.sum()
    if total <= 0:
        raise ValueError("no values to compute shares of")
    result: npt.NDArray[np.float64] = c / total
    return result


def psi_against(reference: Bins, values: npt.ArrayLike, epsilon: float = EPSILON) -> float:
    """PSI of `values` (NaN = unknown) against a reference's bins."""
    return psi(reference.proportions, shares(reference.counts(values)), epsilon)


def classify(value: float) -> Drift:
    if value > ACT:
        return Drift.ACT
    if value >= WATCH:
        return Drift.WATCH
    return Drift.STABLE

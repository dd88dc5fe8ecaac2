"""What the training window looked like: per-feature bins and the score distribution.

The model monitor compares production against this reference with PSI (`psi.py`). It is
built once per model version by the training pipeline and stored next to the model::

    <registry>/versions/<version>/reference.json

API for the training pipeline (stable; everything else here is internal)::

    from services.monitor import reference
    ref = reference.build_reference(train_features, predicted_scores)  # DataFrame, 1-d array
    reference.save(ref, record.directory)          # record = ModelRegistry.register(...)
    # monitor side: reference.load(directory) -> Reference (FileNotFoundError if absent)

`train_features` holds one column per model feature (named as in the ScoreRecord `features`
map, i.e. `features.FEATURE_NAMES`), NaN where a value is unknown; `predicted_scores` are the
model's scores for the same rows. Save it before promoting, so a serving version always has one.

Binning: cut points are the unique quantiles (levels 1/bins .. (bins-1)/bins) of the non-NaN
training values; bins are (-inf, c1], (c1, c2], ..., (ck, +inf), plus one bin for NaN. A
constant column gets cuts just below and at its value, so drift in either direction shows.
A column that is all NaN has one empty numeric bin and a full NaN bin.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

FILENAME = "reference.json"
FORMAT = 1
DEFAULT_BINS = 10
#: Score quantiles kept for the report (the PSI uses the bins).
SCORE_QUANTILES = (0.5, 0.9, 0.99)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Bins:
    """Cut points and the training share of each bin (numeric bins, then the NaN bin)."""

    cuts: tuple[float, ...]
    proportions: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.proportions) != len(self.cuts) + 2:
            raise ValueError(
                f"{len(self.cuts)} cuts need {len(self.cuts) + 2} proportions, "
                f"got {len(self.proportions)}"
            )

    def counts(self, values: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """How many of `values` fall in each bin (same order as `proportions`)."""
        return bin_counts(np.asarray(self.cuts, dtype=float), values)


@dataclass(frozen=True)
class Reference:
    features: dict[str, Bins]
    score: Bins
    rows: int
    score_quantiles: dict[float, float] = field(default_factory=dict)
    created_at: str = ""


def bin_counts(cuts: FloatArray, values: npt.ArrayLike) -> npt.NDArray[np.int64]:
    data = np.asarray(values, dtype=float).ravel()
    nan = np.isnan(data)
    # side="left": a value equal to a cut belongs to the bin the cut closes.
    index = np.searchsorted(cuts, data[~nan], side="left")
    counts = np.bincount(index, minlength=len(cuts) + 1).astype(np.int64)
    return np.append(counts, np.int64(nan.sum()))


def make_cuts(values: npt.ArrayLike, bins: int = DEFAULT_BINS) -> FloatArray:
    data = np.asarray(values, dtype=float).ravel()
    # Cuts from finite values only; an infinity still counts, in an outermost bin.
    data = data[np.isfinite(data)]
    if data.size == 0:
        return np.empty(0)
    lowest, highest = float(data.min()), float(data.max())
    if lowest == highest:
        return np.array([np.nextafter(lowest, -np.inf), lowest])
    levels = np.arange(1, bins) / bins
    return np.unique(np.quantile(data, levels))


def make_bins(values: npt.ArrayLike, bins: int = DEFAULT_BINS) -> Bins:
    cuts = make_cuts(values, bins)
    counts = bin_counts(cuts, values)
    total = int(counts.sum())
    proportions = counts / total if total else np.zeros(len(counts))
    return Bins(tuple(float(c) for c in cuts), tuple(float(p) for p in proportions))


def build_reference(
    features: pd.DataFrame, scores: npt.ArrayLike, bins: int = DEFAULT_BINS
) -> Reference:
    """Bins of every feature column and of the scores over the training window."""
    score_values = np.asarray(scores, dtype=float).ravel()
    if len(features) != len(score_values):
        raise ValueError(f"{len(features)} feature rows but {len(score_values)} scores")
    if len(features) == 0:
        raise ValueError("an empty training window has no distribution to compare against")
    finite = score_values[~np.isnan(score_values)]
    quantiles = {q: float(np.quantile(finite, q)) for q in SCORE_QUANTILES} if finite.size else {}
    return Reference(
        features={
            str(name): make_bins(features[name].to_numpy(dtype=float, na_value=np.nan), bins)
            for name in features.columns
        },
        score=make_bins(score_values, bins),
        rows=len(features),
        score_quantiles=quantiles,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _bins_json(bins: Bins) -> dict[str, list[float]]:
    return {"cuts": list(bins.cuts), "proportions": list(bins.proportions)}


def _bins_from(data: dict[str, Any]) -> Bins:
    return Bins(tuple(float(c) for c in data["cuts"]), tuple(float(p) for p in data["proportions"]))


def to_json(reference: Reference) -> str:
    payload = {
        "format": FORMAT,
        "rows": reference.rows,
        "created_at": reference.created_at,
        "score": _bins_json(reference.score),
        "score_quantiles": {str(q): v for q, v in reference.score_quantiles.items()},
        "features": {name: _bins_json(b) for name, b in sorted(reference.features.items())},
    }
    # allow_nan=False: cuts are finite by construction; NaN or infinity here is a bug.
    return json.dumps(payload, indent=1, allow_nan=False)


def from_json(text: str) -> Reference:
    payload = json.loads(text)
    if payload.get("format") != FORMAT:
        raise ValueError(f"unknown reference format {payload.get('format')!r}")
    return Reference(
        features={name: _bins_from(b) for name, b in payload["features"].items()},
        score=_bins_from(payload["score"]),
        rows=int(payload["rows"]),
        score_quantiles={float(q): float(v) for q, v in payload["score_quantiles"].items()},
        created_at=str(payload.get("created_at", "")),
    )


def save(reference: Reference, directory: Path) -> Path:
    """Write `directory/reference.json` atomically (a reader never sees half a file)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILENAME
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{FILENAME}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(to_json(reference))
    os.replace(tmp, path)
    return path


def load(directory: Path) -> Reference:
    """The reference saved in `directory`; FileNotFoundError if that version has none."""
    return from_json((directory / FILENAME).read_text())

"""The rolling window of score records and the drift figures computed over it."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from services.common.model_registry import ModelRegistry
from services.monitor import reference
from services.monitor.psi import Drift, classify, psi_against
from services.monitor.reference import Reference

log = logging.getLogger(__name__)

#: Score quantiles published and reported for the window (the reference keeps the same ones).
QUANTILES = reference.SCORE_QUANTILES


@dataclass(frozen=True)
class Observation:
    model_version: str
    score: float
    fallback: bool
    features: Mapping[str, float]


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    psi: float
    drift: Drift


@dataclass(frozen=True)
class DriftSnapshot:
    """Drift of the serving model version's records in the window against its reference."""

    records: int
    fallback_share: float | None
    #: The version of the newest model-scored record: the one serving now.
    model_version: str | None = None
    model_records: int = 0
    min_records: int = 0
    reference_found: bool = False
    reference_rows: int = 0
    score_psi: float | None = None
    #: Highest PSI first; empty until the version has min_records and a reference.
    features: list[FeatureDrift] = field(default_factory=list)
    score_quantiles: dict[float, float] = field(default_factory=dict)
    reference_score_quantiles: dict[float, float] = field(default_factory=dict)

    @property
    def evaluated(self) -> bool:
        return self.score_psi is not None


class Window:
    """The last `size` observations, model-scored and fallback alike."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("window size must be positive")
        self._items: deque[Observation] = deque(maxlen=size)

    def add(self, observation: Observation) -> None:
        self._items.append(observation)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[Observation]:
        return list(self._items)


class ReferenceStore:
    """References by model version, read from the registry and kept once found."""

    def __init__(self, registry_root: Path) -> None:
        self.registry = ModelRegistry(registry_root)
        self._found: dict[str, Reference] = {}

    def __call__(self, version: str) -> Reference | None:
        cached = self._found.get(version)
        if cached is not None:
            return cached
        # The version comes off the topic: never let it name a path outside the registry.
        if not version or "/" in version or "\\" in version or version.startswith("."):
            return None
        directory = self.registry.versions_dir / version
        try:
            loaded = reference.load(directory)
        except FileNotFoundError:
            # Not cached: training may write it after registering the version.
            return None
        except ValueError as exc:
            log.warning("unreadable reference for model %s: %s", version, exc)
            return None
        self._found[version] = loaded
        return loaded


def evaluate(
    window: Window,
    reference_for: Callable[[str], Reference | None],
    min_records: int,
) -> DriftSnapshot:
    items = window.items()
    if not items:
        return DriftSnapshot(records=0, fallback_share=None, min_records=min_records)
    fallback_share = sum(o.fallback for o in items) / len(items)
    # Fallback records carry rule scores and often no features: they say nothing about the model.
    modelled = [o for o in items if not o.fallback]
    if not modelled:
        return DriftSnapshot(len(items), fallback_share, min_records=min_records)
    version = modelled[-1].model_version
    mine = [o for o in modelled if o.model_version == version]
    scores = np.array([o.score for o in mine], dtype=float)
    quantiles = {q: float(np.quantile(scores, q)) for q in QUANTILES}
    ref = reference_for(version)
    base = DriftSnapshot(
        records=len(items),
        fallback_share=fallback_share,
        model_version=version,
        model_records=len(mine),
        min_records=min_records,
        reference_found=ref is not None,
        reference_rows=ref.rows if ref is not None else 0,
        score_quantiles=quantiles,
        reference_score_quantiles=dict(ref.score_quantiles) if ref is not None else {},
    )
    if ref is None or len(mine) < min_records:
        return base
    drifts = []
    for name, bins in ref.features.items():
        values = np.array([o.features.get(name, np.nan) for o in mine], dtype=float)
        value = psi_against(bins, values)
        drifts.append(FeatureDrift(name, value, classify(value)))
    drifts.sort(key=lambda d: (-d.psi, d.name))
    return replace(base, score_psi=psi_against(ref.score, scores), features=drifts)

"""Champion/challenger: score the serving model on the challenger's test set, then decide.

The challenger is always registered (so it can be inspected or promoted by hand); it becomes
the champion only if its average precision is at least the champion's minus a tolerance on
the very same test rows. The decision and its reason are part of the version's metadata.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from services.common import features
from services.common.model_registry import ModelRecord, ModelRegistry
from training import evaluate, train

log = logging.getLogger(__name__)

PRIMARY_METRIC = "average_precision"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class ChampionScore:
    version: str
    metrics: dict[str, float] | None
    #: Why the champion could not be scored, if it could not.
    problem: str | None = None
    #: Its scores on the test rows (for the report's curves), when it could be scored.
    scores: np.ndarray | None = field(default=None, repr=False, compare=False)


def decide(
    challenger: dict[str, float], champion: ChampionScore | None, tolerance: float
) -> Decision:
    if champion is None:
        return Decision(True, "no champion yet")
    if champion.metrics is None:
        return Decision(True, f"champion {champion.version} not comparable: {champion.problem}")
    new = challenger[PRIMARY_METRIC]
    old = champion.metrics[PRIMARY_METRIC]
    if new >= old - tolerance:
        return Decision(
            True,
            f"challenger AP {new:.4f} >= champion {champion.version} AP {old:.4f} "
            f"- tolerance {tolerance}",
        )
    return Decision(
        False,
        f"challenger AP {new:.4f} < champion {champion.version} AP {old:.4f} "
        f"- tolerance {tolerance}",
    )


def score_champion(registry: ModelRegistry, test: pd.DataFrame) -> ChampionScore | None:
    """The current champion's metrics on `test`; None when there is no champion."""
    record = registry.champion()
    if record is None:
        return None
    expected = list(features.FEATURE_NAMES)
    if record.metadata.get("feature_names") != expected:
        return ChampionScore(record.version, None, "it was trained on other features")
    try:
        booster = lgb.Booster(model_file=str(record.model_path))
    except (lgb.basic.LightGBMError, OSError) as exc:
        return ChampionScore(record.version, None, f"its model does not load ({exc})")
    if booster.feature_name() != expected:
        return ChampionScore(record.version, None, "its model's features differ from metadata")
    scores = train.predict(booster, test)
    metrics = evaluate.evaluate(test["label"], scores, test["card_id"], test["event_ms"])
    return ChampionScore(record.version, metrics, scores=scores)


def code_version() -> str:
    """`git describe` of the checkout when there is one, else the installed package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return importlib.metadata.version("fraudscore")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def library_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("lightgbm", "feast", "numpy", "pandas", "scikit-learn", "pyarrow", "matplotlib"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def json_safe(value: Any) -> Any:
    """NaN/inf become null: metadata.json must stay strict JSON for non-Python readers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def register_and_decide(
    registry: ModelRegistry,
    model_text: str,
    metadata: dict[str, Any],
    decision: Decision,
    attach: Callable[[ModelRecord], None] | None = None,
) -> ModelRecord:
    """Register the challenger with its decision; promote it if the decision says so.

    `attach` adds files to the new version folder (the report) before it can become champion.
    """
    meta = json_safe({**metadata, "promoted": decision.promote, "decision": decision.reason})
    record = registry.register(model_text, meta)
    if attach is not None:
        attach(record)
    if decision.promote:
        registry.promote(record.version, reason=decision.reason)
        log.info("promoted %s: %s", record.version, decision.reason)
    else:
        log.warning("registered %s but kept the champion: %s", record.version, decision.reason)
    return record

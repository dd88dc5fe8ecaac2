"""The per-run training report: `report.md` with PNG plots next to it.

ROC and precision-recall curves, feature importance (gain), calibration (reliability curve),
score distribution per class, and the champion vs challenger metrics (and curves, when a
champion was scored on the same test rows). Plots are drawn on bare `Figure`s (Agg canvas),
so no pyplot global state and no display are involved.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

log = logging.getLogger(__name__)

REPORT_NAME = "report.md"
PLOTS: tuple[str, ...] = (
    "roc.png",
    "precision_recall.png",
    "feature_importance.png",
    "calibration.png",
    "score_distribution.png",
)
#: Features shown in the importance plot: the rest add little but height.
TOP_FEATURES = 25
CALIBRATION_BINS = 10

#: Metric key -> label, in table order.
METRIC_LABELS: dict[str, str] = {
    "auc_roc": "AUC ROC",
    "average_precision": "Average precision",
    "card_precision_at_100": "Card precision@100",
    "recall_at_1pct_fpr": "Recall @ 1% FPR",
    "brier": "Brier score",
    "rows": "Test rows",
    "positives": "Test frauds",
}


@dataclass(frozen=True)
class ScoredModel:
    """One model's scores on the test rows, with its metrics."""

    name: str
    scores: np.ndarray
    metrics: Mapping[str, float]


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)


def _roc(path: Path, labels: np.ndarray, models: Sequence[ScoredModel]) -> None:
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for model in models:
        fpr, tpr, _ = skm.roc_curve(labels, model.scores)
        ax.plot(fpr, tpr, label=f"{model.name} (AUC {model.metrics.get('auc_roc', math.nan):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve")
    ax.legend(loc="lower right")
    _save(fig, path)


def _precision_recall(path: Path, labels: np.ndarray, models: Sequence[ScoredModel]) -> None:
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for model in models:
        precision, recall, _ = skm.precision_recall_curve(labels, model.scores)
        ap = model.metrics.get("average_precision", math.nan)
        ax.plot(recall, precision, label=f"{model.name} (AP {ap:.3f})")
    ax.axhline(float(labels.mean()), linestyle="--", color="grey", label="random")
    ax.set(xlabel="Recall", ylabel="Precision", title="Precision-recall curve", ylim=(0, 1.02))
    ax.legend(loc="upper right")
    _save(fig, path)


def _importance(path: Path, importance: Mapping[str, float]) -> None:
    ranked = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)[:TOP_FEATURES]
    names = [name for name, _ in reversed(ranked)]
    gains = [gain for _, gain in reversed(ranked)]
    fig = Figure(figsize=(7, max(3.0, 0.28 * len(names) + 1)))
    ax = fig.subplots()
    ax.barh(names, gains, color="tab:blue")
    ax.set(xlabel="Total gain", title="Feature importance (gain)")
    ax.tick_params(axis="y", labelsize=8)
    _save(fig, path)


def _calibration(path: Path, labels: np.ndarray, models: Sequence[ScoredModel]) -> None:
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for model in models:
        # Quantile bins: fraud scores pile up near 0, uniform bins would leave most empty.
        observed, predicted = calibration_curve(
            labels, np.clip(model.scores, 0.0, 1.0), n_bins=CALIBRATION_BINS, strategy="quantile"
        )
        ax.plot(predicted, observed, marker="o", label=model.name)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.set(
        xlabel="Mean predicted probability",
        ylabel="Observed fraud rate",
        title="Calibration (reliability curve)",
    )
    ax.legend(loc="upper left")
    _save(fig, path)


def _distribution(path: Path, labels: np.ndarray, scores: np.ndarray) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    bins = [i / 40 for i in range(41)]
    clipped = np.clip(scores, 0.0, 1.0)
    ax.hist(clipped[labels == 0], bins=bins, alpha=0.6, density=True, label="genuine")
    ax.hist(clipped[labels == 1], bins=bins, alpha=0.6, density=True, label="fraud")
    ax.set(xlabel="Score", ylabel="Density (log)", title="Score distribution by class")
    ax.set_yscale("log")
    ax.legend(loc="upper center")
    _save(fig, path)


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def metrics_table(columns: Sequence[tuple[str, Mapping[str, float] | None]]) -> list[str]:
    """A Markdown table: one row per metric, one column per model (None: not available)."""
    lines = [
        "| metric | " + " | ".join(name for name, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for key, label in METRIC_LABELS.items():
        cells = [_format(m.get(key) if m is not None else None) for _, m in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def write_report(
    directory: Path,
    labels: np.ndarray,
    challenger: ScoredModel,
    importance: Mapping[str, float],
    champion: ScoredModel | None = None,
    champion_problem: str | None = None,
    summary: Mapping[str, Any] | None = None,
) -> Path:
    """Write report.md and its PNGs into `directory`; returns the report's path.

    `labels` are the test rows' labels, which every ScoredModel's scores are aligned with.
    """
    directory.mkdir(parents=True, exist_ok=True)
    y = np.asarray(labels, dtype=np.int64)
    compared = [challenger] + ([champion] if champion is not None else [])
    _roc(directory / "roc.png", y, compared)
    _precision_recall(directory / "precision_recall.png", y, compared)
    _importance(directory / "feature_importance.png", importance)
    _calibration(directory / "calibration.png", y, compared)
    _distribution(directory / "score_distribution.png", y, challenger.scores)

    lines = ["# Training report", ""]
    for key, value in (summary or {}).items():
        lines.append(f"- **{key}**: {_format(value)}")
    lines += ["", "## Champion vs challenger (same test rows)", ""]
    if champion is not None:
        lines += metrics_table(
            [
                (challenger.name, challenger.metrics),
                (champion.name, champion.metrics),
            ]
        )
    else:
        lines += metrics_table([(challenger.name, challenger.metrics)])
        lines += ["", f"No champion compared: {champion_problem or 'there is none yet'}."]
    lines += [
        "",
        "## ROC curve",
        "",
        "![ROC curve](roc.png)",
        "",
        "## Precision-recall curve",
        "",
        "![Precision-recall curve](precision_recall.png)",
        "",
        "## Feature importance (gain)",
        "",
        "![Feature importance](feature_importance.png)",
        "",
        "## Calibration",
        "",
        "![Calibration](calibration.png)",
        "",
        "## Score distribution",
        "",
        "![Score distribution](score_distribution.png)",
        "",
    ]
    path = directory / REPORT_NAME
    path.write_text("\n".join(lines))
    log.info("report written to %s", path)
    return path


def copy_report(source_dir: Path, target_dir: Path) -> Path:
    """report.md and its PNGs from `source_dir` into `target_dir` (created)."""
    target_dir.mkdir(parents=True, exist_ok=True)
    for name in (REPORT_NAME, *PLOTS):
        shutil.copy2(source_dir / name, target_dir / name)
    return target_dir / REPORT_NAME

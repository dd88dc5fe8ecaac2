"""Detection-quality metrics, with Card Precision@k exactly as the Fraud Detection Handbook.

`card_precision_top_k` follows the handbook's `card_precision_top_k` / `card_precision_top_k_day`
(Chapter 3 BaselineModeling, Chapter_References/shared_functions): per day, each card counts
once with its highest score and whether any of its transactions that day was fraud; precision
is the number of compromised cards among the k highest-scored ones divided by k; cards found on
earlier days are removed from later days (investigators already blocked them); the result is
the mean over the days.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn import metrics as skm

TOP_K = 100
MAX_FPR = 0.01


@dataclass(frozen=True)
class CardPrecision:
    mean: float
    per_day: list[float]
    compromised_cards_per_day: list[int]


def card_precision_top_k(
    days: Sequence[int] | np.ndarray | pd.Series,
    card_ids: Sequence[str] | np.ndarray | pd.Series,
    labels: Sequence[int] | np.ndarray | pd.Series,
    scores: Sequence[float] | np.ndarray | pd.Series,
    top_k: int = TOP_K,
    remove_detected_compromised_cards: bool = True,
) -> CardPrecision:
    frame = pd.DataFrame(
        {
            "day": np.asarray(days),
            "card_id": np.asarray(card_ids),
            "label": np.asarray(labels),
            "score": np.asarray(scores, dtype=np.float64),
        }
    )
    detected: set[str] = set()
    per_day: list[float] = []
    compromised: list[int] = []
    for day in sorted(frame["day"].unique()):
        df_day = frame.loc[frame["day"] == day, ["card_id", "label", "score"]]
        df_day = df_day[~df_day["card_id"].isin(detected)]
        compromised.append(int(df_day.loc[df_day["label"] == 1, "card_id"].nunique()))
        # Stable sort: ties keep card order, so the metric is reproducible run to run.
        cards = (
            df_day.groupby("card_id")
            .max()
            .sort_values(by="score", ascending=False, kind="stable")
            .reset_index()
        )
        top = cards.head(top_k)
        found = list(top.loc[top["label"] == 1, "card_id"])
        per_day.append(len(found) / top_k)
        if remove_detected_compromised_cards:
            detected.update(found)
    mean = float(np.mean(per_day)) if per_day else math.nan
    return CardPrecision(mean=mean, per_day=per_day, compromised_cards_per_day=compromised)


def recall_at_fpr(labels: np.ndarray, scores: np.ndarray, max_fpr: float = MAX_FPR) -> float:
    """The highest true-positive rate reachable with a false-positive rate <= max_fpr."""
    fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    return float(tpr[fpr <= max_fpr].max())


def evaluate(
    labels: np.ndarray | pd.Series,
    scores: np.ndarray | pd.Series,
    card_ids: np.ndarray | pd.Series,
    event_ms: np.ndarray | pd.Series,
    top_k: int = TOP_K,
) -> dict[str, float]:
    """All metrics for one scored test set. Needs both classes present."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError("evaluation needs both fraud and genuine rows")
    days = np.asarray(event_ms, dtype=np.int64) // 86_400_000
    cp = card_precision_top_k(days, np.asarray(card_ids), y, s, top_k=top_k)
    return {
        "auc_roc": float(skm.roc_auc_score(y, s)),
        "average_precision": float(skm.average_precision_score(y, s)),
        f"card_precision_at_{top_k}": cp.mean,
        "recall_at_1pct_fpr": recall_at_fpr(y, s),
        "brier": float(skm.brier_score_loss(y, s)),
        "rows": float(len(y)),
        "positives": float(y.sum()),
    }

"""Card Precision@k follows the Fraud Detection Handbook, including its detected-cards rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import evaluate

# Day 0: A scores 0.9 and is fraud (a later genuine A scores 0.1), B 0.8 genuine, C 0.7 fraud.
# Day 1: A 0.95 fraud (already found on day 0), C 0.9 fraud, D 0.2 genuine.
DAYS = [0, 0, 0, 0, 1, 1, 1]
CARDS = ["A", "A", "B", "C", "A", "C", "D"]
LABELS = [1, 0, 0, 1, 1, 1, 0]
SCORES = [0.9, 0.1, 0.8, 0.7, 0.95, 0.9, 0.2]


def test_card_precision_counts_each_card_once_and_skips_cards_found_earlier() -> None:
    cp = evaluate.card_precision_top_k(DAYS, CARDS, LABELS, SCORES, top_k=2)
    # Day 0 top 2 cards: A (max 0.9, fraud), B -> 1/2. Day 1 without A: C (fraud), D -> 1/2.
    assert cp.per_day == [0.5, 0.5]
    assert cp.mean == 0.5
    # Compromised cards still in play each day: A and C, then only C.
    assert cp.compromised_cards_per_day == [2, 1]


def test_card_precision_without_removal_counts_a_found_card_again() -> None:
    cp = evaluate.card_precision_top_k(
        DAYS, CARDS, LABELS, SCORES, top_k=2, remove_detected_compromised_cards=False
    )
    assert cp.per_day == [0.5, 1.0]
    assert cp.mean == 0.75


def test_card_precision_at_100_divides_by_k_even_with_fewer_cards() -> None:
    cp = evaluate.card_precision_top_k(DAYS, CARDS, LABELS, SCORES)
    # Day 0: all three cards fit in the top 100, A and C are found -> 2/100. Day 1: both
    # were found already, only D is left -> 0.
    assert cp.per_day == [0.02, 0.0]
    assert cp.mean == pytest.approx(0.01)


def test_recall_at_one_percent_fpr_takes_the_best_tpr_under_the_fpr_limit() -> None:
    # 200 genuine: two score above every fraud but one, so 1 % FPR admits exactly two of them.
    genuine = [*np.linspace(0.0, 0.5, 198).tolist(), 0.95, 0.96]
    frauds = [0.99, 0.9, 0.8, 0.7]
    labels = np.array([0] * len(genuine) + [1] * len(frauds))
    scores = np.array(genuine + frauds)
    assert evaluate.recall_at_fpr(labels, scores, 0.01) == 1.0
    assert evaluate.recall_at_fpr(labels, scores, 0.0) == 0.25


def test_evaluate_reports_every_metric_and_refuses_a_single_class() -> None:
    metrics = evaluate.evaluate(
        np.array(LABELS), np.array(SCORES), np.array(CARDS), np.array(DAYS) * 86_400_000
    )
    assert set(metrics) >= {
        "auc_roc",
        "average_precision",
        "card_precision_at_100",
        "recall_at_1pct_fpr",
        "brier",
    }
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["positives"] == 4
    with pytest.raises(ValueError, match="both"):
        evaluate.evaluate(np.zeros(3), np.ones(3), np.array(["a"] * 3), np.zeros(3))

"""The training report: plots are real PNGs, the Markdown embeds them and holds the metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training import report
from training.evaluate import evaluate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def scored(seed: int, n: int = 2_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.05).astype(np.int64)
    good = np.clip(0.05 + 0.6 * labels + rng.normal(0, 0.15, n), 0, 1)
    worse = np.clip(0.05 + 0.3 * labels + rng.normal(0, 0.2, n), 0, 1)
    return labels, good, worse


def metrics_of(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    n = len(labels)
    cards = np.array([f"c{i % 300}" for i in range(n)])
    days = np.arange(n) * (7 * 86_400_000 // n)
    return evaluate(labels, scores, cards, days)


def test_report_with_a_champion_compares_both_on_every_plot_and_in_the_table(
    tmp_path: Path,
) -> None:
    labels, good, worse = scored(1)
    challenger = report.ScoredModel("challenger", good, metrics_of(labels, good))
    champion = report.ScoredModel("champion v1", worse, metrics_of(labels, worse))
    path = report.write_report(
        tmp_path / "run",
        labels,
        challenger,
        {"amount": 120.0, "card_count_1h": 40.5, "is_night": 0.0},
        champion=champion,
        summary={"test rows (frauds)": "2000 (97)"},
    )
    text = path.read_text()
    assert path == tmp_path / "run" / report.REPORT_NAME
    for name in report.PLOTS:
        data = (tmp_path / "run" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name
        assert f"]({name})" in text
    assert "| metric | challenger | champion v1 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| Average precision |"))
    ap_new = f"{challenger.metrics['average_precision']:.4f}"
    ap_old = f"{champion.metrics['average_precision']:.4f}"
    assert row == f"| Average precision | {ap_new} | {ap_old} |"
    assert "| Test rows | 2000 | 2000 |" in text
    assert "- **test rows (frauds)**: 2000 (97)" in text


def test_report_without_a_champion_says_why_and_can_be_copied(tmp_path: Path) -> None:
    labels, good, _ = scored(2)
    challenger = report.ScoredModel("challenger", good, metrics_of(labels, good))
    report.write_report(
        tmp_path / "run",
        labels,
        challenger,
        {"amount": 1.0},
        champion_problem="champion v0 not comparable: it was trained on other features",
    )
    copied = report.copy_report(tmp_path / "run", tmp_path / "copy")
    text = copied.read_text()
    assert "No champion compared: champion v0 not comparable" in text
    assert "| metric | challenger |" in text
    for name in report.PLOTS:
        assert (tmp_path / "copy" / name).read_bytes() == (tmp_path / "run" / name).read_bytes()


def test_metrics_table_marks_missing_values() -> None:
    lines = report.metrics_table([("a", {"auc_roc": 0.91234, "brier": float("nan")}), ("b", None)])
    assert lines[0] == "| metric | a | b |"
    assert "| AUC ROC | 0.9123 | n/a |" in lines
    assert "| Brier score | n/a | n/a |" in lines

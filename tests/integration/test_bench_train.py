"""`fraudctl bench train` runs end to end on a small world and ends with its JSON figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

KEYS = {
    "transactions",
    "backfill_s",
    "dataset_s",
    "fit_s",
    "evaluate_s",
    "retrain_s",
    "peak_rss_mb",
    "cores",
}


def _bench(work_dir: Path, *extra: str) -> dict[str, float]:
    cmd = [
        sys.executable, "-m", "services.cli", "bench", "train",
        "--transactions", "20000", "--work-dir", str(work_dir), *extra,
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def test_a_small_bench_prints_its_figures_and_reuses_its_data(
    redis_settings: object, tmp_path: Path
) -> None:
    first = _bench(tmp_path)
    assert KEYS <= set(first)
    # The world is sized to the request: the training window holds about that many.
    assert 15_000 <= first["transactions"] <= 25_000
    # Every transaction is a dataset row but the delay days' (all but their frauds).
    assert first["dataset_rows"] + first["dataset_skipped"] == first["transactions"]
    assert 0.2 < first["dataset_skipped"] / first["transactions"] < 0.45
    for step in ("backfill_s", "dataset_s", "fit_s", "evaluate_s"):
        assert first[step] > 0
    assert first["retrain_s"] >= first["dataset_s"] + first["fit_s"] + first["evaluate_s"]
    assert first["peak_rss_mb"] > 50
    assert first["cores"] >= 1
    assert first["auc_roc"] > 0.5
    # The fraud scenarios scale with the world (at least one compromise of each kind a day):
    # frauds in both periods, scored against final labels.
    assert 0.003 < first["fraud_share"] < 0.1
    assert first["train_positives"] > 20 and first["test_positives"] > 20
    assert 1 <= first["best_iteration"] <= 300
    assert first["history_days"] == first["history_transactions"] == 0

    again = _bench(tmp_path, "--reuse")
    # Same data, no second backfill: the first run's figure is reported again.
    assert again["transactions"] == first["transactions"]
    assert again["backfill_s"] == first["backfill_s"]
    assert again["model_version"] != first["model_version"]

    # Feature history before the window is a different store: simulated and backfilled anew,
    # and not counted in the window's transactions.
    with_history = _bench(tmp_path, "--reuse", "--history-days", "7")
    assert with_history["backfill_s"] != first["backfill_s"]
    assert with_history["history_days"] == 7
    assert 0.2 < with_history["history_transactions"] / with_history["transactions"] < 0.5
    assert (
        with_history["dataset_rows"] + with_history["dataset_skipped"]
        == with_history["transactions"]
    )

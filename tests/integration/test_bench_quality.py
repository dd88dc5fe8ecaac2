"""`fraudctl bench quality` end to end, on a small world: the JSON it prints as its last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

MODELS = ("fraudscore", "baseline_rf", "baseline_lr")


def test_bench_quality_prints_every_model_s_figures_as_its_last_line(tmp_path: Path) -> None:
    env = {**os.environ, "TRAINING_NUM_BOOST_ROUND": "80", "TRAINING_PROGRESS_EVERY": "0"}
    argv = [
        sys.executable,
        "-m",
        "services.cli",
        "bench",
        "quality",
        "--customers",
        "300",
        "--terminals",
        "600",
        "--seed",
        "3",
        "--work-dir",
        str(tmp_path),
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1_200, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])

    test = figures["data"]["test"]
    assert test["start"].startswith("2018-08-08")
    assert figures["data"]["train"]["start"].startswith("2018-07-25")
    assert 0 < test["frauds"] < test["rows"]
    for name in MODELS:
        model = figures[name]
        assert set(model) >= {"auc", "ap", "cp100"}
        assert all(0.0 <= model[k] <= 1.0 for k in ("auc", "ap", "cp100"))
    # The simulator's fraud patterns are learnable: every model beats a coin flip by far.
    for name in MODELS:
        assert figures[name]["auc"] > 0.6, name
        assert figures[name]["ap"] > 2 * test["fraud_rate"], name
        assert figures[name]["cp100"] > 0.0, name
    best = figures["best_baseline"]
    assert best in ("baseline_rf", "baseline_lr")
    assert figures["ap_ratio"] == round(figures["fraudscore"]["ap"] / figures[best]["ap"], 4)
    assert isinstance(figures["targets_met"], bool)
    assert set(figures["handbook"]) == {"baseline_rf", "baseline_lr"}
    # Nothing is left behind in the work dir: the offline store was temporary.
    assert list(tmp_path.iterdir()) == []

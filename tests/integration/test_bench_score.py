"""`fraudctl bench score` runs end to end at a low rate and ends with its JSON figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

KEYS = {
    "rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "errors",
    "fallback_rate",
    "baseline_p99_ms",
    "ratio",
}


def test_a_short_low_rate_bench_prints_its_figures_as_the_last_line(
    redis_settings: object,
) -> None:
    cmd = [
        sys.executable, "-m", "services.cli", "bench", "score",
        "--rps", "20", "--duration", "2", "--warmup", "0.5", "--cards", "50",
        "--replicas", "2",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert KEYS <= set(figures)
    assert figures["rps"] == 20.0
    assert figures["errors"] == 0
    assert figures["fallback_rate"] == 0.0
    assert figures["p50_ms"] <= figures["p99_ms"] <= figures["p999_ms"]
    assert figures["baseline_p99_ms"] > 0 and figures["ratio"] > 0
    # Two scorer processes served it, and their CPU was read.
    assert figures["replicas"] == 2
    assert figures["scorer_cpu_us_per_request"] > 0

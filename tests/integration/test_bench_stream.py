"""`fraudctl bench stream` runs end to end with tiny sizes and ends with its JSON figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import redis

from services.common.settings import RedisSettings

pytestmark = pytest.mark.integration

KEYS = {
    "events_per_s",
    "freshness_p50_ms",
    "freshness_p99_ms",
    "baseline_events_per_s",
    "ratio",
    "events",
    "rate",
    "machine",
}


def test_a_tiny_stream_bench_prints_its_figures_as_the_last_line(
    redis_settings: RedisSettings,
) -> None:
    cmd = [
        sys.executable, "-m", "services.cli", "bench", "stream",
        "--events", "300", "--rate", "50", "--duration", "2", "--baseline-events", "20",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=400, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert KEYS <= set(figures)
    assert figures["events"] == 300
    assert figures["rate"] == 50.0
    assert figures["events_per_s"] > 0
    assert figures["baseline_events_per_s"] > 0
    assert figures["ratio"] == pytest.approx(
        figures["events_per_s"] / figures["baseline_events_per_s"], rel=0.01
    )
    assert 0 < figures["freshness_p50_ms"] <= figures["freshness_p99_ms"]
    assert figures["freshness_probes"] >= 1
    # The worker's CPU was read from /proc in both phases.
    assert figures["backlog_cpu_us_per_event"] > 0
    assert figures["freshness_cpu_us_per_event"] > 0
    # The machine's Python speed reference, to compare figures across machines.
    assert figures["machine"]["python_ref_ms"] > 0
    # Its rows are gone from the shared Redis (Feast's keys end with the project's name).
    project = re.search(r"feast apply \(project (\w+)\)", result.stderr)
    assert project is not None, result.stderr[-3000:]
    client = redis.Redis(host=redis_settings.host, port=redis_settings.port, db=redis_settings.db)
    assert not list(client.scan_iter(match=f"*{project[1]}", count=10_000))

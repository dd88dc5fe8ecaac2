"""The README main command: `fraudctl demo --duration N` runs the whole stack, then stops."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.broker import free_port

pytestmark = pytest.mark.e2e


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_"))}
    env.update(overrides)
    return env


def test_demo_scores_live_traffic_with_the_model_and_exits_zero(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "services.cli", "demo",
            "--duration", "8", "--customers", "200", "--terminals", "400", "--days", "28",
            "--rate", "25", "--run-dir", str(tmp_path / "demo"),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "embedded broker" in output
    final = re.search(r"final: scored=(\d+) .* fallback_share=([\d.]+)% errors=(\d+)", output)
    assert final, output[-4000:]
    scored, fallback_share, errors = int(final[1]), float(final[2]), int(final[3])
    assert scored >= 50
    assert errors == 0
    assert fallback_share < 50.0


def test_dev_up_without_redis_says_how_to_start_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "dev", "up", "--run-dir", str(tmp_path)],
        env=_env(REDIS_PORT=str(free_port())),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Redis is not answering" in result.stderr
    assert "redis-server" in result.stderr

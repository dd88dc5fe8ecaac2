"""Loads a model artifact in a throwaway process before the scorer loads it in its own.

LightGBM's parser does not always raise on a damaged file: a half-truncated model text makes
it call std::terminate or crash with SIGSEGV, which inside the scorer would take down the
process serving payments. A child that dies instead tells the scorer to refuse the artifact.

Run as ``python -m services.scorer.model_probe MODEL_FILE``; exit 0 when the booster loaded
and predicted the sanity rows.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: A probe that has not answered by then is treated as a failed load.
PROBE_TIMEOUT_S = 60.0


def probe(model_path: Path, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the artifact loads and predicts in a child process; else why not."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "services.scorer.model_probe", str(model_path)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"loading it did not finish within {timeout_s:.0f} s"
    if done.returncode == 0:
        return None
    detail = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
    if done.returncode < 0:
        return f"loading it killed the loader with signal {-done.returncode} ({detail})"
    return f"loading it failed ({detail})"


def _main(path: str) -> int:
    import lightgbm as lgb
    import numpy as np

    from services.scorer.model import sanity_rows

    booster = lgb.Booster(model_file=path)
    rows = np.asarray(sanity_rows(), dtype=np.float64)
    if rows.shape[1] == booster.num_feature():
        booster.predict(rows, num_threads=1)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))

"""What a benchmark ran on, including how fast this machine runs Python right now.

CPU-bound figures (µs of CPU per event) move with the machine: the same stream code measured
~135 µs per event on one session's machine and 270-340 µs on the next one's. `python_ref_ms`
times a fixed pure-Python workload of the stream's kind (small lists, dict updates, sorting), so
figures from different machines can be compared through it.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

#: Iterations of the reference workload: ~0.1-0.3 s on the machines seen so far.
_REF_ITERATIONS = 200_000


def _reference_workload() -> int:
    tiles: dict[int, list[float]] = {}
    total = 0
    for i in range(_REF_ITERATIONS):
        idx = i % 64
        tile = tiles.get(idx)
        tiles[idx] = [1, float(i), 0.0] if tile is None else [tile[0] + 1, tile[1] + i, tile[2]]
        if idx == 0:
            total += len(sorted(tiles))
    return total


def python_ref_ms(repeats: int = 5) -> float:
    """CPU milliseconds of the reference workload, best of `repeats` (the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        _reference_workload()
        best = min(best, time.process_time() - started)
    return round(best * 1000, 1)


def describe() -> dict[str, Any]:
    """cpus, Python, platform, 1-minute load average and the Python speed reference."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python_ref_ms": python_ref_ms(),
    }

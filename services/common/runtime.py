"""Interpreter settings for a long-running service process (the scorer, the stream worker).

CPython's cyclic garbage collector walks every tracked object of the generations it collects.
After start-up the scorer holds hundreds of thousands of long-lived objects (Feast's registry,
protobuf descriptors, pandas and LightGBM modules, the model); an occasional full collection
walks all of them while every request thread waits for the GIL: tens of milliseconds at the
99.9th percentile. `gc.freeze()` moves what exists at start-up into a permanent generation the
collector never walks, so only objects created while serving are ever scanned.
"""

from __future__ import annotations

import gc
import logging
import sys

log = logging.getLogger(__name__)


def settle_heap() -> int:
    """Collect once, then freeze everything alive so later collections skip it; returns the
    number of objects frozen. Call once the long-lived objects exist and before the port
    opens, so the one full collection never pauses a request."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("gc: %s start-up objects frozen out of collections", frozen)
    return frozen


def set_switch_interval(seconds: float | None) -> None:
    """How long a thread may hold the GIL while others wait for it (CPython's default 5 ms).

    A request thread woken by its Redis reply waits up to this long behind a CPU-bound thread
    (span export, the Kafka producer's serialisation), which lands straight in the tail.
    """
    if seconds is not None:
        sys.setswitchinterval(seconds)
        log.info("GIL switch interval: %.2f ms", seconds * 1000)

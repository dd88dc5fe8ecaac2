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
import time
from collections.abc import Callable

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


class BatchHeap:
    """Keeps the collector off what outlives a batch: after each batch, `gc.freeze()` moves every
    object alive into the permanent generation (a constant-time list splice that also zeroes
    the young generation's count), so young collections only ever see the current batch's
    objects, and none at all while a batch allocates less than the gen0 threshold.

    Why: a stream worker's cache holds tens of thousands of card and terminal states, renewed
    by every event, and each young collection walked the batch's surviving rows and states: at
    a 50,000 threshold 13-20 % of the worker's CPU went to collections that found nothing.

    The cost: cyclic garbage frozen is never found until it is unfrozen, so every
    `full_every_s` one full collection runs over everything (its pause and what it found are
    logged). The stream's own objects form no cycles (none found in a 200,000-event run); this
    bounds what libraries' cycles could hold.
    """

    def __init__(self, full_every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.full_every_s = full_every_s
        self._clock = clock
        self._next_full = clock() + full_every_s
        self.full_collections = 0

    def after_batch(self) -> None:
        now = self._clock()
        if now >= self._next_full:
            self._next_full = now + self.full_every_s
            started = time.perf_counter()
            gc.unfreeze()
            found = gc.collect()
            gc.freeze()
            self.full_collections += 1
            log.info(
                "gc: full collection found %s unreachable objects in %.1f ms, %s frozen",
                found,
                (time.perf_counter() - started) * 1000,
                gc.get_freeze_count(),
            )
        else:
            gc.freeze()

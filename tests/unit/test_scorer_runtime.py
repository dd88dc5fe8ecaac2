"""The scorer's interpreter settings: start-up objects leave garbage collection, the GIL switch
interval follows the setting."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from services.common import runtime
from services.common.settings import ScorerSettings
from services.scorer.server import tune_runtime


@pytest.fixture
def restored() -> Iterator[None]:
    interval = sys.getswitchinterval()
    yield
    gc.unfreeze()
    sys.setswitchinterval(interval)


def test_settle_heap_freezes_what_is_alive_so_collections_skip_it(restored: None) -> None:
    long_lived = [{"n": i} for i in range(1_000)]
    assert gc.get_freeze_count() == 0
    frozen = runtime.settle_heap()
    # Frozen objects freed later leave the count, so it can only have shrunk since.
    assert frozen >= len(long_lived)
    assert 0 < gc.get_freeze_count() <= frozen
    # Frozen objects are in no generation the collector walks.
    tracked = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
    assert id(long_lived[0]) not in tracked


def test_tune_runtime_follows_the_settings(restored: None) -> None:
    tune_runtime(ScorerSettings(gc_freeze=False, gil_switch_interval_s=0.0005))
    assert gc.get_freeze_count() == 0
    assert sys.getswitchinterval() == pytest.approx(0.0005)

    default = sys.getswitchinterval()
    tune_runtime(ScorerSettings(gc_freeze=True, gil_switch_interval_s=None))
    assert gc.get_freeze_count() > 0
    assert sys.getswitchinterval() == default

"""The stream worker's heap policy: what outlives a batch leaves garbage collection, and a full
collection every `full_every_s` still finds the cyclic garbage that freezing kept."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from services.common import runtime


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> weakref.ref[Node]:
    """A two-object cycle nobody references, known only through a weak reference."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_after_a_batch_what_survived_is_frozen_and_the_young_count_restarts(
    unfrozen: None,
) -> None:
    heap = runtime.BatchHeap(full_every_s=300.0, clock=Clock())
    states = [[i, float(i)] for i in range(5_000)]
    heap.after_batch()
    assert gc.get_freeze_count() >= len(states)
    # No young collection is due: a batch starts from a zero count.
    assert gc.get_count()[0] < 100
    assert heap.full_collections == 0


def test_frozen_cycles_survive_young_collections_until_the_full_collection(
    unfrozen: None,
) -> None:
    clock = Clock()
    heap = runtime.BatchHeap(full_every_s=300.0, clock=clock)
    garbage = _cycle()
    heap.after_batch()
    gc.collect()  # collects the generations only: the frozen cycle is not seen
    assert garbage() is not None
    clock.now = 299.0
    heap.after_batch()
    assert garbage() is not None and heap.full_collections == 0
    clock.now = 300.0
    heap.after_batch()
    assert garbage() is None
    assert heap.full_collections == 1
    # Everything alive is frozen again after the full collection, and the next one is
    # `full_every_s` later.
    assert gc.get_freeze_count() > 0
    clock.now = 599.0
    heap.after_batch()
    assert heap.full_collections == 1
    clock.now = 600.0
    heap.after_batch()
    assert heap.full_collections == 2

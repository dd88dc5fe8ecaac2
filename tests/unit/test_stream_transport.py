"""The batch intake's buffer: what a handler gets from the fetched records."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types import TP

from services.stream import transport


def records(topic: str, partition: int, offsets: range) -> list[Any]:
    return [SimpleNamespace(topic=topic, partition=partition, offset=o) for o in offsets]


def test_a_handover_takes_every_partition_forward_together_in_offset_order() -> None:
    buffer = transport._Buffer()
    p0, p1 = TP("tx", 0), TP("tx", 1)
    buffer.add(p0, records("tx", 0, range(0, 1000)), now=1.0)
    buffer.add(p1, records("tx", 1, range(50, 60)), now=2.0)
    assert buffer.count == 1010
    assert buffer.since == 1.0, "the age of a buffer is its oldest record's"

    batch = buffer.take(100, now=3.0)
    # An equal share of the limit from each partition, not the first partition's backlog.
    assert [(r.partition, r.offset) for r in batch] == [(0, o) for o in range(50)] + [
        (1, o) for o in range(50, 60)
    ]
    assert buffer.count == 950
    assert transport._newest_offsets(batch) == {p0: 49, p1: 59}

    rest = buffer.take(10_000, now=4.0)
    assert [r.offset for r in rest] == list(range(50, 1000))
    assert buffer.count == 0 and not buffer.by_tp

"""Offline state parts: same-millisecond states of a key get increasing stamps, and the fast
table construction builds exactly the table pyarrow builds from the plain values."""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa
import pytest

from services.common import features, offline_store
from services.common.features import CardState, apply_transaction

T0 = 1_767_225_600_000


def test_same_millisecond_states_are_ordered_by_stamp() -> None:
    state = CardState()
    rows = []
    for tid, card, ms in [("a", "c1", T0), ("b", "c1", T0), ("c", "c2", T0), ("d", "c1", T0 + 1)]:
        apply_transaction(state, tid, ms, 1.0, 300_000)
        rows.append((card, ms, features.to_row(state)))
    table = offline_store.card_state_table(rows)
    stamps = [ts.value // 1000 for ts in table["event_timestamp"].to_pandas()]
    assert stamps == [T0 * 1000, T0 * 1000 + 1, T0 * 1000, (T0 + 1) * 1000]


def reference(
    schema: pa.Schema, columns: tuple[str, ...], rows: list[tuple[str, int, dict[str, Any]]]
) -> pa.Table:
    """The straightforward construction: one `pa.array` per column of plain Python values."""
    stamps: list[int] = []
    last: dict[str, tuple[int, int]] = {}
    for key, ms, _ in rows:
        prev_ms, prev_seq = last.get(key, (-1, -1))
        seq = prev_seq + 1 if prev_ms == ms else 0
        last[key] = (ms, seq)
        stamps.append(ms * 1000 + min(seq, 999))
    data: dict[str, list[Any]] = {
        schema.names[0]: [key for key, _, _ in rows],
        "event_timestamp": stamps,
        **{column: [row[column] for _, _, row in rows] for column in columns},
    }
    return pa.table([pa.array(data[f.name], type=f.type) for f in schema], schema=schema)


def random_value(rng: random.Random, type_: pa.DataType, nulls: bool) -> Any:
    if nulls and rng.random() < 0.05:
        return None
    if not pa.types.is_list(type_):
        return rng.randrange(-(2**62), 2**62)
    element = type_.value_type
    values: list[Any] = []
    for _ in range(rng.choice([0, 0, 1, 2, 5, 20])):
        if nulls and rng.random() < 0.02:
            values.append(None)
        elif element == pa.string():
            values.append(rng.choice(["", "t-1", "terminal-00042", "kárta-ü", "x" * 40]))
        elif element == pa.float64():
            values.append(rng.choice([0.0, -0.0, 1.5, 1e300, float("nan"), rng.random()]))
        else:
            values.append(rng.randrange(-(2**63), 2**63))
    return values


@pytest.mark.parametrize("nulls", [False, True])
@pytest.mark.parametrize("view", ["card", "terminal"])
def test_state_tables_equal_pyarrows_own_construction(view: str, nulls: bool) -> None:
    schema, columns = (
        (offline_store.CARD_STATE_SCHEMA, features.STATE_COLUMNS)
        if view == "card"
        else (offline_store.TERMINAL_STATE_SCHEMA, features.TERMINAL_STATE_COLUMNS)
    )
    rng = random.Random(f"{view}-{nulls}")
    for n in [0, 1, 2, 300]:
        rows = [
            (
                f"k{rng.randrange(5)}",
                T0 + rng.randrange(3),
                {c: random_value(rng, schema.field(c).type, nulls) for c in columns},
            )
            for _ in range(n)
        ]
        got = offline_store._state_table(schema, columns, rows)
        expected = reference(schema, columns, rows)
        assert got.schema == expected.schema
        # repr compares NaN to NaN, and tells -0.0 from 0.0.
        assert repr(got.to_pydict()) == repr(expected.to_pydict())

"""The column-by-column encoding of a batch's online rows writes exactly the per-row bytes."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from feast.value_type import ValueType

from services.common import features, offline_store
from services.stream import columnar, processor
from services.stream.online import row_encoder

NAMES = ["a", "b", "c", "d", "e"]
TYPES = [
    ValueType.INT64,
    ValueType.INT64_LIST,
    ValueType.DOUBLE_LIST,
    ValueType.STRING_LIST,
    ValueType.INT64_LIST,
]
# Field names of every length class, one longer than a one-byte RESP length.
FIELDS = [b"fa", b"f\x00b", b"x" * 200, b"d", b"e"]
SCHEMA = pa.schema(
    [
        ("a", pa.int64()),
        ("b", pa.list_(pa.int64())),
        ("c", pa.list_(pa.float64())),
        ("d", pa.list_(pa.string())),
        ("e", pa.list_(pa.int64())),
    ]
)
INTS = [0, 1, -1, 127, 128, 16_383, 16_384, 2**31, -(2**40), 2**63 - 1, -(2**63), 1_767_225_600_000]


#: The feature view's dtypes, by the Arrow type of their offline column.
VALUE_TYPES = {
    pa.int64(): ValueType.INT64,
    pa.list_(pa.int64()): ValueType.INT64_LIST,
    pa.list_(pa.float64()): ValueType.DOUBLE_LIST,
    pa.list_(pa.string()): ValueType.STRING_LIST,
}


def random_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)

    def an_int() -> int:
        return rng.choice([*INTS, rng.randrange(-(2**63), 2**63), rng.randrange(0, 300)])

    rows = []
    for i in range(n):
        rows.append(
            {
                "a": an_int(),
                "b": [an_int() for _ in range(rng.choice([0, 1, 2, 5, 40, 300]))],
                "c": [rng.uniform(-1e6, 1e6) for _ in range(rng.choice([0, 1, 3, 20]))]
                + ([math.inf, -0.0, math.nan] if i % 7 == 0 else []),
                "d": [
                    rng.choice(["", "t1", "kárta-ü", "x" * 300, "y" * rng.randrange(0, 200)])
                    for _ in range(rng.choice([0, 1, 4, 30]))
                ],
                "e": [rng.randrange(0, 128) for _ in range(rng.choice([0, 3]))],
            }
        )
    return rows


def per_row(rows: list[dict[str, Any]], prefixes: list[bytes]) -> list[bytes]:
    encode = row_encoder(NAMES, FIELDS, TYPES)
    return [prefix + encode(row) for prefix, row in zip(prefixes, rows, strict=True)]


def as_list(commands: columnar.Commands) -> list[bytes]:
    assert commands.blob == b"".join(commands[i] for i in range(len(commands)))
    return [commands[i] for i in range(len(commands))]


ROWS = random_rows(400, seed=5)
TABLE = pa.Table.from_pylist(ROWS, schema=SCHEMA)


@pytest.mark.parametrize(
    "positions",
    [
        list(range(len(ROWS))),
        list(range(7, 107)),  # a slice: offsets not starting at 0
        [5, 3, 399, 0, 5],  # a take, one row twice
        [0],
    ],
)
def test_columnar_commands_equal_the_row_encoders(positions: list[int]) -> None:
    encoder = columnar.RowsEncoder(NAMES, FIELDS, TYPES)
    if positions == list(range(7, 107)):
        table = TABLE.slice(7, 100)
    else:
        table = TABLE.take(pa.array(positions))
    prefixes = [b"P%d|" % i for i in positions]
    encoded = encoder.encode(table, prefixes)
    assert encoded is not None
    assert as_list(encoded) == per_row([ROWS[i] for i in positions], prefixes)


def test_a_table_of_several_chunks_encodes_as_one() -> None:
    encoder = columnar.RowsEncoder(NAMES, FIELDS, TYPES)
    table = pa.concat_tables([TABLE.slice(0, 10), TABLE.slice(20, 30)])
    rows = ROWS[0:10] + ROWS[20:50]
    prefixes = [b"" for _ in rows]
    encoded = encoder.encode(table, prefixes)
    assert encoded is not None
    assert as_list(encoded) == per_row(rows, prefixes)


def test_a_body_longer_than_the_frame_table_grows_it() -> None:
    encoder = columnar.RowsEncoder(NAMES, FIELDS, TYPES)
    row = {"a": 1, "b": list(range(100_000, 110_000)), "c": [], "d": ["z" * 5000], "e": []}
    encoded = encoder.encode(pa.Table.from_pylist([row], schema=SCHEMA), [b"p"])
    assert encoded is not None
    assert as_list(encoded) == per_row([row], [b"p"])


def test_a_null_cell_or_another_arrow_type_has_no_columnar_form() -> None:
    encoder = columnar.RowsEncoder(NAMES, FIELDS, TYPES)
    with_null = pa.Table.from_pylist([{**ROWS[0], "b": None}], schema=SCHEMA)
    assert encoder.encode(with_null, [b""]) is None
    null_element = pa.Table.from_pylist([{**ROWS[0], "d": ["a", None]}], schema=SCHEMA)
    assert encoder.encode(null_element, [b""]) is None
    small = [{**ROWS[0], "a": 5}]
    as_int32 = pa.Table.from_pylist(small, schema=SCHEMA.set(0, pa.field("a", pa.int32())))
    assert encoder.encode(as_int32, [b""]) is None
    assert encoder.encode(pa.Table.from_pylist(small, schema=SCHEMA), [b""]) is not None


def test_the_varints_are_protobufs() -> None:
    values = np.array([*INTS, 2**62, -5], dtype=np.int64)
    buffer, sizes = columnar.varints(values)
    expected = []
    for value in values.tolist():
        n = value + (1 << 64) if value < 0 else value
        out = bytearray()
        while n > 0x7F:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        expected.append(bytes(out))
    assert buffer.tobytes() == b"".join(expected)
    assert sizes.tolist() == [len(e) for e in expected]


def test_a_real_batch_of_card_and_terminal_states_encodes_as_its_rows() -> None:
    """The stream's own tables: the offline history parts, final row per key taken."""
    t0 = 1_767_225_600_000
    rng = random.Random(11)
    txns = [
        processor.ValidTransaction(
            f"x{i}",
            f"c{rng.randrange(30)}",
            f"t{rng.randrange(8)}",
            rng.uniform(1, 900),
            t0 + i * 7_000,
        )
        for i in range(600)
    ]
    result = processor.fold_batch(txns, {}, 300_000)
    table = offline_store.card_state_table(result.state_rows)
    positions = result.final_positions()
    keys = list(result.states)
    final = table.take(pa.array([positions[k] for k in keys]))
    names = list(features.STATE_COLUMNS)
    fields = [b"f%d" % i for i in range(len(names))]
    types = [VALUE_TYPES[offline_store.CARD_STATE_SCHEMA.field(n).type] for n in names]
    encoded = columnar.RowsEncoder(names, fields, types).encode(final, [b""] * len(keys))
    assert encoded is not None
    rows = result.final_rows()
    encode = row_encoder(names, fields, types)
    assert as_list(encoded) == [encode(rows[k]) for k in keys]

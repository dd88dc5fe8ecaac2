"""The stream's hand-rolled ValueProto encoders write exactly the bytes protobuf writes."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import (
    PYTHON_LIST_VALUE_TYPE_TO_PROTO_VALUE,
    PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE,
)
from feast.value_type import ValueType

from services.stream.online import value_encoder


def reference(value_type: ValueType, value: Any) -> bytes:
    """The straightforward encoding: one ValueProto per cell (what Feast's push builds)."""
    if value is None:
        return b""
    if value_type in PYTHON_LIST_VALUE_TYPE_TO_PROTO_VALUE:
        list_type, list_field, _ = PYTHON_LIST_VALUE_TYPE_TO_PROTO_VALUE[value_type]
        kwargs: dict[str, Any] = {list_field: list_type(val=value)}
    else:
        scalar_field, convert, _ = PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE[value_type]
        kwargs = {scalar_field: convert(value)}
    return bytes(ValueProto(**kwargs).SerializeToString())


rng = random.Random(3)
INTS = [0, 1, -1, 127, 128, 2**31, -(2**40), 2**63 - 1, -(2**63), 1_767_225_600_000]
CASES: list[tuple[ValueType, Any]] = [
    (ValueType.INT64, None),
    *((ValueType.INT64, n) for n in INTS),
    (ValueType.INT64_LIST, None),
    (ValueType.INT64_LIST, []),
    (ValueType.INT64_LIST, INTS),
    (ValueType.INT64_LIST, [0, 1, 5, 127]),
    (ValueType.INT64_LIST, [3, 128]),
    (ValueType.INT64_LIST, [2, -1]),
    (ValueType.INT64_LIST, list(range(128)) * 3),
    (ValueType.INT64_LIST, [rng.randrange(-(2**63), 2**63) for _ in range(300)]),
    (ValueType.DOUBLE_LIST, None),
    (ValueType.DOUBLE_LIST, []),
    (ValueType.DOUBLE_LIST, [0.0, -0.0, 1.5, 1e300, -1e-300, math.inf, 12345.678]),
    (ValueType.DOUBLE_LIST, [3, 7]),
    (ValueType.DOUBLE_LIST, [rng.uniform(-1e6, 1e6) for _ in range(200)]),
    (ValueType.STRING_LIST, None),
    (ValueType.STRING_LIST, []),
    (ValueType.STRING_LIST, ["", "t1", "kárta-ü", "x" * 300]),
    (ValueType.DOUBLE, 2.5),
    (ValueType.STRING, "abc"),
]


@pytest.mark.parametrize(("value_type", "value"), CASES)
def test_fast_encoders_match_protobuf(value_type: ValueType, value: Any) -> None:
    assert value_encoder(value_type)(value) == reference(value_type, value)


def test_nan_doubles_keep_their_bits() -> None:
    encoded = value_encoder(ValueType.DOUBLE_LIST)([math.nan, 1.0])
    decoded = ValueProto.FromString(encoded).double_list_val.val
    assert math.isnan(decoded[0]) and decoded[1] == 1.0
    assert encoded == reference(ValueType.DOUBLE_LIST, [math.nan, 1.0])


@pytest.mark.parametrize("value_type", [ValueType.INT64_LIST, ValueType.STRING_LIST])
def test_cached_list_encodings_stay_exact_when_the_cache_fills(
    value_type: ValueType, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.stream import online

    # A tiny cache: hits, misses and the clearing on overflow all happen within a few rows.
    monkeypatch.setattr(online, "_CACHE_MAX", 5)
    encode = value_encoder(value_type)
    pool: list[Any] = (
        [0, 127, 128, 300, -5, 2**40, 1_767_225_600_000, 29_500_000]
        if value_type is ValueType.INT64_LIST
        else ["", "t1", "kárta-ü", "x" * 300, "card-7", "a", "b"]
    )
    for _ in range(200):
        value = [rng.choice(pool) for _ in range(rng.randrange(1, 12))]
        assert encode(value) == reference(value_type, value)


@pytest.mark.parametrize(
    "stamp_us",
    [0, 1, 999_999, 1_000_000, 1_767_225_600_000_000, 1_767_225_600_123_456, -1, -1_500_000],
)
def test_write_timestamps_match_protobuf_and_read_back(stamp_us: int) -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    from services.stream.online import timestamp_bytes, timestamp_us

    seconds, micros = divmod(stamp_us, 1_000_000)
    expected = Timestamp(seconds=seconds, nanos=micros * 1000).SerializeToString()
    assert timestamp_bytes(stamp_us) == expected
    assert timestamp_us(timestamp_bytes(stamp_us)) == stamp_us


def resp_arguments(arguments: list[bytes]) -> bytes:
    """Arguments as redis-py packs them: each one a RESP bulk string."""
    from redis.connection import PythonRespSerializer

    # Packed as the tail of a command: drop the array header redis-py puts first.
    packed = b"".join(PythonRespSerializer(6000, lambda a: a).pack(b"X", *arguments))
    return packed.split(b"$1\r\nX\r\n", 1)[1]


def test_a_row_encodes_as_its_fields_each_followed_by_its_columns_protobuf_bytes() -> None:
    from services.stream.online import row_encoder

    types = {
        "last": ValueType.INT64,
        "idx": ValueType.INT64_LIST,
        "amt": ValueType.DOUBLE_LIST,
        "ids": ValueType.STRING_LIST,
    }
    fields = [f"field-{name}".encode() for name in types]
    encode = row_encoder(list(types), fields, list(types.values()))
    pools: dict[ValueType, list[Any]] = {
        ValueType.INT64: [n for n in INTS if n >= 0],
        ValueType.INT64_LIST: INTS,
        ValueType.DOUBLE_LIST: [0.5, -3.25, 1e300],
        ValueType.STRING_LIST: ["t1", "", "kárta-ü", "x" * 300],
    }
    for _ in range(300):
        row: dict[str, Any] = {}
        for name, value_type in types.items():
            pool = pools[value_type]
            if rng.random() < 0.1:
                row[name] = None
            elif value_type is ValueType.INT64:
                row[name] = rng.choice(pool)
            else:
                row[name] = [rng.choice(pool) for _ in range(rng.randrange(0, 20))]
        expected: list[bytes] = []
        for field, (name, value_type) in zip(fields, types.items(), strict=True):
            expected += [field, reference(value_type, row[name])]
        assert encode(row) == resp_arguments(expected)


def test_a_single_column_view_encodes_too() -> None:
    from services.stream.online import row_encoder

    encode = row_encoder(["n"], [b"f"], [ValueType.INT64])
    assert encode({"n": 300}) == resp_arguments([b"f", reference(ValueType.INT64, 300)])

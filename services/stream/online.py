"""The stream's online reads and writes, straight to Feast's Redis online store.

`FeatureStore.push` spends ~5.7 ms per call and most of a large batch's time outside Redis
(DataFrame -> Arrow -> Python -> ValueProto per cell). This module writes the same bytes with
one pipelined HSET per entity, the mirror of the scorer's reader (services/scorer/redis_reader):
Feast stays the source of truth for the key (`serialize_entity_key` + project), the field names
(`_mmh3("<view>:<feature>")`, `_ts:<view>`), the feature list and each feature's ValueProto
field (from the registered view's dtypes). Like Feast's own write it first reads the stored
timestamps and skips a row not newer than the stored one, so a stale writer (a worker that lost
its partition mid-batch) cannot roll a key back. A test proves the bytes equal a Feast push.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import (
    PYTHON_LIST_VALUE_TYPE_TO_PROTO_VALUE,
    PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE,
)
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from services.scorer.redis_reader import (
    RedisOnlineReader,
    ViewLayout,
    decode_value,
    parse_connection_string,
)

if TYPE_CHECKING:
    from feast import FeatureStore

Encoder = Callable[[Any], bytes]


_ONE_BYTE_VARINTS = tuple(bytes((n,)) for n in range(128))


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint; negatives as their 64-bit two's complement (int64)."""
    if 0 <= n < 128:
        # Most lengths and small counts: no loop, no new object.
        return _ONE_BYTE_VARINTS[n]
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


#: Entries kept by each of the encoders' caches below before it starts afresh. The values they
#: see repeat from row to row (tile indices, terminal ids, a card's recent ids), and a dict
#: lookup costs a fraction of building the bytes or a protobuf list.
_CACHE_MAX = 200_000


class _BytesCache(dict[Any, bytes]):
    """value -> its encoding, computed on a miss; bounded by dropping everything when full."""

    def __init__(self, encode: Callable[[Any], bytes]) -> None:
        super().__init__()
        self.encode = encode

    def __missing__(self, value: Any) -> bytes:
        if len(self) >= _CACHE_MAX:
            self.clear()
        encoded = self[value] = self.encode(value)
        return encoded


def _string_element(value: str) -> bytes:
    # An element of a repeated string `val` (field 1): its key, byte length, UTF-8 bytes.
    raw = value.encode()
    return b"\x0a" + _varint(len(raw)) + raw


def _field_tag(name: str, wire_type: int) -> bytes:
    return _varint(ValueProto.DESCRIPTOR.fields_by_name[name].number << 3 | wire_type)


_LENGTH_DELIMITED = 2
_VARINT = 0


def value_encoder(value_type: ValueType) -> Encoder:
    """A feature value -> serialized ValueProto, byte for byte as Feast's push encodes it.

    Building a ValueProto per cell cost more than the rest of the online write: doubles are
    packed with `struct`, other lists serialize only their inner message (the `Value` wrapper
    is one tag and a length), and empty lists are a constant. A unit test checks every path
    against the ValueProto encoding.
    """
    if value_type in PYTHON_LIST_VALUE_TYPE_TO_PROTO_VALUE:
        list_type, list_field, _ = PYTHON_LIST_VALUE_TYPE_TO_PROTO_VALUE[value_type]
        tag = _field_tag(list_field, _LENGTH_DELIMITED)
        # A set oneof member is written even when empty: the tag and a zero length.
        empty = tag + b"\x00"
        if list_field == "double_list_val":
            # Packed repeated double: key of `val` (field 1), byte length, little-endian values.
            def encode_doubles(value: Any) -> bytes:
                if value is None:
                    return b""
                if not len(value):
                    return empty
                body = struct.pack(f"<{len(value)}d", *value)
                inner = b"\x0a" + _varint(len(body)) + body
                return tag + _varint(len(inner)) + inner

            return encode_doubles

        def encode_list(value: Any) -> bytes:
            if value is None:
                return b""
            if not len(value):
                return empty
            inner = list_type(val=value).SerializeToString()
            return tag + _varint(len(inner)) + inner

        if list_field == "string_list_val":
            elements = _BytesCache(_string_element)

            def encode_strings(value: Any) -> bytes:
                if value is None:
                    return b""
                if not len(value):
                    return empty
                inner = b"".join(map(elements.__getitem__, value))
                return tag + _varint(len(inner)) + inner

            return encode_strings

        if list_field != "int64_list_val":
            return encode_list

        varints = _BytesCache(lambda n: _varint(int(n)))

        def encode_ints(value: Any) -> bytes:
            if value is None:
                return b""
            if not len(value):
                return empty
            if min(value) >= 0 and max(value) < 128:
                # Tile counts: every value below 128 is its own one-byte varint.
                body = bytes(value)
            else:
                # Packed repeated int64; tile indices and event times repeat across rows.
                body = b"".join(map(varints.__getitem__, value))
            inner = b"\x0a" + _varint(len(body)) + body
            return tag + _varint(len(inner)) + inner

        return encode_ints
    if value_type in PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE:
        scalar_field, convert, _ = PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE[value_type]
        if scalar_field == "int64_val":
            int_tag = _field_tag(scalar_field, _VARINT)

            def encode_int64(value: Any) -> bytes:
                if value is None:
                    return b""
                return int_tag + _varint(int(convert(value)))

            return encode_int64

        def encode_scalar(value: Any) -> bytes:
            if value is None:
                return b""
            kwargs: dict[str, Any] = {scalar_field: convert(value)}
            return bytes(ValueProto(**kwargs).SerializeToString())

        return encode_scalar
    raise ValueError(f"no fast encoder for feature type {value_type}")


def timestamp_bytes(stamp_us: int) -> bytes:
    """The `_ts:<view>` value: a protobuf Timestamp, as Feast stores the write's time."""
    seconds, micros = divmod(stamp_us, 1_000_000)
    if seconds < 0:
        return bytes(Timestamp(seconds=seconds, nanos=micros * 1000).SerializeToString())
    # `seconds` (field 1) and `nanos` (field 2) as varints, each left out when 0 (proto3).
    out = b"\x08" + _varint(seconds) if seconds else b""
    return out + b"\x10" + _varint(micros * 1000) if micros else out


def timestamp_us(raw: bytes | None) -> int:
    """Inverse of `timestamp_bytes`; 0 when nothing is stored."""
    if not raw:
        return 0
    ts = Timestamp()
    ts.ParseFromString(raw)
    return int(ts.seconds) * 1_000_000 + int(ts.nanos) // 1000


@dataclass(frozen=True)
class ViewWriter:
    layout: ViewLayout
    #: Per feature of `layout.features`, in order.
    encoders: tuple[Encoder, ...]
    ts_field: bytes


@dataclass(frozen=True)
class Stored:
    """One entity's stored row (None where absent) and its write time (0: never written)."""

    row: dict[str, Any]
    stamp_us: int


class RedisOnlineStore:
    """Reads and writes whole rows of a Feast project's feature views in its Redis store."""

    def __init__(
        self,
        client: redis.Redis,
        project: str,
        layouts: Mapping[str, ViewLayout],
        value_types: Mapping[str, Sequence[ValueType]],
        key_serialization_version: int = 3,
        key_ttl_seconds: int | None = None,
    ) -> None:
        self.client = client
        self.key_ttl_seconds = key_ttl_seconds
        # The reader builds (and caches) Feast's entity keys.
        self._keys = RedisOnlineReader(client, project, layouts, key_serialization_version)
        self.views = {
            name: ViewWriter(
                layout=layout,
                encoders=tuple(value_encoder(t) for t in value_types[name]),
                ts_field=layout.fields[-1],
            )
            for name, layout in layouts.items()
        }

    @classmethod
    def from_store(cls, store: FeatureStore, views: Sequence[str]) -> RedisOnlineStore:
        from services.scorer.redis_reader import _stored_name

        layouts: dict[str, ViewLayout] = {}
        value_types: dict[str, list[ValueType]] = {}
        for name in views:
            view = store.get_feature_view(name)
            layouts[name] = ViewLayout.of(view, _stored_name(view, store))
            value_types[name] = [f.dtype.to_value_type() for f in view.features]
        config = store.config.online_store
        options = parse_connection_string(str(getattr(config, "connection_string", "")))
        client = redis.Redis(**options)
        return cls(
            client,
            store.project,
            layouts,
            value_types,
            store.config.entity_key_serialization_version,
            getattr(config, "key_ttl_seconds", None),
        )

    def key(self, view: str, entity: str) -> bytes:
        return self._keys.redis_key(view, entity)

    def read(self, view: str, entities: Sequence[str]) -> list[Stored]:
        """Every feature of each entity and its stored write time, in one round trip."""
        writer = self.views[view]
        fields = writer.layout.fields
        with self.client.pipeline(transaction=False) as pipe:
            for entity in entities:
                pipe.execute_command("HMGET", self.key(view, entity), *fields)
            replies = pipe.execute()
        names = writer.layout.features
        return [
            Stored(
                row={name: decode_value(raw) for name, raw in zip(names, values, strict=False)},
                stamp_us=timestamp_us(values[-1]),
            )
            for values in replies
        ]

    def write(self, view: str, rows: Sequence[tuple[str, int, Mapping[str, Any]]]) -> int:
        """(entity, stamp in epoch µs, feature row) -> one HSET each, skipping any not newer
        than what is stored (or than an earlier row of the same entity here); rows written."""
        if not rows:
            return 0
        writer = self.views[view]
        keys = [self.key(view, entity) for entity, _, _ in rows]
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.execute_command("HMGET", key, writer.ts_field)
            stored = [timestamp_us(reply[0]) for reply in pipe.execute()]
        latest: dict[bytes, int] = {}
        names = writer.layout.features
        fields = writer.layout.fields
        written = 0
        with self.client.pipeline(transaction=False) as pipe:
            for key, previous, (_, stamp_us, row) in zip(keys, stored, rows, strict=True):
                if stamp_us <= max(previous, latest.get(key, 0)):
                    continue
                latest[key] = stamp_us
                # HSET's field/value pairs built flat: redis-py's `mapping=` copies them again.
                args: list[bytes] = [writer.ts_field, timestamp_bytes(stamp_us)]
                for name, field, encode in zip(names, fields, writer.encoders, strict=False):
                    args.append(field)
                    args.append(encode(row[name]))
                pipe.execute_command("HSET", key, *args)
                if self.key_ttl_seconds:
                    pipe.expire(key, self.key_ttl_seconds)
                written += 1
            if written:
                pipe.execute()
        return written

    def close(self) -> None:
        self.client.close()

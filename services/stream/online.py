"""The stream's online reads and writes, straight to Feast's Redis online store.

`FeatureStore.push` spends ~5.7 ms per call and most of a large batch's time outside Redis
(DataFrame -> Arrow -> Python -> ValueProto per cell). This module writes the same bytes with
one pipelined round trip, the mirror of the scorer's reader (services/scorer/redis_reader):
Feast stays the source of truth for the key (`serialize_entity_key` + project), the field names
(`_mmh3("<view>:<feature>")`, `_ts:<view>`), the feature list and each feature's ValueProto
field (from the registered view's dtypes). Like Feast's own write it skips a row not newer than
the stored one, so a stale writer (a worker that lost its partition mid-batch) cannot roll a key
back; here the compare and the write are one Lua script per row, atomic in Redis, where Feast
reads first and writes later. A test proves the bytes equal a Feast push.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import call, itemgetter
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import redis
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import (
    PYTHON_LIST_VALUE_TYPE_TO_PROTO_VALUE,
    PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE,
)
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp
from redis.exceptions import NoScriptError, ResponseError

from services.scorer.redis_reader import (
    RedisOnlineReader,
    ViewLayout,
    decode_value,
    parse_connection_string,
    round_trip,
)
from services.stream import columnar

if TYPE_CHECKING:
    from feast import FeatureStore

Encoder = Callable[[Any], bytes]
V = TypeVar("V")


_varint = columnar.varint


#: Entries kept by each of the encoders' caches below before it starts afresh. The values they
#: see repeat from row to row (tile indices, terminal ids, a card's recent ids), and a dict
#: lookup costs a fraction of building the bytes or a protobuf list.
_CACHE_MAX = 200_000


class _Memo(dict[Any, V]):
    """key -> `make(key)`, computed on a miss; bounded by dropping everything when full."""

    def __init__(self, make: Callable[[Any], V]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: Any) -> V:
        if len(self) >= _CACHE_MAX:
            self.clear()
        made = self[key] = self.make(key)
        return made


def _string_element(value: str) -> bytes:
    # An element of a repeated string `val` (field 1): its key, byte length, UTF-8 bytes.
    raw = value.encode()
    return b"\x0a" + _varint(len(raw)) + raw


def _field_tag(name: str, wire_type: int) -> bytes:
    return _varint(ValueProto.DESCRIPTOR.fields_by_name[name].number << 3 | wire_type)


_LENGTH_DELIMITED = 2
_VARINT = 0


def _length_prefixed(tag: bytes, inner_length: int) -> bytes:
    # A length-delimited field's key and length: everything before its payload.
    return tag + _varint(inner_length)


def _packed_header(tag: bytes, body_length: int) -> bytes:
    # A list message holding only its packed `val` (field 1): the list's key and length, then
    # `val`'s key and length. Everything before the packed body, which is `body_length` long.
    inner_length = 1 + len(_varint(body_length)) + body_length
    return tag + _varint(inner_length) + b"\x0a" + _varint(body_length)


def _double_packer(tag: bytes, n: int) -> Callable[..., bytes]:
    """n doubles -> their whole ValueProto, header included, in one `struct` call."""
    header = _packed_header(tag, 8 * n) if n else tag + b"\x00"
    return functools.partial(struct.Struct(f"<{len(header)}s{n}d").pack, header)


def value_encoder(value_type: ValueType) -> Encoder:
    """A feature value -> serialized ValueProto, byte for byte as Feast's push encodes it.

    Building a ValueProto per cell cost more than the rest of the online write: doubles are
    packed with `struct`, other lists serialize only their inner message (the `Value` wrapper
    is one tag and a length), empty lists are a constant, and every header that depends only on
    a length is built once per length. A unit test checks every path against the ValueProto
    encoding.
    """
    if value_type in PYTHON_LIST_VALUE_TYPE_TO_PROTO_VALUE:
        list_type, list_field, _ = PYTHON_LIST_VALUE_TYPE_TO_PROTO_VALUE[value_type]
        tag = _field_tag(list_field, _LENGTH_DELIMITED)
        # A set oneof member is written even when empty: the tag and a zero length.
        empty = tag + b"\x00"
        if list_field == "double_list_val":
            # Packed repeated double: a row's list length picks a ready-made packer.
            packers = _Memo(functools.partial(_double_packer, tag))

            def encode_doubles(value: Any) -> bytes:
                if value is None:
                    return b""
                return packers[len(value)](*value)

            return encode_doubles

        if list_field == "string_list_val":
            elements = _Memo(_string_element)
            string_headers = _Memo(functools.partial(_length_prefixed, tag))

            def encode_strings(value: Any) -> bytes:
                if value is None:
                    return b""
                inner = b"".join(map(elements.__getitem__, value))
                return string_headers[len(inner)] + inner

            return encode_strings

        if list_field != "int64_list_val":

            def encode_list(value: Any) -> bytes:
                if value is None:
                    return b""
                if not len(value):
                    return empty
                inner = list_type(val=value).SerializeToString()
                return tag + _varint(len(inner)) + inner

            return encode_list

        varints = _Memo(lambda n: _varint(int(n)))
        int_headers = _Memo(functools.partial(_packed_header, tag))

        def encode_ints(value: Any) -> bytes:
            if value is None:
                return b""
            if not len(value):
                return empty
            if max(value) < 128 and min(value) >= 0:
                # Tile counts: every value below 128 is its own one-byte varint (`bytes` of
                # an `array` would be its machine bytes, not its values).
                body = bytes(value if type(value) is list else list(value))
            else:
                # Packed repeated int64; tile indices and event times repeat across rows.
                body = b"".join(map(varints.__getitem__, value))
            return int_headers[len(body)] + body

        return encode_ints
    if value_type in PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE:
        scalar_field, convert, _ = PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE[value_type]
        if scalar_field == "int64_val":
            int_tag = _field_tag(scalar_field, _VARINT)

            def encode_int64(value: Any) -> bytes:
                if type(value) is int:
                    # The stream's own ints skip Feast's converter (it looks for pd.Timestamp).
                    return int_tag + _varint(value)
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


#: "$<length>\r\n": the head of a RESP bulk string, one per length seen.
_BULK_HEADS = _Memo(lambda n: b"$%d\r\n" % n)


def _bulk(value: bytes) -> bytes:
    """`value` as a RESP bulk string, the form of every argument of a command sent to Redis."""
    return _BULK_HEADS[len(value)] + value + b"\r\n"


def row_encoder(
    names: Sequence[str], fields: Sequence[bytes], value_types: Sequence[ValueType]
) -> Callable[[Mapping[str, Any]], bytes]:
    """A whole row -> HSET's field/value arguments, already in the wire form redis-py would
    pack them into: `fields[i]`, then the encoded `row[names[i]]`, each a RESP bulk string.

    The columns are fetched, encoded, framed and interleaved with their fields by C loops
    (itemgetter, map, slice assignment, join): per column, only its encoder runs in Python.
    Packing the ~40 arguments of a card row through redis-py (hiredis) cost a third again
    as much as encoding them.
    """
    encoders = [value_encoder(t) for t in value_types]
    fetch = itemgetter(*names) if len(names) > 1 else lambda row: (row[names[0]],)
    # Per column: its field, the value's bulk head, the value, the value's terminator.
    template: list[bytes] = []
    for field in fields:
        template += [_bulk(field), b"", b"", b"\r\n"]

    def encode_row(row: Mapping[str, Any]) -> bytes:
        values = list(map(call, encoders, fetch(row)))
        parts = template.copy()
        parts[2::4] = values
        parts[1::4] = map(_BULK_HEADS.__getitem__, map(len, values))
        return b"".join(parts)

    return encode_row


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


#: Writes one row only if it is newer than the stored one, atomically: no other writer can land
#: between the compare and the write. KEYS[1]: the entity's hash; ARGV[1]: its `_ts:<view>`
#: field; ARGV[2]: the row's stamp, a serialized protobuf Timestamp (what Feast stores there);
#: ARGV[3]: a TTL in seconds, 0 for none; ARGV[4...]: the row's field/value pairs. Returns 1 when
#: it wrote, 0 when the stored stamp is as new or newer (a missing stamp counts as 0).
WRITE_IF_NEWER = """
local function varint(s, i)
  local value, scale, first = 0, 1, i
  while true do
    local b = string.byte(s, i)
    i = i + 1
    if b < 128 then
      value = value + b * scale
      break
    end
    value = value + (b - 128) * scale
    scale = scale * 128
  end
  if i - first == 10 then
    -- A negative int64 (ten bytes, two's complement): exact from its complement's low 63 bits.
    local complement
    complement, scale = 0, 1
    for j = first, first + 8 do
      complement = complement + (127 - string.byte(s, j) % 128) * scale
      scale = scale * 128
    end
    value = -complement - 1
  end
  return value, i
end

local function stamp(s)
  local seconds, nanos, i = 0, 0, 1
  if not s then
    return seconds, nanos
  end
  while i <= #s do
    local tag = string.byte(s, i)
    local value
    value, i = varint(s, i + 1)
    if tag == 8 then
      seconds = value
    elseif tag == 16 then
      nanos = value
    else
      return error("not a protobuf Timestamp: field tag " .. tag)
    end
  end
  return seconds, nanos
end

local stored_s, stored_n = stamp(redis.call("HGET", KEYS[1], ARGV[1]))
local new_s, new_n = stamp(ARGV[2])
if new_s < stored_s or (new_s == stored_s and new_n <= stored_n) then
  return 0
end
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2], unpack(ARGV, 4))
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call("EXPIRE", KEYS[1], ttl)
end
return 1
"""
WRITE_IF_NEWER_SHA = hashlib.sha1(WRITE_IF_NEWER.encode()).hexdigest()


@dataclass(frozen=True)
class ViewWriter:
    layout: ViewLayout
    #: A row -> the field/value pairs of its features, as RESP bulk strings.
    encode_row: Callable[[Mapping[str, Any]], bytes]
    ts_field: bytes
    #: The same for whole tables of rows, column by column (None: a type it cannot encode).
    encode_table: columnar.RowsEncoder | None = None


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
        #: Per view, entity -> its key as a RESP bulk string (entities recur batch after batch).
        self._bulk_keys: dict[str, _Memo[bytes]] = {
            name: _Memo(functools.partial(self._bulk_key, name)) for name in layouts
        }
        self.views = {
            name: ViewWriter(
                layout=layout,
                encode_row=row_encoder(layout.features, layout.fields[:-1], value_types[name]),
                ts_field=layout.fields[-1],
                encode_table=columnar.RowsEncoder(
                    layout.features, layout.fields[:-1], value_types[name]
                )
                if columnar.supports(value_types[name])
                else None,
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

    def _bulk_key(self, view: str, entity: str) -> bytes:
        return _bulk(self.key(view, entity))

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
        """(entity, stamp in epoch µs, feature row) -> each row written unless not newer than
        what is stored (or than an earlier row of the same entity here); rows written.

        One round trip: a compare-and-set script per row, run in order, so a stale writer (a
        worker that lost its partition mid-batch) cannot roll a key back, even one racing us.
        """
        if not rows:
            return 0
        writer = self.views[view]
        prefix = self._prefixer(view)
        return self._send(
            [prefix(entity, stamp_us) + writer.encode_row(row) for entity, stamp_us, row in rows]
        )

    def write_table(
        self, view: str, entities: Sequence[str], stamps_us: Sequence[int], table: pa.Table
    ) -> int:
        """`write` of row i of `table` (columns named as the view's features) for
        `entities[i]` stamped `stamps_us[i]`, encoded column by column (`columnar`): the same
        bytes as `write`, for a fraction of the CPU."""
        if not entities:
            return 0
        writer = self.views[view]
        prefix = self._prefixer(view)
        prefixes = [prefix(e, s) for e, s in zip(entities, stamps_us, strict=True)]
        encoded = (
            writer.encode_table.encode(table, prefixes) if writer.encode_table is not None else None
        )
        if encoded is None:
            # A null cell, or a type without a columnar form: row by row.
            rows = table.select(list(writer.layout.features)).to_pylist()
            return self._send(
                [p + writer.encode_row(r) for p, r in zip(prefixes, rows, strict=True)]
            )
        return self._send(encoded)

    def _prefixer(self, view: str) -> Callable[[str, int], bytes]:
        """(entity, stamp) -> the head of its write: EVALSHA <sha> 1 <key> <ts field> <stamp>
        <ttl>, packed by hand; the constant arguments once, a batch's few distinct stamps
        once each."""
        writer = self.views[view]
        head = b"*%d\r\n" % (7 + len(writer.layout.features) * 2)
        head += _bulk(b"EVALSHA") + _bulk(WRITE_IF_NEWER_SHA.encode()) + _bulk(b"1")
        ts_field = _bulk(writer.ts_field)
        ttl = _bulk(b"%d" % (self.key_ttl_seconds or 0))
        stamps = _Memo(lambda stamp_us: _bulk(timestamp_bytes(stamp_us)))
        keys = self._bulk_keys[view]

        def prefix(entity: str, stamp_us: int) -> bytes:
            return b"".join((head, keys[entity], ts_field, stamps[stamp_us], ttl))

        return prefix

    def _send(self, commands: Sequence[bytes] | columnar.Commands) -> int:
        """Run the write commands in one round trip; rows written."""
        replies = self._round_trip(commands)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # A new or restarted Redis: load the script, then run what it refused, in order.
            self.client.script_load(WRITE_IF_NEWER)
            for i, reply in zip(
                missing, self._round_trip([commands[i] for i in missing]), strict=True
            ):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return sum(replies)

    def _round_trip(self, commands: Sequence[bytes] | columnar.Commands) -> list[Any]:
        """Send packed commands and read every reply, an error reply as its exception."""
        blob = commands.blob if isinstance(commands, columnar.Commands) else b"".join(commands)
        return round_trip(self.client, lambda _conn: [blob], len(commands), keep_errors=True)

    def close(self) -> None:
        self.client.close()

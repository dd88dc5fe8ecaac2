"""The stream's online write is a compare-and-set in Redis: a row lands only when it is newer
than the stored one, whoever stored that, and a Redis without the script gets it loaded."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
import redis
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.settings import RedisSettings
from services.scorer.redis_reader import ViewLayout
from services.stream import online
from services.stream.online import RedisOnlineStore, timestamp_bytes, value_encoder

pytestmark = pytest.mark.integration

VIEW = "v"
TYPES = {"n": ValueType.INT64, "amt": ValueType.DOUBLE_LIST, "ids": ValueType.STRING_LIST}
T0_US = 1_767_225_600_000_000


def store_of(settings: RedisSettings, key_ttl_seconds: int | None = None) -> RedisOnlineStore:
    layout = ViewLayout(
        name=VIEW,
        join_keys=("id",),
        join_key_types=(ValueType.STRING,),
        features=tuple(TYPES),
        fields=(*(f"f:{name}".encode() for name in TYPES), f"_ts:{VIEW}".encode()),
    )
    client = redis.Redis(host=settings.host, port=settings.port, db=settings.db)
    project = f"cas_{uuid.uuid4().hex[:8]}"
    return RedisOnlineStore(
        client, project, {VIEW: layout}, {VIEW: list(TYPES.values())}, 3, key_ttl_seconds
    )


@pytest.fixture()
def store(redis_settings: RedisSettings) -> Iterator[RedisOnlineStore]:
    store = store_of(redis_settings)
    yield store
    store.close()


def row(n: int) -> dict[str, Any]:
    return {"n": n, "amt": [n / 2, 1.5], "ids": [f"t{n}", "t0"]}


def stored_n(store: RedisOnlineStore, entity: str) -> int | None:
    (stored,) = store.read(VIEW, [entity])
    return stored.row["n"]


def set_stamp(store: RedisOnlineStore, entity: str, raw: bytes) -> None:
    """Another writer's `_ts:<view>` value."""
    store.client.execute_command("HSET", store.key(VIEW, entity), store.views[VIEW].ts_field, raw)


def ttl(store: RedisOnlineStore, entity: str) -> int:
    return int(store.client.execute_command("TTL", store.key(VIEW, entity)))


def test_a_row_lands_with_the_exact_bytes_of_its_columns_and_stamp(
    store: RedisOnlineStore,
) -> None:
    assert store.write(VIEW, [("e", T0_US, row(7))]) == 1
    stored = store.client.execute_command("HGETALL", store.key(VIEW, "e"))
    layout = store.views[VIEW].layout
    expected = {
        field: value_encoder(t)(row(7)[name])
        for name, field, t in zip(layout.features, layout.fields, TYPES.values(), strict=False)
    }
    assert stored == {**expected, layout.fields[-1]: timestamp_bytes(T0_US)}
    assert ttl(store, "e") == -1


def test_a_row_not_newer_than_the_stored_one_is_skipped(store: RedisOnlineStore) -> None:
    assert store.write(VIEW, [("e", T0_US, row(1))]) == 1
    assert store.write(VIEW, [("e", T0_US, row(2)), ("e", T0_US - 1, row(3))]) == 0
    assert stored_n(store, "e") == 1
    assert store.write(VIEW, [("e", T0_US + 1, row(4))]) == 1
    assert stored_n(store, "e") == 4


def test_rows_of_one_entity_in_one_call_apply_in_order(store: RedisOnlineStore) -> None:
    rows = [("e", T0_US + 5, row(1)), ("e", T0_US + 3, row(2)), ("e", T0_US + 7, row(3))]
    rows += [("e", T0_US + 7, row(4)), ("f", T0_US, row(5))]
    assert store.write(VIEW, rows) == 3
    assert stored_n(store, "e") == 3
    assert stored_n(store, "f") == 5


def test_a_stamp_another_writer_stored_counts_to_the_nanosecond(store: RedisOnlineStore) -> None:
    # Feast's own push stores whole seconds; another stream worker stores microseconds.
    seconds = T0_US // 1_000_000
    set_stamp(store, "e", Timestamp(seconds=seconds).SerializeToString())
    assert store.write(VIEW, [("e", seconds * 1_000_000, row(1))]) == 0
    assert store.write(VIEW, [("e", seconds * 1_000_000 + 1, row(2))]) == 1
    set_stamp(store, "e", Timestamp(seconds=seconds, nanos=5_000).SerializeToString())
    assert store.write(VIEW, [("e", seconds * 1_000_000 + 4, row(3))]) == 0
    assert store.write(VIEW, [("e", seconds * 1_000_000 + 6, row(4))]) == 1
    assert stored_n(store, "e") == 4


def test_a_stored_stamp_before_1970_is_decoded_exactly(store: RedisOnlineStore) -> None:
    # -1.5 s is seconds=-2 (a ten-byte varint) plus 0.5 s of nanos.
    set_stamp(store, "e", timestamp_bytes(-1_500_000))
    assert store.write(VIEW, [("e", -1_500_001, row(1)), ("e", -1_500_000, row(2))]) == 0
    assert store.write(VIEW, [("e", -1_499_999, row(3))]) == 1
    assert stored_n(store, "e") == 3
    set_stamp(store, "e", timestamp_bytes(-(10**15) - 3))
    assert store.write(VIEW, [("e", -(10**15) - 4, row(4))]) == 0
    assert store.write(VIEW, [("e", -(10**15) - 2, row(5))]) == 1
    assert stored_n(store, "e") == 5


def test_the_stored_row_is_always_the_newest_whatever_the_write_order(
    store: RedisOnlineStore,
) -> None:
    """The script decodes any Timestamp the writer encodes: before 1970 (negative seconds, a
    ten-byte varint), zero (an empty value), microseconds near the next second."""
    rng = random.Random(11)
    stamps = [-1_500_000, -1, 0, 1, 999_999, 1_000_000, T0_US - 1, T0_US, T0_US + 999_999]
    stamps += [rng.randrange(-(10**15), 10**16) for _ in range(40)]
    for attempt in range(5):
        entity = f"e{attempt}"
        order = stamps[:]
        rng.shuffle(order)
        newest: int | None = None
        for stamp in order:
            wrote = store.write(VIEW, [(entity, stamp, row(stamp))])
            # Nothing stored reads as stamp 0, so a first row must be after the epoch to land.
            assert wrote == (stamp > max(newest if newest is not None else 0, 0)), stamp
            if wrote:
                newest = stamp
        assert stored_n(store, entity) == newest
        (stored,) = store.read(VIEW, [entity])
        assert stored.stamp_us == newest


def test_a_key_ttl_is_set_on_every_write(redis_settings: RedisSettings) -> None:
    store = store_of(redis_settings, key_ttl_seconds=600)
    try:
        assert store.write(VIEW, [("e", T0_US, row(1))]) == 1
        assert 0 < ttl(store, "e") <= 600
    finally:
        store.close()


@pytest.fixture()
def unknown_script(monkeypatch: pytest.MonkeyPatch) -> None:
    """A script text this Redis has never seen: it stands for a new or restarted server
    (without flushing the shared server's script cache under other tests' feet)."""
    script = online.WRITE_IF_NEWER + f"-- {uuid.uuid4().hex}\n"
    monkeypatch.setattr(online, "WRITE_IF_NEWER", script)
    monkeypatch.setattr(online, "WRITE_IF_NEWER_SHA", hashlib.sha1(script.encode()).hexdigest())


@pytest.mark.usefixtures("unknown_script")
def test_a_redis_without_the_script_gets_it_loaded_and_the_rows_written(
    store: RedisOnlineStore,
) -> None:
    assert store.client.script_exists(online.WRITE_IF_NEWER_SHA) == [False]
    assert store.write(VIEW, [("e", T0_US, row(1)), ("e", T0_US - 1, row(2))]) == 1
    assert store.client.script_exists(online.WRITE_IF_NEWER_SHA) == [True]
    assert stored_n(store, "e") == 1


def test_an_error_reply_is_raised_and_the_connection_stays_usable(
    store: RedisOnlineStore,
) -> None:
    store.client.set(store.key(VIEW, "bad"), b"not a hash")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.write(VIEW, [("e", T0_US, row(1)), ("bad", T0_US, row(2))])
    # The good row before it landed, and the next write reads its own reply.
    assert stored_n(store, "e") == 1
    assert store.write(VIEW, [("e", T0_US + 1, row(3))]) == 1
    assert stored_n(store, "e") == 3


def table_of(rows: list[dict[str, Any]]) -> pa.Table:
    schema = pa.schema(
        [("n", pa.int64()), ("amt", pa.list_(pa.float64())), ("ids", pa.list_(pa.string()))]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def test_a_table_written_column_by_column_lands_as_its_rows_would(
    redis_settings: RedisSettings,
) -> None:
    by_rows, by_table = store_of(redis_settings), store_of(redis_settings)
    try:
        assert by_table.views[VIEW].encode_table is not None
        rows = [row(n) for n in range(40)]
        entities = [f"e{n % 25}" for n in range(40)]  # some entities twice: in order
        stamps = [T0_US + (n * 7919) % 100 for n in range(40)]
        written = by_rows.write(VIEW, list(zip(entities, stamps, rows, strict=True)))
        assert by_table.write_table(VIEW, entities, stamps, table_of(rows)) == written
        for entity in set(entities):
            assert by_table.client.hgetall(by_table.key(VIEW, entity)) == by_rows.client.hgetall(
                by_rows.key(VIEW, entity)
            )
    finally:
        by_rows.close()
        by_table.close()


def test_a_table_with_a_null_cell_is_written_row_by_row(store: RedisOnlineStore) -> None:
    table = table_of([row(1), {"n": 2, "amt": None, "ids": ["t2"]}])
    assert store.write_table(VIEW, ["e", "f"], [T0_US, T0_US], table) == 2
    assert stored_n(store, "f") == 2
    (stored,) = store.read(VIEW, ["f"])
    assert stored.row["amt"] is None and stored.row["ids"] == ["t2"]


@pytest.mark.usefixtures("unknown_script")
def test_a_table_refused_for_a_missing_script_is_written_once_it_is_loaded(
    store: RedisOnlineStore,
) -> None:
    table = table_of([row(1), row(2)])
    assert store.write_table(VIEW, ["e", "e"], [T0_US, T0_US - 1], table) == 1
    assert stored_n(store, "e") == 1

"""The scorer's fast feature read: Feast's Redis online store, read directly.

`FeatureStore.get_online_features` spends most of its time outside Redis (registry lookups,
request validation, Arrow/pandas-free but still generic response building): several
milliseconds per call. The store's data is plain Redis hashes, so this module reads them with
one pipelined HMGET per entity and decodes them the way Feast does. Feast stays the source of
truth: the key layout (`serialize_entity_key` + project), the field names (`_mmh3` of
`<view>:<feature>`, `_ts:<view>`), the value encoding (`ValueProto`) and the feature list (the
registry's FeatureService or views) are all taken from Feast itself, never restated here.

Errors (refused connection, timeout) propagate at once: the scorer's breaker and fallback deal
with them. The client has short socket timeouts and no retries, because redis-py's default
retry backs off for seconds on a refused connection.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.value_type import ValueType
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.common import feast_repo, features
from services.common.features import CardState, TerminalState

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

log = logging.getLogger(__name__)

Row = dict[str, Any]

# Scalar oneofs Feast hands back as-is, and list oneofs it hands back as a plain list. Anything
# else (timestamps, maps, JSON, nested lists) is decoded by Feast's own converter.
_SCALARS = frozenset(
    {"int32_val", "int64_val", "double_val", "float_val", "string_val", "bool_val", "bytes_val"}
)
_LISTS = frozenset(
    {
        "int32_list_val",
        "int64_list_val",
        "double_list_val",
        "float_list_val",
        "string_list_val",
        "bool_list_val",
        "bytes_list_val",
    }
)


def decode_value(raw: bytes | None) -> Any:
    """A stored ValueProto as Feast's `to_dict()` returns it (None when absent or empty)."""
    if not raw:
        return None
    value = ValueProto()
    value.ParseFromString(raw)
    kind = value.WhichOneof("val")
    if kind is None:
        return None
    if kind in _SCALARS:
        return getattr(value, kind)
    if kind in _LISTS:
        return list(getattr(value, kind).val)
    return feast_value_type_to_python_type(value)


def _entity_value(value: Any, value_type: ValueType) -> ValueProto:
    # The common join key types are built directly; Feast's converter handles the rest.
    if value_type == ValueType.STRING:
        return ValueProto(string_val=str(value))
    if value_type == ValueType.INT64:
        return ValueProto(int64_val=int(value))
    if value_type == ValueType.INT32:
        return ValueProto(int32_val=int(value))
    return python_values_to_proto_values([value], value_type)[0]


def round_trip(
    client: redis.Redis,
    pack: Callable[[Any], Sequence[bytes]],
    replies: int,
    *,
    keep_errors: bool = False,
) -> list[Any]:
    """Send commands in one write and read their `replies`: a pipeline without redis-py's
    Pipeline object (command stack, retries, instrumentation), which costs more CPU than the
    round trip itself. `pack(connection)` gives the commands' wire bytes. An error reply raises,
    or with `keep_errors` takes its reply's place as the exception. A connection that failed
    mid-way is closed, never reused."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command(pack(conn))
        out: list[Any] = []
        for _ in range(replies):
            try:
                out.append(conn.read_response())
            except redis.ResponseError as error:
                if not keep_errors:
                    raise
                out.append(error)
    except BaseException:
        conn.disconnect()
        pool.release(conn)
        raise
    pool.release(conn)
    return out


@dataclass(frozen=True)
class ViewLayout:
    """Where one feature view's values live in Redis, as Feast lays them out."""

    #: The name Feast stores the view under (versioned when registry versioning is on).
    name: str
    join_keys: tuple[str, ...]
    join_key_types: tuple[ValueType, ...]
    features: tuple[str, ...]
    #: HMGET field names: one per feature, then the `_ts:<view>` timestamp field.
    fields: tuple[bytes, ...]

    @classmethod
    def of(
        cls, view: FeatureView, stored_name: str, wanted: Sequence[str] | None = None
    ) -> ViewLayout:
        names = tuple(wanted) if wanted else tuple(f.name for f in view.features)
        columns = {c.name: c.dtype.to_value_type() for c in view.entity_columns}
        join_keys = tuple(view.join_keys)
        return cls(
            name=stored_name,
            join_keys=join_keys,
            join_key_types=tuple(columns.get(k, ValueType.STRING) for k in join_keys),
            features=names,
            fields=(
                *(_mmh3(f"{stored_name}:{name}") for name in names),
                f"_ts:{stored_name}".encode(),
            ),
        )


def _stored_name(view: FeatureView, store: FeatureStore) -> str:
    # Feast's own rule for the name under which a view's online values are stored.
    from feast.infra.online_stores.redis import _versioned_fv_name

    return str(_versioned_fv_name(view, store.config))


def parse_connection_string(conn: str) -> dict[str, Any]:
    """Feast's `host:port,key=value,...` Redis connection string as redis.Redis kwargs."""
    first, *options = [part.strip() for part in conn.split(",") if part.strip()]
    host, _, port = first.rpartition(":")
    kwargs: dict[str, Any] = {"host": host or "localhost", "port": int(port or 6379)}
    for option in options:
        key, _, value = option.partition("=")
        if key in ("db",):
            kwargs[key] = int(value)
        elif key in ("socket_timeout", "socket_connect_timeout"):
            kwargs[key] = float(value)
        elif key == "password":
            kwargs[key] = value
        elif key == "ssl":
            kwargs[key] = value.lower() == "true"
        elif key in ("username",):
            kwargs[key] = value
    return kwargs


def fast_client(
    host: str,
    port: int,
    *,
    db: int = 0,
    password: str | None = None,
    timeout_s: float = 0.05,
    max_connections: int = 64,
    **extra: Any,
) -> redis.Redis:
    """A redis-py client for the serving path: short timeouts, no retries, a bounded pool."""
    pool = redis.ConnectionPool(
        host=host,
        port=port,
        db=db,
        password=password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        max_connections=max_connections,
        # No backoff and no second try: the breaker decides what a failure means.
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        **extra,
    )
    return redis.Redis(connection_pool=pool)


class RedisOnlineReader:
    """Reads any feature view of a Feast project straight from its Redis online store."""

    def __init__(
        self,
        client: redis.Redis,
        project: str,
        views: Mapping[str, ViewLayout],
        key_serialization_version: int = 3,
        key_cache_size: int = 100_000,
    ) -> None:
        self.client = client
        self.project = project
        self.views = dict(views)
        self._project_bytes = project.encode("utf-8")
        self._key_version = key_serialization_version
        # Building and serializing an EntityKey proto costs more than the HMGET it names, and
        # a hot card or terminal is scored again and again: remember recent keys.
        self._key = functools.lru_cache(maxsize=key_cache_size)(self._build_key)

    @classmethod
    def from_store(
        cls,
        store: FeatureStore,
        *,
        feature_service: str | None = feast_repo.FEATURE_SERVICE,
        client: redis.Redis | None = None,
        timeout_s: float = 0.05,
    ) -> RedisOnlineReader:
        """Views and features from the registry: the FeatureService's projections, or every
        online view when `feature_service` is None. The client defaults to the store's Redis."""
        layouts: dict[str, ViewLayout] = {}
        if feature_service:
            service = store.get_feature_service(feature_service)
            for projection in service.feature_view_projections:
                view = store.get_feature_view(projection.name)
                wanted = [f.name for f in projection.features]
                layouts[projection.name_to_use()] = ViewLayout.of(
                    view, _stored_name(view, store), wanted
                )
        else:
            for view in store.list_feature_views():
                if view.online:
                    layouts[view.name] = ViewLayout.of(view, _stored_name(view, store))
        if client is None:
            conn = getattr(store.config.online_store, "connection_string", "localhost:6379")
            options = parse_connection_string(str(conn))
            options.pop("socket_timeout", None)
            options.pop("socket_connect_timeout", None)
            client = fast_client(timeout_s=timeout_s, **options)
        return cls(client, store.project, layouts, store.config.entity_key_serialization_version)

    def redis_key(self, view: str, entity: Sequence[Any] | Any) -> bytes:
        """Feast's key for one entity of `view`: serialized entity key + project."""
        values = tuple(entity) if isinstance(entity, (tuple, list)) else (entity,)
        return self._key(view, values)

    def _build_key(self, view: str, values: tuple[Any, ...]) -> bytes:
        layout = self.views[view]
        key = EntityKeyProto(
            join_keys=layout.join_keys,
            entity_values=[
                _entity_value(v, t) for v, t in zip(values, layout.join_key_types, strict=True)
            ],
        )
        return serialize_entity_key(key, self._key_version) + self._project_bytes

    def read_many(self, requests: Sequence[tuple[str, Any]]) -> list[Row]:
        """One pipelined round trip for any mix of (view, entity) pairs, answers in order.

        Each answer maps the view's features to values (None where the store has none), the
        shape `get_online_features(...).to_dict()` gives per entity row.
        """
        if not requests:
            return []
        commands = [
            ("HMGET", self.redis_key(view, entity), *self.views[view].fields)
            for view, entity in requests
        ]
        replies = self._round_trip(commands)
        rows: list[Row] = []
        for (view, _), values in zip(requests, replies, strict=True):
            layout = self.views[view]
            rows.append(
                {
                    name: decode_value(raw)
                    for name, raw in zip(layout.features, values, strict=False)
                }
            )
        return rows

    @property
    def max_blocking_s(self) -> float:
        """How long one `read_many` can block at worst: connecting, sending and receiving each
        wait at most their socket timeout (no retries). Infinite without timeouts."""
        kwargs = self.client.connection_pool.connection_kwargs
        connect, socket_timeout = kwargs.get("socket_connect_timeout"), kwargs.get("socket_timeout")
        if connect is None or socket_timeout is None:
            return float("inf")
        return float(connect) + 2 * float(socket_timeout)

    def _round_trip(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        return round_trip(self.client, lambda conn: conn.pack_commands(commands), len(commands))

    def read(self, view: str, entities: Sequence[Any]) -> list[Row]:
        return self.read_many([(view, e) for e in entities])

    def close(self) -> None:
        self.client.close()


class FastFeatureReader:
    """Card and terminal state through `RedisOnlineReader`: a drop-in for
    online_features.FeastFeatureReader (read_state, read_terminal_state(s), read_states_of),
    plus `read_pairs` for ScoreBatch. Every method is one Redis round trip."""

    def __init__(
        self,
        reader: RedisOnlineReader,
        view: str = feast_repo.FEATURE_VIEW,
        terminal_view: str | None = feast_repo.TERMINAL_FEATURE_VIEW,
    ) -> None:
        self.reader = reader
        self.view = view
        # A registry without the terminal view (an older feature service) reads no terminals.
        self.terminal_view = terminal_view if terminal_view in reader.views else None

    @classmethod
    def from_store(cls, store: FeatureStore, timeout_s: float = 0.05) -> FastFeatureReader:
        return cls(RedisOnlineReader.from_store(store, timeout_s=timeout_s))

    @property
    def max_blocking_s(self) -> float:
        """Worst-case blocking of any read: the scorer runs it inline when this fits its budget."""
        return self.reader.max_blocking_s

    def read_state(self, card_id: str) -> CardState | None:
        return features.from_row(self.reader.read_many([(self.view, card_id)])[0])

    def read_states(self, card_ids: Sequence[str]) -> list[CardState | None]:
        rows = self.reader.read_many([(self.view, card) for card in card_ids])
        return [features.from_row(row) for row in rows]

    def read_terminal_state(self, terminal_id: str) -> TerminalState | None:
        return self.read_terminal_states([terminal_id])[0]

    def read_terminal_states(self, terminal_ids: Sequence[str]) -> list[TerminalState | None]:
        if self.terminal_view is None:
            return [None] * len(terminal_ids)
        rows = self.reader.read_many([(self.terminal_view, t) for t in terminal_ids])
        return [features.terminal_from_row(row) for row in rows]

    def read_states_of(
        self, card_id: str, terminal_id: str
    ) -> tuple[CardState | None, TerminalState | None]:
        cards, terminals = self.read_pairs([card_id], [terminal_id])
        return cards[0], terminals[0]

    def read_pairs(
        self, card_ids: Sequence[str], terminal_ids: Sequence[str]
    ) -> tuple[list[CardState | None], list[TerminalState | None]]:
        """Cards and terminals of many transactions in one pipelined round trip."""
        requests: list[tuple[str, Any]] = [(self.view, card) for card in card_ids]
        if self.terminal_view is not None:
            requests += [(self.terminal_view, t) for t in terminal_ids]
        rows = self.reader.read_many(requests)
        n = len(card_ids)
        cards = [features.from_row(row) for row in rows[:n]]
        if self.terminal_view is None:
            return cards, [None] * len(terminal_ids)
        return cards, [features.terminal_from_row(row) for row in rows[n:]]

    def warm_up(self) -> None:
        """Open a connection now, not on the first real call."""
        try:
            self.read_states_of("__warm_up__", "__warm_up__")
        except Exception as exc:
            log.warning("feature store warm-up failed (the fallback answers meanwhile): %s", exc)

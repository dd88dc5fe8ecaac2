"""A batch's state history (card_state and terminal_state parts), gathered column by column
while the fold makes it.

The stream writes one history row per counted event: the key's whole state after it
(`features.to_row`, `features.terminal_to_row`). Built as row dicts and converted afterwards,
each row's columns were looked up, transposed and read again per column: every pass a cache
miss per object once a batch's rows outgrow the CPU's caches, which made the tables cost more
than the folds. Here each row's tile arrays are copied into their column's buffer the moment
the row is made (still in cache), so a table is a handful of numpy and Arrow calls over
buffers.

`table()` equals `offline_store.card_state_table` / `terminal_state_table` of the same rows (a
unit test proves it).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from services.common import features, offline_store
from services.common.features import CardState, TerminalState


class _StateHistory:
    """Rows of one state schema in applied order. A subclass's `append` adds a row's key,
    stamp, last event time and tile columns; `complete` gives one row its dedup columns (only
    the row a rebuild of the online store would take carries them)."""

    SCHEMA: ClassVar[pa.Schema]
    KEY: ClassVar[str]
    #: Groups of tile columns whose lists have one length per row: their names.
    GROUPS: ClassVar[tuple[tuple[str, ...], ...]]
    #: Columns left empty except in completed rows.
    DEDUP: ClassVar[tuple[str, ...]]

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.stamps_ms: list[int] = []
        self._last_ms: list[int] = []
        self._lengths: tuple[list[int], ...] = tuple([] for _ in self.GROUPS)
        self._buffers: tuple[tuple[array[Any], ...], ...] = tuple(
            tuple(_buffer(self.SCHEMA.field(name).type) for name in group) for group in self.GROUPS
        )
        #: Row position -> its dedup columns' values, in DEDUP order.
        self._dedup: dict[int, Sequence[Sequence[Any]]] = {}
        #: Key -> its latest row's stamp; whether some key has two rows in one millisecond.
        self._latest: dict[str, int] = {}
        self._ties = False

    def __len__(self) -> int:
        return len(self.keys)

    def _start(self, key: str, stamp_ms: int, last_ms: int) -> int:
        # Noted as rows come (rare): checking every row's (key, stamp) pair afterwards took
        # ~5 % of the worker's CPU at 5,000 events/s.
        if self._latest.get(key) == stamp_ms:
            self._ties = True
        self._latest[key] = stamp_ms
        self.keys.append(key)
        self.stamps_ms.append(stamp_ms)
        self._last_ms.append(last_ms)
        return len(self.keys) - 1

    def _extra(self) -> dict[str, pa.Array]:
        """Columns a subclass builds itself."""
        return {}

    def table(self) -> pa.Table:
        """The rows as a part of SCHEMA."""
        schema = self.SCHEMA
        if not self.keys:
            return schema.empty_table()
        last_name = schema.names[2]
        columns: dict[str, pa.Array] = {
            self.KEY: pa.array(self.keys, type=pa.string()),
            "event_timestamp": offline_store.stamps(self.keys, self.stamps_ms, self._ties),
            last_name: pa.array(np.array(self._last_ms, dtype=np.int64)),
        }
        for names, lengths, buffers in zip(self.GROUPS, self._lengths, self._buffers, strict=True):
            offsets = _offsets(lengths)
            for name, buffer in zip(names, buffers, strict=True):
                columns[name] = _list_array(offsets, _values(buffer), schema.field(name).type)
        dedup = sorted(self._dedup.items())
        for i, name in enumerate(self.DEDUP):
            lengths = [0] * len(self.keys)
            flat: list[Any] = []
            for position, values in dedup:
                lengths[position] = len(values[i])
                flat.extend(values[i])
            type_ = schema.field(name).type
            columns[name] = _list_array(
                _offsets(lengths), pa.array(flat, type=type_.value_type), type_
            )
        columns.update(self._extra())
        return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)

    def rows(self) -> list[tuple[str, int, dict[str, Any]]]:
        """(key, stamp_ms, row) per row, the row's columns as plain lists; for tests and
        tools, not the hot path."""
        table = self.table().drop_columns([self.KEY, "event_timestamp"])
        return list(zip(self.keys, self.stamps_ms, table.to_pylist(), strict=True))


class CardHistory(_StateHistory):
    """card_state rows: `append` one per counted transaction, `complete` each card's last."""

    SCHEMA = offline_store.CARD_STATE_SCHEMA
    KEY = "card_id"
    GROUPS = (
        *(
            tuple(f"{spec.name}_{part}" for part in ("idx", "cnt", "amt", "sq"))
            for spec in features.TILE_SPECS
        ),
        ("h_term_idx",),
    )
    DEDUP = features.DEDUP_COLUMNS
    _TILE_NAMES = tuple(spec.name for spec in features.TILE_SPECS)

    def __init__(self) -> None:
        super().__init__()
        self._term_ids: list[str] = []

    def append(self, key: str, event_ms: int, state: CardState) -> int:
        """Add `state` (as `features.to_row(state, dedup=False)`) as key's row at event_ms;
        its position."""
        position = self._start(key, event_ms, state.last_event_ms)
        tiles = state.tiles
        for name, lengths, (idx, cnt, amt, sq) in zip(
            self._TILE_NAMES, self._lengths, self._buffers, strict=False
        ):
            t = tiles[name]
            lengths.append(len(t.idx))
            idx.extend(t.idx)
            cnt.extend(t.cnt)
            amt.extend(t.amt)
            sq.extend(t.sq)
        self._lengths[-1].append(len(state.term_ids))
        self._buffers[-1][0].extend(state.term_hours)
        self._term_ids.extend(state.term_ids)
        return position

    def complete(self, position: int, state: CardState) -> None:
        """Give the row at `position` the dedup columns of `state` (its card's final state)."""
        row = features.dedup_columns(state)
        self._dedup[position] = [row[name] for name in self.DEDUP]

    def _extra(self) -> dict[str, pa.Array]:
        type_ = self.SCHEMA.field("h_term_ids").type
        return {
            "h_term_ids": _list_array(
                _offsets(self._lengths[-1]), pa.array(self._term_ids, type=pa.string()), type_
            )
        }


class TerminalHistory(_StateHistory):
    """terminal_state rows: `append` one per applied event, `complete` each terminal's last."""

    SCHEMA = offline_store.TERMINAL_STATE_SCHEMA
    KEY = "terminal_id"
    GROUPS = tuple(
        features.TERMINAL_COLUMN_NAMES[spec.name] for spec in features.TERMINAL_TILE_SPECS
    )
    DEDUP = features.TERMINAL_DEDUP_COLUMNS
    _TILE_NAMES = tuple(spec.name for spec in features.TERMINAL_TILE_SPECS)

    def append(self, key: str, stamp_ms: int, state: TerminalState) -> int:
        """Add `state` (as `features.terminal_to_row`, dedup columns empty) as key's row at
        stamp_ms; its position."""
        position = self._start(key, stamp_ms, state.last_event_ms)
        tiles = state.tiles
        for name, lengths, (idx, cnt, fraud) in zip(
            self._TILE_NAMES, self._lengths, self._buffers, strict=True
        ):
            t = tiles[name]
            lengths.append(len(t.idx))
            idx.extend(t.idx)
            cnt.extend(t.cnt)
            fraud.extend(t.fraud)
        return position

    def complete(self, position: int, state: TerminalState) -> None:
        """Give the row at `position` the dedup columns of `state` (its terminal's final
        state)."""
        row = features.terminal_dedup_columns(state)
        self._dedup[position] = [row[name] for name in self.DEDUP]


def _buffer(type_: pa.DataType) -> array[Any]:
    value_type = type_.value_type
    if value_type == pa.int64():
        return features.int_array()
    if value_type == pa.float64():
        return features.float_array()
    raise ValueError(f"no array buffer for {type_}")


def _offsets(lengths: list[int]) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(np.array(lengths, dtype=np.int32), out=offsets[1:])
    return offsets


def _values(buffer: array[Any]) -> pa.Array:
    # A copy (`tobytes`): a buffer still exported would refuse a later append.
    dtype = np.int64 if buffer.typecode == features.INT_CODE else np.float64
    return pa.array(np.frombuffer(buffer.tobytes(), dtype=dtype))


def _list_array(offsets: np.ndarray, values: pa.Array, type_: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=type_)

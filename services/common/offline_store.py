"""The offline store's datasets: parquet folders that only ever get new part files.

Feast's file offline store rewrites its whole parquet file on every write (quadratic as history
grows), so the stream appends part files itself; Feast reads each folder as one dataset.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from services.common import features

CARD_STATE_DIR = Path("data") / "card_state"
TRANSACTIONS_DIR = Path("data") / "transactions"
LABELS_DIR = Path("data") / "labels"

_TS = pa.timestamp("us", tz="UTC")

_LIST_TYPES: dict[str, pa.DataType] = {
    "idx": pa.list_(pa.int64()),
    "cnt": pa.list_(pa.int64()),
    "amt": pa.list_(pa.float64()),
    "ids": pa.list_(pa.string()),
    "ms": pa.list_(pa.int64()),
}


def _card_state_schema() -> pa.Schema:
    fields = [pa.field("card_id", pa.string()), pa.field("event_timestamp", _TS)]
    for column in features.STATE_COLUMNS:
        if column == "last_event_ms":
            fields.append(pa.field(column, pa.int64()))
        else:
            fields.append(pa.field(column, _LIST_TYPES[column.rsplit("_", 1)[1]]))
    return pa.schema(fields)


CARD_STATE_SCHEMA = _card_state_schema()

TRANSACTIONS_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string()),
        pa.field("card_id", pa.string()),
        pa.field("terminal_id", pa.string()),
        pa.field("amount", pa.float64()),
        pa.field("event_ms", pa.int64()),
        pa.field("event_timestamp", _TS),
    ]
)

LABELS_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string()),
        pa.field("card_id", pa.string()),
        pa.field("terminal_id", pa.string()),
        pa.field("is_fraud", pa.bool_()),
        pa.field("transaction_ms", pa.int64()),
        pa.field("reported_at", _TS),
    ]
)

DATASETS: dict[Path, pa.Schema] = {
    CARD_STATE_DIR: CARD_STATE_SCHEMA,
    TRANSACTIONS_DIR: TRANSACTIONS_SCHEMA,
    LABELS_DIR: LABELS_SCHEMA,
}


def init(repo_dir: Path) -> None:
    """Create each dataset folder with an empty part, so readers see a schema from day one."""
    for rel, schema in DATASETS.items():
        folder = repo_dir / rel
        folder.mkdir(parents=True, exist_ok=True)
        seed = folder / "part-0000000000000000000-empty.parquet"
        if not seed.exists():
            pq.write_table(schema.empty_table(), seed)


def write_part(folder: Path, table: pa.Table) -> Path:
    """Write one immutable part file atomically (readers never see half a file)."""
    name = f"part-{time.time_ns():019d}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{name}.tmp"
    pq.write_table(table, tmp)
    final = folder / name
    os.replace(tmp, final)
    return final


def read(folder: Path, schema: pa.Schema) -> pa.Table:
    """All parts of a dataset as one table."""
    files = sorted(p for p in folder.glob("part-*.parquet"))
    if not files:
        return schema.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=schema) for f in files])


def card_state_table(rows: list[tuple[str, int, dict[str, object]]]) -> pa.Table:
    """(card_id, event_ms, features.to_row(state)) in applied order -> a card_state part.

    Rows are stamped in microseconds: event_ms * 1000, plus one for each earlier row of the
    same card in the same millisecond, so the state after the second of two same-millisecond
    payments is unambiguously the latest (point-in-time joins otherwise break the tie at will).
    """
    columns: dict[str, list[object]] = {name: [] for name in CARD_STATE_SCHEMA.names}
    last: dict[str, tuple[int, int]] = {}
    for card_id, event_ms, row in rows:
        prev_ms, prev_seq = last.get(card_id, (-1, -1))
        seq = prev_seq + 1 if prev_ms == event_ms else 0
        last[card_id] = (event_ms, seq)
        columns["card_id"].append(card_id)
        columns["event_timestamp"].append(event_ms * 1000 + min(seq, 999))
        for column in features.STATE_COLUMNS:
            columns[column].append(row[column])
    return pa.table(
        [pa.array(columns[f.name], type=f.type) for f in CARD_STATE_SCHEMA],
        schema=CARD_STATE_SCHEMA,
    )

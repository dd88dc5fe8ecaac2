"""Training rows: the transaction log, point-in-time card and terminal state, labels at a cutoff.

Each transaction is joined to its card's state and its terminal's state as of 1 ms before it
(the states the scorer saw when it scored it; a terminal's fraud labels count from the time they
were reported), and the model inputs are finished from them by `finish.finish`: the scorer's
`features.all_features` done columnar, proven equal value for value, so there is no skew.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from services.common import feast_repo, features, offline_store
from training import dask_tokens, finish

log = logging.getLogger(__name__)

#: entity rows (card_id, terminal_id, event_timestamp, transaction_id, ...) -> transaction_id +
#: STATE_COLUMNS + TERMINAL_STATE_COLUMNS, for the rows with any state (missing view: NaN).
FetchStates = Callable[[pd.DataFrame], pd.DataFrame]

#: entity rows -> (FEATURE_NAMES per row in their order, rows without any state, rows without
#: card state, rows without terminal state): a point-in-time join and the finishing.
FinishRows = Callable[[pd.DataFrame], tuple[np.ndarray, int, int, int]]

ALL_STATE_COLUMNS: tuple[str, ...] = (*features.STATE_COLUMNS, *features.TERMINAL_STATE_COLUMNS)

#: Rows finished per step where all rows are finished alike (bounds the temporary columns).
FILL_ROWS = 1_000_000

#: State rows decoded at once when gathering states from a part file.
GATHER_ROWS = 50_000

#: What `build_dataset` returns, besides FEATURE_NAMES.
ID_COLUMNS: tuple[str, ...] = ("transaction_id", "card_id", "event_ms")
#: The dtypes of the string ID_COLUMNS in a dataset.
ID_DTYPES: dict[str, pd.ArrowDtype] = {
    "transaction_id": pd.ArrowDtype(pa.string()),
    "card_id": pd.ArrowDtype(pa.string()),
}


@dataclass(frozen=True)
class DatasetStats:
    rows: int
    positives: int
    #: Entity rows the point-in-time join returned nothing for: neither card nor terminal state
    #: (kept, with no history).
    feast_dropped: int
    #: Rows whose card had no state before them (first seen, or only state rows Feast lost).
    no_history: int
    #: Rows whose terminal had no state before them.
    no_terminal_history: int
    #: Repeated transaction ids in the log (a re-run backfill, a replayed part): kept once.
    duplicate_transactions: int
    cutoff_ms: int
    start_ms: int | None
    end_ms: int | None
    #: Rows of the skipped period left out (all but the known frauds; see `assemble_rows`).
    skipped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(column: pa.ChunkedArray) -> np.ndarray:
    micros = pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)
    return np.asarray(micros, dtype=np.int64) // 1000


def read_transactions(repo_dir: Path) -> pd.DataFrame:
    """The transaction log; the id columns stay Arrow strings (`pd.ArrowDtype`).

    As Python objects, three id columns of ten million rows took ~3 GB; as Arrow buffers
    they take a tenth of that, and the joins below use them as Arrow without converting.
    """
    columns = ["transaction_id", "card_id", "terminal_id", "amount", "event_ms"]
    parts = _read_columns(
        repo_dir / offline_store.TRANSACTIONS_DIR, offline_store.TRANSACTIONS_SCHEMA, columns
    )
    table = (
        pa.concat_tables(parts)
        if parts
        else offline_store.TRANSACTIONS_SCHEMA.empty_table().select(columns)
    )
    return pd.DataFrame(
        {
            name: (
                pd.Series(table[name], dtype=pd.ArrowDtype(pa.string()))
                if pa.types.is_string(table.schema.field(name).type)
                else table[name].to_numpy()
            )
            for name in columns
        }
    )


def _arrow_strings(values: pd.Series) -> pa.Array:
    """An id column as one Arrow string array (zero-copy for an Arrow-backed column)."""
    array = pa.array(values, type=pa.string(), from_pandas=True)
    if isinstance(array, pa.ChunkedArray):
        return array.combine_chunks()
    return array


def _ids(values: pd.Series) -> Any:
    """An id column's values for a new frame: Arrow-backed stays Arrow-backed (no objects)."""
    return values.array if isinstance(values.dtype, pd.ArrowDtype) else values.to_numpy()


def read_event_ms(repo_dir: Path) -> pd.Series:
    """The event times of the transaction log alone (choosing a window needs nothing else)."""
    parts = _read_columns(
        repo_dir / offline_store.TRANSACTIONS_DIR, offline_store.TRANSACTIONS_SCHEMA, ["event_ms"]
    )
    values = [p["event_ms"].to_numpy() for p in parts]
    return pd.Series(
        np.concatenate(values) if values else np.empty(0, np.int64), dtype=np.int64, name="event_ms"
    )


def read_labels(repo_dir: Path) -> pd.DataFrame:
    """The label log as transaction_id, is_fraud, reported_ms."""
    table = offline_store.read(repo_dir / offline_store.LABELS_DIR, offline_store.LABELS_SCHEMA)
    return pd.DataFrame(
        {
            "transaction_id": table["transaction_id"].to_numpy(zero_copy_only=False),
            "is_fraud": table["is_fraud"].to_numpy(zero_copy_only=False).astype(bool),
            "reported_ms": _ms(table["reported_at"]),
        }
    )


def fraud_reported_ms(labels: pd.DataFrame, cutoff_ms: int) -> pd.Series:
    """transaction_id -> when its first fraud label arrived, among those known at the cutoff."""
    known = labels[labels["is_fraud"] & (labels["reported_ms"] <= cutoff_ms)]
    return known.groupby("transaction_id")["reported_ms"].min()


def entity_rows(transactions: pd.DataFrame) -> pd.DataFrame:
    """Feast entity rows: one per transaction, timed 1 ms before it.

    The state row a transaction produced is stamped with its own event time, so asking for the
    state strictly before it keeps its own amount out of its aggregates.
    """
    return pd.DataFrame(
        {
            "card_id": _ids(transactions["card_id"]),
            "terminal_id": _ids(transactions["terminal_id"]),
            "event_timestamp": pd.to_datetime(
                transactions["event_ms"].to_numpy(np.int64) - 1, unit="ms", utc=True
            ),
            "transaction_id": _ids(transactions["transaction_id"]),
            "amount": transactions["amount"].to_numpy(np.float64),
            "event_ms": transactions["event_ms"].to_numpy(np.int64),
        }
    )


def _state_table(rows: pd.DataFrame, schema: pa.Schema, columns: tuple[str, ...]) -> pa.Table:
    """State columns of a joined frame as Arrow (None, NaN, NA and NaT cells become nulls)."""
    return pa.table(
        {c: pa.array(rows[c], type=schema.field(c).type, from_pandas=True) for c in columns}
    )


def finish_features(rows: pd.DataFrame) -> tuple[np.ndarray, int, int]:
    """FEATURE_NAMES for each row (state columns + amount + event_ms); also counts the rows
    without card history and without terminal history.

    `finish.finish` is `features.all_features` done columnar, proven equal value for value.
    """
    return finish.finish(
        _state_table(rows, offline_store.CARD_STATE_SCHEMA, finish.CARD_COLUMNS),
        _state_table(rows, offline_store.TERMINAL_STATE_SCHEMA, finish.TERMINAL_COLUMNS),
        rows["amount"].to_numpy(np.float64),
        rows["event_ms"].to_numpy(np.int64),
    )


def rows_from_states(fetch_states: FetchStates) -> FinishRows:
    """Finishing over a join that returns the state columns themselves (Feast's, a test's)."""

    def finish_rows(entities: pd.DataFrame) -> tuple[np.ndarray, int, int, int]:
        state_columns = list(ALL_STATE_COLUMNS)
        fetched = fetch_states(entities)
        fetched = fetched[["transaction_id", *state_columns]].drop_duplicates(
            "transaction_id", keep="last"
        )
        # Entity rows with no history at all come back empty; they are still transactions.
        joined = entities.merge(fetched, on="transaction_id", how="left", indicator=True)
        no_state = int((joined["_merge"] == "left_only").sum())
        matrix, no_history, no_terminal = finish_features(joined.drop(columns="_merge"))
        return matrix, no_state, no_history, no_terminal

    return finish_rows


def assemble(
    transactions: pd.DataFrame,
    labels: pd.DataFrame,
    cutoff_ms: int,
    fetch_states: FetchStates,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> tuple[pd.DataFrame, DatasetStats]:
    """The dataset from already-loaded logs; `fetch_states` does the point-in-time join."""
    return assemble_rows(
        transactions, labels, cutoff_ms, rows_from_states(fetch_states), start_ms, end_ms
    )


def assemble_rows(
    transactions: pd.DataFrame,
    labels: pd.DataFrame,
    cutoff_ms: int,
    finish_rows: FinishRows,
    start_ms: int | None = None,
    end_ms: int | None = None,
    skip: tuple[int, int] | None = None,
) -> tuple[pd.DataFrame, DatasetStats]:
    """The dataset from already-loaded logs; `finish_rows` joins and finishes the features.

    `skip` = [from, to) leaves out that period's rows except those labelled fraud by the
    cutoff: the handbook split never trains or tests on its delay period, it only needs the
    frauds in it (the cards known compromised when testing). Its rows were a third of the
    join and of the memory.
    """
    n_all = len(transactions)
    reported = fraud_reported_ms(labels, cutoff_ms)
    keep = ~transactions["transaction_id"].duplicated(keep="first").to_numpy(bool)
    duplicates = n_all - int(keep.sum())
    events_all = transactions["event_ms"].to_numpy(np.int64)
    if start_ms is not None:
        keep &= events_all >= start_ms
    if end_ms is not None:
        keep &= events_all < end_ms
    skipped = 0
    if skip is not None:
        in_skip = keep & (events_all >= skip[0]) & (events_all < skip[1])
        candidates = np.flatnonzero(in_skip)
        fraud = pc.is_in(
            _arrow_strings(transactions["transaction_id"]).take(pa.array(candidates)),
            value_set=pa.array(reported.index.to_numpy(), type=pa.string()),
        ).to_numpy(zero_copy_only=False)
        keep[candidates[~fraud]] = False
        skipped = int((~fraud).sum())
        del in_skip, candidates, fraud
    # One gather of the kept rows in (event_ms, transaction_id) order: no intermediate copies.
    kept = np.flatnonzero(keep)
    del keep, events_all
    ids = _arrow_strings(transactions["transaction_id"]).take(pa.array(kept))
    order = pc.sort_indices(
        pa.table({"event_ms": transactions["event_ms"].to_numpy(np.int64)[kept], "id": ids}),
        sort_keys=[("event_ms", "ascending"), ("id", "ascending")],
    )
    picked = transactions.iloc[kept[order.to_numpy()]].reset_index(drop=True)
    del kept, ids, order
    entities = entity_rows(picked)
    del picked

    if len(entities):
        matrix, feast_dropped, no_history, no_terminal = finish_rows(entities)
    else:
        matrix = np.empty((0, len(features.FEATURE_NAMES)), dtype=np.float64)
        feast_dropped = no_history = no_terminal = 0
    frame = pd.DataFrame(matrix, columns=list(features.FEATURE_NAMES), copy=False)
    del matrix
    for column in reversed(ID_COLUMNS):
        values = entities[column]
        # Ids as Arrow strings whatever the input held (objects, Arrow, Dask's strings): one
        # dtype for every engine, and no Python object per row.
        frame.insert(0, column, values.astype(ID_DTYPES.get(column, values.dtype)).array)
    del entities
    frame["label_reported_ms"] = _reported_ms(frame["transaction_id"], reported)
    frame["label"] = frame["label_reported_ms"].notna().astype(np.int64)

    stats = DatasetStats(
        rows=len(frame),
        positives=int(frame["label"].sum()),
        feast_dropped=feast_dropped,
        no_history=no_history,
        no_terminal_history=no_terminal,
        duplicate_transactions=duplicates,
        cutoff_ms=cutoff_ms,
        start_ms=start_ms,
        end_ms=end_ms,
        skipped=skipped,
    )
    if feast_dropped:
        # Expected where both the card and the terminal are seen for the first time.
        log.info("no state at all for %s of %s entity rows", feast_dropped, len(frame))
    return frame, stats


def _reported_ms(transaction_ids: pd.Series, reported: pd.Series) -> np.ndarray:
    """`transaction_ids.map(reported)` as float64 (NaN where absent), matched in Arrow: a
    pandas map of an Arrow-backed column goes through Python objects row by row."""
    out = np.full(len(transaction_ids), np.nan, dtype=np.float64)
    if len(reported) and len(transaction_ids):
        where = pc.index_in(
            _arrow_strings(transaction_ids),
            value_set=pa.array(reported.index.to_numpy(), type=pa.string()),
        )
        found = where.is_valid().to_numpy(zero_copy_only=False)
        positions = where.drop_null().to_numpy()
        out[found] = reported.to_numpy(np.float64)[positions]
    return out


def _any_state(joined: pd.DataFrame) -> pd.DataFrame:
    """Rows with card or terminal state: both engines return exactly these."""
    present = joined["last_event_ms"].notna() | joined["t_last_event_ms"].notna()
    return joined[present]


def feast_fetch(repo_dir: Path) -> FetchStates:
    store = feast_repo.open_store(repo_dir)

    def view_states(entities: pd.DataFrame, key: str, refs: list[str]) -> pd.DataFrame:
        # Feast keeps one of several entity rows with the same key and timestamp (two payments
        # of a card in one millisecond), so ask once per (key, time) and map back.
        keys = [key, "event_timestamp"]
        unique = entities[keys].drop_duplicates()
        with dask_tokens.cheap_object_tokens():
            states = store.get_historical_features(entity_df=unique, features=refs).to_df()
        states["event_timestamp"] = states["event_timestamp"].astype("datetime64[us, UTC]")
        left = entities[[*keys, "transaction_id"]].copy()
        left["event_timestamp"] = left["event_timestamp"].astype("datetime64[us, UTC]")
        joined = left.merge(states.drop_duplicates(keys), on=keys, how="inner")
        return joined.drop(columns=keys)

    def fetch(entities: pd.DataFrame) -> pd.DataFrame:
        # Feast's joins expect plain object id columns, not Arrow-backed ones.
        entities = entities.astype(
            {c: object for c in ("card_id", "terminal_id", "transaction_id")}
        )
        # One call per view: with both views in one call, Feast drops every entity row that
        # lacks history in *either* view (a new card at a known terminal would lose both).
        cards = view_states(entities, "card_id", feast_repo.feature_refs())
        terminals = view_states(entities, "terminal_id", feast_repo.terminal_feature_refs())
        joined = entities[["transaction_id"]].merge(cards, on="transaction_id", how="left")
        joined = joined.merge(terminals, on="transaction_id", how="left")
        return _any_state(joined)

    return fetch


def _part_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))


def _read_columns(folder: Path, schema: pa.Schema, columns: list[str]) -> list[pa.Table]:
    """The parts of a dataset, in order, with only `columns` read."""
    return [pq.read_table(f, columns=columns, schema=schema) for f in _part_files(folder)]


def _asof_positions(
    keys: pd.Series, stamps: pd.Series, folder: Path, schema: pa.Schema, key: str
) -> np.ndarray:
    """Per entity row, the row number (over the dataset's parts in order) of the latest state
    row of its key stamped at or before its timestamp; -1 when there is none (of several
    state rows with that key and stamp, the last).

    Only keys and timestamps are read here: the states themselves are read part by part later.
    Keys become shared integer codes and timestamps dense ranks, so (key, time) is one int64
    and the as-of join one sort and one binary search, in a few int64 arrays (pandas'
    merge_asof held about ten columns of the entity rows' length at once).
    """
    index = pa.concat_tables(_read_columns(folder, schema, [key, "event_timestamp"]))
    n_left, n_right = len(keys), len(index)
    positions = np.full(n_left, -1, dtype=np.int64)
    if not n_left or not n_right:
        return positions
    both = pa.chunked_array([_arrow_strings(keys), *index[key].chunks], type=pa.string())
    codes = np.asarray(
        pc.dictionary_encode(both.combine_chunks()).indices.to_numpy(zero_copy_only=False),
        dtype=np.int64,
    )
    del both
    left_ts = stamps.astype("datetime64[us, UTC]").to_numpy(np.int64)
    times = np.concatenate([left_ts, _ms_micros(index["event_timestamp"])])
    del index, left_ts
    # Dense ranks keep the order of the times and make (key, rank) fit one int64.
    distinct, ranks = np.unique(times, return_inverse=True)
    base = len(distinct) + 1
    del times, distinct
    combined = codes * base + ranks.reshape(-1)
    del codes, ranks
    left, right = combined[:n_left], combined[n_left:]
    # Stable: of equal (key, stamp) state rows the last in file order ends up last.
    order = np.argsort(right, kind="stable")
    right_sorted = right[order]
    found = np.searchsorted(right_sorted, left, side="right") - 1
    # The greatest (key, time) at or below the row's: a hit only if it is of the same key.
    hit = np.flatnonzero(found >= 0)
    hit = hit[right_sorted[found[hit]] // base == left[hit] // base]
    positions[hit] = order[found[hit]]
    return positions


def _ms_micros(column: pa.ChunkedArray) -> np.ndarray:
    micros = pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)
    return np.asarray(micros, dtype=np.int64)


def _gather(
    folder: Path,
    schema: pa.Schema,
    columns: tuple[str, ...],
    positions: np.ndarray,
    use: Callable[[pa.Table, np.ndarray], None],
) -> None:
    """Calls use(states, rows) per batch of a part file: the state rows `positions` point at
    in that batch (row-aligned with `rows`, the entity rows pointing there). One batch of
    GATHER_ROWS state rows decoded at a time, whatever the size of the part files."""
    order = np.argsort(positions, kind="stable")
    ordered = positions[order]
    start = 0
    for path in _part_files(folder):
        part = pq.ParquetFile(path)
        size = part.metadata.num_rows
        if np.searchsorted(ordered, start + size, "left") > np.searchsorted(ordered, start):
            for batch in part.iter_batches(batch_size=GATHER_ROWS, columns=list(columns)):
                lo = np.searchsorted(ordered, start, "left")
                hi = np.searchsorted(ordered, start + batch.num_rows, "left")
                if hi > lo:
                    table = pa.Table.from_batches([batch]).cast(
                        pa.schema([schema.field(c) for c in columns])
                    )
                    use(table.take(pa.array(ordered[lo:hi] - start)), order[lo:hi])
                start += batch.num_rows
        else:
            start += size
    # Decoded parts leave freed blocks in Arrow's allocator: give them back.
    pa.default_memory_pool().release_unused()


def asof_rows(repo_dir: Path) -> FinishRows:
    """The same point-in-time join as Feast's, over the same offline datasets, then finished
    columnar (`finish`): per card (per terminal), the latest state row stamped at or before
    the entity timestamp.

    Feast's file offline store makes this join through dask and compares every entity row with
    every earlier state row of its key (minutes for a few weeks of history); this joins keys
    and timestamps only, then reads the states one part file at a time, only the columns the
    features use. `test_training_pit_engines` proves the datasets of both engines equal.
    """
    card_dir = repo_dir / offline_store.CARD_STATE_DIR
    terminal_dir = repo_dir / offline_store.TERMINAL_STATE_DIR

    def finish_rows(entities: pd.DataFrame) -> tuple[np.ndarray, int, int, int]:
        amounts = entities["amount"].to_numpy(np.float64)
        events = entities["event_ms"].to_numpy(np.int64)
        n = len(entities)
        out = np.empty((n, len(features.FEATURE_NAMES)), dtype=np.float64)
        card_schema = offline_store.CARD_STATE_SCHEMA
        terminal_schema = offline_store.TERMINAL_STATE_SCHEMA
        # Every row as if without history first; rows with a state are overwritten below.
        # In slices: each finishing step holds a few float64 columns of its rows at once.
        for start in range(0, n, FILL_ROWS):
            rows = slice(start, min(n, start + FILL_ROWS))
            size = rows.stop - start
            finish.fill(out, rows, finish.transaction_columns(amounts[rows], events[rows]))
            finish.fill(
                out,
                rows,
                finish.card_columns(
                    finish.null_states(card_schema, finish.CARD_COLUMNS, size),
                    amounts[rows],
                    events[rows],
                ),
            )
            finish.fill(
                out,
                rows,
                finish.terminal_columns(
                    finish.null_states(terminal_schema, finish.TERMINAL_COLUMNS, size),
                    events[rows],
                ),
            )
        timestamps = entities["event_timestamp"]
        cards = _asof_positions(entities["card_id"], timestamps, card_dir, card_schema, "card_id")
        _gather(
            card_dir,
            card_schema,
            finish.CARD_COLUMNS,
            cards,
            lambda states, rows: finish.fill(
                out, rows, finish.card_columns(states, amounts[rows], events[rows])
            ),
        )
        terminals = _asof_positions(
            entities["terminal_id"], timestamps, terminal_dir, terminal_schema, "terminal_id"
        )
        _gather(
            terminal_dir,
            terminal_schema,
            finish.TERMINAL_COLUMNS,
            terminals,
            lambda states, rows: finish.fill(
                out, rows, finish.terminal_columns(states, events[rows])
            ),
        )
        no_card, no_terminal = cards < 0, terminals < 0
        return out, int((no_card & no_terminal).sum()), int(no_card.sum()), int(no_terminal.sum())

    return finish_rows


def asof_fetch(repo_dir: Path) -> FetchStates:
    """`asof_rows`' join returning the state columns themselves, as Feast's does (to compare
    the two joins state for state)."""

    def view(entities: pd.DataFrame, rel: Path, schema: pa.Schema, key: str) -> pd.DataFrame:
        positions = _asof_positions(
            entities[key], entities["event_timestamp"], repo_dir / rel, schema, key
        )
        found = positions >= 0
        states = offline_store.read(repo_dir / rel, schema).take(pa.array(positions[found]))
        frame = states.drop_columns([key, "event_timestamp"]).to_pandas()
        frame.insert(0, "transaction_id", entities["transaction_id"].to_numpy()[found])
        return frame

    def fetch(entities: pd.DataFrame) -> pd.DataFrame:
        cards = view(
            entities, offline_store.CARD_STATE_DIR, offline_store.CARD_STATE_SCHEMA, "card_id"
        )
        terminals = view(
            entities,
            offline_store.TERMINAL_STATE_DIR,
            offline_store.TERMINAL_STATE_SCHEMA,
            "terminal_id",
        )
        joined = entities[["transaction_id"]].merge(cards, on="transaction_id", how="left")
        joined = joined.merge(terminals, on="transaction_id", how="left")
        return _any_state(joined)

    return fetch


PIT_ENGINES: dict[str, Callable[[Path], FinishRows]] = {
    "asof": asof_rows,
    "feast": lambda repo_dir: rows_from_states(feast_fetch(repo_dir)),
}


def build_dataset(
    repo_dir: Path,
    cutoff_ms: int,
    start_ms: int | None = None,
    end_ms: int | None = None,
    engine: str = "asof",
    skip: tuple[int, int] | None = None,
) -> tuple[pd.DataFrame, DatasetStats]:
    """Rows for the logged transactions in [start_ms, end_ms), labels as known at cutoff_ms.

    Columns: transaction_id, card_id, event_ms, FEATURE_NAMES, label_reported_ms (when the
    fraud label arrived, NaN if not by the cutoff; lets a split relabel at an earlier cutoff)
    and label. end_ms defaults to just after the cutoff: later transactions were not known.
    `skip`: see `assemble_rows`.
    """
    if end_ms is None:
        end_ms = cutoff_ms + 1
    labels = read_labels(repo_dir)
    # Handed over without a name here: assemble_rows drops the log once it has picked its rows.
    frame, stats = assemble_rows(
        read_transactions(repo_dir),
        labels,
        cutoff_ms,
        PIT_ENGINES[engine](repo_dir),
        start_ms=start_ms,
        end_ms=end_ms,
        skip=skip,
    )
    log.info(
        "dataset: %s rows, %s positives, %s without card history, %s without terminal "
        "history, %s without any",
        stats.rows,
        stats.positives,
        stats.no_history,
        stats.no_terminal_history,
        stats.feast_dropped,
    )
    return frame, stats

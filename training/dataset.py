"""Training rows: the transaction log, point-in-time card and terminal state, labels at a cutoff.

Each transaction is joined to its card's state and its terminal's state as of 1 ms before it
(the states the scorer saw when it scored it; a terminal's fraud labels count from the time they
were reported), and the model inputs are finished from them with `features.all_features`, the
same function the scorer calls: one implementation, no skew.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from services.common import feast_repo, features, offline_store
from training import dask_tokens

log = logging.getLogger(__name__)

#: entity rows (card_id, terminal_id, event_timestamp, transaction_id, ...) -> transaction_id +
#: STATE_COLUMNS + TERMINAL_STATE_COLUMNS, for the rows with any state (missing view: NaN).
FetchStates = Callable[[pd.DataFrame], pd.DataFrame]

ALL_STATE_COLUMNS: tuple[str, ...] = (*features.STATE_COLUMNS, *features.TERMINAL_STATE_COLUMNS)

#: What `build_dataset` returns, besides FEATURE_NAMES.
ID_COLUMNS: tuple[str, ...] = ("transaction_id", "card_id", "event_ms")


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(column: pa.ChunkedArray) -> np.ndarray:
    micros = pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)
    return np.asarray(micros, dtype=np.int64) // 1000


def read_transactions(repo_dir: Path) -> pd.DataFrame:
    table = offline_store.read(
        repo_dir / offline_store.TRANSACTIONS_DIR, offline_store.TRANSACTIONS_SCHEMA
    )
    return table.select(
        ["transaction_id", "card_id", "terminal_id", "amount", "event_ms"]
    ).to_pandas()


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
            "card_id": transactions["card_id"].to_numpy(),
            "terminal_id": transactions["terminal_id"].to_numpy(),
            "event_timestamp": pd.to_datetime(
                transactions["event_ms"].to_numpy(np.int64) - 1, unit="ms", utc=True
            ),
            "transaction_id": transactions["transaction_id"].to_numpy(),
            "amount": transactions["amount"].to_numpy(np.float64),
            "event_ms": transactions["event_ms"].to_numpy(np.int64),
        }
    )


def _present(value: Any) -> Any:
    """Feast and pandas mark missing values as None, NaN, NA or NaT; from_row wants None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def finish_features(rows: pd.DataFrame) -> tuple[np.ndarray, int, int]:
    """FEATURE_NAMES for each row (state columns + amount + event_ms); also counts the rows
    without card history and without terminal history."""
    n = len(rows)
    out = np.empty((n, len(features.FEATURE_NAMES)), dtype=np.float64)
    card_names = features.STATE_COLUMNS
    terminal_names = features.TERMINAL_STATE_COLUMNS
    card_columns = [rows[c].to_numpy(dtype=object) for c in card_names]
    terminal_columns = [rows[c].to_numpy(dtype=object) for c in terminal_names]
    amounts = rows["amount"].to_numpy(np.float64)
    events = rows["event_ms"].to_numpy(np.int64)
    no_history = 0
    no_terminal = 0
    # A plain loop on purpose: the finishing must be the scorer's own code, row by row.
    for i in range(n):
        record = {
            name: _present(col[i]) for name, col in zip(card_names, card_columns, strict=True)
        }
        state = features.from_row(record)
        if state is None:
            no_history += 1
        terminal_record = {
            name: _present(col[i])
            for name, col in zip(terminal_names, terminal_columns, strict=True)
        }
        terminal = features.terminal_from_row(terminal_record)
        if terminal is None:
            no_terminal += 1
        values = features.all_features(state, float(amounts[i]), int(events[i]), terminal)
        out[i] = features.feature_vector(values)
    return out, no_history, no_terminal


def assemble(
    transactions: pd.DataFrame,
    labels: pd.DataFrame,
    cutoff_ms: int,
    fetch_states: FetchStates,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> tuple[pd.DataFrame, DatasetStats]:
    """The dataset from already-loaded logs; `fetch_states` does the point-in-time join."""
    n_all = len(transactions)
    transactions = transactions.drop_duplicates("transaction_id", keep="first")
    duplicates = n_all - len(transactions)
    in_window = pd.Series(True, index=transactions.index)
    if start_ms is not None:
        in_window &= transactions["event_ms"] >= start_ms
    if end_ms is not None:
        in_window &= transactions["event_ms"] < end_ms
    picked = transactions[in_window].sort_values(["event_ms", "transaction_id"], kind="stable")
    entities = entity_rows(picked)

    state_columns = list(ALL_STATE_COLUMNS)
    if len(entities):
        fetched = fetch_states(entities)
        fetched = fetched[["transaction_id", *state_columns]].drop_duplicates(
            "transaction_id", keep="last"
        )
    else:
        fetched = pd.DataFrame(columns=["transaction_id", *state_columns])
    # Entity rows with no history at all come back empty; they are still transactions to learn.
    joined = entities.merge(fetched, on="transaction_id", how="left", indicator=True)
    feast_dropped = int((joined["_merge"] == "left_only").sum())
    joined = joined.drop(columns="_merge")

    matrix, no_history, no_terminal = finish_features(joined)
    frame = pd.DataFrame(matrix, columns=list(features.FEATURE_NAMES))
    for column in reversed(ID_COLUMNS):
        frame.insert(0, column, joined[column].to_numpy())
    reported = fraud_reported_ms(labels, cutoff_ms)
    frame["label_reported_ms"] = frame["transaction_id"].map(reported).astype(np.float64)
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
    )
    if feast_dropped:
        # Expected where both the card and the terminal are seen for the first time.
        log.info("no state at all for %s of %s entity rows", feast_dropped, len(frame))
    return frame, stats


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
        # One call per view: with both views in one call, Feast drops every entity row that
        # lacks history in *either* view (a new card at a known terminal would lose both).
        cards = view_states(entities, "card_id", feast_repo.feature_refs())
        terminals = view_states(entities, "terminal_id", feast_repo.terminal_feature_refs())
        joined = entities[["transaction_id"]].merge(cards, on="transaction_id", how="left")
        joined = joined.merge(terminals, on="transaction_id", how="left")
        return _any_state(joined)

    return fetch


def _asof(
    left: pd.DataFrame,
    folder: Path,
    schema: pa.Schema,
    key: str,
) -> pd.DataFrame:
    """Per `key`, the latest state row of `folder` stamped at or before each entity timestamp."""
    latest = left["event_timestamp"].max()
    table = offline_store.read(folder, schema)
    table = table.filter(
        pc.and_(
            pc.is_in(table[key], value_set=pa.array(left[key].unique())),
            pc.less_equal(table["event_timestamp"], pa.scalar(latest, pa.timestamp("us", "UTC"))),
        )
    )
    states = table.to_pandas().rename(columns={"event_timestamp": "_state_ts"})
    states["_state_ts"] = states["_state_ts"].astype("datetime64[us, UTC]")
    joined = pd.merge_asof(
        left.sort_values("event_timestamp", kind="stable"),
        states.sort_values("_state_ts", kind="stable"),
        left_on="event_timestamp",
        right_on="_state_ts",
        by=key,
        direction="backward",
        allow_exact_matches=True,
    )
    return joined.drop(columns="_state_ts")


def asof_fetch(repo_dir: Path) -> FetchStates:
    """The same point-in-time join as Feast's, over the same offline datasets, done with one
    `merge_asof` per view: per card (per terminal), the latest state row stamped at or before
    the entity timestamp.

    Feast's file offline store makes this join through dask and compares every entity row with
    every earlier state row of its key (minutes for a few weeks of history); this is seconds.
    `test_training_pit_engines` proves both return the same states.
    """

    def fetch(entities: pd.DataFrame) -> pd.DataFrame:
        left = entities[["card_id", "terminal_id", "event_timestamp", "transaction_id"]].copy()
        left["event_timestamp"] = left["event_timestamp"].astype("datetime64[us, UTC]")
        cards = _asof(
            left,
            repo_dir / offline_store.CARD_STATE_DIR,
            offline_store.CARD_STATE_SCHEMA,
            "card_id",
        )
        terminals = _asof(
            left[["terminal_id", "event_timestamp", "transaction_id"]],
            repo_dir / offline_store.TERMINAL_STATE_DIR,
            offline_store.TERMINAL_STATE_SCHEMA,
            "terminal_id",
        )
        joined = cards.merge(
            terminals.drop(columns=["terminal_id", "event_timestamp"]),
            on="transaction_id",
            how="left",
        )
        return _any_state(joined)

    return fetch


PIT_ENGINES: dict[str, Callable[[Path], FetchStates]] = {"asof": asof_fetch, "feast": feast_fetch}


def build_dataset(
    repo_dir: Path,
    cutoff_ms: int,
    start_ms: int | None = None,
    end_ms: int | None = None,
    engine: str = "asof",
) -> tuple[pd.DataFrame, DatasetStats]:
    """Rows for the logged transactions in [start_ms, end_ms), labels as known at cutoff_ms.

    Columns: transaction_id, card_id, event_ms, FEATURE_NAMES, label_reported_ms (when the
    fraud label arrived, NaN if not by the cutoff; lets a split relabel at an earlier cutoff)
    and label. end_ms defaults to just after the cutoff: later transactions were not known.
    """
    if end_ms is None:
        end_ms = cutoff_ms + 1
    transactions = read_transactions(repo_dir)
    labels = read_labels(repo_dir)
    frame, stats = assemble(
        transactions,
        labels,
        cutoff_ms,
        PIT_ENGINES[engine](repo_dir),
        start_ms=start_ms,
        end_ms=end_ms,
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

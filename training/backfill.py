"""Offline history for a new deployment, computed from past transactions by the stream's code.

Transactions and labels are replayed in time order (transactions at their event time, labels at
their reported time; at the same millisecond transactions first) through the stream's own
functions: `features.apply_transaction` for the card, `features.apply_terminal_transaction` and
`features.apply_terminal_label` for the terminal. They are written in the stream's layout: a
card_state row after every applied transaction, a terminal_state row after every change of a
terminal (stamped like the stream stamps it), a transaction-log row per transaction, and the
label log. Optionally each final state goes to the online store, so the scorer has history for
known cards and terminals at once.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from services.common import currency, feast_repo, features, offline_store

log = logging.getLogger(__name__)

#: Rows per parquet part: bounded memory while folding, few enough files for Feast to scan.
PART_ROWS = 200_000
#: Cards per online push: one push costs about the same for 1 row or a few hundred.
PUSH_ROWS = 1_000

TRANSACTION_COLUMNS = ("transaction_id", "card_id", "terminal_id", "amount_minor", "currency")
LABEL_COLUMNS = ("transaction_id", "card_id", "terminal_id", "is_fraud", "transaction_ms")


@dataclass(frozen=True)
class BackfillStats:
    transactions: int
    applied: int
    duplicates: int
    late: int
    cards: int
    terminals: int
    terminal_changes: int
    labels: int
    parts: int
    online_cards: int
    online_terminals: int
    first_event_ms: int | None
    last_event_ms: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _require(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lack column(s) {missing}")


def _transactions_table(rows: list[tuple[str, str, str, float, int]]) -> pa.Table:
    tids, cards, terminals, amounts, events = (list(col) for col in zip(*rows, strict=True))
    micros = [ms * 1000 for ms in events]
    schema = offline_store.TRANSACTIONS_SCHEMA
    arrays = [tids, cards, terminals, amounts, events, micros]
    return pa.table(
        [pa.array(a, type=f.type) for a, f in zip(arrays, schema, strict=True)], schema=schema
    )


def _labels_table(labels: pd.DataFrame) -> pa.Table:
    schema = offline_store.LABELS_SCHEMA
    reported = labels["reported_ms"].to_numpy(np.int64) * 1000
    arrays = [
        labels["transaction_id"].astype(str).to_numpy(),
        labels["card_id"].astype(str).to_numpy(),
        labels["terminal_id"].astype(str).to_numpy(),
        labels["is_fraud"].astype(bool).to_numpy(),
        labels["transaction_ms"].to_numpy(np.int64),
        reported,
    ]
    return pa.table(
        [pa.array(a, type=f.type) for a, f in zip(arrays, schema, strict=True)], schema=schema
    )


def _write_labels(repo_dir: Path, labels: pd.DataFrame) -> int:
    _require(labels, (*LABEL_COLUMNS, "reported_ms"), "labels")
    parts = 0
    folder = repo_dir / offline_store.LABELS_DIR
    for start in range(0, len(labels), PART_ROWS):
        offline_store.write_part(folder, _labels_table(labels.iloc[start : start + PART_ROWS]))
        parts += 1
    return parts


def _push(repo_dir: Path, source: str, key: str, rows: list[dict[str, Any]]) -> None:
    from feast.data_source import PushMode

    store = feast_repo.open_store(repo_dir)
    for start in range(0, len(rows), PUSH_ROWS):
        frame = pd.DataFrame(rows[start : start + PUSH_ROWS])
        store.push(source, frame, to=PushMode.ONLINE)
    log.debug("pushed %s %s states online", len(rows), key)


def push_online(repo_dir: Path, states: dict[str, features.CardState]) -> int:
    """Each card's latest state to the online store, as the stream's pushes would leave it."""
    rows = [
        {
            feast_repo.ENTITY_KEY: card_id,
            feast_repo.TIMESTAMP: pd.Timestamp(state.last_event_ms, unit="ms", tz="UTC"),
            **features.to_row(state),
        }
        for card_id, state in states.items()
    ]
    _push(repo_dir, feast_repo.PUSH_SOURCE, feast_repo.ENTITY_KEY, rows)
    return len(rows)


def push_terminals_online(
    repo_dir: Path, states: dict[str, features.TerminalState], stamps_ms: dict[str, int]
) -> int:
    """Each terminal's latest state to the online store, stamped with its last change."""
    rows = [
        {
            feast_repo.TERMINAL_ENTITY_KEY: terminal_id,
            feast_repo.TIMESTAMP: pd.Timestamp(stamps_ms[terminal_id], unit="ms", tz="UTC"),
            **features.terminal_to_row(state),
        }
        for terminal_id, state in states.items()
    ]
    _push(repo_dir, feast_repo.TERMINAL_PUSH_SOURCE, feast_repo.TERMINAL_ENTITY_KEY, rows)
    return len(rows)


def _timeline(transactions: pd.DataFrame, labels: pd.DataFrame | None) -> list[tuple[int, int]]:
    """(kind, row position) in replay order: kind 0 a transaction, 1 a label."""
    times = [transactions["event_ms"].to_numpy(np.int64)]
    kinds = [np.zeros(len(transactions), dtype=np.int64)]
    positions = [np.arange(len(transactions))]
    if labels is not None and len(labels):
        times.append(labels["reported_ms"].to_numpy(np.int64))
        kinds.append(np.ones(len(labels), dtype=np.int64))
        positions.append(np.arange(len(labels)))
    time_all = np.concatenate(times)
    kind_all = np.concatenate(kinds)
    pos_all = np.concatenate(positions)
    # lexsort: last key first; positions keep each input's own order at equal (time, kind).
    order = np.lexsort((pos_all, kind_all, time_all))
    return [(int(kind_all[i]), int(pos_all[i])) for i in order]


def backfill(
    repo_dir: Path,
    transactions_df: pd.DataFrame,
    labels_df: pd.DataFrame | None = None,
    allowed_lateness_ms: int = 300_000,
    *,
    online: bool = True,
    terminal_allowed_lateness_ms: int = 3_600_000,
) -> BackfillStats:
    """Replay past transactions and labels into the offline store of a prepared repo (and
    online, if asked).

    `transactions_df` has the simulator's columns (transaction_id, card_id, terminal_id,
    amount_minor, currency, event_ms, ...); `labels_df` its label columns (transaction_id,
    card_id, terminal_id, is_fraud, transaction_ms, reported_ms).
    """
    _require(transactions_df, (*TRANSACTION_COLUMNS, "event_ms"), "transactions")
    if labels_df is not None:
        _require(labels_df, (*LABEL_COLUMNS, "reported_ms"), "labels")
    ordered = transactions_df.sort_values("event_ms", kind="stable")
    amounts = [
        currency.to_major(int(minor), str(code))
        for minor, code in zip(ordered["amount_minor"], ordered["currency"], strict=True)
    ]
    card_dir = repo_dir / offline_store.CARD_STATE_DIR
    terminal_dir = repo_dir / offline_store.TERMINAL_STATE_DIR
    tx_dir = repo_dir / offline_store.TRANSACTIONS_DIR

    states: dict[str, features.CardState] = {}
    terminals: dict[str, features.TerminalState] = {}
    terminal_stamps: dict[str, int] = {}
    state_rows: list[tuple[str, int, dict[str, object]]] = []
    terminal_rows: list[tuple[str, int, dict[str, object]]] = []
    tx_rows: list[tuple[str, str, str, float, int]] = []
    counts = {outcome: 0 for outcome in features.Outcome}
    parts = 0

    def flush() -> None:
        nonlocal parts
        if state_rows:
            offline_store.write_part(card_dir, offline_store.card_state_table(state_rows))
            offline_store.write_part(tx_dir, _transactions_table(tx_rows))
            parts += 2
            state_rows.clear()
            tx_rows.clear()
        if terminal_rows:
            offline_store.write_part(
                terminal_dir, offline_store.terminal_state_table(terminal_rows)
            )
            parts += 1
            terminal_rows.clear()

    def terminal(terminal_id: str) -> features.TerminalState:
        found = terminals.get(terminal_id)
        if found is None:
            found = terminals[terminal_id] = features.TerminalState()
        return found

    n_changes = [0]

    def changed(terminal_id: str, stamp_ms: int) -> None:
        row = features.terminal_to_row(terminals[terminal_id])
        terminal_rows.append((terminal_id, stamp_ms, row))
        terminal_stamps[terminal_id] = stamp_ms
        n_changes[0] += 1

    tx_columns = list(
        zip(
            ordered["transaction_id"].astype(str),
            ordered["card_id"].astype(str),
            ordered["terminal_id"].astype(str),
            amounts,
            ordered["event_ms"].astype(np.int64),
            strict=True,
        )
    )
    label_columns: list[tuple[str, str, bool, int, int]] = []
    if labels_df is not None and len(labels_df):
        label_columns = list(
            zip(
                labels_df["transaction_id"].astype(str),
                labels_df["terminal_id"].astype(str),
                labels_df["is_fraud"].astype(bool),
                labels_df["transaction_ms"].astype(np.int64),
                labels_df["reported_ms"].astype(np.int64),
                strict=True,
            )
        )
    for kind, position in _timeline(ordered, labels_df):
        if kind == 1:
            tid, terminal_id, is_fraud, transaction_ms, reported_ms = label_columns[position]
            if terminal_id:
                outcome = features.apply_terminal_label(
                    terminal(terminal_id), tid, int(transaction_ms), bool(is_fraud)
                )
                if outcome is features.Outcome.APPLIED:
                    changed(terminal_id, int(reported_ms))
            continue
        tid, card_id, terminal_id, amount, event = tx_columns[position]
        event_ms = int(event)
        state = states.get(card_id)
        if state is None:
            state = states[card_id] = features.CardState()
        outcome = features.apply_transaction(
            state, tid, event_ms, amount, allowed_lateness_ms, terminal_id
        )
        counts[outcome] += 1
        if outcome is not features.Outcome.APPLIED:
            continue
        state_rows.append((card_id, event_ms, features.to_row(state)))
        tx_rows.append((tid, card_id, terminal_id, amount, event_ms))
        if terminal_id:
            applied = features.apply_terminal_transaction(
                terminal(terminal_id), tid, event_ms, terminal_allowed_lateness_ms
            )
            if applied is features.Outcome.APPLIED:
                changed(terminal_id, event_ms)
        if len(state_rows) + len(terminal_rows) >= PART_ROWS:
            flush()
    flush()

    n_labels = 0
    if labels_df is not None and len(labels_df):
        parts += _write_labels(repo_dir, labels_df)
        n_labels = len(labels_df)

    online_cards = push_online(repo_dir, states) if online and states else 0
    online_terminals = (
        push_terminals_online(repo_dir, terminals, terminal_stamps) if online and terminals else 0
    )
    events = ordered["event_ms"]
    stats = BackfillStats(
        transactions=len(ordered),
        applied=counts[features.Outcome.APPLIED],
        duplicates=counts[features.Outcome.DUPLICATE],
        late=counts[features.Outcome.LATE],
        cards=len(states),
        terminals=len(terminals),
        terminal_changes=n_changes[0],
        labels=n_labels,
        parts=parts,
        online_cards=online_cards,
        online_terminals=online_terminals,
        first_event_ms=int(events.min()) if len(events) else None,
        last_event_ms=int(events.max()) if len(events) else None,
    )
    log.info(
        "backfill: %s transactions (%s applied, %s duplicate, %s late) over %s cards and %s "
        "terminals (%s terminal changes), %s labels, %s parts, %s cards and %s terminals online",
        stats.transactions,
        stats.applied,
        stats.duplicates,
        stats.late,
        stats.cards,
        stats.terminals,
        stats.terminal_changes,
        stats.labels,
        stats.parts,
        stats.online_cards,
        stats.online_terminals,
    )
    return stats

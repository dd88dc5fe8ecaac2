"""Offline history for a new deployment, computed from past transactions by the stream's code.

Transactions are replayed in event-time order through `features.apply_transaction`, exactly
what the stream does live, and written in the stream's layout: a card_state row after every
applied transaction, a transaction-log row for it, and the label log. Optionally each card's
final state goes to the online store, so the scorer has history for known cards at once.
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
    labels: int
    parts: int
    online_cards: int
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


def push_online(repo_dir: Path, states: dict[str, features.CardState]) -> int:
    """Each card's latest state to the online store, as the stream's pushes would leave it."""
    from feast.data_source import PushMode

    store = feast_repo.open_store(repo_dir)
    items = list(states.items())
    for start in range(0, len(items), PUSH_ROWS):
        chunk = items[start : start + PUSH_ROWS]
        frame = pd.DataFrame(
            [
                {
                    feast_repo.ENTITY_KEY: card_id,
                    feast_repo.TIMESTAMP: pd.Timestamp(state.last_event_ms, unit="ms", tz="UTC"),
                    **features.to_row(state),
                }
                for card_id, state in chunk
            ]
        )
        store.push(feast_repo.PUSH_SOURCE, frame, to=PushMode.ONLINE)
    return len(items)


def backfill(
    repo_dir: Path,
    transactions_df: pd.DataFrame,
    labels_df: pd.DataFrame | None = None,
    allowed_lateness_ms: int = 300_000,
    *,
    online: bool = True,
) -> BackfillStats:
    """Replay past transactions into the offline store of a prepared repo (and online, if asked).

    `transactions_df` has the simulator's columns (transaction_id, card_id, terminal_id,
    amount_minor, currency, event_ms, ...); `labels_df` its label columns (transaction_id,
    card_id, terminal_id, is_fraud, transaction_ms, reported_ms).
    """
    _require(transactions_df, (*TRANSACTION_COLUMNS, "event_ms"), "transactions")
    ordered = transactions_df.sort_values("event_ms", kind="stable")
    amounts = [
        currency.to_major(int(minor), str(code))
        for minor, code in zip(ordered["amount_minor"], ordered["currency"], strict=True)
    ]
    card_dir = repo_dir / offline_store.CARD_STATE_DIR
    tx_dir = repo_dir / offline_store.TRANSACTIONS_DIR

    states: dict[str, features.CardState] = {}
    state_rows: list[tuple[str, int, dict[str, object]]] = []
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

    columns = zip(
        ordered["transaction_id"].astype(str),
        ordered["card_id"].astype(str),
        ordered["terminal_id"].astype(str),
        amounts,
        ordered["event_ms"].astype(np.int64),
        strict=True,
    )
    for tid, card_id, terminal_id, amount, event in columns:
        event_ms = int(event)
        state = states.get(card_id)
        if state is None:
            state = states[card_id] = features.CardState()
        outcome = features.apply_transaction(state, tid, event_ms, amount, allowed_lateness_ms)
        counts[outcome] += 1
        if outcome is not features.Outcome.APPLIED:
            continue
        state_rows.append((card_id, event_ms, features.to_row(state)))
        tx_rows.append((tid, card_id, terminal_id, amount, event_ms))
        if len(state_rows) >= PART_ROWS:
            flush()
    flush()

    n_labels = 0
    if labels_df is not None and len(labels_df):
        parts += _write_labels(repo_dir, labels_df)
        n_labels = len(labels_df)

    online_cards = push_online(repo_dir, states) if online and states else 0
    events = ordered["event_ms"]
    stats = BackfillStats(
        transactions=len(ordered),
        applied=counts[features.Outcome.APPLIED],
        duplicates=counts[features.Outcome.DUPLICATE],
        late=counts[features.Outcome.LATE],
        cards=len(states),
        labels=n_labels,
        parts=parts,
        online_cards=online_cards,
        first_event_ms=int(events.min()) if len(events) else None,
        last_event_ms=int(events.max()) if len(events) else None,
    )
    log.info(
        "backfill: %s transactions (%s applied, %s duplicate, %s late) over %s cards, "
        "%s labels, %s parts, %s cards online",
        stats.transactions,
        stats.applied,
        stats.duplicates,
        stats.late,
        stats.cards,
        stats.labels,
        stats.parts,
        stats.online_cards,
    )
    return stats

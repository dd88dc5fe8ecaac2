"""Offline history for a new deployment, computed from past transactions by the stream's code.

Transactions and labels are replayed in time order (transactions at their event time, labels at
their reported time; at the same millisecond transactions first) through the stream's own
functions: `features.apply_transaction` for the card, `features.apply_terminal_transaction` and
`features.apply_terminal_label` for the terminal. They are written in the stream's layout: a
card_state row after every applied transaction, a terminal_state row after every change of a
terminal (stamped like the stream stamps it), a transaction-log row per transaction, and the
label log. Optionally each final state goes to the online store, so the scorer has history for
known cards and terminals at once.

Cards are independent of each other and terminals of each other, so the replay runs in two
passes split by key over forked worker processes: cards first (a terminal counts only the
transactions its card counted), then terminals. `tests/integration/test_training_backfill.py`
checks that any number of workers writes the same rows.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from services.common import currency, feast_repo, features, offline_store
from services.common.history import CardHistory, TerminalHistory

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
            **features.to_list_row(state),
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
            **features.terminal_to_list_row(state),
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


def _amounts(minor: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """`currency.to_major` of every row, one division per currency instead of per row.

    An integer below 2**53 is exact as a float and IEEE division rounds correctly, as Python's
    int / int does: the values are bit for bit `to_major`'s.
    """
    out = np.empty(len(minor), dtype=np.float64)
    values = minor.astype(np.float64)
    for code in pd.unique(codes):
        # to_major raises UnknownCurrency for a code it does not know, as per row it would.
        divisor = next(10**e for e in range(10) if currency.to_major(10**e, str(code)) == 1.0)
        rows = codes == code
        out[rows] = values[rows] / divisor
    if len(minor) and np.abs(minor).max() >= 2**53:
        raise ValueError("amount_minor beyond 2**53 cannot be converted exactly")
    return out


def _shards(keys: pd.Series, n: int) -> np.ndarray:
    """A shard number per row: rows of one key always share a shard (any fixed rule would do,
    the output does not depend on it)."""
    if n == 1:
        return np.zeros(len(keys), dtype=np.int64)
    codes, _ = pd.factorize(keys, sort=False)
    return np.asarray(codes, dtype=np.int64) % n


@dataclass
class _Replay:
    """What a backfill replays, shared with forked workers by reference (never pickled).

    `ordered` is the transaction log in event-time order (stable), `amounts` its major-unit
    amounts; `applied` (filled by the card pass) marks the transactions the cards counted,
    the only ones the terminals count too.
    """

    repo_dir: Path
    ordered: pd.DataFrame
    amounts: np.ndarray
    labels: pd.DataFrame | None
    card_shard: np.ndarray
    terminal_shard: np.ndarray
    label_shard: np.ndarray | None
    allowed_lateness_ms: int
    keep_states: bool
    applied: np.ndarray | None = None


#: The replay of the running backfill, for forked workers (fork shares it copy-on-write).
_REPLAY: _Replay | None = None


@dataclass
class _CardResult:
    #: Positions (in `ordered`) of the shard's transactions the cards counted.
    applied: np.ndarray
    counts: dict[features.Outcome, int]
    cards: int
    parts: int
    states: dict[str, features.CardState]


@dataclass
class _TerminalResult:
    terminals: int
    changes: int
    parts: int
    states: dict[str, features.TerminalState]
    stamps: dict[str, int]


_History = CardHistory | TerminalHistory


class _PartWriter:
    """State rows (and transaction-log rows) buffered into part files of about PART_ROWS rows.

    A part is only cut when the replay clock moves on: all states of one millisecond land in
    the same part, so their same-millisecond stamps (`offline_store`) do not depend on where
    the parts were cut, and a parallel backfill writes the very rows a serial one writes.
    """

    def __init__(
        self, folder: Path, history: Callable[[], _History], tx_folder: Path | None = None
    ) -> None:
        self._folder = folder
        self._new_history = history
        self._tx_folder = tx_folder
        self.history = history()
        self.tx_rows: list[tuple[str, str, str, float, int]] = []
        self.parts = 0

    def tick(self, now_ms: int) -> None:
        """Called before the replay applies an event at now_ms."""
        if len(self.history) >= PART_ROWS and self.history.stamps_ms[-1] != now_ms:
            self.flush()

    def add(self, key: str, stamp_ms: int, state: Any) -> None:
        """The state of `key` after its event at stamp_ms, dedup columns included (the
        backfill has no later row of the same batch to leave them to)."""
        history = self.history
        history.complete(history.append(key, stamp_ms, state), state)

    def flush(self) -> None:
        if len(self.history):
            offline_store.write_part(self._folder, self.history.table())
            self.parts += 1
            self.history = self._new_history()
        if self.tx_rows and self._tx_folder is not None:
            offline_store.write_part(
                self._tx_folder, offline_store.transactions_table(self.tx_rows)
            )
            self.parts += 1
            self.tx_rows.clear()


def _fold_cards(replay: _Replay, shard: int) -> _CardResult:
    """The card pass over one shard of cards: card states and the transaction log."""
    mine = np.flatnonzero(replay.card_shard == shard)
    sub = replay.ordered.iloc[mine]
    writer = _PartWriter(
        replay.repo_dir / offline_store.CARD_STATE_DIR,
        CardHistory,
        replay.repo_dir / offline_store.TRANSACTIONS_DIR,
    )
    states: dict[str, features.CardState] = {}
    counts = {outcome: 0 for outcome in features.Outcome}
    applied: list[int] = []
    lateness = replay.allowed_lateness_ms
    rows = zip(
        mine.tolist(),
        sub["transaction_id"].astype(str).tolist(),
        sub["card_id"].astype(str).tolist(),
        sub["terminal_id"].astype(str).tolist(),
        replay.amounts[mine].tolist(),
        sub["event_ms"].to_numpy(np.int64).tolist(),
        strict=True,
    )
    del sub
    for position, tid, card_id, terminal_id, amount, event_ms in rows:
        state = states.get(card_id)
        if state is None:
            state = states[card_id] = features.CardState()
        outcome = features.apply_transaction(state, tid, event_ms, amount, lateness, terminal_id)
        counts[outcome] += 1
        if outcome is not features.Outcome.APPLIED:
            continue
        applied.append(position)
        writer.tick(event_ms)
        writer.add(card_id, features.history_stamp_ms(event_ms, state.last_event_ms), state)
        writer.tx_rows.append((tid, card_id, terminal_id, amount, event_ms))
    writer.flush()
    return _CardResult(
        applied=np.asarray(applied, dtype=np.int64),
        counts=counts,
        cards=len(states),
        parts=writer.parts,
        states=states if replay.keep_states else {},
    )


def _fold_terminals(replay: _Replay, shard: int) -> _TerminalResult:
    """The terminal pass over one shard of terminals: the counted transactions at their event
    time and the labels at their reported time (at the same millisecond transactions first).

    The terminal states claim no source records (`TerminalState.sources` stays empty): the
    stream's terminals use them to recognise a Kafka record forwarded twice, and the backfill
    reads no Kafka record. Each transaction here is counted once without them, because only
    those their card counted reach this pass, and a card counts a transaction id once. A
    stream starting from the backfilled states takes every record it forwards as new, and
    rightly: it forwards only what its cards count, and the backfilled cards turn away what
    the backfill counted (a remembered id is a DUPLICATE, an older one LATE).
    """
    assert replay.applied is not None
    tx_mine = np.flatnonzero(replay.applied & (replay.terminal_shard == shard))
    txs = replay.ordered.iloc[tx_mine]
    labels = replay.labels
    if labels is not None and replay.label_shard is not None:
        labels = labels.iloc[np.flatnonzero(replay.label_shard == shard)]
    writer = _PartWriter(replay.repo_dir / offline_store.TERMINAL_STATE_DIR, TerminalHistory)
    terminals: dict[str, features.TerminalState] = {}
    stamps: dict[str, int] = {}
    changes = 0
    tx_columns = list(
        zip(
            txs["terminal_id"].astype(str).tolist(),
            txs["event_ms"].to_numpy(np.int64).tolist(),
            strict=True,
        )
    )
    label_columns: list[tuple[str, str, bool, int, int]] = []
    if labels is not None and len(labels):
        label_columns = list(
            zip(
                labels["transaction_id"].astype(str).tolist(),
                labels["terminal_id"].astype(str).tolist(),
                labels["is_fraud"].astype(bool).tolist(),
                labels["transaction_ms"].to_numpy(np.int64).tolist(),
                labels["reported_ms"].to_numpy(np.int64).tolist(),
                strict=True,
            )
        )
    for kind, position in _timeline(txs, labels):
        if kind == 1:
            tid, terminal_id, is_fraud, transaction_ms, stamp_ms = label_columns[position]
            if not terminal_id:
                continue
            state = terminals.get(terminal_id)
            if state is None:
                state = terminals[terminal_id] = features.TerminalState()
            outcome = features.apply_terminal_label(state, tid, transaction_ms, is_fraud)
        else:
            terminal_id, stamp_ms = tx_columns[position]
            if not terminal_id:
                continue
            state = terminals.get(terminal_id)
            if state is None:
                state = terminals[terminal_id] = features.TerminalState()
            outcome = features.apply_terminal_transaction(state, stamp_ms)
        if outcome is not features.Outcome.APPLIED:
            continue
        stamp_ms = features.history_stamp_ms(stamp_ms, state.last_event_ms)
        writer.tick(stamp_ms)
        writer.add(terminal_id, stamp_ms, state)
        stamps[terminal_id] = stamp_ms
        changes += 1
    writer.flush()
    return _TerminalResult(
        terminals=len(terminals),
        changes=changes,
        parts=writer.parts,
        states=terminals if replay.keep_states else {},
        stamps=stamps if replay.keep_states else {},
    )


def _card_task(shard: int) -> _CardResult:
    assert _REPLAY is not None
    return _fold_cards(_REPLAY, shard)


def _terminal_task(shard: int) -> _TerminalResult:
    assert _REPLAY is not None
    return _fold_terminals(_REPLAY, shard)


R = TypeVar("R")


def _map_shards(
    replay: _Replay,
    n_workers: int,
    fold: Callable[[_Replay, int], R],
    task: Callable[[int], R],
) -> list[R]:
    """`fold(replay, shard)` for every shard: in this process for one worker, else in forked
    workers that find `replay` in the module global (inherited, never pickled)."""
    global _REPLAY
    if n_workers == 1:
        return [fold(replay, 0)]
    _REPLAY = replay
    try:
        with multiprocessing.get_context("fork").Pool(n_workers) as pool:
            return pool.map(task, range(n_workers))
    finally:
        _REPLAY = None


def _default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def backfill(
    repo_dir: Path,
    transactions_df: pd.DataFrame,
    labels_df: pd.DataFrame | None = None,
    allowed_lateness_ms: int = 300_000,
    *,
    online: bool = True,
    workers: int | None = None,
) -> BackfillStats:
    """Replay past transactions and labels into the offline store of a prepared repo (and
    online, if asked).

    `transactions_df` has the simulator's columns (transaction_id, card_id, terminal_id,
    amount_minor, currency, event_ms, ...); `labels_df` its label columns (transaction_id,
    card_id, terminal_id, is_fraud, transaction_ms, reported_ms).

    Cards are independent of each other, and terminals of each other; a terminal counts the
    transactions its card counted. So the replay is two passes, each split by key over
    `workers` processes (default: this machine's cores): the cards (card states and the
    transaction log), then the terminals (their states, from the counted transactions and the
    labels). The rows written are the same for any number of workers; only the part files
    they are cut into differ.
    """
    _require(transactions_df, (*TRANSACTION_COLUMNS, "event_ms"), "transactions")
    if labels_df is not None:
        _require(labels_df, (*LABEL_COLUMNS, "reported_ms"), "labels")
    n_workers = max(1, workers if workers is not None else _default_workers())
    ordered = transactions_df.sort_values("event_ms", kind="stable").reset_index(drop=True)
    has_labels = labels_df is not None and len(labels_df) > 0
    labels = labels_df.reset_index(drop=True) if labels_df is not None and has_labels else None
    replay = _Replay(
        repo_dir=repo_dir,
        ordered=ordered,
        amounts=_amounts(
            ordered["amount_minor"].to_numpy(np.int64), ordered["currency"].astype(str).to_numpy()
        ),
        labels=labels,
        card_shard=_shards(ordered["card_id"].astype(str), n_workers),
        terminal_shard=np.zeros(0, dtype=np.int64),
        label_shard=None,
        allowed_lateness_ms=allowed_lateness_ms,
        keep_states=online,
    )
    # Terminals share one key space across both inputs: shard them together.
    terminal_keys = ordered["terminal_id"].astype(str)
    if labels is not None:
        terminal_keys = pd.concat(
            [terminal_keys, labels["terminal_id"].astype(str)], ignore_index=True
        )
    terminal_shard = _shards(terminal_keys, n_workers)
    replay.terminal_shard = terminal_shard[: len(ordered)]
    replay.label_shard = terminal_shard[len(ordered) :] if labels is not None else None
    del terminal_keys, terminal_shard

    card_results = _map_shards(replay, n_workers, _fold_cards, _card_task)
    applied = np.zeros(len(ordered), dtype=bool)
    for card_result in card_results:
        applied[card_result.applied] = True
    replay.applied = applied
    terminal_results = _map_shards(replay, n_workers, _fold_terminals, _terminal_task)

    counts = {outcome: 0 for outcome in features.Outcome}
    states: dict[str, features.CardState] = {}
    for card_result in card_results:
        for outcome, count in card_result.counts.items():
            counts[outcome] += count
        states.update(card_result.states)
    terminals: dict[str, features.TerminalState] = {}
    terminal_stamps: dict[str, int] = {}
    for terminal_result in terminal_results:
        terminals.update(terminal_result.states)
        terminal_stamps.update(terminal_result.stamps)
    parts = sum(r.parts for r in card_results) + sum(r.parts for r in terminal_results)
    n_cards = sum(r.cards for r in card_results)
    n_terminals = sum(r.terminals for r in terminal_results)
    n_changes = sum(r.changes for r in terminal_results)

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
        cards=n_cards,
        terminals=n_terminals,
        terminal_changes=n_changes,
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

"""The stream's batch logic, free of Kafka and Feast so it can be tested on its own.

A batch goes: raw bytes -> `parse_transaction` (a `ValidTransaction` or a `Rejected` for the
DLQ) -> `fold_batch` over the cards' current states -> rows for the offline store and the final
state per card for the online store. The faust agents only move bytes and call these functions.

Terminal state has one writer per terminal, but transactions and labels arrive keyed by card, so
each counted transaction and each label is forwarded as a `TerminalEvent` to an internal topic
keyed by terminal_id, and `fold_terminal_batch` folds those into terminal states.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import pyarrow as pa
from aiokafka.partitioner import murmur2
from google.protobuf.message import DecodeError

from services.common import events, features, offline_store
from services.common.events import InvalidTransaction, ValidTransaction
from services.common.features import CardState, Outcome, TerminalState
from services.proto.fraudscore.v1 import transaction_pb2

#: `field` header value when the payload itself could not be decoded.
PAYLOAD_FIELD = "payload"


@dataclass(frozen=True)
class Rejected:
    """Why a message goes to the DLQ instead of being counted."""

    field: str
    reason: str

    def headers(self, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
        """DLQ headers: what was wrong and where the original lives, for replay after a fix."""
        return [
            ("reason", self.reason.encode()),
            ("field", self.field.encode()),
            ("original_topic", topic.encode()),
            ("original_partition", str(partition).encode()),
            ("original_offset", str(offset).encode()),
        ]


def _decode_error(exc: Exception) -> Rejected:
    # The parser's message is short and never echoes the payload, so it is safe to forward.
    return Rejected(PAYLOAD_FIELD, f"undecodable protobuf: {str(exc)[:200]}")


def parse_transaction(raw: bytes | None) -> ValidTransaction | Rejected:
    """Decode and validate one `Transaction` message."""
    if not raw:
        return Rejected(PAYLOAD_FIELD, "empty message")
    txn = transaction_pb2.Transaction()
    try:
        txn.ParseFromString(raw)
    except DecodeError as exc:
        return _decode_error(exc)
    try:
        return events.validate(txn)
    except InvalidTransaction as exc:
        return Rejected(exc.field, exc.reason)


def _timestamp_ms(ts: Any) -> int:
    return int(ts.seconds) * 1000 + int(ts.nanos) // 1_000_000


def parse_label(raw: bytes | None) -> dict[str, Any] | Rejected:
    """Decode one `FraudLabel` into a row of `offline_store.LABELS_SCHEMA`."""
    if not raw:
        return Rejected(PAYLOAD_FIELD, "empty message")
    label = transaction_pb2.FraudLabel()
    try:
        label.ParseFromString(raw)
    except DecodeError as exc:
        return _decode_error(exc)
    if not label.transaction_id:
        return Rejected("transaction_id", "is required")
    if not label.card_id:
        return Rejected("card_id", "is required")
    if events.looks_like_pan(label.card_id):
        return Rejected("card_id", "looks like a card number; send a token")
    # Training joins labels by transaction and keeps those known at its cutoff: both times matter.
    if not label.HasField("reported_at") or label.reported_at.seconds <= 0:
        return Rejected("reported_at", "is required")
    if not label.HasField("transaction_time") or label.transaction_time.seconds <= 0:
        return Rejected("transaction_time", "is required")
    return {
        "transaction_id": label.transaction_id,
        "card_id": label.card_id,
        "terminal_id": label.terminal_id,
        "is_fraud": bool(label.is_fraud),
        "transaction_ms": _timestamp_ms(label.transaction_time),
        "reported_at": _timestamp_ms(label.reported_at) * 1000,
    }


@dataclass
class BatchResult:
    """What one batch of valid transactions changed."""

    #: Final state of every card that had at least one APPLIED transaction.
    states: dict[str, CardState] = field(default_factory=dict)
    #: (card_id, event_ms, features.to_row(state after it)) per APPLIED transaction.
    state_rows: list[tuple[str, int, dict[str, object]]] = field(default_factory=list)
    #: Rows of `offline_store.TRANSACTIONS_SCHEMA`, one per APPLIED transaction.
    transaction_rows: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))

    def final_rows(self) -> dict[str, dict[str, object]]:
        """`features.to_row` of each changed card's final state: its last history row."""
        return {card_id: row for card_id, _, row in self.state_rows}


def group_by_card(txns: Iterable[ValidTransaction]) -> dict[str, list[ValidTransaction]]:
    """Transactions per card in event order; ties keep arrival order (the sort is stable)."""
    grouped: dict[str, list[ValidTransaction]] = {}
    for txn in txns:
        grouped.setdefault(txn.card_id, []).append(txn)
    for card_txns in grouped.values():
        card_txns.sort(key=lambda t: t.event_ms)
    return grouped


def fold_batch(
    txns: Sequence[ValidTransaction],
    states: Mapping[str, CardState | None],
    allowed_lateness_ms: int,
) -> BatchResult:
    """Apply a batch to copies of the cards' states (the inputs stay untouched, so a batch whose
    writes fail leaves any cache as it was)."""
    result = BatchResult()
    for card_id, card_txns in group_by_card(txns).items():
        current = states.get(card_id)
        state = current.copy() if current is not None else CardState()
        changed = False
        for txn in card_txns:
            outcome = features.apply_transaction(
                state,
                txn.transaction_id,
                txn.event_ms,
                txn.amount,
                allowed_lateness_ms,
                txn.terminal_id,
            )
            result.outcomes[outcome] += 1
            if outcome is not Outcome.APPLIED:
                continue
            changed = True
            result.state_rows.append((card_id, txn.event_ms, features.to_row(state)))
            result.transaction_rows.append(
                {
                    "transaction_id": txn.transaction_id,
                    "card_id": card_id,
                    "terminal_id": txn.terminal_id,
                    "amount": txn.amount,
                    "event_ms": txn.event_ms,
                    "event_timestamp": txn.event_ms * 1000,
                }
            )
        if changed:
            result.states[card_id] = state
    return result


def rows_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (timestamps as epoch microseconds) -> a table of `schema`."""
    return pa.table(
        [pa.array([row[f.name] for row in rows], type=f.type) for f in schema], schema=schema
    )


def transactions_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    return rows_table(rows, offline_store.TRANSACTIONS_SCHEMA)


def labels_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    return rows_table(rows, offline_store.LABELS_SCHEMA)


def next_stamp_us(floor_us: int, now_us: int) -> int:
    """The online write's timestamp: wall clock, but always after the card's previous write.

    Feast's Redis store drops a write not newer than the stored one, and an out-of-order event
    (within the lateness) changes the state without moving `last_event_ms`, so the state's
    event time cannot be the stamp.
    """
    return max(now_us, floor_us + 1)


@dataclass
class CachedCard:
    state: CardState | None
    #: The online write must be stamped after this (epoch microseconds).
    stamp_floor_us: int


@dataclass
class CachedTerminal:
    state: TerminalState | None
    #: The online write must be stamped after this (epoch microseconds).
    stamp_floor_us: int


E = TypeVar("E", CachedCard, CachedTerminal)


class StateCache(Generic[E]):
    """States (of cards, or of terminals) this worker owns, so a busy key costs no Redis read
    per batch.

    Only correct while this worker owns the key's partition: `clear()` on every rebalance. The
    generation stops a batch that started before a rebalance from refilling the cleared cache.
    """

    def __init__(self, max_cards: int = 100_000) -> None:
        self._cards: dict[str, E] = {}
        self.max_cards = max_cards
        self.generation = 0

    def __len__(self) -> int:
        return len(self._cards)

    def clear(self) -> None:
        self._cards.clear()
        self.generation += 1

    def split(self, card_ids: Iterable[str]) -> tuple[dict[str, E], list[str]]:
        """(cached entries, ids to load from the store)."""
        hits: dict[str, E] = {}
        misses: list[str] = []
        for card_id in card_ids:
            # pop + re-insert keeps the dict in least-recently-used order for eviction.
            entry = self._cards.pop(card_id, None)
            if entry is None:
                misses.append(card_id)
            else:
                self._cards[card_id] = entry
                hits[card_id] = entry
        return hits, misses

    def update(self, entries: Mapping[str, E], generation: int) -> bool:
        """Store entries read or written under `generation`; False if a rebalance intervened."""
        if generation != self.generation:
            return False
        for card_id, entry in entries.items():
            self._cards.pop(card_id, None)
            self._cards[card_id] = entry
        while len(self._cards) > self.max_cards:
            del self._cards[next(iter(self._cards))]
        return True


# --- Terminal events: the internal topic between the card-keyed agents and terminal state ----

TerminalEventKind = Literal["transaction", "label"]


@dataclass(frozen=True)
class TerminalEvent:
    """A counted transaction or a label, as the terminal handler needs it."""

    kind: TerminalEventKind
    transaction_id: str
    terminal_id: str
    #: The transaction's event time (for a label too: it picks the tile the fraud lands in).
    transaction_ms: int
    #: When the terminal state changes: the transaction's event time, or the label's reported
    #: time (a label is known from then on, never earlier).
    stamp_ms: int
    is_fraud: bool = False

    def order(self) -> tuple[int, int]:
        """Time order; at the same millisecond transactions first, as the backfill does."""
        return (self.stamp_ms, 0 if self.kind == "transaction" else 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "transaction_id": self.transaction_id,
            "terminal_id": self.terminal_id,
            "transaction_ms": self.transaction_ms,
            "stamp_ms": self.stamp_ms,
            "is_fraud": self.is_fraud,
        }

    def encode(self) -> bytes:
        return json.dumps(self.as_dict(), separators=(",", ":")).encode()


def encode_terminal_events(terminal_events: Sequence[TerminalEvent]) -> bytes:
    """Many events as one message: a JSON array (one send per partition instead of per event;
    a send costs more than folding the event)."""
    return json.dumps([e.as_dict() for e in terminal_events], separators=(",", ":")).encode()


@functools.lru_cache(maxsize=1 << 16)
def terminal_partition(terminal_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for key `terminal_id`: every terminal
    has one partition, hence one writer, whether its events travel alone or in a batch.
    Cached: murmur2 is pure Python here (a few µs per event) and terminals recur."""
    return (murmur2(terminal_id.encode()) & 0x7FFFFFFF) % partitions


def terminal_events_of_transactions(rows: Sequence[Mapping[str, Any]]) -> list[TerminalEvent]:
    """One event per counted transaction (rows of `BatchResult.transaction_rows`)."""
    return [
        TerminalEvent(
            "transaction",
            str(row["transaction_id"]),
            str(row["terminal_id"]),
            int(row["event_ms"]),
            int(row["event_ms"]),
        )
        for row in rows
    ]


def terminal_events_of_labels(rows: Sequence[Mapping[str, Any]]) -> list[TerminalEvent]:
    """One event per label row (`parse_label`) naming a terminal; labels without one cannot
    change any terminal."""
    return [
        TerminalEvent(
            "label",
            str(row["transaction_id"]),
            str(row["terminal_id"]),
            int(row["transaction_ms"]),
            int(row["reported_at"]) // 1000,
            bool(row["is_fraud"]),
        )
        for row in rows
        if row["terminal_id"]
    ]


def parse_terminal_events(raw: bytes | None) -> list[TerminalEvent] | Rejected:
    """Decode one internal message: a JSON array of events (`encode_terminal_events`) or a
    single event (`TerminalEvent.encode`). One bad event rejects the whole message."""
    if not raw:
        return Rejected(PAYLOAD_FIELD, "empty message")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return Rejected(PAYLOAD_FIELD, f"undecodable terminal event: {type(exc).__name__}")
    out: list[TerminalEvent] = []
    for item in data if isinstance(data, list) else [data]:
        event = _terminal_event(item)
        if isinstance(event, Rejected):
            return event
        out.append(event)
    return out


def parse_terminal_event(raw: bytes | None) -> TerminalEvent | Rejected:
    """Decode one internal terminal event (written by this service, so a bad one is a bug)."""
    if not raw:
        return Rejected(PAYLOAD_FIELD, "empty message")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return Rejected(PAYLOAD_FIELD, f"undecodable terminal event: {type(exc).__name__}")
    return _terminal_event(data)


def _terminal_event(data: Any) -> TerminalEvent | Rejected:
    try:
        kind = data["kind"]
        if kind not in ("transaction", "label"):
            return Rejected("kind", f"unknown terminal event kind {str(kind)[:20]!r}")
        event = TerminalEvent(
            kind,
            str(data["transaction_id"]),
            str(data["terminal_id"]),
            int(data["transaction_ms"]),
            int(data["stamp_ms"]),
            bool(data.get("is_fraud", False)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        return Rejected(PAYLOAD_FIELD, f"undecodable terminal event: {type(exc).__name__}")
    if not event.transaction_id or not event.terminal_id:
        return Rejected("terminal_id", "transaction_id and terminal_id are required")
    return event


@dataclass
class TerminalBatchResult:
    """What one batch of terminal events changed."""

    #: Final state of every terminal that had at least one APPLIED event.
    states: dict[str, TerminalState] = field(default_factory=dict)
    #: (terminal_id, stamp_ms, features.terminal_to_row(state after it)) per APPLIED event;
    #: only each terminal's last row here carries the dedup ids (see `fold_terminal_batch`).
    state_rows: list[tuple[str, int, dict[str, object]]] = field(default_factory=list)
    outcomes: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))

    def final_rows(self) -> dict[str, dict[str, object]]:
        """`features.terminal_to_row` of each changed terminal's final state."""
        return {terminal_id: row for terminal_id, _, row in self.state_rows}


def fold_terminal_event(
    state: TerminalState, event: TerminalEvent, allowed_lateness_ms: int
) -> Outcome:
    """Apply one event to a terminal state in place: the one place stream and backfill share."""
    if event.kind == "transaction":
        return features.apply_terminal_transaction(
            state, event.transaction_id, event.transaction_ms, allowed_lateness_ms
        )
    return features.apply_terminal_label(
        state, event.transaction_id, event.transaction_ms, event.is_fraud
    )


def fold_terminal_batch(
    terminal_events: Sequence[TerminalEvent],
    states: Mapping[str, TerminalState | None],
    allowed_lateness_ms: int,
) -> TerminalBatchResult:
    """Apply a batch to copies of the terminals' states, per terminal in time order.

    History rows before a terminal's last one in the batch leave the dedup columns
    (`t_recent_*`, `t_fraud_*`) empty: a busy terminal holds thousands of ids, writing them
    per event made the history quadratic, and nothing reads them from history rows (training
    reads the tiles; the online row and the newest history row of each terminal, the one a
    rebuild of the online store would take, are complete).
    """
    grouped: dict[str, list[TerminalEvent]] = {}
    for event in terminal_events:
        grouped.setdefault(event.terminal_id, []).append(event)
    result = TerminalBatchResult()
    for terminal_id, events_of in grouped.items():
        events_of.sort(key=TerminalEvent.order)
        current = states.get(terminal_id)
        state = current.copy() if current is not None else TerminalState()
        tile_rows = _TerminalTileRows(state)
        rows: list[tuple[str, int, dict[str, object]]] = []
        for event in events_of:
            outcome = fold_terminal_event(state, event, allowed_lateness_ms)
            result.outcomes[outcome] += 1
            if outcome is not Outcome.APPLIED:
                continue
            rows.append((terminal_id, event.stamp_ms, tile_rows.row(event.transaction_ms)))
        if rows:
            # Events that are not APPLIED change nothing: the final state is the state after
            # the last applied one.
            rows[-1] = (terminal_id, rows[-1][1], features.terminal_to_row(state))
            result.state_rows.extend(rows)
            result.states[terminal_id] = state
    return result


class _TerminalTileRows:
    """`features.terminal_to_row` of a terminal's tiles (no dedup ids) after each event, built
    from the previous row: an event changes one tile per spec (its transaction's), so unless
    tiles came or went, the row is the previous one with that tile's values replaced. Lists
    are never changed once in a row (rows share the unchanged ones)."""

    def __init__(self, state: TerminalState) -> None:
        self.state = state
        #: spec name -> (tile indices, counts, frauds, position of each index)
        self.columns: dict[str, tuple[list[int], list[int], list[int], dict[int, int]]] = {}

    def row(self, transaction_ms: int) -> dict[str, object]:
        state = self.state
        row: dict[str, object] = {"t_last_event_ms": state.last_event_ms}
        for spec in features.TERMINAL_TILE_SPECS:
            tiles = state.tiles[spec.name]
            cached = self.columns.get(spec.name)
            idx = transaction_ms // spec.ms
            position = cached[3].get(idx) if cached is not None else None
            if cached is None or position is None or len(cached[0]) != len(tiles):
                # Tiles came or went (same count and the event's tile known: none did).
                indices = sorted(tiles)
                counts = [int(tiles[i][0]) for i in indices]
                frauds = [int(tiles[i][1]) for i in indices]
                cached = (indices, counts, frauds, {i: n for n, i in enumerate(indices)})
            else:
                indices, counts, frauds, positions = cached
                tile = tiles[idx]
                count, fraud = int(tile[0]), int(tile[1])
                if counts[position] != count:
                    counts = counts.copy()
                    counts[position] = count
                if frauds[position] != fraud:
                    frauds = frauds.copy()
                    frauds[position] = fraud
                cached = (indices, counts, frauds, positions)
            self.columns[spec.name] = cached
            k_idx, k_cnt, k_fraud = features.TERMINAL_COLUMN_NAMES[spec.name]
            row[k_idx], row[k_cnt], row[k_fraud] = cached[0], cached[1], cached[2]
        row["t_recent_ids"], row["t_recent_ms"] = [], []
        row["t_fraud_ids"], row["t_fraud_ms"] = [], []
        return row

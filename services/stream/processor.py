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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Generic, Literal, TypeVar

import msgpack
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
    #: (card_id, event_ms, features.to_row(state after it)) per APPLIED transaction. Read-only:
    #: the rows share their lists with each other and with `states`.
    state_rows: list[tuple[str, int, dict[str, object]]] = field(default_factory=list)
    #: The APPLIED transactions, in applied order: the rows of the transaction log
    #: (`offline_store.transactions_table`).
    transaction_rows: list[ValidTransaction] = field(default_factory=list)
    outcomes: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    #: card_id -> position of its last row in `state_rows` (`final_positions`).
    positions: dict[str, int] = field(default_factory=dict)

    def final_rows(self) -> dict[str, dict[str, object]]:
        """`features.to_row` of each changed card's final state: its last history row."""
        return {card_id: row for card_id, _, row in self.state_rows}

    def final_positions(self) -> dict[str, int]:
        """Where each changed card's last history row is in `state_rows`."""
        return self.positions


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
    writes fail leaves any cache as it was).

    History rows before a card's last one in the batch leave the dedup columns (`recent_*`)
    empty, as the terminals' do (`fold_terminal_batch`): nothing reads them from history rows
    (training reads the tiles), and the ids of all transactions cost as much to store as the
    tiles they are in. The online row and the newest history row of each card, the one a
    rebuild of the online store would take, are complete.
    """
    result = BatchResult()
    rows = result.state_rows
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
            rows.append((card_id, txn.event_ms, features.to_row(state, dedup=False)))
            result.transaction_rows.append(txn)
        if changed:
            result.states[card_id] = state
            rows[-1][2].update(features.dedup_columns(state))
            result.positions[card_id] = len(rows) - 1
    return result


def rows_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (timestamps as epoch microseconds) -> a table of `schema`."""
    return pa.table(
        [pa.array([row[f.name] for row in rows], type=f.type) for f in schema], schema=schema
    )


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


# Not frozen: a frozen dataclass's __init__ costs four times as much, and the stream builds one
# per counted transaction on each side of the topic.
@dataclass(slots=True)
class TerminalEvent:
    """A counted transaction or a label, as the terminal handler needs it."""

    kind: TerminalEventKind
    terminal_id: str
    #: The transaction's event time (for a label too: it picks the tile the fraud lands in).
    transaction_ms: int
    #: When the terminal state changes: the transaction's event time, or the label's reported
    #: time (a label is known from then on, never earlier).
    stamp_ms: int
    #: A transaction's record in the transactions topic, its dedup key at the terminal
    #: (`features.claim_terminal_source`); -1 for a label.
    source_partition: int = -1
    source_offset: int = -1
    #: A label's transaction (its dedup key) and verdict; a transaction event needs neither.
    transaction_id: str = ""
    is_fraud: bool = False

    def order(self) -> tuple[int, int]:
        """Time order; at the same millisecond transactions first, as the backfill does."""
        return (self.stamp_ms, 0 if self.kind == "transaction" else 1)


_source_position = attrgetter("source_partition", "source_offset")

#: Wire tags of the event kinds.
_TRANSACTION, _LABEL = 0, 1


def encode_terminal_events(terminal_events: Sequence[TerminalEvent]) -> bytes:
    """Many events as one message (one send per partition instead of per event; a send costs
    more than folding the event): a msgpack array of positional arrays,
    `[0, terminal_id, event_ms, partition, offset]` per transaction and
    `[1, terminal_id, transaction_ms, reported_ms, transaction_id, is_fraud]` per label.
    Positional msgpack builds and parses several times faster than JSON objects."""
    packed: bytes = msgpack.packb(
        [
            [_TRANSACTION, e.terminal_id, e.transaction_ms, e.source_partition, e.source_offset]
            if e.kind == "transaction"
            else [_LABEL, e.terminal_id, e.transaction_ms, e.stamp_ms, e.transaction_id, e.is_fraud]
            for e in terminal_events
        ]
    )
    return packed


@functools.lru_cache(maxsize=1 << 16)
def terminal_partition(terminal_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for key `terminal_id`: every terminal
    has one partition, hence one writer, whether its events travel alone or in a batch.
    Cached: murmur2 is pure Python here (a few µs per event) and terminals recur."""
    return (murmur2(terminal_id.encode()) & 0x7FFFFFFF) % partitions


def terminal_events_of_transactions(
    txns: Sequence[ValidTransaction], sources: Mapping[tuple[str, str], tuple[int, int]]
) -> list[TerminalEvent]:
    """One event per counted transaction (`BatchResult.transaction_rows`); `sources` maps
    (card_id, transaction_id) to the (partition, offset) of the record counted."""
    out: list[TerminalEvent] = []
    for txn in txns:
        partition, offset = sources[(txn.card_id, txn.transaction_id)]
        event_ms = txn.event_ms
        out.append(
            TerminalEvent("transaction", txn.terminal_id, event_ms, event_ms, partition, offset)
        )
    return out


def terminal_events_of_labels(rows: Sequence[Mapping[str, Any]]) -> list[TerminalEvent]:
    """One event per label row (`parse_label`) naming a terminal; labels without one cannot
    change any terminal."""
    return [
        TerminalEvent(
            "label",
            str(row["terminal_id"]),
            int(row["transaction_ms"]),
            int(row["reported_at"]) // 1000,
            transaction_id=str(row["transaction_id"]),
            is_fraud=bool(row["is_fraud"]),
        )
        for row in rows
        if row["terminal_id"]
    ]


def parse_terminal_events(raw: bytes | None) -> list[TerminalEvent] | Rejected:
    """Decode one internal message (`encode_terminal_events`). It was written by this service,
    so a bad one is a bug: one bad event rejects the whole message."""
    if not raw:
        return Rejected(PAYLOAD_FIELD, "empty message")
    try:
        data = msgpack.unpackb(raw)
    except (ValueError, TypeError) as exc:
        return Rejected(PAYLOAD_FIELD, f"undecodable terminal events: {type(exc).__name__}")
    if type(data) is not list:
        return Rejected(PAYLOAD_FIELD, "terminal events are not an array")
    out: list[TerminalEvent] = []
    for position, item in enumerate(data):
        event = _terminal_event(item)
        if event is None:
            return Rejected(PAYLOAD_FIELD, f"malformed terminal event at position {position}")
        out.append(event)
    return out


def _terminal_event(item: Any) -> TerminalEvent | None:
    """One positional event of `encode_terminal_events`; None unless every field is sound."""
    if type(item) is not list or not item:
        return None
    if item[0] == _TRANSACTION and len(item) == 5:
        _, terminal_id, event_ms, partition, offset = item
        if (
            type(terminal_id) is str
            and terminal_id
            and type(event_ms) is int
            and type(partition) is int
            and type(offset) is int
            and partition >= 0
            and offset >= 0
        ):
            return TerminalEvent("transaction", terminal_id, event_ms, event_ms, partition, offset)
    elif item[0] == _LABEL and len(item) == 6:
        _, terminal_id, transaction_ms, stamp_ms, transaction_id, is_fraud = item
        if (
            type(terminal_id) is str
            and terminal_id
            and type(transaction_ms) is int
            and type(stamp_ms) is int
            and type(transaction_id) is str
            and transaction_id
            and type(is_fraud) is bool
        ):
            return TerminalEvent(
                "label",
                terminal_id,
                transaction_ms,
                stamp_ms,
                transaction_id=transaction_id,
                is_fraud=is_fraud,
            )
    return None


@dataclass
class TerminalBatchResult:
    """What one batch of terminal events changed."""

    #: Final state of every terminal that had at least one APPLIED event.
    states: dict[str, TerminalState] = field(default_factory=dict)
    #: (terminal_id, stamp_ms, features.terminal_to_row(state after it)) per APPLIED event;
    #: only each terminal's last row here carries the dedup columns (see `fold_terminal_batch`).
    state_rows: list[tuple[str, int, dict[str, object]]] = field(default_factory=list)
    outcomes: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    #: terminal_id -> position of its last row in `state_rows` (`final_positions`).
    positions: dict[str, int] = field(default_factory=dict)

    def final_rows(self) -> dict[str, dict[str, object]]:
        """`features.terminal_to_row` of each changed terminal's final state."""
        return {terminal_id: row for terminal_id, _, row in self.state_rows}

    def final_positions(self) -> dict[str, int]:
        """Where each changed terminal's last history row is in `state_rows`."""
        return self.positions


def fold_terminal_event(
    state: TerminalState, event: TerminalEvent, allowed_lateness_ms: int
) -> Outcome:
    """Apply one event, already claimed if a transaction (`claim_terminal_events`), to a
    terminal state in place."""
    if event.kind == "transaction":
        return features.apply_terminal_transaction(state, event.transaction_ms, allowed_lateness_ms)
    return features.apply_terminal_label(
        state, event.transaction_id, event.transaction_ms, event.is_fraud
    )


def claim_terminal_events(
    state: TerminalState, terminal_events: Iterable[TerminalEvent]
) -> list[TerminalEvent]:
    """The events of one terminal that are not replays: its labels (deduplicated by id as they
    are applied) and the transactions whose source record the terminal claims, claimed per
    partition in offset order (`features.claim_terminal_source`).

    Why one offset per source partition tells a replay: a transactions partition is consumed
    by one worker, batch after batch in offset order (`transport.BatchIntake`); a batch's
    forward is acked before the batch is done (`agents.TransactionHandler`), so before the next
    batch starts; a batch sends one message per terminal-events partition, or several in
    offset order (`agents.TerminalForwarder`), and a Kafka partition keeps the order of one
    producer's sends; the terminal handler reads its partition in order, and claims a batch's
    transactions in offset order whatever their event times. So each source partition's
    transactions reach a terminal in offset order, except that a crash rewinds the
    transactions partition to its committed offset: the records forwarded again are the same
    ones, at or below offsets already claimed, and what follows them is new.
    """
    fresh: list[TerminalEvent] = []
    transactions: list[TerminalEvent] = []
    for event in terminal_events:
        (transactions if event.kind == "transaction" else fresh).append(event)
    transactions.sort(key=_source_position)
    claim = features.claim_terminal_source
    # Claimed before being applied (in time order): a replay of a record claimed earlier in
    # this same batch must see that record's time as already claimed.
    newest = state.last_event_ms
    for event in transactions:
        ms = event.transaction_ms
        if claim(state, event.source_partition, event.source_offset, ms, newest):
            fresh.append(event)
            newest = max(newest, ms)
    return fresh


def fold_terminal_batch(
    terminal_events: Sequence[TerminalEvent],
    states: Mapping[str, TerminalState | None],
    allowed_lateness_ms: int,
) -> TerminalBatchResult:
    """Apply a batch to copies of the terminals' states: per terminal, replays dropped as
    DUPLICATE (`claim_terminal_events`), the rest applied in time order.

    History rows before a terminal's last one in the batch leave the dedup columns
    (`t_src_*`, `t_fraud_*`) empty: a terminal with many frauds holds many ids, writing them
    per event made the history quadratic, and nothing reads them from history rows (training
    reads the tiles; the online row and the newest history row of each terminal, the one a
    rebuild of the online store would take, are complete).
    """
    grouped: dict[str, list[TerminalEvent]] = {}
    for event in terminal_events:
        grouped.setdefault(event.terminal_id, []).append(event)
    result = TerminalBatchResult()
    for terminal_id, events_of in grouped.items():
        current = states.get(terminal_id)
        state = current.copy() if current is not None else TerminalState()
        fresh = claim_terminal_events(state, events_of)
        result.outcomes[Outcome.DUPLICATE] += len(events_of) - len(fresh)
        fresh.sort(key=TerminalEvent.order)
        tile_rows = _TerminalTileRows(state)
        rows: list[tuple[str, int, dict[str, object]]] = []
        for event in fresh:
            outcome = fold_terminal_event(state, event, allowed_lateness_ms)
            result.outcomes[outcome] += 1
            if outcome is not Outcome.APPLIED:
                continue
            rows.append((terminal_id, event.stamp_ms, tile_rows.row(event.transaction_ms)))
        if rows:
            # Events that are not APPLIED change nothing but the claimed sources, which only
            # the last row carries: it is the final state's.
            rows[-1] = (terminal_id, rows[-1][1], features.terminal_to_row(state))
            result.state_rows.extend(rows)
            result.states[terminal_id] = state
            result.positions[terminal_id] = len(result.state_rows) - 1
    return result


#: Per terminal tile spec: its name, tile length and (idx, cnt, fraud) column names.
_TERMINAL_TILE_LAYOUT: tuple[tuple[str, int, str, str, str], ...] = tuple(
    (spec.name, spec.ms, k_idx, k_cnt, k_fraud)
    for spec in features.TERMINAL_TILE_SPECS
    for k_idx, k_cnt, k_fraud in [features.TERMINAL_COLUMN_NAMES[spec.name]]
)


class _TerminalTileRows:
    """`features.terminal_to_row` of a terminal's tiles (dedup columns empty) after each event,
    built from the previous row: an event changes one tile per spec (its transaction's), so
    unless tiles came or went, the row is the previous one with that tile's values replaced.
    Lists are never changed once in a row (rows share the unchanged ones)."""

    def __init__(self, state: TerminalState) -> None:
        self.state = state
        #: spec name -> (tile indices, counts, frauds, position of each index)
        self.columns: dict[str, tuple[list[int], list[int], list[int], dict[int, int]]] = {}

    def row(self, transaction_ms: int) -> dict[str, object]:
        state = self.state
        columns = self.columns
        row: dict[str, object] = {"t_last_event_ms": state.last_event_ms}
        for name, tile_ms, k_idx, k_cnt, k_fraud in _TERMINAL_TILE_LAYOUT:
            tiles = state.tiles[name]
            cached = columns.get(name)
            idx = transaction_ms // tile_ms
            position = cached[3].get(idx) if cached is not None else None
            if cached is None or position is None or len(cached[0]) != len(tiles):
                # Tiles came or went (same count and the event's tile known: none did).
                indices = sorted(tiles)
                counts = [int(tiles[i][0]) for i in indices]
                frauds = [int(tiles[i][1]) for i in indices]
                cached = (indices, counts, frauds, {i: n for n, i in enumerate(indices)})
            else:
                indices, counts, frauds, positions = cached
                count, fraud = tiles[idx]
                if counts[position] != count:
                    counts = counts.copy()
                    counts[position] = int(count)
                if frauds[position] != fraud:
                    frauds = frauds.copy()
                    frauds[position] = int(fraud)
                cached = (indices, counts, frauds, positions)
            columns[name] = cached
            row[k_idx], row[k_cnt], row[k_fraud] = indices, counts, frauds
        row["t_src_partition"], row["t_src_offset"] = [], []
        row["t_fraud_ids"], row["t_fraud_ms"] = [], []
        return row

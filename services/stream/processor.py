"""The stream's batch logic, free of Kafka and Feast so it can be tested on its own.

A batch goes: raw bytes -> `parse_transaction` (a `ValidTransaction` or a `Rejected` for the
DLQ) -> `fold_batch` over the cards' current states -> rows for the offline store and the final
state per card for the online store. The faust agents only move bytes and call these functions.

Terminal state has one writer per terminal, but transactions and labels arrive keyed by card, so
each counted transaction and each label is forwarded as a `TerminalEvent` to an internal topic
keyed by terminal_id, and `fold_terminal_batch` folds those into terminal states.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from typing import Any, Generic, Literal, TypeVar

import msgpack
import pyarrow as pa
from aiokafka.partitioner import murmur2
from google.protobuf.message import DecodeError

from services.common import events, features, offline_store
from services.common.events import InvalidTransaction, ValidTransaction
from services.common.features import CardState, Outcome, TerminalState, history_stamp_ms
from services.common.history import CardHistory, TerminalHistory
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
    #: One card_state row (the card's state after it) per APPLIED transaction.
    history: CardHistory = field(default_factory=CardHistory)
    #: The APPLIED transactions, in applied order: the rows of the transaction log
    #: (`offline_store.transactions_table`).
    transaction_rows: list[ValidTransaction] = field(default_factory=list)
    outcomes: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    #: card_id -> position of its last row in `history` (`final_positions`).
    positions: dict[str, int] = field(default_factory=dict)

    @property
    def state_rows(self) -> list[tuple[str, int, dict[str, Any]]]:
        """(card_id, event_ms, row) per history row, the columns as lists (for inspection)."""
        return self.history.rows()

    def final_rows(self) -> dict[str, dict[str, Any]]:
        """Each changed card's last history row: `features.to_list_row` of its final state."""
        return {card_id: row for card_id, _, row in self.state_rows}

    def final_positions(self) -> dict[str, int]:
        """Where each changed card's last history row is in `history`."""
        return self.positions


def group_by_card(txns: Iterable[ValidTransaction]) -> dict[str, list[ValidTransaction]]:
    """Transactions per card in event order; ties keep arrival order (the sort is stable)."""
    grouped: dict[str, list[ValidTransaction]] = {}
    for txn in txns:
        grouped.setdefault(txn.card_id, []).append(txn)
    for card_txns in grouped.values():
        if len(card_txns) > 1:
            card_txns.sort(key=_EVENT_MS)
    return grouped


_EVENT_MS = attrgetter("event_ms")


def fold_batch(
    txns: Sequence[ValidTransaction],
    states: Mapping[str, CardState | None],
    allowed_lateness_ms: int,
) -> BatchResult:
    """Apply a batch to the cards' states, in place (a card without one gets a new state).

    Copying each state first cost more than folding into it (a cached state is cold in
    memory): a caller whose batch does not finish drops the states instead
    (`StateCache.unless_done`).

    History rows before a card's last one in the batch leave the dedup columns (`recent_*`)
    empty, as the terminals' do (`fold_terminal_batch`): nothing reads them from history rows
    (training reads the tiles), and the ids of all transactions cost as much to store as the
    tiles they are in. The online row and the newest history row of each card, the one a
    rebuild of the online store would take, are complete.
    """
    result = BatchResult()
    history = result.history
    for card_id, card_txns in group_by_card(txns).items():
        current = states.get(card_id)
        state = current if current is not None else CardState()
        last = -1
        for txn in card_txns:
            outcome = features.apply_transaction(
                state,
                txn.transaction_id,
                txn.event_ms,
                txn.amount,
                allowed_lateness_ms,
                txn.terminal_id,
            )
            if outcome is not Outcome.APPLIED:
                result.outcomes[outcome] += 1
                continue
            last = history.append(
                card_id, history_stamp_ms(txn.event_ms, state.last_event_ms), state
            )
            result.transaction_rows.append(txn)
        if last >= 0:
            result.states[card_id] = state
            history.complete(last, state)
            result.positions[card_id] = last
    # Counted once here: an Enum's hash is a Python call, once per event it showed in profiles.
    result.outcomes[Outcome.APPLIED] = len(history)
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

    @contextlib.contextmanager
    def unless_done(self, keys: Iterable[str]) -> Iterator[None]:
        """Forget `keys` unless the block finishes. A batch folds into the cached states in
        place (`fold_batch`): cut short (an error, a cancellation), it leaves them ahead of
        the store, and the batch's redelivery must start from the store's."""
        try:
            yield
        except BaseException:
            for key in keys:
                self._cards.pop(key, None)
            raise

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
    more than folding the event): a msgpack map of columns,
    `{"tx": [terminal_ids, event_ms, partitions, offsets]}` for the transactions and
    `"lb": [[terminal_id, transaction_ms, reported_ms, transaction_id, is_fraud], ...]` for
    the labels (rare). Columns pack and parse in a few C loops, where an array per event cost
    a Python step per field on both sides."""
    transactions = [e for e in terminal_events if e.kind == "transaction"]
    data: dict[str, Any] = {
        _TX: [
            [e.terminal_id for e in transactions],
            [e.transaction_ms for e in transactions],
            [e.source_partition for e in transactions],
            [e.source_offset for e in transactions],
        ]
    }
    labels = [
        [e.terminal_id, e.transaction_ms, e.stamp_ms, e.transaction_id, e.is_fraud]
        for e in terminal_events
        if e.kind == "label"
    ]
    if labels:
        data[_LB] = labels
    packed: bytes = msgpack.packb(data)
    return packed


#: The keys of `encode_terminal_events`'s map.
_TX, _LB = "tx", "lb"


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
    """Decode one internal message (`encode_terminal_events`; also the earlier form, an array
    of positional arrays, which a topic may still hold after an upgrade). It was written by
    this service, so a bad one is a bug: one bad event rejects the whole message."""
    if not raw:
        return Rejected(PAYLOAD_FIELD, "empty message")
    try:
        data = msgpack.unpackb(raw)
    except (ValueError, TypeError) as exc:
        return Rejected(PAYLOAD_FIELD, f"undecodable terminal events: {type(exc).__name__}")
    if type(data) is dict:
        return _columns_of_events(data)
    if type(data) is not list:
        return Rejected(PAYLOAD_FIELD, "terminal events are not an array")
    out: list[TerminalEvent] = []
    for position, item in enumerate(data):
        event = _terminal_event(item)
        if event is None:
            return Rejected(PAYLOAD_FIELD, f"malformed terminal event at position {position}")
        out.append(event)
    return out


def _columns_of_events(data: dict[Any, Any]) -> list[TerminalEvent] | Rejected:
    """The events of `encode_terminal_events`'s map, every column checked as a whole."""
    if set(data) - {_TX, _LB}:
        return Rejected(PAYLOAD_FIELD, "terminal events: unknown keys")
    columns = data.get(_TX, [[], [], [], []])
    if type(columns) is not list or len(columns) != 4 or any(type(c) is not list for c in columns):
        return Rejected(PAYLOAD_FIELD, "terminal events: transactions are not 4 columns")
    terminal_ids, event_ms, partitions, offsets = columns
    n = len(terminal_ids)
    if any(len(c) != n for c in columns):
        return Rejected(PAYLOAD_FIELD, "terminal events: columns differ in length")
    if n and (
        set(map(type, terminal_ids)) != {str}
        or "" in terminal_ids
        or any(set(map(type, c)) != {int} for c in (event_ms, partitions, offsets))
        or min(partitions) < 0
        or min(offsets) < 0
    ):
        return Rejected(PAYLOAD_FIELD, "terminal events: malformed transaction column")
    out = list(
        map(
            TerminalEvent,
            repeat("transaction"),
            terminal_ids,
            event_ms,
            event_ms,
            partitions,
            offsets,
        )
    )
    labels = data.get(_LB, [])
    if type(labels) is not list:
        return Rejected(PAYLOAD_FIELD, "terminal events: labels are not an array")
    for position, item in enumerate(labels):
        event = _terminal_event([_LABEL, *item] if type(item) is list else item)
        if event is None or event.kind != "label":
            return Rejected(PAYLOAD_FIELD, f"malformed terminal label at position {position}")
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
    #: One terminal_state row (the state after it) per APPLIED event; only each terminal's
    #: last row carries the dedup columns (see `fold_terminal_batch`).
    history: TerminalHistory = field(default_factory=TerminalHistory)
    outcomes: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    #: terminal_id -> position of its last row in `history` (`final_positions`).
    positions: dict[str, int] = field(default_factory=dict)

    @property
    def state_rows(self) -> list[tuple[str, int, dict[str, Any]]]:
        """(terminal_id, stamp_ms, row) per history row, the columns as lists (inspection)."""
        return self.history.rows()

    def final_rows(self) -> dict[str, dict[str, Any]]:
        """`features.terminal_to_list_row` of each changed terminal's final state."""
        return {terminal_id: row for terminal_id, _, row in self.state_rows}

    def final_positions(self) -> dict[str, int]:
        """Where each changed terminal's last history row is in `history`."""
        return self.positions


def fold_terminal_event(state: TerminalState, event: TerminalEvent) -> Outcome:
    """Apply one event, already claimed if a transaction (`claim_terminal_events`), to a
    terminal state in place."""
    if event.kind == "transaction":
        return features.apply_terminal_transaction(state, event.transaction_ms)
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
) -> TerminalBatchResult:
    """Apply a batch to the terminals' states in place (as `fold_batch`): per terminal,
    replays dropped as DUPLICATE (`claim_terminal_events`), the rest applied in time order.

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
    history = result.history
    for terminal_id, events_of in grouped.items():
        current = states.get(terminal_id)
        state = current if current is not None else TerminalState()
        fresh = claim_terminal_events(state, events_of)
        result.outcomes[Outcome.DUPLICATE] += len(events_of) - len(fresh)
        fresh.sort(key=TerminalEvent.order)
        last = -1
        for event in fresh:
            outcome = fold_terminal_event(state, event)
            if outcome is Outcome.APPLIED:
                last = history.append(
                    terminal_id, history_stamp_ms(event.stamp_ms, state.last_event_ms), state
                )
            else:
                result.outcomes[outcome] += 1
        if last >= 0:
            # Events that are not APPLIED change nothing but the claimed sources, which only
            # the last row carries: it is the final state's.
            history.complete(last, state)
            result.states[terminal_id] = state
            result.positions[terminal_id] = last
    result.outcomes[Outcome.APPLIED] = len(history)
    return result

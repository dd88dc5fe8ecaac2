"""The stream's pure batch logic: DLQ decisions, dedup, rows that match the feature logic."""

from __future__ import annotations

from array import array

import msgpack
import numpy as np
import pyarrow as pa

from services.common import features, offline_store
from services.common.events import ValidTransaction
from services.common.features import CardState, Outcome
from services.proto.fraudscore.v1 import transaction_pb2
from services.stream import processor, sink
from services.stream.processor import CachedCard, Rejected, StateCache

T0 = 1_767_225_600_000
LATENESS_MS = 300_000


def txn_proto(**overrides: object) -> transaction_pb2.Transaction:
    fields: dict[str, object] = {
        "transaction_id": "t-1",
        "card_id": "card-1",
        "terminal_id": "term-1",
        "amount_minor": 1999,
        "currency": "EUR",
    }
    fields.update(overrides)
    txn = transaction_pb2.Transaction(**fields)  # type: ignore[arg-type]
    if "event_time" not in overrides:
        txn.event_time.FromMilliseconds(T0)
    return txn


def valid(
    tid: str, card: str, event_ms: int, amount: float = 10.0, terminal: str = "term-1"
) -> ValidTransaction:
    return ValidTransaction(tid, card, terminal, amount, event_ms)


def test_valid_transaction_is_decoded_with_major_amount_and_event_ms() -> None:
    parsed = processor.parse_transaction(txn_proto().SerializeToString())
    assert parsed == ValidTransaction("t-1", "card-1", "term-1", 19.99, T0)


def test_undecodable_bytes_go_to_dlq_with_a_reason() -> None:
    parsed = processor.parse_transaction(b"\xff\xff\xff\xff")
    assert isinstance(parsed, Rejected)
    assert parsed.field == processor.PAYLOAD_FIELD
    assert parsed.reason.startswith("undecodable protobuf")


def test_empty_message_goes_to_dlq() -> None:
    assert processor.parse_transaction(b"") == Rejected(processor.PAYLOAD_FIELD, "empty message")


def test_missing_field_goes_to_dlq_naming_the_field() -> None:
    parsed = processor.parse_transaction(txn_proto(terminal_id="").SerializeToString())
    assert isinstance(parsed, Rejected)
    assert parsed.field == "terminal_id"


def test_missing_event_time_goes_to_dlq_naming_the_field() -> None:
    txn = txn_proto()
    txn.ClearField("event_time")
    parsed = processor.parse_transaction(txn.SerializeToString())
    assert isinstance(parsed, Rejected)
    assert parsed.field == "event_time"


def test_negative_amount_goes_to_dlq_naming_the_field() -> None:
    parsed = processor.parse_transaction(txn_proto(amount_minor=-5).SerializeToString())
    assert isinstance(parsed, Rejected)
    assert parsed.field == "amount_minor"


def test_unknown_currency_goes_to_dlq_naming_the_field() -> None:
    parsed = processor.parse_transaction(txn_proto(currency="XXQ").SerializeToString())
    assert isinstance(parsed, Rejected)
    assert parsed.field == "currency"
    assert "XXQ" in parsed.reason


def test_card_number_in_card_id_is_rejected_without_echoing_it() -> None:
    pan = "4111111111111111"
    parsed = processor.parse_transaction(txn_proto(card_id=pan).SerializeToString())
    assert isinstance(parsed, Rejected)
    assert parsed.field == "card_id"
    assert pan not in parsed.reason
    assert all(pan.encode() not in value for _, value in parsed.headers("t", 0, 1))


def test_dlq_headers_carry_reason_field_and_origin() -> None:
    headers = dict(Rejected("currency", "unknown").headers("transactions", 3, 42))
    assert headers == {
        "reason": b"unknown",
        "field": b"currency",
        "original_topic": b"transactions",
        "original_partition": b"3",
        "original_offset": b"42",
    }


def test_duplicate_in_one_batch_is_counted_once() -> None:
    batch = [valid("a", "c1", T0), valid("a", "c1", T0), valid("b", "c1", T0 + 1000)]
    result = processor.fold_batch(batch, {}, LATENESS_MS)
    assert result.outcomes[Outcome.APPLIED] == 2
    assert result.outcomes[Outcome.DUPLICATE] == 1
    assert [row.transaction_id for row in result.transaction_rows] == ["a", "b"]
    assert features.card_features(result.states["c1"], T0 + 2000)["card_count_1h"] == 2


def test_redelivery_of_a_stored_transaction_writes_nothing() -> None:
    stored = CardState()
    features.apply_transaction(stored, "a", T0, 10.0, LATENESS_MS)
    result = processor.fold_batch([valid("a", "c1", T0)], {"c1": stored}, LATENESS_MS)
    assert result.outcomes[Outcome.DUPLICATE] == 1
    assert result.states == {}
    assert result.state_rows == []
    assert result.transaction_rows == []


def test_late_transaction_is_counted_late_and_not_written() -> None:
    stored = CardState()
    features.apply_transaction(stored, "a", T0, 10.0, LATENESS_MS)
    late = valid("old", "c1", T0 - LATENESS_MS - 1)
    result = processor.fold_batch([late], {"c1": stored}, LATENESS_MS)
    assert result.outcomes[Outcome.LATE] == 1
    assert result.state_rows == []


def test_batch_applies_each_card_in_event_order() -> None:
    # Arrival order reversed: applying "late" first would make "early" LATE.
    early = valid("early", "c1", T0)
    later = valid("later", "c1", T0 + LATENESS_MS + 60_000)
    result = processor.fold_batch([later, early], {}, LATENESS_MS)
    assert result.outcomes[Outcome.APPLIED] == 2
    assert [event_ms for _, event_ms, _ in result.state_rows] == [early.event_ms, later.event_ms]


def test_rows_match_a_plain_fold_with_the_feature_logic() -> None:
    batch = [
        valid(f"t{i}", f"c{i % 3}", T0 + (i * 7919 % 50) * 60_000, float(i)) for i in range(40)
    ]
    stored = CardState()
    features.apply_transaction(stored, "before", T0 - 60_000, 5.0, LATENESS_MS)
    expected_states: dict[str, CardState] = {"c0": stored.copy()}
    result = processor.fold_batch(batch, {"c0": stored}, LATENESS_MS)

    expected_rows: list[tuple[str, int, dict[str, object]]] = []
    for txn in sorted(batch, key=lambda t: (t.card_id, t.event_ms)):
        state = expected_states.setdefault(txn.card_id, CardState())
        outcome = features.apply_transaction(
            state, txn.transaction_id, txn.event_ms, txn.amount, LATENESS_MS, txn.terminal_id
        )
        if outcome is Outcome.APPLIED:
            expected_rows.append((txn.card_id, txn.event_ms, features.to_list_row(state)))
    # Each card's last row is its whole state; the rows before it leave the dedup ids out.
    last = {card_id: i for i, (card_id, _, _) in enumerate(expected_rows)}
    for i, (_, _, row) in enumerate(expected_rows):
        if i not in last.values():
            row.update(recent_ids=[], recent_ms=[])

    assert sorted(result.state_rows, key=lambda r: (r[0], r[1])) == expected_rows
    for card_id, row in result.final_rows().items():
        assert row == features.to_list_row(result.states[card_id])
        assert row["recent_ids"], "the final row carries the dedup ids"
    for card_id, state in expected_states.items():
        assert features.to_row(result.states[card_id]) == features.to_row(state)
    # The batch folds into the caller's state itself (`StateCache.unless_done` drops it when
    # the batch does not finish).
    assert result.states["c0"] is stored
    # The history gathered column by column is the table of its rows built the plain way.
    table = result.history.table()
    assert table.schema == offline_store.CARD_STATE_SCHEMA
    assert table.equals(offline_store.card_state_table(result.state_rows))
    assert table.num_rows == len(expected_rows)


def test_transaction_rows_fit_the_transactions_log_schema() -> None:
    result = processor.fold_batch([valid("a", "c1", T0, 12.5)], {}, LATENESS_MS)
    table = offline_store.transactions_table(result.transaction_rows)
    assert table.schema == offline_store.TRANSACTIONS_SCHEMA
    assert table.to_pylist()[0]["event_timestamp"].timestamp() * 1000 == T0


def label_proto(**overrides: object) -> transaction_pb2.FraudLabel:
    label = transaction_pb2.FraudLabel(
        transaction_id="t-1", card_id="card-1", terminal_id="term-1", is_fraud=True
    )
    label.reported_at.FromMilliseconds(T0 + 86_400_000)
    label.transaction_time.FromMilliseconds(T0)
    for name, value in overrides.items():
        setattr(label, name, value)
    return label


def test_label_becomes_a_label_log_row() -> None:
    row = processor.parse_label(label_proto().SerializeToString())
    assert not isinstance(row, Rejected)
    table = processor.labels_table([row])
    assert table.schema == offline_store.LABELS_SCHEMA
    (got,) = table.to_pylist()
    assert got["transaction_ms"] == T0
    assert got["is_fraud"] is True
    assert got["reported_at"].timestamp() * 1000 == T0 + 86_400_000


def test_label_without_transaction_id_goes_to_dlq() -> None:
    parsed = processor.parse_label(label_proto(transaction_id="").SerializeToString())
    assert parsed == Rejected("transaction_id", "is required")


def test_undecodable_label_goes_to_dlq() -> None:
    parsed = processor.parse_label(b"\xff\xff\xff\xff")
    assert isinstance(parsed, Rejected)
    assert parsed.field == processor.PAYLOAD_FIELD


def test_online_stamp_always_moves_past_the_previous_write() -> None:
    assert processor.next_stamp_us(floor_us=0, now_us=5_000) == 5_000
    # A clock behind the stored stamp (another worker, or a state loaded with whole seconds).
    assert processor.next_stamp_us(floor_us=9_000, now_us=5_000) == 9_001


def test_loaded_state_stamp_floor_is_past_the_stored_second() -> None:
    state = CardState()
    features.apply_transaction(state, "a", T0, 1.0, LATENESS_MS)
    online = {column: [value, None] for column, value in features.to_row(state).items()}
    online["last_event_ms__ts"] = [1_700_000_000, 0]
    loaded = sink.cached_from_online(["c1", "unseen"], online)
    assert loaded["unseen"] == CachedCard(state=None, stamp_floor_us=0)
    assert loaded["c1"].state is not None
    assert features.to_row(loaded["c1"].state) == features.to_row(state)
    # Stored at 1_700_000_000.xxx s: the next write must be at 1_700_000_001 s or later.
    assert processor.next_stamp_us(loaded["c1"].stamp_floor_us, 0) == 1_700_000_001_000_000


def test_push_frame_has_one_row_per_card_with_all_state_columns() -> None:
    state = CardState()
    features.apply_transaction(state, "a", T0, 1.0, LATENESS_MS)
    frame = sink.push_frame({"c1": state, "c2": state}, {"c1": 1_000_000, "c2": 2_000_000})
    assert list(frame.columns) == ["card_id", "event_timestamp", *features.STATE_COLUMNS]
    assert list(frame["card_id"]) == ["c1", "c2"]
    assert frame["event_timestamp"].iloc[1].value == 2_000_000_000
    assert pa.Table.from_pandas(frame).num_rows == 2


def test_cache_is_not_refilled_by_a_batch_that_straddled_a_rebalance() -> None:
    cache = StateCache()
    generation = cache.generation
    cache.clear()
    assert not cache.update({"c1": CachedCard(CardState(), 1)}, generation)
    assert len(cache) == 0
    assert cache.update({"c1": CachedCard(CardState(), 1)}, cache.generation)
    hits, misses = cache.split(["c1", "c2"])
    assert list(hits) == ["c1"]
    assert misses == ["c2"]


def test_cache_evicts_the_least_recently_used_card() -> None:
    cache = StateCache(max_cards=2)
    cache.update({"a": CachedCard(None, 0), "b": CachedCard(None, 0)}, cache.generation)
    cache.split(["a"])  # touch "a": "b" is now the oldest
    cache.update({"c": CachedCard(None, 0)}, cache.generation)
    hits, misses = cache.split(["a", "b", "c"])
    assert sorted(hits) == ["a", "c"]
    assert misses == ["b"]


def txn_event(terminal: str, ms: int, offset: int, partition: int = 0) -> processor.TerminalEvent:
    """A forwarded transaction read at `offset` of transactions-topic `partition`."""
    return processor.TerminalEvent("transaction", terminal, ms, ms, partition, offset)


def label_event(
    terminal: str, tid: str, txn_ms: int, reported_ms: int, is_fraud: bool = True
) -> processor.TerminalEvent:
    return processor.TerminalEvent(
        "label", terminal, txn_ms, reported_ms, transaction_id=tid, is_fraud=is_fraud
    )


def test_terminal_events_round_trip_and_fold_in_time_order() -> None:
    txn_rows = [valid("x2", "c2", T0 + 10, terminal="m1"), valid("x1", "c1", T0 + 5, terminal="m1")]
    label_rows = [
        {
            "transaction_id": "x1",
            "terminal_id": "m1",
            "is_fraud": True,
            "transaction_ms": T0 + 5,
            "reported_at": (T0 + 10) * 1000,
        },
        {
            "transaction_id": "x9",
            "terminal_id": "",
            "is_fraud": True,
            "transaction_ms": T0,
            "reported_at": T0 * 1000,
        },
    ]
    sent = processor.terminal_events_of_labels(label_rows)
    assert len(sent) == 1, "a label without a terminal changes no terminal"
    sources = {("c1", "x1"): (2, 40), ("c2", "x2"): (2, 41)}
    sent += processor.terminal_events_of_transactions(txn_rows, sources)
    assert [(e.source_partition, e.source_offset) for e in sent] == [(-1, -1), (2, 41), (2, 40)]
    parsed = processor.parse_terminal_events(processor.encode_terminal_events(sent))
    assert parsed == [*sent[1:], sent[0]]  # transactions, then labels
    result = processor.fold_terminal_batch(parsed, {})
    # The label (reported at x2's millisecond) comes after x2, stamped with its reported time.
    assert [(stamp, row["t_d_fraud"]) for _, stamp, row in result.state_rows] == [
        (T0 + 5, [0]),
        (T0 + 10, [0]),
        (T0 + 10, [1]),
    ]
    assert result.states["m1"].sources == {2: 41}
    table = offline_store.terminal_state_table(result.state_rows)
    assert table.schema == offline_store.TERMINAL_STATE_SCHEMA
    stamps = [ts.value // 1000 for ts in table["event_timestamp"].to_pandas()]
    assert stamps == [(T0 + 5) * 1000, (T0 + 10) * 1000, (T0 + 10) * 1000 + 1]
    assert table["t_src_offset"].to_pylist() == [[], [], [41]]


def test_malformed_terminal_messages_are_rejected_whole() -> None:
    good = processor.encode_terminal_events([txn_event("term-1", T0, 7)])
    assert processor.parse_terminal_events(good) == [txn_event("term-1", T0, 7)]
    bad_events: list[object] = [
        [0, "term-1", T0, 0],  # too short
        [0, "", T0, 0, 7],  # no terminal
        [0, "term-1", "T0", 0, 7],  # time not an int
        [0, "term-1", T0, 0, -1],  # no source offset
        [0, "term-1", T0, True, 7],  # partition not an int
        [1, "term-1", T0, T0, "", True],  # label without its transaction
        [1, "term-1", T0, T0, "x1", 1],  # verdict not a bool
        [2, "term-1", T0, T0, 0],  # unknown kind
        "term-1",
    ]
    for bad in bad_events:
        message = msgpack.packb([[0, "term-2", T0, 0, 8], bad])
        rejected = processor.parse_terminal_events(message)
        assert isinstance(rejected, Rejected), bad
        assert rejected.reason == "malformed terminal event at position 1"
    # Bytes that are no msgpack, a truncated message, a message that is no array, an event
    # of the former JSON format, nothing at all.
    for raw in (b"\xc1", good[:-1], msgpack.packb({"kind": 0}), b'[{"kind":"transaction"}]'):
        assert isinstance(processor.parse_terminal_events(raw), Rejected), raw
    assert processor.parse_terminal_events(None) == Rejected("payload", "empty message")


def test_terminal_messages_travel_as_columns_and_the_former_arrays_still_parse() -> None:
    """`encode_terminal_events` writes columns; a message of the former form (an array per
    event, still in the topic after an upgrade) parses to the same events. A bad value in
    any column rejects the whole message."""
    sent = [
        txn_event("term-1", T0, 7),
        label_event("term-2", "x1", T0 - 5000, T0 + 9000),
        txn_event("term-2", T0 + 1000, 8),
    ]
    columns = msgpack.unpackb(processor.encode_terminal_events(sent))
    assert columns["tx"] == [["term-1", "term-2"], [T0, T0 + 1000], [0, 0], [7, 8]]
    assert columns["lb"] == [["term-2", T0 - 5000, T0 + 9000, "x1", True]]
    got = processor.parse_terminal_events(processor.encode_terminal_events(sent))
    assert got == [sent[0], sent[2], sent[1]]  # the kinds apart; each in its order
    former = msgpack.packb(
        [[0, "term-1", T0, 0, 7], [1, "term-2", T0 - 5000, T0 + 9000, "x1", True]]
    )
    assert processor.parse_terminal_events(former) == [sent[0], sent[1]]
    assert processor.parse_terminal_events(msgpack.packb({"tx": [[], [], [], []]})) == []

    good = [["term-1", "term-2"], [T0, T0], [0, 0], [7, 8]]
    bad_columns: list[object] = [
        good[:3],  # a column missing
        [["term-1"], *good[1:]],  # columns of different lengths
        [["term-1", ""], *good[1:]],  # no terminal
        [["term-1", 5], *good[1:]],  # a terminal id not a string
        [good[0], [T0, "T0"], *good[2:]],  # time not an int
        [*good[:2], [0, True], good[3]],  # partition not an int
        [*good[:3], [7, -1]],  # no source offset
        "columns",
    ]
    for bad in bad_columns:
        rejected = processor.parse_terminal_events(msgpack.packb({"tx": bad}))
        assert isinstance(rejected, Rejected), bad
    for bad_label in (["term-1", T0, T0, "", True], ["term-1", T0, T0, "x1", 1], "x"):
        message = msgpack.packb({"tx": good, "lb": [bad_label]})
        assert isinstance(processor.parse_terminal_events(message), Rejected), bad_label
    assert isinstance(
        processor.parse_terminal_events(msgpack.packb({"tx": good, "x": 1})), Rejected
    )


def test_state_rows_keep_store_types_for_fresh_and_restored_states() -> None:
    """The tile columns are int64 and float64 `array`s (the offline part joins their buffers),
    whether the state was folded here or restored from a stored row: from `to_row` itself, from
    Redis's plain lists (integer amounts included) or from a point-in-time join's numpy arrays."""
    state = CardState()
    features.apply_transaction(state, "a", T0, 5, LATENESS_MS, "t1")
    features.apply_transaction(state, "b", T0 + 61_000, 2.5, LATENESS_MS, "t2")
    lists = features.to_list_row(state)
    assert type(lists["m_amt"]) is list and lists["m_amt"] == [5.0, 2.5]
    numpy_row = {k: np.array(v) if type(v) is list else v for k, v in lists.items()}
    for source in (features.to_row(state), lists, numpy_row):
        restored = features.from_row(source)
        assert restored == state
        features.apply_transaction(restored, "c", T0 + 3_700_000, 7, LATENESS_MS, "t1")
        for each in (state, restored):
            row = features.to_row(each)
            for spec in features.TILE_SPECS:
                for part, code in (("idx", "q"), ("cnt", "q"), ("amt", "d"), ("sq", "d")):
                    column = row[f"{spec.name}_{part}"]
                    assert type(column) is array and column.typecode == code
            assert row["h_term_idx"].typecode == "q"
        assert features.to_row(restored)["m_cnt"].tolist() == [1]  # older minutes pruned
        assert features.to_row(restored)["h_amt"].tolist() == [7.5, 7.0]


def test_terminal_history_rows_carry_dedup_columns_only_in_each_terminals_last_row() -> None:
    """Every row has the tiles of the state after its event; the dedup columns are filled in
    the last row per terminal only, which equals the final state's full row."""
    events = [
        txn_event(term, T0 + i * 1000, 100 + i)
        for i, term in enumerate(["ta", "tb", "ta", "ta", "tb"])
    ]
    events.append(txn_event("ta", T0, 100))  # the first one again
    events.append(label_event("ta", "x2", T0 + 2000, T0 + 9000))
    result = processor.fold_terminal_batch(events, {})

    replay: dict[str, features.TerminalState] = {}
    expected = []
    for event in sorted(
        events[:-2] + events[-1:], key=lambda e: (e.terminal_id != "ta", e.order())
    ):
        state = replay.setdefault(event.terminal_id, features.TerminalState())
        if processor.fold_terminal_event(state, event) is Outcome.APPLIED:
            expected.append(
                (event.terminal_id, event.stamp_ms, features.terminal_to_list_row(state))
            )
    assert [(t, s) for t, s, _ in result.state_rows] == [(t, s) for t, s, _ in expected]
    dedup = ("t_src_partition", "t_src_offset", "t_fraud_ids", "t_fraud_ms")
    last = {t: i for i, (t, _, _) in enumerate(expected)}
    for i, ((_, _, got), (terminal, _, full)) in enumerate(
        zip(result.state_rows, expected, strict=True)
    ):
        if i == last[terminal]:
            assert got == features.terminal_to_list_row(result.states[terminal])
            assert {k: v for k, v in got.items() if k not in dedup[:2]} == {
                k: v for k, v in full.items() if k not in dedup[:2]
            }
        else:
            assert {k: v for k, v in got.items() if k not in dedup} == {
                k: v for k, v in full.items() if k not in dedup
            }
            assert all(got[k] == [] for k in dedup)
    final = result.final_rows()
    assert (final["ta"]["t_src_partition"], final["ta"]["t_src_offset"]) == ([0], [103])
    assert (final["ta"]["t_fraud_ids"], final["tb"]["t_src_offset"]) == (["x2"], [104])
    assert result.outcomes[Outcome.DUPLICATE] == 1
    table = result.history.table()
    assert table.equals(offline_store.terminal_state_table(result.state_rows))


def test_redelivered_terminal_message_is_duplicate() -> None:
    """The terminal-events topic redelivers a message (the terminal handler crashed after its
    online push, before its commit): every transaction in it is a DUPLICATE, in a later batch
    or in the same one."""
    message = processor.encode_terminal_events(
        [txn_event(f"t{i % 3}", T0 + 1000 * (i % 4), 50 + i) for i in range(12)]
    )
    events = processor.parse_terminal_events(message)
    assert isinstance(events, list)
    first = processor.fold_terminal_batch(events, {})
    assert first.outcomes[Outcome.APPLIED] == 12
    again = processor.fold_terminal_batch(events, first.states)
    assert again.outcomes[Outcome.DUPLICATE] == 12
    assert again.states == {} and again.state_rows == []
    twice = processor.fold_terminal_batch(events + events, {})
    assert (twice.outcomes[Outcome.APPLIED], twice.outcomes[Outcome.DUPLICATE]) == (12, 12)
    assert twice.final_rows() == first.final_rows()
    # The claims survive the store: a terminal read back from its row still knows them.
    restored = {t: features.terminal_from_row(row) for t, row in first.final_rows().items()}
    assert processor.fold_terminal_batch(events, restored).outcomes[Outcome.DUPLICATE] == 12


def test_reforwarded_transactions_after_a_crash_are_duplicate() -> None:
    """The card handler forwarded a batch, then crashed before its online push: the replay
    forwards the same records again (here batched differently, and followed by new ones).
    Only the new ones count, whether the replay comes in the terminal's next batch or the
    same one as the original."""
    original = [txn_event("t1", T0 + 1000 * (i % 5), offset=i) for i in range(10)]
    replay = [txn_event("t1", T0 + 1000 * (i % 5), offset=i) for i in range(6)]
    replay_rest = [txn_event("t1", T0 + 1000 * (i % 5), offset=i) for i in range(6, 14)]
    first = processor.fold_terminal_batch(original, {})
    second = processor.fold_terminal_batch(replay, first.states)
    assert (second.outcomes[Outcome.DUPLICATE], second.states) == (6, {})
    third = processor.fold_terminal_batch(replay_rest, first.states)
    assert (third.outcomes[Outcome.DUPLICATE], third.outcomes[Outcome.APPLIED]) == (4, 4)
    together = processor.fold_terminal_batch(original + replay + replay_rest, {})
    assert together.outcomes[Outcome.APPLIED] == 14
    for states in (third.states, together.states):
        assert features.terminal_features(states["t1"], T0 + 5000)["terminal_count_1d"] == 14
        assert states["t1"].sources == {0: 13}


def test_events_from_two_source_partitions_interleaved_are_all_applied() -> None:
    """Offsets of different partitions are unrelated, and within a batch event time and offset
    order differ: every transaction still counts, in the terminal's time order."""
    events = [
        txn_event("t1", T0 + 4000, offset=900, partition=1),
        txn_event("t1", T0 + 1000, offset=12, partition=0),
        txn_event("t1", T0 + 3000, offset=10, partition=0),  # earlier offset, later time
        txn_event("t1", T0 + 2000, offset=901, partition=1),
        txn_event("t1", T0 + 5000, offset=11, partition=0),
    ]
    result = processor.fold_terminal_batch(events, {})
    assert result.outcomes[Outcome.APPLIED] == 5
    assert [stamp for _, stamp, _ in result.state_rows] == [T0 + 1000 * i for i in range(1, 6)]
    assert result.states["t1"].sources == {0: 12, 1: 901}
    # The next batch: partition 1 went on, partition 0 is replayed from offset 11.
    later = [
        txn_event("t1", T0 + 6000, offset=902, partition=1),
        txn_event("t1", T0 + 5000, offset=11, partition=0),
        txn_event("t1", T0 + 7000, offset=13, partition=0),
    ]
    next_batch = processor.fold_terminal_batch(later, result.states)
    assert (next_batch.outcomes[Outcome.APPLIED], next_batch.outcomes[Outcome.DUPLICATE]) == (2, 1)
    assert next_batch.states["t1"].sources == {0: 13, 1: 902}


def test_terminal_history_rows_equal_a_replay_while_tiles_come_and_go() -> None:
    """The history rows are built incrementally (one tile per spec changes per event): over
    many batches, with hour and day tiles created and pruned, labels on old tiles, late and
    replayed events, every row's tiles equal a plain replay's `terminal_to_row`."""
    import random

    rng = random.Random(11)
    states: dict[str, features.TerminalState] = {}
    replay: dict[str, features.TerminalState] = {}
    now, n = T0, 0
    dedup = ("t_src_partition", "t_src_offset", "t_fraud_ids", "t_fraud_ms")
    for _ in range(60):
        events = []
        replayed: list[processor.TerminalEvent] = []
        for _ in range(rng.randint(1, 120)):
            now += rng.randint(0, 40 * 60_000)
            n += 1
            terminal = f"t{rng.randint(0, 5)}"
            if rng.random() < 0.2:
                txn_ms = now - rng.randint(0, 40 * 86_400_000)
                tid = f"x{rng.randint(0, n)}"
                events.append(label_event(terminal, tid, txn_ms, now, rng.random() < 0.8))
            else:
                ms = now - rng.choice([0, 0, 60_000, 2 * 3_600_000, 3 * 86_400_000])
                event = txn_event(terminal, ms, offset=n)
                events.append(event)
                if rng.random() < 0.1:
                    replayed.append(event)
        result = processor.fold_terminal_batch(events + replayed, states)
        assert result.outcomes[Outcome.DUPLICATE] >= len(replayed)
        states.update(result.states)
        expected = []
        for event in sorted(events, key=lambda e: (e.terminal_id, e.order())):
            state = replay.setdefault(event.terminal_id, features.TerminalState())
            if processor.fold_terminal_event(state, event) is Outcome.APPLIED:
                stamp = features.history_stamp_ms(event.stamp_ms, state.last_event_ms)
                expected.append((event.terminal_id, stamp, features.terminal_to_list_row(state)))
        got = sorted(result.state_rows, key=lambda r: r[0])  # stable: per terminal in order
        assert len(got) == len(expected)
        for (terminal, stamp, row), (e_terminal, e_stamp, e_row) in zip(got, expected, strict=True):
            assert (terminal, stamp) == (e_terminal, e_stamp)
            assert {k: v for k, v in row.items() if k not in dedup} == {
                k: v for k, v in e_row.items() if k not in dedup
            }
    assert sum(len(s.tiles["h"].idx) for s in states.values()) > 0


def test_a_history_row_never_holds_a_transaction_newer_than_its_stamp() -> None:
    """Events that come out of order (a card's within its lateness, a terminal's from a card
    partition consumed behind the others) are applied, and the row after one is stamped at the
    newest transaction it holds: a point-in-time read at any time sees no later transaction,
    the one being scored included."""
    newest = T0 + 40 * 60_000
    # A batch applies each card's transactions in event order; the next batch brings an older.
    card = processor.fold_batch([valid("a", "c", newest)], {}, LATENESS_MS).states
    cards = processor.fold_batch([valid("b", "c", newest - 60_000)], card, LATENESS_MS)
    assert cards.outcomes[Outcome.APPLIED] == 1
    assert [stamp for _, stamp, _ in cards.history.rows()] == [newest]
    assert card["c"].day_tile_count() == 2

    hour = 3_600_000
    first = processor.fold_terminal_batch([txn_event("t", newest, offset=0)], {})
    later = processor.fold_terminal_batch(
        [
            txn_event("t", newest - 3 * hour, offset=0, partition=1),
            label_event("t", "x", newest - 3 * hour, newest - 2 * hour),
            txn_event("t", newest + 5, offset=1),
        ],
        first.states,
    )
    rows = later.history.rows()
    assert [stamp for _, stamp, _ in rows] == [newest, newest, newest + 5]
    state = first.states["t"]
    assert features.terminal_features(state, newest + 6)["terminal_count_1d"] == 3

"""The faust glue without a broker: DLQ routing, retries of failed writes, the state cache."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest

from services.common import features
from services.common.features import CardState
from services.common.history import CardHistory
from services.proto.fraudscore.v1 import transaction_pb2
from services.stream import agents, processor
from services.stream.processor import CachedCard, StateCache

T0 = 1_767_225_600_000


class FakeSink:
    """The FeastSink surface, in memory; `fail_pushes` makes the next pushes raise."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.online: dict[str, CardState] = {}
        self.loads: list[list[str]] = []
        self.offline_rows: list[tuple[str, int, dict[str, object]]] = []
        self.fail_pushes = 0

    def load(self, card_ids: list[str]) -> dict[str, CachedCard]:
        self.loads.append(list(card_ids))
        # Copies, as a real store's reads and writes are: the fold changes states in place.
        stored = {c: self.online.get(c) for c in card_ids}
        return {c: CachedCard(s.copy() if s else None, 0) for c, s in stored.items()}

    def write_offline(self, history: CardHistory, transaction_rows: list[Any]) -> None:
        self.offline_rows.extend(history.rows())

    def push_online(
        self,
        states: dict[str, CardState],
        stamps: dict[str, int],
        rows: Any = None,
        history: Any = None,
    ) -> None:
        if self.fail_pushes:
            self.fail_pushes -= 1
            raise ConnectionError("redis down")
        self.online.update({card_id: state.copy() for card_id, state in states.items()})


class FakeTopic:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, **kwargs: Any) -> asyncio.Future[None]:
        """Like faust: the send is queued, the returned future resolves on the broker's ack."""
        self.sent.append(kwargs)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def event(value: bytes, offset: int) -> Any:
    """A consumed record as the batch intake hands it over (aiokafka's `ConsumerRecord`)."""
    return SimpleNamespace(
        topic="tx", partition=0, offset=offset, key=b"k", value=value, headers=[]
    )


def txn_bytes(tid: str, card: str, event_ms: int) -> bytes:
    txn = transaction_pb2.Transaction(
        transaction_id=tid, card_id=card, terminal_id="t", amount_minor=250, currency="EUR"
    )
    txn.event_time.FromMilliseconds(event_ms)
    return txn.SerializeToString()


def make_handler() -> tuple[agents.TransactionHandler, FakeSink, FakeTopic, StateCache]:
    sink = FakeSink()
    topic = FakeTopic()
    cache = StateCache()
    handler = agents.TransactionHandler(
        agents.StoreCaller(sink, retry_max_s=0.01),  # type: ignore[arg-type]
        agents.DeadLetters(topic, "transaction"),  # type: ignore[arg-type]
        cache,
        allowed_lateness_ms=300_000,
    )
    return handler, sink, topic, cache


async def test_malformed_message_goes_to_dlq_and_the_rest_is_applied() -> None:
    handler, sink, topic, _ = make_handler()
    await handler.handle([event(b"\xff\xff\xff", 7), event(txn_bytes("a", "c1", T0), 8)])
    assert [m["value"] for m in topic.sent] == [b"\xff\xff\xff"]
    assert dict(topic.sent[0]["headers"])["original_offset"] == b"7"
    assert features.card_features(sink.online["c1"], T0)["card_count_1h"] == 1


async def test_failed_online_push_is_retried_not_dropped() -> None:
    handler, sink, _, _ = make_handler()
    sink.fail_pushes = 2
    await handler.handle([event(txn_bytes("a", "c1", T0), 1)])
    assert features.card_features(sink.online["c1"], T0)["card_count_1h"] == 1
    # Offline was written once: only the failing step is retried.
    assert len(sink.offline_rows) == 1


async def test_cached_cards_are_not_read_again_until_a_rebalance() -> None:
    handler, sink, _, cache = make_handler()
    await handler.handle([event(txn_bytes("a", "c1", T0), 1)])
    await handler.handle([event(txn_bytes("b", "c1", T0 + 1000), 2)])
    assert sink.loads == [["c1"]]
    cache.clear()
    await handler.handle([event(txn_bytes("b", "c1", T0 + 1000), 3)])
    assert sink.loads == [["c1"], ["c1"]]
    # The redelivered "b" was a duplicate of the stored state: still two transactions.
    assert features.card_features(sink.online["c1"], T0 + 1000)["card_count_1h"] == 2


class OrderedSink(FakeSink):
    """Logs the store calls; the offline write waits (up to 2 s) for the forward to be sent."""

    def __init__(self, log: list[str], forwarded: threading.Event) -> None:
        super().__init__()
        self.executor = ThreadPoolExecutor(max_workers=2)
        self.log = log
        self.forwarded = forwarded

    def write_offline(self, history: CardHistory, transaction_rows: list[Any]) -> None:
        self.log.append("offline start")
        overlapped = self.forwarded.wait(2.0)
        self.log.append(f"offline end (forward sent meanwhile: {overlapped})")
        super().write_offline(history, transaction_rows)

    def push_online(
        self,
        states: dict[str, CardState],
        stamps: dict[str, int],
        rows: Any = None,
        history: Any = None,
    ) -> None:
        self.log.append("online")
        super().push_online(states, stamps, rows, history)


class AckLaterTopic(FakeTopic):
    """Sends are acked only after `ack_after` seconds."""

    def __init__(self, log: list[str], forwarded: threading.Event, ack_after: float) -> None:
        super().__init__()
        self.log = log
        self.forwarded = forwarded
        self.ack_after = ack_after

    async def send(self, **kwargs: Any) -> asyncio.Future[None]:
        self.sent.append(kwargs)
        self.log.append("forward sent")
        self.forwarded.set()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def ack() -> None:
            self.log.append("forward acked")
            future.set_result(None)

        loop.call_later(self.ack_after, ack)
        return future


async def test_offline_write_and_forward_overlap_and_both_precede_the_online_push() -> None:
    log: list[str] = []
    forwarded = threading.Event()
    sink = OrderedSink(log, forwarded)
    terminal_topic = AckLaterTopic(log, forwarded, ack_after=0.2)
    handler = agents.TransactionHandler(
        agents.StoreCaller(sink, retry_max_s=0.01),  # type: ignore[arg-type]
        agents.DeadLetters(FakeTopic(), "transaction"),  # type: ignore[arg-type]
        StateCache(),
        allowed_lateness_ms=300_000,
        forwarder=agents.TerminalForwarder(terminal_topic, partitions=1),  # type: ignore[arg-type]
    )
    await handler.handle([event(txn_bytes("a", "c1", T0), 1)])
    assert log[0] in ("offline start", "forward sent")
    assert set(log[:2]) == {"offline start", "forward sent"}
    assert "offline end (forward sent meanwhile: True)" in log
    # The online push waits for both: the parquet part and the broker's ack.
    assert log[-1] == "online"
    assert log.index("forward acked") < log.index("online")
    assert features.card_features(sink.online["c1"], T0)["card_count_1h"] == 1


async def test_settle_raises_only_after_every_call_has_ended() -> None:
    finished: list[str] = []

    async def fails() -> None:
        raise ConnectionError("broker down")

    async def slow() -> None:
        await asyncio.sleep(0.05)
        finished.append("slow")

    try:
        await agents.settle([fails(), slow()])
    except ConnectionError:
        pass
    else:
        raise AssertionError("the failure was swallowed")
    assert finished == ["slow"]


def test_forwarded_terminal_events_travel_one_message_per_partition() -> None:
    topic = FakeTopic()
    forwarder = agents.TerminalForwarder(topic, partitions=4)  # type: ignore[arg-type]
    sent = [
        processor.TerminalEvent("transaction", f"term-{i % 9}", T0 + i, T0 + i, 0, i)
        for i in range(60)
    ]
    asyncio.run(forwarder.send(sent))
    assert 1 <= len(topic.sent) <= 4
    received: list[processor.TerminalEvent] = []
    for message in topic.sent:
        events_of = processor.parse_terminal_events(message["value"])
        assert isinstance(events_of, list)
        # Every terminal of a message maps to the message's partition, as its own key would.
        assert {processor.terminal_partition(e.terminal_id, 4) for e in events_of} == {
            message["partition"]
        }
        received.extend(events_of)
    assert sorted(received, key=lambda e: e.source_offset) == sent


def test_a_partitions_events_split_over_messages_go_in_source_offset_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A terminal batch may end between two messages of one forward: the first must hold each
    source partition's lower offsets, or the terminals would take the rest for replays."""
    monkeypatch.setattr(agents, "MAX_EVENTS_PER_MESSAGE", 4)
    topic = FakeTopic()
    forwarder = agents.TerminalForwarder(topic, partitions=1)  # type: ignore[arg-type]
    positions = [(1, 7), (0, 3), (1, 5), (0, 9), (0, 1), (1, 6)]
    asyncio.run(
        forwarder.send(
            [
                processor.TerminalEvent("transaction", "term-1", T0 - i, T0 - i, p, o)
                for i, (p, o) in enumerate(positions)
            ]
        )
    )
    positions_sent = []
    for message in topic.sent:
        events_of = processor.parse_terminal_events(message["value"])
        assert isinstance(events_of, list)
        positions_sent.append([(e.source_partition, e.source_offset) for e in events_of])
    assert positions_sent == [[(0, 1), (0, 3), (0, 9), (1, 5)], [(1, 6), (1, 7)]]


class CrashingSink(FakeSink):
    """Dies (like a kill -9 would) at its next online push while `crash` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.crash = False

    def push_online(
        self,
        states: dict[str, CardState],
        stamps: dict[str, int],
        rows: Any = None,
        history: Any = None,
    ) -> None:
        if self.crash:
            raise Crash
        super().push_online(states, stamps, rows, history)


class Crash(BaseException):
    """Not an Exception: the handler's retries must not catch it, as they would not a crash."""


async def test_transactions_forwarded_again_after_a_crash_count_once_at_their_terminal() -> None:
    """The worker dies between a batch's forward and its online push; its successor handles the
    records again from the committed offset, batched differently. Every terminal still counts
    each transaction once, however the terminal-events messages fall into terminal batches."""
    sink = CrashingSink()
    terminal_topic = FakeTopic()
    records = [event(txn_bytes(f"x{i}", f"c{i % 5}", T0 + 1000 * (i % 7)), i) for i in range(30)]
    for offset in (3, 17):  # an upstream duplicate: counted by its card only once
        records.append(event(txn_bytes(f"x{offset}", f"c{offset % 5}", T0), 30 + offset))

    def handler() -> agents.TransactionHandler:
        return agents.TransactionHandler(
            agents.StoreCaller(sink, retry_max_s=0.01),  # type: ignore[arg-type]
            agents.DeadLetters(FakeTopic(), "transaction"),  # type: ignore[arg-type]
            StateCache(),
            allowed_lateness_ms=300_000,
            forwarder=agents.TerminalForwarder(terminal_topic, partitions=2),  # type: ignore[arg-type]
        )

    await handler().handle(records[:10])
    sink.crash = True
    try:
        await handler().handle(records[10:25])
    except Crash:
        pass
    else:
        raise AssertionError("the push did not crash")
    sink.crash = False
    successor = handler()
    for start in range(10, len(records), 8):
        await successor.handle(records[start : start + 8])

    messages: list[list[processor.TerminalEvent]] = []
    for sent in terminal_topic.sent:
        parsed = processor.parse_terminal_events(sent["value"])
        assert isinstance(parsed, list)
        messages.append(parsed)
    for size in (1, 2, 3, len(messages)):
        states: dict[str, features.TerminalState | None] = {}
        for start in range(0, len(messages), size):
            batch = [e for events_of in messages[start : start + size] for e in events_of]
            states.update(processor.fold_terminal_batch(batch, states).states)
        (state,) = states.values()  # every transaction is at terminal "t"
        assert state is not None
        assert features.terminal_features(state, T0 + 7000)["terminal_count_1d"] == 30, size
    # The crashed batch's forward did go out before the crash, and was sent again.
    assert sum(map(len, messages)) > 30


async def test_a_batch_cut_short_leaves_no_folded_state_in_the_cache() -> None:
    """The fold changes the cached states in place: a batch that does not finish (here its
    push fails with a BaseException, as a cancellation would) must drop them, so the batch's
    redelivery is counted from the store's states and not taken for duplicates."""
    sink = CrashingSink()
    cache: StateCache[CachedCard] = StateCache()
    handler = agents.TransactionHandler(
        agents.StoreCaller(sink, retry_max_s=0.01),  # type: ignore[arg-type]
        agents.DeadLetters(FakeTopic(), "transaction"),  # type: ignore[arg-type]
        cache,
        allowed_lateness_ms=300_000,
    )
    await handler.handle([event(txn_bytes("x0", "c0", T0), 0)])
    assert len(cache) == 1 and sink.online["c0"].day_tile_count() == 1
    batch = [event(txn_bytes(f"x{i}", f"c{i % 2}", T0 + i), i) for i in range(1, 5)]
    sink.crash = True
    try:
        await handler.handle(batch)
    except Crash:
        pass
    else:
        raise AssertionError("the push did not crash")
    assert len(cache) == 0, "the batch's cards, cached before it or not, are forgotten"
    sink.crash = False
    sink.loads.clear()
    await handler.handle(batch)  # redelivered
    assert sorted(sink.loads[0]) == ["c0", "c1"]
    assert sink.online["c0"].day_tile_count() == 3
    assert sink.online["c1"].day_tile_count() == 2


def test_terminal_partition_is_kafkas_default_partitioner() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    for terminal in ("term-1", "T000123", "ä-terminal"):
        key = terminal.encode()
        expected = DefaultPartitioner()(key, [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5])
        assert processor.terminal_partition(terminal, 6) == expected


def test_consumer_lag_is_the_fetch_highwater_minus_the_next_offset() -> None:
    from faust.types import TP

    from services.stream import metrics

    tp = TP("lag-topic", 3)

    tracker = agents.LagTracker(lambda _: 120)
    tracker.observe({tp: 99})  # the newest handled offset of the partition
    gauge = metrics.CONSUMER_LAG.labels("lag-topic", "3")
    assert gauge._value.get() == 20  # highwater 120, next offset 100
    agents.LagTracker(lambda _: 50).observe({tp: 99})  # stale highwater: never negative
    assert gauge._value.get() == 0
    agents.LagTracker(lambda _: None).observe({tp: 5})  # not fetched yet: unchanged
    assert gauge._value.get() == 0

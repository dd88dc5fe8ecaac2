"""The faust glue without a broker: DLQ routing, retries of failed writes, the state cache."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from services.common import features
from services.common.features import CardState
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
        return {c: CachedCard(self.online.get(c), 0) for c in card_ids}

    def write_offline(self, state_rows: list[Any], transaction_rows: list[Any]) -> None:
        self.offline_rows.extend(state_rows)

    def push_online(
        self, states: dict[str, CardState], stamps: dict[str, int], rows: Any = None
    ) -> None:
        if self.fail_pushes:
            self.fail_pushes -= 1
            raise ConnectionError("redis down")
        self.online.update(states)


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


def test_forwarded_terminal_events_travel_one_message_per_partition() -> None:
    topic = FakeTopic()
    forwarder = agents.TerminalForwarder(topic, partitions=4)  # type: ignore[arg-type]
    sent = [
        processor.TerminalEvent("transaction", f"x{i}", f"term-{i % 9}", T0 + i, T0 + i)
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
    assert sorted(received, key=lambda e: e.transaction_id) == sorted(
        sent, key=lambda e: e.transaction_id
    )


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

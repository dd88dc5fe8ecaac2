"""faust's Kafka transport with a shorter fetch wait and a batch intake.

Fetch wait: faust-streaming builds its aiokafka consumer with `fetch_max_wait_ms=1500` and no
setting to change it. A broker that answers a fetch it parked only when that wait runs out
(tansu does: produce -> consume measured p50 371 ms, max 723 ms per hop at 1500 ms; 24 / 52 ms
at 100 ms) then adds up to the whole wait to every hop, and a transaction takes two (its topic,
then the terminal-events topic). The wait bounds latency only when a partition has nothing to
send; with a backlog a fetch returns at once either way.

Batch intake: faust hands every record to its agents one by one (a `ConsumerMessage`, a task
pair in `wait_first`, the conductor, a queue, the stream, an `Event`): ~70 µs of CPU per event
here before any work, while aiokafka's `getmany` costs ~1.3 µs. The stream's handlers work on
whole batches anyway, so for the topics registered in a `BatchIntake` the fetched records go
straight to the topic's handler. faust still runs the consumer group, the assignment, the
rebalance hooks and the commits: a partition's offset becomes committable only once a handler
has returned for every record up to it, i.e. after the batch's writes are durable, and a
rebalance or a shutdown waits for the batch in flight (`wait_empty`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from faust.transport.drivers import aiokafka as driver
from faust.types import TP

log = logging.getLogger(__name__)


class Record(Protocol):
    """What a handler reads of a consumed record (aiokafka's `ConsumerRecord` has it)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


BatchHandler = Callable[[Sequence[Record]], Awaitable[None]]

#: A batch handed over holds at most this many times its topic's `batch_size` records: a busy
#: handler's backlog goes in larger batches (cheaper per record), but not without bound. Only a
#: handler that fell behind gets more than `batch_size` at once, so this costs no freshness: at
#: 5,000/s a batch holds what came while the previous one was handled (~600 records). 16
#: instead of 4 took `bench stream`'s backlog from ~12,000 to ~17,000 events/s (a batch's
#: writes, parquet parts and forwards cost the same whatever its size); 32 instead of 16 took
#: the 200,000-event backlog from ~12,700 to ~14,700 on a slower machine: the more of a card's
#: events one batch holds, the fewer online rows, state copies and terminal rows per event. 64
#: instead of 32: ~19,900 to ~25,100 (five interleaved pairs), peak RSS 469 to 521 MB; a
#: handover is then ~1.3 s of work here, which a rebalance or a shutdown waits for.
MAX_BATCHES_PER_HANDOVER = 64
#: How often the fetch loop looks whether a busy handler with records waiting is free again.
HANDOVER_POLL_S = 0.02


@dataclass(frozen=True)
class Route:
    handler: BatchHandler
    #: Records are handed over once this many are buffered, or once the oldest has waited
    #: `BatchIntake.batch_window_s`.
    batch_size: int


@dataclass
class BatchIntake:
    """Per topic name, the handler of its batches; filled before the app starts.

    Each topic has its own worker: a topic's batches are handled one after the other, in
    offset order, while the other topics' go on (as faust's agents did).
    """

    #: Bounds parquet part files per second at low rates, as `take_events(within=...)` did.
    batch_window_s: float = 0.2
    routes: dict[str, Route] = field(default_factory=dict)
    #: Called after each handled batch with the newest handled offset per partition.
    on_handled: Callable[[Mapping[TP, int]], None] | None = None
    #: Called after each handled batch, after `on_handled` (the heap's batch boundary).
    after_batch: Callable[[], None] | None = None


@dataclass
class _Buffer:
    """A topic's fetched records not yet handed over, per partition in offset order."""

    by_tp: dict[TP, list[Any]] = field(default_factory=dict)
    count: int = 0
    #: When the oldest of them was fetched.
    since: float = 0.0

    def add(self, tp: TP, records: Sequence[Any], now: float) -> None:
        if not self.count:
            self.since = now
        self.by_tp.setdefault(tp, []).extend(records)
        self.count += len(records)

    def take(self, limit: int, now: float) -> list[Any]:
        """Up to `limit` records, an equal share from each partition.

        Partitions advance together, as faust's round-robin does, so none waits behind
        another's backlog. Equal shares of records are not equal spans of event time: in a
        backlog the partitions drift apart (by minutes after 200,000 events in `bench stream`),
        which the terminals, fed by all of them, take as it comes
        (`features.apply_terminal_transaction`).
        """
        share = -(-limit // max(1, len(self.by_tp)))
        out: list[Any] = []
        for tp in list(self.by_tp):
            records = self.by_tp[tp]
            out.extend(records[:share])
            if len(records) > share:
                self.by_tp[tp] = records[share:]
            else:
                del self.by_tp[tp]
        self.count -= len(out)
        self.since = now
        return out

    def records(self) -> list[Sequence[Any]]:
        return list(self.by_tp.values())


def _newest_offsets(batch: Sequence[Any]) -> dict[TP, int]:
    # Records of a partition are buffered in offset order: the last one seen is the newest.
    # Keyed by plain tuples, a TP per partition: a namedtuple per record was ~2 % of the
    # worker's samples in a backlog.
    newest = {(r.topic, r.partition): r.offset for r in batch}
    return {TP(topic, partition): offset for (topic, partition), offset in newest.items()}


def transport_class(
    fetch_max_wait_ms: int, intake: BatchIntake | None = None
) -> type[driver.Transport]:
    """faust's aiokafka Transport whose worker consumer waits at most `fetch_max_wait_ms` and
    hands the records of `intake`'s topics to their handlers in batches."""

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            # Read by AIOKafkaConsumer.start() when it builds its fetcher, which runs later.
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            return consumer

    class Consumer(driver.Consumer):
        _batch_done: dict[TP, int]
        _batch_inflight: dict[str, asyncio.Future[None]]

        def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
            self._batch_done = {}
            self._batch_inflight = {}
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        # --- offsets: a routed partition commits up to its last handled record ---

        def _new_offset(self, tp: TP) -> int | None:
            if intake is not None and tp.topic in intake.routes:
                # Popped: once handed to a commit it is either committed or for a partition
                # this worker lost (whose new owner starts from the committed offset).
                return self._batch_done.pop(tp, None)
            offset: int | None = super()._new_offset(tp)
            return offset

        def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
            seen = set(super()._filter_tps_with_pending_acks(topics))
            yield from seen
            for tp in list(self._batch_done):
                if tp not in seen and (topics is None or tp in topics or tp.topic in topics):
                    yield tp

        async def wait_empty(self) -> None:
            # A rebalance or a stop waits for the batches being written, as for faust's events.
            busy = [f for f in self._batch_inflight.values() if not f.done()]
            if busy:
                await asyncio.wait(busy)
            await super().wait_empty()

        # --- the fetch loop (faust's `_drain_messages`, batched for routed topics) ---

        async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - live Kafka
            if intake is None or not intake.routes:
                await super()._drain_messages(fetcher)
                return
            consumer_should_stop = self._stopped.is_set
            fetcher_should_stop = fetcher._stopped.is_set
            window = intake.batch_window_s
            buffers = {topic: _Buffer() for topic in intake.routes}
            inflight = self._batch_inflight
            try:
                while not (consumer_should_stop() or fetcher_should_stop()):
                    await self._backpressure(buffers)
                    generation = self.app.consumer_generation_id
                    records, active = await self._wait_next_records(self._timeout(buffers))
                    if self.should_stop:
                        break
                    if not self.flow_active or generation != self.app.consumer_generation_id:
                        # Rebalanced: what is buffered or just fetched may be of a lost
                        # partition or of a stale fetch. Dropped, and every partition still
                        # ours is moved back to its first dropped record.
                        dropped = [r for b in buffers.values() for r in b.records()]
                        dropped.extend((records or {}).values())
                        buffers = {topic: _Buffer() for topic in intake.routes}
                        await self._rewind(dropped)
                        continue
                    now = time.monotonic()
                    paused: list[Sequence[Any]] = []
                    for tp, tp_records in (records or {}).items():
                        if not tp_records:
                            continue
                        if active is not None and tp not in active:
                            paused.append(tp_records)
                            continue
                        buffer = buffers.get(tp.topic)
                        if buffer is None:
                            await self._deliver_one_by_one(tp, tp_records)
                            continue
                        buffer.add(tp, tp_records, now)
                    if paused:
                        await self._rewind(paused)
                    for topic, buffer in buffers.items():
                        route = intake.routes[topic]
                        running = inflight.get(topic)
                        if running is not None and running.done():
                            running.result()  # a handler that raised stops the intake
                        if not buffer.count or (running is not None and not running.done()):
                            continue
                        if buffer.count < route.batch_size and now - buffer.since < window:
                            continue
                        batch = buffer.take(route.batch_size * MAX_BATCHES_PER_HANDOVER, now)
                        inflight[topic] = asyncio.ensure_future(
                            self._handle(route, batch, self.app.consumer_generation_id)
                        )
            except self.consumer_stopped_errors:
                if self.transport.app.should_stop:
                    log.info("broker stopped the consumer, shutting down")
                    return
                raise

        def _timeout(self, buffers: Mapping[str, _Buffer]) -> float:
            """How long the next fetch may wait: until a buffered batch is due."""
            assert intake is not None
            now = time.monotonic()
            timeout = 1.0
            for topic, buffer in buffers.items():
                if not buffer.count:
                    continue
                running = self._batch_inflight.get(topic)
                if running is not None and not running.done():
                    # Handed over once the handler is free: look again soon (each look is a
                    # hop to the consumer's thread, so not too soon).
                    timeout = min(timeout, HANDOVER_POLL_S)
                else:
                    timeout = min(timeout, max(0.0, buffer.since + intake.batch_window_s - now))
            return timeout

        async def _backpressure(self, buffers: Mapping[str, _Buffer]) -> None:
            """Fetch no more while a busy topic has a full handover buffered."""
            assert intake is not None
            for topic, buffer in buffers.items():
                limit = intake.routes[topic].batch_size * MAX_BATCHES_PER_HANDOVER
                running = self._batch_inflight.get(topic)
                if buffer.count >= limit and running is not None and not running.done():
                    await asyncio.wait([running])

        async def _handle(self, route: Route, batch: Sequence[Any], generation: int) -> None:
            assert intake is not None
            await route.handler(batch)
            handled = _newest_offsets(batch)
            if generation == self.app.consumer_generation_id:
                for tp, offset in handled.items():
                    self._batch_done[tp] = offset + 1
                    self._read_offset[tp] = offset
            if intake.on_handled is not None:
                intake.on_handled(handled)
            if intake.after_batch is not None:
                intake.after_batch()

        async def _rewind(self, dropped: Sequence[Sequence[Any]]) -> None:
            first: dict[TP, int] = {}
            for tp_records in dropped:
                for record in tp_records:
                    tp = TP(record.topic, record.partition)
                    if record.offset < first.get(tp, record.offset + 1):
                        first[tp] = record.offset
            assigned = self.assignment()
            for tp, offset in first.items():
                if tp not in assigned:
                    continue  # its new owner starts from the committed offset
                log.info("rebalance: %s rewound to %s", tp, offset)
                try:
                    await self.seek(tp, offset)
                except Exception:
                    # Lost meanwhile (a rebalance in progress): the same holds as above.
                    log.warning("could not rewind %s to %s", tp, offset, exc_info=True)

        async def _deliver_one_by_one(self, tp: TP, tp_records: Sequence[Any]) -> None:
            # Topics without a batch handler take faust's own path.
            for record in tp_records:
                await self.callback(self._to_message(tp, record))
                self._read_offset[tp] = record.offset

    class Transport(driver.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport

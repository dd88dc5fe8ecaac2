"""Faust glue: consume batches, send rejects to the DLQ, hand the rest to the sink.

Batches come from the transport's batch intake (`transport.BatchIntake`), not from faust
agents: faust's per-event path cost more CPU than the features. Delivery is at-least-once: a
partition's offset is committable only after the handler returned for the batch, and a
failed store call or batch is retried (with backoff) rather than raised, so a batch is never
skipped. Redelivered transactions are harmless: their ids are in the stored state, so they come
back as DUPLICATE and nothing is written.

Write order per batch: offline parts and the forward to the terminal-events topic (acked), the
two at the same time, then the online push. The offline history is then never behind what the
scorer was served; a crash in between only repeats offline rows and forwards on redelivery
(identical content; readers deduplicate by transaction_id, terminals by the transactions'
source offsets), whereas the other order could lose them for good, because the redelivered
transactions would be DUPLICATE online.

Terminal state has one writer per terminal: the terminal handler, fed by the internal topic keyed
by terminal_id, so each terminal lives in exactly one partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import pyarrow as pa
from faust.types import TP, AppT, TopicT

from services.common.events import ValidTransaction
from services.common.features import Outcome
from services.stream import metrics, processor, tracing
from services.stream.processor import (
    CachedCard,
    CachedTerminal,
    E,
    Rejected,
    StateCache,
    TerminalEvent,
)
from services.stream.sink import FeastSink, History
from services.stream.transport import BatchIntake, Record, Route

log = logging.getLogger(__name__)

T = TypeVar("T")


async def accept(
    kind: str,
    batch: Sequence[Record],
    parse: Callable[[bytes | None], T | Rejected],
    dead_letters: DeadLetters,
) -> tuple[list[T], list[Record]]:
    """Count a batch, parse every message, send the rejects to the DLQ; the valid ones, and
    their records in the same order."""
    metrics.EVENTS.labels(kind).inc(len(batch))
    metrics.BATCH_SIZE.labels(kind).observe(len(batch))
    valid: list[T] = []
    records: list[Record] = []
    rejects: list[tuple[Record, Rejected]] = []
    for record in batch:
        parsed = parse(record.value)
        if isinstance(parsed, Rejected):
            rejects.append((record, parsed))
        else:
            valid.append(parsed)
            records.append(record)
    await dead_letters.send(rejects)
    return valid, records


def source_positions(
    txns: Sequence[ValidTransaction], records: Sequence[Record]
) -> dict[tuple[str, str], tuple[int, int]]:
    """(card_id, transaction_id) -> (partition, offset) of the batch's first record of it: the
    position its forward carries. For a transaction delivered twice, any of its records would
    serve the terminals' dedup (all lie inside the batch's offsets); the first is the one a
    replay from the committed offset meets first too, so a replay forwards the same position."""
    positions: dict[tuple[str, str], tuple[int, int]] = {}
    for txn, record in zip(txns, records, strict=True):
        positions.setdefault((txn.card_id, txn.transaction_id), (record.partition, record.offset))
    return positions


def with_positions(table: pa.Table | None, positions: Mapping[str, int]) -> History | None:
    """A batch's offline history table with each key's final row in it, for the online push
    (which encodes those rows column by column); None where no history was written, i.e.
    nothing changed and nothing is pushed."""
    return None if table is None else (table, positions)


def applied_online(view: str, applied: int) -> None:
    """Count a batch's `applied` events whose states are now in the online store, and stamp
    the view's last write (unless nothing changed). The time first: a scrape that sees the
    count sees this batch's time too."""
    if applied:
        metrics.LAST_APPLIED.labels(view).set_to_current_time()
    metrics.APPLIED_ONLINE.labels(view).inc(applied)


def remember(
    cache: StateCache[E],
    read: Mapping[str, E],
    written: Mapping[str, E],
    generation: int,
    view: str,
) -> None:
    """Cache a finished batch's keys: those it wrote with their new state, and those it read
    but left unchanged as read (a hot key's redeliveries then skip the read)."""
    updated = dict(read)
    updated.update(written)
    if not cache.update(updated, generation):
        log.info("rebalance during a batch: its %s states are not cached", view)


class StoreCaller:
    """Runs blocking sink calls in the sink's thread, retrying failures with backoff."""

    def __init__(self, sink: FeastSink, retry_max_s: float) -> None:
        self.sink = sink
        self.retry_max_s = retry_max_s

    async def call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        delay = 0.1
        while True:
            try:
                return await loop.run_in_executor(self.sink.executor, fn, *args)
            except Exception:
                metrics.WRITE_ERRORS.labels(what).inc()
                log.exception("%s failed; retrying in %.1fs", what, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)


class DeadLetters:
    """Sends rejected messages, untouched, to the DLQ topic and waits for the broker's ack."""

    def __init__(self, topic: TopicT, kind: str) -> None:
        self.topic = topic
        self.kind = kind

    async def send(self, rejects: Sequence[tuple[Record, Rejected]]) -> None:
        pending = []
        for message, rejected in rejects:
            log.warning(
                "DLQ %s %s[%s]@%s: %s %s",
                self.kind,
                message.topic,
                message.partition,
                message.offset,
                rejected.field,
                rejected.reason,
            )
            pending.append(
                await self.topic.send(
                    key=message.key,
                    value=message.value,
                    headers=rejected.headers(message.topic, message.partition, message.offset),
                )
            )
            metrics.DLQ.labels(self.kind, rejected.field).inc()
        # Delivered before the batch is acked, so a crash cannot lose a reject.
        if pending:
            await asyncio.gather(*pending)


#: Terminal events per forwarded message: at most ~100 bytes each stays far below Kafka's 1 MB
#: default message limit, whatever the batch size.
MAX_EVENTS_PER_MESSAGE = 4000


class TerminalForwarder:
    """Sends terminal events to the internal topic and waits for the acks.

    One message per destination partition per batch (`processor.encode_terminal_events`): the
    partition is the one Kafka's default partitioner gives the terminal id (so each terminal
    still has one partition and one writer), and a batch costs a handful of sends instead of
    one per event. A partition's events too many for one message go in several, in source
    offset order: a terminal batch may end between them, and the terminals' dedup needs each
    source partition's transactions in offset order (`processor.claim_terminal_events`).
    """

    def __init__(self, topic: TopicT, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions

    async def send(self, terminal_events: Sequence[TerminalEvent]) -> None:
        by_partition: dict[int, list[TerminalEvent]] = {}
        for event in terminal_events:
            partition = processor.terminal_partition(event.terminal_id, self.partitions)
            by_partition.setdefault(partition, []).append(event)
        headers = tracing.forward_headers()
        pending = []
        for partition, events_of in by_partition.items():
            if len(events_of) > MAX_EVENTS_PER_MESSAGE:
                events_of.sort(key=lambda e: (e.source_partition, e.source_offset))
            for start in range(0, len(events_of), MAX_EVENTS_PER_MESSAGE):
                chunk = events_of[start : start + MAX_EVENTS_PER_MESSAGE]
                pending.append(
                    await self.topic.send(
                        # The key only labels the message; the partition is set explicitly.
                        key=chunk[0].terminal_id.encode(),
                        value=processor.encode_terminal_events(chunk),
                        partition=partition,
                        headers=headers,
                    )
                )
        # Acked before the batch is acked (and before the online push), so none can be lost.
        if pending:
            await asyncio.gather(*pending)


async def settle(calls: Sequence[Awaitable[Any]]) -> list[Any]:
    """Run `calls` concurrently and raise the first error only once all have ended: a batch
    retried while one of its writes still runs could see it land after the retry's. Their
    results, in order."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def until_done(
    kind: str,
    handle: Callable[[Sequence[Record]], Awaitable[None]],
    batch: Sequence[Record],
    retry_max_s: float,
) -> None:
    """Handle a batch, retrying it whole on any error (handlers change nothing until they succeed;
    a retry can at worst repeat DLQ sends). Raising instead would stop the intake."""
    delay = 0.1
    while True:
        try:
            await handle(batch)
            return
        except Exception:
            metrics.BATCH_RETRIES.labels(kind).inc()
            log.exception("%s batch of %s failed; retrying in %.1fs", kind, len(batch), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, retry_max_s)


class TransactionHandler:
    """One batch of `Transaction` events -> DLQ, card states, offline parts, one online push."""

    def __init__(
        self,
        store: StoreCaller,
        dead_letters: DeadLetters,
        cache: StateCache[CachedCard],
        allowed_lateness_ms: int,
        forwarder: TerminalForwarder | None = None,
    ) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self.cache = cache
        self.allowed_lateness_ms = allowed_lateness_ms
        self.forwarder = forwarder

    async def handle(self, batch: Sequence[Record]) -> None:
        with tracing.batch_span("stream.transactions", batch) as span:
            valid, records = await accept(
                "transaction", batch, processor.parse_transaction, self.dead_letters
            )
            if valid:
                await self._apply(valid, records)
            if span is not None:
                span.set_attribute("fraudscore.valid", len(valid))

    async def _apply(self, valid: list[ValidTransaction], records: list[Record]) -> None:
        generation = self.cache.generation
        ids = dict.fromkeys(t.card_id for t in valid)
        # The fold changes the cached states in place: cut short, the batch forgets them.
        with self.cache.unless_done(ids):
            cards, misses = self.cache.split(ids)
            if misses:
                cards.update(await self.store.call("load", self.store.sink.load, misses))
            result = processor.fold_batch(
                valid,
                {card_id: entry.state for card_id, entry in cards.items()},
                self.allowed_lateness_ms,
            )
            for outcome, count in result.outcomes.items():
                if count:
                    metrics.TRANSACTIONS.labels(outcome.value).inc(count)
            now_us = time.time_ns() // 1000
            stamps = {
                card_id: processor.next_stamp_us(cards[card_id].stamp_floor_us, now_us)
                for card_id in result.states
            }
            sink = self.store.sink
            writes = [
                self.store.call(
                    "offline", sink.write_offline, result.history, result.transaction_rows
                )
            ]
            if self.forwarder is not None:
                terminal_events = processor.terminal_events_of_transactions(
                    result.transaction_rows, source_positions(valid, records)
                )
                writes.append(self.forwarder.send(terminal_events))
            # Both must precede the online push, not each other: overlapped, a batch waits for the
            # longer of the parquet write and the forward's acks instead of their sum.
            history = (await settle(writes))[0]
            await self.store.call(
                "online",
                sink.push_online,
                result.states,
                stamps,
                None,
                with_positions(history, result.final_positions()),
            )
            applied_online("card", len(result.history))
            written = {
                card_id: CachedCard(state, stamps[card_id])
                for card_id, state in result.states.items()
            }
            remember(self.cache, cards, written, generation, "card")
            late = result.outcomes[Outcome.LATE]
            duplicates = result.outcomes[Outcome.DUPLICATE]
            if late or duplicates:
                log.info(
                    "batch: %s applied, %s duplicate, %s late",
                    len(result.history),
                    duplicates,
                    late,
                )


class LabelHandler:
    """One batch of `FraudLabel` events -> DLQ, or one label-log part and a forward of each
    label to its terminal."""

    def __init__(
        self,
        store: StoreCaller,
        dead_letters: DeadLetters,
        forwarder: TerminalForwarder | None = None,
    ) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self.forwarder = forwarder

    async def handle(self, batch: Sequence[Record]) -> None:
        with tracing.batch_span("stream.labels", batch):
            await self._handle(batch)

    async def _handle(self, batch: Sequence[Record]) -> None:
        rows, _ = await accept("label", batch, processor.parse_label, self.dead_letters)
        if rows:
            # Redelivery can repeat a label row; readers keep one per transaction_id.
            writes = [self.store.call("labels", self.store.sink.write_labels, rows)]
            if self.forwarder is not None:
                writes.append(self.forwarder.send(processor.terminal_events_of_labels(rows)))
            await settle(writes)


class TerminalHandler:
    """One batch of terminal events -> terminal states, one offline part, one online push."""

    def __init__(
        self,
        store: StoreCaller,
        dead_letters: DeadLetters,
        cache: StateCache[CachedTerminal],
    ) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self.cache = cache

    async def handle(self, batch: Sequence[Record]) -> None:
        with tracing.batch_span("stream.terminals", batch):
            messages, _ = await accept(
                "terminal", batch, processor.parse_terminal_events, self.dead_letters
            )
            valid = [event for events_of in messages for event in events_of]
            if valid:
                await self._apply(valid)

    async def _apply(self, valid: list[TerminalEvent]) -> None:
        generation = self.cache.generation
        ids = dict.fromkeys(e.terminal_id for e in valid)
        with self.cache.unless_done(ids):
            terminals, misses = self.cache.split(ids)
            sink = self.store.sink
            if misses:
                terminals.update(await self.store.call("load", sink.load_terminals, misses))
            result = processor.fold_terminal_batch(
                valid, {terminal_id: entry.state for terminal_id, entry in terminals.items()}
            )
            for outcome, count in result.outcomes.items():
                if count:
                    metrics.TERMINAL_EVENTS.labels("all", outcome.value).inc(count)
            now_us = time.time_ns() // 1000
            stamps = {
                terminal_id: processor.next_stamp_us(terminals[terminal_id].stamp_floor_us, now_us)
                for terminal_id in result.states
            }
            history = await self.store.call(
                "terminal_offline", sink.write_terminal_offline, result.history
            )
            await self.store.call(
                "terminal_online",
                sink.push_terminals_online,
                result.states,
                stamps,
                None,
                with_positions(history, result.final_positions()),
            )
            applied_online("terminal", len(result.history))
            written_terminals = {
                terminal_id: CachedTerminal(state, stamps[terminal_id])
                for terminal_id, state in result.states.items()
            }
            remember(self.cache, terminals, written_terminals, generation, "terminal")


class LagTracker:
    """Sets `metrics.CONSUMER_LAG` from the consumer's own fetch high watermarks."""

    def __init__(self, highwater: Callable[[Any], int | None]) -> None:
        self.highwater = highwater

    def observe(self, handled: Mapping[TP, int]) -> None:
        """`handled`: the newest handled offset per partition."""
        for tp, offset in handled.items():
            try:
                highwater = self.highwater(tp)
            except Exception:  # the consumer may be mid-rebalance; next batch updates it
                continue
            if highwater is None:
                continue
            lag = max(0, int(highwater) - (offset + 1))
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)


def attach(
    app: AppT,
    intake: BatchIntake,
    *,
    transactions: TopicT,
    labels: TopicT,
    transaction_handler: TransactionHandler,
    label_handler: LabelHandler,
    cache: StateCache[CachedCard],
    batch_size: int,
    retry_max_s: float,
    terminal_events: TopicT | None = None,
    terminal_handler: TerminalHandler | None = None,
    terminal_batch_size: int = 1,
) -> None:
    """Subscribe `app` to the topics, route their batches to the handlers through `intake`
    (the transport of `app` must have been built with it) and register the rebalance hook.

    `terminal_batch_size` counts messages of the terminal-events topic, each of which already
    holds a transaction batch's events for one partition: the number of partitions is about
    one transaction batch."""
    lag = LagTracker(lambda tp: app.consumer.highwater(tp))
    intake.on_handled = lag.observe

    def route(
        topic: TopicT,
        kind: str,
        handle: Callable[[Sequence[Record]], Awaitable[None]],
        size: int,
    ) -> None:
        async def handle_batch(batch: Sequence[Record]) -> None:
            await until_done(kind, handle, batch, retry_max_s)

        for name in topic.topics:
            intake.routes[name] = Route(handle_batch, max(1, size))
        # faust subscribes the consumer group to the conductor's topics.
        app.topics.add(topic)

    route(transactions, "transaction", transaction_handler.handle, batch_size)
    route(labels, "label", label_handler.handle, batch_size)
    caches: list[StateCache[CachedCard] | StateCache[CachedTerminal]] = [cache]
    if terminal_events is not None and terminal_handler is not None:
        route(terminal_events, "terminal", terminal_handler.handle, terminal_batch_size)
        caches.append(terminal_handler.cache)

    # Another worker may own a revoked partition's keys now: its cached states would go stale.
    # Keys do not map to partitions here, so the whole caches go, on revoke and on assign.
    @app.on_partitions_revoked.connect
    async def _on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        for each in caches:
            if len(each):
                log.info("partitions revoked: dropping %s cached states", len(each))
            each.clear()

    @app.on_partitions_assigned.connect
    async def _on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        for each in caches:
            each.clear()

"""Faust glue: consume batches, send rejects to the DLQ, hand the rest to the sink.

Delivery is at-least-once: `take_events` acks a batch only after the handler returned, and a
failed store call is retried (with backoff) rather than raised, because faust acks a batch
even when its handler crashes. Redelivered transactions are harmless: their ids are in the
stored state, so they come back as DUPLICATE and nothing is written.

Write order per batch: offline parts, then the forward to the terminal-events topic (acked),
then the online push. The offline history is then never behind what the scorer was served; a
crash in between only repeats offline rows and forwards on redelivery (identical content;
readers deduplicate by transaction_id, terminal state by its own dedup), whereas the other
order could lose them for good, because the redelivered transactions would be DUPLICATE online.

Terminal state has one writer per terminal: the terminal agent, fed by the internal topic keyed
by terminal_id, so each terminal lives in exactly one partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from faust.types import AppT, EventT, TopicT

from services.common.events import ValidTransaction
from services.common.features import Outcome
from services.stream import metrics, processor, tracing
from services.stream.processor import (
    CachedCard,
    CachedTerminal,
    Rejected,
    StateCache,
    TerminalEvent,
)
from services.stream.sink import FeastSink

log = logging.getLogger(__name__)

T = TypeVar("T")


async def accept(
    kind: str,
    batch: Sequence[EventT],
    parse: Callable[[bytes | None], T | Rejected],
    dead_letters: DeadLetters,
) -> list[T]:
    """Count a batch, parse every message, send the rejects to the DLQ; the valid ones."""
    metrics.EVENTS.labels(kind).inc(len(batch))
    metrics.BATCH_SIZE.labels(kind).observe(len(batch))
    valid: list[T] = []
    rejects: list[tuple[EventT, Rejected]] = []
    for event in batch:
        parsed = parse(event.message.value)
        if isinstance(parsed, Rejected):
            rejects.append((event, parsed))
        else:
            valid.append(parsed)
    await dead_letters.send(rejects)
    return valid


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

    async def send(self, rejects: Sequence[tuple[EventT, Rejected]]) -> None:
        pending = []
        for event, rejected in rejects:
            message = event.message
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


class TerminalForwarder:
    """Sends terminal events to the internal topic and waits for the acks.

    One message per destination partition per batch, each a JSON array of events: the partition
    is the one Kafka's default partitioner gives the terminal id (so each terminal still has one
    partition and one writer), and a batch costs a handful of sends instead of one per event.
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
        pending = [
            await self.topic.send(
                # The key only labels the message; the partition is set explicitly.
                key=events_of[0].terminal_id.encode(),
                value=processor.encode_terminal_events(events_of),
                partition=partition,
                headers=headers,
            )
            for partition, events_of in by_partition.items()
        ]
        # Acked before the batch is acked (and before the online push), so none can be lost.
        if pending:
            await asyncio.gather(*pending)


async def until_done(
    kind: str,
    handle: Callable[[Sequence[EventT]], Awaitable[None]],
    batch: Sequence[EventT],
    retry_max_s: float,
) -> None:
    """Handle a batch, retrying it whole on any error (handlers change nothing until they succeed;
    a retry can at worst repeat DLQ sends). Raising instead would lose it: faust acks the batch
    and restarts the agent."""
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

    async def handle(self, batch: Sequence[EventT]) -> None:
        with tracing.batch_span("stream.transactions", batch) as span:
            valid: list[ValidTransaction] = await accept(
                "transaction", batch, processor.parse_transaction, self.dead_letters
            )
            if valid:
                await self._apply(valid)
            if span is not None:
                span.set_attribute("fraudscore.valid", len(valid))

    async def _apply(self, valid: list[ValidTransaction]) -> None:
        generation = self.cache.generation
        cards, misses = self.cache.split(dict.fromkeys(t.card_id for t in valid))
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
        await self.store.call(
            "offline", sink.write_offline, result.state_rows, result.transaction_rows
        )
        if self.forwarder is not None:
            await self.forwarder.send(
                processor.terminal_events_of_transactions(result.transaction_rows)
            )
        await self.store.call(
            "online", sink.push_online, result.states, stamps, result.final_rows()
        )
        metrics.APPLIED_ONLINE.labels("card").inc(len(result.state_rows))
        # Cards read but unchanged are cached too: a hot card's redeliveries skip the read.
        updated = dict(cards)
        updated.update(
            {
                card_id: CachedCard(state, stamps[card_id])
                for card_id, state in result.states.items()
            }
        )
        if not self.cache.update(updated, generation):
            log.info("rebalance during a batch: its card states are not cached")
        late = result.outcomes[Outcome.LATE]
        duplicates = result.outcomes[Outcome.DUPLICATE]
        if late or duplicates:
            log.info(
                "batch: %s applied, %s duplicate, %s late", len(result.state_rows), duplicates, late
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

    async def handle(self, batch: Sequence[EventT]) -> None:
        with tracing.batch_span("stream.labels", batch):
            await self._handle(batch)

    async def _handle(self, batch: Sequence[EventT]) -> None:
        rows: list[dict[str, Any]] = await accept(
            "label", batch, processor.parse_label, self.dead_letters
        )
        if rows:
            # Redelivery can repeat a label row; readers keep one per transaction_id.
            await self.store.call("labels", self.store.sink.write_labels, rows)
            if self.forwarder is not None:
                await self.forwarder.send(processor.terminal_events_of_labels(rows))


class TerminalHandler:
    """One batch of terminal events -> terminal states, one offline part, one online push."""

    def __init__(
        self,
        store: StoreCaller,
        dead_letters: DeadLetters,
        cache: StateCache[CachedTerminal],
        allowed_lateness_ms: int,
    ) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self.cache = cache
        self.allowed_lateness_ms = allowed_lateness_ms

    async def handle(self, batch: Sequence[EventT]) -> None:
        with tracing.batch_span("stream.terminals", batch):
            messages: list[list[TerminalEvent]] = await accept(
                "terminal", batch, processor.parse_terminal_events, self.dead_letters
            )
            valid = [event for events_of in messages for event in events_of]
            if valid:
                await self._apply(valid)

    async def _apply(self, valid: list[TerminalEvent]) -> None:
        generation = self.cache.generation
        terminals, misses = self.cache.split(dict.fromkeys(e.terminal_id for e in valid))
        sink = self.store.sink
        if misses:
            terminals.update(await self.store.call("load", sink.load_terminals, misses))
        result = processor.fold_terminal_batch(
            valid,
            {terminal_id: entry.state for terminal_id, entry in terminals.items()},
            self.allowed_lateness_ms,
        )
        for outcome, count in result.outcomes.items():
            if count:
                metrics.TERMINAL_EVENTS.labels("all", outcome.value).inc(count)
        now_us = time.time_ns() // 1000
        stamps = {
            terminal_id: processor.next_stamp_us(terminals[terminal_id].stamp_floor_us, now_us)
            for terminal_id in result.states
        }
        await self.store.call("terminal_offline", sink.write_terminal_offline, result.state_rows)
        await self.store.call(
            "terminal_online",
            sink.push_terminals_online,
            result.states,
            stamps,
            result.final_rows(),
        )
        metrics.APPLIED_ONLINE.labels("terminal").inc(len(result.state_rows))
        updated = dict(terminals)
        updated.update(
            {
                terminal_id: CachedTerminal(state, stamps[terminal_id])
                for terminal_id, state in result.states.items()
            }
        )
        if not self.cache.update(updated, generation):
            log.info("rebalance during a batch: its terminal states are not cached")


class LagTracker:
    """Sets `metrics.CONSUMER_LAG` from the consumer's own fetch high watermarks."""

    def __init__(self, highwater: Callable[[Any], int | None]) -> None:
        self.highwater = highwater

    def observe(self, batch: Sequence[EventT]) -> None:
        newest: dict[Any, int] = {}
        for event in batch:
            tp = event.message.tp
            offset = event.message.offset
            if offset > newest.get(tp, -1):
                newest[tp] = offset
        for tp, offset in newest.items():
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
    *,
    transactions: TopicT,
    labels: TopicT,
    transaction_handler: TransactionHandler,
    label_handler: LabelHandler,
    cache: StateCache[CachedCard],
    batch_size: int,
    batch_window_s: float,
    retry_max_s: float,
    terminal_events: TopicT | None = None,
    terminal_handler: TerminalHandler | None = None,
) -> None:
    """Register the agents and the rebalance hook on `app`."""
    lag = LagTracker(lambda tp: app.consumer.highwater(tp))

    @app.agent(transactions, name="transactions")
    async def transactions_agent(stream: Any) -> None:
        async for batch in stream.take_events(batch_size, within=batch_window_s):
            await until_done("transaction", transaction_handler.handle, batch, retry_max_s)
            lag.observe(batch)

    @app.agent(labels, name="labels")
    async def labels_agent(stream: Any) -> None:
        async for batch in stream.take_events(batch_size, within=batch_window_s):
            await until_done("label", label_handler.handle, batch, retry_max_s)
            lag.observe(batch)

    caches: list[StateCache[CachedCard] | StateCache[CachedTerminal]] = [cache]
    if terminal_events is not None and terminal_handler is not None:
        handler = terminal_handler
        caches.append(handler.cache)

        @app.agent(terminal_events, name="terminals")
        async def terminals_agent(stream: Any) -> None:
            async for batch in stream.take_events(batch_size, within=batch_window_s):
                await until_done("terminal", handler.handle, batch, retry_max_s)
                lag.observe(batch)

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

"""Shared by the stream correctness tests: worker processes, synthetic transactions, the batch
recomputation of their features and the online state to compare it with.

The recomputation folds every transaction of a card in event order through
`features.apply_transaction` and every counted one through `apply_terminal_transaction` at its
terminal: the same code the worker runs, without Kafka, batching, caches or restarts.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from services.common import feast_repo, features, kafka
from services.common.broker import free_port
from services.common.features import CardState, Outcome, TerminalState
from services.common.settings import (
    FeastSettings,
    KafkaSettings,
    RedisSettings,
    StreamSettings,
)
from services.dev.stack import StreamWorker, child_env
from services.proto.fraudscore.v1 import transaction_pb2
from services.scorer.redis_reader import FastFeatureReader

REPO_ROOT = Path(__file__).resolve().parents[2]
#: 2026-01-01T00:00:00Z, on a day boundary so tiles line up in a readable way.
T0_MS = 1_767_225_600_000


class WorkerDied(AssertionError):
    pass


class Worker(StreamWorker):
    """The stream worker of `services.dev.stack`, run from the repo root, its log appended to;
    a dead worker fails the test (`WorkerDied`)."""

    exited_error = WorkerDied

    def __init__(self, env: dict[str, str], log_path: Path, metrics_port: int) -> None:
        super().__init__(env, log_path, metrics_port, cwd=REPO_ROOT)


@dataclass
class WorkerLauncher:
    """Starts workers of one consumer group (one app id) over the same topics and Feast repo."""

    kafka_settings: KafkaSettings
    redis_settings: RedisSettings
    feast_settings: FeastSettings
    log_dir: Path
    app_id: str = field(default_factory=lambda: f"stream-test-{uuid.uuid4().hex[:8]}")
    workers: list[Worker] = field(default_factory=list)

    def start(self, **stream_overrides: Any) -> Worker:
        port = free_port()
        settings: dict[str, Any] = {
            "app_id": self.app_id,
            "data_dir": self.log_dir / f"stream-data-{len(self.workers)}",
            "web_port": 0,
            "metrics_port": port,
            "batch_window_s": 0.05,
            # The Feast repo is applied and the topics created by the fixtures.
            "setup_on_start": False,
            # Fast retries: a stalled broker or a restart should not leave long backoffs.
            "write_retry_max_s": 2.0,
            **stream_overrides,
        }
        stream = StreamSettings(**settings)
        env = child_env(self.kafka_settings, self.redis_settings, self.feast_settings, stream)
        worker = Worker(env, self.log_dir / f"worker-{len(self.workers)}.log", port)
        self.workers.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.alive():
                worker.stop()


def make_transactions(
    prefix: str,
    n: int,
    n_cards: int,
    n_terminals: int,
    span_ms: int,
    seed: int,
    start_ms: int = T0_MS,
) -> list[transaction_pb2.Transaction]:
    """`n` valid transactions in event-time order over `span_ms`.

    Several workers, or one behind, consume the partitions at paces of their own: a card's
    transactions stay in order, but a terminal gets them from every partition, out of order
    (and counts them all: `features.apply_terminal_transaction`).
    """
    rng = random.Random(seed)
    times = sorted(start_ms + rng.randrange(span_ms) for _ in range(n))
    out = []
    for i, event_ms in enumerate(times):
        txn = transaction_pb2.Transaction(
            transaction_id=f"{prefix}t{i}",
            card_id=f"{prefix}c{rng.randrange(n_cards)}",
            terminal_id=f"{prefix}m{rng.randrange(n_terminals)}",
            amount_minor=rng.randrange(100, 50_000),
            currency="EUR",
        )
        txn.event_time.FromMilliseconds(event_ms)
        out.append(txn)
    return out


@dataclass
class Expected:
    """The batch recomputation: card and terminal rows as `features.to_list_row` / `terminal_row`
    give them, and how many transactions were counted."""

    cards: dict[str, dict[str, Any]]
    terminals: dict[str, dict[str, Any]]
    applied: int


def recompute(
    txns: Iterable[transaction_pb2.Transaction],
    card_lateness_ms: int = StreamSettings().allowed_lateness_s * 1000,
) -> Expected:
    """Fold the transactions in event order (ties: as given), once each, as one process would."""
    ordered = sorted(txns, key=lambda t: t.event_time.ToMilliseconds())
    cards: dict[str, CardState] = {}
    terminals: dict[str, TerminalState] = {}
    applied = 0
    for txn in ordered:
        event_ms = txn.event_time.ToMilliseconds()
        outcome = features.apply_transaction(
            cards.setdefault(txn.card_id, CardState()),
            txn.transaction_id,
            event_ms,
            txn.amount_minor / 100,
            card_lateness_ms,
            txn.terminal_id,
        )
        if outcome is not Outcome.APPLIED:
            continue
        applied += 1
        features.apply_terminal_transaction(
            terminals.setdefault(txn.terminal_id, TerminalState()), event_ms
        )
    return Expected(
        cards={card: features.to_list_row(state) for card, state in cards.items()},
        terminals={t: terminal_row(state) for t, state in terminals.items()},
        applied=applied,
    )


def terminal_row(state: TerminalState) -> dict[str, Any]:
    """`features.terminal_to_row` without the claimed source offsets: they say where the
    worker read each transaction, which a recomputation without Kafka cannot know (and which
    differ between partitionings); the tiles show whether anything was counted twice."""
    row = features.terminal_to_list_row(state)
    for column in features.TERMINAL_SOURCE_COLUMNS:
        del row[column]
    return row


class OnlineState:
    """Card and terminal rows as the scorer reads them (its direct Redis reader)."""

    def __init__(self, repo_dir: Path) -> None:
        self.reader = FastFeatureReader.from_store(feast_repo.open_store(repo_dir), timeout_s=5.0)

    def rows(
        self, cards: Sequence[str], terminals: Sequence[str]
    ) -> tuple[dict[str, dict[str, Any] | None], dict[str, dict[str, Any] | None]]:
        card_states, terminal_states = [], []
        # Chunks: one pipelined round trip each, small enough for the 5 s socket timeout.
        for i in range(0, len(cards), 2000):
            card_states += self.reader.read_states(cards[i : i + 2000])
        for i in range(0, len(terminals), 2000):
            terminal_states += self.reader.read_terminal_states(terminals[i : i + 2000])
        return (
            {
                c: None if s is None else features.to_list_row(s)
                for c, s in zip(cards, card_states, strict=True)
            },
            {
                t: None if s is None else terminal_row(s)
                for t, s in zip(terminals, terminal_states, strict=True)
            },
        )

    def differences(self, expected: Expected) -> list[str]:
        """Keys whose online row differs from the recomputation ("card:<id>"/"terminal:<id>")."""
        cards, terminals = self.rows(list(expected.cards), list(expected.terminals))
        out = [f"card:{c}" for c, row in expected.cards.items() if cards[c] != row]
        out += [f"terminal:{t}" for t, row in expected.terminals.items() if terminals[t] != row]
        return out

    def snapshot(self, expected: Expected) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.rows(list(expected.cards), list(expected.terminals))

    def close(self) -> None:
        self.reader.reader.close()


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    check: Callable[[], None] | None = None,
    interval_s: float = 0.25,
) -> float:
    """Poll until `condition()`; the seconds it took. `check` runs first on every round (e.g.
    raise when the worker died)."""
    started = time.monotonic()
    while True:
        if check is not None:
            check()
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def produce(settings: KafkaSettings, txns: Sequence[transaction_pb2.Transaction]) -> dict[int, int]:
    """Produce keyed by card and wait for every ack; the highest offset acked per partition."""
    producer = kafka.make_producer(settings)
    high: dict[int, int] = {}
    errors: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            high[msg.partition()] = max(high.get(msg.partition(), -1), msg.offset())

    for i, txn in enumerate(txns):
        producer.produce(
            settings.transactions_topic,
            key=txn.card_id.encode(),
            value=txn.SerializeToString(),
            on_delivery=delivered,
        )
        if i % 5000 == 4999:
            producer.poll(0)
    assert producer.flush(30) == 0, "messages left unacked"
    assert errors == [], errors[:3]
    return high


def committed(settings: KafkaSettings, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of `topic` (-1001 = none yet)."""
    consumer = Consumer(
        {**settings.client_config(), "group.id": group, "enable.auto.commit": False}
    )
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        got = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        return {tp.partition: tp.offset for tp in got}
    finally:
        consumer.close()


def caught_up(settings: KafkaSettings, group: str, produced: dict[int, int]) -> bool:
    """Whether the group committed past every produced message (from our own acks, not from
    broker-reported end offsets)."""
    offsets = committed(settings, group, settings.transactions_topic)
    return all(offsets.get(p, -1) > high for p, high in produced.items())


def settle(workers: Sequence[Worker], quiet_s: float = 3.0, timeout_s: float = 60.0) -> None:
    """Wait until no live worker's event counters moved for `quiet_s` (terminal events
    included, which arrive through the internal topic after the card batch)."""

    def counters() -> tuple[float, ...]:
        values: list[float] = []
        for worker in workers:
            sample = worker.metrics() or {}
            values.append(
                sum(
                    v
                    for k, v in sample.items()
                    if k.startswith("fraudscore_stream_") and "_total" in k
                )
            )
        return tuple(values)

    deadline = time.monotonic() + timeout_s
    last = counters()
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = counters()
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
    raise AssertionError(f"workers still busy after {timeout_s}s")


def outcomes(worker: Worker) -> dict[str, float]:
    """The worker's transaction outcomes (applied, duplicate, late) since it started."""
    return {
        outcome: worker.metric("fraudscore_stream_transactions_total", outcome=outcome)
        for outcome in ("applied", "duplicate", "late")
    }

"""`fraudctl bench stream`: the stream worker's throughput and freshness, vs. a naive path.

Self-contained unless a bootstrap server is given: the embedded broker, a Feast repo of its own
(temp dir, unique project, on the settings' Redis) and fresh topics. The worker runs as it does
in production, `python -m services.stream` in a subprocess configured by environment variables,
so its figures are one worker's (one process, its own CPU).

* `events_per_s`: a backlog of `events` transactions is produced first; the worker then consumes
  it from offset 0. The clock runs from the first consumed batch until every transaction's card
  *and* terminal state is in the online store (the worker's own `applied_online` counters, then
  a check of the stored states against the backlog).
* `freshness_p50_ms` / `freshness_p99_ms`: transactions published at `rate` per second for
  `duration` seconds; a sample of them are probes on a card and a terminal of their own, and a
  probe is visible when both of its Redis rows exist. Publish = the producer call.
* `baseline_events_per_s`: the same fold with one Feast push per event (card and terminal),
  consumed from Kafka in this process, on a smaller sample.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from services.bench import machine
from services.common import feast_repo, kafka
from services.common.broker import EmbeddedBroker, free_port
from services.common.settings import (
    FeastSettings,
    KafkaSettings,
    RedisSettings,
    StreamSettings,
    to_env,
)
from services.dev.stack import StreamWorker, sample_key
from services.proto.fraudscore.v1 import transaction_pb2

log = logging.getLogger(__name__)

#: 2026-01-01 00:00 UTC: backlog event times start here.
T0_MS = 1_767_225_600_000
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Seconds between reads of the worker's /metrics while it works through the backlog.
METRICS_POLL_S = 1.0
#: ... and before it has consumed anything: it is idle then (joining the group), and the
#: clock starts at the last read that saw nothing, so this bounds how early it starts.
START_POLL_S = 0.01
#: Probes per second in the freshness run (each polls two Redis keys until they exist).
PROBES_PER_S = 50.0
#: Pause between the probe watcher's looks at Redis. A probe's latency is read when a look
#: finds it, so it is overstated by up to this much (never understated); at 2 ms the looks
#: were ~500 pipelines a second, which cost the bench and Redis CPU the worker and the broker
#: share on two cores.
WATCH_POLL_S = 0.01


@dataclass
class Workload:
    """Serialized transactions with their keys, and the truth about what they should produce."""

    messages: list[tuple[bytes, bytes]]
    per_card: dict[str, int] = field(default_factory=dict)
    per_terminal: dict[str, int] = field(default_factory=dict)


def backlog(n: int, cards: int, terminals: int, seed: int, prefix: str) -> Workload:
    """`n` transactions over `cards` cards and `terminals` terminals, in event order, ~0.1 s
    apart on average (so a card's windows fill the way live traffic's do)."""
    rng = np.random.default_rng(seed)
    card_of = rng.integers(0, cards, n).tolist()
    terminal_of = rng.integers(0, terminals, n).tolist()
    amounts = rng.integers(100, 50_000, n).tolist()
    event_ms = (T0_MS + np.cumsum(rng.integers(0, 200, n))).tolist()
    workload = Workload(messages=[])
    for i in range(n):
        card = f"{prefix}c{card_of[i]}"
        terminal = f"{prefix}t{terminal_of[i]}"
        txn = transaction_pb2.Transaction(
            transaction_id=f"{prefix}x{i}",
            card_id=card,
            terminal_id=terminal,
            amount_minor=amounts[i],
            currency="EUR",
            channel=transaction_pb2.CHANNEL_ECOMMERCE,
        )
        txn.event_time.FromMilliseconds(event_ms[i])
        workload.messages.append((card.encode(), txn.SerializeToString()))
        workload.per_card[card] = workload.per_card.get(card, 0) + 1
        workload.per_terminal[terminal] = workload.per_terminal.get(terminal, 0) + 1
    return workload


def produce_all(settings: KafkaSettings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = kafka.make_producer(settings, **{"linger.ms": 20})
    topic = settings.transactions_topic
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("backlog not fully delivered")


class WorkerProcess(StreamWorker):
    """The stream worker of `services.dev.stack`, run from the repo root, its log truncated."""

    _COUNTER = re.compile(
        r"fraudscore_stream_(events_total|applied_online_total|last_applied_timestamp_seconds"
        r'|transactions_total)\{(?:kind|view|outcome)="(\w+)"\}'
    )
    _TERMINAL = re.compile(r'fraudscore_stream_terminal_events_total\{kind="all",outcome="(\w+)"\}')

    def __init__(self, env: dict[str, str], metrics_port: int, log_path: Path) -> None:
        super().__init__(env, log_path, metrics_port, append=False, cwd=REPO_ROOT)

    def counters(self) -> dict[str, float] | None:
        """The worker's consumed and applied-online counters and last-applied times, as
        `name:label` (None while /metrics does not answer)."""
        self.check_alive()
        samples = self.metrics()
        if samples is None:
            return None
        out: dict[str, float] = {}
        for key, value in samples.items():
            match = self._COUNTER.fullmatch(key)
            if match is not None:
                out[f"{match[1]}:{match[2]}"] = value
            match = self._TERMINAL.fullmatch(key)
            if match is not None:
                out[f"terminal_events_total:{match[1]}"] = value
        return out


@dataclass
class Stack:
    kafka: KafkaSettings
    redis: RedisSettings
    feast: FeastSettings
    root: Path


@contextlib.contextmanager
def stack(bootstrap: str | None, redis: RedisSettings) -> Iterator[Stack]:
    """A broker (embedded unless `bootstrap`), fresh topics and an applied Feast repo."""
    with contextlib.ExitStack() as stack_:
        root = Path(stack_.enter_context(tempfile.TemporaryDirectory(prefix="fraudscore-bench-")))
        if bootstrap is None:
            broker = stack_.enter_context(EmbeddedBroker(log_path=root / "tansu.log"))
            bootstrap = broker.bootstrap_servers
        suffix = uuid.uuid4().hex[:8]
        settings = KafkaSettings(
            bootstrap_servers=bootstrap,
            session_timeout_ms=6000,
            transactions_topic=f"bench-transactions-{suffix}",
            labels_topic=f"bench-fraud-labels-{suffix}",
            dlq_topic=f"bench-transactions.dlq-{suffix}",
            scores_topic=f"bench-scores-{suffix}",
        )
        kafka.ensure_topics(
            settings,
            [
                settings.transactions_topic,
                settings.labels_topic,
                settings.dlq_topic,
                StreamSettings().terminal_topic(settings.transactions_topic),
            ],
        )
        feast = FeastSettings(work_dir=root / "repo", project=f"bench_{suffix}")
        log.info("feast apply (project %s)", feast.project)
        repo_dir = feast_repo.prepare_and_apply(feast, redis)
        # The runs' rows would stay in the shared Redis otherwise (~50 MB a run): after a day of
        # runs it held 0.5 million keys in 865 MB, and every later run wrote into that.
        stack_.callback(_drop_online_rows, repo_dir)
        yield Stack(settings, redis, feast, root)


def _drop_online_rows(repo_dir: Path) -> None:
    try:
        feast_repo.open_store(repo_dir).teardown()
    except Exception:
        log.warning("could not drop the bench's online rows", exc_info=True)


def start_worker(env_stack: Stack, batch_size: int, name: str) -> WorkerProcess:
    metrics_port = free_port()
    stream = StreamSettings(
        app_id=f"bench-stream-{uuid.uuid4().hex[:8]}",
        data_dir=env_stack.root / f"{name}-data",
        web_port=0,
        metrics_port=metrics_port,
        setup_on_start=False,
        batch_size=batch_size,
    )
    env = {**os.environ, **to_env(env_stack.kafka, env_stack.redis, env_stack.feast, stream)}
    env["PYTHONUNBUFFERED"] = "1"
    return WorkerProcess(env, metrics_port, env_stack.root / f"{name}.log")


def wait_applied(
    worker: WorkerProcess, baseline: dict[str, float], n: int, timeout_s: float
) -> tuple[float, float, float]:
    """(first consumed, all n applied online for cards and terminals) as monotonic times, and
    the worker's CPU seconds between them.

    The first consumption is placed at the last poll that still saw none: a busy worker's
    /metrics may not answer for seconds, and the first answer showing consumption would
    start the clock late (and overstate events/s). Until then polls every START_POLL_S, then
    every METRICS_POLL_S: each scrape costs the worker CPU (at 10 per second, 5 % of its
    samples were the /metrics handler; at 4 per second, 2-3 %). The end is when the worker
    itself last wrote states online (its `last_applied_timestamp_seconds`), not the poll
    that saw it, so the polls' spacing does not bound the clock's accuracy (a poll every
    0.25 s once put the end up to 0.25 s late, ~12 % of a 2 s backlog)."""
    first: float | None = None
    none_yet: float | None = None
    cpu_first = cpu_none_yet = worker.cpu_s()
    deadline = time.monotonic() + timeout_s
    got: dict[str, float] | None = {}
    while time.monotonic() < deadline:
        now = time.monotonic()
        cpu = worker.cpu_s()
        got = worker.counters()
        if got is None:
            time.sleep(METRICS_POLL_S)
            continue

        def delta(key: str, got: dict[str, float] = got) -> float:
            return got.get(key, 0.0) - baseline.get(key, 0.0)

        if first is None:
            if delta("events_total:transaction") > 0:
                first = now if none_yet is None else none_yet
                cpu_first = cpu if none_yet is None else cpu_none_yet
            else:
                none_yet, cpu_none_yet = now, cpu
        _not_counted(delta, n)
        if delta("applied_online_total:card") >= n and delta("applied_online_total:terminal") >= n:
            # The worker's wall clock, on this host, as a monotonic time of ours.
            wall_to_monotonic = time.monotonic() - time.time()
            done = wall_to_monotonic + max(
                got["last_applied_timestamp_seconds:card"],
                got["last_applied_timestamp_seconds:terminal"],
            )
            start = first if first is not None else now
            return start, max(done, start), worker.cpu_s() - cpu_first
        time.sleep(METRICS_POLL_S if first is not None else START_POLL_S)
    raise TimeoutError(f"not all {n} transactions applied online in {timeout_s}s: {got}")


def _not_counted(delta: Callable[[str], float], n: int) -> None:
    """Raise once all `n` events were handled but some will never be applied online: the
    backlog's events are all distinct and on time, so any dropped is a finding, not a wait."""
    dropped = {
        "card": sum(delta(f"transactions_total:{o}") for o in ("late", "duplicate")),
        "terminal": sum(delta(f"terminal_events_total:{o}") for o in ("late", "duplicate")),
    }
    handled = {
        "card": delta("transactions_total:applied") + dropped["card"],
        "terminal": delta("terminal_events_total:applied") + dropped["terminal"],
    }
    if any(dropped.values()) and all(count >= n for count in handled.values()):
        raise RuntimeError(
            f"of {n} backlog events, {dropped['card']:.0f} were not counted at their card and "
            f"{dropped['terminal']:.0f} not at their terminal (late or duplicate): see the "
            "worker's fraudscore_stream_*_total{outcome=...} counters"
        )


def check_online(store: Any, workload: Workload) -> None:
    """Every card's and terminal's stored state counts exactly its transactions."""
    from services.common import features
    from services.scorer.redis_reader import FastFeatureReader

    reader = FastFeatureReader.from_store(store, timeout_s=5.0)
    cards = list(workload.per_card)
    terminals = list(workload.per_terminal)
    for start in range(0, max(len(cards), len(terminals)), 2000):
        some_cards, some_terminals = cards[start : start + 2000], terminals[start : start + 2000]
        states, terminal_states = reader.read_pairs(some_cards, some_terminals)
        for card, state in zip(some_cards, states, strict=True):
            card_count = state.day_tile_count() if state else 0
            if card_count < workload.per_card[card]:
                raise AssertionError(f"card {card}: {card_count} of {workload.per_card[card]}")
        for terminal, tstate in zip(some_terminals, terminal_states, strict=True):
            counted = sum(tstate.tiles[features.DAY.name].cnt) if tstate else 0
            if counted < workload.per_terminal[terminal]:
                raise AssertionError(f"terminal {terminal}: {counted}")
    reader.reader.close()


def measure_backlog(env_stack: Stack, events: int, cards: int, seed: int) -> dict[str, Any]:
    prefix = f"b{uuid.uuid4().hex[:6]}-"
    workload = backlog(events, cards, max(1, cards // 10), seed, prefix)
    log.info("producing a backlog of %s transactions", events)
    produce_all(env_stack.kafka, workload.messages)
    worker = start_worker(env_stack, StreamSettings().batch_size, "worker")
    try:
        first, done, cpu_s = wait_applied(worker, {}, events, timeout_s=600 + events / 200)
        store = feast_repo.open_store(env_stack.feast.work_dir)
        check_online(store, workload)
        elapsed = done - first
        log.info("backlog: %s events in %.2fs", events, elapsed)
        return {
            "events_per_s": round(events / elapsed, 1),
            "backlog_s": round(elapsed, 3),
            "backlog_cpu_us_per_event": round(cpu_s / events * 1e6, 1),
            "worker": worker,
            "store": store,
        }
    except BaseException:
        worker.stop()
        raise


class ProbeWatcher:
    """Polls Redis for probe rows and records when each became visible."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._pending: dict[tuple[bytes, bytes], float] = {}
        self.latencies_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe-watcher", daemon=True)
        self._thread.start()

    def add(self, keys: tuple[bytes, bytes], published: float) -> None:
        with self._lock:
            self._pending[keys] = published

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                pending = list(self._pending)
            if pending:
                with self.client.pipeline(transaction=False) as pipe:
                    for card_key, terminal_key in pending:
                        pipe.exists(card_key)
                        pipe.exists(terminal_key)
                    found = pipe.execute()
                now = time.monotonic()
                with self._lock:
                    for i, keys in enumerate(pending):
                        if found[2 * i] and found[2 * i + 1]:
                            published = self._pending.pop(keys)
                            self.latencies_ms.append((now - published) * 1000)
            time.sleep(WATCH_POLL_S)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def batch_sizes(worker: WorkerProcess) -> dict[str, tuple[float, float]]:
    """(messages, batches) handled so far per kind, from the worker's batch-size histogram."""
    samples = worker.metrics() or {}
    return {
        kind: (
            samples.get(sample_key("fraudscore_stream_batch_size_sum", kind=kind), 0.0),
            samples.get(sample_key("fraudscore_stream_batch_size_count", kind=kind), 0.0),
        )
        for kind in ("transaction", "terminal")
    }


#: `Transaction.event_time`'s key: field 6, length-delimited.
_EVENT_TIME_KEY = bytes([transaction_pb2.Transaction.EVENT_TIME_FIELD_NUMBER << 3 | 2])


def event_time_field(event_ms: int) -> bytes:
    """`Transaction.event_time` as serialized bytes: appended to a serialized transaction
    without one, it parses as that transaction with this event time (protobuf merges a
    message's fields in any order)."""
    stamp = Timestamp()
    stamp.FromMilliseconds(event_ms)
    body = stamp.SerializeToString()
    return _EVENT_TIME_KEY + bytes([len(body)]) + body


def measure_freshness(
    env_stack: Stack, store: Any, rate: float, duration_s: float, seed: int, worker: WorkerProcess
) -> dict[str, Any]:
    """Publish at `rate` for `duration_s` to the running worker; probe latencies."""
    from services.scorer.redis_reader import RedisOnlineReader

    reader = RedisOnlineReader.from_store(store, timeout_s=5.0)
    watcher = ProbeWatcher(reader.client)
    prefix = f"f{uuid.uuid4().hex[:6]}-"
    rng = np.random.default_rng(seed)
    # The producer's default linger (5 ms, librdkafka's too), as an upstream service would
    # run it. At 1 ms the embedded broker took ~1,000 produce requests/s and ~90 % of a core,
    # and the worker queued behind it on the 2-core machine (p99 1.1-1.9 s, growing over
    # the run); publish is stamped before `produce`, so the linger counts in the figure.
    producer = kafka.make_producer(env_stack.kafka)
    topic = env_stack.kafka.transactions_topic
    total = int(rate * duration_s)
    probe_every = max(1, int(rate / PROBES_PER_S))
    cards = max(10, int(rate))
    # Built before the clock starts, all but the event time: the load generator shares two
    # cores with the worker, the broker and Redis, and building each message on schedule cost
    # it ~a third of a core at 5,000/s.
    messages: list[tuple[bytes, bytes, tuple[bytes, bytes] | None]] = []
    for i in range(total):
        probe = i % probe_every == 0
        card = f"{prefix}p{i}" if probe else f"{prefix}c{int(rng.integers(0, cards))}"
        terminal = f"{prefix}pt{i}" if probe else f"{prefix}t{int(rng.integers(0, cards // 10))}"
        txn = transaction_pb2.Transaction(
            transaction_id=f"{prefix}x{i}",
            card_id=card,
            terminal_id=terminal,
            amount_minor=int(rng.integers(100, 50_000)),
            currency="EUR",
            channel=transaction_pb2.CHANNEL_ECOMMERCE,
        )
        keys = (
            (
                reader.redis_key(feast_repo.FEATURE_VIEW, card),
                reader.redis_key(feast_repo.TERMINAL_FEATURE_VIEW, terminal),
            )
            if probe
            else None
        )
        messages.append((card.encode(), txn.SerializeToString(), keys))
    sizes_started = batch_sizes(worker)
    cpu_started = worker.cpu_s()
    started = time.monotonic()
    for i, (key, without_time, keys) in enumerate(messages):
        ahead = started + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        value = without_time + event_time_field(time.time_ns() // 1_000_000)
        published = time.monotonic()
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
        if keys is not None:
            watcher.add(keys, published)
    producer.flush(30)
    sent_s = time.monotonic() - started
    deadline = time.monotonic() + 60
    while watcher.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    cpu_s = worker.cpu_s() - cpu_started
    sizes = batch_sizes(worker)
    # Batches grow while the worker is behind, and a batch's fixed costs shrink per event.
    mean_batch = {
        kind: round((sizes[kind][0] - sizes_started[kind][0]) / batches, 1)
        for kind in sizes
        if (batches := sizes[kind][1] - sizes_started[kind][1]) > 0
    }
    watcher.close()
    if watcher.pending():
        raise TimeoutError(f"{watcher.pending()} probes never became visible")
    latencies = np.asarray(watcher.latencies_ms)
    reader.close()
    return {
        "freshness_p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "freshness_p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "freshness_probes": int(latencies.size),
        "achieved_rate": round(total / sent_s, 1),
        # Publishing to the last probe seen: the worker has handled (nearly) every event.
        "freshness_cpu_us_per_event": round(cpu_s / total * 1e6, 1),
        "freshness_mean_batch": mean_batch,
    }


def measure_baseline(env_stack: Stack, store: Any, events: int, seed: int) -> dict[str, Any]:
    """The naive path: consume, fold, one Feast push per event for its card and its terminal."""
    import pandas as pd
    from feast.data_source import PushMode

    from services.common import features
    from services.common.features import CardState, TerminalState
    from services.stream import processor

    prefix = f"n{uuid.uuid4().hex[:6]}-"
    settings = env_stack.kafka.model_copy(
        update={"transactions_topic": f"bench-naive-{uuid.uuid4().hex[:8]}"}
    )
    kafka.ensure_topics(settings, [settings.transactions_topic])
    workload = backlog(events, max(10, events // 20), max(1, events // 200), seed + 1, prefix)
    produce_all(settings, workload.messages)
    consumer = kafka_consumer(settings)
    lateness_ms = StreamSettings().allowed_lateness_s * 1000
    cards: dict[str, CardState] = {}
    terminals: dict[str, TerminalState] = {}
    done = 0
    started: float | None = None
    deadline = time.monotonic() + 600
    try:
        while done < events and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            if started is None:
                started = time.monotonic()
            txn = processor.parse_transaction(msg.value())
            done += 1
            if isinstance(txn, processor.Rejected):
                continue
            card = cards.setdefault(txn.card_id, CardState())
            features.apply_transaction(
                card, txn.transaction_id, txn.event_ms, txn.amount, lateness_ms, txn.terminal_id
            )
            terminal = terminals.setdefault(txn.terminal_id, TerminalState())
            features.apply_terminal_transaction(terminal, txn.event_ms)
            stamp = pd.Timestamp(time.time_ns() // 1000, unit="us", tz="UTC")
            card_row = {feast_repo.ENTITY_KEY: txn.card_id, feast_repo.TIMESTAMP: stamp}
            card_row.update(features.to_list_row(card))
            store.push(feast_repo.PUSH_SOURCE, pd.DataFrame([card_row]), to=PushMode.ONLINE)
            terminal_row = {feast_repo.TERMINAL_ENTITY_KEY: txn.terminal_id}
            terminal_row[feast_repo.TIMESTAMP] = stamp
            terminal_row.update(features.terminal_to_list_row(terminal))
            store.push(
                feast_repo.TERMINAL_PUSH_SOURCE, pd.DataFrame([terminal_row]), to=PushMode.ONLINE
            )
    finally:
        consumer.close()
    if started is None or done < events:
        raise TimeoutError(f"baseline consumed only {done} of {events}")
    elapsed = time.monotonic() - started
    return {"baseline_events_per_s": round(events / elapsed, 1), "baseline_events": events}


def kafka_consumer(settings: KafkaSettings) -> Any:
    """A consumer assigned to every partition of the transactions topic from offset 0."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            **settings.client_config(),
            "group.id": f"bench-naive-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    topic = settings.transactions_topic
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    return consumer


def run(
    events: int,
    rate: float,
    duration_s: float,
    *,
    baseline_events: int = 2_000,
    bootstrap: str | None = None,
    cards: int | None = None,
    seed: int = 7,
) -> dict[str, Any]:
    """Measure and return the figures (the JSON line `fraudctl bench stream` prints)."""
    redis = RedisSettings()
    with stack(bootstrap, redis) as env_stack:
        backlog_figures = measure_backlog(env_stack, events, cards or max(10, events // 20), seed)
        worker: WorkerProcess = backlog_figures.pop("worker")
        store = backlog_figures.pop("store")
        try:
            fresh = measure_freshness(env_stack, store, rate, duration_s, seed, worker)
        finally:
            worker.stop()
        naive = measure_baseline(env_stack, store, baseline_events, seed)
    ratio = backlog_figures["events_per_s"] / naive["baseline_events_per_s"]
    return {
        "events_per_s": backlog_figures["events_per_s"],
        "freshness_p50_ms": fresh["freshness_p50_ms"],
        "freshness_p99_ms": fresh["freshness_p99_ms"],
        "baseline_events_per_s": naive["baseline_events_per_s"],
        "ratio": round(ratio, 2),
        "events": events,
        "backlog_s": backlog_figures["backlog_s"],
        "backlog_cpu_us_per_event": backlog_figures["backlog_cpu_us_per_event"],
        "freshness_cpu_us_per_event": fresh["freshness_cpu_us_per_event"],
        "freshness_mean_batch": fresh["freshness_mean_batch"],
        "rate": rate,
        "achieved_rate": fresh["achieved_rate"],
        "duration_s": duration_s,
        "freshness_probes": fresh["freshness_probes"],
        "baseline_events": naive["baseline_events"],
        "broker": "external" if bootstrap else "embedded tansu",
        "machine": machine.describe(),
    }

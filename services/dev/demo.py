"""`fraudctl demo`: the whole path on embedded defaults, end to end.

1. broker (embedded tansu unless KAFKA_BOOTSTRAP_SERVERS is set), Redis check, topics, feast apply
2. the stream worker starts; simulated history is replayed through Kafka into Feast
3. the training job builds a point-in-time dataset from the offline store and promotes a model
4. the scorer starts and serves it; live simulated traffic is scored over gRPC and published
5. a running summary (scores/s, latency, decisions, fallback share) every few seconds
"""

from __future__ import annotations

import logging
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pandas as pd
from confluent_kafka import Producer

from services.common.broker import free_port
from services.common.kafka import make_producer
from services.common.settings import (
    FeastSettings,
    KafkaSettings,
    RedisSettings,
    ScorerSettings,
    StreamSettings,
    TrainingSettings,
)
from services.dev.stack import LocalStack, StackError
from services.proto.fraudscore.v1 import scorer_pb2, scorer_pb2_grpc
from services.simulator.producer import to_proto

log = logging.getLogger("fraudscore.demo")


@dataclass
class DemoOptions:
    duration_s: float | None
    customers: int = 1000
    terminals: int = 2000
    days: int = 42
    rate: float = 50.0
    seed: int = 7
    run_dir: Path = Path(".fraudscore/demo")
    summary_every_s: float = 5.0


@dataclass
class LiveStats:
    latencies_ms: list[float] = field(default_factory=list)
    decisions: Counter[str] = field(default_factory=Counter)
    fallbacks: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def scored(self) -> int:
        return len(self.latencies_ms)

    def summary(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        lat = sorted(self.latencies_ms) or [0.0]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        share = self.fallbacks / self.scored if self.scored else 0.0
        return (
            f"scored={self.scored} rate={self.scored / elapsed:.1f}/s "
            f"p50={statistics.median(lat):.2f}ms p99={p99:.2f}ms "
            f"fallback_share={share:.1%} errors={self.errors} "
            f"decisions={dict(self.decisions)}"
        )


def _settings(options: DemoOptions) -> LocalStack:
    run_id = uuid.uuid4().hex[:8]
    kafka_settings = KafkaSettings()
    if kafka_settings.bootstrap_servers:
        # A shared broker may hold earlier runs' events: give this run topics of its own.
        kafka_settings = kafka_settings.model_copy(
            update={
                "transactions_topic": f"transactions-demo-{run_id}",
                "labels_topic": f"fraud-labels-demo-{run_id}",
                "dlq_topic": f"transactions.dlq-demo-{run_id}",
                "scores_topic": f"scores-demo-{run_id}",
            }
        )
    run_dir = options.run_dir.resolve()
    return LocalStack(
        run_dir=run_dir,
        kafka=kafka_settings,
        redis=RedisSettings(),
        feast=FeastSettings(work_dir=run_dir / "feature_repo", project=f"demo_{run_id}"),
        # Free ports: a demo must not collide with a dev stack or another demo on this machine.
        stream=StreamSettings(
            app_id=f"fraudscore-demo-{run_id}",
            data_dir=run_dir / "stream",
            web_port=0,
            metrics_port=free_port(),
        ),
        scorer=ScorerSettings(
            address="127.0.0.1:0", model_dir=run_dir / "models", metrics_port=free_port()
        ),
    )


def run(options: DemoOptions) -> int:
    stack = _settings(options)
    stack.clean()
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        stack.start_infrastructure()
        log.info(
            "metrics: stream http://127.0.0.1:%s/metrics, scorer http://127.0.0.1:%s/metrics",
            stack.stream.metrics_port,
            stack.scorer.metrics_port,
        )
        stack.start_stream()
        history_end = _replay_history(stack, options, now)
        _train(stack, history_end)
        address = stack.start_scorer()
        stats = _score_live(stack, options, address, now - timedelta(days=options.days))
    except (StackError, TimeoutError) as exc:
        log.error("demo failed: %s", exc)
        return 1
    except KeyboardInterrupt:
        log.info("interrupted; shutting down")
        return 0
    finally:
        stack.stop()
        stack.teardown_online_store()
    log.info("final: %s", stats.summary())
    if stats.errors or stats.scored == 0:
        log.error("demo finished with %s errors and %s scores", stats.errors, stats.scored)
        return 1
    return 0


def _replay_history(stack: LocalStack, options: DemoOptions, now: datetime) -> int:
    from services.simulator import generate, producer

    start = now - timedelta(days=options.days)
    config = generate.SimConfig(
        n_customers=options.customers,
        n_terminals=options.terminals,
        n_days=options.days,
        start=start,
        seed=options.seed,
    )
    history = generate.simulate(config)
    now_ms = int(now.timestamp() * 1000)
    history = history[history["event_ms"] < now_ms]
    labels = generate.labels_for(history, seed=options.seed)
    labels = labels[labels["reported_ms"] <= now_ms]
    log.info(
        "replaying %s simulated transactions (%s days, %.2f%% fraud) and %s labels through Kafka",
        len(history),
        options.days,
        100 * history["is_fraud"].mean(),
        len(labels),
    )
    producer.produce_transactions(stack.kafka, history, rate=None)
    producer.produce_labels(stack.kafka, labels, rate=None)
    stack.wait_for_offline(len(history), len(labels), timeout_s=max(120.0, len(history) / 500))
    return now_ms


def _train(stack: LocalStack, cutoff_ms: int) -> None:
    from training.pipeline import run_training

    log.info("training on the offline store (point-in-time, labels known at the cutoff)")
    result = run_training(
        stack.feast,
        stack.redis,
        TrainingSettings(model_dir=stack.scorer.model_dir),
        cutoff_ms=cutoff_ms,
    )
    log.info("training: %s", result)


def _score_live(
    stack: LocalStack, options: DemoOptions, address: str, history_start: datetime
) -> LiveStats:
    from services.simulator import generate

    kafka_producer = make_producer(stack.kafka)
    stats = LiveStats()
    deadline = None if options.duration_s is None else time.monotonic() + options.duration_s
    next_summary = time.monotonic() + options.summary_every_s
    log.info(
        "scoring live traffic at %.0f/s%s",
        options.rate,
        "" if deadline is None else f" for {options.duration_s:.0f}s",
    )
    with grpc.insecure_channel(address) as channel:
        stub = scorer_pb2_grpc.FraudScorerStub(channel)
        # Same world and clock origin as the history; compressed time so the demo has traffic.
        live = generate.live_batches(
            generate.SimConfig(
                n_customers=options.customers,
                n_terminals=options.terminals,
                n_days=options.days,
                start=history_start,
                seed=options.seed,
            ),
            batch_seconds=1.0,
            events_per_s=options.rate,
        )
        for batch in live:
            for _, row in batch.iterrows():
                if deadline is not None and time.monotonic() >= deadline:
                    kafka_producer.flush(10)
                    return stats
                _score_one(stub, row, stats, stack, kafka_producer)
                if time.monotonic() >= next_summary:
                    stack.check_alive()
                    log.info("live: %s", stats.summary())
                    next_summary += options.summary_every_s
    return stats


def _score_one(
    stub: scorer_pb2_grpc.FraudScorerStub,
    row: pd.Series,
    stats: LiveStats,
    stack: LocalStack,
    kafka_producer: Producer,
) -> None:
    txn = to_proto(row)
    started = time.perf_counter()
    try:
        reply = stub.Score(scorer_pb2.ScoreRequest(transaction=txn), timeout=1.0)
    except grpc.RpcError as exc:
        stats.errors += 1
        log.warning("Score failed: %s", exc.code())
        return
    stats.latencies_ms.append((time.perf_counter() - started) * 1000)
    stats.decisions[scorer_pb2.Decision.Name(reply.decision).removeprefix("DECISION_")] += 1
    stats.fallbacks += int(reply.fallback_used)
    # Upstream publishes after scoring, so the stream keeps the features fresh.
    kafka_producer.produce(
        stack.kafka.transactions_topic, key=txn.card_id.encode(), value=txn.SerializeToString()
    )
    kafka_producer.poll(0)

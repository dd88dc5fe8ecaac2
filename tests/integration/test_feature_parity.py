"""Training/serving parity: what the scorer reads for a transaction just before the stream
processes it is exactly what the training dataset holds for it.

The real stream worker (a subprocess, over the real broker and Redis) folds simulated
transactions and their fraud labels; before each transaction is produced, the scorer's real
reader reads its card and terminal state from Redis and finishes the features. At the end the
training dataset is built from the offline store and every row is compared: 0 mismatches.

Feeding the worker one event at a time would take hours, so events go in *layers*: an event's
layer is one more than the layer of the previous event of its card and of its terminal (a label
only has a terminal). Within a layer no card and no terminal repeats, so reading before the layer
sees exactly the events before each transaction; between layers the test waits until the worker
has written every event of the previous ones online. Each layer costs about the same (two
consumer hops: card agent, terminal agent), whatever its size, so the transactions are a random
sample of a larger world's: few events per card and terminal, few and large layers.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.stream import Worker

from services.common import currency, feast_repo, features, kafka
from services.common.broker import free_port
from services.common.settings import (
    FeastSettings,
    KafkaSettings,
    RedisSettings,
    StreamSettings,
)
from services.dev.stack import child_env, sample_key
from services.scorer.redis_reader import FastFeatureReader
from services.scorer.servicer import read_pairs
from services.simulator.generate import SimConfig, labels_for, simulate
from services.simulator.producer import label_to_proto, to_proto
from training import dataset

pytestmark = pytest.mark.integration

#: Simulated transactions fed through the worker: a sample of a 15-day, 2,000-card,
#: 2,000-terminal world's (~60,000). Each layer costs ~1.5 s of consumer round trips; this sample
#: needs ~30 layers, where the 10,000 first transactions of a 300-card world needed ~300.
N_TRANSACTIONS = 10_000
WORLD = SimConfig(n_customers=2000, n_terminals=2000, n_days=15, seed=5)


@dataclass
class Layer:
    transactions: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def layered(txns: pd.DataFrame, labels: pd.DataFrame) -> list[Layer]:
    """Events in time order (labels at their reported time, after same-ms transactions), cut
    into layers where no card and no terminal repeats and every event comes after its key's
    previous events."""
    timeline = [(int(ms), 0, i) for i, ms in enumerate(txns["event_ms"])]
    timeline += [(int(ms), 1, i) for i, ms in enumerate(labels["reported_ms"])]
    timeline.sort()
    last_card: dict[str, int] = {}
    last_terminal: dict[str, int] = {}
    layers: list[Layer] = []
    cards = txns["card_id"].to_numpy()
    terminals = txns["terminal_id"].to_numpy()
    label_terminals = labels["terminal_id"].to_numpy()
    for _, kind, i in timeline:
        if kind == 0:
            card, terminal = cards[i], terminals[i]
            depth = max(last_card.get(card, -1), last_terminal.get(terminal, -1)) + 1
            last_card[card] = depth
        else:
            terminal = label_terminals[i]
            depth = last_terminal.get(terminal, -1) + 1
        last_terminal[terminal] = depth
        while len(layers) <= depth:
            layers.append(Layer())
        (layers[depth].transactions if kind == 0 else layers[depth].labels).append(i)
    return layers


def applied_online(worker: Worker) -> dict[str, float] | None:
    """The worker's `fraudscore_stream_applied_online_total` by view; None while it starts."""
    sample = worker.metrics()
    if sample is None:
        return None
    return {
        view: sample.get(sample_key("fraudscore_stream_applied_online_total", view=view), 0.0)
        for view in ("card", "terminal")
    }


@pytest.fixture()
def parity_repo(tmp_path: Path, redis_settings: RedisSettings) -> tuple[FeastSettings, Path]:
    """A repo of its own: the comparison needs offline data no other test writes into."""
    settings = FeastSettings(
        work_dir=tmp_path / "feature_repo", project=f"parity_{uuid.uuid4().hex[:10]}"
    )
    return settings, feast_repo.prepare_and_apply(settings, redis_settings)


@pytest.fixture()
def worker(
    fresh_topics: KafkaSettings,
    redis_settings: RedisSettings,
    parity_repo: tuple[FeastSettings, Path],
    tmp_path: Path,
) -> Iterator[Worker]:
    feast_settings, repo_dir = parity_repo
    stream = StreamSettings(
        app_id=f"parity-{uuid.uuid4().hex[:8]}",
        data_dir=tmp_path / "stream-data",
        web_port=0,
        metrics_port=free_port(),
        # Small windows: the test waits for every layer, so latency is its running time.
        batch_window_s=0.01,
        setup_on_start=False,
    )
    feast = feast_settings.model_copy(update={"work_dir": repo_dir})
    env = child_env(fresh_topics, redis_settings, feast, stream)
    running = Worker(env, tmp_path / "worker.log", stream.metrics_port)
    try:
        yield running
    finally:
        running.stop(timeout_s=20)


def test_scorer_reads_exactly_what_training_gets_for_every_transaction(
    worker: Worker,
    fresh_topics: KafkaSettings,
    parity_repo: tuple[FeastSettings, Path],
) -> None:
    _, repo_dir = parity_repo
    txns = (
        simulate(WORLD)
        .sample(n=N_TRANSACTIONS, random_state=5)
        .sort_values(["event_ms", "transaction_id"], kind="stable")
        .reset_index(drop=True)
    )
    assert len(txns) == N_TRANSACTIONS
    last_ms = int(txns["event_ms"].max())
    all_labels = labels_for(txns, seed=5, min_delay_days=0.5, max_delay_days=5.0)
    # Only labels known while the transactions flow can change what a later one reads.
    labels = all_labels[all_labels["reported_ms"] <= last_ms].reset_index(drop=True)
    assert len(labels) > 20
    layers = layered(txns, labels)

    # The scorer's own read path: its default direct Redis reader, one pipelined round trip
    # for all the transactions of a layer, as for a ScoreBatch.
    reader = FastFeatureReader.from_store(feast_repo.open_store(repo_dir), timeout_s=5.0)
    producer = kafka.make_producer(fresh_topics)
    amounts = [
        currency.to_major(int(m), str(c))
        for m, c in zip(txns["amount_minor"], txns["currency"], strict=True)
    ]
    tx_rows = txns.to_dict("records")
    label_rows = labels.to_dict("records")
    served: dict[str, list[float]] = {}
    sent_txns = sent_frauds = 0
    started = time.monotonic()
    for layer in layers:
        # The scorer's view of each transaction, before the worker has seen it.
        rows = [tx_rows[i] for i in layer.transactions]
        cards, terminals = read_pairs(
            reader, [str(r["card_id"]) for r in rows], [str(r["terminal_id"]) for r in rows]
        )
        for i, row, card, terminal in zip(layer.transactions, rows, cards, terminals, strict=True):
            served[row["transaction_id"]] = features.feature_vector(
                features.all_features(card, amounts[i], int(row["event_ms"]), terminal)
            )
        for i in layer.transactions:
            row = tx_rows[i]
            producer.produce(
                fresh_topics.transactions_topic,
                key=str(row["card_id"]).encode(),
                value=to_proto(row).SerializeToString(),
            )
        for i in layer.labels:
            row = label_rows[i]
            producer.produce(
                fresh_topics.labels_topic,
                key=str(row["card_id"]).encode(),
                value=label_to_proto(row).SerializeToString(),
            )
        assert producer.flush(15) == 0
        sent_txns += len(layer.transactions)
        sent_frauds += sum(bool(label_rows[i]["is_fraud"]) for i in layer.labels)
        want = {"card": float(sent_txns), "terminal": float(sent_txns + sent_frauds)}
        # The first layer also waits for the worker to start and join its group.
        deadline = time.monotonic() + (240 if sent_txns == len(layer.transactions) else 120)
        while applied_online(worker) != want:
            if not worker.alive() or time.monotonic() > deadline:
                pytest.fail(
                    f"worker stuck at {applied_online(worker)}, want {want}\n{worker.tail()}"
                )
            time.sleep(0.003)
    streamed_s = time.monotonic() - started
    reader.reader.close()

    frame, stats = dataset.build_dataset(repo_dir, cutoff_ms=last_ms + 1)
    assert stats.rows == N_TRANSACTIONS
    assert stats.duplicate_transactions == 0
    names = list(features.FEATURE_NAMES)
    trained = frame.set_index("transaction_id")[names]
    mismatches = []
    for tid, vector in served.items():
        got = trained.loc[tid].to_numpy(np.float64)
        want_row = np.asarray(vector, dtype=np.float64)
        same = (got == want_row) | (np.isnan(got) & np.isnan(want_row))
        if not same.all():
            mismatches.append((tid, [n for n, ok in zip(names, same, strict=True) if not ok]))
    assert mismatches == [], f"{len(mismatches)} mismatches, first: {mismatches[:5]}"
    # The comparison means something: the terminal features saw labels and many terminals.
    assert trained["terminal_risk_30d"].max() > 0
    assert (trained["card_distinct_terminals_24h"] > 1).any()
    assert not math.isnan(trained["card_amount_zscore_30d"].max())
    print(
        f"parity: {len(txns)} transactions, {len(labels)} labels in {len(layers)} layers "
        f"streamed in {streamed_s:.0f}s, 0 mismatches"
    )

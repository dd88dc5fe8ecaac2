"""The stream worker as it runs in production: a subprocess configured by environment variables,
over the real broker, Redis and a prepared Feast repo."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from helpers.stream import Worker

from services.common import feast_repo, features, kafka, offline_store
from services.common.broker import free_port
from services.common.features import CardState, Outcome
from services.common.settings import (
    FeastSettings,
    KafkaSettings,
    RedisSettings,
    StreamSettings,
    to_env,
)
from services.proto.fraudscore.v1 import transaction_pb2

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000
LATENESS_MS = 300_000


@pytest.fixture()
def start_worker(
    fresh_topics: KafkaSettings,
    redis_settings: RedisSettings,
    feast_settings: FeastSettings,
    feature_repo_dir: Path,
    tmp_path: Path,
) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(**stream_overrides: Any) -> Worker:
        metrics_port = free_port()
        stream = StreamSettings(
            app_id=f"stream-test-{uuid.uuid4().hex[:8]}",
            data_dir=tmp_path / "stream-data",
            web_port=0,
            metrics_port=metrics_port,
            batch_window_s=0.2,
            **stream_overrides,
        )
        feast = feast_settings.model_copy(update={"work_dir": feature_repo_dir})
        env = {**os.environ, **to_env(fresh_topics, redis_settings, feast, stream)}
        env["PYTHONUNBUFFERED"] = "1"
        worker = Worker(env, tmp_path / f"worker-{len(workers)}.log", metrics_port)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def make_txn(tid: str, card: str, event_ms: int, amount_minor: int) -> transaction_pb2.Transaction:
    txn = transaction_pb2.Transaction(
        transaction_id=tid,
        card_id=card,
        terminal_id=f"term-{amount_minor % 7}",
        amount_minor=amount_minor,
        currency="EUR",
    )
    txn.event_time.FromMilliseconds(event_ms)
    return txn


def produce(
    settings: KafkaSettings,
    topic: str,
    messages: list[tuple[bytes, bytes]],
    partition: int | None = None,
) -> None:
    producer = kafka.make_producer(settings)
    for key, value in messages:
        if partition is None:
            producer.produce(topic, key=key, value=value)
        else:
            producer.produce(topic, key=key, value=value, partition=partition)
    assert producer.flush(15) == 0


def read_topic(settings: KafkaSettings, topic: str, expected: int, timeout_s: float) -> list[Any]:
    """Every message of `topic` (assigned partitions, no group join), waiting for `expected`."""
    consumer = Consumer(
        {
            **settings.client_config(),
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(messages) < expected:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                messages.append(msg)
        # A little longer: more than expected would be a bug too.
        settle = time.monotonic() + 1.5
        while time.monotonic() < settle:
            msg = consumer.poll(0.3)
            if msg is not None and msg.error() is None:
                messages.append(msg)
        return messages
    finally:
        consumer.close()


def online_rows(store: Any, cards: list[str]) -> dict[str, dict[str, Any] | None]:
    got = store.get_online_features(
        features=feast_repo.feature_refs(), entity_rows=[{"card_id": c} for c in cards]
    ).to_dict()
    out: dict[str, dict[str, Any] | None] = {}
    for i, card in enumerate(cards):
        state = features.from_row({column: got[column][i] for column in features.STATE_COLUMNS})
        out[card] = None if state is None else features.to_list_row(state)
    return out


def wait_online(
    store: Any, expected: dict[str, dict[str, Any]], worker: Worker, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    current: dict[str, dict[str, Any] | None] = {}
    while time.monotonic() < deadline:
        worker.check_alive()
        current = online_rows(store, list(expected))
        if current == expected:
            return
        time.sleep(0.5)
    missing = [card for card in expected if current.get(card) != expected[card]]
    pytest.fail(f"online state never matched for {missing}\n{worker.tail()}")


def rows_for(folder: Path, schema: Any, prefix: str) -> list[dict[str, Any]]:
    table = offline_store.read(folder, schema)
    return [row for row in table.to_pylist() if row["card_id"].startswith(prefix)]


def test_worker_folds_transactions_into_feast_and_dead_letters_the_malformed(
    start_worker: Callable[..., Worker],
    fresh_topics: KafkaSettings,
    feature_repo_dir: Path,
) -> None:
    prefix = f"card-{uuid.uuid4().hex[:6]}-"
    cards = [f"{prefix}{i:02d}" for i in range(20)]
    rng = random.Random(11)
    txns = [
        make_txn(f"{prefix}t{i}", rng.choice(cards), T0 + rng.randrange(0, 2 * 3_600_000), 100 + i)
        for i in range(300)
    ]
    # In event order, so the worker's fold matches a plain loop whatever the batch boundaries.
    txns.sort(key=lambda t: t.event_time.ToMilliseconds())

    expected_states: dict[str, CardState] = {}
    applied_ids: list[str] = []
    for txn in txns:
        state = expected_states.setdefault(txn.card_id, CardState())
        outcome = features.apply_transaction(
            state,
            txn.transaction_id,
            txn.event_time.ToMilliseconds(),
            txn.amount_minor / 100,
            LATENESS_MS,
            txn.terminal_id,
        )
        if outcome is Outcome.APPLIED:
            applied_ids.append(txn.transaction_id)
    assert len(applied_ids) == 300
    expected = {card: features.to_list_row(state) for card, state in expected_states.items()}

    bad_amount = make_txn(f"{prefix}neg", cards[0], T0, -5)
    bad_currency = make_txn(f"{prefix}cur", cards[0], T0, 5)
    bad_currency.currency = "XXQ"
    malformed = {
        b"\xff\xff\xff\xff": "payload",
        bad_amount.SerializeToString(): "amount_minor",
        bad_currency.SerializeToString(): "currency",
    }

    valid_messages = [(t.card_id.encode(), t.SerializeToString()) for t in txns]
    produce(fresh_topics, fresh_topics.transactions_topic, valid_messages[:150])
    produce(fresh_topics, fresh_topics.transactions_topic, [(b"bad", m) for m in malformed])
    produce(fresh_topics, fresh_topics.transactions_topic, valid_messages[150:])

    worker = start_worker()
    store = feast_repo.open_store(feature_repo_dir)
    wait_online(store, expected, worker, timeout_s=90)

    dlq = read_topic(fresh_topics, fresh_topics.dlq_topic, len(malformed), timeout_s=20)
    got = {msg.value(): dict(msg.headers() or []) for msg in dlq}
    assert set(got) == set(malformed)
    for payload, field in malformed.items():
        headers = got[payload]
        assert headers["reason"]
        assert headers["field"].decode() == field
        assert headers["original_topic"].decode() == fresh_topics.transactions_topic

    state_rows = rows_for(
        feature_repo_dir / offline_store.CARD_STATE_DIR, offline_store.CARD_STATE_SCHEMA, prefix
    )
    txn_rows = rows_for(
        feature_repo_dir / offline_store.TRANSACTIONS_DIR, offline_store.TRANSACTIONS_SCHEMA, prefix
    )
    assert len(state_rows) == 300
    assert sorted(r["transaction_id"] for r in txn_rows) == sorted(applied_ids)
    # Each history row is the state right after its transaction.
    last_row = max(
        (r for r in state_rows if r["card_id"] == cards[3]), key=lambda r: r["last_event_ms"]
    )
    assert {k: last_row[k] for k in features.STATE_COLUMNS} == expected[cards[3]]

    # Redelivery: everything again plus one transaction far older than its card's newest (LATE),
    # then one sentinel per partition. Each partition is consumed in order, so once every
    # sentinel is online all the others were processed.
    late = make_txn(f"{prefix}late", cards[5], T0 - 3_600_000, 999)
    produce(
        fresh_topics,
        fresh_topics.transactions_topic,
        [*valid_messages, (late.card_id.encode(), late.SerializeToString())],
    )
    sentinels: dict[str, dict[str, Any]] = {}
    for partition in range(fresh_topics.partitions):
        card = f"{prefix}sentinel-{partition}"
        txn = make_txn(f"{prefix}s{partition}", card, T0, 100)
        produce(
            fresh_topics,
            fresh_topics.transactions_topic,
            [(card.encode(), txn.SerializeToString())],
            partition=partition,
        )
        state = CardState()
        features.apply_transaction(state, txn.transaction_id, T0, 1.0, LATENESS_MS, txn.terminal_id)
        sentinels[card] = features.to_list_row(state)
    wait_online(store, sentinels, worker, timeout_s=60)

    assert online_rows(store, cards) == expected
    state_rows_after = rows_for(
        feature_repo_dir / offline_store.CARD_STATE_DIR, offline_store.CARD_STATE_SCHEMA, prefix
    )
    assert len(state_rows_after) == 300 + len(sentinels)

    assert worker.stop() == 0, worker.tail()


def test_worker_appends_labels_to_the_label_log(
    start_worker: Callable[..., Worker],
    fresh_topics: KafkaSettings,
    feature_repo_dir: Path,
) -> None:
    prefix = f"card-{uuid.uuid4().hex[:6]}-"
    labels = []
    for i in range(12):
        label = transaction_pb2.FraudLabel(
            transaction_id=f"{prefix}t{i}",
            card_id=f"{prefix}{i % 3}",
            # A terminal of this test's own: the project's Redis is shared with other tests,
            # and these frauds would show in any later read of a common terminal.
            terminal_id=f"{prefix}term",
            is_fraud=i % 4 == 0,
        )
        label.transaction_time.FromMilliseconds(T0 + i * 1000)
        label.reported_at.FromMilliseconds(T0 + 86_400_000 + i)
        labels.append(label)
    produce(
        fresh_topics,
        fresh_topics.labels_topic,
        [(lb.card_id.encode(), lb.SerializeToString()) for lb in labels]
        + [(b"bad", b"\xff\xff\xff\xff")],
    )

    # The Feast repo is already applied by the fixture: skip the setup a deploy step would do.
    worker = start_worker(setup_on_start=False)
    folder = feature_repo_dir / offline_store.LABELS_DIR
    deadline = time.monotonic() + 60
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(rows) < len(labels):
        worker.check_alive()
        rows = rows_for(folder, offline_store.LABELS_SCHEMA, prefix)
        time.sleep(0.5)
    assert sorted(r["transaction_id"] for r in rows) == sorted(lb.transaction_id for lb in labels)
    by_id = {r["transaction_id"]: r for r in rows}
    assert by_id[f"{prefix}t4"]["is_fraud"] is True
    assert by_id[f"{prefix}t5"]["is_fraud"] is False
    assert by_id[f"{prefix}t5"]["transaction_ms"] == T0 + 5000

    (msg,) = read_topic(fresh_topics, fresh_topics.dlq_topic, 1, timeout_s=20)
    assert msg.value() == b"\xff\xff\xff\xff"
    assert dict(msg.headers() or [])["original_topic"].decode() == fresh_topics.labels_topic

    assert worker.stop() == 0, worker.tail()


def test_direct_redis_writes_are_byte_for_byte_what_a_feast_push_writes(
    feature_repo_dir: Path,
) -> None:
    """The stream writes online state itself (services.stream.online); Feast must find exactly
    what its own push would have stored, for both views, empty lists included."""
    import redis as redis_lib

    from services.stream.online import RedisOnlineStore
    from services.stream.sink import push_frame, terminal_push_frame

    store = feast_repo.open_store(feature_repo_dir)
    online = RedisOnlineStore.from_store(
        store, [feast_repo.FEATURE_VIEW, feast_repo.TERMINAL_FEATURE_VIEW]
    )
    tag = uuid.uuid4().hex[:6]
    busy = CardState()
    for i in range(40):
        features.apply_transaction(
            busy, f"x{i}", T0 + i * 61_000, 10.5 + i, LATENESS_MS, f"term-{i % 3}"
        )
    empty = CardState(last_event_ms=T0)  # every list column empty
    terminal = features.TerminalState()
    for i in range(30):
        features.apply_terminal_transaction(terminal, T0 + i * 1000)
        features.claim_terminal_source(terminal, i % 2, i, T0 + i * 1000, T0)
    features.apply_terminal_label(terminal, "x3", T0 + 3000, True)
    stamp_us = T0 * 1000 + 123_456

    from feast.data_source import PushMode

    cards = {"busy": busy, "empty": empty}
    store.push(
        feast_repo.PUSH_SOURCE,
        push_frame(
            {f"feast-{tag}-{c}": s for c, s in cards.items()},
            dict.fromkeys((f"feast-{tag}-{c}" for c in cards), stamp_us),
        ),
        to=PushMode.ONLINE,
    )
    store.push(
        feast_repo.TERMINAL_PUSH_SOURCE,
        terminal_push_frame({f"feast-{tag}-t": terminal}, {f"feast-{tag}-t": stamp_us}),
        to=PushMode.ONLINE,
    )
    written = online.write(
        feast_repo.FEATURE_VIEW,
        [(f"fast-{tag}-{c}", stamp_us, features.to_row(s)) for c, s in cards.items()],
    )
    written += online.write(
        feast_repo.TERMINAL_FEATURE_VIEW,
        [(f"fast-{tag}-t", stamp_us, features.terminal_to_row(terminal))],
    )
    assert written == 3

    client = redis_lib.Redis(host="127.0.0.1", port=6379)
    pairs = [(feast_repo.FEATURE_VIEW, c) for c in cards] + [
        (feast_repo.TERMINAL_FEATURE_VIEW, "t")
    ]
    for view, name in pairs:
        ours = client.hgetall(online.key(view, f"fast-{tag}-{name}"))
        feasts = client.hgetall(online.key(view, f"feast-{tag}-{name}"))
        assert feasts, f"Feast wrote nothing under the key we computed for {view}/{name}"
        assert ours == feasts, view

    # Feast reads our rows back as the states we wrote, with our timestamp.
    got = store.get_online_features(
        features=feast_repo.feature_refs(), entity_rows=[{"card_id": f"fast-{tag}-busy"}]
    ).to_dict()
    row = {column: got[column][0] for column in features.STATE_COLUMNS}
    assert features.to_row(features.from_row(row)) == features.to_row(busy)  # type: ignore[arg-type]
    (stored,) = online.read(feast_repo.FEATURE_VIEW, [f"fast-{tag}-busy"])
    assert stored.stamp_us == stamp_us
    assert features.to_row(features.from_row(stored.row)) == features.to_row(busy)  # type: ignore[arg-type]

    # Like Feast's write: a row not newer than the stored one is skipped.
    assert (
        online.write(
            feast_repo.FEATURE_VIEW, [(f"fast-{tag}-busy", stamp_us, features.to_row(empty))]
        )
        == 0
    )
    (stored,) = online.read(feast_repo.FEATURE_VIEW, [f"fast-{tag}-busy"])
    assert features.from_row(stored.row) is not None
    assert stored.row["last_event_ms"] == busy.last_event_ms
    online.close()

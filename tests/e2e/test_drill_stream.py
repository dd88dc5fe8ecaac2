"""Fault drill (issue #6): while a stream worker processes a live stream of transactions, the
broker is stalled (SIGSTOP 10 s, then SIGCONT) and the worker is killed with SIGKILL and
restarted. Afterwards the online features equal a batch recomputation from the same events:
0 lost, 0 double counted. Prints its figures.

The drill runs its own broker, so stalling it cannot disturb any other test's.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers.stream import (
    Expected,
    OnlineState,
    WorkerLauncher,
    caught_up,
    make_transactions,
    outcomes,
    produce,
    recompute,
    settle,
    wait_until,
)

from services.common import kafka
from services.common.broker import EmbeddedBroker
from services.common.settings import FeastSettings, KafkaSettings, RedisSettings
from services.proto.fraudscore.v1 import transaction_pb2

pytestmark = pytest.mark.e2e

N_EVENTS = 4000
#: Events produced before the worker starts, so the drill begins while it is busy.
BACKLOG = 1000
RATE_PER_S = 150
STALL_S = 10.0
#: Deadline (not a target) for a cold worker start plus the backlog on a loaded 2-core box.
DEADLINE_S = 180.0


@pytest.fixture()
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as running:
        yield running


@pytest.fixture()
def launcher(
    own_broker: EmbeddedBroker,
    redis_settings: RedisSettings,
    feast_settings: FeastSettings,
    feature_repo_dir: Path,
    tmp_path: Path,
) -> Iterator[WorkerLauncher]:
    settings = KafkaSettings(
        bootstrap_servers=own_broker.bootstrap_servers,
        session_timeout_ms=6000,
        transactions_topic=f"drill-{uuid.uuid4().hex[:8]}",
    )
    kafka.ensure_topics(settings)
    feast = feast_settings.model_copy(update={"work_dir": feature_repo_dir})
    running = WorkerLauncher(settings, redis_settings, feast, tmp_path)
    yield running
    running.stop_all()


class PacedProducer(threading.Thread):
    """Produces transactions at a steady rate in chunks, recording the acked offsets."""

    def __init__(
        self, settings: KafkaSettings, txns: Sequence[transaction_pb2.Transaction]
    ) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.txns = txns
        self.produced: dict[int, int] = {}
        self.errors: list[str] = []
        self.unacked = 0

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
        else:
            high = self.produced.get(msg.partition(), -1)
            self.produced[msg.partition()] = max(high, msg.offset())

    def run(self) -> None:
        producer = kafka.make_producer(self.settings)
        chunk = max(1, RATE_PER_S // 10)
        for i in range(0, len(self.txns), chunk):
            due = time.monotonic() + 0.1
            for txn in self.txns[i : i + chunk]:
                producer.produce(
                    self.settings.transactions_topic,
                    key=txn.card_id.encode(),
                    value=txn.SerializeToString(),
                    on_delivery=self._delivered,
                )
            # Waiting for the acks: a stalled broker stalls the stream too, as upstream would.
            producer.flush(60)
            time.sleep(max(0.0, due - time.monotonic()))
        self.unacked = producer.flush(60)


def counted(rows: dict[str, Any], column: str) -> dict[str, int]:
    """Transactions counted per key: the sum over its day tiles (every event is in them)."""
    return {key: 0 if row is None else sum(row[column]) for key, row in rows.items()}


def lost_and_double(online: OnlineState, expected: Expected) -> tuple[int, int]:
    """Transactions missing from / counted too often in the online state, over the cards and,
    separately forwarded, the terminals."""
    cards, terminals = online.snapshot(expected)
    lost = double = 0
    for got_rows, want_rows, column in (
        (cards, expected.cards, "d_cnt"),
        (terminals, expected.terminals, "t_d_cnt"),
    ):
        got, want = counted(got_rows, column), counted(want_rows, column)
        lost += sum(max(0, want[k] - got[k]) for k in want)
        double += sum(max(0, got[k] - want[k]) for k in want)
    return lost, double


def test_broker_stall_and_worker_kill_lose_and_double_count_nothing(
    launcher: WorkerLauncher,
    own_broker: EmbeddedBroker,
    feature_repo_dir: Path,
) -> None:
    settings = launcher.kafka_settings
    txns = make_transactions(
        f"dr{uuid.uuid4().hex[:6]}-", N_EVENTS, 300, 150, span_ms=50 * 60_000, seed=6
    )
    expected = recompute(txns)
    assert expected.applied == N_EVENTS
    online = OnlineState(feature_repo_dir)
    broker_pid = own_broker.process.pid if own_broker.process else None
    assert broker_pid is not None

    produced = produce(settings, txns[:BACKLOG])
    worker = launcher.start()
    wait_until(
        lambda: outcomes(worker)["applied"] > 0, DEADLINE_S, "first batch", worker.check_alive
    )
    paced = PacedProducer(settings, txns[BACKLOG:])
    paced.start()

    time.sleep(2.0)
    os.kill(broker_pid, signal.SIGSTOP)
    try:
        time.sleep(STALL_S)
    finally:
        os.kill(broker_pid, signal.SIGCONT)
    resumed_at = time.monotonic()
    before = outcomes(worker)["applied"]
    wait_until(
        lambda: outcomes(worker)["applied"] > before,
        DEADLINE_S,
        "progress after the stall",
        worker.check_alive,
        interval_s=0.1,
    )
    stall_recovery_s = time.monotonic() - resumed_at

    time.sleep(2.0)
    worker.kill()
    killed_at = time.monotonic()
    restarted = launcher.start()
    paced.join(timeout=DEADLINE_S)
    assert not paced.is_alive(), "the producer never finished"
    assert paced.errors == [] and paced.unacked == 0, (paced.errors[:3], paced.unacked)
    for partition, high in paced.produced.items():
        produced[partition] = max(produced.get(partition, -1), high)

    restart_recovery_s: float | None = None
    try:
        wait_until(
            lambda: online.differences(expected) == [],
            DEADLINE_S,
            "the online state to equal the recomputation",
            restarted.check_alive,
        )
        restart_recovery_s = time.monotonic() - killed_at
        wait_until(
            lambda: caught_up(settings, launcher.app_id, produced),
            60,
            "committed offsets",
            restarted.check_alive,
        )
        settle([restarted])
    finally:
        lost, double = lost_and_double(online, expected)
        differing = online.differences(expected)
        online.close()
        figures = {
            "events": N_EVENTS,
            "lost": lost,
            "double_counted": double,
            "keys_differing": len(differing),
            "stall_s": STALL_S,
            "stall_recovery_s": round(stall_recovery_s, 1),
            # From the SIGKILL until the state first equalled the recomputation.
            "restart_recovery_s": None
            if restart_recovery_s is None
            else round(restart_recovery_s, 1),
            "restart_outcomes": outcomes(restarted),
        }
        print(f"stream drill: {json.dumps(figures)}")
    assert (lost, double) == (0, 0)
    assert differing == []
    assert restarted.stop() == 0, restarted.tail()

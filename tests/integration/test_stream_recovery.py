"""Stream semantics under failure, over the real broker, Redis and worker processes: a replay
from offset 0 changes nothing, a worker killed with SIGKILL mid-stream and restarted ends at
the batch recomputation (nothing lost, nothing counted twice), and two workers of one group
share the partitions and hand them over when one stops."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.stream import (
    Expected,
    OnlineState,
    Worker,
    WorkerLauncher,
    caught_up,
    make_transactions,
    outcomes,
    produce,
    recompute,
    settle,
    wait_until,
)

from services.common.settings import FeastSettings, KafkaSettings, RedisSettings

pytestmark = pytest.mark.integration

#: Deadline (not a target) for a worker to start and finish a backlog: a cold start imports
#: Feast and joins the group, which takes 20-60 s on a loaded 2-core machine.
START_S = 180.0


@pytest.fixture()
def launcher(
    fresh_topics: KafkaSettings,
    redis_settings: RedisSettings,
    feast_settings: FeastSettings,
    feature_repo_dir: Path,
    tmp_path: Path,
) -> Iterator[WorkerLauncher]:
    feast = feast_settings.model_copy(update={"work_dir": feature_repo_dir})
    running = WorkerLauncher(fresh_topics, redis_settings, feast, tmp_path)
    yield running
    running.stop_all()


@pytest.fixture()
def online(feature_repo_dir: Path) -> Iterator[OnlineState]:
    state = OnlineState(feature_repo_dir)
    yield state
    state.close()


def logs(workers: list[Worker]) -> str:
    return "\n".join(f"--- {w.log_path.name}\n{w.tail(3000)}" for w in workers)


def finish(
    launcher: WorkerLauncher,
    online: OnlineState,
    expected: Expected,
    produced: dict[int, int],
    live: list[Worker],
    timeout_s: float = START_S,
) -> float:
    """Wait until the online state equals the recomputation and the group committed every
    message, then until the workers are idle, and check the state again: nothing came in late
    to count twice. The seconds until the state first matched."""

    def alive() -> None:
        for worker in live:
            worker.check_alive()

    try:
        took = wait_until(
            lambda: online.differences(expected) == [], timeout_s, "online state", check=alive
        )
        wait_until(
            lambda: caught_up(launcher.kafka_settings, launcher.app_id, produced),
            30,
            "committed offsets",
            check=alive,
        )
        settle(live)
    except AssertionError as exc:
        diff = online.differences(expected)
        raise AssertionError(f"{exc}; {len(diff)} differ, e.g. {diff[:5]}\n{logs(live)}") from exc
    assert online.differences(expected) == []
    return took


def test_replaying_the_topic_from_offset_0_changes_nothing(
    launcher: WorkerLauncher, online: OnlineState, fresh_topics: KafkaSettings
) -> None:
    # Within 4 minutes of event time: every replayed id is still inside the card lateness, so
    # the replay is recognised as DUPLICATE (not merely dropped as LATE).
    txns = make_transactions(f"rp{uuid.uuid4().hex[:6]}-", 2000, 60, 40, span_ms=240_000, seed=1)
    expected = recompute(txns)
    assert expected.applied == len(txns)
    produced = produce(fresh_topics, txns)
    started = time.time()
    first = launcher.start()
    finish(launcher, online, expected, produced, [first])
    assert outcomes(first) == {"applied": len(txns), "duplicate": 0, "late": 0}
    for view in ("card", "terminal"):
        last = first.metric("fraudscore_stream_last_applied_timestamp_seconds", view=view)
        assert started < last <= time.time(), view
    before = online.snapshot(expected)
    assert first.stop() == 0, first.tail()

    # A new consumer group reads every partition from offset 0 again; its cache is cold, so
    # each card's state comes from the online store.
    launcher.app_id = f"replay-{uuid.uuid4().hex[:8]}"
    replay = launcher.start()
    wait_until(
        lambda: outcomes(replay)["duplicate"] == len(txns),
        START_S,
        "every replayed transaction counted as duplicate",
        check=replay.check_alive,
    )
    wait_until(lambda: caught_up(fresh_topics, launcher.app_id, produced), 30, "commits")
    settle([replay])
    assert outcomes(replay) == {"applied": 0, "duplicate": len(txns), "late": 0}
    # Duplicates are not forwarded: the terminals saw nothing either.
    assert replay.metric("fraudscore_stream_applied_online_total", view="terminal") == 0
    # Nothing it read changed a state, so it never wrote one: its online features stand still.
    samples = replay.metrics()
    assert samples is not None and samples, "the replay worker's /metrics did not answer"
    assert not [key for key in samples if "last_applied_timestamp" in key], samples
    assert online.snapshot(expected) == before
    assert online.differences(expected) == []
    assert replay.stop() == 0, replay.tail()


def test_a_worker_killed_mid_stream_and_restarted_ends_at_the_batch_recomputation(
    launcher: WorkerLauncher, online: OnlineState, fresh_topics: KafkaSettings
) -> None:
    n = 5000
    txns = make_transactions(f"kl{uuid.uuid4().hex[:6]}-", n, 300, 150, span_ms=50 * 60_000, seed=2)
    expected = recompute(txns)
    assert expected.applied == n
    produced = produce(fresh_topics, txns)

    # Small batches: a worker behind takes up to 64 batches in one handover, so at the default
    # size this whole backlog could be one batch, written before any kill could land in it.
    victim = launcher.start(batch_size=12)
    # Killed once a first batch is written online (not merely folded: a busy worker's first
    # handover may hold 768 of the backlog), so the restart has stored states to resume from.
    wait_until(
        lambda: victim.metric("fraudscore_stream_applied_online_total", view="card") >= n // 10,
        START_S,
        "the worker to be busy with the backlog",
        check=victim.check_alive,
        interval_s=0.05,
    )
    applied_before_kill = outcomes(victim)["applied"]
    victim.kill()
    # The kill landed mid-stream: the online state is not final yet.
    assert applied_before_kill < n
    assert online.differences(expected) != []

    restarted = launcher.start()
    took = finish(launcher, online, expected, produced, [restarted])
    counts = outcomes(restarted)
    print(
        f"kill -9: {n} events, {applied_before_kill:.0f} applied before the kill, "
        f"restart outcomes {counts}, state matched {took:.1f}s after the restart"
    )
    # The restarted worker continued from the stored state rather than counting from scratch.
    # Redelivered transactions come back DUPLICATE, or LATE when more than the lateness behind
    # their card's newest: either way they change nothing, which the state comparison proves.
    assert counts["applied"] < n
    assert restarted.stop() == 0, restarted.tail()


def test_transactions_hours_behind_their_terminals_newest_are_all_counted(
    launcher: WorkerLauncher, online: OnlineState, fresh_topics: KafkaSettings
) -> None:
    """A worker consumes its card partitions at paces of its own, so a terminal can get a
    transaction hours behind the newest it counted (one partition drained far ahead of
    another: a backlog, a restart). Each was counted by its card and is counted by the
    recomputation and the training backfill, so the terminal counts it too: here half the cards
    are handled to the end of a 6-hour span before the other half's first transaction arrives,
    at the same terminals."""
    txns = make_transactions(
        f"sk{uuid.uuid4().hex[:6]}-", 3000, 120, 12, span_ms=6 * 3_600_000, seed=4
    )
    cards = sorted({t.card_id for t in txns})
    ahead = set(cards[: len(cards) // 2])
    first = [t for t in txns if t.card_id in ahead]
    behind = [t for t in txns if t.card_id not in ahead]
    worker = launcher.start()
    produced = produce(fresh_topics, first)
    wait_until(
        lambda: (
            worker.metric("fraudscore_stream_applied_online_total", view="terminal") >= len(first)
        ),
        START_S,
        "the first half counted at the terminals",
        check=worker.check_alive,
    )
    for partition, high in produce(fresh_topics, behind).items():
        produced[partition] = max(produced.get(partition, -1), high)
    expected = recompute(txns)
    assert expected.applied == len(txns)
    finish(launcher, online, expected, produced, [worker])
    assert outcomes(worker) == {"applied": len(txns), "duplicate": 0, "late": 0}
    terminal = {
        outcome: worker.metric(
            "fraudscore_stream_terminal_events_total", kind="all", outcome=outcome
        )
        for outcome in ("applied", "duplicate", "late")
    }
    assert terminal == {"applied": len(txns), "duplicate": 0, "late": 0}
    assert worker.stop() == 0, worker.tail()


def test_two_workers_share_the_partitions_and_one_takes_over_when_the_other_stops(
    launcher: WorkerLauncher, online: OnlineState, fresh_topics: KafkaSettings
) -> None:
    prefix = f"rb{uuid.uuid4().hex[:6]}-"
    txns = make_transactions(prefix, 6000, 400, 200, span_ms=50 * 60_000, seed=3)
    first_half, second_half = txns[:3000], txns[3000:]
    expected_first = recompute(first_half)

    workers = [launcher.start(), launcher.start()]
    # Trickle the first half until both workers counted something: a worker that joins after
    # the other drained everything would own partitions but see no events.
    chunks = [first_half[i : i + 25] for i in range(0, len(first_half), 25)]
    produced: dict[int, int] = {}
    while chunks:
        for partition, high in produce(fresh_topics, chunks.pop(0)).items():
            produced[partition] = max(produced.get(partition, -1), high)
        if all(outcomes(w)["applied"] > 0 for w in workers):
            break
        for worker in workers:
            worker.check_alive()
        time.sleep(1.0)
    rest = [txn for chunk in chunks for txn in chunk]
    if rest:
        for partition, high in produce(fresh_topics, rest).items():
            produced[partition] = max(produced.get(partition, -1), high)
    finish(launcher, online, expected_first, produced, workers)
    shares = [outcomes(w)["applied"] for w in workers]
    assert sum(shares) == len(first_half)
    assert all(share > 0 for share in shares), f"one worker got no partitions: {shares}"

    survivor, leaving = workers
    assert leaving.stop() == 0, leaving.tail()
    produced = produce(fresh_topics, second_half)
    expected = recompute(txns)
    finish(launcher, online, expected, produced, [survivor])
    counts = outcomes(survivor)
    print(f"rebalance: shares {shares}, survivor after takeover {counts}")
    # The survivor counted the whole second half, the leaver's partitions included, and
    # nothing of the first half again (redelivered after the rebalance: DUPLICATE or LATE).
    assert counts["applied"] == shares[0] + len(second_half)
    assert survivor.stop() == 0, survivor.tail()

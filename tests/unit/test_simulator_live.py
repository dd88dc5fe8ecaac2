"""Live traffic continues the simulated history: same cards, wall-clock event times."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

from services.simulator import generate
from services.simulator.config import DAY_MS
from services.simulator.generate import SimConfig

NOW = 1_790_000_000_000  # 2026-09-21T13:33:20Z
CONFIG = SimConfig(n_customers=300, n_terminals=500, n_days=20, seed=4)
HOUR = 3_600_000


def test_live_traffic_uses_the_same_cards_as_the_history() -> None:
    history = generate.simulate(CONFIG)
    live = generate.simulate_live(CONFIG, NOW, NOW + 6 * HOUR)
    assert len(live) > 0
    assert set(live["card_id"]) <= set(history["card_id"])
    assert not set(live["transaction_id"]) & set(history["transaction_id"])


def test_live_event_times_are_rebased_into_the_wall_clock_window() -> None:
    live = generate.simulate_live(CONFIG, NOW, NOW + 6 * HOUR)
    assert live["event_ms"].is_monotonic_increasing
    assert live["event_ms"].min() >= NOW
    assert live["event_ms"].max() < NOW + 6 * HOUR


def test_live_continues_the_day_after_the_history() -> None:
    # History ending now: simulated time is wall time, so live equals the next simulated day.
    start = pd.Timestamp(NOW - CONFIG.n_days * DAY_MS, unit="ms", tz="UTC").to_pydatetime()
    config = SimConfig(n_customers=300, n_terminals=500, n_days=20, seed=4, start=start)
    live = generate.simulate_live(config, NOW, NOW + DAY_MS)
    next_day = generate.simulate_days(config, 20, 21)
    pd.testing.assert_frame_equal(live, next_day)


def test_consecutive_windows_partition_one_long_window() -> None:
    clock = generate.live_clock(CONFIG, NOW, speedup=50.0)
    whole = generate.simulate_live(CONFIG, NOW, NOW + 40 * 60_000, clock=clock)
    parts = [
        generate.simulate_live(CONFIG, NOW + i * 60_000, NOW + (i + 1) * 60_000, clock=clock)
        for i in range(40)
    ]
    joined = pd.concat(parts, ignore_index=True)
    pd.testing.assert_frame_equal(joined, whole)
    assert len(whole) > 100  # 40 min x 50 = ~33 simulated hours


def test_live_batches_wait_for_the_wall_clock_and_reach_the_requested_rate() -> None:
    clock = {"now": NOW / 1000}
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock["now"] += seconds

    batches = generate.live_batches(
        CONFIG, 5.0, events_per_s=20.0, start_ms=NOW, now=lambda: clock["now"], sleep=sleep
    )
    frames = [next(batches) for _ in range(60)]
    assert sleeps and all(abs(s - 5.0) < 1e-6 for s in sleeps)
    for i, frame in enumerate(frames):
        window_start = NOW + i * 5000
        assert frame["event_ms"].between(window_start, window_start + 4999).all()
    total = sum(len(f) for f in frames)
    # 300 s at ~20/s, give or take the noon peak of the simulated days it spans.
    assert 0.5 * 6000 < total < 1.5 * 6000
    ids = pd.concat(frames)["transaction_id"]
    assert ids.is_unique


def test_live_batches_catch_up_without_sleeping_when_the_consumer_lags() -> None:
    sleeps: list[float] = []
    batches = generate.live_batches(
        CONFIG,
        timedelta(minutes=1).total_seconds(),
        start_ms=NOW - 10 * 60_000,
        now=lambda: NOW / 1000,
        sleep=sleeps.append,
    )
    for _ in range(10):
        next(batches)
    assert sleeps == []


def test_speedup_maps_simulated_time_linearly() -> None:
    clock = generate.live_clock(CONFIG, NOW, speedup=10.0)
    assert clock.to_sim(NOW + 1000) - clock.to_sim(NOW) == 10_000
    back = clock.to_wall(np.array([clock.to_sim(NOW + 12_345)]))
    assert back[0] == NOW + 12_345

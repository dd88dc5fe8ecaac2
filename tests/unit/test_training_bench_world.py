"""`fraudctl bench train`'s world: the handbook's fraud scenarios scaled with its size, so a
big training world keeps the handbook's fraud share, while the default world stays the
handbook's own; and a neighbour search that builds a 10M-transaction world in seconds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from services.bench import train as bench
from services.simulator import frauds
from services.simulator.config import S2_TERMINALS_PER_DAY, S3_CUSTOMERS_PER_DAY, SimConfig
from services.simulator.generate import simulate_days
from services.simulator.world import terminals_within_radius


def test_the_handbook_world_keeps_the_handbooks_daily_compromises() -> None:
    assert bench.compromised_per_day(5_000, 10_000) == (2, 3)
    assert SimConfig().terminals_compromised_per_day == S2_TERMINALS_PER_DAY == 2
    assert SimConfig().customers_compromised_per_day == S3_CUSTOMERS_PER_DAY == 3


def test_daily_compromises_grow_with_the_world() -> None:
    assert bench.compromised_per_day(243_000, 486_000) == (97, 146)
    # A world far smaller than the handbook's still has every scenario.
    assert bench.compromised_per_day(400, 800) == (1, 1)


def test_the_default_draws_are_the_handbook_streams_unchanged() -> None:
    for day in range(5):
        expected_terminals = np.random.default_rng([7, frauds.STREAM_S2, day]).choice(
            10_000, 2, replace=False
        )
        expected_customers = np.random.default_rng([7, frauds.STREAM_S3, day]).choice(
            5_000, 3, replace=False
        )
        assert list(frauds.compromised_terminals(7, day, 10_000)) == list(expected_terminals)
        assert list(frauds.compromised_customers(7, day, 5_000)) == list(expected_customers)


def _window_fraud_share(customers: int, per_day: tuple[int, int] | None) -> float:
    terminals = 2 * customers
    extra = {}
    if per_day is not None:
        extra = {
            "terminals_compromised_per_day": per_day[0],
            "customers_compromised_per_day": per_day[1],
        }
    config = SimConfig(
        n_customers=customers,
        n_terminals=terminals,
        n_days=bench.WARMUP_DAYS + 14,
        radius=bench.HANDBOOK_RADIUS * math.sqrt(bench.HANDBOOK_TERMINALS / terminals),
        seed=2,
        **extra,  # type: ignore[arg-type]
    )
    frame: pd.DataFrame = simulate_days(config, bench.WARMUP_DAYS, bench.WARMUP_DAYS + 14)
    return float(frame["is_fraud"].mean())


def test_a_world_twice_the_handbooks_keeps_its_fraud_share_when_scaled() -> None:
    handbook = _window_fraud_share(5_000, None)
    scaled = _window_fraud_share(10_000, bench.compromised_per_day(10_000, 20_000))
    unscaled = _window_fraud_share(10_000, None)
    # The handbook's share, after the warm-up days (its compromises all running).
    assert 0.006 < handbook < 0.012
    assert abs(scaled / handbook - 1) < 0.2
    # The handbook's fixed daily counts in a bigger world dilute the frauds.
    assert unscaled < 0.7 * handbook


def _brute_force(
    cx: np.ndarray, cy: np.ndarray, tx: np.ndarray, ty: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    dx = cx[:, None] - tx[None, :]
    dy = cy[:, None] - ty[None, :]
    rows, cols = np.nonzero(dx * dx + dy * dy < radius * radius)
    ptr = np.zeros(len(cx) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(cx)), out=ptr[1:])
    return ptr, cols.astype(np.int64)


@pytest.mark.parametrize(
    ("customers", "terminals", "radius"),
    [(2000, 4000, 5.0), (500, 1000, 0.7), (300, 50, 30.0), (200, 400, 150.0), (5, 0, 1.0)],
)
def test_the_bucketed_neighbour_search_equals_comparing_every_pair(
    customers: int, terminals: int, radius: float
) -> None:
    """A big world's customer-terminal search goes by grid cells (all pairs took ~50 CPU
    minutes at 10M transactions); the handbook's world depends on it giving the same lists."""
    rng = np.random.default_rng(customers + terminals)
    cx, cy = rng.uniform(0, 100, customers), rng.uniform(0, 100, customers)
    tx, ty = rng.uniform(0, 100, terminals), rng.uniform(0, 100, terminals)
    if customers >= 10 and terminals >= 10:
        # On cell edges, and exactly one radius away (not strictly within: excluded).
        cx[:5], tx[:5] = np.round(cx[:5]), np.round(tx[:5])
        tx[5:10], ty[5:10] = cx[5:10] + radius, cy[5:10]
    ptr, idx = terminals_within_radius(cx, cy, tx, ty, radius)
    expected_ptr, expected_idx = _brute_force(cx, cy, tx, ty, radius)
    np.testing.assert_array_equal(ptr, expected_ptr)
    np.testing.assert_array_equal(idx, expected_idx)

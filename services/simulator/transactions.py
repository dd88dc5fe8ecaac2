"""Genuine transactions, one simulated day at a time, as the handbook generates them.

Per customer and day: a Poisson(mean_tx_per_day) count; each transaction at a time of day
~ Normal(noon, 20000 s), dropped when outside the day (as the handbook does, rather than piling
draws up at midnight); an amount ~ Normal(mean, std), re-drawn ~ U(0, 2 * mean) when negative and
rounded to cents; a terminal drawn uniformly among those within the radius (customers with none
make no transactions). Each day has its own random stream keyed by (seed, day), so any range of
days can be generated on its own and agrees with a longer run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.simulator.config import DAY_MS, TIME_MEAN_S, TIME_STD_S, SimConfig
from services.simulator.world import World

STREAM_DAY = 10


@dataclass(frozen=True)
class Raw:
    """Transactions as column arrays, ordered by (day, seq): seq is the time order within a day."""

    day: np.ndarray
    seq: np.ndarray
    customer: np.ndarray
    terminal: np.ndarray
    ms_in_day: np.ndarray
    amount_minor: np.ndarray

    def __len__(self) -> int:
        return len(self.day)

    def take(self, rows: np.ndarray) -> Raw:
        return Raw(
            day=self.day[rows],
            seq=self.seq[rows],
            customer=self.customer[rows],
            terminal=self.terminal[rows],
            ms_in_day=self.ms_in_day[rows],
            amount_minor=self.amount_minor[rows],
        )


def generate_day(world: World, config: SimConfig, day: int) -> Raw:
    rng = np.random.default_rng([config.seed, STREAM_DAY, day])
    counts = rng.poisson(world.mean_tx_per_day)
    customer = np.repeat(np.arange(world.n_customers, dtype=np.int64), counts)
    n = len(customer)
    ms_in_day = np.floor(rng.normal(TIME_MEAN_S, TIME_STD_S, n) * 1000.0).astype(np.int64)
    mean = world.mean_amount[customer]
    amount = rng.normal(mean, world.std_amount[customer])
    negative = amount < 0
    amount[negative] = rng.uniform(0.0, 2.0 * mean[negative])
    pick = rng.random(n)

    n_neighbours = world.n_neighbours[customer]
    keep = (ms_in_day >= 0) & (ms_in_day < DAY_MS) & (n_neighbours > 0)
    customer, ms_in_day, amount, pick = customer[keep], ms_in_day[keep], amount[keep], pick[keep]
    slot = world.neighbour_ptr[customer] + (pick * n_neighbours[keep]).astype(np.int64)
    terminal = world.neighbour_idx[slot]
    # Cents as the handbook rounds them; a 0.00 draw becomes the smallest valid amount.
    amount_minor = np.maximum(np.round(amount * config.minor_per_major), 1).astype(np.int64)

    order = np.lexsort((customer, ms_in_day))
    return Raw(
        day=np.full(len(order), day, dtype=np.int64),
        seq=np.arange(len(order), dtype=np.int64),
        customer=customer[order],
        terminal=terminal[order],
        ms_in_day=ms_in_day[order],
        amount_minor=amount_minor[order],
    )


def generate_days(world: World, config: SimConfig, first_day: int, last_day: int) -> Raw:
    """Days [first_day, last_day), concatenated in time order."""
    days = [generate_day(world, config, d) for d in range(first_day, last_day)]
    if not days:
        empty = np.zeros(0, dtype=np.int64)
        return Raw(empty, empty, empty, empty, empty, empty)
    return Raw(
        day=np.concatenate([d.day for d in days]),
        seq=np.concatenate([d.seq for d in days]),
        customer=np.concatenate([d.customer for d in days]),
        terminal=np.concatenate([d.terminal for d in days]),
        ms_in_day=np.concatenate([d.ms_in_day for d in days]),
        amount_minor=np.concatenate([d.amount_minor for d in days]),
    )

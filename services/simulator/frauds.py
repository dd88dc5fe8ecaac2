"""The handbook's three fraud scenarios, applied to generated transactions.

1. Any amount above 220 is fraud.
2. Each day 2 random terminals are compromised: all their transactions during the next 28 days
   are fraud.
3. Each day 3 random customers are compromised: during the next 14 days, a third of their
   transactions (drawn at random, a whole third of that window) get amount * 5 and are fraud.

The daily counts of scenarios 2 and 3 are the handbook's by default; `SimConfig` can raise them
with the world's size (`fraudctl bench train` does) to keep the handbook's fraud share.

Later scenarios override earlier ones, as in the handbook. The daily draws come from streams
keyed by (seed, day), so a compromise that started before a requested range still applies in
it. A transaction picked by two overlapping scenario-3 compromises is multiplied once, not twice.
"""

from __future__ import annotations

import numpy as np

from services.simulator.config import (
    S1_THRESHOLD,
    S2_DAYS,
    S2_TERMINALS_PER_DAY,
    S3_CUSTOMERS_PER_DAY,
    S3_DAYS,
    S3_MULTIPLIER,
    S3_SHARE_DIVISOR,
    SimConfig,
)
from services.simulator.transactions import Raw

STREAM_S2 = 20
STREAM_S3 = 30
STREAM_S3_PICK = 31


def compromised_terminals(
    seed: int, day: int, n_terminals: int, per_day: int = S2_TERMINALS_PER_DAY
) -> np.ndarray:
    rng = np.random.default_rng([seed, STREAM_S2, day])
    return rng.choice(n_terminals, per_day, replace=False)


def compromised_customers(
    seed: int, day: int, n_customers: int, per_day: int = S3_CUSTOMERS_PER_DAY
) -> np.ndarray:
    rng = np.random.default_rng([seed, STREAM_S3, day])
    return rng.choice(n_customers, per_day, replace=False)


def context_days(first_day: int, last_day: int) -> tuple[int, int]:
    """Days of transactions needed to label [first_day, last_day) exactly.

    A scenario-3 compromise picks a third of a 14-day window, so labelling a day needs the
    transactions of the compromises that reach it: from 13 days before to 13 days after.
    """
    return max(0, first_day - (S3_DAYS - 1)), last_day + S3_DAYS - 1


def label(
    raw: Raw, config: SimConfig, first_day: int, last_day: int
) -> tuple[np.ndarray, np.ndarray]:
    """(final amount_minor, fraud_scenario 0..3) for every row of `raw`.

    `raw` must cover `context_days(first_day, last_day)`; only rows inside
    [first_day, last_day) are labelled exactly (and only those get scenario 2).
    """
    seed, day, customer, terminal = config.seed, raw.day, raw.customer, raw.terminal
    n_terminals = config.n_terminals
    amount = raw.amount_minor.copy()
    scenario = np.zeros(len(amount), dtype=np.int64)
    scenario[amount > S1_THRESHOLD * config.minor_per_major] = 1

    span = last_day - first_day
    if span > 0:
        compromised = np.zeros((n_terminals, span), dtype=bool)
        for event_day in range(max(0, first_day - S2_DAYS + 1), last_day):
            lo = max(event_day, first_day) - first_day
            hi = min(event_day + S2_DAYS, last_day) - first_day
            hit = compromised_terminals(
                seed, event_day, n_terminals, config.terminals_compromised_per_day
            )
            compromised[hit, lo:hi] = True
        rows = np.flatnonzero((day >= first_day) & (day < last_day))
        scenario[rows[compromised[terminal[rows], day[rows] - first_day]]] = 2

    picked = _scenario3_rows(
        seed,
        day,
        raw.seq,
        customer,
        first_day,
        last_day,
        config.n_customers,
        config.customers_compromised_per_day,
    )
    amount[picked] *= S3_MULTIPLIER
    scenario[picked] = 3
    return amount, scenario


def _scenario3_rows(
    seed: int,
    day: np.ndarray,
    seq: np.ndarray,
    customer: np.ndarray,
    first_day: int,
    last_day: int,
    n_customers: int,
    per_day: int = S3_CUSTOMERS_PER_DAY,
) -> np.ndarray:
    picked = np.zeros(len(day), dtype=bool)
    # By customer, then time: one compromise window is a contiguous slice.
    order = np.lexsort((seq, day, customer))
    by_customer = customer[order]
    by_day = day[order]
    for event_day in range(max(0, first_day - S3_DAYS + 1), last_day):
        for victim in compromised_customers(seed, event_day, n_customers, per_day):
            c_lo = int(np.searchsorted(by_customer, victim, "left"))
            c_hi = int(np.searchsorted(by_customer, victim, "right"))
            days = by_day[c_lo:c_hi]
            lo = c_lo + int(np.searchsorted(days, event_day, "left"))
            hi = c_lo + int(np.searchsorted(days, event_day + S3_DAYS, "left"))
            k = (hi - lo) // S3_SHARE_DIVISOR
            if k == 0:
                continue
            rng = np.random.default_rng([seed, STREAM_S3_PICK, event_day, int(victim)])
            picked[order[lo + rng.choice(hi - lo, k, replace=False)]] = True
    return picked

"""The simulated population: customer and terminal profiles and which terminals each card uses.

Customers and terminals sit on the handbook's 100 x 100 grid; a customer only pays at terminals
within `radius` of home. Terminal attributes the handbook does not model (channel, merchant
category, country) are derived deterministically per terminal so every transaction carries the
full `Transaction` message.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from services.proto.fraudscore.v1 import transaction_pb2
from services.simulator.config import GRID, MEAN_AMOUNT_RANGE, MEAN_TX_PER_DAY_RANGE, SimConfig

# Separate random streams per purpose, so adding a draw to one never shifts another.
STREAM_CUSTOMERS = 0
STREAM_TERMINALS = 1
STREAM_TERMINAL_ATTRIBUTES = 2

#: Country by the terminal's x band on the grid: neighbours mostly share one, borders cross.
COUNTRIES: tuple[str, ...] = ("FR", "DE", "ES", "IT", "NL")
#: Merchant categories (ISO 18245) by kind of terminal.
CARD_PRESENT_MCCS: tuple[str, ...] = ("5411", "5812", "5541", "5912", "5311", "5651", "5999")
ECOMMERCE_MCCS: tuple[str, ...] = ("5732", "5942", "4722", "5815", "5964")
ATM_MCC = "6011"
#: Shares of card-present, e-commerce and ATM terminals.
CHANNEL_SHARES = (0.80, 0.15, 0.05)


@dataclass(frozen=True)
class World:
    """Profiles as column arrays, indexed by customer id and terminal id."""

    customer_x: np.ndarray
    customer_y: np.ndarray
    mean_amount: np.ndarray
    std_amount: np.ndarray
    mean_tx_per_day: np.ndarray
    terminal_x: np.ndarray
    terminal_y: np.ndarray
    #: CSR: customer c may use terminals neighbour_idx[neighbour_ptr[c]:neighbour_ptr[c + 1]].
    neighbour_ptr: np.ndarray
    neighbour_idx: np.ndarray
    terminal_channel: np.ndarray
    terminal_mcc: np.ndarray
    terminal_country: np.ndarray
    card_ids: np.ndarray
    terminal_ids: np.ndarray

    @property
    def n_customers(self) -> int:
        return len(self.customer_x)

    @property
    def n_terminals(self) -> int:
        return len(self.terminal_x)

    @property
    def n_neighbours(self) -> np.ndarray:
        return np.diff(self.neighbour_ptr)


def card_id(customer_id: int) -> str:
    return f"card-{customer_id:06d}"


def terminal_id(terminal: int) -> str:
    return f"term-{terminal:06d}"


def terminals_within_radius(
    customer_x: np.ndarray,
    customer_y: np.ndarray,
    terminal_x: np.ndarray,
    terminal_y: np.ndarray,
    radius: float,
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (ptr, idx) of the terminals strictly within `radius` of each customer, ids ascending.

    Customers and terminals are bucketed into square cells of side `radius`: a terminal within
    the radius lies in the customer's cell or one of its 8 neighbours, so each customer is
    compared with those cells' terminals only. Comparing every customer with every terminal
    took ~50 CPU minutes for the 243,000 customers of a 10M-transaction world. The distances
    are computed exactly as before, so the result is the same, bit for bit.
    """
    n = len(customer_x)
    ptr = np.zeros(n + 1, dtype=np.int64)
    if n == 0 or len(terminal_x) == 0:
        return ptr, np.zeros(0, dtype=np.int64)
    r2 = radius * radius
    x0 = min(float(customer_x.min()), float(terminal_x.min()))
    y0 = min(float(customer_y.min()), float(terminal_y.min()))

    def cells(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Shifted by one so that every neighbour of a cell has a non-negative index.
        return (
            np.floor((x - x0) / radius).astype(np.int64) + 1,
            np.floor((y - y0) / radius).astype(np.int64) + 1,
        )

    customer_cx, customer_cy = cells(customer_x, customer_y)
    terminal_cx, terminal_cy = cells(terminal_x, terminal_y)
    rows_per_column = int(max(customer_cy.max(), terminal_cy.max())) + 2
    terminal_key = terminal_cx * rows_per_column + terminal_cy
    # Stable: within a cell, terminals stay in ascending id order.
    terminal_order = np.argsort(terminal_key, kind="stable")
    terminal_sorted = terminal_key[terminal_order]
    customer_key = customer_cx * rows_per_column + customer_cy
    customer_order = np.argsort(customer_key, kind="stable")
    customer_sorted = customer_key[customer_order]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(customer_sorted)) + 1, [n]))
    neighbours = np.array(
        [dx * rows_per_column + dy for dx in (-1, 0, 1) for dy in (-1, 0, 1)], dtype=np.int64
    )
    pair_customers: list[np.ndarray] = []
    pair_terminals: list[np.ndarray] = []
    for lo, hi in itertools.pairwise(starts):
        keys = customer_sorted[lo] + neighbours
        first = np.searchsorted(terminal_sorted, keys, "left")
        last = np.searchsorted(terminal_sorted, keys, "right")
        candidates = np.sort(
            np.concatenate([terminal_order[a:b] for a, b in zip(first, last, strict=True)])
        )
        if not len(candidates):
            continue
        members = customer_order[lo:hi]
        dx = customer_x[members, None] - terminal_x[None, candidates]
        dy = customer_y[members, None] - terminal_y[None, candidates]
        rows, cols = np.nonzero(dx * dx + dy * dy < r2)
        pair_customers.append(members[rows])
        pair_terminals.append(candidates[cols])
    if not pair_customers:
        return ptr, np.zeros(0, dtype=np.int64)
    customers = np.concatenate(pair_customers)
    terminals = np.concatenate(pair_terminals)
    order = np.lexsort((terminals, customers))
    np.cumsum(np.bincount(customers, minlength=n), out=ptr[1:])
    return ptr, terminals[order].astype(np.int64)


def build_world(config: SimConfig) -> World:
    """Profiles for `config`; depends only on seed, population sizes and radius."""
    rng = np.random.default_rng([config.seed, STREAM_CUSTOMERS])
    n = config.n_customers
    customer_x = rng.uniform(0.0, GRID, n)
    customer_y = rng.uniform(0.0, GRID, n)
    mean_amount = rng.uniform(*MEAN_AMOUNT_RANGE, n)
    mean_tx_per_day = rng.uniform(*MEAN_TX_PER_DAY_RANGE, n)

    rng = np.random.default_rng([config.seed, STREAM_TERMINALS])
    terminal_x = rng.uniform(0.0, GRID, config.n_terminals)
    terminal_y = rng.uniform(0.0, GRID, config.n_terminals)

    ptr, idx = terminals_within_radius(
        customer_x, customer_y, terminal_x, terminal_y, config.radius
    )
    channel, mcc = _terminal_attributes(config)
    band = np.minimum((terminal_x // (GRID / len(COUNTRIES))).astype(np.int64), len(COUNTRIES) - 1)
    return World(
        customer_x=customer_x,
        customer_y=customer_y,
        mean_amount=mean_amount,
        std_amount=mean_amount / 2.0,
        mean_tx_per_day=mean_tx_per_day,
        terminal_x=terminal_x,
        terminal_y=terminal_y,
        neighbour_ptr=ptr,
        neighbour_idx=idx,
        terminal_channel=channel,
        terminal_mcc=mcc,
        terminal_country=np.array(COUNTRIES, dtype=object)[band],
        card_ids=np.array([card_id(c) for c in range(n)], dtype=object),
        terminal_ids=np.array([terminal_id(t) for t in range(config.n_terminals)], dtype=object),
    )


def _terminal_attributes(config: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([config.seed, STREAM_TERMINAL_ATTRIBUTES])
    n = config.n_terminals
    kind = rng.choice(len(CHANNEL_SHARES), size=n, p=CHANNEL_SHARES)
    pick = rng.integers(0, 1 << 30, size=n)
    channels = np.array(
        [
            transaction_pb2.CHANNEL_CARD_PRESENT,
            transaction_pb2.CHANNEL_ECOMMERCE,
            transaction_pb2.CHANNEL_ATM,
        ],
        dtype=np.int64,
    )[kind]
    present = np.array(CARD_PRESENT_MCCS, dtype=object)
    online = np.array(ECOMMERCE_MCCS, dtype=object)
    mcc = np.where(
        kind == 0,
        present[pick % len(present)],
        np.where(kind == 1, online[pick % len(online)], ATM_MCC),
    ).astype(object)
    return channels, mcc

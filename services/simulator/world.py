"""The simulated population: customer and terminal profiles and which terminals each card uses.

Customers and terminals sit on the handbook's 100 x 100 grid; a customer only pays at terminals
within `radius` of home. Terminal attributes the handbook does not model (channel, merchant
category, country) are derived deterministically per terminal so every transaction carries the
full `Transaction` message.
"""

from __future__ import annotations

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

# Customers per distance block: bounds the temporary block at ~chunk x n_terminals floats.
_RADIUS_CHUNK = 256


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
    """CSR (ptr, idx) of the terminals strictly within `radius` of each customer, ids ascending."""
    r2 = radius * radius
    counts = np.zeros(len(customer_x), dtype=np.int64)
    parts: list[np.ndarray] = []
    for lo in range(0, len(customer_x), _RADIUS_CHUNK):
        hi = min(lo + _RADIUS_CHUNK, len(customer_x))
        dx = customer_x[lo:hi, None] - terminal_x[None, :]
        dy = customer_y[lo:hi, None] - terminal_y[None, :]
        rows, cols = np.nonzero(dx * dx + dy * dy < r2)
        counts[lo:hi] = np.bincount(rows, minlength=hi - lo)
        parts.append(cols.astype(np.int64))
    ptr = np.zeros(len(customer_x) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    idx = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return ptr, idx


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

"""What to simulate (`SimConfig`) and the handbook's fixed design constants.

The constants reproduce the transaction simulator of the Fraud Detection Handbook
(Le Borgne et al., chapter 3 "Simulated dataset"); changing them changes the data's meaning,
so they are not configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.common import currency

DAY_MS = 86_400_000

#: Customers and terminals live on a GRID x GRID square.
GRID = 100.0
#: A customer's mean amount ~ U(5, 100); its std is half of it.
MEAN_AMOUNT_RANGE = (5.0, 100.0)
#: A customer's mean number of transactions per day ~ U(0, 4); the daily count is Poisson.
MEAN_TX_PER_DAY_RANGE = (0.0, 4.0)
#: Seconds in day ~ Normal(noon, 20000 s); draws outside the day are dropped, as the handbook does.
TIME_MEAN_S = 43_200.0
TIME_STD_S = 20_000.0

#: Scenario 1: any amount above this (major units) is fraud.
S1_THRESHOLD = 220.0
#: Scenario 2: each day this many terminals are compromised for the next S2_DAYS days.
S2_TERMINALS_PER_DAY = 2
S2_DAYS = 28
#: Scenario 3: each day this many customers are compromised for the next S3_DAYS days;
#: 1/S3_SHARE_DIVISOR of their transactions get amount * S3_MULTIPLIER and are fraud.
S3_CUSTOMERS_PER_DAY = 3
S3_DAYS = 14
S3_SHARE_DIVISOR = 3
S3_MULTIPLIER = 5


@dataclass(frozen=True)
class SimConfig:
    """The simulated world: its population, period and seed. Same seed, same world."""

    n_customers: int = 5000
    n_terminals: int = 10000
    n_days: int = 183
    start: datetime = field(default_factory=lambda: datetime(2026, 4, 1, tzinfo=UTC))
    radius: float = 5.0
    seed: int = 0
    currency: str = "EUR"
    #: Scenario 2's terminals compromised per day. The handbook's 2 suit its 10,000 terminals;
    #: a bigger world needs proportionally more to keep the handbook's fraud share (with 2 a
    #: day, a million-transaction world held a few hundred frauds). Change it for scale runs
    #: only: the default is the handbook's world.
    terminals_compromised_per_day: int = S2_TERMINALS_PER_DAY
    #: Scenario 3's customers compromised per day (the handbook's 3 for 5,000 customers).
    customers_compromised_per_day: int = S3_CUSTOMERS_PER_DAY

    def __post_init__(self) -> None:
        if self.terminals_compromised_per_day < 0 or self.customers_compromised_per_day < 0:
            raise ValueError("compromised terminals / customers per day must be >= 0")
        # The fraud scenarios draw their customers and terminals a day without replacement.
        if self.n_customers < max(1, self.customers_compromised_per_day):
            raise ValueError(f"n_customers must be >= {max(1, self.customers_compromised_per_day)}")
        if self.n_terminals < max(1, self.terminals_compromised_per_day):
            raise ValueError(f"n_terminals must be >= {max(1, self.terminals_compromised_per_day)}")
        if self.n_days < 0:
            raise ValueError("n_days must be >= 0")
        if self.radius <= 0:
            raise ValueError("radius must be positive")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if not currency.is_known(self.currency):
            raise ValueError(f"unknown currency {self.currency!r}")
        if self.start.tzinfo is None:
            # A naive start is read as UTC rather than the host's zone, so runs agree everywhere.
            object.__setattr__(self, "start", self.start.replace(tzinfo=UTC))

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def minor_per_major(self) -> int:
        return currency.to_minor(1.0, self.currency)

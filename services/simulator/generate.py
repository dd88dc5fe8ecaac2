"""Simulated card transactions after the Fraud Detection Handbook's simulator.

`simulate(config)` is the handbook's labelled transaction table for days [0, n_days) from
`config.start`, as a DataFrame with the `Transaction` message's fields plus the label. Any day
range is reproducible on its own (`simulate_days`), so history and "live" traffic come from the
same world: `simulate_live` / `live_batches` continue after the history with the same cards and
terminals and map simulated time onto the wall clock.

Design and fraud scenarios: see `transactions`, `frauds` and `labels`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from services.simulator import frauds, transactions
from services.simulator.config import DAY_MS, TIME_MEAN_S, TIME_STD_S, SimConfig
from services.simulator.labels import LABEL_COLUMNS, labels_for
from services.simulator.world import World, build_world

__all__ = [
    "COLUMNS",
    "LABEL_COLUMNS",
    "LiveClock",
    "SimConfig",
    "Simulator",
    "labels_for",
    "labels_path",
    "live_batches",
    "live_clock",
    "read_parquet",
    "simulate",
    "simulate_days",
    "simulate_live",
    "write_parquet",
]

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "card_id",
    "terminal_id",
    "amount_minor",
    "currency",
    "event_ms",
    "channel",
    "merchant_category_code",
    "country",
    "is_fraud",
    "fraud_scenario",
)


class Simulator:
    """One simulated world (profiles built once) that generates any range of days."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.world: World = build_world(config)

    def days(self, first_day: int, last_day: int) -> pd.DataFrame:
        """Labelled transactions of days [first_day, last_day), in event-time order."""
        if first_day < 0 or last_day < first_day:
            raise ValueError(f"bad day range [{first_day}, {last_day})")
        context_lo, context_hi = frauds.context_days(first_day, last_day)
        raw = transactions.generate_days(self.world, self.config, context_lo, context_hi)
        amount, scenario = frauds.label(raw, self.config, first_day, last_day)
        rows = np.flatnonzero((raw.day >= first_day) & (raw.day < last_day))
        return self._frame(raw.take(rows), amount[rows], scenario[rows])

    def empty(self) -> pd.DataFrame:
        none = np.zeros(0, dtype=np.int64)
        return self._frame(transactions.Raw(none, none, none, none, none, none), none, none)

    def expected_events_per_day(self) -> float:
        """Mean transactions per simulated day (for pacing live traffic)."""
        active = self.world.n_neighbours > 0
        in_day = 0.5 * (
            math.erf(TIME_MEAN_S / (TIME_STD_S * math.sqrt(2)))
            - math.erf(-(86_400 - TIME_MEAN_S) / (TIME_STD_S * math.sqrt(2)))
        )
        return float(self.world.mean_tx_per_day[active].sum()) * in_day

    def _frame(
        self, raw: transactions.Raw, amount_minor: np.ndarray, scenario: np.ndarray
    ) -> pd.DataFrame:
        world, seed = self.world, self.config.seed
        pairs = zip(raw.day.tolist(), raw.seq.tolist(), strict=True)
        ids = [f"tx-{seed}-{d:05d}-{s:06d}" for d, s in pairs]
        return pd.DataFrame(
            {
                "transaction_id": pd.Series(ids, dtype=object),
                "card_id": world.card_ids[raw.customer],
                "terminal_id": world.terminal_ids[raw.terminal],
                "amount_minor": amount_minor.astype(np.int64),
                "currency": np.full(len(raw), self.config.currency, dtype=object),
                "event_ms": self.config.start_ms + raw.day * DAY_MS + raw.ms_in_day,
                "channel": world.terminal_channel[raw.terminal].astype(np.int64),
                "merchant_category_code": world.terminal_mcc[raw.terminal],
                "country": world.terminal_country[raw.terminal],
                "is_fraud": scenario > 0,
                "fraud_scenario": scenario.astype(np.int64),
            },
            columns=list(COLUMNS),
        )


def simulate(config: SimConfig) -> pd.DataFrame:
    """The handbook's labelled transaction table for days [0, config.n_days)."""
    return simulate_days(config, 0, config.n_days)


def simulate_days(config: SimConfig, first_day: int, last_day: int) -> pd.DataFrame:
    """Days [first_day, last_day) counted from config.start; equal to slicing a longer run."""
    started = time.perf_counter()
    df = Simulator(config).days(first_day, last_day)
    log.debug(
        "simulated days [%s, %s): %s transactions in %.2fs",
        first_day,
        last_day,
        len(df),
        time.perf_counter() - started,
    )
    return df


@dataclass(frozen=True)
class LiveClock:
    """Maps wall-clock ms to simulated ms: sim = sim_anchor + (wall - wall_anchor) * speedup.

    A speedup above 1 replays more simulated time per wall second (denser traffic); note that it
    also compresses per-card velocities (a card's hourly count grows by the same factor).
    """

    wall_anchor_ms: int
    sim_anchor_ms: int
    speedup: float = 1.0

    def to_sim(self, wall_ms: int) -> int:
        return self.sim_anchor_ms + math.floor((wall_ms - self.wall_anchor_ms) * self.speedup)

    def to_wall(self, sim_ms: np.ndarray) -> np.ndarray:
        offset = np.floor((sim_ms - self.sim_anchor_ms) / self.speedup).astype(np.int64)
        return self.wall_anchor_ms + offset


def live_clock(
    config: SimConfig, now_ms: int, *, speedup: float = 1.0, first_day: int | None = None
) -> LiveClock:
    """A clock on which wall time `now_ms` falls on simulated day `first_day` (default: the day
    after the history), at the same time of day relative to config.start. With `start` set to
    `now - n_days` (as a demo that simulated its history up to now does), sim time == wall time.
    """
    if speedup <= 0:
        raise ValueError("speedup must be positive")
    day = config.n_days if first_day is None else first_day
    phase = (now_ms - config.start_ms) % DAY_MS
    return LiveClock(now_ms, config.start_ms + day * DAY_MS + phase, speedup)


class _LiveSource:
    """Windows of live traffic for one clock, generating each simulated day once."""

    def __init__(self, simulator: Simulator, clock: LiveClock) -> None:
        self.simulator = simulator
        self.clock = clock
        self._days: dict[int, pd.DataFrame] = {}

    def window(self, t0_ms: int, t1_ms: int) -> pd.DataFrame:
        config = self.simulator.config
        s0, s1 = self.clock.to_sim(t0_ms), self.clock.to_sim(t1_ms)
        first = max(0, (s0 - config.start_ms) // DAY_MS)
        last = max(first, -((config.start_ms - s1) // DAY_MS))  # ceil division
        for stale in [d for d in self._days if d < first]:
            del self._days[stale]
        parts = [self._day(d) for d in range(first, last)]
        if not parts:
            return self.simulator.empty()
        df = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        event_ms = df["event_ms"].to_numpy()
        df = df.loc[(event_ms >= s0) & (event_ms < s1)].reset_index(drop=True)
        # Clipped: rounding at the edges must not push an event outside the window it belongs to.
        wall = np.clip(self.clock.to_wall(df["event_ms"].to_numpy()), t0_ms, max(t0_ms, t1_ms - 1))
        df["event_ms"] = wall.astype(np.int64)
        return df

    def _day(self, day: int) -> pd.DataFrame:
        if day not in self._days:
            self._days[day] = self.simulator.days(day, day + 1)
        return self._days[day]


def simulate_live(
    config: SimConfig,
    t0_ms: int,
    t1_ms: int,
    clock: LiveClock | None = None,
) -> pd.DataFrame:
    """Transactions with wall-clock event times in [t0_ms, t1_ms), continuing the history.

    `clock` defaults to `live_clock(config, t0_ms)`: the window starts on the first day after
    the history, same cards and terminals, event times re-based onto the wall clock. Transaction
    ids are those of the simulated day, so asking for the same window twice gives the same ids.
    """
    clock = clock or live_clock(config, t0_ms)
    return _LiveSource(Simulator(config), clock).window(t0_ms, t1_ms)


def live_batches(
    config: SimConfig,
    batch_seconds: float = 5.0,
    *,
    speedup: float = 1.0,
    events_per_s: float | None = None,
    start_ms: int | None = None,
    first_day: int | None = None,
    now: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[pd.DataFrame]:
    """Endless live traffic: one DataFrame per `batch_seconds` of wall time, yielded once that
    time has passed, so every event is already in the past when it is handed out.

    `events_per_s` sets the speedup so the stream averages that many events per second (the
    world's natural rate is ~2 transactions per card per day, far too sparse for a demo).
    """
    if batch_seconds <= 0:
        raise ValueError("batch_seconds must be positive")
    simulator = Simulator(config)
    if events_per_s is not None:
        speedup = events_per_s * 86_400 / max(simulator.expected_events_per_day(), 1e-9)
    t0 = int(now() * 1000) if start_ms is None else start_ms
    source = _LiveSource(simulator, live_clock(config, t0, speedup=speedup, first_day=first_day))
    log.info("live traffic from %s at %.1fx simulated speed", t0, speedup)
    step = max(1, round(batch_seconds * 1000))
    while True:
        t1 = t0 + step
        wait_s = t1 / 1000 - now()
        if wait_s > 0:
            sleep(wait_s)
        yield source.window(t0, t1)
        t0 = t1


def labels_path(transactions_path: Path) -> Path:
    """Where the labels of a transactions parquet go: `x.parquet` -> `x.labels.parquet`."""
    return transactions_path.with_name(f"{transactions_path.stem}.labels{transactions_path.suffix}")


def write_parquet(df: pd.DataFrame, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False, engine="pyarrow")
    return path


def read_parquet(path: Path | str) -> pd.DataFrame:
    return pd.read_parquet(Path(path), engine="pyarrow")

"""Feature logic, defined once: the stream, the training backfill and the scorer all call it.

A card's history is kept as *tiles*: per time bucket (minute, hour, day) a transaction count and
an amount sum. The stream folds each transaction into the tiles (`apply_transaction`); whoever
reads features finishes each window at *read time* (`card_features(state, now_ms)`), so a card
idle for a day shows a 1 h count of 0, not yesterday's. Windows are tile-aligned: the 1 h window
at time t holds the minute tiles (k-59 .. k] where k is t's minute; that is exact and identical
everywhere, which is what keeps training and serving free of skew.

The state is stored in Feast (online: the latest per card; offline: one row per transaction,
the state *after* that transaction, stamped with its event time). A transaction's features are
read from the state before it, so its own amount never leaks into its aggregates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class TileSpec:
    """Buckets of `seconds` each, `keep` of them retained behind the newest event."""

    name: str
    seconds: int
    keep: int

    @property
    def ms(self) -> int:
        return self.seconds * 1000


@dataclass(frozen=True)
class Window:
    name: str
    seconds: int
    tiles: TileSpec

    @property
    def n_tiles(self) -> int:
        return self.seconds // self.tiles.seconds


MINUTE = TileSpec("m", 60, 60)
HOUR = TileSpec("h", 3600, 24)
DAY = TileSpec("d", 86400, 31)
TILE_SPECS: tuple[TileSpec, ...] = (MINUTE, HOUR, DAY)

CARD_WINDOWS: tuple[Window, ...] = (
    Window("1h", 3600, MINUTE),
    Window("24h", 86400, HOUR),
)

#: Transaction-intrinsic inputs (from the request itself, no history).
TRANSACTION_FEATURES: tuple[str, ...] = ("amount", "hour_of_day", "is_weekend", "is_night")

#: History aggregates read from the feature store, finished at read time.
CARD_FEATURES: tuple[str, ...] = (
    *(f"card_{stat}_{w.name}" for w in CARD_WINDOWS for stat in ("count", "amount_sum")),
    "card_seconds_since_last",
)

#: The model's input, in order. A model artifact records this list; the scorer checks it.
FEATURE_NAMES: tuple[str, ...] = (*TRANSACTION_FEATURES, *CARD_FEATURES)

#: Readable names for reason codes.
FEATURE_DESCRIPTIONS: dict[str, str] = {
    "amount": "transaction amount",
    "hour_of_day": "hour of day (UTC)",
    "is_weekend": "weekend transaction",
    "is_night": "night-time transaction (00:00-06:00 UTC)",
    "card_count_1h": "card transactions in the last hour",
    "card_amount_sum_1h": "card spend in the last hour",
    "card_count_24h": "card transactions in the last 24 hours",
    "card_amount_sum_24h": "card spend in the last 24 hours",
    "card_seconds_since_last": "time since the card's previous transaction",
}


class Outcome(Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"


@dataclass
class CardState:
    """Everything the stream keeps per card. Persisted as one Feast row (see `to_row`)."""

    last_event_ms: int = 0
    #: tile spec name -> tile index -> [count, amount sum]
    tiles: dict[str, dict[int, list[float]]] = field(
        default_factory=lambda: {spec.name: {} for spec in TILE_SPECS}
    )
    #: transaction_id -> event_ms of transactions inside the lateness horizon, for dedup.
    recent: dict[str, int] = field(default_factory=dict)

    def copy(self) -> CardState:
        return CardState(
            last_event_ms=self.last_event_ms,
            tiles={name: {k: list(v) for k, v in t.items()} for name, t in self.tiles.items()},
            recent=dict(self.recent),
        )


def apply_transaction(
    state: CardState,
    transaction_id: str,
    event_ms: int,
    amount: float,
    allowed_lateness_ms: int,
) -> Outcome:
    """Fold one transaction into `state` in place, exactly once.

    A transaction seen before (same id, inside the lateness horizon) is a DUPLICATE. One older
    than the card's newest event by more than the allowed lateness is LATE and not counted: it
    cannot be told apart from a redelivery whose id was already forgotten, and counting it would
    rewrite history the scorer has already served.
    """
    if transaction_id in state.recent:
        return Outcome.DUPLICATE
    if state.last_event_ms and event_ms < state.last_event_ms - allowed_lateness_ms:
        return Outcome.LATE
    for spec in TILE_SPECS:
        tile = state.tiles[spec.name].setdefault(event_ms // spec.ms, [0, 0.0])
        tile[0] += 1
        tile[1] += amount
    state.recent[transaction_id] = event_ms
    if event_ms > state.last_event_ms:
        state.last_event_ms = event_ms
        _prune(state, allowed_lateness_ms)
    return Outcome.APPLIED


def _prune(state: CardState, allowed_lateness_ms: int) -> None:
    horizon = state.last_event_ms - allowed_lateness_ms
    state.recent = {tid: ms for tid, ms in state.recent.items() if ms >= horizon}
    for spec in TILE_SPECS:
        oldest = state.last_event_ms // spec.ms - spec.keep
        tiles = state.tiles[spec.name]
        for idx in [i for i in tiles if i <= oldest]:
            del tiles[idx]


def card_features(state: CardState | None, now_ms: int) -> dict[str, float]:
    """The card's history features as of `now_ms`, finishing every window at read time."""
    out: dict[str, float] = {}
    for window in CARD_WINDOWS:
        count = 0.0
        total = 0.0
        if state is not None:
            current = now_ms // window.tiles.ms
            first = current - window.n_tiles
            for idx, (cnt, amt) in sorted(state.tiles[window.tiles.name].items()):
                if first < idx <= current:
                    count += cnt
                    total += amt
        out[f"card_count_{window.name}"] = count
        out[f"card_amount_sum_{window.name}"] = round(total, 6)
    if state is None or not state.last_event_ms:
        out["card_seconds_since_last"] = math.nan
    else:
        out["card_seconds_since_last"] = max(0.0, (now_ms - state.last_event_ms) / 1000.0)
    return out


def transaction_features(amount: float, event_ms: int) -> dict[str, float]:
    when = datetime.fromtimestamp(event_ms / 1000.0, tz=UTC)
    return {
        "amount": amount,
        "hour_of_day": float(when.hour),
        "is_weekend": float(when.weekday() >= 5),
        "is_night": float(when.hour < 6),
    }


def feature_vector(features: Mapping[str, float]) -> list[float]:
    """Order a feature mapping as the model expects it."""
    return [float(features[name]) for name in FEATURE_NAMES]


def all_features(state: CardState | None, amount: float, event_ms: int) -> dict[str, float]:
    """The full model input for a transaction, given the card state before it."""
    return {**transaction_features(amount, event_ms), **card_features(state, event_ms)}


# --- Persistence: one Feast row per card state ------------------------------------------

#: Columns of the `card_state` feature view, in the order `to_row` writes them.
STATE_COLUMNS: tuple[str, ...] = (
    "last_event_ms",
    *(f"{spec.name}_{part}" for spec in TILE_SPECS for part in ("idx", "cnt", "amt")),
    "recent_ids",
    "recent_ms",
)


def to_row(state: CardState) -> dict[str, Any]:
    row: dict[str, Any] = {"last_event_ms": state.last_event_ms}
    for spec in TILE_SPECS:
        items = sorted(state.tiles[spec.name].items())
        row[f"{spec.name}_idx"] = [idx for idx, _ in items]
        row[f"{spec.name}_cnt"] = [int(v[0]) for _, v in items]
        row[f"{spec.name}_amt"] = [float(v[1]) for _, v in items]
    recent = sorted(state.recent.items())
    row["recent_ids"] = [tid for tid, _ in recent]
    row["recent_ms"] = [ms for _, ms in recent]
    return row


def from_row(row: Mapping[str, Any]) -> CardState | None:
    """Inverse of `to_row`; None when the store has no state for the card."""
    last = row.get("last_event_ms")
    if last is None or (isinstance(last, float) and math.isnan(last)):
        return None
    state = CardState(last_event_ms=int(last))
    for spec in TILE_SPECS:
        idx = _seq(row.get(f"{spec.name}_idx"))
        cnt = _seq(row.get(f"{spec.name}_cnt"))
        amt = _seq(row.get(f"{spec.name}_amt"))
        state.tiles[spec.name] = {
            int(i): [float(c), float(a)] for i, c, a in zip(idx, cnt, amt, strict=True)
        }
    ids = _seq(row.get("recent_ids"))
    ms = _seq(row.get("recent_ms"))
    state.recent = {str(t): int(m) for t, m in zip(ids, ms, strict=True)}
    return state


def _seq(value: Any) -> Sequence[Any]:
    if value is None:
        return ()
    if isinstance(value, float) and math.isnan(value):
        return ()
    return list(value)

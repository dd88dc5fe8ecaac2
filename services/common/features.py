"""Feature logic, defined once: the stream, the training backfill and the scorer all call it.

Two entities keep history as *tiles*, per time bucket (minute, hour, day):

* a **card**: transaction count, amount sum and amount sum of squares per tile, plus per hour
  tile the (bounded) set of terminals it paid at;
* a **terminal** (merchant): transaction count and labelled frauds per hour and day tile.

The stream folds events into the tiles (`apply_transaction`, `apply_terminal_transaction`,
`apply_terminal_label`); whoever reads features finishes each window at *read time*
(`card_features(state, now_ms)`, `terminal_features(state, now_ms)`), so a card idle for a day
shows a 1 h count of 0, not yesterday's. Windows are tile-aligned: the 1 h window at time t holds
the minute tiles (k-59 .. k] where k is t's minute; that is exact and identical everywhere, which
is what keeps training and serving free of skew.

The states are stored in Feast (online: the latest per key; offline: one row per change, stamped
with the time of the event that made it). A transaction's features are read from the states
before it, so its own amount and its own label never leak into its aggregates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from operator import itemgetter
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
#: Days after which most fraud labels of a transaction have arrived (the handbook's delay
#: period; the simulator's chargebacks: median ~8 days). Terminal risk over transactions at least
#: this old is not diluted by the recent ones whose labels are still on their way.
LABEL_DELAY_DAYS = 7
#: Terminal day tiles reach back over the delayed 30-day window, (t - 37 d, t - 7 d], plus the
#: current day.
TERMINAL_DAY = TileSpec("d", 86400, LABEL_DELAY_DAYS + 30 + 1)
#: Terminals need no minute resolution: their shortest window is a day.
TERMINAL_TILE_SPECS: tuple[TileSpec, ...] = (HOUR, TERMINAL_DAY)

CARD_WINDOWS: tuple[Window, ...] = (
    Window("10m", 600, MINUTE),
    Window("1h", 3600, MINUTE),
    Window("24h", 86400, HOUR),
    Window("7d", 7 * 86400, DAY),
    Window("30d", 30 * 86400, DAY),
)
#: The window of the amount z-score (mean and spread of the card's spend).
ZSCORE_WINDOW = CARD_WINDOWS[-1]
#: The window of the distinct-terminals count (hour tiles hold the terminal sets).
TERMINALS_WINDOW = CARD_WINDOWS[2]
#: Terminal ids remembered per card hour tile. A card paying at more terminals in one hour than
#: this is a lower bound, which is still a loud signal; unbounded sets would let one runaway
#: card blow up its Redis row.
MAX_TERMINALS_PER_TILE = 32

TERMINAL_WINDOWS: tuple[Window, ...] = (
    Window("1d", 86400, HOUR),
    Window("7d", 7 * 86400, TERMINAL_DAY),
    Window("30d", 30 * 86400, TERMINAL_DAY),
)
#: Windows ending LABEL_DELAY_DAYS before the read: (t - delay - w, t - delay] in day tiles.
DELAYED_TERMINAL_WINDOWS: tuple[Window, ...] = (
    Window("1d", 86400, TERMINAL_DAY),
    Window("7d", 7 * 86400, TERMINAL_DAY),
    Window("30d", 30 * 86400, TERMINAL_DAY),
)
#: The window in which the terminal's first and latest known frauds are looked for (a
#: compromised terminal stays compromised for weeks, so how long ago its frauds started matters).
FRAUD_RECENCY_WINDOW = TERMINAL_WINDOWS[-1]
#: Card windows whose mean amount the transaction's amount is compared with.
AMOUNT_RATIO_WINDOWS: tuple[Window, ...] = CARD_WINDOWS[2:]
#: Card windows of the amounts' coefficient of variation: a card whose spend mixes its usual
#: amounts with much larger ones (a compromised card) spreads far more than its usual ~0.5.
AMOUNT_CV_WINDOWS: tuple[Window, ...] = CARD_WINDOWS[3:]

#: Transaction-intrinsic inputs (from the request itself, no history).
TRANSACTION_FEATURES: tuple[str, ...] = ("amount", "hour_of_day", "is_weekend", "is_night")

#: Card history aggregates read from the feature store, finished at read time.
CARD_FEATURES: tuple[str, ...] = (
    *(f"card_{stat}_{w.name}" for w in CARD_WINDOWS for stat in ("count", "amount_sum")),
    "card_seconds_since_last",
    *(f"card_amount_mean_{w.name}" for w in CARD_WINDOWS),
    f"card_distinct_terminals_{TERMINALS_WINDOW.name}",
    f"card_amount_zscore_{ZSCORE_WINDOW.name}",
    *(f"card_amount_ratio_{w.name}" for w in AMOUNT_RATIO_WINDOWS),
    *(f"card_amount_cv_{w.name}" for w in AMOUNT_CV_WINDOWS),
)

#: Terminal (merchant) history: volume, and risk from labels known at read time.
TERMINAL_FEATURES: tuple[str, ...] = (
    *(f"terminal_{stat}_{w.name}" for w in TERMINAL_WINDOWS for stat in ("count", "risk")),
    *(f"terminal_known_frauds_{w.name}" for w in TERMINAL_WINDOWS),
    *(
        f"terminal_delayed_{stat}_{w.name}"
        for w in DELAYED_TERMINAL_WINDOWS
        for stat in ("count", "risk")
    ),
    "terminal_days_since_last_fraud",
    "terminal_days_since_first_fraud",
)

#: The model's input, in order. A model artifact records this list; the scorer checks it.
FEATURE_NAMES: tuple[str, ...] = (*TRANSACTION_FEATURES, *CARD_FEATURES, *TERMINAL_FEATURES)

_WINDOW_WORDS = {
    "10m": "10 minutes",
    "1h": "hour",
    "24h": "24 hours",
    "1d": "day",
    "7d": "7 days",
    "30d": "30 days",
}

#: Readable names for reason codes.
FEATURE_DESCRIPTIONS: dict[str, str] = {
    "amount": "transaction amount",
    "hour_of_day": "hour of day (UTC)",
    "is_weekend": "weekend transaction",
    "is_night": "night-time transaction (00:00-06:00 UTC)",
    **{
        f"card_count_{w.name}": f"card transactions in the last {_WINDOW_WORDS[w.name]}"
        for w in CARD_WINDOWS
    },
    **{
        f"card_amount_sum_{w.name}": f"card spend in the last {_WINDOW_WORDS[w.name]}"
        for w in CARD_WINDOWS
    },
    **{
        f"card_amount_mean_{w.name}": f"card's mean amount in the last {_WINDOW_WORDS[w.name]}"
        for w in CARD_WINDOWS
    },
    "card_seconds_since_last": "time since the card's previous transaction",
    "card_distinct_terminals_24h": "distinct terminals the card paid at in the last 24 hours",
    "card_amount_zscore_30d": "amount unusual for the card (deviation from its 30-day mean)",
    **{
        f"card_amount_ratio_{w.name}": (
            f"amount relative to the card's mean amount in the last {_WINDOW_WORDS[w.name]}"
        )
        for w in AMOUNT_RATIO_WINDOWS
    },
    **{
        f"card_amount_cv_{w.name}": (
            f"spread of the card's amounts in the last {_WINDOW_WORDS[w.name]} "
            "(standard deviation / mean)"
        )
        for w in AMOUNT_CV_WINDOWS
    },
    **{
        f"terminal_count_{w.name}": f"terminal transactions in the last {_WINDOW_WORDS[w.name]}"
        for w in TERMINAL_WINDOWS
    },
    **{
        f"terminal_risk_{w.name}": (
            f"terminal's known fraud share in the last {_WINDOW_WORDS[w.name]}"
        )
        for w in TERMINAL_WINDOWS
    },
    **{
        f"terminal_known_frauds_{w.name}": (
            f"known frauds at the terminal in the last {_WINDOW_WORDS[w.name]}"
        )
        for w in TERMINAL_WINDOWS
    },
    **{
        f"terminal_delayed_count_{w.name}": (
            f"terminal transactions in the {_WINDOW_WORDS[w.name]} ending "
            f"{LABEL_DELAY_DAYS} days ago"
        )
        for w in DELAYED_TERMINAL_WINDOWS
    },
    **{
        f"terminal_delayed_risk_{w.name}": (
            f"terminal's known fraud share in the {_WINDOW_WORDS[w.name]} ending "
            f"{LABEL_DELAY_DAYS} days ago"
        )
        for w in DELAYED_TERMINAL_WINDOWS
    },
    "terminal_days_since_last_fraud": "days since the terminal's latest known fraud",
    "terminal_days_since_first_fraud": (
        "days since the terminal's first known fraud of the last 30 days"
    ),
}


class Outcome(Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"
    #: A label that changes nothing (not a fraud).
    IGNORED = "ignored"


def _empty_tiles(specs: Sequence[TileSpec]) -> dict[str, dict[int, list[float]]]:
    return {spec.name: {} for spec in specs}


def _copy_lists(by_key: Mapping[int, list[Any]]) -> dict[int, list[Any]]:
    # zip/map run in C: the stream copies every touched card's tiles once per batch.
    return dict(zip(by_key, map(list, by_key.values()), strict=True))


@dataclass
class CardState:
    """Everything the stream keeps per card. Persisted as one Feast row (see `to_row`)."""

    last_event_ms: int = 0
    #: tile spec name -> tile index -> [count, amount sum, amount sum of squares]
    tiles: dict[str, dict[int, list[float]]] = field(
        default_factory=lambda: _empty_tiles(TILE_SPECS)
    )
    #: hour tile index -> terminal ids seen in it (first MAX_TERMINALS_PER_TILE, in order).
    terminals: dict[int, list[str]] = field(default_factory=dict)
    #: transaction_id -> event_ms of transactions inside the lateness horizon, for dedup.
    recent: dict[str, int] = field(default_factory=dict)

    def copy(self) -> CardState:
        """An independent state. Shallow: `apply_transaction` replaces a tile's list instead of
        changing it, so sharing the lists is safe, and the stream copies every touched card once
        per batch (copying each list was a third of its fold)."""
        return CardState(
            last_event_ms=self.last_event_ms,
            tiles={name: dict(t) for name, t in self.tiles.items()},
            terminals=dict(self.terminals),
            recent=dict(self.recent),
        )


@dataclass
class TerminalState:
    """Everything the stream keeps per terminal. Persisted as one Feast row (`terminal_to_row`)."""

    #: Newest transaction event time (labels do not move it).
    last_event_ms: int = 0
    #: tile spec name -> tile index -> [transactions, labelled frauds among them]
    tiles: dict[str, dict[int, list[float]]] = field(
        default_factory=lambda: _empty_tiles(TERMINAL_TILE_SPECS)
    )
    #: transaction_id -> event_ms of transactions inside the lateness horizon, for dedup.
    recent: dict[str, int] = field(default_factory=dict)
    #: transaction_id -> transaction time of every fraud counted in a retained tile: a label is
    #: counted exactly once however often it is redelivered.
    frauds: dict[str, int] = field(default_factory=dict)

    def copy(self) -> TerminalState:
        return TerminalState(
            last_event_ms=self.last_event_ms,
            tiles={name: _copy_lists(t) for name, t in self.tiles.items()},
            recent=dict(self.recent),
            frauds=dict(self.frauds),
        )


def apply_transaction(
    state: CardState,
    transaction_id: str,
    event_ms: int,
    amount: float,
    allowed_lateness_ms: int,
    terminal_id: str | None = None,
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
    # New lists, never changes in place: copies of the state share the old ones (`copy`).
    square = amount * amount
    for spec in TILE_SPECS:
        by_idx = state.tiles[spec.name]
        idx = event_ms // spec.ms
        tile = by_idx.get(idx)
        if tile is None:
            # 0.0 + x: the sums are floats even for integer amounts, as they always were.
            by_idx[idx] = [1, 0.0 + amount, 0.0 + square]
        else:
            by_idx[idx] = [tile[0] + 1, tile[1] + amount, tile[2] + square]
    if terminal_id:
        hour = event_ms // HOUR.ms
        seen = state.terminals.get(hour)
        if seen is None:
            state.terminals[hour] = [terminal_id]
        elif terminal_id not in seen and len(seen) < MAX_TERMINALS_PER_TILE:
            state.terminals[hour] = [*seen, terminal_id]
    state.recent[transaction_id] = event_ms
    if event_ms > state.last_event_ms:
        state.last_event_ms = event_ms
        _prune(state, allowed_lateness_ms)
    return Outcome.APPLIED


def _prune_tiles(
    tiles: dict[str, dict[int, list[float]]], specs: Sequence[TileSpec], last_ms: int
) -> None:
    for spec in specs:
        oldest = last_ms // spec.ms - spec.keep
        by_idx = tiles[spec.name]
        # Most events expire nothing: a min() in C is cheaper than scanning in Python.
        if by_idx and min(by_idx) <= oldest:
            for idx in [i for i in by_idx if i <= oldest]:
                del by_idx[idx]


def _expire_ids(id_times: dict[str, int], horizon: int) -> dict[str, int]:
    """The ids at or after `horizon` (the same dict when none is older)."""
    if id_times and min(id_times.values()) < horizon:
        return {tid: ms for tid, ms in id_times.items() if ms >= horizon}
    return id_times


def _prune(state: CardState, allowed_lateness_ms: int) -> None:
    state.recent = _expire_ids(state.recent, state.last_event_ms - allowed_lateness_ms)
    _prune_tiles(state.tiles, TILE_SPECS, state.last_event_ms)
    oldest_hour = state.last_event_ms // HOUR.ms - HOUR.keep
    if state.terminals and min(state.terminals) <= oldest_hour:
        for idx in [i for i in state.terminals if i <= oldest_hour]:
            del state.terminals[idx]


def apply_terminal_transaction(
    state: TerminalState, transaction_id: str, event_ms: int, allowed_lateness_ms: int
) -> Outcome:
    """Count one transaction at the terminal, exactly once (same rules as a card's)."""
    if transaction_id in state.recent:
        return Outcome.DUPLICATE
    if state.last_event_ms and event_ms < state.last_event_ms - allowed_lateness_ms:
        return Outcome.LATE
    for spec in TERMINAL_TILE_SPECS:
        tile = state.tiles[spec.name].setdefault(event_ms // spec.ms, [0, 0])
        tile[0] += 1
    state.recent[transaction_id] = event_ms
    if event_ms > state.last_event_ms:
        state.last_event_ms = event_ms
        state.recent = _expire_ids(state.recent, event_ms - allowed_lateness_ms)
        _prune_tiles(state.tiles, TERMINAL_TILE_SPECS, event_ms)
        # Kept: ms // day > oldest_day, i.e. ms >= (oldest_day + 1) * day.
        oldest_day = event_ms // TERMINAL_DAY.ms - TERMINAL_DAY.keep
        state.frauds = _expire_ids(state.frauds, (oldest_day + 1) * TERMINAL_DAY.ms)
    return Outcome.APPLIED


def apply_terminal_label(
    state: TerminalState, transaction_id: str, transaction_ms: int, is_fraud: bool
) -> Outcome:
    """Count a fraud label when it *arrives*, in the tiles of its transaction's time.

    From then on the windows holding that transaction count it as a fraud; before, they did
    not, which is what the scorer knew. A repeated label for the same transaction is a
    DUPLICATE; one whose transaction lies before every retained day tile is LATE (no window can
    hold it any more). A not-fraud label changes nothing (IGNORED).
    """
    if not is_fraud:
        return Outcome.IGNORED
    if transaction_id in state.frauds:
        return Outcome.DUPLICATE
    last_day = state.last_event_ms // TERMINAL_DAY.ms
    if state.last_event_ms and transaction_ms // TERMINAL_DAY.ms <= last_day - TERMINAL_DAY.keep:
        return Outcome.LATE
    for spec in TERMINAL_TILE_SPECS:
        idx = transaction_ms // spec.ms
        # A tile already pruned is outside every window a later read can ask for: skip it
        # rather than resurrect it.
        if state.last_event_ms and idx <= state.last_event_ms // spec.ms - spec.keep:
            continue
        state.tiles[spec.name].setdefault(idx, [0, 0])[1] += 1
    state.frauds[transaction_id] = transaction_ms
    return Outcome.APPLIED


def _window_sums(
    tiles: Mapping[str, Mapping[int, Sequence[float]]], window: Window, now_ms: int, width: int
) -> list[float]:
    """Element-wise sums of the tiles inside `window` finished at `now_ms`."""
    sums = [0.0] * width
    current = now_ms // window.tiles.ms
    first = current - window.n_tiles
    for idx, values in sorted(tiles[window.tiles.name].items()):
        if first < idx <= current:
            for i in range(width):
                sums[i] += values[i]
    return sums


def card_features(state: CardState | None, now_ms: int) -> dict[str, float]:
    """The card's history features as of `now_ms`, finishing every window at read time.

    Means of empty windows are NaN (no spend to average), not 0.
    """
    out: dict[str, float] = {}
    for window in CARD_WINDOWS:
        count, total = 0.0, 0.0
        if state is not None:
            count, total = _window_sums(state.tiles, window, now_ms, 2)
        out[f"card_count_{window.name}"] = count
        out[f"card_amount_sum_{window.name}"] = round(total, 6)
        out[f"card_amount_mean_{window.name}"] = round(total / count, 6) if count else math.nan
    if state is None or not state.last_event_ms:
        out["card_seconds_since_last"] = math.nan
    else:
        out["card_seconds_since_last"] = max(0.0, (now_ms - state.last_event_ms) / 1000.0)
    distinct: set[str] = set()
    if state is not None:
        current = now_ms // HOUR.ms
        first = current - TERMINALS_WINDOW.n_tiles
        for idx, ids in state.terminals.items():
            if first < idx <= current:
                distinct.update(ids)
    out[f"card_distinct_terminals_{TERMINALS_WINDOW.name}"] = float(len(distinct))
    return out


def amount_zscore(state: CardState | None, amount: float, now_ms: int) -> float:
    """How many standard deviations `amount` is from the card's 30-day mean.

    NaN when the window holds no transaction, or when their spread is 0 (one transaction, or
    all of the same amount): a deviation from a point has no scale, and 0 or inf would both
    claim something the history cannot say.
    """
    if state is None:
        return math.nan
    count, total, squares = _window_sums(state.tiles, ZSCORE_WINDOW, now_ms, 3)
    if not count:
        return math.nan
    mean = total / count
    variance = squares / count - mean * mean
    # Sums of squares cancel badly: a spread below float noise relative to the mean is zero.
    if variance <= 1e-9 * max(1.0, mean * mean):
        return math.nan
    return round((amount - mean) / math.sqrt(variance), 6)


def amount_ratios(state: CardState | None, amount: float, now_ms: int) -> dict[str, float]:
    """`amount` over the card's mean amount in each AMOUNT_RATIO_WINDOWS window.

    NaN when the window holds no spend: there is no mean to compare with.
    """
    out: dict[str, float] = {}
    for window in AMOUNT_RATIO_WINDOWS:
        count, total = 0.0, 0.0
        if state is not None:
            count, total = _window_sums(state.tiles, window, now_ms, 2)
        # amount * count / total, not amount / mean: the columnar twin computes the same floats.
        ratio = round(amount * count / total, 6) if count and total > 0 else math.nan
        out[f"card_amount_ratio_{window.name}"] = ratio
    return out


def amount_cvs(state: CardState | None, now_ms: int) -> dict[str, float]:
    """Standard deviation / mean of the card's amounts in each AMOUNT_CV_WINDOWS window.

    NaN without spend or without spread (same rule as `amount_zscore`).
    """
    out: dict[str, float] = {}
    for window in AMOUNT_CV_WINDOWS:
        cv = math.nan
        if state is not None:
            count, total, squares = _window_sums(state.tiles, window, now_ms, 3)
            if count and total > 0:
                mean = total / count
                variance = squares / count - mean * mean
                if variance > 1e-9 * max(1.0, mean * mean):
                    cv = round(math.sqrt(variance) / mean, 6)
        out[f"card_amount_cv_{window.name}"] = cv
    return out


def terminal_features(state: TerminalState | None, now_ms: int) -> dict[str, float]:
    """The terminal's volume and known frauds as of `now_ms`.

    Risk is frauds known now among the window's transactions / those transactions; NaN for a
    window without transactions. The recent windows' risk is diluted by transactions whose
    labels have not arrived yet; the delayed windows, ending LABEL_DELAY_DAYS ago, mostly hold
    transactions whose labels have. Days since the first / latest known fraud (by transaction
    day, within FRAUD_RECENCY_WINDOW) are NaN when the window holds no known fraud.
    """
    out: dict[str, float] = {}
    for window in TERMINAL_WINDOWS:
        count, frauds = 0.0, 0.0
        if state is not None:
            count, frauds = _window_sums(state.tiles, window, now_ms, 2)
        out[f"terminal_count_{window.name}"] = count
        out[f"terminal_risk_{window.name}"] = round(frauds / count, 6) if count else math.nan
        out[f"terminal_known_frauds_{window.name}"] = frauds
    delay_ms = LABEL_DELAY_DAYS * TERMINAL_DAY.ms
    for window in DELAYED_TERMINAL_WINDOWS:
        count, frauds = 0.0, 0.0
        if state is not None:
            count, frauds = _window_sums(state.tiles, window, now_ms - delay_ms, 2)
        out[f"terminal_delayed_count_{window.name}"] = count
        out[f"terminal_delayed_risk_{window.name}"] = (
            round(frauds / count, 6) if count else math.nan
        )
    last, first = math.nan, math.nan
    if state is not None:
        spec = FRAUD_RECENCY_WINDOW.tiles
        current = now_ms // spec.ms
        days = [
            idx
            for idx, values in state.tiles[spec.name].items()
            if values[1] and current - FRAUD_RECENCY_WINDOW.n_tiles < idx <= current
        ]
        if days:
            last, first = float(current - max(days)), float(current - min(days))
    out["terminal_days_since_last_fraud"] = last
    out["terminal_days_since_first_fraud"] = first
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


def all_features(
    state: CardState | None,
    amount: float,
    event_ms: int,
    terminal: TerminalState | None = None,
) -> dict[str, float]:
    """The full model input for a transaction, given the card and terminal states before it."""
    return {
        **transaction_features(amount, event_ms),
        **card_features(state, event_ms),
        f"card_amount_zscore_{ZSCORE_WINDOW.name}": amount_zscore(state, amount, event_ms),
        **amount_ratios(state, amount, event_ms),
        **amount_cvs(state, event_ms),
        **terminal_features(terminal, event_ms),
    }


# --- Persistence: one Feast row per card / terminal state ----------------------------------

#: Columns of the `card_state` feature view, in the order `to_row` writes them.
STATE_COLUMNS: tuple[str, ...] = (
    "last_event_ms",
    *(f"{spec.name}_{part}" for spec in TILE_SPECS for part in ("idx", "cnt", "amt", "sq")),
    "h_term_idx",
    "h_term_ids",
    "recent_ids",
    "recent_ms",
)

#: Columns of the `terminal_state` feature view. Prefixed, so one online read can fetch both
#: views without name clashes.
TERMINAL_STATE_COLUMNS: tuple[str, ...] = (
    "t_last_event_ms",
    *(f"t_{spec.name}_{part}" for spec in TERMINAL_TILE_SPECS for part in ("idx", "cnt", "fraud")),
    "t_recent_ids",
    "t_recent_ms",
    "t_fraud_ids",
    "t_fraud_ms",
)


# to_row runs once per counted transaction (the offline history): its loops are map/zip in C.
_CARD_COLUMN_NAMES = {
    spec.name: tuple(f"{spec.name}_{part}" for part in ("idx", "cnt", "amt", "sq"))
    for spec in TILE_SPECS
}
#: Per terminal tile spec: its (idx, cnt, fraud) column names.
TERMINAL_COLUMN_NAMES = {
    spec.name: tuple(f"t_{spec.name}_{part}" for part in ("idx", "cnt", "fraud"))
    for spec in TERMINAL_TILE_SPECS
}


_FIRST, _SECOND, _THIRD = itemgetter(0), itemgetter(1), itemgetter(2)


def _tile_columns(tiles: Mapping[int, Sequence[float]], width: int) -> list[list[Any]]:
    """[indices, first values, second values, ...] of the tiles in index order."""
    idx = sorted(tiles)
    if not idx:
        return [[] for _ in range(width + 1)]
    values = list(map(tiles.__getitem__, idx))
    return [idx, *(list(column) for column in zip(*values, strict=True))]


def to_row(state: CardState) -> dict[str, Any]:
    row: dict[str, Any] = {"last_event_ms": state.last_event_ms}
    for spec in TILE_SPECS:
        tiles = state.tiles[spec.name]
        idx = sorted(tiles)
        values = list(map(tiles.__getitem__, idx))
        k_idx, k_cnt, k_amt, k_sq = _CARD_COLUMN_NAMES[spec.name]
        row[k_idx] = idx
        # Sums are floats from the start ([0, 0.0, 0.0] and `from_row`); counts may be floats
        # in states built elsewhere, and the store's column is Int64.
        row[k_cnt] = list(map(int, map(_FIRST, values)))
        row[k_amt] = list(map(_SECOND, values))
        row[k_sq] = list(map(_THIRD, values))
    # Flattened (hour, terminal) pairs: Feast has no nested arrays.
    term_idx: list[int] = []
    term_ids: list[str] = []
    for hour in sorted(state.terminals):
        ids = state.terminals[hour]
        term_idx.extend([hour] * len(ids))
        term_ids.extend(ids)
    row["h_term_idx"] = term_idx
    row["h_term_ids"] = term_ids
    row["recent_ids"], row["recent_ms"] = _id_times_to_columns(state.recent)
    return row


def from_row(row: Mapping[str, Any]) -> CardState | None:
    """Inverse of `to_row`; None when the store has no state for the card."""
    last: Any = row.get("last_event_ms")
    if _absent(last):
        return None
    state = CardState(last_event_ms=int(last))
    for spec in TILE_SPECS:
        idx = _seq(row.get(f"{spec.name}_idx"))
        cnt = _seq(row.get(f"{spec.name}_cnt"))
        amt = _seq(row.get(f"{spec.name}_amt"))
        sq = _seq(row.get(f"{spec.name}_sq"))
        state.tiles[spec.name] = {
            int(i): [float(c), float(a), float(s)]
            for i, c, a, s in zip(idx, cnt, amt, sq, strict=True)
        }
    for idx, tid in zip(_seq(row.get("h_term_idx")), _seq(row.get("h_term_ids")), strict=True):
        state.terminals.setdefault(int(idx), []).append(str(tid))
    state.recent = _id_times_from_columns(row, "recent_ids", "recent_ms")
    return state


def terminal_to_row(state: TerminalState) -> dict[str, Any]:
    row: dict[str, Any] = {"t_last_event_ms": state.last_event_ms}
    for spec in TERMINAL_TILE_SPECS:
        idx, cnt, fraud = _tile_columns(state.tiles[spec.name], 2)
        k_idx, k_cnt, k_fraud = TERMINAL_COLUMN_NAMES[spec.name]
        row[k_idx] = idx
        row[k_cnt] = list(map(int, cnt))
        row[k_fraud] = list(map(int, fraud))
    row["t_recent_ids"], row["t_recent_ms"] = _id_times_to_columns(state.recent)
    row["t_fraud_ids"], row["t_fraud_ms"] = _id_times_to_columns(state.frauds)
    return row


def terminal_from_row(row: Mapping[str, Any]) -> TerminalState | None:
    """Inverse of `terminal_to_row`; None when the store has no state for the terminal."""
    last: Any = row.get("t_last_event_ms")
    if _absent(last):
        return None
    state = TerminalState(last_event_ms=int(last))
    for spec in TERMINAL_TILE_SPECS:
        idx = _seq(row.get(f"t_{spec.name}_idx"))
        cnt = _seq(row.get(f"t_{spec.name}_cnt"))
        fraud = _seq(row.get(f"t_{spec.name}_fraud"))
        state.tiles[spec.name] = {
            int(i): [int(c), int(f)] for i, c, f in zip(idx, cnt, fraud, strict=True)
        }
    state.recent = _id_times_from_columns(row, "t_recent_ids", "t_recent_ms")
    state.frauds = _id_times_from_columns(row, "t_fraud_ids", "t_fraud_ms")
    return state


def _absent(value: Any) -> bool:
    """A missing store value: None from Redis, NaN from a point-in-time join."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _seq(value: Any) -> Sequence[Any]:
    return () if _absent(value) else list(value)


def _id_times_to_columns(id_times: Mapping[str, int]) -> tuple[list[str], list[int]]:
    """transaction_id -> ms as two parallel array columns (Feast has no map type)."""
    # Ids are unique: sorting them alone gives the order sorting (id, ms) pairs would.
    ids = sorted(id_times)
    return ids, list(map(id_times.__getitem__, ids))


def _id_times_from_columns(row: Mapping[str, Any], ids: str, times: str) -> dict[str, int]:
    return {str(t): int(m) for t, m in zip(_seq(row.get(ids)), _seq(row.get(times)), strict=True)}

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
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from functools import reduce
from operator import add
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


#: `array` type codes of the card columns: int64 and float64, the store's element types.
INT_CODE, FLOAT_CODE = "q", "d"


def int_array(values: Iterable[int] = ()) -> array[int]:
    return array(INT_CODE, values)


def float_array(values: Iterable[float] = ()) -> array[float]:
    return array(FLOAT_CODE, values)


@dataclass(slots=True)
class CardTiles:
    """A card's tiles of one spec as parallel columns in index order: the layout of its Feast
    row, so `to_row` copies nothing. The columns are typed arrays, not lists: the stream
    writes a history row per transaction, and a batch's rows become Arrow by copying their
    buffers (`history.CardHistory`), not by converting every element. `apply_transaction`
    changes them in place: whoever keeps a row past the next change copies it."""

    idx: array[int]
    #: transactions per tile
    cnt: array[int]
    #: amount sum per tile
    amt: array[float]
    #: amount sum of squares per tile
    sq: array[float]

    def copy(self) -> CardTiles:
        return CardTiles(self.idx[:], self.cnt[:], self.amt[:], self.sq[:])


def _no_card_tiles() -> dict[str, CardTiles]:
    return {
        spec.name: CardTiles(int_array(), int_array(), float_array(), float_array())
        for spec in TILE_SPECS
    }


@dataclass
class CardState:
    """Everything the stream keeps per card, held as the columns of its Feast row (`to_row`):
    a counted transaction writes a history row, so the row has to be cheap."""

    last_event_ms: int = 0
    #: tile spec name -> its tiles
    tiles: dict[str, CardTiles] = field(default_factory=_no_card_tiles)
    #: Terminal ids seen per hour tile (the first MAX_TERMINALS_PER_TILE of each hour, in the
    #: order seen), flattened: `term_ids[i]` was seen in hour `term_hours[i]`, hours ascending.
    term_hours: array[int] = field(default_factory=int_array)
    term_ids: list[str] = field(default_factory=list)
    #: transaction_id -> event_ms of transactions inside the lateness horizon, for dedup.
    recent: dict[str, int] = field(default_factory=dict)

    def copy(self) -> CardState:
        """An independent state (`apply_transaction` changes its arrays in place)."""
        tiles = {name: t.copy() for name, t in self.tiles.items()}
        return CardState(
            self.last_event_ms, tiles, self.term_hours[:], self.term_ids[:], dict(self.recent)
        )

    def day_tile_count(self) -> int:
        """Transactions counted in the retained day tiles (today and DAY.keep days before)."""
        return sum(self.tiles[DAY.name].cnt)


@dataclass(slots=True)
class TerminalTiles:
    """A terminal's tiles of one spec as parallel columns in index order, kept as `CardTiles`
    are (typed arrays, changed in place)."""

    idx: array[int]
    #: transactions per tile
    cnt: array[int]
    #: labelled frauds among them
    fraud: array[int]

    def copy(self) -> TerminalTiles:
        return TerminalTiles(self.idx[:], self.cnt[:], self.fraud[:])


def _no_terminal_tiles() -> dict[str, TerminalTiles]:
    return {
        spec.name: TerminalTiles(int_array(), int_array(), int_array())
        for spec in TERMINAL_TILE_SPECS
    }


@dataclass
class TerminalState:
    """Everything the stream keeps per terminal. Persisted as one Feast row (`terminal_to_row`)."""

    #: Newest transaction event time (labels do not move it).
    last_event_ms: int = 0
    #: tile spec name -> its tiles
    tiles: dict[str, TerminalTiles] = field(default_factory=_no_terminal_tiles)
    #: transactions-topic partition -> newest offset of it that reached this terminal: the
    #: transactions' dedup (`claim_terminal_source`), O(partitions) however busy the terminal.
    sources: dict[int, int] = field(default_factory=dict)
    #: transaction_id -> transaction time of every fraud counted in a retained tile: a label is
    #: counted exactly once however often it is redelivered.
    frauds: dict[str, int] = field(default_factory=dict)

    def copy(self) -> TerminalState:
        return TerminalState(
            last_event_ms=self.last_event_ms,
            tiles={name: t.copy() for name, t in self.tiles.items()},
            sources=dict(self.sources),
            frauds=dict(self.frauds),
        )


def history_stamp_ms(stamp_ms: int, last_event_ms: int) -> int:
    """The offline stamp of the state row written after an event stamped `stamp_ms` (a
    transaction's time, a label's report time), `last_event_ms` being the state's newest
    transaction time once the event is applied.

    A row holds everything applied before it. Stamped at the own time of an event that came out
    of order, it would hold transactions newer than its stamp, and a point-in-time read between
    the two times would see the future, the transaction being scored included. Stamped at the
    newest time it holds, it is never ahead of what a reader at that time could know. Applied
    in time order (the backfill), both are the event's own time.
    """
    return stamp_ms if stamp_ms >= last_event_ms else last_event_ms


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
    square = amount * amount
    # Only an event that moves the card's newest event time moves what is retained: the tiles
    # `keep` or more before its own go, in the same new lists that add it.
    advances = event_ms > state.last_event_ms
    tiles = state.tiles
    for name, tile_ms, keep in _CARD_SPECS:
        tile = event_ms // tile_ms
        _add_to_tile(tiles[name], tile, amount, square, tile - keep if advances else None)
        if name == _HOUR_NAME and terminal_id:
            _add_terminal(state, tile, terminal_id)
    state.recent[transaction_id] = event_ms
    if advances:
        state.last_event_ms = event_ms
        _prune(state, allowed_lateness_ms)
    return Outcome.APPLIED


#: (name, tile length in ms, tiles kept) per card tile spec, looked up once: the stream folds
#: every transaction through these.
_CARD_SPECS = tuple((spec.name, spec.ms, spec.keep) for spec in TILE_SPECS)
_HOUR_MS = HOUR.ms
_HOUR_NAME = HOUR.name


def _add_to_tile(
    tiles: CardTiles, tile: int, amount: float, square: float, oldest: int | None
) -> None:
    """Add one transaction to tile `tile`, and drop the tiles up to `oldest`, in place."""
    idx = tiles.idx
    if oldest is not None and idx and idx[0] <= oldest:
        cut = bisect_right(idx, oldest)
        del idx[:cut], tiles.cnt[:cut], tiles.amt[:cut], tiles.sq[:cut]
    at = bisect_left(idx, tile)
    if at == len(idx) or idx[at] != tile:
        idx.insert(at, tile)
        tiles.cnt.insert(at, 1)
        tiles.amt.insert(at, amount)
        tiles.sq.insert(at, square)
    else:
        tiles.cnt[at] += 1
        tiles.amt[at] += amount
        tiles.sq[at] += square


def _add_terminal(state: CardState, hour: int, terminal_id: str) -> None:
    """Remember `terminal_id` in hour tile `hour`, unless known there or the tile is full."""
    hours, ids = state.term_hours, state.term_ids
    end = bisect_right(hours, hour)
    start = bisect_left(hours, hour, 0, end)
    if end - start < MAX_TERMINALS_PER_TILE and terminal_id not in ids[start:end]:
        hours.insert(end, hour)
        ids.insert(end, terminal_id)


def _expire_ids(id_times: dict[str, int], horizon: int) -> dict[str, int]:
    """The ids at or after `horizon` (the same dict when none is older)."""
    if id_times and min(id_times.values()) < horizon:
        return {tid: ms for tid, ms in id_times.items() if ms >= horizon}
    return id_times


def _prune(state: CardState, allowed_lateness_ms: int) -> None:
    """Forget the ids past the lateness horizon and the terminals of hours past the window
    (tiles are cut as events are added to them)."""
    last_ms = state.last_event_ms
    state.recent = _expire_ids(state.recent, last_ms - allowed_lateness_ms)
    oldest_hour = last_ms // _HOUR_MS - HOUR.keep
    if state.term_hours and state.term_hours[0] <= oldest_hour:
        cut = bisect_right(state.term_hours, oldest_hour)
        del state.term_hours[:cut], state.term_ids[:cut]


def claim_terminal_source(
    state: TerminalState, partition: int, offset: int, event_ms: int, newest_ms: int
) -> bool:
    """Claim the transaction at `offset` of transactions-topic `partition` (event time
    `event_ms`) for the terminal: True the first time, False for a replay of it (a DUPLICATE).
    `newest_ms`: the newest transaction time the terminal has counted or claimed so far.

    The terminal needs no transaction ids: upstream duplicates (one id published twice) were
    dropped by their card, which forwards only the transactions it counted. What reaches a
    terminal twice is a replay of the same source record, after a crash: the terminal-events
    topic redelivering a message, or the card handler forwarding a batch again. Each
    partition's transactions reach the terminal in offset order (`services.stream.processor`
    says why), so one number per partition tells a replay: an offset at or below the newest
    one claimed. Callers claim each partition's transactions in offset order.

    A replay's record was claimed before, so its event time is at most `newest_ms`. A record
    at or below the claimed offset but newer than that is therefore not a replay: the
    transactions topic was deleted and created again, restarting its offsets at 0, and the
    partition's count restarts from it. (Records of a recreated topic older than the
    terminal's newest would still pass for replays: replaying old history into a new topic
    needs the states rebuilt.)
    """
    if offset <= state.sources.get(partition, -1) and event_ms <= newest_ms:
        return False
    state.sources[partition] = offset
    return True


def apply_terminal_transaction(state: TerminalState, event_ms: int) -> Outcome:
    """Count one transaction at the terminal, in the tiles of its event time.

    The terminal counts every transaction its card counted, in whatever order they reach it:
    the card judged the lateness (`apply_transaction`), and a terminal's transactions come from
    every card partition, which a worker consumes at paces of its own (the partitions of a
    backlog drift apart by minutes of event time, more around a restart or a rebalance). A
    lateness of its own would drop transactions the cards and the training backfill count.
    Tiles already pruned are skipped, as for a label: no window a later read asks for holds
    them, so the state is what counting in time order would have left. A transaction before
    every retained day tile is LATE (counted in no window any more).

    Counting it once is the caller's part: the stream claims its source position first
    (`claim_terminal_source`); the backfill counts only what the cards counted, which
    deduplicated by transaction id.
    """
    last = state.last_event_ms
    if event_ms < last:
        # Older than the newest: nothing expires.
        return Outcome.APPLIED if _count_in_retained_tiles(state, event_ms, 1, 0) else Outcome.LATE
    tiles = state.tiles
    # Retention ends at whole tiles, all of them whole hours: within the newest hour nothing
    # expires.
    expire = event_ms > last and event_ms // _TERMINAL_FINEST_MS != last // _TERMINAL_FINEST_MS
    for name, tile_ms, keep in _TERMINAL_SPECS:
        tile = event_ms // tile_ms
        _count_at_terminal(tiles[name], tile, 1, 0, tile - keep if expire else None)
    state.last_event_ms = event_ms
    if expire:
        # Kept: ms // day > oldest_day, i.e. ms >= (oldest_day + 1) * day.
        oldest_day = event_ms // TERMINAL_DAY.ms - TERMINAL_DAY.keep
        state.frauds = _expire_ids(state.frauds, (oldest_day + 1) * TERMINAL_DAY.ms)
    return Outcome.APPLIED


def _count_at_terminal(
    tiles: TerminalTiles, tile: int, transactions: int, frauds: int, oldest: int | None
) -> None:
    """Add `transactions` and `frauds` to tile `tile`, and drop the tiles up to `oldest`
    (never `tile` itself), in place."""
    idx = tiles.idx
    if oldest is not None and idx and idx[0] <= oldest:
        cut = bisect_right(idx, oldest)
        del idx[:cut], tiles.cnt[:cut], tiles.fraud[:cut]
    at = bisect_left(idx, tile)
    if at == len(idx) or idx[at] != tile:
        idx.insert(at, tile)
        tiles.cnt.insert(at, transactions)
        tiles.fraud.insert(at, frauds)
    else:
        if transactions:
            tiles.cnt[at] += transactions
        if frauds:
            tiles.fraud[at] += frauds


# The terminal's per-event path: TileSpec.ms is a property, computed on every read.
_TERMINAL_SPECS = tuple((spec.name, spec.ms, spec.keep) for spec in TERMINAL_TILE_SPECS)
_TERMINAL_FINEST_MS = min(spec.ms for spec in TERMINAL_TILE_SPECS)


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
    if not _count_in_retained_tiles(state, transaction_ms, 0, 1):
        return Outcome.LATE
    state.frauds[transaction_id] = transaction_ms
    return Outcome.APPLIED


def _count_in_retained_tiles(
    state: TerminalState, event_ms: int, transactions: int, frauds: int
) -> bool:
    """Add to the tiles of `event_ms` that are still retained, pruning nothing; False (nothing
    added) when `event_ms` lies before every retained day tile.

    A tile already pruned is outside every window a later read can ask for: it is skipped
    rather than resurrected, which leaves what counting in time order and pruning would have.
    """
    last = state.last_event_ms
    if last and event_ms // TERMINAL_DAY.ms <= last // TERMINAL_DAY.ms - TERMINAL_DAY.keep:
        return False
    tiles = state.tiles
    for name, tile_ms, keep in _TERMINAL_SPECS:
        tile = event_ms // tile_ms
        if not last or tile > last // tile_ms - keep:
            _count_at_terminal(tiles[name], tile, transactions, frauds, None)
    return True


def _terminal_window(state: TerminalState, window: Window, now_ms: int) -> tuple[float, float]:
    """(transactions, frauds) in `window` finished at `now_ms`."""
    tiles = state.tiles[window.tiles.name]
    current = now_ms // window.tiles.ms
    inside = slice(
        bisect_right(tiles.idx, current - window.n_tiles), bisect_right(tiles.idx, current)
    )
    return float(sum(tiles.cnt[inside])), float(sum(tiles.fraud[inside]))


def _ordered_sum(values: Sequence[float]) -> float:
    """0.0 + values[0] + values[1] + ...: the floats every reader of the tiles computes (the
    training twin included); `sum()` compensates rounding errors from Python 3.12 on."""
    return reduce(add, values, 0.0)


#: Card window name -> (its tile spec's name, tile length in ms, tiles in the window): the
#: readers run several times per scoring request.
_CARD_WINDOW_TILES = {w.name: (w.tiles.name, w.tiles.ms, w.n_tiles) for w in CARD_WINDOWS}
#: Per card window: the window and its count, amount sum and mean feature names.
_CARD_WINDOW_NAMES = tuple(
    (w, f"card_count_{w.name}", f"card_amount_sum_{w.name}", f"card_amount_mean_{w.name}")
    for w in CARD_WINDOWS
)


def _card_window(state: CardState, window: Window, now_ms: int) -> tuple[CardTiles, slice]:
    """The card's tiles of `window`'s spec, and the slice of them inside it at `now_ms`."""
    spec, tile_ms, n_tiles = _CARD_WINDOW_TILES[window.name]
    tiles = state.tiles[spec]
    current = now_ms // tile_ms
    return tiles, slice(
        bisect_right(tiles.idx, current - n_tiles), bisect_right(tiles.idx, current)
    )


def _card_count_total(state: CardState, window: Window, now_ms: int) -> tuple[float, float]:
    tiles, inside = _card_window(state, window, now_ms)
    return float(sum(tiles.cnt[inside])), _ordered_sum(tiles.amt[inside])


def _card_count_total_squares(
    state: CardState, window: Window, now_ms: int
) -> tuple[float, float, float]:
    tiles, inside = _card_window(state, window, now_ms)
    count = float(sum(tiles.cnt[inside]))
    return count, _ordered_sum(tiles.amt[inside]), _ordered_sum(tiles.sq[inside])


def card_features(state: CardState | None, now_ms: int) -> dict[str, float]:
    """The card's history features as of `now_ms`, finishing every window at read time.

    Means of empty windows are NaN (no spend to average), not 0.
    """
    out: dict[str, float] = {}
    for window, count_name, sum_name, mean_name in _CARD_WINDOW_NAMES:
        count, total = 0.0, 0.0
        if state is not None:
            count, total = _card_count_total(state, window, now_ms)
        out[count_name] = count
        out[sum_name] = round(total, 6)
        out[mean_name] = round(total / count, 6) if count else math.nan
    if state is None or not state.last_event_ms:
        out["card_seconds_since_last"] = math.nan
    else:
        out["card_seconds_since_last"] = max(0.0, (now_ms - state.last_event_ms) / 1000.0)
    distinct = 0
    if state is not None:
        current = now_ms // HOUR.ms
        first = bisect_right(state.term_hours, current - TERMINALS_WINDOW.n_tiles)
        distinct = len(set(state.term_ids[first : bisect_right(state.term_hours, current)]))
    out[f"card_distinct_terminals_{TERMINALS_WINDOW.name}"] = float(distinct)
    return out


def amount_zscore(state: CardState | None, amount: float, now_ms: int) -> float:
    """How many standard deviations `amount` is from the card's 30-day mean.

    NaN when the window holds no transaction, or when their spread is 0 (one transaction, or
    all of the same amount): a deviation from a point has no scale, and 0 or inf would both
    claim something the history cannot say.
    """
    if state is None:
        return math.nan
    count, total, squares = _card_count_total_squares(state, ZSCORE_WINDOW, now_ms)
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
            count, total = _card_count_total(state, window, now_ms)
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
            count, total, squares = _card_count_total_squares(state, window, now_ms)
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
            count, frauds = _terminal_window(state, window, now_ms)
        out[f"terminal_count_{window.name}"] = count
        out[f"terminal_risk_{window.name}"] = round(frauds / count, 6) if count else math.nan
        out[f"terminal_known_frauds_{window.name}"] = frauds
    delay_ms = LABEL_DELAY_DAYS * TERMINAL_DAY.ms
    for window in DELAYED_TERMINAL_WINDOWS:
        count, frauds = 0.0, 0.0
        if state is not None:
            count, frauds = _terminal_window(state, window, now_ms - delay_ms)
        out[f"terminal_delayed_count_{window.name}"] = count
        out[f"terminal_delayed_risk_{window.name}"] = (
            round(frauds / count, 6) if count else math.nan
        )
    last, first = math.nan, math.nan
    if state is not None:
        spec = FRAUD_RECENCY_WINDOW.tiles
        current = now_ms // spec.ms
        tiles = state.tiles[spec.name]
        days = [
            idx
            for idx, frauds in zip(tiles.idx, tiles.fraud, strict=True)
            if frauds and current - FRAUD_RECENCY_WINDOW.n_tiles < idx <= current
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
    "t_src_partition",
    "t_src_offset",
    "t_fraud_ids",
    "t_fraud_ms",
)
#: `TerminalState.sources` as columns: where the stream's transactions were read, which a
#: recomputation of the same transactions without Kafka cannot know.
TERMINAL_SOURCE_COLUMNS: tuple[str, ...] = ("t_src_partition", "t_src_offset")


#: Per card tile spec: its (idx, cnt, amt, sq) column names, in `CardTiles` order.
_CARD_COLUMN_NAMES = {
    spec.name: tuple(f"{spec.name}_{part}" for part in ("idx", "cnt", "amt", "sq"))
    for spec in TILE_SPECS
}
#: Per terminal tile spec: its (idx, cnt, fraud) column names.
TERMINAL_COLUMN_NAMES = {
    spec.name: tuple(f"t_{spec.name}_{part}" for part in ("idx", "cnt", "fraud"))
    for spec in TERMINAL_TILE_SPECS
}


def to_row(state: CardState, dedup: bool = True) -> dict[str, Any]:
    """The state as a `card_state` row. The row shares the state's arrays and lists, which
    the next `apply_transaction` changes: a row is read before the state changes again, or
    copied (`history.CardHistory` copies). Without `dedup`, the dedup columns
    (`dedup_columns`) are left empty. The tile columns are `array`s, which Arrow takes
    (`offline_store`) but pandas and Feast's push do not: `to_list_row` is the row for
    those."""
    row: dict[str, Any] = {"last_event_ms": state.last_event_ms}
    tiles = state.tiles
    for spec in TILE_SPECS:
        k_idx, k_cnt, k_amt, k_sq = _CARD_COLUMN_NAMES[spec.name]
        t = tiles[spec.name]
        row[k_idx], row[k_cnt], row[k_amt], row[k_sq] = t.idx, t.cnt, t.amt, t.sq
    # Flattened (hour, terminal) pairs: Feast has no nested arrays.
    row["h_term_idx"] = state.term_hours
    row["h_term_ids"] = state.term_ids
    if dedup:
        row.update(dedup_columns(state))
    else:
        row.update({name: [] for name in DEDUP_COLUMNS})
    return row


def to_list_row(state: CardState) -> dict[str, Any]:
    """`to_row` with every column a plain list: the form pandas frames and Feast's push take."""
    return _plain(to_row(state))


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row with its arrays as lists, and every list its own (the state changes its own)."""
    return {
        name: value.tolist()
        if type(value) is array
        else list(value)
        if type(value) is list
        else value
        for name, value in row.items()
    }


#: The columns of `to_row` that only the stream's dedup reads.
DEDUP_COLUMNS = ("recent_ids", "recent_ms")


def dedup_columns(state: CardState) -> dict[str, list[Any]]:
    """The columns of `to_row` that only the stream's dedup reads: the recent ids
    (DEDUP_COLUMNS)."""
    ids, times = _id_times_to_columns(state.recent)
    return {"recent_ids": ids, "recent_ms": times}


def _column(row: Mapping[str, Any], name: str) -> list[str]:
    """A string list column of a stored row as a new list (the state changes it in place)."""
    value: Any = row.get(name)
    if _absent(value):
        return []
    # Redis gives lists of str (a protobuf repeated field); a point-in-time join numpy arrays.
    if type(value) is list and (not value or type(value[0]) is str):
        return value[:]
    return list(map(str, value))


def _typed_column(row: Mapping[str, Any], name: str, code: str) -> array[Any]:
    """A number list column of a stored row as an `array` of type `code`."""
    value: Any = row.get(name)
    if _absent(value):
        return array(code)
    if type(value) is array and value.typecode == code:
        return value[:]  # a copy: the state changes its arrays in place
    try:
        # Lists of the column's type (from Redis) convert in one C loop.
        return array(code, value)
    except TypeError:
        # numpy scalars (a point-in-time join) are not ints or floats to `array`.
        kind = int if code == INT_CODE else float
        return array(code, map(kind, value))


def from_row(row: Mapping[str, Any]) -> CardState | None:
    """Inverse of `to_row`; None when the store has no state for the card."""
    last: Any = row.get("last_event_ms")
    if _absent(last):
        return None
    state = CardState(last_event_ms=int(last))
    for spec in TILE_SPECS:
        k_idx, k_cnt, k_amt, k_sq = _CARD_COLUMN_NAMES[spec.name]
        tiles = CardTiles(
            _typed_column(row, k_idx, INT_CODE),
            _typed_column(row, k_cnt, INT_CODE),
            _typed_column(row, k_amt, FLOAT_CODE),
            _typed_column(row, k_sq, FLOAT_CODE),
        )
        if not len(tiles.idx) == len(tiles.cnt) == len(tiles.amt) == len(tiles.sq):
            raise ValueError(f"card row: the {spec.name}_* tile columns differ in length")
        state.tiles[spec.name] = tiles
    state.term_hours = _typed_column(row, "h_term_idx", INT_CODE)
    state.term_ids = _column(row, "h_term_ids")
    if len(state.term_hours) != len(state.term_ids):
        raise ValueError("card row: h_term_idx and h_term_ids differ in length")
    state.recent = _id_times_from_columns(row, "recent_ids", "recent_ms")
    return state


def terminal_to_row(state: TerminalState, dedup: bool = True) -> dict[str, Any]:
    """The state as a `terminal_state` row, sharing the state's arrays (as `to_row`). Without
    `dedup`, the dedup columns (`terminal_dedup_columns`) are left empty."""
    row: dict[str, Any] = {"t_last_event_ms": state.last_event_ms}
    for spec in TERMINAL_TILE_SPECS:
        t = state.tiles[spec.name]
        k_idx, k_cnt, k_fraud = TERMINAL_COLUMN_NAMES[spec.name]
        row[k_idx], row[k_cnt], row[k_fraud] = t.idx, t.cnt, t.fraud
    if dedup:
        row.update(terminal_dedup_columns(state))
    else:
        row.update({name: [] for name in TERMINAL_DEDUP_COLUMNS})
    return row


#: The columns of `terminal_to_row` that only the stream's dedup reads.
TERMINAL_DEDUP_COLUMNS = ("t_src_partition", "t_src_offset", "t_fraud_ids", "t_fraud_ms")


def terminal_dedup_columns(state: TerminalState) -> dict[str, list[Any]]:
    """The claimed source offsets and the counted frauds' ids (TERMINAL_DEDUP_COLUMNS)."""
    partitions = sorted(state.sources)
    ids, times = _id_times_to_columns(state.frauds)
    return {
        "t_src_partition": partitions,
        "t_src_offset": list(map(state.sources.__getitem__, partitions)),
        "t_fraud_ids": ids,
        "t_fraud_ms": times,
    }


def terminal_to_list_row(state: TerminalState) -> dict[str, Any]:
    """`terminal_to_row` with every column a plain list (as `to_list_row`)."""
    return _plain(terminal_to_row(state))


def terminal_from_row(row: Mapping[str, Any]) -> TerminalState | None:
    """Inverse of `terminal_to_row`; None when the store has no state for the terminal."""
    last: Any = row.get("t_last_event_ms")
    if _absent(last):
        return None
    state = TerminalState(last_event_ms=int(last))
    for spec in TERMINAL_TILE_SPECS:
        k_idx, k_cnt, k_fraud = TERMINAL_COLUMN_NAMES[spec.name]
        tiles = TerminalTiles(
            _typed_column(row, k_idx, INT_CODE),
            _typed_column(row, k_cnt, INT_CODE),
            _typed_column(row, k_fraud, INT_CODE),
        )
        if not len(tiles.idx) == len(tiles.cnt) == len(tiles.fraud):
            raise ValueError(f"terminal row: the t_{spec.name}_* tile columns differ in length")
        state.tiles[spec.name] = tiles
    state.sources = {
        int(p): int(o)
        for p, o in zip(
            _seq(row.get("t_src_partition")), _seq(row.get("t_src_offset")), strict=True
        )
    }
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

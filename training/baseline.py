"""The Fraud Detection Handbook's baseline: its 15 features and its scikit-learn models.

Reproduces Chapter 3 of the handbook (Le Borgne et al.), so fraudscore can be measured against
it on the same data and split:

* features, "Baseline feature transformation": TX_AMOUNT; TX_DURING_WEEKEND (weekday >= 5);
  TX_DURING_NIGHT (hour <= 6); per customer over 1/7/30 days the transaction count and mean
  amount, *including* the transaction itself (pandas' time-based rolling window (t - w, t]);
  per terminal over 1/7/30 days, shifted back by a 7-day delay, the transaction count and the
  fraud share (0 where the window is empty), from final labels;
* models, "Baseline fraud detection system": ``LogisticRegression(random_state=0)`` and
  ``RandomForestClassifier(random_state=0, n_jobs=-1)`` (the defaults: 100 fully grown
  trees), both fitted on inputs standardised with a ``StandardScaler`` fitted on the training
  set (`fit_model_and_get_predictions(..., scale=True)` of the handbook's shared functions).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)

WINDOWS_DAYS: tuple[int, ...] = (1, 7, 30)
#: The handbook's terminal-risk delay: labels of the last week are taken as not known yet.
DELAY_DAYS = 7

#: The handbook's `input_features`, in its order.
FEATURES: tuple[str, ...] = (
    "TX_AMOUNT",
    "TX_DURING_WEEKEND",
    "TX_DURING_NIGHT",
    *(
        name
        for w in WINDOWS_DAYS
        for name in (f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW", f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW")
    ),
    *(
        name
        for w in WINDOWS_DAYS
        for name in (f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW", f"TERMINAL_ID_RISK_{w}DAY_WINDOW")
    ),
)

#: Name in the benchmark output -> a fresh model configured as the handbook configures it.
MODELS: dict[str, Callable[[], ClassifierMixin]] = {
    "baseline_lr": lambda: LogisticRegression(random_state=0),
    "baseline_rf": lambda: RandomForestClassifier(random_state=0, n_jobs=-1),
}


def _rolling(frame: pd.DataFrame, key: str, column: str, days: int, how: str) -> np.ndarray:
    """Per `key`, `how` ('sum' or 'count') of `column` over (t - days, t], in frame order.

    `frame` must be sorted by (key, time) with a DatetimeIndex, so the grouped result comes
    back in the frame's own row order.
    """
    rolled = frame.groupby(key, sort=False)[column].rolling(f"{days}D")
    values = rolled.sum() if how == "sum" else rolled.count()
    return values.to_numpy(dtype=np.float64)


def features(transactions: pd.DataFrame, minor_per_major: int = 100) -> pd.DataFrame:
    """The handbook's features for every transaction of `transactions`.

    Input columns: transaction_id, card_id, terminal_id, amount_minor, event_ms, is_fraud (the
    simulator's frame). Output: transaction_id, card_id, event_ms, label and FEATURES, in
    (event_ms, transaction_id) order. Windows look back into whatever history the frame holds,
    so pass at least 37 days before the first row that matters.
    """
    tx = pd.DataFrame(
        {
            "transaction_id": transactions["transaction_id"].to_numpy(),
            "card_id": transactions["card_id"].to_numpy(),
            "terminal_id": transactions["terminal_id"].to_numpy(),
            "event_ms": transactions["event_ms"].to_numpy(np.int64),
            "label": transactions["is_fraud"].to_numpy(dtype=bool).astype(np.int64),
            "TX_AMOUNT": transactions["amount_minor"].to_numpy(np.float64) / minor_per_major,
        }
    )
    when = pd.to_datetime(tx["event_ms"], unit="ms", utc=True)
    tx["TX_DURING_WEEKEND"] = (when.dt.weekday >= 5).astype(np.float64)
    tx["TX_DURING_NIGHT"] = (when.dt.hour <= 6).astype(np.float64)
    tx.index = pd.DatetimeIndex(when, name="ts")

    cards = tx.sort_values(["card_id", "event_ms"], kind="stable")
    for w in WINDOWS_DAYS:
        count = _rolling(cards, "card_id", "TX_AMOUNT", w, "count")
        total = _rolling(cards, "card_id", "TX_AMOUNT", w, "sum")
        cards[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] = count
        # Never 0: the window holds the transaction itself.
        cards[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"] = total / count

    terminals = cards.sort_values(["terminal_id", "event_ms"], kind="stable")
    fraud_delay = _rolling(terminals, "terminal_id", "label", DELAY_DAYS, "sum")
    count_delay = _rolling(terminals, "terminal_id", "label", DELAY_DAYS, "count")
    for w in WINDOWS_DAYS:
        fraud = _rolling(terminals, "terminal_id", "label", DELAY_DAYS + w, "sum") - fraud_delay
        count = _rolling(terminals, "terminal_id", "label", DELAY_DAYS + w, "count") - count_delay
        terminals[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = count
        with np.errstate(divide="ignore", invalid="ignore"):
            risk = np.where(count > 0, fraud / np.where(count > 0, count, 1.0), 0.0)
        terminals[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = risk

    out = terminals.sort_values(["event_ms", "transaction_id"], kind="stable").reset_index(
        drop=True
    )
    return out[["transaction_id", "card_id", "event_ms", "label", *FEATURES]]


def fit_predict(
    train: pd.DataFrame, test: pd.DataFrame, models: tuple[str, ...] = tuple(MODELS)
) -> dict[str, np.ndarray]:
    """Fraud probabilities on `test` of each handbook model fitted on `train` (both: FEATURES
    + label), inputs standardised on the training set as the handbook does."""
    scaler = StandardScaler().fit(train[list(FEATURES)].to_numpy(np.float64))
    x_train = scaler.transform(train[list(FEATURES)].to_numpy(np.float64))
    x_test = scaler.transform(test[list(FEATURES)].to_numpy(np.float64))
    y = train["label"].to_numpy(np.int64)
    out: dict[str, np.ndarray] = {}
    for name in models:
        model = MODELS[name]()
        log.info("fitting %s on %s rows", name, len(y))
        model.fit(x_train, y)
        proba = model.predict_proba(x_test)
        out[name] = np.asarray(proba[:, 1], dtype=np.float64)
    return out

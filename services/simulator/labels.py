"""Fraud labels as they reach a fraud team: chargebacks and cardholder claims, days later.

The reporting delay is `min + (max - min) * K` days with K ~ Kumaraswamy(a=1.5, b=5), a
Beta-like law with a closed-form inverse: most frauds are reported within the first week or two
(for the 1..30 day defaults: mode ~6 days, median ~8, mean ~9, 95% within ~18) with a thin tail
towards the end of the window, the right-skewed shape of chargeback reporting. The handbook's own
one-week "delay period" between training and test sets sits near its centre. Each delay is a
hash of (seed, transaction_id), so a transaction keeps its delay whatever frame it is labelled in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.simulator.config import DAY_MS

KUMARASWAMY_A = 1.5
KUMARASWAMY_B = 5.0

LABEL_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "card_id",
    "terminal_id",
    "is_fraud",
    "transaction_ms",
    "reported_ms",
)


def _uniform(keys: pd.Series) -> np.ndarray:
    hashed = pd.util.hash_pandas_object(keys, index=False).to_numpy(dtype=np.uint64)
    # The top 53 bits as a double in [0, 1).
    return (hashed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def report_delay_ms(
    transaction_ids: pd.Series, seed: int, min_delay_days: float, max_delay_days: float
) -> np.ndarray:
    """Deterministic reporting delays in ms, in [min_delay_days, max_delay_days) days."""
    if not 0 <= min_delay_days <= max_delay_days:
        raise ValueError("need 0 <= min_delay_days <= max_delay_days")
    u = _uniform(f"{seed}:" + transaction_ids.astype(str))
    k = (1.0 - (1.0 - u) ** (1.0 / KUMARASWAMY_B)) ** (1.0 / KUMARASWAMY_A)
    days = min_delay_days + (max_delay_days - min_delay_days) * k
    delay = np.floor(days * DAY_MS).astype(np.int64)
    # Floating point may round the top end up to the bound itself.
    return np.minimum(delay, max(int(max_delay_days * DAY_MS) - 1, int(min_delay_days * DAY_MS)))


def labels_for(
    df: pd.DataFrame,
    seed: int,
    min_delay_days: float = 1.0,
    max_delay_days: float = 30.0,
) -> pd.DataFrame:
    """One label per fraudulent transaction of `df`, ordered by when it is reported."""
    frauds = df.loc[df["is_fraud"].to_numpy(dtype=bool)]
    ids = frauds["transaction_id"].reset_index(drop=True)
    transaction_ms = frauds["event_ms"].to_numpy(dtype=np.int64)
    labels = pd.DataFrame(
        {
            "transaction_id": ids,
            "card_id": frauds["card_id"].to_numpy(),
            "terminal_id": frauds["terminal_id"].to_numpy(),
            "is_fraud": np.ones(len(frauds), dtype=bool),
            "transaction_ms": transaction_ms,
            "reported_ms": transaction_ms
            + report_delay_ms(ids, seed, min_delay_days, max_delay_days),
        }
    )
    return labels.sort_values(["reported_ms", "transaction_id"], kind="stable").reset_index(
        drop=True
    )

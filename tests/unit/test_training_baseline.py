"""The handbook's baseline features, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training import baseline

DAY = 86_400_000
#: 2018-07-28, a Saturday, 00:00 UTC.
SAT = 1_532_736_000_000


def frame(rows: list[tuple[str, str, float, int, bool]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(len(rows))],
            "card_id": [r[0] for r in rows],
            "terminal_id": [r[1] for r in rows],
            "amount_minor": [int(r[2] * 100) for r in rows],
            "event_ms": [r[3] for r in rows],
            "is_fraud": [r[4] for r in rows],
        }
    )


def test_calendar_flags_and_card_windows_include_the_transaction_itself() -> None:
    hour = 3_600_000
    out = baseline.features(
        frame(
            [
                ("a", "x", 10.0, SAT + 6 * hour, False),  # Saturday 06:xx: night, weekend
                ("a", "x", 30.0, SAT + 2 * DAY + 7 * hour, False),  # Monday 07:00: neither
                ("a", "y", 50.0, SAT + 2 * DAY + 8 * hour, False),
                ("b", "y", 99.0, SAT + 2 * DAY + 9 * hour, False),
            ]
        )
    ).set_index("transaction_id")
    assert list(out["TX_DURING_WEEKEND"]) == [1.0, 0.0, 0.0, 0.0]
    assert list(out["TX_DURING_NIGHT"]) == [1.0, 0.0, 0.0, 0.0]
    assert out.loc["t2", "CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2  # t1 and itself
    assert out.loc["t2", "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == pytest.approx(40.0)
    assert out.loc["t2", "CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 3
    assert out.loc["t2", "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"] == pytest.approx(30.0)
    assert out.loc["t3", "CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 1  # another card's history
    assert list(out.columns[3:]) == list(baseline.FEATURES)


def test_terminal_risk_only_counts_transactions_older_than_the_delay() -> None:
    rows = [
        ("c1", "x", 10.0, SAT, True),  # day 0: fraud
        ("c2", "x", 10.0, SAT + 1000, False),  # day 0
        ("c3", "x", 10.0, SAT + 3 * DAY, True),  # day 3: inside the delay for day 8
        ("c4", "x", 10.0, SAT + 7 * DAY + 2000, False),  # day 7: 7 d after t0 and t1
        ("c5", "x", 10.0, SAT + 8 * DAY - 1, False),  # just under 8 days after day 0
    ]
    out = baseline.features(frame(rows)).set_index("transaction_id")
    # t3 at day 7 + 2 s: its 1-day window is (day -1 + 2 s, day 0 + 2 s]: t0 and t1, one fraud.
    assert out.loc["t3", "TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 2
    assert out.loc["t3", "TERMINAL_ID_RISK_1DAY_WINDOW"] == pytest.approx(0.5)
    # t4: 1-day window (day 0 - 1 ms, day 1 - 1 ms]: t0 and t1; t2 (day 3) is in the delay.
    assert out.loc["t4", "TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 2
    assert out.loc["t4", "TERMINAL_ID_NB_TX_7DAY_WINDOW"] == 2
    assert out.loc["t4", "TERMINAL_ID_RISK_7DAY_WINDOW"] == pytest.approx(0.5)
    # The first transactions have nothing old enough: count 0 and risk 0, not NaN.
    assert out.loc["t0", "TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 0
    assert out.loc["t0", "TERMINAL_ID_RISK_30DAY_WINDOW"] == 0.0
    assert not out[list(baseline.FEATURES)].isna().any().any()


def test_handbook_models_rank_an_obvious_signal_first() -> None:
    rng = np.random.default_rng(0)
    n = 600
    data = pd.DataFrame(rng.normal(size=(n, len(baseline.FEATURES))), columns=baseline.FEATURES)
    data["label"] = (data["TX_AMOUNT"] > 1.2).astype(np.int64)
    scores = baseline.fit_predict(data.iloc[:400], data.iloc[400:])
    assert set(scores) == {"baseline_lr", "baseline_rf"}
    truth = data["label"].iloc[400:].to_numpy()
    for name, s in scores.items():
        assert s.shape == (200,)
        assert s[truth == 1].mean() > s[truth == 0].mean() + 0.5, name

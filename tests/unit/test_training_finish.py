"""The columnar finishing equals `features.all_features` (the scorer's function) bit for bit."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd

from services.common import features
from training import dataset, finish

T0 = 1_767_225_600_000
MIN = 60_000
LATENESS = 300_000


def _random_rows(seed: int, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Random transactions folded by the stream's code; each row holds the states before it
    (or nothing, for a first-seen card or terminal), and the expected features."""
    rnd = random.Random(seed)
    cards: dict[str, features.CardState] = {}
    terminals: dict[str, features.TerminalState] = {}
    rows, expected = [], []
    now = T0
    for i in range(n):
        # Bursts of seconds and gaps of days, so every window sees empty and full tiles.
        now += rnd.choice([0, 1, 999, 40_000, 7 * MIN, 3_600_000, 86_400_000, 9 * 86_400_000])
        card_id = f"c{rnd.randrange(12)}"
        terminal_id = f"t{rnd.randrange(40 if rnd.random() < 0.5 else 4)}"
        amount = rnd.choice([round(rnd.uniform(0.01, 500), 2), 10.0, 0.1, 1e-7, 33.333333])
        card = cards.get(card_id)
        terminal = terminals.get(terminal_id)
        row: dict[str, object] = {"amount": amount, "event_ms": now}
        card_row = features.to_list_row(card) if card else {}
        terminal_row = features.terminal_to_list_row(terminal) if terminal else {}
        for column in features.STATE_COLUMNS:
            row[column] = card_row.get(column, math.nan)
        for column in features.TERMINAL_STATE_COLUMNS:
            row[column] = terminal_row.get(column, None)
        rows.append(row)
        expected.append(
            features.feature_vector(
                features.all_features(
                    features.from_row(card_row) if card else None, amount, now, terminal
                )
            )
        )
        card = cards.setdefault(card_id, features.CardState())
        features.apply_transaction(card, f"x{i}", now, amount, LATENESS, terminal_id)
        terminal = terminals.setdefault(terminal_id, features.TerminalState())
        features.apply_terminal_transaction(terminal, now)
        if rnd.random() < 0.2:
            features.apply_terminal_label(terminal, f"x{i}", now, True)
    return pd.DataFrame(rows), np.asarray(expected, dtype=np.float64)


def test_columnar_features_equal_the_scorers_function_for_every_value() -> None:
    rows, expected = _random_rows(seed=5, n=3_000)
    got, no_history, no_terminal = dataset.finish_features(rows)
    same = (got == expected) | (np.isnan(got) & np.isnan(expected))
    bad = [
        (name, int((~same[:, j]).sum()))
        for j, name in enumerate(features.FEATURE_NAMES)
        if not same[:, j].all()
    ]
    assert bad == []
    assert no_history == int(rows["last_event_ms"].isna().sum()) > 0
    assert no_terminal == int(rows["t_last_event_ms"].isna().sum()) > 0
    # The comparison covers what it should: risk from labels, several terminals, z-scores.
    names = list(features.FEATURE_NAMES)
    assert np.nanmax(got[:, names.index("terminal_risk_30d")]) > 0
    assert np.nanmax(got[:, names.index("card_distinct_terminals_24h")]) > 1
    assert not np.isnan(got[:, names.index("card_amount_zscore_30d")]).all()
    assert not np.isnan(got[:, names.index("card_amount_ratio_7d")]).all()
    assert not np.isnan(got[:, names.index("card_amount_cv_7d")]).all()
    assert np.nanmax(got[:, names.index("terminal_delayed_risk_30d")]) > 0
    assert np.nanmax(got[:, names.index("terminal_days_since_first_fraud")]) > np.nanmin(
        got[:, names.index("terminal_days_since_last_fraud")]
    )


def test_round6_is_pythons_round_including_near_ties() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate(
        [
            rng.uniform(-1e4, 1e4, 200_000),
            (np.arange(-50_000, 50_000) + 0.5) / 1e6,
            np.array([0.0, -0.0, 1e12 + 0.1234567, 2.5e-7, 0.0000015, math.inf, math.nan]),
        ]
    )
    got = finish.round6(values)
    want = np.array([round(float(v), 6) for v in values])
    assert ((got == want) | (np.isnan(got) & np.isnan(want))).all()

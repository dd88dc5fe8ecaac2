"""The transaction simulator reproduces the Fraud Detection Handbook's design, deterministically."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.common import events
from services.simulator import frauds, generate, transactions
from services.simulator.config import DAY_MS, S2_DAYS, S3_DAYS
from services.simulator.generate import COLUMNS, SimConfig, simulate
from services.simulator.world import build_world

SMALL = SimConfig(n_customers=200, n_terminals=300, n_days=30, seed=1)
# Big enough that the handbook's fixed 2 terminals / 3 customers a day give a realistic share.
REALISTIC = SimConfig(n_customers=2000, n_terminals=4000, n_days=30, seed=5)


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return simulate(SMALL)


@pytest.fixture(scope="module")
def realistic() -> pd.DataFrame:
    return simulate(REALISTIC)


def _day(df: pd.DataFrame, config: SimConfig) -> np.ndarray:
    return (df["event_ms"].to_numpy() - config.start_ms) // DAY_MS


def test_same_seed_gives_identical_frames(small: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(small, simulate(SMALL))


def test_different_seed_gives_different_transactions(small: pd.DataFrame) -> None:
    other = simulate(dataclasses.replace(SMALL, seed=2))
    assert len(other) != len(small) or not other["amount_minor"].equals(small["amount_minor"])
    assert not set(other["transaction_id"]) & set(small["transaction_id"])


def test_columns_and_dtypes_match_the_contract(small: pd.DataFrame) -> None:
    assert tuple(small.columns) == COLUMNS
    for column in ("amount_minor", "event_ms", "channel", "fraud_scenario"):
        assert small[column].dtype == np.int64, column
    assert small["is_fraud"].dtype == bool
    for column in ("transaction_id", "card_id", "terminal_id", "currency", "country"):
        assert all(isinstance(v, str) for v in small[column]), column
    assert small["transaction_id"].is_unique
    assert small["card_id"].str.fullmatch(r"card-\d{6}").all()
    assert small["terminal_id"].str.fullmatch(r"term-\d{6}").all()
    assert (small["currency"] == "EUR").all()
    assert set(small["country"]) <= {"FR", "DE", "ES", "IT", "NL"}
    assert set(small["channel"]) <= {1, 2, 4}
    assert small["merchant_category_code"].str.fullmatch(r"\d{4}").all()
    assert not small["card_id"].map(events.looks_like_pan).any()


def test_terminal_attributes_are_fixed_per_terminal(small: pd.DataFrame) -> None:
    per_terminal = small.groupby("terminal_id")[["channel", "merchant_category_code", "country"]]
    assert (per_terminal.nunique() == 1).all().all()
    assert (small["channel"] == 1).mean() > 0.6  # mostly card present


def test_events_are_sorted_and_inside_the_period(small: pd.DataFrame) -> None:
    event_ms = small["event_ms"]
    assert event_ms.is_monotonic_increasing
    assert event_ms.min() >= SMALL.start_ms
    assert event_ms.max() < SMALL.start_ms + SMALL.n_days * DAY_MS
    assert set(_day(small, SMALL)) == set(range(SMALL.n_days))


def test_times_of_day_centre_on_noon(realistic: pd.DataFrame) -> None:
    hours = (realistic["event_ms"] % DAY_MS) / 3_600_000
    assert 11.5 < hours.mean() < 12.5
    assert 5.0 < hours.std() < 6.0  # 20000 s ~ 5.6 h, slightly narrowed by dropping the tails


def test_amounts_are_positive_and_follow_the_customer_means(realistic: pd.DataFrame) -> None:
    assert (realistic["amount_minor"] > 0).all()
    genuine = realistic.loc[~realistic["is_fraud"], "amount_minor"] / 100
    # Customer means ~ U(5, 100): the overall genuine mean sits near 52.5.
    assert 45 < genuine.mean() < 60


def test_volume_follows_poisson_means_and_radius() -> None:
    world = build_world(REALISTIC)
    df = simulate(dataclasses.replace(REALISTIC, n_days=10))
    expected = generate.Simulator(REALISTIC).expected_events_per_day() * 10
    assert abs(len(df) - expected) < 0.05 * expected
    # Customers without a terminal in range never transact.
    idle = {f"card-{c:06d}" for c in np.flatnonzero(world.n_neighbours == 0)}
    assert not idle & set(df["card_id"])


def test_customers_only_pay_at_terminals_within_the_radius(small: pd.DataFrame) -> None:
    world = build_world(SMALL)
    customer = small["card_id"].str[5:].astype(int).to_numpy()
    terminal = small["terminal_id"].str[5:].astype(int).to_numpy()
    distance = np.hypot(
        world.customer_x[customer] - world.terminal_x[terminal],
        world.customer_y[customer] - world.terminal_y[terminal],
    )
    assert (distance < SMALL.radius).all()


def test_fraud_share_is_in_the_handbooks_range_with_all_three_scenarios(
    realistic: pd.DataFrame,
) -> None:
    share = realistic["is_fraud"].mean()
    assert 0.003 < share < 0.03
    assert set(realistic["fraud_scenario"]) == {0, 1, 2, 3}
    assert (realistic["is_fraud"] == (realistic["fraud_scenario"] > 0)).all()


def test_amounts_above_220_are_fraud(realistic: pd.DataFrame) -> None:
    assert (realistic.loc[realistic["amount_minor"] > 22_000, "is_fraud"]).all()
    s1 = realistic[realistic["fraud_scenario"] == 1]
    assert len(s1) > 0
    assert (s1["amount_minor"] > 22_000).all()


def test_compromised_terminals_make_all_their_transactions_fraud_for_28_days(
    realistic: pd.DataFrame,
) -> None:
    config = REALISTIC
    day = _day(realistic, config)
    terminal = realistic["terminal_id"].str[5:].astype(int).to_numpy()
    expected = np.zeros(len(realistic), dtype=bool)
    for event_day in range(config.n_days):
        hit = frauds.compromised_terminals(config.seed, event_day, config.n_terminals)
        expected |= np.isin(terminal, hit) & (day >= event_day) & (day < event_day + S2_DAYS)
    scenario = realistic["fraud_scenario"].to_numpy()
    assert expected.sum() > 0
    # Scenario 3 may override the label's scenario, never the fraud flag.
    assert (realistic["is_fraud"].to_numpy()[expected]).all()
    assert set(scenario[expected]) <= {2, 3}
    assert set(np.flatnonzero(scenario == 2)) <= set(np.flatnonzero(expected))


def test_compromised_customers_have_a_third_of_their_window_multiplied_by_five(
    realistic: pd.DataFrame,
) -> None:
    config = REALISTIC
    context = frauds.context_days(0, config.n_days)
    raw = transactions.generate_days(build_world(config), config, *context)
    genuine = raw.amount_minor[raw.day < config.n_days]
    scenario = realistic["fraud_scenario"].to_numpy()
    amount = realistic["amount_minor"].to_numpy()
    s3 = scenario == 3
    assert s3.sum() > 0
    np.testing.assert_array_equal(amount[s3], 5 * genuine[s3])
    np.testing.assert_array_equal(amount[~s3], genuine[~s3])

    day = _day(realistic, config)
    card = realistic["card_id"].to_numpy()
    events_by_card: dict[int, list[int]] = {}
    for event_day in range(config.n_days):
        for victim in frauds.compromised_customers(config.seed, event_day, config.n_customers):
            events_by_card.setdefault(int(victim), []).append(event_day)
    checked = 0
    for victim, days in events_by_card.items():
        # A single compromise wholly inside the period: exactly a third of its window is fraud.
        if len(days) != 1 or days[0] + S3_DAYS > config.n_days:
            continue
        window = (card == f"card-{victim:06d}") & (day >= days[0]) & (day < days[0] + S3_DAYS)
        assert s3[window].sum() == window.sum() // 3
        checked += 1
    assert checked > 10
    victims = {f"card-{v:06d}" for v in events_by_card}
    assert set(card[s3]) <= victims


def test_a_day_range_equals_the_same_days_of_a_longer_run(small: pd.DataFrame) -> None:
    middle = generate.simulate_days(SMALL, 10, 20)
    day = _day(small, SMALL)
    expected = small[(day >= 10) & (day < 20)].reset_index(drop=True)
    pd.testing.assert_frame_equal(middle, expected)
    shorter = simulate(dataclasses.replace(SMALL, n_days=20))
    pd.testing.assert_frame_equal(shorter, small[day < 20].reset_index(drop=True))


def test_naive_start_is_read_as_utc() -> None:
    config = SimConfig(start=datetime(2026, 1, 1))
    assert config.start == datetime(2026, 1, 1, tzinfo=UTC)
    assert config.start_ms == 1_767_225_600_000


def test_invalid_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="n_customers"):
        SimConfig(n_customers=2)
    with pytest.raises(ValueError, match="currency"):
        SimConfig(currency="XXX")


def test_parquet_round_trip_keeps_values_and_dtypes(small: pd.DataFrame, tmp_path: Path) -> None:
    path = generate.write_parquet(small, tmp_path / "sub" / "tx.parquet")
    pd.testing.assert_frame_equal(generate.read_parquet(path), small)
    assert generate.labels_path(path) == tmp_path / "sub" / "tx.labels.parquet"

"""Backfill, dataset, training and promotion over a real Feast repo (file offline store, Redis).

One fresh repo for the module (its own project and data): the session repo is shared with
other tests that write card state of their own.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.common import currency, feast_repo, features
from services.common.model_registry import ModelRegistry
from services.common.settings import FeastSettings, RedisSettings, TrainingSettings
from services.monitor import reference
from training import backfill, cli, dataset, pipeline, report, split

DAY = 86_400_000
D0 = 1_767_225_600_000  # 2026-01-01T00:00Z
DAYS = 25
LATENESS = 300_000


def synthetic(seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """~4k transactions of 200 cards over 25 days; compromised cards get bursts of big amounts.

    Columns as the simulator writes them. Labels arrive 1-4 days after each fraud.
    """
    rng = np.random.default_rng(seed)
    n_cards, n_genuine = 200, 3_800
    cards = rng.integers(0, n_cards, n_genuine)
    rows = [
        {
            "card_id": f"card-{c:03d}",
            "event_ms": int(D0 + rng.integers(0, DAYS * DAY)),
            "amount_minor": int(rng.lognormal(3.2, 0.7) * 100),
            "is_fraud": False,
        }
        for c in cards
    ]
    # One burst per compromised card, spread over the whole period.
    for n, card in enumerate(rng.choice(n_cards, 60, replace=False)):
        start = D0 + int((n + 0.5) * DAYS * DAY / 60)
        for k in range(int(rng.integers(3, 7))):
            rows.append(
                {
                    "card_id": f"card-{card:03d}",
                    "event_ms": start + k * int(rng.integers(60_000, 600_000)),
                    "amount_minor": int(rng.uniform(150, 900) * 100),
                    "is_fraud": True,
                }
            )
    df = pd.DataFrame(rows).drop_duplicates(["card_id", "event_ms"])
    df = df.sort_values("event_ms", kind="stable").reset_index(drop=True)
    df["transaction_id"] = [f"tx-{i:05d}" for i in range(len(df))]
    df["terminal_id"] = [f"term-{i % 50:02d}" for i in range(len(df))]
    # A few yen cards: amounts must go through the shared minor-unit conversion.
    df["currency"] = np.where(df["card_id"].str.endswith("7"), "JPY", "EUR")
    df.loc[df["currency"] == "JPY", "amount_minor"] //= 100
    df["channel"] = "ecom"
    df["merchant_category_code"] = "5411"
    df["country"] = "DE"
    df["fraud_scenario"] = np.where(df["is_fraud"], "burst", "")
    frauds = df[df["is_fraud"]]
    labels = pd.DataFrame(
        {
            "transaction_id": frauds["transaction_id"],
            "card_id": frauds["card_id"],
            "terminal_id": frauds["terminal_id"],
            "is_fraud": True,
            "transaction_ms": frauds["event_ms"],
            "reported_ms": frauds["event_ms"] + rng.integers(DAY, 4 * DAY, len(frauds)),
        }
    )
    return df, labels


@dataclass(frozen=True)
class Backfilled:
    feast: FeastSettings
    redis: RedisSettings
    repo_dir: Path
    transactions: pd.DataFrame
    labels: pd.DataFrame
    stats: backfill.BackfillStats


@pytest.fixture(scope="module")
def backfilled(
    tmp_path_factory: pytest.TempPathFactory, redis_settings: RedisSettings
) -> Iterator[Backfilled]:
    feast = FeastSettings(
        work_dir=tmp_path_factory.mktemp("training_repo"),
        project=f"trtest_{uuid.uuid4().hex[:10]}",
    )
    repo_dir = feast_repo.prepare_and_apply(feast, redis_settings)
    txs, labels = synthetic()
    # The same transaction delivered twice: counted once.
    resent = txs.iloc[[100]].assign(event_ms=txs.iloc[100]["event_ms"] + 10_000)
    stats = backfill.backfill(
        repo_dir, pd.concat([txs, resent], ignore_index=True), labels, LATENESS, online=True
    )
    yield Backfilled(feast, redis_settings, repo_dir, txs, labels, stats)


def plain_features(
    txs: pd.DataFrame, labels: pd.DataFrame
) -> tuple[dict[str, list[float]], dict[str, features.CardState]]:
    """Per transaction id, the model input from a direct fold: no Feast, no parquet. Labels are
    folded into terminal state at their reported time (after transactions of the same ms)."""
    states: dict[str, features.CardState] = {}
    terminals: dict[str, features.TerminalState] = {}
    out: dict[str, list[float]] = {}
    timeline = [(int(tx.event_ms), 0, tx) for tx in txs.itertuples()]
    timeline += [(int(lb.reported_ms), 1, lb) for lb in labels.itertuples()]
    for when, kind, item in sorted(timeline, key=lambda e: (e[0], e[1])):
        terminal = terminals.setdefault(item.terminal_id, features.TerminalState())
        if kind == 1:
            features.apply_terminal_label(
                terminal, item.transaction_id, int(item.transaction_ms), bool(item.is_fraud)
            )
            continue
        amount = currency.to_major(int(item.amount_minor), str(item.currency))
        state = states.get(item.card_id)
        out[item.transaction_id] = features.feature_vector(
            features.all_features(
                state.copy() if state else None,
                amount,
                when,
                terminal.copy() if terminal.last_event_ms or terminal.frauds else None,
            )
        )
        if state is None:
            state = states[item.card_id] = features.CardState()
        outcome = features.apply_transaction(
            state, item.transaction_id, when, amount, LATENESS, item.terminal_id
        )
        # A terminal counts what its card counted, as the stream forwards it.
        if outcome is features.Outcome.APPLIED:
            features.apply_terminal_transaction(terminal, when)
    return out, states


def test_backfill_counts_each_transaction_once_and_fills_the_online_store(
    backfilled: Backfilled,
) -> None:
    stats = backfilled.stats
    assert stats.applied == len(backfilled.transactions)
    assert stats.duplicates == 1
    assert stats.late == 0
    assert stats.labels == len(backfilled.labels)
    assert stats.online_cards == stats.cards == backfilled.transactions["card_id"].nunique()
    assert stats.online_terminals == stats.terminals == 50

    _, final = plain_features(backfilled.transactions, backfilled.labels)
    card = "card-017"  # a JPY card
    store = feast_repo.open_store(backfilled.repo_dir)
    got = store.get_online_features(
        features=feast_repo.feature_refs(), entity_rows=[{"card_id": card}]
    ).to_dict()
    online = features.from_row({k: v[0] for k, v in got.items()})
    assert online is not None
    assert features.to_row(online) == features.to_row(final[card])


def test_dataset_rows_match_a_plain_recomputation_of_every_feature(
    backfilled: Backfilled,
) -> None:
    txs = backfilled.transactions
    start, end = D0 + 3 * DAY, D0 + 20 * DAY
    cutoff = D0 + 15 * DAY
    frame, stats = dataset.build_dataset(backfilled.repo_dir, cutoff, start_ms=start, end_ms=end)

    in_window = txs[(txs["event_ms"] >= start) & (txs["event_ms"] < end)]
    assert stats.rows == len(frame) == len(in_window)
    assert set(frame["transaction_id"]) == set(in_window["transaction_id"])

    expected, _ = plain_features(txs, backfilled.labels)
    got = frame[list(features.FEATURE_NAMES)].to_numpy()
    want = np.array([expected[t] for t in frame["transaction_id"]])
    same = np.isclose(got, want, rtol=0, atol=1e-9) | (np.isnan(got) & np.isnan(want))
    mismatched_rows = int((~same.all(axis=1)).sum())
    assert mismatched_rows == 0

    known = backfilled.labels[backfilled.labels["reported_ms"] <= cutoff]["transaction_id"]
    assert set(frame.loc[frame["label"] == 1, "transaction_id"]) == set(known) & set(
        in_window["transaction_id"]
    )


def settings(model_dir: Path, min_data_in_leaf: int = 20) -> TrainingSettings:
    return TrainingSettings(
        model_dir=model_dir,
        num_boost_round=80,
        early_stopping_rounds=15,
        validation_days=1,
        min_data_in_leaf=min_data_in_leaf,
    )


def test_training_promotes_a_first_model_then_only_one_at_least_as_good(
    backfilled: Backfilled, tmp_path: Path
) -> None:
    cutoff = D0 + DAYS * DAY
    good = settings(tmp_path / "models")

    first = pipeline.run_training(backfilled.feast, backfilled.redis, good, cutoff_ms=cutoff)
    registry = ModelRegistry(tmp_path / "models")
    assert first.promoted
    assert first.reason == "no champion yet"
    assert registry.champion_version() == first.version
    meta = json.loads((registry.get(first.version).directory / "metadata.json").read_text())
    assert meta["feature_names"] == list(features.FEATURE_NAMES)
    assert meta["feature_service"] == feast_repo.FEATURE_SERVICE
    assert meta["champion_metrics"] is None
    assert meta["window"]["test_end_ms"] == first.window.test_end_ms == cutoff
    assert meta["rows"]["train_positives"] > 0 and meta["rows"]["test_positives"] > 0
    assert meta["best_iteration"] >= 1
    assert set(meta["library_versions"]) >= {"lightgbm", "feast", "numpy", "pandas"}
    assert meta["code_version"] and meta["code_version"] != "unknown"
    assert {"train_start", "train_end", "test_start", "test_end", "cutoff"} <= set(meta["window"])
    rows = meta["rows"]
    assert rows["train"] + rows["test"] <= rows["dataset"]
    # Both kinds of missing history are counted and kept (left-joined back), never dropped.
    assert 0 < rows["no_history"] < rows["dataset"]
    # Every terminal of the synthetic log is busy from day 0: none is new in the window.
    assert rows["no_terminal_history"] == 0
    assert rows["feast_dropped"] <= min(rows["no_history"], rows["no_terminal_history"])
    assert meta["report"] == report.REPORT_NAME
    assert_report(registry.get(first.version).directory, first.metrics, champion=None)
    assert first.report_path == registry.get(first.version).directory / report.REPORT_NAME
    # The monitor's drift baseline is saved with the version, over every model feature.
    drift = reference.load(registry.get(first.version).directory)
    assert set(drift.features) == set(features.FEATURE_NAMES)
    assert drift.rows == rows["train"]
    # A burst of big amounts is easy to learn: far above the 0.5 of a coin flip.
    assert first.metrics["auc_roc"] > 0.9
    assert first.metrics["average_precision"] > 0.5
    assert first.window == split.choose_window(D0, cutoff - 1, 7, 7, 7, 1)

    # Same data, same seed: an equal challenger is promoted, with the comparison recorded.
    second = pipeline.run_training(backfilled.feast, backfilled.redis, good, cutoff_ms=cutoff)
    assert second.champion_version == first.version
    assert second.champion_metrics is not None
    assert second.champion_metrics["average_precision"] == pytest.approx(
        first.metrics["average_precision"]
    )
    assert second.promoted
    assert registry.get(second.version).metadata["decision"] == second.reason
    assert_report(registry.get(second.version).directory, second.metrics, champion=first.version)
    assert registry.champion_version() == second.version

    # A model that cannot split at all scores every row alike: worse, so not promoted.
    crippled = settings(tmp_path / "models", min_data_in_leaf=1_000_000)
    third = pipeline.run_training(backfilled.feast, backfilled.redis, crippled, cutoff_ms=cutoff)
    assert not third.promoted
    assert third.metrics["average_precision"] < second.metrics["average_precision"]
    assert registry.champion_version() == second.version
    third_meta = registry.get(third.version).metadata
    assert third_meta["promoted"] is False
    assert "< champion" in third_meta["decision"]
    assert not math.isnan(third_meta["champion_metrics"]["average_precision"])


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_report(directory: Path, metrics: dict[str, float], champion: str | None) -> None:
    """report.md exists, embeds every plot (each a real, non-trivial PNG) and holds the metrics."""
    text = (directory / report.REPORT_NAME).read_text()
    for name in report.PLOTS:
        data = (directory / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 5_000, name
        assert f"]({name})" in text
    for key in ("auc_roc", "average_precision", "card_precision_at_100", "brier"):
        assert f"{metrics[key]:.4f}" in text
    assert "Card precision@100" in text
    if champion is None:
        assert "No champion compared" in text
    else:
        assert f"champion {champion}" in text


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_train_exits_zero_when_trained_and_one_without_enough_data(
    backfilled: Backfilled,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("FEAST_WORK_DIR", str(backfilled.repo_dir))
    monkeypatch.setenv("FEAST_PROJECT", backfilled.feast.project)
    monkeypatch.setenv("TRAINING_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("TRAINING_NUM_BOOST_ROUND", "30")
    monkeypatch.setenv("TRAINING_PROGRESS_EVERY", "10")
    monkeypatch.setenv("TRAINING_REPORT_DIR", str(tmp_path / "reports"))
    registry = ModelRegistry(tmp_path / "models")

    with caplog.at_level(logging.INFO):
        assert run_cli(["train", "--cutoff", "2026-01-26T00:00:00Z"]) == 0
    champion = registry.champion_version()
    assert champion is not None
    # Progress: the steps, and boosting rounds with their share done.
    messages = [r.getMessage() for r in caplog.records]
    for step in ("step 1/4", "step 2/4", "step 3/4", "step 4/4"):
        assert any(m.startswith(step) for m in messages), step
    rounds = [m for m in messages if m.startswith("final fit: round ")]
    assert rounds and rounds[-1].split("(")[1].startswith("100%")
    # The report's copy in the configured folder, next to the one in the registry.
    copied = tmp_path / "reports" / champion / report.REPORT_NAME
    assert copied.read_text() == (registry.get(champion).directory / report.REPORT_NAME).read_text()

    # Ten days of data cannot hold 7 + 7 + 7: a clear failure, the champion stays.
    assert run_cli(["train", "--cutoff", "2026-01-10T00:00:00Z"]) == 1
    assert registry.champion_version() == champion
    assert registry.versions() == [champion]

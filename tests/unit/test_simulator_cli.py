"""`fraudctl simulate` writes the transactions and their labels as parquet."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from services.simulator import cli, generate


def _run(*argv: str) -> int:
    # Only this subcommand: other services' CLIs are not this test's concern.
    parser = argparse.ArgumentParser(prog="fraudctl")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simulate", *argv])
    return int(args.func(args))


def test_simulate_writes_transactions_and_sibling_labels(tmp_path: Path) -> None:
    out = tmp_path / "history.parquet"
    code = _run(
        "--customers", "100", "--terminals", "150", "--days", "7", "--seed", "3",
        "--start", "2026-01-05", "--out", str(out),
    )  # fmt: skip
    assert code == 0
    config = generate.SimConfig(
        n_customers=100,
        n_terminals=150,
        n_days=7,
        seed=3,
        start=datetime(2026, 1, 5, tzinfo=UTC),
    )
    expected = generate.simulate(config)
    pd.testing.assert_frame_equal(generate.read_parquet(out), expected)
    labels = generate.read_parquet(tmp_path / "history.labels.parquet")
    pd.testing.assert_frame_equal(labels, generate.labels_for(expected, seed=3))


def test_simulate_without_a_destination_is_a_usage_error() -> None:
    assert _run("--days", "1") == 2


def test_labels_without_kafka_is_a_usage_error(tmp_path: Path) -> None:
    assert _run("--days", "1", "--out", str(tmp_path / "x.parquet"), "--labels") == 2

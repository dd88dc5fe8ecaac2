"""`fraudctl bench train`: wall time, CPU time and peak memory of a full retrain at scale."""

from __future__ import annotations

import argparse


def register(bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = bench_sub.add_parser(
        "train",
        help="a full retrain (dataset + fit + evaluation) on N simulated transactions: "
        "wall time, CPU time, peak memory",
    )
    bench.add_argument(
        "--transactions",
        type=int,
        default=10_000_000,
        help="transactions in the training window (the world is sized to it)",
    )
    bench.add_argument(
        "--work-dir",
        default=".fraudscore/bench-train",
        help="where the offline store and the model registry of the run go",
    )
    bench.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the offline store of the last run in --work-dir with the same "
        "--transactions (skips simulation and backfill; backfill_s is the earlier one)",
    )
    bench.add_argument("--seed", type=int, default=0, help="simulation seed")
    bench.add_argument(
        "--history-days",
        type=int,
        default=0,
        help="days of feature history simulated and backfilled before the training window "
        "(not counted in --transactions); 0: the window's own data only",
    )
    bench.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from services.bench import train

    if args.transactions < 1_000:
        raise SystemExit("--transactions must be >= 1000")
    if args.history_days < 0:
        raise SystemExit("--history-days must be >= 0")
    figures = train.run(
        train.BenchConfig(
            transactions=args.transactions,
            work_dir=Path(args.work_dir),
            reuse=args.reuse,
            seed=args.seed,
            history_days=args.history_days,
        )
    )
    # The one line a script reads: everything before it is logging.
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0

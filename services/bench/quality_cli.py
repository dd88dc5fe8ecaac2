"""`fraudctl bench quality`: fraudscore vs the Fraud Detection Handbook's baselines."""

from __future__ import annotations

import argparse


def register(bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    quality = bench_sub.add_parser(
        "quality",
        help="AUC, AP and CP@100 of fraudscore and the handbook baselines on the same split",
    )
    quality.add_argument("--customers", type=int, default=5000, help="simulated customers")
    quality.add_argument("--terminals", type=int, default=10000, help="simulated terminals")
    quality.add_argument("--days", type=int, default=183, help="days of the simulated world")
    quality.add_argument("--seed", type=int, default=0, help="simulation seed")
    quality.add_argument(
        "--history-days",
        type=int,
        default=40,
        help="days simulated before the training period (feature warm-up; >= 37 is exact)",
    )
    quality.add_argument(
        "--label-feed",
        choices=("realistic", "handbook"),
        default="realistic",
        help="fraud labels for fraudscore's stream features: the simulator's chargeback delays "
        "(realistic) or all exactly 7 days late, the baseline's own assumption (handbook)",
    )
    quality.add_argument(
        "--work-dir",
        default=None,
        help="where the temporary offline store goes (default: the system temp dir)",
    )
    quality.set_defaults(func=_quality)


def _quality(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from services.bench import quality

    if args.customers < 3 or args.terminals < 2 or args.history_days < 0:
        raise SystemExit("need --customers >= 3, --terminals >= 2, --history-days >= 0")
    config = quality.QualityConfig(
        n_customers=args.customers,
        n_terminals=args.terminals,
        n_days=args.days,
        seed=args.seed,
        history_days=args.history_days,
        label_feed=args.label_feed,
        work_dir=Path(args.work_dir) if args.work_dir else None,
    )
    figures = quality.run(config)
    # The one line a script reads: everything before it is logging.
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0

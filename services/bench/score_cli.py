"""`fraudctl bench score`: scorer latency under open-loop load."""

from __future__ import annotations

import argparse


def register(bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    score = bench_sub.add_parser(
        "score",
        help="scorer latency under open-loop load (fast Redis path vs. Feast baseline)",
    )
    score.add_argument("--rps", type=float, default=1000.0, help="requests per second")
    score.add_argument("--duration", type=float, default=60.0, help="seconds measured")
    score.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    score.add_argument(
        "--target",
        default=None,
        help="host:port of a running scorer, or several comma-separated (round robin); "
        "default: start everything here",
    )
    score.add_argument(
        "--replicas",
        type=int,
        default=2,
        help="scorer processes to start and spread the load over (default 2: one per core of "
        "the machine the targets are set on)",
    )
    score.add_argument(
        "--token", default=None, help="bearer token for --target (default: SCORER_AUTH_TOKEN)"
    )
    score.add_argument("--cards", type=int, default=3000, help="cards with a stored state")
    score.add_argument(
        "--no-baseline", action="store_true", help="skip the Feast get_online_features baseline"
    )
    score.add_argument(
        "--baseline-duration",
        type=float,
        default=None,
        help="seconds measured for the baseline (default: --duration)",
    )
    score.set_defaults(func=_score)


def _score(args: argparse.Namespace) -> int:
    import json
    import sys

    from services.bench import score
    from services.common.settings import ScorerSettings

    if args.rps <= 0 or args.duration <= 0:
        raise SystemExit("--rps and --duration must be positive")
    if args.replicas < 1:
        raise SystemExit("--replicas must be at least 1")
    token = args.token
    if token is None and args.target:
        secret = ScorerSettings().auth_token
        token = secret.get_secret_value() if secret is not None else None
    figures = score.run(
        args.rps,
        args.duration,
        target=args.target,
        token=token,
        cards=args.cards,
        baseline=not args.no_baseline,
        baseline_duration_s=args.baseline_duration,
        warmup_s=args.warmup,
        replicas=args.replicas,
    )
    # The one line a script reads: everything before it is logging.
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0

"""`fraudctl bench stream`: the stream worker's throughput and freshness vs. a naive path."""

from __future__ import annotations

import argparse


def register(bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stream = bench_sub.add_parser(
        "stream",
        help="stream worker: events/s from a Kafka backlog to Redis, freshness at a set rate, "
        "and a one-Feast-push-per-event baseline",
    )
    stream.add_argument("--events", type=int, default=200_000, help="backlog size for events_per_s")
    stream.add_argument(
        "--rate", type=float, default=5000.0, help="events/s published for freshness"
    )
    stream.add_argument("--duration", type=float, default=30.0, help="seconds of freshness load")
    stream.add_argument(
        "--baseline-events",
        type=int,
        default=2000,
        help="events through the naive path (extrapolated to events/s)",
    )
    stream.add_argument(
        "--cards", type=int, default=None, help="distinct cards in the backlog (default events/20)"
    )
    stream.add_argument(
        "--bootstrap",
        default=None,
        help="host:port of a running Kafka (default: start the embedded broker)",
    )
    stream.set_defaults(func=_stream)


def _stream(args: argparse.Namespace) -> int:
    import json
    import sys

    from services.bench import stream

    if args.events <= 0 or args.rate <= 0 or args.duration <= 0 or args.baseline_events <= 0:
        raise SystemExit("--events, --rate, --duration and --baseline-events must be positive")
    figures = stream.run(
        args.events,
        args.rate,
        args.duration,
        baseline_events=args.baseline_events,
        bootstrap=args.bootstrap,
        cards=args.cards,
    )
    # The one line a script reads: everything before it is logging.
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0

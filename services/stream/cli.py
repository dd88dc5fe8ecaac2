"""`fraudctl stream` and `python -m services.stream`: run the stream processor worker."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from services.common import logs

_HELP = (
    "run the stream worker: transactions and labels from Kafka into Feast, malformed ones to the "
    "DLQ (configured by KAFKA_*, REDIS_*, FEAST_*, STREAM_* environment variables)"
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("stream", help=_HELP, description=_HELP)
    parser.set_defaults(func=_stream)


def _stream(args: argparse.Namespace) -> int:
    # faust and feast are heavy imports: only when the worker actually runs.
    from services.stream.app import run_worker

    return run_worker()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m services.stream` (independent of the other services' CLIs)."""
    parser = argparse.ArgumentParser(prog="python -m services.stream", description=_HELP)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure()
    return _stream(args)

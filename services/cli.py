"""`fraudctl`: one console script, one subcommand per job.

Each service registers its own subcommand from a light `cli` module and imports its heavy
dependencies (faust, feast, lightgbm) only when that subcommand runs, so `fraudctl --help`
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from services.common import logs

#: Modules exposing `register(subparsers)`; each sets `func=` on its parser(s).
_COMMAND_MODULES = (
    "services.dev.cli",  # dev, demo
    "services.simulator.cli",  # simulate
    "services.stream.cli",  # stream
    "services.scorer.cli",  # serve, model
    "training.cli",  # train
    "services.bench.cli",  # bench
    "services.monitor.cli",  # monitor
    "services.admin.cli",  # init
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fraudctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure()
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

"""`fraudctl bench ...`: measurements whose last output line is one JSON object.

Each benchmark registers its own parser from a light `*_cli` module listed here, and imports its
heavy dependencies only when it runs.
"""

from __future__ import annotations

import argparse
import importlib

#: Modules exposing `register(bench_subparsers)`; each sets `func=` on its parser.
_BENCH_MODULES = (
    "services.bench.score_cli",
    "services.bench.quality_cli",
    "services.bench.train_cli",
    "services.bench.stream_cli",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="run a benchmark; the last line printed is JSON")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    for name in _BENCH_MODULES:
        importlib.import_module(name).register(bench_sub)

"""`fraudctl serve` (the gRPC scorer) and `fraudctl model rollback`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the gRPC scorer (configured by SCORER_*, FEAST_*, REDIS_*, OTEL_* variables)",
    )
    _add_serve_args(serve)
    serve.set_defaults(func=_serve)

    model = sub.add_parser("model", help="manage the serving model")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    rollback = model_sub.add_parser(
        "rollback", help="make the previous champion serve again (scorers pick it up)"
    )
    rollback.add_argument(
        "--model-dir",
        default=None,
        help="the model registry folder (default: SCORER_MODEL_DIR or .fraudscore/models)",
    )
    rollback.set_defaults(func=_rollback)


def _add_serve_args(parser: argparse.ArgumentParser) -> None:
    # Resolved in the handler, not here: a bad environment must not break `fraudctl --help`.
    parser.add_argument(
        "--address", default=None, help="listen address (default: SCORER_ADDRESS or [::]:50051)"
    )


def _serve(args: argparse.Namespace) -> int:
    from services.scorer.server import serve

    return serve(address=args.address)


def _rollback(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from services.common.model_registry import ModelRegistry, RegistryError
    from services.common.settings import ScorerSettings

    log = logging.getLogger("fraudscore.model")
    model_dir = Path(args.model_dir) if args.model_dir else ScorerSettings().model_dir
    try:
        version = ModelRegistry(model_dir).rollback()
    except RegistryError as exc:
        log.error("rollback refused: %s", exc)
        return 1
    log.info("champion is now %s", version)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m services.scorer`: the `serve` command on its own."""
    from services.common import logs

    parser = argparse.ArgumentParser(prog="python -m services.scorer", description=__doc__)
    _add_serve_args(parser)
    args = parser.parse_args(argv)
    logs.configure()
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())

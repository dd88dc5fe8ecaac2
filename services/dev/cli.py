"""`fraudctl dev up` (the local stack until Ctrl-C) and `fraudctl demo` (the whole path)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = sub.add_parser("dev", help="run the local stack")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="ACTION")
    up = dev_sub.add_parser(
        "up",
        help="embedded broker (unless KAFKA_BOOTSTRAP_SERVERS), topics, feast apply, "
        "stream worker and scorer; Ctrl-C stops everything",
    )
    up.add_argument("--run-dir", type=Path, default=Path(".fraudscore/dev"))
    up.add_argument(
        "--no-services",
        action="store_true",
        help="only broker, topics and Feast; run stream/scorer yourself",
    )
    up.set_defaults(func=_dev_up)

    demo = sub.add_parser("demo", help="the whole stack end to end with simulated traffic")
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of live scoring before stopping (default: until Ctrl-C)",
    )
    demo.add_argument("--customers", type=int, default=1000)
    demo.add_argument("--terminals", type=int, default=2000)
    demo.add_argument("--days", type=int, default=42, help="days of simulated history")
    demo.add_argument("--rate", type=float, default=50.0, help="live transactions per second")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--run-dir", type=Path, default=Path(".fraudscore/demo"))
    demo.set_defaults(func=_demo)


def _dev_up(args: argparse.Namespace) -> int:
    import logging
    import signal
    import time

    from services.dev.stack import LocalStack, StackError

    log = logging.getLogger("fraudscore.dev")
    stack = LocalStack(run_dir=args.run_dir.resolve())
    # SIGTERM ends the stack like Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        stack.start_infrastructure()
        if not args.no_services:
            stack.start_stream()
            address = stack.start_scorer(require_model=False)
            log.info("scorer: %s", address)
        log.info(
            "stack up: KAFKA_BOOTSTRAP_SERVERS=%s FEAST_WORK_DIR=%s; Ctrl-C to stop",
            stack.kafka.bootstrap_servers,
            stack.repo_dir,
        )
        while True:
            stack.check_alive()
            time.sleep(1)
    except StackError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.info("stopping")
        return 0
    finally:
        stack.stop()


def _demo(args: argparse.Namespace) -> int:
    import signal

    from services.dev.demo import DemoOptions, run

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return run(
        DemoOptions(
            duration_s=args.duration,
            customers=args.customers,
            terminals=args.terminals,
            days=args.days,
            rate=args.rate,
            seed=args.seed,
            run_dir=args.run_dir,
        )
    )

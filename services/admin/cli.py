"""`fraudctl init`: topics and `feast apply`, once per deployment (idempotent)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = sub.add_parser(
        "init",
        help="check Redis and Kafka, create the topics, prepare and apply the Feast repo "
        "(KAFKA_*, REDIS_*, FEAST_* variables); safe to re-run",
    )
    init.add_argument(
        "--kafka-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the broker to answer (default 120: it may still be starting)",
    )
    init.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    import logging

    from services.admin.init import InitError, run
    from services.common.settings import FeastSettings, KafkaSettings, RedisSettings

    log = logging.getLogger("fraudscore.init")
    try:
        result = run(KafkaSettings(), RedisSettings(), FeastSettings(), args.kafka_timeout)
    except InitError as exc:
        log.error("init failed: %s", exc)
        return 1
    log.info("init done: %s topics, Feast repo %s", len(result.topics), result.repo_dir)
    return 0

"""`fraudctl simulate`: generate handbook-style transactions, write parquet and/or publish them."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path


def _iso_start(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "simulate",
        help="simulated card transactions (Fraud Detection Handbook design) to parquet/Kafka",
    )
    parser.add_argument("--customers", type=int, default=5000, help="number of cards")
    parser.add_argument("--terminals", type=int, default=10000, help="number of terminals")
    parser.add_argument("--days", type=int, default=183, help="days to simulate")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    parser.add_argument(
        "--start",
        type=_iso_start,
        default=None,
        help="first day, ISO date or datetime, UTC unless it says otherwise (default 2026-04-01)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write transactions to this parquet file and labels next to it (X.labels.parquet)",
    )
    parser.add_argument(
        "--kafka", action="store_true", help="publish transactions to KAFKA_BOOTSTRAP_SERVERS"
    )
    parser.add_argument(
        "--rate", type=float, default=None, help="events per second when publishing (default: max)"
    )
    parser.add_argument(
        "--labels", action="store_true", help="with --kafka, also publish the fraud labels"
    )
    parser.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    import dataclasses
    import logging

    from confluent_kafka import KafkaException

    from services.common import kafka
    from services.common.settings import KafkaSettings
    from services.simulator import generate, producer

    log = logging.getLogger("fraudscore.simulate")
    if not args.out and not args.kafka:
        log.error("nothing to do: give --out PATH and/or --kafka")
        return 2
    if args.labels and not args.kafka:
        log.error("--labels publishes to Kafka: add --kafka")
        return 2
    try:
        config = generate.SimConfig(
            n_customers=args.customers,
            n_terminals=args.terminals,
            n_days=args.days,
            seed=args.seed,
        )
        if args.start:
            config = dataclasses.replace(config, start=args.start)
    except ValueError as exc:
        log.error("bad simulation options: %s", exc)
        return 2

    df = generate.simulate(config)
    labels = generate.labels_for(df, seed=config.seed)
    by_scenario = df["fraud_scenario"].value_counts().sort_index().to_dict()
    log.info(
        "simulated %s transactions over %s days from %s: %.3f%% fraud, by scenario %s",
        len(df),
        config.n_days,
        config.start.date().isoformat(),
        100 * df["is_fraud"].mean() if len(df) else 0.0,
        by_scenario,
    )
    if args.out:
        out = generate.write_parquet(df, args.out)
        labels_out = generate.write_parquet(labels, generate.labels_path(out))
        log.info("wrote %s and %s (%s labels)", out, labels_out, len(labels))
    if args.kafka:
        from services.common import telemetry

        settings = KafkaSettings()
        # With OTEL_EXPORTER_OTLP_ENDPOINT set, publishes are traced into the stream's spans.
        telemetry.configure_tracing("fraudscore-simulator")
        try:
            kafka.ensure_topics(settings, [settings.transactions_topic, settings.labels_topic])
            sent = producer.produce_transactions(settings, df, rate=args.rate)
            log.info("published %s transactions to %s", sent, settings.transactions_topic)
            if args.labels:
                sent = producer.produce_labels(settings, labels, rate=args.rate)
                log.info("published %s labels to %s", sent, settings.labels_topic)
        except (RuntimeError, KafkaException) as exc:
            log.error("publishing failed: %s", exc)
            return 1
        finally:
            telemetry.shutdown_tracing()
    return 0

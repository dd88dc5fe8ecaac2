"""`fraudctl train`: optionally backfill the offline store, then train, evaluate and promote.

Exit status 0 when a challenger was trained and registered (promoted or not), 1 when no model
could be trained; the champion is untouched on failure.
"""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

#: Where a labels file is looked for next to `--backfill X.parquet`: first as `fraudctl simulate`
#: writes it (services.simulator.generate.labels_path), then two common spellings.
LABEL_SIBLINGS = ("{stem}.labels.parquet", "{stem}_labels.parquet", "labels.parquet")


def parse_time_ms(text: str) -> int:
    """ISO 8601 to epoch ms; a time without an offset is UTC."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def sibling_labels(transactions: Path) -> Path | None:
    for pattern in LABEL_SIBLINGS:
        candidate = transactions.with_name(pattern.format(stem=transactions.stem))
        if candidate.exists():
            return candidate
    return None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "train",
        help="train a model on the offline store and promote it if it beats the champion",
        description=__doc__,
    )
    parser.add_argument(
        "--backfill",
        type=Path,
        metavar="PATH",
        help="a parquet of past transactions to replay into the offline store first",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="PATH",
        help="labels parquet for --backfill (default: "
        + ", ".join(LABEL_SIBLINGS).replace("{stem}", "<name>")
        + " next to it)",
    )
    parser.add_argument(
        "--cutoff",
        metavar="ISO",
        help="train as of this time (labels known then); default: now, or the end of the data",
    )
    parser.add_argument(
        "--no-online",
        action="store_true",
        help="with --backfill: do not push each card's final state to the online store",
    )
    parser.add_argument(
        "--apply", action="store_true", help="run `feast apply` even if the repo has a registry"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import pandas as pd

    from services.common.settings import (
        FeastSettings,
        RedisSettings,
        StreamSettings,
        TrainingSettings,
    )
    from training import backfill, pipeline

    feast_settings, redis_settings = FeastSettings(), RedisSettings()
    try:
        cutoff_ms = parse_time_ms(args.cutoff) if args.cutoff else None
        repo_dir = pipeline.ensure_repo(feast_settings, redis_settings, force_apply=args.apply)
        if args.backfill is not None:
            labels_path = args.labels or sibling_labels(args.backfill)
            if labels_path is None:
                log.error("no labels next to %s: pass --labels PATH", args.backfill)
                return 1
            backfill.backfill(
                repo_dir,
                pd.read_parquet(args.backfill),
                pd.read_parquet(labels_path),
                allowed_lateness_ms=StreamSettings().allowed_lateness_s * 1000,
                online=not args.no_online,
            )
        result = pipeline.run_training(
            feast_settings, redis_settings, TrainingSettings(), cutoff_ms=cutoff_ms
        )
    except (RuntimeError, ValueError, OSError) as exc:
        # TrainingError, InsufficientData, a failed `feast apply`, an unreadable parquet: all
        # end the run before the registry is touched.
        log.error("training failed, the champion stays in place: %s", exc)
        log.debug("training failure details", exc_info=True)
        return 1
    log.info(
        "model %s %s (%s); AP %.4f",
        result.version,
        "promoted" if result.promoted else "registered, not promoted",
        result.reason,
        result.metrics["average_precision"],
    )
    return 0

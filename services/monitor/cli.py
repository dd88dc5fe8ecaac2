"""`fraudctl monitor`: feature drift and score distribution from the `scores` topic."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    monitor = sub.add_parser(
        "monitor",
        help="model monitoring: PSI per feature and of the score against the training window, "
        "fallback share (MONITOR_*, KAFKA_* variables)",
    )
    monitor.add_argument(
        "--once",
        action="store_true",
        help="consume what the scores topic holds, evaluate, write the report and exit "
        "(default: run until SIGTERM, serving /metrics on MONITOR_METRICS_PORT)",
    )
    monitor.add_argument(
        "--report",
        default=None,
        help="write the Markdown drift report here (with --once at the end; otherwise after "
        "every evaluation)",
    )
    monitor.set_defaults(func=_monitor)


def _monitor(args: argparse.Namespace) -> int:
    import logging
    import signal
    import sys
    import threading
    from pathlib import Path

    from services.common.settings import KafkaSettings, MonitorSettings
    from services.monitor import report, service

    log = logging.getLogger("fraudscore.monitor")
    kafka, settings = KafkaSettings(), MonitorSettings()
    report_path = Path(args.report) if args.report else None
    if args.once:
        try:
            snapshot = service.run_once(kafka, settings)
        except service.MonitorError as exc:
            log.error("%s", exc)
            return 1
        if report_path is not None:
            service.write_report(report_path, snapshot, kafka.scores_topic)
            log.info("drift report written to %s", report_path)
        else:
            sys.stdout.write(report.render(snapshot, kafka.scores_topic))
        return 0

    monitor = service.ScoreMonitor(settings)
    monitor.metrics.serve(settings.metrics_port)
    log.info("monitoring %s; metrics on :%s", kafka.scores_topic, settings.metrics_port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    service.run_forever(kafka, settings, stop, report_path, monitor)
    return 0

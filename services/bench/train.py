"""`fraudctl bench train`: wall time, CPU time and peak memory of a full retrain at scale.

The simulated world is sized so that the training window (train + delay + test days of
`TrainingSettings`) holds about N transactions: customers scale with N, terminals twice that,
and the terminal radius shrinks so a customer keeps the handbook's ~78 terminals in reach. The
offline history is built by the backfill (timed on its own: it is the one-off step of a new
deployment, not part of the weekly retrain), then `run_training` is timed as a whole and per
step (dataset, fit, evaluation), with the peak resident memory of this process and its
children sampled throughout.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from services.common.settings import FeastSettings, RedisSettings, TrainingSettings
from services.simulator.config import DAY_MS

log = logging.getLogger(__name__)

#: The handbook world's density: terminals per customer and the radius at 10,000 terminals.
TERMINALS_PER_CUSTOMER = 2
HANDBOOK_TERMINALS = 10_000
HANDBOOK_RADIUS = 5.0
HANDBOOK_CUSTOMERS = 5_000
#: Customers of the probe world that measures transactions per customer-day.
PROBE_CUSTOMERS = 5_000
MANIFEST = "bench-train.json"
#: Days simulated before the window but not kept: a compromise lasts up to 28 days, so a world
#: that starts at the window's first day would have only a few of them active in its first
#: weeks (about half the handbook's steady fraud share over a 21-day window).
WARMUP_DAYS = 28


@dataclass(frozen=True)
class BenchConfig:
    transactions: int
    work_dir: Path
    reuse: bool = False
    seed: int = 0
    #: Days simulated and backfilled before the training window: feature history (card and
    #: terminal windows look back up to 37 days). Without it the training week has no terminal
    #: risk at all (its 7-day-delayed windows start before the data), which limits the model.
    history_days: int = 0


class PeakRss:
    """The largest resident set of this process plus its children, sampled in a thread."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self.peak_bytes = 0

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        return int(total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._stop.wait(self._interval_s)

    def __enter__(self) -> PeakRss:
        self.peak_bytes = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._sample())


def cpu_seconds() -> float:
    """User + system CPU of this process and its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextmanager
def timed_calls(target: Any, name: str, totals: dict[str, float], key: str) -> Iterator[None]:
    """Adds the wall time of every call of target.name to totals[key] while inside."""
    original: Callable[..., Any] = getattr(target, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - started

    setattr(target, name, wrapper)
    try:
        yield
    finally:
        setattr(target, name, original)


def compromised_per_day(customers: int, terminals: int) -> tuple[int, int]:
    """(terminals, customers) compromised per day in a world of this size: the handbook's 2
    per 10,000 terminals and 3 per 5,000 customers, so the fraud share stays the handbook's
    (~0.8 % of transactions) at any size. At least one of each: a world much smaller than
    the handbook's then has a larger share, but still all three scenarios."""
    from services.simulator.config import S2_TERMINALS_PER_DAY, S3_CUSTOMERS_PER_DAY

    return (
        max(1, round(S2_TERMINALS_PER_DAY * terminals / HANDBOOK_TERMINALS)),
        max(1, round(S3_CUSTOMERS_PER_DAY * customers / HANDBOOK_CUSTOMERS)),
    )


def world_size(transactions: int, days: int, seed: int) -> tuple[int, int, float]:
    """(customers, terminals, radius) for about `transactions` over `days` days."""
    from services.simulator.config import SimConfig
    from services.simulator.generate import Simulator

    probe = SimConfig(n_customers=PROBE_CUSTOMERS, n_terminals=2 * PROBE_CUSTOMERS, seed=seed)
    per_customer_day = Simulator(probe).expected_events_per_day() / PROBE_CUSTOMERS
    customers = max(10, math.ceil(transactions / (days * per_customer_day)))
    terminals = TERMINALS_PER_CUSTOMER * customers
    radius = HANDBOOK_RADIUS * math.sqrt(HANDBOOK_TERMINALS / terminals)
    return customers, terminals, radius


def _prepare(config: BenchConfig, training: TrainingSettings) -> dict[str, Any]:
    """Simulate and backfill into a fresh repo, or reuse the last one (its manifest)."""
    from services.simulator.config import SimConfig
    from services.simulator.generate import labels_for, simulate_days
    from training import backfill, pipeline

    manifest_path = config.work_dir / MANIFEST
    if config.reuse and manifest_path.exists():
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        # A store from before the fraud scenarios scaled with the world has no fraud_share.
        if (
            manifest.get("requested") == config.transactions
            and manifest.get("history_days") == config.history_days
            and "fraud_share" in manifest
        ):
            log.info("reusing the offline store of %s", config.work_dir)
            return manifest
    days = training.train_days + training.delay_days + training.test_days
    customers, terminals, radius = world_size(config.transactions, days, config.seed)
    terminals_per_day, customers_per_day = compromised_per_day(customers, terminals)
    sim = SimConfig(
        n_customers=customers,
        n_terminals=terminals,
        n_days=WARMUP_DAYS + config.history_days + days,
        radius=radius,
        seed=config.seed,
        terminals_compromised_per_day=terminals_per_day,
        customers_compromised_per_day=customers_per_day,
    )
    started = time.perf_counter()
    frame = simulate_days(sim, WARMUP_DAYS, WARMUP_DAYS + config.history_days + days)
    labels = labels_for(frame, config.seed)
    simulate_s = time.perf_counter() - started
    window_start_ms = sim.start_ms + (WARMUP_DAYS + config.history_days) * DAY_MS
    in_window = frame["event_ms"].to_numpy() >= window_start_ms
    window_rows = int(in_window.sum())
    frauds = int(frame["is_fraud"].to_numpy()[in_window].sum())
    log.info(
        "simulated %s transactions (%s in the %s-day window: %s frauds, %.2f %%; %s customers, "
        "%s terminals; %s terminals and %s customers compromised a day) in %.1fs",
        len(frame),
        window_rows,
        days,
        frauds,
        100 * frauds / max(1, window_rows),
        customers,
        terminals,
        terminals_per_day,
        customers_per_day,
        simulate_s,
    )
    feast = FeastSettings(
        work_dir=config.work_dir / f"repo-{uuid.uuid4().hex[:8]}",
        project=f"bench_train_{uuid.uuid4().hex[:8]}",
    )
    repo_dir = pipeline.ensure_repo(feast, RedisSettings())
    cpu0, started = cpu_seconds(), time.perf_counter()
    backfill.backfill(repo_dir, frame, labels, online=False)
    manifest = {
        "requested": config.transactions,
        "transactions": window_rows,
        "history_days": config.history_days,
        "history_transactions": len(frame) - window_rows,
        "fraud_share": round(frauds / max(1, window_rows), 5),
        "feast_work_dir": str(feast.work_dir),
        "feast_project": feast.project,
        # After the last label arrives: the test period is scored against final labels, as
        # the handbook scores it (training still sees only those known when testing starts).
        "cutoff_ms": max(
            int(frame["event_ms"].max()),
            int(labels["reported_ms"].max()) if len(labels) else 0,
        )
        + 1,
        "simulate_s": round(simulate_s, 3),
        "backfill_s": round(time.perf_counter() - started, 3),
        "backfill_cpu_s": round(cpu_seconds() - cpu0, 3),
    }
    manifest_path.write_text(json.dumps(manifest))
    return manifest


def run(config: BenchConfig) -> dict[str, Any]:
    from training import dataset, evaluate, pipeline, promote, train

    config.work_dir.mkdir(parents=True, exist_ok=True)
    training = TrainingSettings(model_dir=config.work_dir / "models")
    manifest = _prepare(config, training)
    feast = FeastSettings(
        work_dir=Path(manifest["feast_work_dir"]), project=manifest["feast_project"]
    )
    steps: dict[str, float] = {}
    cpu0, started = cpu_seconds(), time.perf_counter()
    with (
        PeakRss() as peak,
        timed_calls(dataset, "build_dataset", steps, "dataset"),
        timed_calls(train, "train_model", steps, "fit"),
        timed_calls(train, "predict", steps, "evaluate"),
        timed_calls(evaluate, "evaluate", steps, "evaluate"),
        timed_calls(promote, "score_champion", steps, "evaluate"),
    ):
        result = pipeline.run_training(
            feast, RedisSettings(), training, cutoff_ms=int(manifest["cutoff_ms"])
        )
    retrain_s = time.perf_counter() - started
    return {
        "transactions": int(manifest["transactions"]),
        "backfill_s": manifest["backfill_s"],
        "backfill_cpu_s": manifest["backfill_cpu_s"],
        "dataset_s": round(steps.get("dataset", 0.0), 3),
        "fit_s": round(steps.get("fit", 0.0), 3),
        "evaluate_s": round(steps.get("evaluate", 0.0), 3),
        "retrain_s": round(retrain_s, 3),
        "retrain_cpu_s": round(cpu_seconds() - cpu0, 3),
        "peak_rss_mb": round(peak.peak_bytes / 2**20, 1),
        "cores": len(os.sched_getaffinity(0)),
        "dataset_rows": int(result.metadata["rows"]["dataset"]),
        # The delay days' rows the dataset leaves out (all but their frauds).
        "dataset_skipped": int(result.metadata["rows"]["delay_days_skipped"]),
        "history_days": manifest["history_days"],
        "history_transactions": manifest["history_transactions"],
        "fraud_share": manifest["fraud_share"],
        "train_positives": int(result.metadata["rows"]["train_positives"]),
        "test_positives": int(result.metadata["rows"]["test_positives"]),
        "best_iteration": int(result.metadata["best_iteration"]),
        "auc_roc": round(float(result.metrics["auc_roc"]), 4),
        "average_precision": round(float(result.metrics["average_precision"]), 4),
        "model_version": result.version,
    }

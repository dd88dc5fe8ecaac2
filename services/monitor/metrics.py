"""Prometheus metrics of the model monitor, in a registry of its own (tests run several)."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from services.monitor.drift import DriftSnapshot

_SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.records = Counter(
            "fraudscore_monitor_records",
            "Score records consumed, by path (model, fallback).",
            ["path"],
            registry=self.registry,
        )
        self.invalid = Counter(
            "fraudscore_monitor_invalid_records",
            "Messages on the scores topic that are not ScoreRecords (skipped).",
            registry=self.registry,
        )
        self.scores = Histogram(
            "fraudscore_monitor_score",
            "Scores of model-scored records as consumed (fallback rule scores excluded).",
            buckets=_SCORE_BUCKETS,
            registry=self.registry,
        )
        self.window_records = Gauge(
            "fraudscore_monitor_window_records",
            "Records in the rolling window.",
            registry=self.registry,
        )
        self.fallback_share = Gauge(
            "fraudscore_monitor_fallback_share",
            "Share of the window's records answered by the rule fallback.",
            registry=self.registry,
        )
        self.score_quantile = Gauge(
            "fraudscore_monitor_score_quantile",
            "Score quantiles of the serving version's model-scored records in the window.",
            ["quantile"],
            registry=self.registry,
        )
        self.reference_loaded = Gauge(
            "fraudscore_monitor_reference_loaded",
            "1 if the serving model version has a training reference to compare against.",
            registry=self.registry,
        )
        self.feature_psi = Gauge(
            "fraudscore_feature_psi",
            "PSI of each feature in the window against the training window "
            "(<0.1 stable, 0.1-0.25 watch, >0.25 act).",
            ["feature"],
            registry=self.registry,
        )
        self.score_psi = Gauge(
            "fraudscore_score_psi",
            "PSI of the model score in the window against the training window.",
            registry=self.registry,
        )

    def observe(self, score: float, fallback: bool) -> None:
        self.records.labels(path="fallback" if fallback else "model").inc()
        if not fallback:
            self.scores.observe(score)

    def publish(self, snapshot: DriftSnapshot) -> None:
        self.window_records.set(snapshot.records)
        self.fallback_share.set(_or_nan(snapshot.fallback_share))
        self.reference_loaded.set(1 if snapshot.reference_found else 0)
        self.score_quantile.clear()
        for q, value in snapshot.score_quantiles.items():
            self.score_quantile.labels(quantile=str(q)).set(value)
        self.score_psi.set(_or_nan(snapshot.score_psi))
        # A stale PSI from the previous version or window must not linger: drop, then set.
        self.feature_psi.clear()
        for drift in snapshot.features:
            self.feature_psi.labels(feature=drift.name).set(drift.psi)

    def serve(self, port: int) -> None:
        """Expose /metrics on `port`; 0 disables it."""
        if port > 0:
            start_http_server(port, registry=self.registry)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value

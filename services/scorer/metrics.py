"""Prometheus metrics of one scorer, in a registry of its own so servers in one process
(tests) never share counters; `serve` exposes it on SCORER_METRICS_PORT."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from services.proto.fraudscore.v1 import scorer_pb2
from services.scorer.breaker import STATE_VALUES

# Sub-millisecond to the budget and beyond: the fallback answers in microseconds.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 1.0)
# A batch of up to 1,000 takes tens to hundreds of milliseconds.
_BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ScorerMetrics:
    """Score latency (fraudscore_score_latency_seconds) is observed once per Score call;
    ScoreBatch calls are observed whole in fraudscore_score_batch_latency_seconds (with their
    size), so a 1,000-item batch neither counts as 1,000 slow single answers nor hides them.
    Decisions and fallbacks count every answer, batch items included."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.latency = Histogram(
            "fraudscore_score_latency_seconds",
            "Time to answer one Score call, by path (model or fallback).",
            ["path"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "fraudscore_decisions",
            "Score answers by decision.",
            ["decision"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "fraudscore_fallbacks",
            "Answers given by the rule-based fallback, by why the model path did not answer.",
            ["reason"],
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            "fraudscore_breaker_state",
            "Circuit breaker around the feature+model path: 0 closed, 1 half-open, 2 open.",
            registry=self.registry,
        )
        self.model = Info("fraudscore_model", "The model version serving.", registry=self.registry)
        self.model_loaded = Gauge(
            "fraudscore_model_loaded", "1 once a model serves.", registry=self.registry
        )
        self.model_refused = Counter(
            "fraudscore_model_refused",
            "Promoted model versions the registry watcher refused to load, by reason "
            "(feature_mismatch, unreadable, failed_sanity_check, registry_error, loader_error).",
            ["reason"],
            registry=self.registry,
        )
        self.model_alert = Gauge(
            "fraudscore_model_alert",
            "1 while the newest promoted model version is refused and an older one serves.",
            registry=self.registry,
        )
        self.score_records_dropped = Counter(
            "fraudscore_score_records_dropped",
            "Score records not published to the scores topic: the producer queue was full "
            "(broker down or slow) or the broker never acknowledged them.",
            registry=self.registry,
        )
        self.batch_latency = Histogram(
            "fraudscore_score_batch_latency_seconds",
            "Time to answer one ScoreBatch call (whole call; its items are not in "
            "fraudscore_score_latency_seconds).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "fraudscore_score_batch_size",
            "Transactions per ScoreBatch call.",
            buckets=(1, 10, 50, 100, 250, 500, 1000),
            registry=self.registry,
        )
        self.shadow_dropped = Counter(
            "fraudscore_shadow_dropped",
            "Transactions the shadow model did not score because its queue was full.",
            registry=self.registry,
        )
        self.shadow_scored = Counter(
            "fraudscore_shadow_scored",
            "Transactions the shadow (challenger) model scored.",
            registry=self.registry,
        )

    def observe(
        self,
        seconds: float | None,
        decision: scorer_pb2.Decision.ValueType,
        fallback_reason: str | None,
    ) -> None:
        """One answer: its decision, fallback reason and (for Score, not batch items) latency."""
        if seconds is not None:
            path = "model" if fallback_reason is None else "fallback"
            self.latency.labels(path=path).observe(seconds)
        name = scorer_pb2.Decision.Name(decision).removeprefix("DECISION_").lower()
        self.decisions.labels(decision=name).inc()
        if fallback_reason is not None:
            self.fallbacks.labels(reason=fallback_reason).inc()

    def observe_batch(self, seconds: float, size: int) -> None:
        self.batch_latency.observe(seconds)
        self.batch_size.observe(size)

    def model_refused_once(self, version: str, reason: str) -> None:
        self.model_refused.labels(reason=reason).inc()

    def set_model_alert(self, alert: bool) -> None:
        self.model_alert.set(1 if alert else 0)

    def set_breaker_state(self, state: str) -> None:
        self.breaker_state.set(STATE_VALUES.get(state, -1))

    def set_model(self, model_version: str) -> None:
        self.model.info({"version": model_version})
        self.model_loaded.set(1)

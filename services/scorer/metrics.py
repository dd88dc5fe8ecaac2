"""Prometheus metrics of one scorer, in a registry of its own so servers in one process
(tests) never share counters; `serve` exposes it on SCORER_METRICS_PORT."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from services.proto.fraudscore.v1 import scorer_pb2
from services.scorer.breaker import STATE_VALUES

# Sub-millisecond to the budget and beyond: the fallback answers in microseconds.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 1.0)


class ScorerMetrics:
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

    def observe(
        self, seconds: float, decision: scorer_pb2.Decision.ValueType, fallback_reason: str | None
    ) -> None:
        path = "model" if fallback_reason is None else "fallback"
        self.latency.labels(path=path).observe(seconds)
        name = scorer_pb2.Decision.Name(decision).removeprefix("DECISION_").lower()
        self.decisions.labels(decision=name).inc()
        if fallback_reason is not None:
            self.fallbacks.labels(reason=fallback_reason).inc()

    def set_breaker_state(self, state: str) -> None:
        self.breaker_state.set(STATE_VALUES.get(state, -1))

    def set_model(self, model_version: str) -> None:
        self.model.info({"version": model_version})
        self.model_loaded.set(1)

"""The scorer's gRPC server: FraudScorer, grpc.health.v1 and reflection on one port.

Health ("" and "fraudscore.v1.FraudScorer") says NOT_SERVING until a model is loaded, so a load
balancer only routes traffic to a scorer that can use its model.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace

from services.common import runtime
from services.common.model_registry import ModelRegistry
from services.common.settings import (
    FeastSettings,
    KafkaSettings,
    RedisSettings,
    ScorerSettings,
    TelemetrySettings,
)
from services.proto.fraudscore.v1 import scorer_pb2, scorer_pb2_grpc
from services.scorer.breaker import GuardedPath
from services.scorer.interceptors import BearerTokenInterceptor, DomainErrorInterceptor
from services.scorer.metrics import ScorerMetrics
from services.scorer.model import LoadedModel
from services.scorer.online_features import FeatureReader
from services.scorer.registry import ModelHolder
from services.scorer.servicer import FraudScorerServicer, ScoreHook
from services.scorer.shadow import ShadowScorer, registry_loader

log = logging.getLogger(__name__)

SERVICE_NAME: str = scorer_pb2.DESCRIPTOR.services_by_name["FraudScorer"].full_name


class ScorerServer(grpc.Server):
    """A started grpc.Server that also owns the scorer's helpers: stopping it stops them."""

    def __init__(
        self,
        inner: grpc.Server,
        servicer: FraudScorerServicer,
        health_servicer: health.HealthServicer,
        owns_watcher: bool,
        shadow: ShadowScorer | None = None,
    ) -> None:
        self._inner = inner
        self.servicer = servicer
        self.health = health_servicer
        self._owns_watcher = owns_watcher
        #: The challenger scoring off the request path, when SCORER_SHADOW_MODEL_VERSION is set.
        self.shadow = shadow

    @property
    def model_holder(self) -> ModelHolder:
        return self.servicer.model_holder

    @property
    def guarded(self) -> GuardedPath:
        return self.servicer.guarded

    @property
    def metrics(self) -> ScorerMetrics:
        return self.servicer.metrics

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        self._inner.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        self._inner.add_registered_method_handlers(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        return int(self._inner.add_insecure_port(address))

    def add_secure_port(self, address: str, server_credentials: Any) -> int:
        return int(self._inner.add_secure_port(address, server_credentials))

    def start(self) -> None:
        self._inner.start()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(self._inner.wait_for_termination(timeout))

    def stop(self, grace: float | None) -> threading.Event:
        # Tell health checkers first, so balancers drain us during the grace period.
        self.health.enter_graceful_shutdown()
        if self._owns_watcher:
            self.model_holder.stop_watching()
        done: threading.Event = self._inner.stop(grace)

        def release() -> None:
            done.wait()
            self.guarded.shutdown()
            if self.shadow is not None:
                self.shadow.close()

        threading.Thread(target=release, name="scorer-release", daemon=True).start()
        return done


def create_server(
    address: str,
    settings: ScorerSettings | None = None,
    *,
    feature_reader: FeatureReader,
    model_holder: ModelHolder | None = None,
    metrics: ScorerMetrics | None = None,
    clock: Callable[[], float] = time.perf_counter,
    on_scored: ScoreHook | None = None,
    watch_registry: bool = True,
    tracer: trace.Tracer | None = None,
) -> tuple[ScorerServer, int]:
    """Build, bind and start the scorer; returns the server and the bound port.

    `model_holder` defaults to the champion of `settings.model_dir`; its first load happens
    here, and with `watch_registry` a thread follows promotions every `registry_poll_s`.
    `on_scored` sees every ScoreOutcome (features included) after the answer is built.
    """
    settings = settings or ScorerSettings()
    metrics = metrics or ScorerMetrics()
    holder = model_holder or ModelHolder(ModelRegistry(settings.model_dir))
    guarded = GuardedPath(
        fail_max=settings.breaker_fail_max,
        reset_timeout_s=settings.breaker_reset_s,
        max_workers=settings.max_workers,
        on_state=metrics.set_breaker_state,
    )
    metrics.set_breaker_state(guarded.state)

    health_servicer = health.HealthServicer()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def on_model(model: LoadedModel) -> None:
        metrics.set_model(model.model_version)
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    holder.add_listener(on_model)
    holder.add_refusal_listener(metrics.model_refused_once)
    holder.add_alert_listener(metrics.set_model_alert)
    holder.refresh()
    if holder.current is None:
        log.warning(
            "no loadable champion in %s yet: NOT_SERVING, the rules answer meanwhile",
            holder.registry.root,
        )

    shadow: ShadowScorer | None = None
    if settings.shadow_model_version:
        shadow = ShadowScorer(
            registry_loader(holder.registry, settings.shadow_model_version),
            on_scored,
            settings.shadow_queue_max,
            on_scored=metrics.shadow_scored.inc,
            on_dropped=metrics.shadow_dropped.inc,
        )
        # "latest" means "not the champion": a promotion may change which version that is.
        holder.add_listener(lambda _model: shadow.reload() if shadow is not None else None)
        on_scored = shadow

    servicer = FraudScorerServicer(
        settings,
        feature_reader,
        holder,
        guarded,
        metrics,
        clock=clock,
        on_scored=on_scored,
        tracer=tracer,
    )
    interceptors: list[grpc.ServerInterceptor] = []
    if settings.auth_token is not None:
        interceptors.append(BearerTokenInterceptor(settings.auth_token.get_secret_value()))
    interceptors.append(DomainErrorInterceptor())
    inner = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="grpc"),
        interceptors=interceptors,
    )
    scorer_pb2_grpc.add_FraudScorerServicer_to_server(servicer, inner)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, inner)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), inner
    )
    credentials = server_credentials(settings)
    if credentials is None:
        port = int(inner.add_insecure_port(address))
    else:
        port = int(inner.add_secure_port(address, credentials))
    if port == 0:
        guarded.shutdown()
        raise RuntimeError(f"cannot bind the scorer to {address}")
    inner.start()
    if watch_registry:
        holder.start_watching(settings.registry_poll_s)
    log.info(
        "scorer listening on %s (port %s, %s, %s)",
        address,
        port,
        "TLS" if credentials is not None else "plaintext",
        "bearer token required" if settings.auth_token is not None else "no auth",
    )
    return (
        ScorerServer(inner, servicer, health_servicer, owns_watcher=watch_registry, shadow=shadow),
        port,
    )


def server_credentials(settings: ScorerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials when both a certificate and its key are configured, else None."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise RuntimeError("TLS needs both SCORER_TLS_CERT_FILE and SCORER_TLS_KEY_FILE")
    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])


def tune_runtime(settings: ScorerSettings) -> None:
    """Interpreter settings for serving, applied once start-up is done (`runtime`)."""
    runtime.set_switch_interval(settings.gil_switch_interval_s)
    if settings.gc_freeze:
        runtime.settle_heap()


def build_reader(settings: ScorerSettings, store: Any) -> FeatureReader:
    """The card-state reader `settings.feature_path` asks for, warmed up."""
    from services.scorer.online_features import FeastFeatureReader
    from services.scorer.redis_reader import FastFeatureReader

    reader: FastFeatureReader | FeastFeatureReader
    if settings.feature_path == "redis":
        reader = FastFeatureReader.from_store(store, timeout_s=settings.redis_timeout_s)
    else:
        reader = FeastFeatureReader(store)
    reader.warm_up()
    log.info("feature path: %s", settings.feature_path)
    return reader


def serve(
    settings: ScorerSettings | None = None,
    feast: FeastSettings | None = None,
    redis: RedisSettings | None = None,
    telemetry: TelemetrySettings | None = None,
    address: str | None = None,
    kafka_settings: KafkaSettings | None = None,
) -> int:
    """Run the scorer until SIGTERM/SIGINT, then stop gracefully. Returns an exit code."""
    from prometheus_client import start_http_server

    from services.common import feast_repo
    from services.common import telemetry as tracing
    from services.scorer.publisher import ScorePublisher

    settings = settings or ScorerSettings()
    feast = feast or FeastSettings()
    redis = redis or RedisSettings()
    tracing.configure_tracing("fraudscore-scorer", telemetry)

    repo_dir = feast_repo.prepare(feast, redis)
    if not (repo_dir / "data" / "registry.db").exists():
        feast_repo.apply(repo_dir)
    reader = build_reader(settings, feast_repo.open_store(repo_dir))
    kafka_settings = kafka_settings or KafkaSettings()
    metrics = ScorerMetrics()
    publisher: ScorePublisher | None = None
    if kafka_settings.bootstrap_servers:
        publisher = ScorePublisher(
            kafka_settings,
            settings.publish_queue_max,
            on_dropped=metrics.score_records_dropped.inc,
        )
        log.info("publishing scores to %s", kafka_settings.scores_topic)

    if settings.metrics_port > 0:
        start_http_server(settings.metrics_port, registry=metrics.registry)
        log.info("metrics on :%s/metrics", settings.metrics_port)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Before the port opens: the one full collection must not pause the first requests.
    tune_runtime(settings)
    try:
        server, _ = create_server(
            address or settings.address,
            settings,
            feature_reader=reader,
            metrics=metrics,
            on_scored=publisher,
        )
    except RuntimeError as exc:
        log.error("%s", exc)
        if publisher is not None:
            publisher.close(0)
        return 1
    while not stop.wait(1.0):
        pass
    server.stop(settings.shutdown_grace_s).wait()
    if publisher is not None:
        publisher.close()
    tracing.shutdown_tracing()
    log.info("scorer stopped")
    return 0

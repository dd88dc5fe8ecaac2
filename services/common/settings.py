"""Typed settings for every component, read from environment variables.

Each section has its own prefix (``KAFKA_``, ``REDIS_``, ``FEAST_``, ``STREAM_``, ``SCORER_``,
``TRAINING_``, ``MONITOR_``, ``OTEL_``, ``LOG_``), so one deployment's environment
configures all services.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="forbid", env_file=None)


class KafkaSettings(BaseSettings):
    """Where the broker is and which topics carry what."""

    model_config = _config("KAFKA_")

    bootstrap_servers: str | None = Field(
        default=None,
        description="Comma-separated host:port list. Unset: `fraudctl dev`/`demo` start the "
        "embedded tansu broker and use it.",
    )
    transactions_topic: str = Field("transactions", description="Transactions (protobuf).")
    labels_topic: str = Field("fraud-labels", description="Confirmed fraud labels (protobuf).")
    dlq_topic: str = Field(
        "transactions.dlq", description="Malformed transactions, with the reason in a header."
    )
    scores_topic: str = Field("scores", description="Every score, for monitoring and training.")
    partitions: int = Field(4, description="Partitions for topics that fraudscore creates.")
    replication_factor: int = Field(1, description="Replication for topics fraudscore creates.")
    session_timeout_ms: int = Field(
        10_000, description="Consumer group session timeout; joins take about half of it."
    )
    security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_SSL, ...")
    sasl_username: str | None = Field(None, description="SASL user, if the broker needs one.")
    sasl_password: SecretStr | None = Field(None, description="SASL password.")

    def require_bootstrap(self) -> str:
        if not self.bootstrap_servers:
            raise RuntimeError(
                "KAFKA_BOOTSTRAP_SERVERS is not set: point it at a broker, "
                "or run `fraudctl dev up` to start the embedded one"
            )
        return self.bootstrap_servers

    def client_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka (confluent-kafka) settings shared by producers, consumers and admin."""
        conf: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.require_bootstrap(),
            "security.protocol": self.security_protocol,
        }
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
            conf["sasl.mechanisms"] = "PLAIN"
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        return conf


class RedisSettings(BaseSettings):
    """The Redis that backs Feast's online store."""

    model_config = _config("REDIS_")

    host: str = Field("127.0.0.1", description="Redis host.")
    port: int = Field(6379, description="Redis port.")
    db: int = Field(0, description="Redis logical database.")
    password: SecretStr | None = Field(None, description="Redis AUTH password.")
    socket_timeout_s: float = Field(
        2.0, description="Per-command socket timeout; a hung Redis must not hang a caller."
    )
    socket_connect_timeout_s: float = Field(1.0, description="Connect timeout.")

    def feast_connection_string(self) -> str:
        conn = (
            f"{self.host}:{self.port},db={self.db},socket_timeout={self.socket_timeout_s},"
            f"socket_connect_timeout={self.socket_connect_timeout_s}"
        )
        if self.password is not None:
            conn += f",password={self.password.get_secret_value()}"
        return conn


class FeastSettings(BaseSettings):
    """The Feast feature store: definitions, registry and offline data location."""

    model_config = _config("FEAST_")

    definitions_dir: Path = Field(
        Path(__file__).resolve().parents[2] / "feature_repo",
        description="The feature_repo/ folder holding the Feast definitions.",
    )
    work_dir: Path = Field(
        Path(".fraudscore/feature_repo"),
        description="Where the runnable repo (definitions + generated feature_store.yaml, "
        "registry, offline parquet under data/) is prepared.",
    )
    project: str = Field("fraudscore", description="Feast project name.")


class StreamSettings(BaseSettings):
    """The faust stream processor."""

    model_config = _config("STREAM_")

    app_id: str = Field("fraudscore-stream", description="Faust app id = consumer group.")
    batch_size: int = Field(
        500,
        description="Records of a topic buffered before they are handed to its handler as one "
        "batch (one Feast write, one offline part); a busy handler's backlog goes at up to 32 "
        "times this.",
    )
    batch_window_s: float = Field(
        0.2, description="Max seconds a fetched record waits for its batch to fill."
    )
    allowed_lateness_s: int = Field(
        300, description="Events older than the card's latest event by more are dropped."
    )
    data_dir: Path = Field(Path(".fraudscore/stream"), description="Faust local data.")
    web_port: int = Field(6066, description="Faust's own web pages (stats); 0 disables it.")
    metrics_port: int = Field(9465, description="Prometheus /metrics port; 0 disables it.")
    setup_on_start: bool = Field(
        True,
        description="Prepare the Feast repo, run `feast apply` and create missing topics "
        "before consuming; turn off where a deploy step does that.",
    )
    write_retry_max_s: float = Field(
        30.0, description="Longest backoff between retries of a failed store call or batch."
    )
    cache_max_cards: int = Field(
        100_000, description="Card states kept in memory; the least recently used go first."
    )
    terminal_events_topic: str | None = Field(
        None,
        description="Internal topic (key = terminal_id) carrying counted transactions and labels "
        "to the terminal agent, the one writer of each terminal's state. Unset: "
        "`<KAFKA_TRANSACTIONS_TOPIC>.terminal-events`.",
    )
    fetch_max_wait_ms: int = Field(
        100,
        description="Longest time the broker may hold a fetch of partitions with nothing new "
        "(faust's own is 1500 ms; brokers that answer a parked fetch only at its end add that "
        "much to each hop).",
    )
    gc_gen0_threshold: int = Field(
        1_000_000,
        description="Allocations between the worker's young-generation garbage collections "
        "(Python's default: 700). Every event allocates dozens of short lists, and each "
        "collection walks the cached states too: at 700 collections cost about a third of the "
        "worker's CPU. With `gc_freeze_batches` the count restarts at every batch, so above a "
        "batch's allocations (~40 per event) no young collection runs. 0 keeps Python's "
        "default and turns `gc_freeze_batches` off.",
    )
    gc_freeze_batches: bool = Field(
        True,
        description="Freeze what is alive after each batch out of garbage collection "
        "(`runtime.BatchHeap`), so no collection walks the cached states again.",
    )
    gc_full_collect_s: float = Field(
        300.0,
        gt=0,
        description="With `gc_freeze_batches`: seconds between full collections over "
        "everything, which find cyclic garbage the freezing kept (a pause of ~0.35 s per "
        "~640,000 objects, logged).",
    )

    def terminal_topic(self, transactions_topic: str) -> str:
        return self.terminal_events_topic or f"{transactions_topic}.terminal-events"


class ScorerSettings(BaseSettings):
    """The gRPC scorer."""

    model_config = _config("SCORER_")

    address: str = Field("[::]:50051", description="gRPC listen address.")
    metrics_port: int = Field(9464, description="Prometheus /metrics port; 0 disables it.")
    model_dir: Path = Field(Path(".fraudscore/models"), description="The model registry folder.")
    budget_ms: float = Field(50.0, description="Per-request budget for the feature+model path.")
    breaker_fail_max: int = Field(5, description="Consecutive failures that open the breaker.")
    breaker_reset_s: float = Field(10.0, description="Seconds before a half-open probe.")
    review_threshold: float = Field(0.5, description="Score at or above which to REVIEW.")
    decline_threshold: float = Field(0.9, description="Score at or above which to DECLINE.")
    registry_poll_s: float = Field(5.0, description="How often to look for a new model.")
    max_workers: int = Field(16, description="gRPC thread pool size.")
    gc_freeze: bool = Field(
        True,
        description="After start-up, freeze the objects alive then out of garbage collection, so "
        "a full collection never walks them during a request (tail latency).",
    )
    gil_switch_interval_s: float | None = Field(
        None,
        description="sys.setswitchinterval for the scorer process: how long one thread may keep "
        "the GIL while a request thread waits; None keeps CPython's default (5 ms).",
    )
    shutdown_grace_s: float = Field(
        5.0, description="On SIGTERM, seconds in-flight calls get to finish before cancel."
    )
    feature_path: Literal["redis", "feast"] = Field(
        "redis",
        description="How card state is read: 'redis' (Feast's Redis online store read "
        "directly, one pipelined HMGET; the fast path) or 'feast' (get_online_features).",
    )
    redis_timeout_s: float = Field(
        0.015,
        description="Socket and connect timeout of the direct Redis read (no retries). While "
        "3x this fits in a request's budget, the read runs on the gRPC thread itself (no "
        "hand-off to the timeout pool), the socket timeouts bounding it.",
    )
    batch_max: int = Field(1000, description="Most transactions one ScoreBatch may carry.")
    batch_budget_ms: float = Field(
        250.0, description="Budget for the feature+model path of one whole ScoreBatch."
    )
    auth_token: SecretStr | None = Field(
        None,
        description="If set, every scorer call needs `authorization: Bearer <token>` metadata "
        "(health and reflection stay open).",
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate; with the key: TLS.")
    tls_key_file: Path | None = Field(None, description="PEM private key of the certificate.")
    publish_queue_max: int = Field(
        100_000, description="Scores buffered for the `scores` topic; beyond it they are dropped."
    )
    shadow_model_version: str | None = Field(
        None,
        description="Optional shadow (challenger) model: a registry version, or 'latest' for "
        "the newest registered version that is not the champion. Every model-scored request is "
        "scored by it too, off the request path; its score goes to the `scores` topic "
        "(shadow_score) and the log, never to the caller.",
    )
    shadow_queue_max: int = Field(
        1000,
        description="Model-scored requests waiting for the shadow model; beyond it they are "
        "published without a shadow score (fraudscore_shadow_dropped_total).",
    )


class TrainingSettings(BaseSettings):
    """The training job."""

    model_config = _config("TRAINING_")

    model_dir: Path = Field(Path(".fraudscore/models"), description="The model registry folder.")
    train_days: int = Field(7, description="Length of the training period.")
    delay_days: int = Field(7, description="Gap for label delay between train and test periods.")
    test_days: int = Field(7, description="Length of the test period.")
    seed: int = Field(42, description="Random seed.")
    num_boost_round: int = Field(300, description="LightGBM max boosting rounds.")
    learning_rate: float = Field(0.05, description="LightGBM learning rate.")
    num_leaves: int = Field(31, description="LightGBM num_leaves.")
    early_stopping_rounds: int = Field(30, description="Stop when validation AP stalls.")
    promotion_tolerance: float = Field(
        0.0, description="Promote if challenger AP >= champion AP - tolerance."
    )
    validation_days: int = Field(
        2,
        description="Last days of the training period held out for early stopping (one day of "
        "a week's training holds too few frauds to pick the number of rounds steadily).",
    )
    min_data_in_leaf: int = Field(
        100,
        description="LightGBM min_data_in_leaf. Frauds are rare: smaller leaves fit a handful "
        "of them (chosen on the validation days of the quality bench's training week).",
    )
    max_bin: int = Field(
        1023,
        description="LightGBM max_bin. More bins than the default 255 keep sharp amount "
        "thresholds: with 255 quantile bins the few large amounts share wide bins, which "
        "blurred an amount cut-off (validation AP 0.72 -> 0.73 on the quality bench's "
        "training week).",
    )
    feature_fraction: float = Field(
        1.0, description="LightGBM feature_fraction (share of features tried per tree)."
    )
    pit_engine: Literal["asof", "feast"] = Field(
        "asof",
        description="Point-in-time join: 'asof' (one merge_asof over the offline card-state "
        "dataset, proven equal to Feast's) or 'feast' (get_historical_features; slow on the "
        "file offline store).",
    )
    scale_pos_weight: float | None = Field(
        1.0,
        description="Weight of fraud rows. 1 (unweighted) ranked best on the validation days "
        "of the quality bench's training week (validation AP 0.733 vs 0.713 for the square "
        "root); unset: sqrt(negatives/positives), which lifts rare fraud without inflating "
        "scores as much as full balancing.",
    )
    report_dir: Path | None = Field(
        None,
        description="Also copy each run's report (report.md + PNGs) to <report_dir>/<version>/; "
        "it is always written into the model's registry version folder.",
    )
    progress_every: int = Field(
        50, description="Log LightGBM progress every this many boosting rounds (0: never)."
    )
    engine: Literal["local", "dask"] = Field(
        "local",
        description="Where the dataset is built and the model fitted: 'local' (this process) "
        "or 'dask' (the offline store read in partitions and split on a cluster's workers, "
        "LightGBM's Dask interface; early stopping replayed over the validation days' curve "
        "of a full-length probe fit, then a refit with the chosen rounds).",
    )
    dask_scheduler: str | None = Field(
        None,
        description="Dask scheduler address (e.g. tcp://scheduler:8786) for engine 'dask'; "
        "unset: a LocalCluster of this machine's cores.",
    )


class TelemetrySettings(BaseSettings):
    """OpenTelemetry export."""

    model_config = _config("OTEL_")

    exporter_otlp_endpoint: str | None = Field(
        None, description="OTLP gRPC endpoint (e.g. http://jaeger:4317); unset disables export."
    )
    service_name: str | None = Field(None, description="Overrides the service's own name.")
    max_queue_size: int = Field(
        65_536, description="BatchSpanProcessor queue; the default 2048 drops spans in bursts."
    )


class LogSettings(BaseSettings):
    model_config = _config("LOG_")

    level: str = Field("INFO", description="Root log level.")
    json_format: bool = Field(False, description="One JSON object per line instead of text.")


def to_env(*sections: BaseSettings) -> dict[str, str]:
    """Environment variables that reproduce these settings in a child process."""
    env: dict[str, str] = {}
    for section in sections:
        prefix = str(section.model_config.get("env_prefix", ""))
        for name in type(section).model_fields:
            value = getattr(section, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"{prefix}{name}".upper()] = str(value)
    return env


class MonitorSettings(BaseSettings):
    """The model monitor: feature drift (PSI) and score distribution from the `scores` topic."""

    model_config = _config("MONITOR_")

    group_id: str = Field(
        "fraudscore-monitor", description="Consumer group on the scores topic (one per monitor)."
    )
    model_dir: Path = Field(
        Path(".fraudscore/models"),
        description="The model registry folder; each version's reference.json is read from it.",
    )
    window_size: int = Field(
        20_000, gt=0, description="Most recent score records the drift figures are computed over."
    )
    interval_s: float = Field(
        60.0,
        gt=0,
        description="Seconds between recomputations of the drift gauges (and the report).",
    )
    min_records: int = Field(
        500,
        description="Model-scored records a version needs in the window before its PSI is "
        "published: PSI over a handful of records is noise.",
    )
    metrics_port: int = Field(9466, description="Prometheus /metrics port; 0 disables it.")
    idle_s: float = Field(
        5.0,
        description="With --once: the topic counts as drained after this long without a new "
        "record (broker-reported end offsets are not trusted).",
    )
    join_timeout_s: float = Field(
        60.0, description="With --once: give up if no partition is assigned within this time."
    )

"""The faust App of the stream processor, built from settings, and the worker that runs it."""

from __future__ import annotations

import gc
import logging
import ssl
from pathlib import Path

import faust

from services.common import feast_repo, kafka, runtime, telemetry
from services.common.settings import FeastSettings, KafkaSettings, RedisSettings, StreamSettings
from services.stream import agents, metrics, transport
from services.stream.processor import CachedCard, CachedTerminal, StateCache
from services.stream.sink import FeastSink

log = logging.getLogger(__name__)


def broker_urls(settings: KafkaSettings) -> list[str]:
    return [f"kafka://{host.strip()}" for host in settings.require_bootstrap().split(",")]


def _credentials(settings: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    protocol = settings.security_protocol.upper()
    if protocol == "PLAINTEXT":
        return None
    context = ssl.create_default_context() if protocol.endswith("SSL") else None
    if protocol.startswith("SASL"):
        if not settings.sasl_username or settings.sasl_password is None:
            raise RuntimeError(f"{protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            ssl_context=context,
        )
    if context is None:
        raise RuntimeError(f"unsupported KAFKA_SECURITY_PROTOCOL {settings.security_protocol!r}")
    return faust.SSLCredentials(context)


def topic_partitions(settings: KafkaSettings, topic: str, timeout_s: float = 30.0) -> int:
    """How many partitions `topic` has, from the cluster's metadata."""
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient(settings.client_config()).list_topics(topic, timeout=timeout_s)
    partitions = len(metadata.topics[topic].partitions)
    if partitions == 0:
        raise RuntimeError(f"topic {topic} has no partitions (does it exist?)")
    return partitions


def make_app(
    kafka_settings: KafkaSettings,
    stream_settings: StreamSettings,
    sink: FeastSink,
    terminal_partitions: int | None = None,
) -> faust.App:
    """One App: the transactions, labels and terminal-events handlers writing through `sink`.

    `terminal_partitions`: of the internal terminal-events topic (default: asked from Kafka).
    """
    intake = transport.BatchIntake(batch_window_s=stream_settings.batch_window_s)
    if stream_settings.gc_freeze_batches and stream_settings.gc_gen0_threshold > 0:
        intake.after_batch = runtime.BatchHeap(stream_settings.gc_full_collect_s).after_batch
    consumer_transport = transport.transport_class(stream_settings.fetch_max_wait_ms, intake)

    class App(faust.App):
        def _new_transport(self) -> faust.types.TransportT:
            return consumer_transport(self.conf.broker_consumer, self)

    app = App(
        stream_settings.app_id,
        broker=broker_urls(kafka_settings),
        broker_credentials=_credentials(kafka_settings),
        # No tables: card state lives in the online store, so nothing needs a changelog.
        store="memory://",
        datadir=str(stream_settings.data_dir),
        broker_session_timeout=kafka_settings.session_timeout_ms / 1000,
        # Never "latest": brokers may report low end offsets for librdkafka-written topics.
        consumer_auto_offset_reset="earliest",
        topic_partitions=kafka_settings.partitions,
        web_enabled=stream_settings.web_port > 0,
        web_port=stream_settings.web_port or 6066,
        autodiscover=False,
    )

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(name, key_serializer="raw", value_serializer="raw")

    lateness_ms = stream_settings.allowed_lateness_s * 1000
    cache: StateCache[CachedCard] = StateCache(max_cards=stream_settings.cache_max_cards)
    terminal_cache: StateCache[CachedTerminal] = StateCache(
        max_cards=stream_settings.cache_max_cards
    )
    store = agents.StoreCaller(sink, stream_settings.write_retry_max_s)
    dlq = raw_topic(kafka_settings.dlq_topic)
    terminal_topic = stream_settings.terminal_topic(kafka_settings.transactions_topic)
    terminal_events = raw_topic(terminal_topic)
    if terminal_partitions is None:
        terminal_partitions = topic_partitions(kafka_settings, terminal_topic)
    forwarder = agents.TerminalForwarder(terminal_events, terminal_partitions)
    agents.attach(
        app,
        intake,
        transactions=raw_topic(kafka_settings.transactions_topic),
        labels=raw_topic(kafka_settings.labels_topic),
        transaction_handler=agents.TransactionHandler(
            store,
            agents.DeadLetters(dlq, "transaction"),
            cache,
            allowed_lateness_ms=lateness_ms,
            forwarder=forwarder,
        ),
        label_handler=agents.LabelHandler(store, agents.DeadLetters(dlq, "label"), forwarder),
        cache=cache,
        batch_size=stream_settings.batch_size,
        retry_max_s=stream_settings.write_retry_max_s,
        terminal_events=terminal_events,
        terminal_handler=agents.TerminalHandler(
            store,
            agents.DeadLetters(dlq, "terminal"),
            terminal_cache,
        ),
        terminal_batch_size=terminal_partitions,
    )
    return app


def prepare(
    kafka_settings: KafkaSettings,
    feast_settings: FeastSettings,
    redis_settings: RedisSettings,
    stream_settings: StreamSettings,
) -> Path:
    """The Feast repo dir, prepared/applied and topics created first if the settings ask so.

    The internal terminal-events topic is the stream's own, so it is created if missing even
    without the setup; where the worker may not create topics, a deploy step must.
    """
    terminal_topic = stream_settings.terminal_topic(kafka_settings.transactions_topic)
    if not stream_settings.setup_on_start:
        try:
            kafka.ensure_topics(kafka_settings, [terminal_topic])
        except Exception as exc:
            log.warning("could not ensure internal topic %s: %s", terminal_topic, exc)
        return feast_settings.work_dir.resolve()
    kafka.ensure_topics(
        kafka_settings,
        [
            kafka_settings.transactions_topic,
            kafka_settings.labels_topic,
            kafka_settings.dlq_topic,
            terminal_topic,
        ],
    )
    return feast_repo.prepare_and_apply(feast_settings, redis_settings)


def tune_gc(gen0_threshold: int) -> None:
    """Fewer young collections, and none that walks the startup objects (modules, Feast's
    registry, faust's services) again: they are moved to the permanent generation."""
    if gen0_threshold <= 0:
        return
    runtime.settle_heap()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)


def run_worker() -> int:
    """Run the worker until SIGTERM/SIGINT; configured only by environment variables."""
    kafka_settings = KafkaSettings()
    stream_settings = StreamSettings()
    telemetry.configure_tracing("fraudscore-stream")
    repo_dir = prepare(kafka_settings, FeastSettings(), RedisSettings(), stream_settings)
    sink = FeastSink(repo_dir)
    stream_settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = make_app(kafka_settings, stream_settings, sink)
    metrics.serve(stream_settings.metrics_port)
    tune_gc(stream_settings.gc_gen0_threshold)
    log.info(
        "stream worker %s: %s -> feast repo %s",
        stream_settings.app_id,
        kafka_settings.transactions_topic,
        repo_dir,
    )
    # mode's Worker installs SIGTERM/SIGINT handlers that stop the app gracefully (the agents
    # finish their batch, offsets are committed) and then exits the process.
    # quiet: no banner or spinner on stdout, which is a log stream in a container.
    worker = faust.Worker(
        app, loglevel=logging.getLogger().level, override_logging=False, quiet=True
    )
    try:
        worker.execute_from_commandline()
    finally:
        sink.close()
        telemetry.shutdown_tracing()
    return 0

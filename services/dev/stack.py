"""Start and stop the local stack: broker, topics, Feast repo, stream worker and scorer.

Services run as child processes configured only through environment variables, exactly as they
run in a container, so the local stack exercises the same entry points as production.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic_settings import BaseSettings

from services.common import feast_repo, kafka, offline_store, redis_check
from services.common.broker import EmbeddedBroker, free_port
from services.common.settings import (
    FeastSettings,
    KafkaSettings,
    RedisSettings,
    ScorerSettings,
    StreamSettings,
    to_env,
)

log = logging.getLogger(__name__)


class StackError(RuntimeError):
    pass


class ServiceExited(StackError):
    """A child service is gone; the message carries the end of its log."""


def child_env(*sections: BaseSettings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a child service runs with: `environ` (default: ours) plus `sections`."""
    env = dict(os.environ if environ is None else environ)
    env.update(to_env(*sections))
    # Unbuffered: the last lines before a crash reach the log file.
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServiceProcess:
    """`python -m <module>`, started at once, configured only through `env` (as in a
    container), its stdout and stderr in `log_path` (appended to, or truncated first)."""

    #: What `check_alive` raises; test helpers make it an AssertionError.
    exited_error: ClassVar[type[Exception]] = ServiceExited

    def __init__(
        self,
        module: str,
        env: Mapping[str, str],
        log_path: Path,
        *,
        name: str | None = None,
        append: bool = True,
        cwd: Path | None = None,
    ) -> None:
        self.name = name or module
        self.log_path = log_path
        self._log = log_path.open("ab" if append else "wb")
        log.info("starting %s (log: %s)", self.name, log_path)
        try:
            self.process: subprocess.Popen[bytes] = subprocess.Popen(
                [sys.executable, "-m", module],
                env=dict(env),
                cwd=cwd,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, chars: int = 4000) -> str:
        """The end of the log ('' before the process wrote anything)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def check_alive(self) -> None:
        """Raise `exited_error` with the end of the log if the process is gone."""
        if not self.alive():
            raise self.exited_error(
                f"{self.name} exited with code {self.process.returncode}; "
                f"end of {self.log_path}:\n{self.tail()}"
            )

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (a graceful stop: offsets committed, buffers flushed), SIGKILL after
        `timeout_s`; the exit code."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop on SIGTERM in %ss; killing it", self.name, timeout_s)
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def cpu_s(self) -> float:
        """User + system CPU seconds the process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """SIGKILL, as a crash would: no graceful stop, no offset commit, no flush."""
        if self.alive():
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


def sample_key(name: str, **labels: str) -> str:
    """A Prometheus sample's `name{label="value",...}` as prometheus_client's text exposition
    writes it: labels sorted by name, whatever order they were declared in."""
    if not labels:
        return name
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def parse_metrics(body: str) -> dict[str, float]:
    """Prometheus text exposition (no timestamps, as prometheus_client writes it) as
    `sample_key` -> value."""
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


class StreamWorker(ServiceProcess):
    """`python -m services.stream` with its Prometheus /metrics on `metrics_port` (0: none)."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        metrics_port: int,
        *,
        append: bool = True,
        cwd: Path | None = None,
    ) -> None:
        self.metrics_port = metrics_port
        super().__init__(
            "services.stream", env, log_path, name="stream worker", append=append, cwd=cwd
        )

    def metrics(self) -> dict[str, float] | None:
        """Every sample as `sample_key` -> value; None while the endpoint does not answer."""
        if self.metrics_port <= 0:
            return None
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as response:
                return parse_metrics(response.read().decode())
        except OSError:
            return None

    def metric(self, name: str, **labels: str) -> float:
        """One sample (0 when absent or while the endpoint does not answer)."""
        return (self.metrics() or {}).get(sample_key(name, **labels), 0.0)


def check_redis(settings: RedisSettings) -> None:
    error = redis_check.unreachable(settings)
    if error is not None:
        raise StackError(
            f"Redis is not answering on {settings.host}:{settings.port} ({error}).\n"
            "Start one, for example:\n"
            "  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' "
            "--appendonly no\n"
            "or point REDIS_HOST/REDIS_PORT at yours."
        )


def wait_serving(
    address: str,
    timeout_s: float,
    require_model: bool = True,
    alive: Callable[[], None] | None = None,
) -> None:
    """Block until the scorer's health service says SERVING (or answers at all, without
    `require_model`: with no model promoted yet it serves the fallback and reports NOT_SERVING).

    `alive` raises if the scorer process is gone, so a crash is reported at once, not after
    the whole timeout.
    """
    deadline = time.monotonic() + timeout_s
    host, _, port = address.rpartition(":")
    # Connect only once the port is open: a channel refused early backs off for seconds.
    while True:
        if alive is not None:
            alive()
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise StackError(f"nothing listening on {address} after {timeout_s}s") from None
            time.sleep(0.1)
    last: object = None
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if alive is not None:
                alive()
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING or not require_model:
                    return
                last = reply.status
            except grpc.RpcError as exc:
                last = exc.code()
            time.sleep(0.2)
    raise StackError(f"scorer at {address} not SERVING after {timeout_s}s (last: {last})")


@dataclass
class LocalStack:
    """The whole local stack under one run folder."""

    run_dir: Path
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    feast: FeastSettings = field(default_factory=FeastSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    scorer: ScorerSettings = field(default_factory=ScorerSettings)
    broker: EmbeddedBroker | None = None
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    repo_dir: Path | None = None
    scorer_replicas: list[ScorerSettings] = field(default_factory=list)

    def start_infrastructure(self) -> None:
        """Broker (embedded unless KAFKA_BOOTSTRAP_SERVERS is set), Redis check, topics, Feast."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        check_redis(self.redis)
        if not self.kafka.bootstrap_servers:
            self.broker = EmbeddedBroker(log_path=self.run_dir / "tansu.log").start()
            self.kafka = self.kafka.model_copy(
                update={"bootstrap_servers": self.broker.bootstrap_servers}
            )
            log.info("embedded broker: KAFKA_BOOTSTRAP_SERVERS=%s", self.broker.bootstrap_servers)
        kafka.ensure_topics(self.kafka)
        log.info("topics ready on %s", self.kafka.bootstrap_servers)
        log.info("feast apply (project %s)", self.feast.project)
        self.repo_dir = feast_repo.prepare_and_apply(self.feast, self.redis)

    def env(self) -> dict[str, str]:
        """The environment a child service runs with."""
        return child_env(self.kafka, self.redis, self.feast, self.stream, self.scorer)

    def start_stream(self) -> StreamWorker:
        worker = StreamWorker(self.env(), self.run_dir / "stream.log", self.stream.metrics_port)
        self.processes["stream"] = worker
        return worker

    def start_scorer(
        self, wait_s: float = 90.0, require_model: bool = True, replicas: int = 1
    ) -> str:
        """Start `replicas` scorer processes, each on a port (and metrics port) of its own, as
        a Deployment's pods are; the address to call: `host:port`, or for several replicas a
        comma-separated list that a round-robin client spreads its calls over
        (`services.bench.load.open_channel`). `scorer_replicas` holds each one's settings.

        One after the other: each start prepares the shared Feast repo folder.
        """
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        addresses = []
        for index in range(replicas):
            settings = self.scorer
            if index > 0 or settings.address.endswith(":0"):
                settings = settings.model_copy(update={"address": f"127.0.0.1:{free_port()}"})
            if index > 0 and settings.metrics_port > 0:
                settings = settings.model_copy(update={"metrics_port": free_port()})
            if index == 0:
                self.scorer = settings
            name = "scorer" if index == 0 else f"scorer-{index + 1}"
            env = child_env(self.kafka, self.redis, self.feast, self.stream, settings)
            self.processes[name] = ServiceProcess(
                "services.scorer", env, self.run_dir / f"{name}.log", name=name
            )
            address = settings.address.replace("[::]", "127.0.0.1")
            wait_serving(address, wait_s, require_model, alive=self.check_alive)
            log.info("%s serving on %s", name, address)
            self.scorer_replicas.append(settings)
            addresses.append(address)
        return ",".join(addresses)

    def scorer_processes(self) -> list[ServiceProcess]:
        """The scorer replicas' processes, in start order."""
        return [p for name, p in self.processes.items() if name.partition("-")[0] == "scorer"]

    def check_alive(self) -> None:
        for service in self.processes.values():
            service.check_alive()

    def offline_rows(self, dataset: Path) -> int:
        """Rows the stream has written to one offline dataset (parquet footers only)."""
        import pyarrow.parquet as pq

        assert self.repo_dir is not None, "start_infrastructure first"
        folder = self.repo_dir / dataset
        return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob("part-*.parquet"))

    def wait_for_offline(self, transactions: int, labels: int, timeout_s: float) -> None:
        """Block until the stream has logged this many transactions and labels."""
        deadline = time.monotonic() + timeout_s
        next_log = time.monotonic() + 5
        while True:
            self.check_alive()
            seen = self.offline_rows(offline_store.TRANSACTIONS_DIR)
            seen_labels = self.offline_rows(offline_store.LABELS_DIR)
            if seen >= transactions and seen_labels >= labels:
                log.info("stream caught up: %s transactions, %s labels", seen, seen_labels)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"stream logged {seen}/{transactions} transactions and "
                    f"{seen_labels}/{labels} labels in {timeout_s:.0f}s"
                )
            if time.monotonic() > next_log:
                log.info(
                    "stream: %s/%s transactions, %s/%s labels",
                    seen,
                    transactions,
                    seen_labels,
                    labels,
                )
                next_log += 5
            time.sleep(0.5)

    def stop(self) -> None:
        for service in reversed(list(self.processes.values())):
            service.stop(timeout_s=15)
        self.processes.clear()
        self.scorer_replicas.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def teardown_online_store(self) -> None:
        """Drop this project's online data from Redis (demo runs are throwaway)."""
        if self.repo_dir is None:
            return
        try:
            feast_repo.open_store(self.repo_dir).teardown()
        except Exception:
            log.warning("could not tear down the online store", exc_info=True)

    def clean(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)

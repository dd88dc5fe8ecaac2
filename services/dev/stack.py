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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    repo_dir: Path | None = None

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
        child = dict(os.environ)
        child.update(to_env(self.kafka, self.redis, self.feast, self.stream, self.scorer))
        child["PYTHONUNBUFFERED"] = "1"
        return child

    def start_stream(self) -> None:
        self._spawn("stream", [sys.executable, "-m", "services.stream"])

    def start_scorer(self, wait_s: float = 90.0, require_model: bool = True) -> str:
        if self.scorer.address.endswith(":0"):
            self.scorer = self.scorer.model_copy(update={"address": f"127.0.0.1:{free_port()}"})
        self._spawn("scorer", [sys.executable, "-m", "services.scorer"])
        address = self.scorer.address.replace("[::]", "127.0.0.1")
        wait_serving(address, wait_s, require_model, alive=self.check_alive)
        log.info("scorer serving on %s", address)
        return address

    def _spawn(self, name: str, cmd: list[str]) -> None:
        logfile = (self.run_dir / f"{name}.log").open("ab")
        log.info("starting %s (log: %s)", name, self.run_dir / f"{name}.log")
        self.processes[name] = subprocess.Popen(
            cmd, env=self.env(), stdout=logfile, stderr=subprocess.STDOUT
        )

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                logfile = self.run_dir / f"{name}.log"
                lines = logfile.read_text(errors="replace").splitlines() if logfile.exists() else []
                tail = "\n".join(lines[-20:])
                raise StackError(
                    f"{name} exited with code {proc.returncode}; last lines of {logfile}:\n{tail}"
                )

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
        for name, proc in reversed(list(self.processes.items())):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop on SIGTERM; killing it", name)
                    proc.kill()
                    proc.wait()
        self.processes.clear()
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

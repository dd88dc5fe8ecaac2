"""A redis-server of a test's own, to kill and restart without touching the shared one on 6379."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.common.broker import free_port


class OwnRedis:
    """One redis-server process on a private port, with its snapshot file in `data_dir`.

    Automatic snapshots and the AOF are off, as on the shared server; `snapshot()` writes the
    dump file on demand, and a server started again in the same folder loads it, as a Redis with
    persistence does after a crash.
    """

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.data_dir = data_dir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def client(self, timeout_s: float = 1.0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # No retry: redis-py's default backs off for seconds after a refused connection,
            # which would make a restarted server look up to seconds later than it was.
            retry=Retry(NoBackoff(), 0),
        )

    def start(self, timeout_s: float = 10.0) -> float:
        """Start the server; returns the monotonic time it first answered PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", str(self.data_dir),
                "--dbfilename", "dump.rdb",
                "--logfile", str(self.data_dir / f"redis-{self.starts}.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        client = self.client(timeout_s=0.2)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server on port {self.port} exited with {self.process.returncode}; "
                        f"see {self.data_dir}"
                    )
                try:
                    if client.ping():
                        return time.monotonic()
                except redis.ConnectionError:
                    pass
                except redis.BusyLoadingError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} not answering")
                time.sleep(0.01)
        finally:
            client.close()

    def snapshot(self) -> None:
        """Write the dump file now (SAVE), for the next start to load."""
        client = self.client()
        try:
            client.save()
        finally:
            client.close()

    def kill(self) -> float:
        """SIGKILL, as a crash: no shutdown snapshot. Returns the monotonic time it was gone."""
        assert self.process is not None, "not started"
        self.process.kill()
        self.process.wait()
        self.process = None
        return time.monotonic()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

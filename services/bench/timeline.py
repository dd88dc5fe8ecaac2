"""Open-loop load that keeps every request: when it was sent, how it ended, what answered.

This is the one send loop: `services.bench.load.run_load` boils a timeline down to
percentiles, and a fault drill reads it whole, to compare the fallback share before, during and
after an outage. The schedule, the request mix and the in-flight bound are load.py's
(`LoadSpec`, `_requests`). Send times are `time.monotonic()` readings, the one clock
(CLOCK_MONOTONIC) that another process on the same host can compare with its own.

The load runs in a process of its own (`TimelineRun`), which reports its start time as soon as
the schedule begins, so the caller can time faults against the load, not against a guess of how
long the child took to start.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.bench.load import LoadSpec, _requests, open_channel

#: `codes` of a request skipped because `max_in_flight` calls were outstanding.
NOT_SENT = -1
#: `codes` of a request still unanswered when the drain ended.
NO_ANSWER = -2


@dataclass(frozen=True)
class Timeline:
    """One entry per scheduled request, warm-up included, in schedule order."""

    started_at: float
    elapsed_s: float
    #: Monotonic send time (NaN when not sent).
    sent_at: np.ndarray
    #: How late the send was against the schedule, ms (NaN when not sent).
    lag_ms: np.ndarray
    #: Send to answer, ms (NaN unless answered with OK).
    latency_ms: np.ndarray
    #: grpc.StatusCode value number, or NOT_SENT / NO_ANSWER.
    codes: np.ndarray
    #: The answer's fallback_used (False unless answered).
    fallback: np.ndarray
    #: CPU seconds the load process spent sending and receiving, to tell a starved client.
    client_cpu_s: float = 0.0

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.latency_ms)

    @property
    def achieved_rps(self) -> float:
        return float(np.count_nonzero(~np.isnan(self.sent_at)) / self.elapsed_s)

    def window(self, start: float, end: float) -> np.ndarray:
        """Mask of requests sent in [start, end) (monotonic seconds)."""
        return (self.sent_at >= start) & (self.sent_at < end)

    def summary(self, mask: np.ndarray) -> dict[str, Any]:
        """Figures of the requests in `mask`: counts, fallback share, latency, send lag."""
        sent = int(np.count_nonzero(mask & ~np.isnan(self.sent_at)))
        ok = mask & self.ok
        answered = int(np.count_nonzero(ok))
        latencies = self.latency_ms[ok]
        lags = self.lag_ms[mask & ~np.isnan(self.lag_ms)]
        p50, p99 = np.percentile(latencies, [50, 99]) if answered else (np.nan, np.nan)
        return {
            "scheduled": int(np.count_nonzero(mask)),
            "sent": sent,
            "answered": answered,
            "errors": int(np.count_nonzero(mask)) - answered,
            "fallbacks": int(np.count_nonzero(ok & self.fallback)),
            "fallback_share": round(float(self.fallback[ok].mean()), 5) if answered else None,
            "p50_ms": round(float(p50), 3),
            "p99_ms": round(float(p99), 3),
            "send_lag_p99_ms": round(float(np.percentile(lags, 99)), 3) if lags.size else None,
        }


def run_timeline(spec: LoadSpec, on_start: Any = None) -> Timeline:
    """Drive `spec.target` for warm-up + duration, recording every request.

    `on_start(t)` is called with the monotonic time of the first scheduled send.
    """
    import grpc

    from services.proto.fraudscore.v1 import scorer_pb2_grpc

    total = int(spec.rps * (spec.warmup_s + spec.duration_s))
    requests = _requests(spec, min(total, 20_000))
    metadata = (("authorization", f"Bearer {spec.token}"),) if spec.token else None
    channel = open_channel(spec.target)
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = scorer_pb2_grpc.FraudScorerStub(channel)

    sent_at = np.full(total, np.nan)
    lag_ms = np.full(total, np.nan)
    latency_ms = np.full(total, np.nan)
    codes = np.full(total, NO_ANSWER, dtype=np.int16)
    fallback = np.zeros(total, dtype=bool)
    lock = threading.Lock()
    in_flight = 0
    sent_all = threading.Event()
    all_done = threading.Event()

    def on_done(i: int, sent: float, future: Any) -> None:
        nonlocal in_flight
        finished = time.monotonic()
        code = future.code()
        if code == grpc.StatusCode.OK:
            latency_ms[i] = (finished - sent) * 1000.0
            fallback[i] = future.result().fallback_used
        codes[i] = code.value[0]
        with lock:
            in_flight -= 1
            if in_flight == 0 and sent_all.is_set():
                all_done.set()

    interval = 1.0 / spec.rps
    cpu_start = time.process_time()
    start = time.monotonic() + 0.05
    if on_start is not None:
        on_start(start)
    for i in range(total):
        due = start + i * interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        with lock:
            if in_flight >= spec.max_in_flight:
                codes[i] = NOT_SENT
                continue
            in_flight += 1
        sent = time.monotonic()
        sent_at[i] = sent
        lag_ms[i] = (sent - due) * 1000.0
        future = stub.Score.future(
            requests[i % len(requests)], timeout=spec.timeout_s, metadata=metadata
        )
        future.add_done_callback(lambda f, i=i, sent=sent: on_done(i, sent, f))
    elapsed = time.monotonic() - start
    with lock:
        sent_all.set()
        if in_flight == 0:
            all_done.set()
    all_done.wait(spec.drain_s)
    channel.close()
    return Timeline(
        start,
        elapsed,
        sent_at,
        lag_ms,
        latency_ms,
        codes.copy(),
        fallback.copy(),
        client_cpu_s=time.process_time() - cpu_start,
    )


def _child(spec: LoadSpec, out: Any) -> None:
    timeline = run_timeline(spec, on_start=lambda t: out.put(("started", t)))
    out.put(("done", timeline))


class TimelineRun:
    """`run_timeline` in a fresh process, so the load never competes with the caller's GIL."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        ctx = multiprocessing.get_context("spawn")
        self._queue = ctx.Queue()
        self._child = ctx.Process(
            target=_child, args=(spec, self._queue), name="bench-timeline", daemon=True
        )
        self._child.start()
        self.started_at: float | None = None

    def wait_started(self, timeout_s: float = 60.0) -> float:
        """The monotonic time of the first scheduled send (blocks until the load began)."""
        if self.started_at is None:
            kind, value = self._queue.get(timeout=timeout_s)
            if kind != "started":
                raise RuntimeError(f"load process sent {kind!r} before starting")
            self.started_at = float(value)
        return self.started_at

    def result(self) -> Timeline:
        """Block until the run and its drain are over; the whole timeline."""
        self.wait_started()
        limit = self.spec.warmup_s + self.spec.duration_s + self.spec.drain_s + 60.0
        try:
            kind, value = self._queue.get(timeout=limit)
        finally:
            self._child.join(10)
            if self._child.is_alive():
                self._child.terminate()
        if kind != "done":
            raise RuntimeError(f"load process sent {kind!r} instead of its timeline")
        timeline: Timeline = value
        return timeline

    def stop(self) -> None:
        """End the load process early (cleanup after a failure)."""
        if self._child.is_alive():
            self._child.terminate()
            self._child.join(10)

"""Open-loop load for the scorer, in a process of its own.

Requests are sent on a fixed schedule (`rps`), whether or not earlier ones were answered: the
sender never waits for an answer, so a stalled server shows up in the figures instead of
silently slowing the load down (coordinated omission). Latency runs from the moment a request
is handed to gRPC; how late the sender itself was against the schedule (a busy client box,
sleep granularity) is reported apart as `send_lag_p99_ms`, so client lateness is neither hidden
nor blamed on the server. The load is bounded: at most `max_in_flight` outstanding calls
(over it, a due request counts as an error and is not sent), and outstanding calls get
`drain_s` at the end.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LoadSpec:
    target: str
    rps: float
    duration_s: float
    card_ids: Sequence[str]
    unknown_share: float = 0.1
    warmup_s: float = 1.0
    timeout_s: float = 1.0
    max_in_flight: int = 2_000
    drain_s: float = 5.0
    token: str | None = None
    seed: int = 7


@dataclass(frozen=True)
class LoadResult:
    sent: int
    answered: int
    errors: int
    fallbacks: int
    achieved_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    send_lag_p99_ms: float = 0.0

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.answered if self.answered else 0.0


def _requests(spec: LoadSpec, n: int) -> list[Any]:
    from services.bench import world
    from services.proto.fraudscore.v1 import scorer_pb2

    rng = np.random.default_rng(spec.seed)
    now_ms = int(time.time() * 1000)
    out = []
    for i in range(n):
        if not spec.card_ids or rng.random() < spec.unknown_share:
            card = f"bench-unknown-{i}"
        else:
            card = spec.card_ids[int(rng.integers(0, len(spec.card_ids)))]
        amount = int(rng.choice([rng.integers(100, 20_000), rng.integers(50_000, 300_000)]))
        txn = world.transaction(card, amount, now_ms - int(rng.integers(0, 60_000)))
        out.append(scorer_pb2.ScoreRequest(transaction=txn))
    return out


def open_channel(target: str) -> Any:
    """A channel to `target`: one scorer, or several (`"127.0.0.1:5001,127.0.0.1:5002"`) that
    each call is spread over round robin, as a client balancing over a Service's pods does."""
    import grpc

    addresses = [part.strip() for part in target.split(",") if part.strip()]
    if len(addresses) == 1:
        return grpc.insecure_channel(addresses[0])
    return grpc.insecure_channel(
        "ipv4:" + ",".join(addresses), options=[("grpc.lb_policy_name", "round_robin")]
    )


def run_load(spec: LoadSpec) -> LoadResult:
    """Drive `spec.target` for warm-up + duration; latencies of the warm-up are left out."""
    # The one send loop is the timeline's, which keeps every request; this boils it down.
    from services.bench.timeline import run_timeline

    timeline = run_timeline(spec)
    warm = int(spec.rps * spec.warmup_s)
    measured = np.zeros(timeline.codes.shape, dtype=bool)
    measured[warm:] = True
    ok = measured & timeline.ok
    answered = timeline.latency_ms[ok]
    pct = np.percentile(answered, [50, 90, 99, 99.9]) if answered.size else [np.nan] * 4
    lags = timeline.lag_ms[measured & ~np.isnan(timeline.lag_ms)]
    measured_count = int(np.count_nonzero(measured))
    total = timeline.codes.size
    elapsed = timeline.elapsed_s
    return LoadResult(
        sent=measured_count,
        answered=int(answered.size),
        # Refused, failed, skipped for too many in flight, or still unanswered after the drain.
        errors=measured_count - int(answered.size),
        fallbacks=int(np.count_nonzero(ok & timeline.fallback)),
        achieved_rps=round(total / elapsed, 1) if elapsed > 0 else 0.0,
        p50_ms=round(float(pct[0]), 3),
        p90_ms=round(float(pct[1]), 3),
        p99_ms=round(float(pct[2]), 3),
        p999_ms=round(float(pct[3]), 3),
        max_ms=round(float(answered.max()), 3) if answered.size else float("nan"),
        send_lag_p99_ms=round(float(np.percentile(lags, 99)), 3) if lags.size else 0.0,
    )


def _child(spec: LoadSpec, out: Any) -> None:
    out.put(asdict(run_load(spec)))


def run_load_in_process(spec: LoadSpec) -> LoadResult:
    """`run_load` in a fresh process, so the load never competes with the server for a GIL."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(spec, queue), name="bench-load", daemon=True)
    child.start()
    limit = spec.warmup_s + spec.duration_s + spec.drain_s + 60.0
    try:
        result = queue.get(timeout=limit)
    finally:
        child.join(10)
        if child.is_alive():
            child.terminate()
    return LoadResult(**result)

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
import threading
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
    import grpc

    from services.proto.fraudscore.v1 import scorer_pb2_grpc

    total = int(spec.rps * (spec.warmup_s + spec.duration_s))
    warm = int(spec.rps * spec.warmup_s)
    requests = _requests(spec, min(total, 20_000))
    metadata = (("authorization", f"Bearer {spec.token}"),) if spec.token else None
    channel = open_channel(spec.target)
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = scorer_pb2_grpc.FraudScorerStub(channel)

    latencies = np.full(total, np.nan)
    lags = np.zeros(total)
    lock = threading.Lock()
    state = {"in_flight": 0, "errors": 0, "fallbacks": 0, "answered": 0}
    all_done = threading.Event()

    def on_done(i: int, sent: float, future: Any) -> None:
        finished = time.perf_counter()
        with lock:
            state["in_flight"] -= 1
            if future.code() == grpc.StatusCode.OK:
                if i >= warm:
                    latencies[i] = (finished - sent) * 1000.0
                    state["answered"] += 1
                    state["fallbacks"] += int(future.result().fallback_used)
            elif i >= warm:
                state["errors"] += 1
            if state["in_flight"] == 0 and sent_all.is_set():
                all_done.set()

    sent_all = threading.Event()
    interval = 1.0 / spec.rps
    start = time.perf_counter() + 0.05
    for i in range(total):
        due = start + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        with lock:
            if state["in_flight"] >= spec.max_in_flight:
                if i >= warm:
                    state["errors"] += 1
                continue
            state["in_flight"] += 1
        sent = time.perf_counter()
        lags[i] = (sent - due) * 1000.0
        future = stub.Score.future(
            requests[i % len(requests)], timeout=spec.timeout_s, metadata=metadata
        )
        future.add_done_callback(lambda f, i=i, sent=sent: on_done(i, sent, f))
    elapsed = time.perf_counter() - start
    with lock:
        sent_all.set()
        if state["in_flight"] == 0:
            all_done.set()
    all_done.wait(spec.drain_s)
    channel.close()

    measured = latencies[warm:]
    answered = measured[~np.isnan(measured)]
    pct = np.percentile(answered, [50, 90, 99, 99.9]) if answered.size else [np.nan] * 4
    measured_count = total - warm
    return LoadResult(
        sent=measured_count,
        answered=int(answered.size),
        # Refused, failed, skipped for too many in flight, or still unanswered after the drain.
        errors=measured_count - int(answered.size),
        fallbacks=int(state["fallbacks"]),
        achieved_rps=round(total / elapsed, 1) if elapsed > 0 else 0.0,
        p50_ms=round(float(pct[0]), 3),
        p90_ms=round(float(pct[1]), 3),
        p99_ms=round(float(pct[2]), 3),
        p999_ms=round(float(pct[3]), 3),
        max_ms=round(float(answered.max()), 3) if answered.size else float("nan"),
        send_lag_p99_ms=round(float(np.percentile(lags[warm:], 99)), 3) if total > warm else 0.0,
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

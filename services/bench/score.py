"""`fraudctl bench score`: the scorer's latency at a given request rate, fast path vs. naive.

Self-contained unless `--target` is given: a Feast repo of its own (temp dir, unique project, on
the local Redis), a small trained model, card states pushed for `cards` cards, and `replicas`
scorer processes (`python -m services.scorer`, configured through the environment as deployed)
on loopback, which the load spreads its calls over round robin, as a caller balancing over a
Service's pods does. One Python process serves about 1,400 requests/s on one core here, so at
1,000/s a single replica queues (p99 ~9 ms); the default of 2 is one replica per core of the
2-core machine the targets are set on. The load runs in a process of its own
(services.bench.load). The same deployment is then measured with `feature_path="feast"` (Feast
get_online_features per request) as the baseline.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from services.bench import world
from services.bench.load import LoadResult, LoadSpec, run_load_in_process
from services.common.settings import FeastSettings, KafkaSettings, RedisSettings, ScorerSettings

log = logging.getLogger(__name__)


def _measure(
    run_dir: Path,
    feast: FeastSettings,
    redis: RedisSettings,
    model_dir: Path,
    feature_path: str,
    cards: list[str],
    rps: float,
    duration_s: float,
    warmup_s: float,
    replicas: int,
) -> tuple[LoadResult, float]:
    """The load against `replicas` scorer processes (`python -m services.scorer`, as deployed);
    the result and the scorers' CPU microseconds per request."""
    from services.dev.stack import LocalStack

    stack = LocalStack(
        run_dir=run_dir,
        # No broker: publishing scores is off the request path and not what is measured.
        kafka=KafkaSettings(bootstrap_servers=None),
        redis=redis,
        feast=feast,
        scorer=ScorerSettings(
            address="127.0.0.1:0",
            metrics_port=0,
            model_dir=model_dir,
            feature_path=feature_path,
        ),
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        target = stack.start_scorer(replicas=replicas)
        scorers = stack.scorer_processes()
        cpu_before = sum(p.cpu_s() for p in scorers)
        spec = LoadSpec(target, rps, duration_s, cards, warmup_s=warmup_s)
        log.info(
            "%s path: %s requests/s for %s s over %s replica(s)",
            feature_path,
            rps,
            duration_s,
            replicas,
        )
        result = run_load_in_process(spec)
        cpu_s = sum(p.cpu_s() for p in scorers) - cpu_before
        stack.check_alive()
    finally:
        stack.stop()
    requests = rps * (warmup_s + duration_s)
    return result, round(cpu_s / requests * 1e6, 1)


def run(
    rps: float,
    duration_s: float,
    *,
    target: str | None = None,
    token: str | None = None,
    cards: int = 3_000,
    baseline: bool = True,
    baseline_duration_s: float | None = None,
    warmup_s: float = 2.0,
    replicas: int = 2,
) -> dict[str, Any]:
    """Measure and return the figures (the JSON line `fraudctl bench score` prints).

    `target` may list several replicas (`host:port,host:port`): calls go round robin."""
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    if target is not None:
        result = run_load_in_process(
            LoadSpec(target, rps, duration_s, [], unknown_share=1.0, warmup_s=warmup_s, token=token)
        )
        return _figures(rps, duration_s, result, None, target=target)

    from services.common import feast_repo

    with tempfile.TemporaryDirectory(prefix="fraudscore-bench-") as tmp:
        root = Path(tmp)
        feast = FeastSettings(work_dir=root / "repo", project=f"bench_{uuid.uuid4().hex[:10]}")
        log.info("feast apply (project %s)", feast.project)
        redis = RedisSettings()
        store = feast_repo.open_store(feast_repo.prepare_and_apply(feast, redis))
        try:
            rng = np.random.default_rng(3)
            now_ms = int(time.time() * 1000)
            states = {
                f"bench-card-{i}": world.card_history(rng, now_ms, busy=bool(rng.random() < 0.2))
                for i in range(cards)
            }
            # Cards without history have nothing to store; the stream would not write them.
            states = {card: s for card, s in states.items() if s.last_event_ms}
            log.info("pushing %s card states", len(states))
            world.push_states(store, states)
            models = root / "models"
            world.promote_model(models, reason="bench")
            card_ids = list(states)
            fast, fast_cpu = _measure(
                root / "run-redis",
                feast,
                redis,
                models,
                "redis",
                card_ids,
                rps,
                duration_s,
                warmup_s,
                replicas,
            )
            naive = None
            if baseline:
                naive, _ = _measure(
                    root / "run-feast",
                    feast,
                    redis,
                    models,
                    "feast",
                    card_ids,
                    rps,
                    baseline_duration_s or duration_s,
                    warmup_s,
                    replicas,
                )
        finally:
            try:
                store.teardown()
            except Exception as exc:
                log.warning("could not remove the bench's online data: %s", exc)
    figures = _figures(rps, duration_s, fast, naive)
    figures["replicas"] = replicas
    figures["scorer_cpu_us_per_request"] = fast_cpu
    return figures


def _figures(
    rps: float,
    duration_s: float,
    result: LoadResult,
    baseline: LoadResult | None,
    target: str | None = None,
) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "rps": rps,
        "achieved_rps": result.achieved_rps,
        "duration_s": duration_s,
        "p50_ms": result.p50_ms,
        "p90_ms": result.p90_ms,
        "p99_ms": result.p99_ms,
        "p999_ms": result.p999_ms,
        "max_ms": result.max_ms,
        "send_lag_p99_ms": result.send_lag_p99_ms,
        "requests": result.sent,
        "errors": result.errors,
        "fallback_rate": round(result.fallback_rate, 5),
        "baseline_p99_ms": baseline.p99_ms if baseline else None,
        "ratio": (
            round(baseline.p99_ms / result.p99_ms, 2)
            if baseline and result.p99_ms and np.isfinite(result.p99_ms)
            else None
        ),
    }
    if baseline is not None:
        figures["baseline"] = {k: v for k, v in asdict(baseline).items()} | {
            "fallback_rate": round(baseline.fallback_rate, 5)
        }
    if target is not None:
        figures["target"] = target
    return figures

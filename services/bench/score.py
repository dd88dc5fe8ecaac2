"""`fraudctl bench score`: the scorer's latency at a given request rate, fast path vs. naive.

Self-contained unless `--target` is given: a Feast repo of its own (temp dir, unique project, on
the local Redis), a small trained model, card states pushed for `cards` cards, and the scorer
in this process on loopback. The load runs in a separate process (services.bench.load). The
same server code is then measured with `feature_path="feast"` (Feast get_online_features per
request) as the baseline.
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
from services.common.settings import FeastSettings, RedisSettings, ScorerSettings

log = logging.getLogger(__name__)


def _measure(
    store: Any,
    model_dir: Path,
    feature_path: str,
    cards: list[str],
    rps: float,
    duration_s: float,
    warmup_s: float,
) -> LoadResult:
    from services.scorer.server import build_reader, create_server, tune_runtime

    settings = ScorerSettings(
        model_dir=model_dir,
        metrics_port=0,
        feature_path=feature_path,
    )
    reader = build_reader(settings, store)
    # As `serve` does before its port opens: the bench measures the server as it runs in
    # production.
    tune_runtime(settings)
    server, port = create_server(
        "127.0.0.1:0", settings, feature_reader=reader, watch_registry=False
    )
    try:
        spec = LoadSpec(f"127.0.0.1:{port}", rps, duration_s, cards, warmup_s=warmup_s)
        log.info("%s path: %s requests/s for %s s", feature_path, rps, duration_s)
        return run_load_in_process(spec)
    finally:
        server.stop(0).wait()


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
) -> dict[str, Any]:
    """Measure and return the figures (the JSON line `fraudctl bench score` prints)."""
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
        store = feast_repo.open_store(feast_repo.prepare_and_apply(feast, RedisSettings()))
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
            fast = _measure(store, models, "redis", card_ids, rps, duration_s, warmup_s)
            naive = None
            if baseline:
                naive = _measure(
                    store,
                    models,
                    "feast",
                    card_ids,
                    rps,
                    baseline_duration_s or duration_s,
                    warmup_s,
                )
        finally:
            try:
                store.teardown()
            except Exception as exc:
                log.warning("could not remove the bench's online data: %s", exc)
    return _figures(rps, duration_s, fast, naive)


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

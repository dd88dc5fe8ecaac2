"""Fault drills on a real scorer process (issue #6): a Redis outage under load, corrupt models.

Each drill prints its figures as one JSON line on stdout (shown even when pytest captures).
The scorer runs as `python -m services.scorer`, configured through the environment, as in
production; the load runs in a process of its own (services.bench.timeline).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from own_redis import OwnRedis
from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.bench import world
from services.bench.load import LoadSpec
from services.bench.timeline import Timeline, TimelineRun
from services.common import feast_repo, features
from services.common.broker import free_port
from services.common.model_registry import ModelRegistry
from services.common.settings import FeastSettings, KafkaSettings, RedisSettings, ScorerSettings
from services.dev.stack import LocalStack

pytestmark = pytest.mark.e2e


class DrillSettings(BaseSettings):
    """The Redis outage drill's shape: 1,000 requests/s for 60 s, Redis down for 20 s in the
    middle, as the issue says, against two scorer replicas that the load calls round robin,
    as a Deployment's pods are called. One scorer process would run at 70-80 % of its one
    core at 1,000/s, and with only one such process on the 2-core CI machine the drill failed
    in 2 of 5 CI runs: a backlog that did not drain."""

    model_config = SettingsConfigDict(env_prefix="DRILL_", extra="forbid", env_file=None)

    rps: float = Field(1000.0, description="Requests per second, open loop.")
    replicas: int = Field(2, ge=1, description="Scorer processes the load is spread over.")
    duration_s: float = Field(60.0, description="Length of the load.")
    outage_at_s: float = Field(20.0, description="When Redis is killed, from the load's start.")
    outage_s: float = Field(20.0, description="How long Redis stays down.")
    warmup_s: float = Field(
        2.0,
        description="Load before the drill's clock starts (connections, pools, first calls); "
        "its requests must not fail either, but their fallbacks are not judged.",
    )
    cards: int = Field(1000, description="Cards with a stored state the load scores.")
    min_rate_share: float = Field(
        0.9, description="Share of `rps` the load must reach for the drill to count."
    )
    capacity_share: float = Field(
        0.5,
        description="The drill runs at `rps` or at this share of what the machine can serve, "
        "whichever is lower: CPU per request of the scorers and the load together, measured "
        "before the drill, against the machine's cores.",
    )
    min_rps: float = Field(
        200.0, description="Below this the machine is too slow for the drill to mean anything."
    )


#: The calibration load before the drill: requests/s and seconds. Low enough for the slowest
#: machine the drill has run on: at 600/s a CI run's calibration itself overloaded the scorers,
#: tripped a breaker on slow Redis reads, and the drill then met it still open (10 s reset).
CALIBRATION_RPS = 300.0
CALIBRATION_S = 4.0
#: The short load that gives a breaker left open its half-open trial call.
SETTLE_RPS = 20.0


def affordable_rps(
    address: str, scorers: list[Any], cards: list[str], drill: DrillSettings
) -> dict[str, float]:
    """The rate the drill runs at, and why. Overload alone misses the budget whatever Redis
    does (the 50 ms budget is queueing time on a saturated core), so a drill at a rate the
    machine cannot carry tests the machine, not the fallback: the same code passed at
    1,000/s on one session's machine (~1.1 ms of scorer and load CPU per request) and failed
    before the outage on the next one's (~1.7 ms per request, 2 cores)."""
    cpu_before = sum(p.cpu_s() for p in scorers)
    run = TimelineRun(
        LoadSpec(address, CALIBRATION_RPS, CALIBRATION_S, cards, warmup_s=1.0, timeout_s=1.0)
    )
    try:
        timeline = run.result()
    finally:
        run.stop()
    sent = max(int(np.count_nonzero(~np.isnan(timeline.sent_at))), 1)
    cpu_per_request = (sum(p.cpu_s() for p in scorers) - cpu_before + timeline.client_cpu_s) / sent
    capacity = (os.cpu_count() or 1) / cpu_per_request
    return {
        "rps": round(min(drill.rps, drill.capacity_share * capacity), 1),
        "configured_rps": drill.rps,
        "capacity_rps": round(capacity, 1),
        "calibration_cpu_us_per_request": round(cpu_per_request * 1e6, 1),
        "calibration_fallbacks": int(np.count_nonzero(timeline.ok & timeline.fallback)),
    }


def breaker_states(ports: list[int]) -> list[float | None]:
    return [scrape(port).get("fraudscore_breaker_state") for port in ports]


def settle_breakers(
    address: str, ports: list[int], cards: list[str], reset_s: float, attempts: int = 3
) -> int:
    """Closes every breaker the calibration may have left open, before the drill's clock starts:
    an open breaker only tries again on a call after its reset timeout. Returns how many
    reset timeouts were waited out; fails the test when a breaker stays open."""
    for waited in range(attempts + 1):
        if all(state == 0 for state in breaker_states(ports)):
            return waited
        if waited == attempts:
            break
        time.sleep(reset_s + 0.2)
        run = TimelineRun(LoadSpec(address, SETTLE_RPS, 1.0, cards, warmup_s=0.0, timeout_s=1.0))
        try:
            run.result()
        finally:
            run.stop()
    pytest.fail(f"a breaker stays open with Redis up: states {breaker_states(ports)}")


# ---------------------------------------------------------------------------------------------
# Metrics


def scrape(port: int, timeout_s: float = 1.0) -> dict[str, float]:
    """One /metrics read: `name` or `name{k="v",...}` -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def metric_sum(samples: dict[str, float], name: str) -> float | None:
    """Sum over every label set of `name`; None when the scorer does not export it."""
    values = [v for k, v in samples.items() if k == name or k.startswith(name + "{")]
    return sum(values) if values else None


class BreakerWatch(threading.Thread):
    """Scrapes the scorer every `interval_s`: `samples` holds (monotonic time, breaker state or
    None when unreadable), `scrapes` the whole metrics of each read, for the fallback reasons."""

    def __init__(self, port: int, interval_s: float = 0.2) -> None:
        super().__init__(name="breaker-watch", daemon=True)
        self.port = port
        self.interval_s = interval_s
        self.samples: list[tuple[float, float | None]] = []
        self.scrapes: list[tuple[float, dict[str, float]]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            now = time.monotonic()
            try:
                metrics = scrape(self.port)
            except OSError:
                self.samples.append((now, None))
            else:
                self.samples.append((now, metrics.get("fraudscore_breaker_state")))
                self.scrapes.append((now, metrics))
            self._halt.wait(self.interval_s)

    def fallback_reasons(self, start: float, end: float) -> dict[str, float]:
        """Fallbacks by reason counted between the scrapes nearest `start` and `end`."""
        inside = [m for t, m in self.scrapes if start <= t <= end]
        if not inside:
            return {}
        first, last = inside[0], inside[-1]
        prefix = "fraudscore_fallbacks_total{"
        return {
            k[len(prefix) : -1]: v - first.get(k, 0.0)
            for k, v in last.items()
            if k.startswith(prefix) and v - first.get(k, 0.0) > 0
        }

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


# ---------------------------------------------------------------------------------------------
# Drill 1: Redis stopped for 20 s in the middle of 60 s at 1,000 requests/s


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _stack(run_dir: Path, redis: RedisSettings, feast: FeastSettings, **scorer: Any) -> LocalStack:
    run_dir.mkdir(parents=True, exist_ok=True)
    return LocalStack(
        run_dir=run_dir,
        # No broker: the `scores` topic is not what these drills are about.
        kafka=KafkaSettings(bootstrap_servers=None),
        redis=redis,
        feast=feast,
        scorer=ScorerSettings(address="127.0.0.1:0", metrics_port=free_port(), **scorer),
    )


@pytest.fixture()
def outage_scorer(
    tmp_path: Path, own_redis: OwnRedis
) -> Iterator[tuple[LocalStack, str, list[str]]]:
    """A scorer process on `own_redis`, with card states stored and snapshotted there."""
    drill = DrillSettings()
    redis = RedisSettings(host="127.0.0.1", port=own_redis.port)
    feast = FeastSettings(
        work_dir=tmp_path / "feature_repo", project=f"drill_{uuid.uuid4().hex[:8]}"
    )
    repo_dir = feast_repo.prepare_and_apply(feast, redis)
    rng = np.random.default_rng(11)
    now_ms = int(time.time() * 1000)
    states = {
        f"drill-card-{i}": world.card_history(rng, now_ms, busy=bool(rng.random() < 0.2))
        for i in range(drill.cards)
    }
    states = {card: s for card, s in states.items() if s.last_event_ms}
    world.push_states(feast_repo.open_store(repo_dir), states)
    # What a Redis with persistence gets back after a crash: the restart loads this snapshot.
    own_redis.snapshot()
    world.promote_model(tmp_path / "models", reason="drill champion")
    stack = _stack(tmp_path / "run", redis, feast, model_dir=tmp_path / "models")
    stack.repo_dir = repo_dir
    try:
        address = stack.start_scorer(replicas=drill.replicas)
        yield stack, address, list(states)
    finally:
        stack.stop()


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _breaker_figures(
    samples: list[tuple[float, float | None]], killed: float, back: float
) -> dict[str, float | None]:
    """When the breaker was first seen open in the outage, first seen closed after Redis
    returned, and seen open again after that (None: never)."""
    opened = next((t for t, s in samples if killed <= t < back and s == 2), None)
    closed = next((t for t, s in samples if t >= back and s == 0), None)
    reopened = None
    if closed is not None:
        reopened = next((t for t, s in samples if t > closed and s is not None and s != 0), None)
    return {
        "open_at_s_after_kill": round(opened - killed, 3) if opened is not None else None,
        "closed_at_s_after_restart": round(closed - back, 3) if closed is not None else None,
        "reopened_at_s_after_restart": round(reopened - back, 3) if reopened is not None else None,
    }


@pytest.mark.timeout(900)
def test_redis_outage_under_load_falls_back_only_while_redis_is_down(
    outage_scorer: tuple[LocalStack, str, list[str]],
    own_redis: OwnRedis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack, address, cards = outage_scorer
    reset_s = stack.scorer.breaker_reset_s
    budget_s = stack.scorer.budget_ms / 1000.0
    scorers = stack.scorer_processes()
    rate = affordable_rps(address, scorers, cards, DrillSettings())
    assert rate["rps"] >= DrillSettings().min_rps, f"this machine cannot run the drill: {rate}"
    ports = [replica.metrics_port for replica in stack.scorer_replicas]
    rate["calibration_resets_waited"] = settle_breakers(address, ports, cards, reset_s)
    drill = DrillSettings(rps=rate["rps"])
    # One watch per replica: each has a breaker of its own, as each pod does.
    watches = [BreakerWatch(replica.metrics_port) for replica in stack.scorer_replicas]
    for watch in watches:
        watch.start()
    cpu_before = sum(p.cpu_s() for p in scorers)
    run = TimelineRun(
        LoadSpec(
            address, drill.rps, drill.duration_s, cards, warmup_s=drill.warmup_s, timeout_s=1.0
        )
    )
    try:
        t0 = run.wait_started() + drill.warmup_s
        _sleep_until(t0 + drill.outage_at_s)
        killed = own_redis.kill()
        _sleep_until(t0 + drill.outage_at_s + drill.outage_s)
        restarting = time.monotonic()
        back = own_redis.start()
        timeline = run.result()
        scorer_cpu_s = sum(p.cpu_s() for p in scorers) - cpu_before
    finally:
        run.stop()
        for watch in watches:
            watch.stop()
    stack.check_alive()
    final_metrics = [scrape(replica.metrics_port) for replica in stack.scorer_replicas]

    # The grace windows: a request sent within a budget of the kill may be caught mid-read; one
    # sent within reset timeout + budget of Redis answering again may still meet the open
    # breaker. "during" ends when the new server is launched, not when it first answered us.
    end = t0 + drill.duration_s + 1.0
    phases = {
        "warmup": (t0 - drill.warmup_s, t0),
        "before": (t0, killed - budget_s),
        "kill_edge": (killed - budget_s, killed),
        "during": (killed, restarting),
        "recovery": (restarting, back + reset_s + budget_s),
        "after": (back + reset_s + budget_s, end),
    }
    masks = {name: timeline.window(a, b) for name, (a, b) in phases.items()}
    breakers = [_breaker_figures(watch.samples, killed, back) for watch in watches]
    figures = _outage_figures(
        timeline, drill, masks, _slowest(breakers), _summed(final_metrics), t0, killed, back
    )
    for name, (a, b) in phases.items():
        figures["phases"][name]["fallback_reasons"] = _summed(
            [watch.fallback_reasons(a, b) for watch in watches]
        )
    figures["redis_restart_launched_at_s"] = round(restarting - t0, 3)
    figures["replicas"] = len(watches)
    figures["breakers"] = breakers
    figures["breaker_states"] = [_transitions(watch.samples, t0) for watch in watches]
    figures["fallback_share_per_s"] = [
        timeline.summary(timeline.window(t0 + i, t0 + i + 1))["fallback_share"]
        for i in range(int(drill.duration_s))
    ]
    figures["breaker_reset_s"] = reset_s
    figures["budget_ms"] = stack.scorer.budget_ms
    sent = max(figures["sent"], 1)
    figures["scorer_cpu_us_per_request"] = round(scorer_cpu_s / sent * 1e6, 1)
    figures["client_cpu_us_per_request"] = round(timeline.client_cpu_s / sent * 1e6, 1)
    figures["load_avg_1m"] = _load_average()
    figures["rate"] = rate
    with capsys.disabled():
        print(f"\nredis outage drill: {json.dumps(figures)}")

    assert figures["errors"] == 0, f"failed RPCs: {figures['error_codes']}"
    assert timeline.achieved_rps >= drill.min_rate_share * drill.rps, (
        f"the load reached only {timeline.achieved_rps:.0f} of {drill.rps:.0f} requests/s "
        f"(send lag p99 {figures['send_lag_p99_ms']} ms): this machine cannot run the drill"
    )
    summary = figures["phases"]
    assert summary["before"]["fallbacks"] == 0, (
        f"fallback before the outage; reasons {summary['before']['fallback_reasons']}"
    )
    assert summary["during"]["answered"] > 0
    assert summary["during"]["fallback_share"] == 1.0, "a model score without Redis"
    for replica, (watch, breaker) in enumerate(zip(watches, breakers, strict=True)):
        states_before = [s for t, s in watch.samples if t < killed]
        assert states_before and all(s == 0 for s in states_before), (
            f"replica {replica}: breaker not closed before"
        )
        assert breaker["open_at_s_after_kill"] is not None, (
            f"replica {replica}: breaker never seen open in the outage"
        )
        closed = breaker["closed_at_s_after_restart"]
        assert closed is not None, f"replica {replica}: breaker not closed after Redis returned"
        # Slack for reading the state only every `interval_s`, and for a scrape itself waiting
        # on a busy scorer: the state can be late by that much, never early.
        assert closed <= reset_s + 2 * watch.interval_s + 0.5, (
            f"replica {replica}: breaker closed {closed:.2f} s after Redis returned, "
            f"reset timeout {reset_s} s"
        )
    assert summary["after"]["fallbacks"] == 0, (
        "fallback after recovery + reset timeout; reasons "
        f"{summary['after']['fallback_reasons']}, breaker {figures['breaker_states']}"
    )


def _slowest(breakers: list[dict[str, float | None]]) -> dict[str, float | None]:
    """The replicas' breaker figures taken together: open and closed again when the last
    replica was (None if one never was), reopened when the first one was."""

    def last(key: str) -> float | None:
        values = [b[key] for b in breakers]
        return None if any(v is None for v in values) else max(v for v in values if v is not None)

    reopened = [v for b in breakers if (v := b["reopened_at_s_after_restart"]) is not None]
    return {
        "open_at_s_after_kill": last("open_at_s_after_kill"),
        "closed_at_s_after_restart": last("closed_at_s_after_restart"),
        "reopened_at_s_after_restart": min(reopened) if reopened else None,
    }


def _summed(samples: list[dict[str, float]]) -> dict[str, float]:
    """Counters of several replicas added up by sample key."""
    out: dict[str, float] = {}
    for one in samples:
        for key, value in one.items():
            out[key] = out.get(key, 0.0) + value
    return out


def _transitions(samples: list[tuple[float, float | None]], t0: float) -> list[list[float]]:
    """[seconds from the load's start, state] each time the scraped breaker state changed."""
    out: list[list[float]] = []
    last: float | None = -1.0
    for t, s in samples:
        if s is not None and s != last:
            out.append([round(t - t0, 2), s])
            last = s
    return out


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


def _outage_figures(
    timeline: Timeline,
    drill: DrillSettings,
    masks: dict[str, np.ndarray],
    breaker: dict[str, float | None],
    metrics: dict[str, float],
    t0: float,
    killed: float,
    back: float,
) -> dict[str, Any]:
    everything = np.ones(timeline.codes.shape, dtype=bool)
    total = timeline.summary(everything)
    codes, counts = np.unique(timeline.codes[timeline.codes != 0], return_counts=True)
    return {
        "rps": drill.rps,
        "achieved_rps": round(timeline.achieved_rps, 1),
        "duration_s": drill.duration_s,
        "sent": total["sent"],
        "answered": total["answered"],
        "errors": total["errors"],
        "error_codes": {int(c): int(n) for c, n in zip(codes, counts, strict=True)},
        "send_lag_p99_ms": total["send_lag_p99_ms"],
        "redis_killed_at_s": round(killed - t0, 3),
        "redis_back_at_s": round(back - t0, 3),
        **breaker,
        "phases": {name: timeline.summary(mask) for name, mask in masks.items()},
        "fallbacks_by_reason": {
            k: v for k, v in metrics.items() if k.startswith("fraudscore_fallbacks_total")
        },
    }


# ---------------------------------------------------------------------------------------------
# Drill 2: a corrupt model promoted


def _booster_text(names: list[str], columns: list[int], seed: int) -> str:
    rows, labels = world.synthetic_rows(300, seed)
    frame = np.asarray(rows)[:, columns]
    params = {"objective": "binary", "verbose": -1, "num_leaves": 8, "min_data_in_leaf": 5}
    data = lgb.Dataset(frame, label=np.asarray(labels), feature_name=names)
    return str(lgb.train(params, data, num_boost_round=10).model_to_string())


def fewer_features() -> tuple[str, dict[str, Any]]:
    """A model of an older feature list, honestly recorded in its metadata."""
    names = list(features.FEATURE_NAMES)[:-3]
    return _booster_text(names, list(range(len(names))), 5), {"feature_names": names}


def renamed_features() -> tuple[str, dict[str, Any]]:
    """The right number of features under other names, with metadata claiming the right ones."""
    count = len(features.FEATURE_NAMES)
    text = _booster_text([f"f_{i}" for i in range(count)], list(range(count)), 6)
    return text, world.model_metadata()


def garbage() -> tuple[str, dict[str, Any]]:
    return "this is not a LightGBM model\n\x7f\x01 garbage\n", world.model_metadata()


def truncated() -> tuple[str, dict[str, Any]]:
    """A good model cut in half, as a copy that died midway would leave it."""
    text = world.train_model_text(seed=7)
    return text[: len(text) // 2], world.model_metadata()


class ModelDrill:
    """A scorer process following a registry, and the checks the drill repeats."""

    def __init__(self, stack: LocalStack, address: str) -> None:
        import grpc

        from services.proto.fraudscore.v1 import scorer_pb2_grpc

        self.stack = stack
        self.registry = ModelRegistry(stack.scorer.model_dir)
        self.channel = grpc.insecure_channel(address)
        self.stub = scorer_pb2_grpc.FraudScorerStub(self.channel)

    def metrics(self) -> dict[str, float]:
        return scrape(self.stack.scorer.metrics_port)

    def score(self) -> Any:
        from services.proto.fraudscore.v1 import scorer_pb2

        txn = world.transaction("drill-model-card", 150_000, int(time.time() * 1000))
        return self.stub.Score(scorer_pb2.ScoreRequest(transaction=txn), timeout=5)

    def promote(self, text: str, metadata: dict[str, Any], reason: str) -> str:
        record = self.registry.register(text, metadata)
        self.registry.promote(record.version, reason)
        return record.version

    def wait_for(self, what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> float:
        """Seconds until `check()` holds; fails at once if the scorer process died."""
        start = time.monotonic()
        while not check():
            self.stack.check_alive()
            if time.monotonic() - start > timeout_s:
                pytest.fail(f"not within {timeout_s:.0f} s: {what}")
            time.sleep(0.1)
        return time.monotonic() - start

    def refused(self, version: str) -> bool:
        """Whether the scorer has logged refusing `version`."""
        log = (self.stack.run_dir / "scorer.log").read_text(errors="replace")
        return any(version in line and "refus" in line.lower() for line in log.splitlines())

    def close(self) -> None:
        self.channel.close()


@pytest.fixture()
def model_drill(
    tmp_path: Path,
    redis_settings: RedisSettings,
    feast_settings: FeastSettings,
    feature_repo_dir: Path,
) -> Iterator[tuple[ModelDrill, str]]:
    """A scorer serving a good champion, polling its registry every half second."""
    models = tmp_path / "models"
    champion = world.promote_model(models, seed=0, reason="drill champion")
    stack = _stack(
        tmp_path / "run",
        redis_settings,
        feast_settings,
        model_dir=models,
        registry_poll_s=0.5,
        # Roomy: this drill is about models; a busy box or a busy shared Redis must not flip
        # answers to the rules.
        budget_ms=1000.0,
        redis_timeout_s=1.0,
    )
    stack.repo_dir = feature_repo_dir
    try:
        drill = ModelDrill(stack, stack.start_scorer())
        try:
            yield drill, champion
        finally:
            drill.close()
    finally:
        stack.stop()


def exported(metrics: dict[str, float], name: str) -> float:
    """The value of `name` (summed over labels); fails when the scorer does not export it."""
    value = metric_sum(metrics, name)
    if value is None:
        pytest.fail(f"the scorer does not export {name}")
    return value


ALERT = "fraudscore_model_alert"
REFUSED = "fraudscore_model_refused_total"


def _refuse(
    drill: ModelDrill, serving: str, kind: str, artifact: tuple[str, dict[str, Any]]
) -> dict[str, Any]:
    """Promote a bad artifact; check it is refused, the old model serves, the alert is set."""
    refused_before = metric_sum(drill.metrics(), REFUSED) or 0.0
    version = drill.promote(*artifact, reason=f"drill: {kind}")
    seconds = drill.wait_for(
        f"scorer refuses the {kind} model {version}", lambda: drill.refused(version)
    )
    replies = [drill.score() for _ in range(20)]
    assert {r.model_version for r in replies} == {f"lgbm-{serving}"}, kind
    assert not any(r.fallback_used for r in replies), kind
    # The log line may come a moment before the metrics are updated.
    drill.wait_for(
        f"{REFUSED} counts the refusal",
        lambda: exported(drill.metrics(), REFUSED) >= refused_before + 1,
        timeout_s=5.0,
    )
    metrics = drill.metrics()
    assert exported(metrics, ALERT) == 1.0, f"alert not set after a {kind} model"
    assert exported(metrics, REFUSED) == refused_before + 1
    return {"kind": kind, "version": version, "refused_after_s": round(seconds, 2)}


def _promote_good(drill: ModelDrill, seed: int) -> tuple[str, float]:
    good = world.promote_model(drill.registry.root, seed=seed, reason="drill: good again")
    served_after = drill.wait_for(
        f"the good model {good} serves", lambda: drill.score().model_version == f"lgbm-{good}"
    )
    replies = [drill.score() for _ in range(20)]
    assert {r.model_version for r in replies} == {f"lgbm-{good}"}
    assert not any(r.fallback_used for r in replies)
    return good, served_after


def test_corrupt_or_mismatched_models_are_refused_and_the_old_one_keeps_serving(
    model_drill: tuple[ModelDrill, str], capsys: pytest.CaptureFixture[str]
) -> None:
    drill, champion = model_drill
    first = drill.score()
    assert first.model_version == f"lgbm-{champion}" and not first.fallback_used
    assert exported(drill.metrics(), ALERT) == 0.0, "alert set before any refusal"

    refusals = [
        _refuse(drill, champion, kind, make())
        for kind, make in (
            ("garbage", garbage),
            ("fewer-features", fewer_features),
            ("renamed-features", renamed_features),
        )
    ]
    good, served_after = _promote_good(drill, seed=1)
    metrics = drill.metrics()
    figures = {
        "champion": champion,
        "refusals": refusals,
        "good_version": good,
        "good_served_after_s": round(served_after, 2),
        "model_alert": metric_sum(metrics, ALERT),
        "model_refused_total": metric_sum(metrics, REFUSED),
    }
    with capsys.disabled():
        print(f"\ncorrupt model drill: {json.dumps(figures)}")
    assert exported(metrics, ALERT) == 0.0, "alert still set with a good model"
    assert exported(metrics, REFUSED) == len(refusals)


def test_a_truncated_model_is_refused_without_taking_the_scorer_down(
    model_drill: tuple[ModelDrill, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A model file cut in half, as a copy that died midway leaves it. LightGBM 4.7 does not
    raise on this one: its parser aborts the process (SIGSEGV / std::terminate), so whatever
    loads it must not be the serving process."""
    drill, champion = model_drill
    refusal = _refuse(drill, champion, "truncated", truncated())
    good, served_after = _promote_good(drill, seed=1)
    with capsys.disabled():
        print(
            "\ntruncated model drill: "
            + json.dumps({**refusal, "good_version": good, "good_served_after_s": served_after})
        )
    assert exported(drill.metrics(), ALERT) == 0.0, "alert still set with a good model"


# ---------------------------------------------------------------------------------------------
# The drills' load client


def test_the_timeline_load_records_every_request_it_sends(
    model_drill: tuple[ModelDrill, str],
) -> None:
    drill, _ = model_drill
    address = drill.stack.scorer.address
    spec = LoadSpec(address, 200.0, 2.0, ["drill-model-card"], warmup_s=0.5, timeout_s=2.0)
    run = TimelineRun(spec)
    try:
        started = run.wait_started()
        timeline = run.result()
    finally:
        run.stop()
    scheduled = int(spec.rps * (spec.warmup_s + spec.duration_s))
    assert timeline.started_at == started
    assert timeline.codes.shape == (scheduled,)
    assert np.all(timeline.codes == 0), "every request answered OK"
    assert np.all(np.diff(timeline.sent_at) > 0), "sent in schedule order"
    assert timeline.sent_at[0] >= started
    # The schedule is 5 ms apart; a send may be late, never early.
    due = started + np.arange(scheduled) * (1.0 / spec.rps)
    assert np.all(timeline.sent_at >= due - 1e-9)
    np.testing.assert_allclose(timeline.lag_ms, (timeline.sent_at - due) * 1000.0, atol=1e-6)
    assert not timeline.fallback.any()
    figures = timeline.summary(timeline.window(started, started + 10.0))
    assert figures["answered"] == figures["sent"] == scheduled
    assert figures["errors"] == 0 and figures["fallback_share"] == 0.0
    assert timeline.summary(timeline.window(started - 10.0, started))["scheduled"] == 0

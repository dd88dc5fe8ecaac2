"""The shadow model scores off the request path: offering never blocks, records are never lost."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import pytest

from services.bench import world
from services.common import features, model_registry
from services.common.model_registry import ModelRegistry
from services.proto.fraudscore.v1 import scorer_pb2
from services.scorer.model import LoadedModel
from services.scorer.outcome import ScoreOutcome
from services.scorer.shadow import LATEST, ShadowScorer, registry_loader

FEATS = features.all_features(None, 25.0, world.NIGHT_MS)


class FakeModel(LoadedModel):
    """Scores 0.25, optionally waiting for `gate` first (a slow challenger)."""

    def __init__(self, version: str, gate: threading.Event | None = None) -> None:
        super().__init__(version, lgb.Booster.__new__(lgb.Booster))
        object.__setattr__(self, "gate", gate)
        object.__setattr__(self, "threads", [])

    def predict(self, vector: object) -> float:
        self.threads.append(threading.current_thread().name)  # type: ignore[attr-defined]
        if self.gate is not None:  # type: ignore[attr-defined]
            self.gate.wait(10)  # type: ignore[attr-defined]
        return 0.25


def outcome(tid: str, fallback: bool = False) -> ScoreOutcome:
    return ScoreOutcome(
        transaction_id=tid,
        score=0.9,
        decision=scorer_pb2.DECISION_DECLINE,
        model_version="rules-v1" if fallback else "lgbm-champ",
        reasons=[],
        fallback_used=fallback,
        fallback_reason="timeout" if fallback else None,
        features=FEATS,
    )


def wait_for(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_model_outcomes_are_published_with_the_challengers_score_from_its_own_thread() -> None:
    published: list[tuple[ScoreOutcome, str]] = []
    model = FakeModel("challenger")
    shadow = ShadowScorer(
        lambda: model, lambda o: published.append((o, threading.current_thread().name))
    )
    try:
        shadow(outcome("t1"))
        wait_for(lambda: len(published) == 1)
    finally:
        shadow.close()
    record, thread = published[0]
    assert thread == "shadow-scorer"
    assert model.threads == ["shadow-scorer"]  # type: ignore[attr-defined]
    assert record.shadow_score == 0.25
    assert record.shadow_model_version == "lgbm-challenger"
    assert record.score == 0.9  # the champion's answer is untouched
    proto = record.to_record()
    assert proto.HasField("shadow_score") and proto.shadow_score == 0.25


def test_a_slow_challenger_never_blocks_the_caller_and_a_full_queue_drops_the_shadow_only() -> None:
    gate = threading.Event()
    published: list[ScoreOutcome] = []
    dropped: list[int] = []
    shadow = ShadowScorer(
        lambda: FakeModel("slow", gate),
        published.append,
        queue_max=2,
        on_dropped=lambda: dropped.append(1),
    )
    try:
        # The worker holds one, the queue two; the rest are published at once, without shadow.
        for i in range(6):
            shadow(outcome(f"t{i}"))
        wait_for(lambda: len(published) >= 3)
        assert all(o.shadow_score is None for o in published)
        assert len(dropped) == len(published)
        gate.set()
        wait_for(lambda: len(published) == 6)
    finally:
        gate.set()
        shadow.close()
    assert sorted(o.transaction_id for o in published) == [f"t{i}" for i in range(6)]
    assert sum(o.shadow_score is not None for o in published) == 6 - len(dropped)


def test_fallback_answers_bypass_the_shadow() -> None:
    published: list[ScoreOutcome] = []
    model = FakeModel("challenger")
    shadow = ShadowScorer(lambda: model, published.append)
    try:
        shadow(outcome("f", fallback=True))
    finally:
        shadow.close()
    assert [o.shadow_score for o in published] == [None]
    assert model.threads == []  # type: ignore[attr-defined]


def test_a_failing_challenger_still_publishes_the_record() -> None:
    published: list[ScoreOutcome] = []

    class Broken(FakeModel):
        def predict(self, vector: object) -> float:
            raise RuntimeError("boom")

    shadow = ShadowScorer(lambda: Broken("broken"), published.append)
    try:
        shadow(outcome("t"))
        wait_for(lambda: len(published) == 1)
    finally:
        shadow.close()
    assert published[0].shadow_score is None


def test_latest_means_the_newest_version_that_is_not_the_champion(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    loaded: list[str] = []

    def load(record: object) -> LoadedModel:
        loaded.append(record.version)  # type: ignore[attr-defined]
        return FakeModel(record.version)  # type: ignore[attr-defined]

    loader = registry_loader(registry, LATEST, load)
    assert loader() is None  # an empty registry has no challenger
    first = registry.register("a", {})
    registry.promote(first.version)
    assert loader() is None  # only the champion
    second = registry.register("b", {})
    model = loader()
    assert model is not None and model.version == second.version
    assert loader() is model  # cached
    registry.promote(second.version)
    model = loader()
    assert model is not None and model.version == first.version
    assert loaded == [second.version, first.version]


class FrozenClock(datetime):
    """Every registration in the same second: versions differ only by their counter."""

    @classmethod
    def now(cls, tz: object = None) -> FrozenClock:
        return cls(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_latest_follows_creation_order_past_ten_versions_in_one_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_registry, "datetime", FrozenClock)
    registry = ModelRegistry(tmp_path)
    created = [registry.register(str(i), {}).version for i in range(12)]
    # As text the eleventh version (`-10`) sorts before the tenth (`-9`).
    assert created[-2:] == ["20260101T120000-10", "20260101T120000-11"]
    assert max(created[:11]) == "20260101T120000-9"
    registry.promote(created[-1])

    loader = registry_loader(registry, LATEST, lambda record: FakeModel(record.version))
    model = loader()
    assert model is not None and model.version == created[10]
    assert registry.versions() == created


def test_a_named_version_is_loaded_once(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    record = registry.register("a", {})
    calls: list[str] = []

    def load(r: object) -> LoadedModel:
        calls.append(r.version)  # type: ignore[attr-defined]
        return FakeModel(r.version)  # type: ignore[attr-defined]

    loader = registry_loader(registry, record.version, load)
    assert loader() is loader()
    assert calls == [record.version]


def test_an_unloadable_challenger_keeps_the_previous_one() -> None:
    models: list[LoadedModel] = [FakeModel("one")]

    def loader() -> LoadedModel | None:
        if not models:
            raise RuntimeError("gone")
        return models.pop()

    shadow = ShadowScorer(loader, None)
    try:
        shadow.reload()
        assert shadow.model is not None and shadow.model.version == "one"
    finally:
        shadow.close()


@pytest.mark.parametrize("queue_max", [1, 10])
def test_close_scores_what_is_queued(queue_max: int) -> None:
    published: list[ScoreOutcome] = []
    shadow = ShadowScorer(lambda: FakeModel("c"), published.append, queue_max=queue_max)
    shadow(outcome("t"))
    shadow.close()
    assert len(published) == 1

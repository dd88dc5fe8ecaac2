"""ModelHolder follows the champion but only swaps in a version that loaded."""

from __future__ import annotations

import time
from pathlib import Path

import lightgbm as lgb
import pytest

from services.common.model_registry import ModelRecord, ModelRegistry
from services.scorer.errors import ModelLoadError, ModelNotReady
from services.scorer.model import LoadedModel
from services.scorer.registry import ModelHolder


def fake_loader(record: ModelRecord) -> LoadedModel:
    if record.model_path.read_text() == "broken":
        raise ModelLoadError("broken artifact")
    return LoadedModel(record.version, lgb.Booster.__new__(lgb.Booster))


def test_no_champion_means_not_ready(tmp_path: Path) -> None:
    holder = ModelHolder(ModelRegistry(tmp_path), loader=fake_loader)
    assert holder.refresh() is False
    with pytest.raises(ModelNotReady):
        holder.require()


def test_new_champion_is_swapped_in_and_listeners_hear_of_it(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    holder = ModelHolder(registry, loader=fake_loader)
    seen: list[str] = []
    holder.add_listener(lambda m: seen.append(m.version))
    first = registry.register("ok", {})
    registry.promote(first.version)
    assert holder.refresh() is True
    assert holder.refresh() is False  # unchanged champion: no reload
    second = registry.register("ok", {})
    registry.promote(second.version)
    assert holder.refresh() is True
    assert seen == [first.version, second.version]


def test_broken_champion_is_refused_once_and_the_old_model_keeps_serving(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    calls: list[str] = []

    def counting_loader(record: ModelRecord) -> LoadedModel:
        calls.append(record.version)
        return fake_loader(record)

    holder = ModelHolder(registry, loader=counting_loader)
    good = registry.register("ok", {})
    registry.promote(good.version)
    holder.refresh()
    bad = registry.register("broken", {})
    registry.promote(bad.version)
    assert holder.refresh() is False
    assert holder.refresh() is False
    assert holder.require().version == good.version
    assert bad.version in holder.refused
    assert calls == [good.version, bad.version]


def test_watcher_picks_up_a_promotion(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    holder = ModelHolder(registry, loader=fake_loader)
    holder.start_watching(0.02)
    try:
        record = registry.register("ok", {})
        registry.promote(record.version)
        deadline = time.monotonic() + 5
        while holder.current is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert holder.require().version == record.version
    finally:
        holder.stop_watching()

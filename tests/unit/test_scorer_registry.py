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


def reasoned_loader(record: ModelRecord) -> LoadedModel:
    text = record.model_path.read_text()
    if text != "ok":
        raise ModelLoadError(f"{text} artifact", text)
    return LoadedModel(record.version, lgb.Booster.__new__(lgb.Booster))


def test_refusals_are_reported_with_their_reason_and_raise_the_alert_until_a_good_version(
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(tmp_path)
    holder = ModelHolder(registry, loader=reasoned_loader)
    refusals: list[tuple[str, str]] = []
    alerts: list[bool] = []
    holder.add_refusal_listener(lambda version, reason: refusals.append((version, reason)))
    holder.add_alert_listener(alerts.append)
    good = registry.register("ok", {})
    registry.promote(good.version)
    holder.refresh()
    assert holder.alert is False

    bad = registry.register("unreadable", {})
    registry.promote(bad.version)
    holder.refresh()
    holder.refresh()  # a refused version is not retried, nor reported again
    assert refusals == [(bad.version, "unreadable")]
    assert holder.alert is True
    assert holder.require().version == good.version

    mismatched = registry.register("feature_mismatch", {})
    registry.promote(mismatched.version)
    holder.refresh()
    assert refusals[-1] == (mismatched.version, "feature_mismatch")
    assert holder.alert is True

    fixed = registry.register("ok", {})
    registry.promote(fixed.version)
    holder.refresh()
    assert holder.alert is False
    assert alerts == [False, True, False]


def test_rolling_back_to_the_serving_model_clears_the_alert(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    holder = ModelHolder(registry, loader=reasoned_loader)
    good = registry.register("ok", {})
    registry.promote(good.version)
    holder.refresh()
    bad = registry.register("unreadable", {})
    registry.promote(bad.version)
    holder.refresh()
    assert holder.alert is True
    registry.rollback()
    holder.refresh()
    assert holder.alert is False


def test_no_alert_while_no_model_serves_at_all(tmp_path: Path) -> None:
    # Nothing older keeps serving: the scorer is NOT_SERVING and fraudscore_model_loaded is 0.
    registry = ModelRegistry(tmp_path)
    holder = ModelHolder(registry, loader=reasoned_loader)
    refusals: list[tuple[str, str]] = []
    holder.add_refusal_listener(lambda version, reason: refusals.append((version, reason)))
    bad = registry.register("failed_sanity_check", {})
    registry.promote(bad.version)
    holder.refresh()
    assert refusals == [(bad.version, "failed_sanity_check")]
    assert holder.alert is False


def test_a_loader_bug_or_missing_version_gets_its_own_reason(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)

    def buggy(record: ModelRecord) -> LoadedModel:
        raise KeyError("bug")

    holder = ModelHolder(registry, loader=buggy)
    refusals: list[str] = []
    holder.add_refusal_listener(lambda _version, reason: refusals.append(reason))
    record = registry.register("ok", {})
    registry.promote(record.version)
    holder.refresh()
    (tmp_path / "CHAMPION").write_text("no-such-version")
    holder.refresh()
    assert refusals == ["loader_error", "registry_error"]

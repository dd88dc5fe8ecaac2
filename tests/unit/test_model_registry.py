"""Registry: versions appear whole, promotion and rollback move one atomic pointer."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.model_registry import ModelRegistry, RegistryError


def test_registered_version_is_not_serving_until_promoted(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    record = registry.register("model-a", {"feature_names": ["x"]})
    assert registry.champion() is None
    registry.promote(record.version)
    champion = registry.champion()
    assert champion is not None
    assert champion.version == record.version
    assert champion.model_path.read_text() == "model-a"
    assert champion.metadata["feature_names"] == ["x"]


def test_rollback_returns_to_the_previous_champion(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    first = registry.register("a", {})
    second = registry.register("b", {})
    assert first.version != second.version
    registry.promote(first.version)
    registry.promote(second.version)
    assert registry.rollback() == first.version
    assert registry.champion_version() == first.version
    with pytest.raises(RegistryError):
        registry.rollback()


def test_unknown_version_cannot_be_promoted(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    with pytest.raises(RegistryError):
        registry.promote("nope")
    assert registry.champion_version() is None

"""`fraudctl model rollback` moves the champion back, and refuses when there is nothing to go to."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.common.model_registry import ModelRegistry
from services.scorer import cli


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_rollback_restores_the_previous_champion(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    first = registry.register("a", {})
    second = registry.register("b", {})
    registry.promote(first.version)
    registry.promote(second.version)
    assert run(["model", "rollback", "--model-dir", str(tmp_path)]) == 0
    assert registry.champion_version() == first.version


def test_rollback_without_an_earlier_champion_fails(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    registry.promote(registry.register("a", {}).version)
    assert run(["model", "rollback", "--model-dir", str(tmp_path)]) == 1


def test_serve_accepts_an_address() -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", "--address", "127.0.0.1:6000"])
    assert args.address == "127.0.0.1:6000"
    assert callable(args.func)

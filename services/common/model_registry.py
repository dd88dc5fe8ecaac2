"""A local model registry folder: versioned artifacts, an atomic champion pointer, history.

Layout::

    <root>/versions/<version>/model.txt       LightGBM text model
    <root>/versions/<version>/metadata.json   feature list, metrics, data window, versions
    <root>/CHAMPION                           the promoted version (replaced atomically)
    <root>/history.jsonl                      every promotion and rollback, appended

Training registers and promotes; the scorer reads `champion()` and watches it for changes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class RegistryError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelRecord:
    version: str
    directory: Path
    metadata: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.directory / "model.txt"


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def version_order(version: str) -> tuple[str, int, str]:
    """Sort key of a version in creation order: its timestamp, then its collision counter as a
    number (as text `-10` sorts before `-9`). Names of another shape sort by their text."""
    stamp, _, counter = version.partition("-")
    return (stamp, int(counter), "") if counter.isdigit() else (stamp, -1, counter)


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions_dir = root / "versions"
        self.champion_file = root / "CHAMPION"
        self.history_file = root / "history.jsonl"

    def new_version(self) -> str:
        """Unique, and in creation order under `version_order`: UTC timestamp plus a counter on
        collision."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        version = stamp
        n = 1
        while (self.versions_dir / version).exists():
            version = f"{stamp}-{n}"
            n += 1
        return version

    def register(self, model_text: str, metadata: dict[str, Any]) -> ModelRecord:
        """Store an artifact under a new version (not yet serving: see `promote`)."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        version = self.new_version()
        final = self.versions_dir / version
        staging = Path(tempfile.mkdtemp(dir=self.versions_dir, prefix=f".{version}."))
        meta = {**metadata, "version": version}
        (staging / "model.txt").write_text(model_text)
        (staging / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        # A version folder appears complete or not at all.
        os.replace(staging, final)
        return ModelRecord(version, final, meta)

    def get(self, version: str) -> ModelRecord:
        directory = self.versions_dir / version
        meta_path = directory / "metadata.json"
        if not meta_path.exists():
            raise RegistryError(f"no model version {version!r} in {self.root}")
        return ModelRecord(version, directory, json.loads(meta_path.read_text()))

    def versions(self) -> list[str]:
        """Every registered version, oldest first (see `version_order`)."""
        if not self.versions_dir.exists():
            return []
        names = [
            p.name for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        ]
        return sorted(names, key=version_order)

    def champion_version(self) -> str | None:
        try:
            text = self.champion_file.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def champion(self) -> ModelRecord | None:
        version = self.champion_version()
        return self.get(version) if version else None

    def promote(self, version: str, reason: str = "") -> None:
        self.get(version)  # refuse unknown versions
        previous = self.champion_version()
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.champion_file, version + "\n")
        self._log("promote", version, previous, reason)

    def rollback(self) -> str:
        """Return to the champion before the current one; returns the version now serving."""
        current = self.champion_version()
        if current is None:
            raise RegistryError("nothing to roll back: no champion")
        for event in reversed(self.history()):
            if event["action"] == "promote" and event["version"] == current:
                previous = event.get("previous")
                if not previous:
                    break
                _atomic_write(self.champion_file, previous + "\n")
                self._log("rollback", previous, current, "rollback")
                return str(previous)
        raise RegistryError(f"no earlier champion recorded before {current}")

    def history(self) -> list[dict[str, Any]]:
        if not self.history_file.exists():
            return []
        return [json.loads(line) for line in self.history_file.read_text().splitlines() if line]

    def _log(self, action: str, version: str, previous: str | None, reason: str) -> None:
        event = {
            "ts": time.time(),
            "action": action,
            "version": version,
            "previous": previous,
            "reason": reason,
        }
        with self.history_file.open("a") as handle:
            handle.write(json.dumps(event) + "\n")

"""Which model serves: the registry's champion, swapped in only after it loaded cleanly.

A newly promoted version that fails to load (unreadable, wrong features, implausible outputs)
is refused and logged; the model already serving keeps serving. A refused version is not retried:
versions are immutable, so it would fail again every poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from services.common.model_registry import ModelRecord, ModelRegistry
from services.scorer.errors import ModelNotReady
from services.scorer.model import LoadedModel

log = logging.getLogger(__name__)

Loader = Callable[[ModelRecord], LoadedModel]
Listener = Callable[[LoadedModel], None]


class ModelHolder:
    """Holds the serving model; `refresh` (or the watcher thread) follows the champion."""

    def __init__(self, registry: ModelRegistry, loader: Loader = LoadedModel.load) -> None:
        self.registry = registry
        self._loader = loader
        self._current: LoadedModel | None = None
        self._refused: set[str] = set()
        self._listeners: list[Listener] = []
        # Serializes refreshes (watcher vs. an explicit call); reads of _current need no lock.
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise ModelNotReady("no model loaded yet")
        return model

    @property
    def refused(self) -> frozenset[str]:
        return frozenset(self._refused)

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(model)` on every swap, and now if a model is already serving."""
        self._listeners.append(listener)
        if self._current is not None:
            listener(self._current)

    def refresh(self) -> bool:
        """Load the champion if it changed; True when a new model now serves."""
        with self._refresh_lock:
            try:
                version = self.registry.champion_version()
            except OSError as exc:
                log.warning("cannot read the champion pointer: %s", exc)
                return False
            current = self._current
            if version is None or version in self._refused:
                return False
            if current is not None and current.version == version:
                return False
            try:
                model = self._loader(self.registry.get(version))
            # ModelLoadError, RegistryError, or a loader bug: none may take the scorer down.
            except Exception as exc:
                self._refused.add(version)
                log.error(
                    "refused model %s, still serving %s: %s",
                    version,
                    current.version if current else "none",
                    exc,
                )
                return False
            self._current = model
            log.info(
                "now serving model %s (was %s)", version, current.version if current else "none"
            )
        for listener in self._listeners:
            try:
                listener(model)
            except Exception:
                log.exception("model listener failed")
        return True

    def start_watching(self, poll_s: float) -> None:
        """Poll the registry every `poll_s` seconds in a daemon thread until `stop_watching`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._watch, args=(poll_s,), name="model-watcher", daemon=True
        )
        self._thread.start()

    def stop_watching(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _watch(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                self.refresh()
            except Exception:
                # The watcher must outlive any single bad poll.
                log.exception("model registry poll failed")

"""Which model serves: the registry's champion, swapped in only after it loaded cleanly.

A newly promoted version that fails to load (unreadable, wrong features, implausible outputs)
is refused and logged; the model already serving keeps serving. A refused version is not retried:
versions are immutable, so it would fail again every poll.

Refusals are also reported to refusal listeners (`version, reason`: the metric
fraudscore_model_refused_total), and the alert listeners hear whether the newest promoted
version is refused while an older model keeps serving (fraudscore_model_alert) after every
poll that could change it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from services.common.model_registry import ModelRecord, ModelRegistry, RegistryError
from services.scorer.errors import ModelLoadError, ModelNotReady
from services.scorer.model import LoadedModel

log = logging.getLogger(__name__)

Loader = Callable[[ModelRecord], LoadedModel]
Listener = Callable[[LoadedModel], None]
RefusalListener = Callable[[str, str], None]
AlertListener = Callable[[bool], None]


def refusal_reason(exc: BaseException) -> str:
    """A fixed, low-cardinality code for why an artifact was refused (a metric label)."""
    if isinstance(exc, ModelLoadError):
        return exc.reason
    if isinstance(exc, RegistryError):
        return "registry_error"
    return "loader_error"


class ModelHolder:
    """Holds the serving model; `refresh` (or the watcher thread) follows the champion."""

    def __init__(self, registry: ModelRegistry, loader: Loader = LoadedModel.load) -> None:
        self.registry = registry
        self._loader = loader
        self._current: LoadedModel | None = None
        self._refused: set[str] = set()
        self._listeners: list[Listener] = []
        self._refusal_listeners: list[RefusalListener] = []
        self._alert_listeners: list[AlertListener] = []
        self._alert = False
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

    @property
    def alert(self) -> bool:
        """True while the newest promoted version is refused and an older model serves."""
        return self._alert

    def add_refusal_listener(self, listener: RefusalListener) -> None:
        """Call `listener(version, reason)` whenever a promoted version is refused."""
        self._refusal_listeners.append(listener)

    def add_alert_listener(self, listener: AlertListener) -> None:
        """Call `listener(alert)` now and whenever `alert` may have changed."""
        self._alert_listeners.append(listener)
        listener(self._alert)

    def refresh(self) -> bool:
        """Load the champion if it changed; True when a new model now serves."""
        with self._refresh_lock:
            try:
                version = self.registry.champion_version()
            except OSError as exc:
                log.warning("cannot read the champion pointer: %s", exc)
                return False
            swapped = self._refresh(version)
            current = self._current
            alert = version is not None and version in self._refused and current is not None
            self._set_alert(alert)
        if swapped and current is not None:
            for listener in self._listeners:
                try:
                    listener(current)
                except Exception:
                    log.exception("model listener failed")
        return swapped

    def _set_alert(self, alert: bool) -> None:
        changed = alert != self._alert
        self._alert = alert
        if changed:
            for listener in self._alert_listeners:
                try:
                    listener(alert)
                except Exception:
                    log.exception("model alert listener failed")

    def _refresh(self, version: str | None) -> bool:
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
            reason = refusal_reason(exc)
            log.error(
                "refused model %s (%s), still serving %s: %s",
                version,
                reason,
                current.version if current else "none",
                exc,
            )
            for on_refused in self._refusal_listeners:
                try:
                    on_refused(version, reason)
                except Exception:
                    log.exception("model refusal listener failed")
            return False
        self._current = model
        log.info("now serving model %s (was %s)", version, current.version if current else "none")
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

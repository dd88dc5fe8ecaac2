"""The shadow model: a challenger scores what the champion scored, off the request path.

The request thread only offers the finished outcome to a bounded queue (`offer`, never
blocking) and returns its answer; a daemon thread scores the same features with the challenger,
logs both scores and hands the outcome, now carrying `shadow_score`, to the publish hook. When
the queue is full the outcome is published at once without a shadow score and counted as
dropped, so a slow challenger can neither delay an answer nor lose a score record. Fallback
answers have no model features worth comparing and bypass the shadow.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable

from services.common import features
from services.common.model_registry import ModelRegistry
from services.scorer.model import LoadedModel
from services.scorer.outcome import ScoreOutcome

log = logging.getLogger(__name__)

#: SCORER_SHADOW_MODEL_VERSION value meaning "the newest version that is not the champion".
LATEST = "latest"

Hook = Callable[[ScoreOutcome], None]
Loader = Callable[[], LoadedModel | None]


def registry_loader(
    registry: ModelRegistry,
    version: str,
    load: Callable[..., LoadedModel] = LoadedModel.load,
) -> Loader:
    """Loads the named version, or for `latest` the newest non-champion version; None if none.

    The loaded model is cached per version, so a call is cheap unless the choice changed.
    """
    cache: dict[str, LoadedModel] = {}

    def loader() -> LoadedModel | None:
        wanted: str | None = version
        if version == LATEST:
            champion = registry.champion_version()
            # `versions()` is in creation order; the text order is not (`-10` < `-9`).
            others = [v for v in registry.versions() if v != champion]
            wanted = others[-1] if others else None
        if wanted is None:
            return None
        if wanted not in cache:
            cache.clear()
            cache[wanted] = load(registry.get(wanted))
        return cache[wanted]

    return loader


class ShadowScorer:
    """An `on_scored` hook that adds the challenger's score before passing outcomes on."""

    def __init__(
        self,
        loader: Loader,
        publish: Hook | None,
        queue_max: int = 1000,
        on_scored: Callable[[], None] | None = None,
        on_dropped: Callable[[], None] | None = None,
    ) -> None:
        self._loader = loader
        self._publish = publish
        self._on_scored = on_scored
        self._on_dropped = on_dropped
        self._queue: queue.Queue[ScoreOutcome | None] = queue.Queue(maxsize=queue_max)
        self.model: LoadedModel | None = None
        self.reload()
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._thread.start()

    def reload(self) -> None:
        """Pick the challenger again (e.g. after a promotion); keep the old one on failure."""
        try:
            model = self._loader()
        except Exception as exc:
            log.error("shadow model not loaded, keeping %s: %s", self._version(), exc)
            return
        if model is not None and (self.model is None or model.version != self.model.version):
            log.info("shadow model: %s", model.version)
        self.model = model

    def _version(self) -> str:
        return self.model.version if self.model is not None else "none"

    def __call__(self, outcome: ScoreOutcome) -> None:
        """Queue a model-scored outcome for the challenger; never blocks."""
        if outcome.fallback_used or outcome.features is None or self.model is None:
            self._pass_on(outcome)
            return
        try:
            self._queue.put_nowait(outcome)
        except queue.Full:
            if self._on_dropped is not None:
                self._on_dropped()
            self._pass_on(outcome)

    def _pass_on(self, outcome: ScoreOutcome) -> None:
        if self._publish is not None:
            self._publish(outcome)

    def _run(self) -> None:
        while True:
            outcome = self._queue.get()
            if outcome is None:
                return
            try:
                self._pass_on(self._shadow(outcome))
            except Exception:
                # A broken challenger must not cost the record: publish it without a shadow.
                log.exception("shadow scoring failed")
                self._pass_on(outcome)

    def _shadow(self, outcome: ScoreOutcome) -> ScoreOutcome:
        model = self.model
        if model is None or outcome.features is None:
            return outcome
        score = model.predict(features.feature_vector(outcome.features))
        if self._on_scored is not None:
            self._on_scored()
        log.debug(
            "shadow %s: %s %.4f vs champion %s %.4f",
            outcome.transaction_id,
            model.model_version,
            score,
            outcome.model_version,
            outcome.score,
        )
        return dataclasses.replace(
            outcome, shadow_score=score, shadow_model_version=model.model_version
        )

    def close(self, timeout_s: float = 5.0) -> None:
        """Score what is queued (up to `timeout_s`), then stop the thread."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

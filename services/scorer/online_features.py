"""Reads a card's state from the Feast online store and finishes its features at read time.

The features come from `services.common.features.all_features`, the same function the stream
and training use, so what the model sees here is what it was trained on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from services.common import feast_repo, features
from services.common.features import CardState

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)


class FeatureReader(Protocol):
    """Where card state comes from; tests may pass any object with this method."""

    def read_state(self, card_id: str) -> CardState | None: ...


class FeastFeatureReader:
    """Card state from Feast's online store (Redis). Errors propagate: the caller falls back."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self._refs = feast_repo.feature_refs()

    def read_state(self, card_id: str) -> CardState | None:
        response = self.store.get_online_features(
            features=self._refs, entity_rows=[{feast_repo.ENTITY_KEY: card_id}]
        ).to_dict()
        return features.from_row({name: values[0] for name, values in response.items()})

    def warm_up(self) -> None:
        """Load the registry and open the Redis connection now, not on the first real call."""
        try:
            self.read_state("__warm_up__")
        except Exception as exc:
            log.warning("feature store warm-up failed (the fallback answers meanwhile): %s", exc)


def read_features(
    reader: FeatureReader, card_id: str, amount: float, event_ms: int
) -> dict[str, float]:
    """The model input for a transaction, from the card state stored before it."""
    return features.all_features(reader.read_state(card_id), amount, event_ms)

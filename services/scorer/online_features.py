"""Reads card and terminal state from the Feast online store and finishes features at read time.

The features come from `services.common.features.all_features`, the same function the stream
and training use, so what the model sees here is what it was trained on.

A reader always gives card state (`read_state`). Terminal state (`read_terminal_state`, or
`read_terminal_states` for many at once) is a separate capability, so readers written before
the terminal features existed still type-check; without it the terminal features are NaN, which
the model was not trained on, and a warning says so once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from services.common import feast_repo, features
from services.common.features import CardState, TerminalState

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)


class FeatureReader(Protocol):
    """Where card state comes from; tests may pass any object with this method."""

    def read_state(self, card_id: str) -> CardState | None: ...


@runtime_checkable
class TerminalReader(Protocol):
    """A reader that also knows terminal state."""

    def read_terminal_state(self, terminal_id: str) -> TerminalState | None: ...


@runtime_checkable
class CombinedReader(Protocol):
    """A reader that fetches a card and a terminal in one round trip."""

    def read_states_of(
        self, card_id: str, terminal_id: str
    ) -> tuple[CardState | None, TerminalState | None]: ...


def _rows(response: dict[str, list[object]]) -> dict[str, object]:
    return {name: values[0] for name, values in response.items()}


class FeastFeatureReader:
    """Card and terminal state from Feast's online store (Redis). Errors propagate: the caller
    falls back."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self._card_refs = feast_repo.feature_refs()
        self._terminal_refs = feast_repo.terminal_feature_refs()
        self._refs = feast_repo.model_feature_refs()

    def read_state(self, card_id: str) -> CardState | None:
        response = self.store.get_online_features(
            features=self._card_refs, entity_rows=[{feast_repo.ENTITY_KEY: card_id}]
        ).to_dict()
        return features.from_row(_rows(response))

    def read_terminal_state(self, terminal_id: str) -> TerminalState | None:
        response = self.store.get_online_features(
            features=self._terminal_refs,
            entity_rows=[{feast_repo.TERMINAL_ENTITY_KEY: terminal_id}],
        ).to_dict()
        return features.terminal_from_row(_rows(response))

    def read_states_of(
        self, card_id: str, terminal_id: str
    ) -> tuple[CardState | None, TerminalState | None]:
        """Both states in one `get_online_features` call (one entity row with both keys)."""
        response = self.store.get_online_features(
            features=self._refs,
            entity_rows=[
                {feast_repo.ENTITY_KEY: card_id, feast_repo.TERMINAL_ENTITY_KEY: terminal_id}
            ],
        ).to_dict()
        row = _rows(response)
        return features.from_row(row), features.terminal_from_row(row)

    def warm_up(self) -> None:
        """Load the registry and open the Redis connection now, not on the first real call."""
        try:
            self.read_states_of("__warm_up__", "__warm_up__")
        except Exception as exc:
            log.warning("feature store warm-up failed (the fallback answers meanwhile): %s", exc)


_warned: set[str] = set()


def _warn_no_terminals(reader: object) -> None:
    name = type(reader).__name__
    if name not in _warned:
        _warned.add(name)
        log.warning("%s reads no terminal state: terminal features are NaN (skew)", name)


def read_terminal_states(
    reader: FeatureReader, terminal_ids: Sequence[str]
) -> list[TerminalState | None]:
    """Many terminal states: in one round trip when the reader can, else one read each."""
    batch_read = getattr(reader, "read_terminal_states", None)
    if batch_read is not None:
        return list(batch_read(terminal_ids))
    if isinstance(reader, TerminalReader):
        return [reader.read_terminal_state(t) for t in terminal_ids]
    _warn_no_terminals(reader)
    return [None] * len(terminal_ids)


def read_states(
    reader: FeatureReader, card_id: str, terminal_id: str
) -> tuple[CardState | None, TerminalState | None]:
    """The card's and the terminal's state, in one round trip when the reader can."""
    if isinstance(reader, CombinedReader):
        return reader.read_states_of(card_id, terminal_id)
    return reader.read_state(card_id), read_terminal_states(reader, [terminal_id])[0]


def read_features(
    reader: FeatureReader, card_id: str, terminal_id: str, amount: float, event_ms: int
) -> dict[str, float]:
    """The model input for a transaction, from the card and terminal state stored before it."""
    card, terminal = read_states(reader, card_id, terminal_id)
    return features.all_features(card, amount, event_ms, terminal)

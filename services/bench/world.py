"""A small, self-contained world for the scorer: a model, card states and transactions.

Shared by `fraudctl bench score` and the scorer's tests, so both exercise the same data.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from services.common import feast_repo, features
from services.common.features import CardState, apply_transaction
from services.common.model_registry import ModelRegistry
from services.proto.fraudscore.v1 import transaction_pb2

#: 2026-01-01 02:00 UTC: a night hour, so is_night varies in the synthetic data.
NIGHT_MS = 1_767_232_800_000
LATENESS_MS = 300_000


def card_history(rng: np.random.Generator, now_ms: int, busy: bool) -> CardState:
    """A card's state before `now_ms`: a burst of recent payments if `busy`, else a few."""
    state = CardState()
    count = int(rng.integers(6, 12)) if busy else int(rng.integers(0, 3))
    for j in reversed(range(count)):  # oldest first: older than the lateness is dropped
        apply_transaction(
            state, f"h{uuid.uuid4().hex[:10]}", now_ms - (j + 1) * 90_000, 50.0, LATENESS_MS
        )
    return state


def synthetic_rows(n: int, seed: int) -> tuple[list[list[float]], list[int]]:
    """Model inputs from real card states; fraud = a burst of spend or a large night payment."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for _ in range(n):
        t0 = NIGHT_MS + int(rng.integers(0, 86_400_000))
        burst = bool(rng.random() < 0.3)
        state = card_history(rng, t0, burst)
        amount = float(rng.uniform(900, 3_000) if rng.random() < 0.3 else rng.uniform(5, 200))
        feats = features.all_features(state, amount, t0)
        rows.append(features.feature_vector(feats))
        labels.append(int(burst or (amount > 800 and feats["is_night"] == 1.0)))
    return rows, labels


def train_model_text(seed: int = 0, rows: int = 300) -> str:
    """A small LightGBM model on the scorer's feature list, as registry text."""
    import lightgbm as lgb

    frame, labels = synthetic_rows(rows, seed)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 8, "min_data_in_leaf": 5}
    data = lgb.Dataset(
        np.asarray(frame), label=np.asarray(labels), feature_name=list(features.FEATURE_NAMES)
    )
    return str(lgb.train(params, data, num_boost_round=20).model_to_string())


def model_metadata() -> dict[str, Any]:
    return {"feature_names": list(features.FEATURE_NAMES)}


def promote_model(root: Path, seed: int = 0, reason: str = "") -> str:
    """Register and promote a small model in the registry at `root`; its version."""
    registry = ModelRegistry(root)
    record = registry.register(train_model_text(seed), model_metadata())
    registry.promote(record.version, reason)
    return record.version


def push_states(store: Any, states: Mapping[str, CardState]) -> None:
    """Write card states to the online store the way the stream does (Feast push)."""
    import pandas as pd
    from feast.data_source import PushMode

    frame = pd.DataFrame(
        [
            {
                feast_repo.ENTITY_KEY: card,
                feast_repo.TIMESTAMP: pd.Timestamp(state.last_event_ms, unit="ms", tz="UTC"),
                **features.to_list_row(state),
            }
            for card, state in states.items()
        ]
    )
    store.push(feast_repo.PUSH_SOURCE, frame, to=PushMode.ONLINE)


def transaction(
    card_id: str, amount_minor: int = 150_000, event_ms: int = NIGHT_MS, **overrides: Any
) -> transaction_pb2.Transaction:
    from google.protobuf.timestamp_pb2 import Timestamp

    fields: dict[str, Any] = {
        "transaction_id": f"t-{uuid.uuid4().hex[:12]}",
        "card_id": card_id,
        "terminal_id": "term-1",
        "amount_minor": amount_minor,
        "currency": "EUR",
        "event_time": Timestamp(seconds=event_ms // 1000, nanos=(event_ms % 1000) * 1_000_000),
        "channel": transaction_pb2.CHANNEL_ECOMMERCE,
    }
    fields.update(overrides)
    return transaction_pb2.Transaction(**fields)

"""The Feast repo applies and round-trips card state through Redis and the offline folders."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from feast.data_source import PushMode

from services.common import feast_repo, features, offline_store
from services.common.features import CardState, apply_transaction

T0 = 1_767_225_600_000


def test_card_state_round_trips_online_and_offline(feature_repo_dir: Path) -> None:
    store = feast_repo.open_store(feature_repo_dir)
    state = CardState()
    apply_transaction(state, "t1", T0, 12.0, 300_000)
    first = features.to_list_row(state)
    apply_transaction(state, "t2", T0 + 60_000, 3.0, 300_000)
    second = features.to_list_row(state)

    online = pd.DataFrame(
        [
            {
                "card_id": "card-rt",
                "event_timestamp": pd.Timestamp(T0 + 60_000, unit="ms", tz="UTC"),
                **second,
            }
        ]
    )
    store.push(feast_repo.PUSH_SOURCE, online, to=PushMode.ONLINE)
    offline_store.write_part(
        feature_repo_dir / offline_store.CARD_STATE_DIR,
        offline_store.card_state_table([("card-rt", T0, first), ("card-rt", T0 + 60_000, second)]),
    )

    got = store.get_online_features(
        features=feast_repo.feature_refs(), entity_rows=[{"card_id": "card-rt"}]
    ).to_dict()
    restored = features.from_row({k: v[0] for k, v in got.items()})
    assert restored is not None
    assert features.card_features(restored, T0 + 120_000)["card_count_1h"] == 2

    entity = pd.DataFrame(
        {
            "card_id": ["card-rt", "card-rt"],
            # Just before each transaction: the state it was scored against.
            "event_timestamp": pd.to_datetime([T0 + 59_999, T0 + 30_000], unit="ms", utc=True),
        }
    )
    hist = store.get_historical_features(entity_df=entity, features=feast_repo.feature_refs())
    frame = hist.to_df().sort_values("event_timestamp")
    assert list(frame["last_event_ms"]) == [T0, T0]
